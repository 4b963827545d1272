"""Checkpoints: one file, written atomically, loaded safely.

A checkpoint (`save_checkpoint`) is a plain dict of tensors, numbers, strings, lists and dicts, never a pickled
module, so `torch.load(weights_only=True)` reads it and a file carrying code is refused.
"""

import contextlib
import errno
import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = 1


class CheckpointError(RuntimeError):
    "A checkpoint that can't be read or doesn't fit the model; the message names the file."


class DiskFullError(OSError):
    "A write ran out of disk space; the message names the file."


class _WriteGuard:
    "A file that remembers an OSError from `write`: torch.save reports it only as 'unexpected pos ...'."

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b):
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def temp_files(path):
    "Temp files `atomic_write` leaves beside `path` when the process is killed mid-write."
    path = Path(path)
    return sorted(path.parent.glob(f'.{path.name}.*.tmp'))


def atomic_write(path, write_fn):
    "Write to a temp file beside `path` with `write_fn(file)`, fsync, then rename over `path`."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    guard = None
    try:
        mask = os.umask(0)  # reading the umask means setting it: put it back
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600; the file should be readable like any other
        with os.fdopen(fd, 'wb') as f:
            guard = _WriteGuard(f)
            write_fn(guard)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        err = e if isinstance(e, OSError) else getattr(guard, 'error', None)
        if err is not None and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"{path}: no space left on device (the disk is full); nothing was written. Free "
                f"some space and run again"
            ) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def atomic_write_json(path, obj, indent=1):
    "Write `obj` as UTF-8 JSON to `path` atomically (non-ASCII text kept as is, other objects as their str)."
    data = json.dumps(obj, indent=indent, ensure_ascii=False, default=str).encode('utf-8')
    return atomic_write(path, lambda f: f.write(data))


def get_rng_state():
    "Every RNG the training loop touches, in a weights_only-loadable form."
    np_state, (version, internal, gauss) = np.random.get_state(), random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        'python': [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    "Restore what `get_rng_state` captured."
    torch.set_rng_state(state['torch'])
    kind, keys, *rest = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint(path, model_state, config=None, opt_state=None, train_state=None, rng=None, extras=None):
    "Write a checkpoint file atomically; every argument must be plain data (no modules, no classes)."
    obj = {
        'format': FORMAT,
        'model': model_state,
        'config': dict(config or {}),
        'opt': opt_state,
        'train_state': train_state,
        'rng': rng,
        'extras': dict(extras or {}),
    }
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_file(path, map_location='cpu'):
    "`torch.load(path, weights_only=True)` with errors that name the file and say what is wrong."
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (an interrupted write?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it needs code to unpickle, not just tensors and plain data "
            f"(safe loading uses weights_only=True). Details: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged or truncated: {str(e).splitlines()[0]}") from None


def load_checkpoint(path, map_location='cpu'):
    "Load a checkpoint written by `save_checkpoint` (or a bare state dict, returned under 'model')."
    obj = load_file(path, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    if 'format' not in obj:  # a bare state dict
        return {'format': 0, 'model': obj, 'config': {}, 'opt': None, 'train_state': None, 'rng': None, 'extras': {}}
    return obj


def load_model_state(model, state, path='<checkpoint>', strict=True):
    "Load `state` into `model`, turning missing/unexpected keys and shape mismatches into one clear error."
    own = model.state_dict()
    problems = []
    for k, v in state.items():
        if k in own and hasattr(v, 'shape') and own[k].shape != v.shape:
            problems.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    if strict:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing:
            problems.append(f"missing from checkpoint: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            problems.append(f"not in model: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model (is the config the same?):\n  " + '\n  '.join(problems)
        )
    model.load_state_dict(state, strict=strict)
    return model
