"""The standard callbacks. Each is small and does one thing; `order` says where it runs in an event.

order  callback
 -20   DeviceCallback      moves model and batches to the device
 -15   DistributedCallback (common.distributed) DDP wrapping and batch sharding
   0   ParamScheduler      sets per-group hyper-parameters from schedules
   5   LRFinder            exponential LR sweep
  10   MixedPrecision      autocast, fp16 loss scaling, skipped steps
  20   GradientClip        clip by total norm (after unscaling)
  30   NanGuard            stops on a non-finite loss
  50   Recorder            losses, hyper-parameters, metrics
  60   ProgressCallback    progress bars and the per-epoch table
  70   EarlyStopping, SaveBest, CheckpointCallback, TimeBudget
"""
import copy
import math
import pdb
import sys
import time

import torch
from torch import nn

from .callback import (EVENTS, Callback, CancelFitException, CancelStepException, CancelValidateException)
from .metrics import AvgLoss, as_metric
from .optim import get_hyper, set_hyper


def default_device():
    "CUDA if available, then Apple's MPS, else CPU."
    if torch.cuda.is_available():
        return torch.device('cuda')
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return torch.device('mps')
    return torch.device('cpu')


def to_device(b, device, non_blocking=False):
    "Move a tensor, or a tuple/list/dict of them, to `device`."
    if isinstance(b, torch.Tensor):
        return b.to(device, non_blocking=non_blocking)
    if isinstance(b, (list, tuple)):
        return type(b)(to_device(o, device, non_blocking) for o in b)
    if isinstance(b, dict):
        return {k: to_device(v, device, non_blocking) for k, v in b.items()}
    return b


class DeviceCallback(Callback):
    "Puts the model and every batch on `device` (default: CUDA when available)."
    order = -20

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else default_device()

    def before_fit(self):
        self.learn.model.to(self.device)

    before_validate = before_fit

    def before_batch(self):
        nb = self.device.type == 'cuda'
        self.learn.xb = to_device(self.learn.xb, self.device, nb)
        self.learn.yb = to_device(self.learn.yb, self.device, nb)


class ParamScheduler(Callback):
    "Sets hyper-parameters each training batch: {'lr': sched or [sched per layer group], 'mom': ...}."
    order = 0

    def __init__(self, scheds):
        self.scheds = scheds

    def before_batch(self):
        if not self.learn.training:
            return
        n, pct = self.n_groups, self.learn.pct_train
        for name, s in self.scheds.items():
            fns = s if isinstance(s, (list, tuple)) else [s] * n
            if len(fns) != n:
                raise ValueError(f"{len(fns)} schedules for '{name}' but the splitter gives {n} param groups")
            set_hyper(self.learn.opt, name, [f(pct) for f in fns])

    def before_fit(self):
        self.n_groups = 1 + max(pg['layer_group'] for pg in self.learn.opt.param_groups)


class LRFinder(Callback):
    "Exponential LR sweep from `start_lr` to `end_lr`; stops when the loss exceeds 4x its best."
    order = 5

    def __init__(self, start_lr=1e-7, end_lr=10., num_it=100, stop_div=True, beta=0.98):
        self.start_lr, self.end_lr, self.num_it, self.stop_div, self.beta = start_lr, end_lr, num_it, stop_div, beta

    def before_fit(self):
        self.saved_model = copy.deepcopy(self.learn.model.state_dict())
        self.saved_opt = copy.deepcopy(self.learn.opt.state_dict())
        self.lrs, self.losses, self.best, self.avg = [], [], float('inf'), 0.

    def before_batch(self):
        if self.learn.training:
            lr = self.start_lr * (self.end_lr / self.start_lr) ** (self.learn.train_iter / self.num_it)
            set_hyper(self.learn.opt, 'lr', [lr] * len(get_hyper(self.learn.opt, 'lr')))

    def after_batch(self):
        if not self.learn.training:
            return
        loss = float(self.learn.loss.detach())
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smooth = self.avg / (1 - self.beta ** (len(self.losses) + 1))
        self.lrs.append(get_hyper(self.learn.opt, 'lr')[-1])
        self.losses.append(smooth)
        # The first few smoothed values are a handful of noisy batches: they neither set the best loss
        # nor count as divergence.
        warm = len(self.losses) > max(5, self.num_it // 20)
        if warm:
            self.best = min(self.best, smooth)
        if (self.stop_div and warm and (smooth > 4 * self.best or not math.isfinite(smooth))) \
                or self.learn.train_iter >= self.num_it:
            raise CancelFitException()

    def before_validate(self):
        raise CancelValidateException()

    def after_fit(self):
        self.learn.model.load_state_dict(self.saved_model)
        self.learn.opt.load_state_dict(self.saved_opt)

    def suggestions(self):
        "'minimum': (LR at the lowest loss)/10; 'steep': LR where the loss falls fastest."
        lrs, losses = self.lrs, self.losses
        skip = min(max(5, self.num_it // 20), len(losses) - 3)  # the noisy warm-up, as in after_batch
        if skip < 0:
            return {'minimum': None, 'steep': None}
        i_min = min(range(skip, len(losses)), key=losses.__getitem__)
        # Slope of the loss against log(lr), up to the minimum (beyond it the loss is diverging).
        hi = max(i_min, skip + 1)
        slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(skip, hi)]
        i_steep = skip + min(range(len(slopes)), key=slopes.__getitem__)
        return {'minimum': lrs[i_min] / 10, 'steep': lrs[i_steep], 'lr_at_min_loss': lrs[i_min]}

    def plot(self, path):
        "Loss against LR (log scale), with the suggestions marked, as a PNG."
        from .plots import plot_lr_find
        return plot_lr_find(self.lrs, self.losses, self.suggestions(), path)


class _StepProbe:
    "Stands in for the optimizer in GradScaler.step: it only records whether the step would happen."

    def __init__(self, opt):
        self.param_groups, self.stepped = opt.param_groups, False

    def step(self, *args, **kwargs):
        self.stepped = True


class MixedPrecision(Callback):
    """Autocast to bf16 or fp16; for fp16, dynamic loss scaling with `torch.amp.GradScaler`.

    The scaled loss is only what backward sees (`learn.loss_grad`); `learn.loss` stays unscaled. Gradients
    are unscaled in `before_step` (before clipping, which runs later in that event); a step whose gradients
    hold inf/NaN is skipped by raising CancelStepException, and the scale is lowered in `after_step`.
    """
    order = 10
    DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}

    def __init__(self, precision='bf16', scaler=None, init_scale=2. ** 16):
        if precision not in self.DTYPES:
            raise ValueError(f"precision must be one of fp32, bf16, fp16; got {precision!r}")
        self.precision, self.scaler, self.init_scale = precision, scaler, init_scale
        self.ctx, self.probe, self.pending = None, None, None

    def before_fit(self):
        self.device_type = next(self.learn.model.parameters()).device.type
        if self.precision == 'fp16' and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device_type, init_scale=self.init_scale)
        if self.pending is not None and self.scaler is not None:  # a resumed run's scale and growth tracker
            self.scaler.load_state_dict(self.pending)
        self.pending = None
        self.n_skipped = 0

    def before_batch(self):
        self.device_type = next(self.learn.model.parameters()).device.type  # validate() may run before any fit
        self.ctx = torch.autocast(self.device_type, dtype=self.DTYPES[self.precision])
        self.ctx.__enter__()

    def after_loss(self):
        self._exit()
        if self.scaler is not None and self.learn.training:
            self.learn.loss_grad = self.scaler.scale(self.learn.loss_grad)

    def after_cancel_batch(self):
        self._exit()

    def _exit(self):
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None

    def before_step(self):
        if self.scaler is None:
            return
        self.probe = _StepProbe(self.learn.opt)
        self.scaler.unscale_(self.probe)
        self.scaler.step(self.probe)
        if not self.probe.stepped:
            self.n_skipped += 1
            raise CancelStepException()

    def after_step(self):
        if self.scaler is not None and self.probe is not None:
            self.scaler.update()
            self.probe = None

    def state_dict(self):
        return {'scaler': self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state):
        # A resume loads callback state before `before_fit`, where the scaler is first made: keep it until then.
        if 'scaler' in state:
            if self.scaler is not None:
                self.scaler.load_state_dict(state['scaler'])
            else:
                self.pending = state['scaler']


class GradientClip(Callback):
    "Clip gradients to a total L2 norm of `max_norm`."
    order = 20

    def __init__(self, max_norm=1.):
        self.max_norm = max_norm

    def before_step(self):
        nn.utils.clip_grad_norm_([p for p in self.learn.model.parameters() if p.grad is not None], self.max_norm)


class NanGuard(Callback):
    "Stops training with a clear message as soon as the training loss is NaN or infinite."
    order = 30

    def after_loss(self):
        if self.learn.training and not math.isfinite(float(self.learn.loss.detach())):
            raise FloatingPointError(
                f"training loss became {float(self.learn.loss.detach())} at epoch {self.learn.epoch + 1}, "
                f"batch {self.learn.iter + 1}: the learning rate is probably too high (try lr_find), or the data "
                f"holds NaN/inf values")


class Recorder(Callback):
    "Per-batch loss and hyper-parameters, per-epoch losses and metrics (`learn.recorder`)."
    order = 50

    def __init__(self, metrics=(), beta=0.98):
        self.metrics, self.beta = [as_metric(m) for m in metrics], beta
        self.valid_loss = AvgLoss()
        self.before_validate()  # metrics start empty, even if a validation stage is cancelled at once
        self.last_valid, self.history = {}, []
        self.losses, self.lrs, self.moms = [], [], []

    def before_fit(self):
        self.losses, self.lrs, self.moms, self.last_valid = [], [], [], {}
        self.history = getattr(self, '_resumed_history', None) or []  # epochs from before an interruption
        self._resumed_history = None
        self._avg, self._n = 0., 0

    def before_epoch(self):
        self.t0, self.train_total, self.train_count = time.time(), 0., 0

    def after_batch(self):
        if not self.learn.training:
            if hasattr(self.learn, 'loss'):
                for m in [self.valid_loss, *self.metrics]:
                    m.accumulate(self.learn)
            return
        if not hasattr(self.learn, 'loss'):
            return
        loss = float(self.learn.loss.detach())
        self.losses.append(loss)
        self.train_total += loss
        self.train_count += 1
        self._avg, self._n = self.beta * self._avg + (1 - self.beta) * loss, self._n + 1
        opt = self.learn.opt
        self.lrs.append(get_hyper(opt, 'lr'))
        self.moms.append(get_hyper(opt, 'mom'))

    @property
    def smooth_loss(self):
        return self._avg / (1 - self.beta ** self._n) if self._n else float('nan')

    def before_validate(self):
        for m in [self.valid_loss, *self.metrics]:
            m.reset()

    def after_validate(self):
        self.last_valid = {'valid_loss': self.valid_loss.value, **{m.name: m.value for m in self.metrics}}

    def after_epoch(self):
        row = {'epoch': self.learn.epoch + 1,
               'train_loss': self.train_total / self.train_count if self.train_count else float('nan'),
               **(self.last_valid if self.learn.dls.valid is not None else {}),
               'time_s': round(time.time() - self.t0, 2)}
        self.history.append(row)

    def plot_loss(self, path):
        "Training loss per batch (smoothed) and validation loss per epoch, as a PNG."
        from .plots import plot_losses
        return plot_losses(self, path)

    def plot_sched(self, path):
        "Learning rate and momentum per batch, as a PNG."
        from .plots import plot_sched
        return plot_sched(self, path)

    def state_dict(self):
        return {'history': self.history}

    def load_state_dict(self, state):
        self._resumed_history = list(state.get('history', []))


class ProgressCallback(Callback):
    "A progress bar per phase (with ETA and smoothed loss) and one table row per epoch."
    order = 60

    def __init__(self, file=None):
        self.file = file

    def _is_main(self):
        from .distributed import rank
        return rank() == 0

    def before_fit(self):
        self.header_done, self.bar = False, None
        self.enabled = self._is_main() and not self.learn.lr_finding

    def _open(self, desc):
        from tqdm.auto import tqdm
        tty = (self.file or sys.stderr).isatty()
        self.bar = tqdm(total=len(self.learn.dl) if hasattr(self.learn.dl, '__len__') else None, desc=desc,
                        leave=False, file=self.file, dynamic_ncols=True, mininterval=0.2 if tty else 30.,
                        )

    def before_train(self):
        if self.enabled:
            rs = self.learn.resume_state
            start = rs['iter'] if rs is not None and rs['epoch'] == self.learn.epoch else 0
            self._open(f'epoch {self.learn.epoch + 1}/{self.learn.n_epoch} train')
            self.bar.n = start

    def before_validate(self):
        if self.enabled:
            self._open(f'epoch {self.learn.epoch + 1}/{self.learn.n_epoch} valid')

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
        from tqdm.auto import tqdm
        row = self.learn.recorder.history[-1]
        keys = list(row)
        if not self.header_done:
            tqdm.write('  '.join(f'{k:>12}' for k in keys), file=self.file)
            self.header_done = True
        fmt = lambda v: f'{v:>12d}' if isinstance(v, int) else f'{v:>12.5g}' if isinstance(v, float) else f'{v!s:>12}'  # noqa: E731
        tqdm.write('  '.join(fmt(row[k]) for k in keys), file=self.file)


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

    def preds(self):
        return torch.cat(self._preds) if self._preds else torch.empty(0)

    def targets(self):
        return torch.cat(self._targs) if self._targs else torch.empty(0)


class _Monitor(Callback):
    "Shared logic: watch a recorder value at the end of each epoch."
    order = 70

    def __init__(self, monitor='valid_loss', mode='auto', min_delta=0.):
        self.monitor, self.min_delta = monitor, min_delta
        self.mode = mode if mode != 'auto' else ('min' if 'loss' in monitor or 'error' in monitor
                                                 or 'perplexity' in monitor else 'max')

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

    def __init__(self, monitor='valid_loss', mode='auto', min_delta=0., patience=1):
        super().__init__(monitor, mode, min_delta)
        self.patience = patience

    def after_epoch(self):
        if self._improved():
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                print(f'no improvement in {self.monitor} for {self.wait} epochs: stopping early')
                raise CancelFitException()


class SaveBest(_Monitor):
    "Save the model whenever `monitor` improves; optionally load the best back at the end."

    def __init__(self, path, monitor='valid_loss', mode='auto', min_delta=0., load_at_end=True, config=None):
        super().__init__(monitor, mode, min_delta)
        self.path, self.load_at_end, self.config = path, load_at_end, config

    def after_epoch(self):
        from .distributed import rank
        if self._improved() and rank() == 0:
            self.learn.save(self.path, config=self.config, with_opt=False)

    def after_fit(self):
        import os
        if self.load_at_end and os.path.exists(self.path):
            self.learn.load(self.path, with_opt=False)


class CheckpointCallback(Callback):
    "Checkpoint at each epoch end and every `every_minutes` (mid-epoch), with the exact training position."
    order = 70

    def __init__(self, path, every_minutes=None, every_epoch=True, config=None, extras=None):
        self.path, self.every_minutes, self.every_epoch = path, every_minutes, every_epoch
        self.config, self.extras = config, extras

    def before_fit(self):
        self.last = time.time()
        from .checkpoint import temp_files
        from .distributed import rank
        if rank() == 0:
            for f in temp_files(self.path):  # left by a process killed while writing this checkpoint
                f.unlink(missing_ok=True)

    def save_now(self, at_epoch_end=False, n_done=None):
        "Write the checkpoint (rank 0 only): after the current batch, or after `n_done` batches of this epoch."
        from .checkpoint import get_rng_state
        from .distributed import rank
        if rank() != 0 or self.learn.lr_finding:
            return None
        L = self.learn
        n_done = L.iter + 1 if n_done is None else n_done
        ts = {'epoch': L.epoch + 1 if at_epoch_end else L.epoch, 'iter': 0 if at_epoch_end else n_done,
              'train_iter': L.train_iter, 'n_epoch': L.n_epoch,
              'epoch_rng': get_rng_state() if at_epoch_end else L.epoch_rng}
        L.save(self.path, config=self.config, extras=self.extras, train_state=ts)
        self.last = time.time()
        return self.path

    def after_batch(self):
        if (self.every_minutes and self.learn.training
                and time.time() - self.last >= 60 * self.every_minutes and self.learn.iter + 1 < self.learn.n_iter):
            self.save_now()

    def after_epoch(self):
        if self.every_epoch:
            self.save_now(at_epoch_end=True)


class TimeBudget(Callback):
    "End training cleanly after `max_minutes`, with a checkpoint if a CheckpointCallback is attached."
    order = 75

    def __init__(self, max_minutes):
        self.max_minutes = max_minutes

    def before_fit(self):
        self.t0 = time.time()

    def after_batch(self):
        if self.learn.training and time.time() - self.t0 > 60 * self.max_minutes:
            ck = getattr(self.learn, 'checkpoint', None)
            if ck is not None:
                ck.save_now()
            print(f'time budget of {self.max_minutes} min reached: stopping'
                  + (f' (checkpoint: {ck.path})' if ck is not None else ''))
            self.learn.budget_reached = True
            raise CancelFitException()


class DebugCallback(Callback):
    "At `event`, call `fn(learn)`, or drop into pdb when no function is given."
    order = 100

    def __init__(self, event, fn=None):
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are: {', '.join(sorted(EVENTS))}")
        self.event, self.fn = event, fn
        setattr(self, event, self._run)  # instance attribute: looked up by the Learner below

    def _run(self):
        if self.fn is not None:
            self.fn(self.learn)
        else:
            pdb.set_trace()
