"""`ulmfit-vision {train,transfer} ...` (or `python -m vision ...`): [--preset tiny|cpu|paper] [--key value ...];
add --help after a command."""

import sys

from common.entry import dispatch

COMMANDS = {
    'train': (
        'vision.train:main',
        'xresnet on Imagewoof: one-cycle, label smoothing, optional MixUp; report + checkpoint',
    ),
    'transfer': (
        'vision.transfer:main',
        'Imagewoof checkpoint -> Oxford-IIIT Pet: scratch vs fine-tune vs two freezing schemes',
    ),
}


def _expected():
    # called by dispatch after setup_process(): this loads torch, which must come after it
    from .data import BadImageError

    return (BadImageError,)


def main(argv=None):
    "Run `python -m vision <command>`; returns the exit status."
    return dispatch('python -m vision', COMMANDS, argv, expected=_expected)


if __name__ == '__main__':
    sys.exit(main())
