"""What training records and shows: losses, hyper-parameters and metrics (`Recorder`), progress bars and the
per-epoch table (`ProgressCallback`), and predictions for `get_preds` (`GatherPreds`)."""

import sys
import time

import torch
from tqdm.auto import tqdm

from .events import Callback
from .log import show_progress
from .metrics import AvgLoss, as_metric
from .optim import get_hyper
from .plots import plot_losses, plot_sched
from .schedule import lr_finding


class Recorder(Callback):
    "Per-batch loss and hyper-parameters, per-epoch losses and metrics (`learn.recorder`)."

    order = 50

    def __init__(self, metrics=(), beta=0.98):
        self.metrics, self.beta, self.valid_loss = [as_metric(m) for m in metrics], beta, AvgLoss()
        self.before_fit()  # empty records for a Learner that validates before any fit
        self.before_validate()  # metrics start empty, even if a validation stage is cancelled at once

    def before_fit(self):
        self.losses, self.lrs, self.moms, self.last_valid = [], [], [], {}
        self.history = getattr(self, '_resumed_history', None) or []  # epochs from before an interruption
        self._resumed_history = None
        self._avg = 0.0

    def before_epoch(self):
        self.t0, self.n0 = time.time(), len(self.losses)  # this epoch's losses start at `n0`

    def after_batch(self):
        if not hasattr(self.learn, 'loss'):
            return
        if not self.learn.training:
            for m in [self.valid_loss, *self.metrics]:
                m.accumulate(self.learn)
            return
        loss = float(self.learn.loss.detach())
        self.losses.append(loss)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        self.lrs.append(get_hyper(self.learn.opt, 'lr'))
        self.moms.append(get_hyper(self.learn.opt, 'mom'))

    @property
    def smooth_loss(self):
        return self._avg / (1 - self.beta ** len(self.losses)) if self.losses else float('nan')

    def before_validate(self):
        for m in [self.valid_loss, *self.metrics]:
            m.reset()

    def after_validate(self):
        self.last_valid = {'valid_loss': self.valid_loss.value, **{m.name: m.value for m in self.metrics}}

    def after_epoch(self):
        losses = self.losses[self.n0 :]
        row = {
            'epoch': self.learn.epoch + 1,
            'train_loss': sum(losses) / len(losses) if losses else float('nan'),
            **(self.last_valid if self.learn.dls.valid is not None else {}),
            'time_s': round(time.time() - self.t0, 2),
        }
        self.history.append(row)

    def plot_loss(self, path):
        "Training loss per batch (smoothed) and validation loss per epoch, as a PNG."
        return plot_losses(self, path)

    def plot_sched(self, path):
        "Learning rate and momentum per batch, as a PNG."
        return plot_sched(self, path)

    def state_dict(self):
        return {'history': self.history}

    def load_state_dict(self, state):
        self._resumed_history = list(state.get('history', []))


class ProgressCallback(Callback):
    "A progress bar per phase (with ETA and smoothed loss) and one table row per epoch."

    order = 60

    def __init__(self, file=None):
        self.file, self.header_done, self.bar, self.enabled = file, False, None, None

    def _on(self):
        "Whether to draw: set by before_fit; a Learner that only predicts or validates asks the logger."
        if self.enabled is None:
            self.enabled = show_progress()
        return self.enabled

    def before_fit(self):
        self.header_done, self.bar = False, None
        self.enabled = show_progress() and not lr_finding(self.learn)  # rank 0, not quiet

    def _open(self, desc):
        tty = (self.file or sys.stderr).isatty()
        self.bar = tqdm(
            total=self.learn.n_iter or None,
            desc=desc,
            leave=False,
            file=self.file,
            dynamic_ncols=True,
            mininterval=0.2 if tty else 30.0,
        )

    def before_train(self):
        if self._on():
            self._open(f'epoch {self.learn.epoch + 1}/{self.learn.n_epoch} train')
            self.bar.n = self.learn.iter  # a resumed epoch starts past the batches already trained on (Resume)

    def before_validate(self):
        if self._on():  # a Learner that never fit (n_epoch 0) just says 'valid'
            n = self.learn.n_epoch
            self._open(f'epoch {self.learn.epoch + 1}/{n} valid' if n else 'valid')

    def after_batch(self):
        if self.enabled and self.bar is not None:
            self.bar.update(1)
            if self.learn.training and self.learn.iter % 10 == 0:
                self.bar.set_postfix(loss=f'{self.learn.recorder.smooth_loss:.4f}', refresh=False)

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    after_train = after_validate = after_fit = _close

    def after_epoch(self):
        if not self.enabled or not self.learn.recorder.history:
            return
        row = self.learn.recorder.history[-1]
        if not self.header_done:
            tqdm.write('  '.join(f'{k:>12}' for k in row), file=self.file)
            self.header_done = True
        fmt = lambda v: f'{v:>12d}' if isinstance(v, int) else f'{v:>12.5g}' if isinstance(v, float) else f'{v!s:>12}'  # noqa: E731
        tqdm.write('  '.join(fmt(v) for v in row.values()), file=self.file)


class GatherPreds(Callback):
    "Collects predictions (after an optional activation) and targets during validation."

    order = 55

    def __init__(self, act=None):
        self.act, self._preds, self._targs = act, [], []

    def after_batch(self):
        if self.learn.training or not hasattr(self.learn, 'pred'):
            return
        p = self.learn.pred.detach().float()
        self._preds.append((self.act(p) if self.act else p).cpu())
        self._targs.append(self.learn.yb.detach().cpu())

    def result(self):
        "(predictions, targets), each concatenated on the CPU."
        return tuple(torch.cat(xs) if xs else torch.empty(0) for xs in (self._preds, self._targs))
