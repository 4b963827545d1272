"""The project's one logger: rank-0 aware, quiet or verbose by setting.

    from common.log import log
    log.info('corpus: %d docs', n)   # stdout, rank 0 only, hidden when quiet
    log.debug('step times ...')      # only when verbose
    log.warning('no sha256 ...')     # stderr, every rank, always shown

The level comes from `set_verbosity('quiet' | 'normal' | 'verbose')`, or the ULMFIT_VERBOSITY environment variable.
Progress bars follow it too: `show_progress()` is False when quiet or off rank 0.
"""

import contextlib
import logging
import os
import sys

from .distributed import rank

LEVELS = {'quiet': logging.WARNING, 'normal': logging.INFO, 'verbose': logging.DEBUG}


class _Handler(logging.Handler):
    "Writes to the current sys.stdout/sys.stderr at each call (so redirection and test capture see it)."

    def emit(self, record):
        if record.levelno < logging.WARNING and rank() != 0:
            return
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + '\n')
        stream.flush()


log = logging.getLogger('ulmfit')
log.propagate = False
log.addHandler(_Handler())


def set_verbosity(name):
    "Show warnings only ('quiet'), progress and results ('normal'), or everything ('verbose')."
    if name not in LEVELS:
        raise ValueError(f'verbosity must be one of {sorted(LEVELS)}, got {name!r}')
    log.setLevel(LEVELS[name])


def show_progress():
    "Whether progress bars should be drawn here."
    return log.isEnabledFor(logging.INFO) and rank() == 0


@contextlib.contextmanager
def quiet(on=True):
    "Warnings only inside the block when `on` (no progress bars either); the level is restored after."
    level = log.level
    if on:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


set_verbosity(os.environ.get('ULMFIT_VERBOSITY', 'normal'))
