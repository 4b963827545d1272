"""When training stops and what it keeps: early stopping, save-best, checkpoints with resume, the time budget."""

import os
import time
from pathlib import Path

from .checkpoint import get_rng_state, set_rng_state, temp_files
from .cli import Interrupted
from .distributed import rank
from .events import Callback, CancelFitException
from .log import log
from .schedule import lr_finding


class _Monitor(Callback):
    "Shared logic: watch a recorder value at the end of each epoch."

    order = 70

    def __init__(self, monitor='valid_loss', mode='auto', min_delta=0.0):
        if mode == 'auto':
            mode = 'min' if any(w in monitor for w in ('loss', 'error', 'perplexity')) else 'max'
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta

    def before_fit(self):
        self.best, self.wait = (float('inf') if self.mode == 'min' else -float('inf')), 0

    def _improved(self):
        row = self.learn.recorder.history[-1] if self.learn.recorder.history else {}
        if self.monitor not in row:
            raise KeyError(f"{type(self).__name__} monitors {self.monitor!r} but the recorder has only {list(row)}")
        v = row[self.monitor]
        better = v < self.best - self.min_delta if self.mode == 'min' else v > self.best + self.min_delta
        if better:
            self.best = v
        return better


class EarlyStopping(_Monitor):
    "Stop when `monitor` hasn't improved for `patience` epochs."

    def __init__(self, monitor='valid_loss', mode='auto', min_delta=0.0, patience=1):
        super().__init__(monitor, mode, min_delta)
        self.patience = patience

    def after_epoch(self):
        if self._improved():
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                log.info(f'no improvement in {self.monitor} for {self.wait} epochs: stopping early')
                raise CancelFitException()


class SaveBest(_Monitor):
    "Save the model whenever `monitor` improves; optionally load the best back at the end."

    def __init__(self, path, monitor='valid_loss', mode='auto', min_delta=0.0, load_at_end=True, config=None):
        super().__init__(monitor, mode, min_delta)
        self.path, self.load_at_end, self.config = path, load_at_end, config

    def after_epoch(self):
        if self._improved() and rank() == 0:
            self.learn.save(self.path, config=self.config, with_opt=False)

    def after_fit(self):
        if self.load_at_end and os.path.exists(self.path):
            self.learn.load(self.path, with_opt=False)


class CheckpointCallback(Callback):
    "Checkpoint at each epoch end and every `every_minutes` (mid-epoch), with the exact training position."

    order = 70

    def __init__(self, path, every_minutes=None, every_epoch=True, config=None, extras=None):
        self.path, self.every_minutes, self.every_epoch = path, every_minutes, every_epoch
        self.config, self.extras, self.epoch_rng = config, extras, None

    def before_fit(self):
        self.last, self.epoch_rng = time.time(), None
        if rank() == 0:
            for f in temp_files(self.path):  # left by a process killed while writing this checkpoint
                f.unlink(missing_ok=True)

    def before_train(self):
        # The RNG state this epoch's data order is drawn from: a mid-epoch checkpoint replays the order from it.
        self.epoch_rng, self.rng_epoch = get_rng_state(), self.learn.epoch
        self.train_iter0 = self.learn.train_iter - self.learn.iter  # `train_iter` at this epoch's first batch

    def save_now(self, at_epoch_end=False, n_done=None):
        "Write the checkpoint (rank 0 only): after the current batch, or after `n_done` batches of this epoch."
        if rank() != 0 or lr_finding(self.learn):
            return None
        L = self.learn
        n_done = L.iter + 1 if n_done is None else n_done
        ts = {
            'epoch': L.epoch + 1 if at_epoch_end else L.epoch,
            'iter': 0 if at_epoch_end else n_done,
            'train_iter': L.train_iter,
            'n_epoch': L.n_epoch,
            'epoch_rng': get_rng_state() if at_epoch_end else self.epoch_rng,
        }
        L.save(self.path, config=self.config, extras=self.extras, train_state=ts)
        self.last = time.time()
        return self.path

    def after_batch(self):
        L = self.learn
        due = self.every_minutes and time.time() - self.last >= 60 * self.every_minutes
        if due and L.training and L.iter + 1 < L.n_iter:  # not after an epoch's last batch
            self.save_now()

    def after_epoch(self):
        if self.every_epoch:
            self.save_now(at_epoch_end=True)

    def after_fit(self):
        self.epoch_rng = None

    def interrupted(self, e):
        "Ctrl-C (`e`) during the fit: checkpoint where training stands; returns the exception to raise."
        L = self.learn
        if isinstance(e, Interrupted) or lr_finding(L) or self.epoch_rng is None:
            return e
        if self.rng_epoch != L.epoch:  # between epochs: the last one ended with its own checkpoint
            if self.every_epoch and Path(self.path).exists():
                return Interrupted(f"the checkpoint of epoch {L.epoch} is kept: {self.path}", checkpoint=self.path)
            return e
        # In training, a batch cut short before its end (before `train_iter` counted it) is trained again on resume;
        # in validation, this epoch's training is done.
        n_done = L.train_iter - self.train_iter0 if L.training else len(L.dls.train)
        path = self.save_now(n_done=n_done)
        if path is None:
            return e
        return Interrupted(f"checkpoint saved at epoch {L.epoch + 1}, batch {n_done}: {path}", checkpoint=path)


class Resume(Callback):
    "Go on from a `CheckpointCallback` checkpoint, replaying the epoch it cut short (`learn.fit(n, resume=path)`)."

    order = -30  # first: MixedPrecision and Recorder take the state it loads in their own `before_fit`

    def __init__(self, path):
        self.path = path

    def before_fit(self):
        L = self.learn
        ck = L.load(self.path, with_opt=True)
        ts = ck.get('train_state')
        if not ts or 'epoch_rng' not in ts:
            raise ValueError(
                f"{self.path} has no training position to resume from (was it saved by a CheckpointCallback?)"
            )
        L.epoch, L.train_iter = ts['epoch'], ts['train_iter']  # the loop starts at `L.epoch`
        for cb in L.cbs:
            if cb.name in ts.get('cbs', {}):
                cb.load_state_dict(ts['cbs'][cb.name])
        self.epoch, self.iter, self.epoch_rng, self.rng = ts['epoch'], ts['iter'], ts['epoch_rng'], ck['rng']
        log.info(f"resuming from {self.path}: epoch {ts['epoch'] + 1}, batch {ts['iter']}")

    def before_train(self):
        if self.learn.epoch != self.epoch:
            return
        # Replay this epoch's data order from the RNG state saved at its start. (At an epoch end the saved epoch RNG
        # state is the state at the save, which the next epoch's order is drawn from: restoring it is all it needs.)
        set_rng_state(self.epoch_rng)
        if self.iter > 0:
            self.learn.dl, self.learn.iter = _Replay(self.learn.dl, self.iter, self.rng), self.iter


class _Replay:
    "A resumed epoch's loader: draws and drops its first `n` batches, then restores the RNG state `rng`."

    def __init__(self, dl, n, rng):
        self.dl, self.n, self.rng = dl, n, rng

    def __iter__(self):
        it = iter(self.dl)
        for _ in range(self.n):  # skip the batches already trained on...
            next(it)
        set_rng_state(self.rng)  # ...and go on with the RNG exactly where it was
        yield from it

    def __len__(self):
        return len(self.dl)

    def __getattr__(self, name):  # the loader's own attributes (`distributed_aware`, ...)
        if name == 'dl':  # not set yet (an unpickled copy): no endless recursion
            raise AttributeError(name)
        return getattr(self.dl, name)


class TimeBudget(Callback):
    "End training cleanly after `max_minutes`, with a checkpoint if a CheckpointCallback is attached; sets `reached`."

    order = 75

    def __init__(self, max_minutes):
        self.max_minutes, self.reached = max_minutes, False

    def before_fit(self):
        self.t0, self.reached = time.time(), False

    def after_batch(self):
        if self.learn.training and time.time() - self.t0 > 60 * self.max_minutes:
            ck, saved = getattr(self.learn, 'checkpoint', None), ''
            if ck is not None:
                ck.save_now()
                saved = f' (checkpoint: {ck.path})'
            log.info(f'time budget of {self.max_minutes} min reached: stopping{saved}')
            self.reached = True
            raise CancelFitException()
