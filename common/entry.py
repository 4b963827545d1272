"""The front door of every command line (`ulmfit`, `ulmfit-vision`, `python -m ulmfit`, `python -m vision`).

    COMMANDS = {'train': ('vision.train:main', 'one line of help'), ...}
    def main(argv=None) -> int:
        return dispatch('python -m vision', COMMANDS, argv, expected=...)

`dispatch` sets the process up once, strips `--quiet` and `--verbose`, and runs the command through `run_command`.
"""

import importlib
import os
import sys

from .perf import tune_malloc

GLOBAL_FLAGS = "global flags: --quiet (warnings only), --verbose (more detail), --debug (the traceback behind an error)"


def setup_process():
    "Process-wide speed settings, made before torch loads: sleeping OpenMP waiters and glibc malloc tuning."
    # On a shared machine with more runnable threads than cores, OpenMP workers spinning at each op's barrier steal
    # the cores the others need: training ran 2-4x slower. Sleeping waiters cost ~nothing when the machine is idle.
    # (It only takes effect before torch loads libgomp; `OMP_WAIT_POLICY=active` in the environment wins.)
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    tune_malloc()


def usage(prog, commands):
    "The command list, one line each."
    lines = [f'usage: {prog} <command> [options]', '', 'commands:']
    lines += [f'  {name:<14} {desc}' for name, (_, desc) in commands.items()]
    lines += ['', f"run '{prog} <command> --help' for a command's options", GLOBAL_FLAGS]
    return '\n'.join(lines)


def dispatch(prog, commands, argv=None, expected=tuple):
    "Run `prog <command> [options]`; returns the exit code. `expected`: a function returning extra expected errors."
    setup_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(usage(prog, commands))
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in commands:
        print(f"error: unknown command {cmd!r}\n\n{usage(prog, commands)}", file=sys.stderr)
        return 2
    # Imported only now: these load torch, which must come after setup_process().
    from .cli import run_command
    from .log import log, set_verbosity

    level = log.level
    for flag in ('--quiet', '--verbose'):
        if flag in rest:
            set_verbosity(flag[2:])
            rest = [a for a in rest if a != flag]
    module, fn = commands[cmd][0].split(':')
    try:
        return run_command(getattr(importlib.import_module(module), fn), rest, expected=expected())
    finally:
        log.setLevel(level)  # a caller in the same process (tests, notebooks) keeps its own setting
