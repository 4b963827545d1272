"""python -m vision {train,transfer} [--preset tiny|cpu|paper] [--key value ...]; add --help after a command."""
import os
import sys

# On a shared machine with more runnable threads than cores, OpenMP workers that spin while waiting at each op's
# barrier steal the cores the others need: training ran 2-4x slower. Sleeping waiters cost ~nothing when the
# machine is idle. (Must be set before torch loads libgomp; `OMP_WAIT_POLICY=active` in the environment wins.)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

COMMANDS = {'train': 'xresnet on Imagewoof: one-cycle, label smoothing, optional MixUp; report + checkpoint',
            'transfer': 'Imagewoof checkpoint -> Oxford-IIIT Pet: scratch vs fine-tune vs two freezing schemes'}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help') or argv[0] not in COMMANDS:
        print(__doc__ + '\n' + '\n'.join(f'  {k:10s}{v}' for k, v in COMMANDS.items()))
        return 0 if argv and argv[0] in ('-h', '--help') else 2
    from common.cli import run_command
    from .data import BadImageError
    if argv[0] == 'train':
        from .train import main as run
    else:
        from .transfer import main as run
    return run_command(run, argv[1:], expected=(BadImageError,))


if __name__ == '__main__':
    sys.exit(main())
