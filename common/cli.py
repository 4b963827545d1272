"""The one place where a command's expected errors become one line, `error: <what>`, and exit code 2.

    sys.exit(run_command(main, sys.argv[1:], expected=(DataError,)))

Anything not in EXPECTED or the caller's `expected` is a bug and keeps its traceback (every error does with `--debug`).
Ctrl-C reports what was saved and how to resume (see `Interrupted`) and exits with 130, as shells expect.
"""

import errno

from .checkpoint import CheckpointError, DiskFullError
from .config import ConfigError
from .download import DownloadError
from .log import log

USER_FILE_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
EXPECTED = (ConfigError, CheckpointError, DownloadError, DiskFullError, *USER_FILE_ERRORS)


class Interrupted(KeyboardInterrupt):
    "Ctrl-C, after training saved a checkpoint; `resume` is the command that continues (set by the entry point)."

    def __init__(self, msg, checkpoint=None, resume=None):
        super().__init__(msg)
        self.checkpoint, self.resume = checkpoint, resume


def run_command(fn, argv, expected=()):
    "Call `fn(argv)`; returns its exit code, 2 after an expected error, 130 after Ctrl-C."
    argv = list(argv)
    debug = '--debug' in argv
    try:
        rc = fn([a for a in argv if a != '--debug'])
    except KeyboardInterrupt as e:
        if debug:
            raise
        msg = str(e) or 'nothing was saved'
        resume = getattr(e, 'resume', None)
        log.error(f"\ninterrupted: {msg}" + (f"\nresume with: {resume}" if resume else ''))
        return 130
    except (*EXPECTED, *expected) as e:
        if debug:
            raise
        log.error(f'error: {e}')
        return 2
    except OSError as e:
        if debug or e.errno != errno.ENOSPC:
            raise
        where = e.filename or 'a file'
        log.error(f'error: {where}: no space left on device (the disk is full); free some space and run again')
        return 2
    return rc if isinstance(rc, int) else 0  # commands may return what they made (a run folder): that is success
