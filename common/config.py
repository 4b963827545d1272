"""One flat run config per entry point: defaults, named presets (`tiny`, `cpu`, `paper`) and
`--key value` overrides. An unknown key is an error; the resolved config is written to the run folder.

    SETTINGS = {'lr': Setting(1e-3, 'peak learning rate'), 'epochs': Setting(1, 'number of epochs'), ...}
    PRESETS = {'tiny': {'epochs': 1}, 'cpu': {...}, 'paper': {...}}
    cfg = parse_run_config(argv, SETTINGS, PRESETS, prog='python -m ulmfit pretrain', description='...')
"""

import argparse
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class ConfigError(ValueError):
    "A setting that can't be used; the message names it and says what to do."


@dataclass
class Setting:
    "A config key's default value and one line of help. `choices` limits the accepted values."

    default: Any
    help: str = ''
    choices: tuple = None


def default_preset():
    "`paper` on a GPU, `cpu` otherwise."
    return 'paper' if torch.cuda.is_available() else 'cpu'


def _parse_bool(s):
    v = str(s).lower()
    if v not in ('1', 'true', 'yes', 'on', '0', 'false', 'no', 'off'):
        raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")
    return v in ('1', 'true', 'yes', 'on')


def _caster(default):
    for kind, cast in ((bool, _parse_bool), (int, int), (float, float)):
        if isinstance(default, kind):
            return cast
    if isinstance(default, (list, tuple)):
        return lambda s: [type(default[0])(x) if default else x for x in s.split(',')]
    if default is None:
        return lambda s: None if s.lower() in ('none', '') else _guess(s)
    return str


def _guess(s):
    for t in (int, float):
        with contextlib.suppress(ValueError):
            return t(s)
    return s


def resolve_config(settings, presets, preset=None, overrides=None):
    "Defaults, then the preset, then overrides; unknown keys in presets or overrides are errors."
    preset = preset or default_preset()
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    cfg = {k: s.default for k, s in settings.items()}
    for source, values in ((f'preset {preset!r}', presets[preset]), ('overrides', overrides or {})):
        unknown = [k for k in values if k not in settings]
        if unknown:
            raise ValueError(
                f"unknown config key(s) in {source}: {', '.join(unknown)}; known keys: {', '.join(settings)}"
            )
        cfg.update(values)
    for k, s in settings.items():
        if s.choices and cfg[k] not in s.choices:
            raise ValueError(f"config key {k!r} must be one of {s.choices}, got {cfg[k]!r}")
    return cfg | {'preset': preset}


def parse_run_config(argv, settings, presets, prog, description, positional=None):
    "argparse front end: `--preset NAME` plus one `--key value` per setting; `--help` lists them all."
    shown = {n: ', '.join(f'{k}={v}' for k, v in ps.items()) or 'the defaults' for n, ps in presets.items()}
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        allow_abbrev=False,  # `--resume` compares the settings named on the command line by their full names
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='presets:\n' + '\n'.join(f'  {n}: {s}' for n, s in shown.items()),
    )
    for name, kw in (positional or {}).items():
        p.add_argument(name, **kw)
    preset_help = f"settings bundle (default: {default_preset()} on this machine: paper on a GPU, else cpu)"
    p.add_argument('--preset', choices=list(presets), default=None, help=preset_help)
    for k, s in settings.items():
        metavar = type(s.default).__name__.upper() if s.default is not None else 'VALUE'
        text = f"{s.help} (default: {s.default})".replace('%', '%%')  # argparse %-formats help
        flag, cast = '--' + k.replace('_', '-'), _caster(s.default)
        p.add_argument(flag, dest=k, type=cast, default=argparse.SUPPRESS, metavar=metavar, help=text)
    args = vars(p.parse_args(argv))
    preset = args.pop('preset')
    pos = {n: args.pop(n) for n in (positional or {})}
    try:
        cfg = resolve_config(settings, presets, preset, args)
    except ValueError as e:
        p.error(str(e))
    return cfg | pos


def config_to_json(cfg):
    "JSON text of a config (paths and other objects as strings)."
    return json.dumps(cfg, indent=2, default=str, sort_keys=True)


def named_settings(argv):
    "The settings a command line names (`--lm-lr 1e-3` and `--lm-lr=1e-3` name 'lm_lr')."
    return [a[2:].split('=')[0].replace('-', '_') for a in argv if a.startswith('--')]


def resume_config(run_dir, cfg, given, settings, may_change=()):
    "The config saved in `run_dir`, for `--resume`; of the settings `given`, those in `may_change` take new values."
    # Settings newer than the run take their defaults. Any other setting given with a different value is an error:
    # the rest of the run would disagree with its first part.
    path = Path(run_dir) / 'config.json'
    if not path.exists():
        raise FileNotFoundError(f'nothing to resume: {path} does not exist')
    saved = {**{k: s.default for k, s in settings.items()}, **json.loads(path.read_text())}
    refused = [k for k in given if k not in (*may_change, 'resume') and cfg.get(k) != saved.get(k)]
    if refused:
        flags = lambda ks: ', --'.join(k.replace('_', '-') for k in ks)  # noqa: E731
        can = f'only --{flags(may_change)} can' if may_change else 'none can'
        raise ConfigError(
            f"--resume {run_dir}: the run keeps its own settings; --{flags(refused)} can't change ({can})"
        )
    return {**saved, **{k: cfg[k] for k in given if k in may_change}, 'resume': str(run_dir)}
