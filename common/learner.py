"""The Learner: a training loop made of named stages, each firing events that callbacks handle.

    fit
     └─ epoch (n times)
         ├─ train:    batch, batch, ...   (each batch: pred → loss → backward → step)
         └─ validate: batch, batch, ...   (pred → loss only)

Every stage fires `before_<stage>` and `after_<stage>`; a `Cancel<Stage>Exception` raised inside it
skips to `after_cancel_<stage>` and then `after_<stage>`. Tricks (mixed precision, clipping, schedules,
metrics, progress, checkpoints, resuming, the LR finder) are callbacks; the loop itself knows none of them.
"""

import math
from pathlib import Path

import torch

from .checkpoint import CheckpointError, get_rng_state, load_checkpoint, load_model_state, save_checkpoint
from .device import DeviceCallback
from .distributed import DistributedCallback, world_size
from .events import CANCEL, EVENTS, Callback, CancelBatchException, check_loss_roles
from .optim import (
    adamw,
    bn_params,
    check_split,
    lrs_for,
    make_param_groups,
    opt_state_to_params,
    set_hyper,
    trainable_params,
)
from .plots import plot_lr_find
from .precision import GradientClip, MixedPrecision, NanGuard
from .recorder import GatherPreds, ProgressCallback, Recorder
from .schedule import MOMS, LRFinder, ParamScheduler, one_cycle_scheds
from .stopping import Resume


class DataLoaders:
    "A training loader and an optional validation loader; each yields `(xb, yb)` batches."

    def __init__(self, train, valid=None):
        self.train, self.valid = train, valid

    def __repr__(self):
        n = lambda dl: len(dl) if dl is not None and hasattr(dl, '__len__') else '?'  # noqa: E731
        return f'DataLoaders(train={n(self.train)} batches, valid={n(self.valid)} batches)'


class Learner:
    "Model + data + loss + optimizer factory + callbacks; see the module docstring for the loop."

    def __init__(
        self,
        model,
        dls,
        loss_fn,
        opt_fn=adamw,
        lr=1e-3,
        splitter=trainable_params,
        cbs=(),
        metrics=(),
        path=None,
        precision='fp32',
        clip=None,
        device=None,
        train_bn=True,
        wd=None,
        progress=True,
        default_cbs=True,
    ):
        self.model, self.dls, self.loss_fn, self.opt_fn, self.lr = model, dls, loss_fn, opt_fn, lr
        self.splitter, self.train_bn, self.wd = splitter, train_bn, wd
        self.path = Path(path) if path is not None else None
        self.opt, self.ddp_model, self.cbs, self._handlers, self._groups = None, None, [], {}, None
        self.epoch = self.n_epoch = self.iter = self.n_iter = self.train_iter = 0
        self.training = False
        if default_cbs:
            self.add_cbs([DeviceCallback(device), Recorder(metrics), NanGuard()])
            if progress:
                self.add_cbs(ProgressCallback())
            if precision != 'fp32':
                self.add_cbs(MixedPrecision(precision))
            if clip:
                self.add_cbs(GradientClip(clip))
            if world_size() > 1:
                self.add_cbs(DistributedCallback())
        self.add_cbs(list(cbs))

    def add_cbs(self, cbs):
        "Attach callbacks (one or a list); each can then be reached as `learn.<cb.name>`."
        cbs = cbs if isinstance(cbs, (list, tuple)) else [cbs]
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"{cb!r} is not a Callback")
        check_loss_roles(sorted([*self.cbs, *cbs], key=lambda c: c.order))
        for cb in cbs:
            cb.learn = self
            self.cbs.append(cb)
            setattr(self, cb.name, cb)
        self.cbs.sort(key=lambda c: c.order)
        self._handlers = {}  # rebuilt lazily by emit
        return self

    def remove_cbs(self, cbs):
        "Detach callbacks."
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)
                if getattr(self, cb.name, None) is cb:
                    delattr(self, cb.name)
        self._handlers = {}
        return self

    def emit(self, event):
        "Call `event` on every callback that handles it, in `order`."
        handlers = self._handlers.get(event)
        if handlers is None:
            if event not in EVENTS:
                raise ValueError(f"unknown event {event!r}; events are: {', '.join(sorted(EVENTS))}")
            handlers = self._handlers[event] = [h for cb in self.cbs if (h := getattr(cb, event, None)) is not None]
        for h in handlers:
            h()

    def _stage(self, name, fn):
        "before_{name}, fn(), after_{name}; the stage's cancel exception skips to after_cancel_{name}."
        try:
            self.emit(f'before_{name}')
            fn()
        except CANCEL[name]:
            self.emit(f'after_cancel_{name}')
        self.emit(f'after_{name}')

    def layer_groups(self):
        "The splitter's layer groups (input to output) as lists of parameters, as of the last `freeze_to` or optimizer."
        return self._groups if self._groups is not None else self._split()

    def _split(self):
        "Ask the splitter again (the model may have changed) and check that it covers every parameter once."
        self._groups = check_split(self.model, self.splitter(self.model))
        return self._groups

    @property
    def n_groups(self):
        return len(self.layer_groups())

    def freeze_to(self, n):
        "Train only layer groups `n:` (python indexing); BatchNorm stays trainable if `train_bn`."
        groups = self._split()
        keep = bn_params(self.model) if self.train_bn else set()
        start = range(len(groups))[n] if n < 0 else min(n, len(groups))
        for i, g in enumerate(groups):
            for p in g:
                p.requires_grad_(i >= start or id(p) in keep)
        self.opt = None  # the frozen set changed: start the optimizer state afresh at the next fit
        return self

    def freeze(self):
        "Train only the last layer group."
        return self.freeze_to(-1)

    def unfreeze(self):
        "Train every layer group."
        return self.freeze_to(0)

    def create_opt(self):
        "Build the optimizer from `opt_fn` and the splitter's groups (each with its own LR)."
        groups = self._split()
        self.opt = self.opt_fn(make_param_groups(self.model, groups))
        wd = self.wd if self.wd is not None else self.opt.defaults.get('weight_decay', 0.0)
        set_hyper(self.opt, 'weight_decay', [wd] * len(groups))
        set_hyper(self.opt, 'lr', lrs_for(self.lr, len(groups)))
        return self.opt

    def fit(self, n_epoch, lr=None, cbs=None, resume=None):
        "Train for `n_epoch` epochs; `cbs` are attached for this call only; `resume` is a checkpoint path (`Resume`)."
        cbs = list(cbs or []) + ([Resume(resume)] if resume is not None else [])
        self.add_cbs(cbs)
        try:
            if lr is not None:
                self.lr = lr
            if self.opt is None:
                self.create_opt()
            set_hyper(self.opt, 'lr', lrs_for(self.lr, self.n_groups))
            self.n_epoch, self.epoch, self.train_iter = n_epoch, 0, 0
            self._stage('fit', self._do_fit)
        except KeyboardInterrupt as e:
            ck = getattr(self, 'checkpoint', None)  # a CheckpointCallback saves where training stands
            if ck is None:
                raise
            raise ck.interrupted(e) from e
        finally:
            self.remove_cbs(cbs)

    def _do_fit(self):
        # `before_fit` may have moved the model (DeviceCallback): optimizer state loaded earlier (a resume, `load`) must
        # follow it, or the first step on a GPU meets CPU state.
        if self.opt is not None:
            opt_state_to_params(self.opt)
        for epoch in range(self.epoch, self.n_epoch):  # from 0, or from where `Resume` says training stopped
            self.epoch = epoch
            self._stage('epoch', self._do_epoch)

    def _do_epoch(self):
        self._phase(True, self.dls.train)
        self._stage('train', self._do_batches)
        if self.dls.valid is not None:
            self._phase(False, self.dls.valid)
            self._stage('validate', self._do_validate)

    def _phase(self, training, dl):
        "Set up a training or validation pass over `dl` (before its `before_*` event fires)."
        self.training, self.dl, self.iter = training, dl, 0
        self.n_iter = len(dl) if hasattr(dl, '__len__') else 0
        self.model.train(training)

    def _do_batches(self):
        for i, b in enumerate(self.dl, start=self.iter):  # `iter` is 0, or the first batch of a resumed epoch
            self.iter = i
            self._do_batch(b)

    def _do_validate(self):
        with torch.no_grad():
            self._do_batches()

    def _do_batch(self, b):
        self.xb, self.yb = b
        try:
            self.emit('before_batch')
            self._one_batch()
        except CancelBatchException:
            self.emit('after_cancel_batch')
        if self.training:
            self.train_iter += 1
        self.emit('after_batch')

    def _one_batch(self):
        self.pred = (self.ddp_model or self.model)(self.xb)
        self.emit('after_pred')
        self.loss = self.loss_fn(self.pred, self.yb)
        self.loss_grad = self.loss
        self.emit('after_loss')
        if not self.training:
            return
        self.opt.zero_grad(set_to_none=True)
        self.emit('before_backward')
        self.loss_grad.backward()
        self._stage('step', self.opt.step)

    @property
    def pct_train(self):
        "Progress through this fit, in [0, 1]: what schedules are functions of."
        total = self.n_epoch * max(len(self.dls.train), 1)
        return min(self.train_iter / total, 1.0) if total else 0.0

    def fit_one_cycle(
        self, n_epoch, lr_max=None, pct_start=0.25, div=25.0, div_final=1e5, moms=MOMS, wd=None, cbs=None, resume=None
    ):
        "Fit with the one-cycle policy; `lr_max` may be one value, a slice or one value per layer group."
        lrs = lrs_for(lr_max if lr_max is not None else self.lr, self.n_groups)
        scheds = one_cycle_scheds(lrs, pct_start, div, div_final, moms)
        if wd is not None:
            self.wd, self.opt = wd, None  # a new weight decay: a new optimizer
        self.fit(n_epoch, lr=lrs, cbs=[ParamScheduler(scheds)] + list(cbs or []), resume=resume)

    def lr_find(self, start_lr=1e-7, end_lr=10.0, num_it=100, stop_div=True, plot_path=None):
        "LR range test; restores model and optimizer; returns {'steep': lr, 'minimum': lr/10, ...}."
        n_epoch = max(1, math.ceil(num_it / max(len(self.dls.train), 1)))
        finder = LRFinder(start_lr, end_lr, num_it, stop_div)
        self.fit(n_epoch, cbs=[finder])
        if plot_path is None and self.path is not None:
            plot_path = self.path / 'plots' / 'lr_find.png'
        if plot_path is not None:
            plot_lr_find(finder.lrs, finder.losses, finder.suggestions(), plot_path)
        return finder.suggestions()

    def validate(self, dl=None, cbs=None):
        "Run the validation stage on `dl` (default: the validation loader); returns the metrics dict."
        cbs = list(cbs or [])
        self.add_cbs(cbs)
        try:
            self._phase(False, dl if dl is not None else self.dls.valid)
            self._stage('validate', self._do_validate)
        finally:
            self.remove_cbs(cbs)
        return dict(self.recorder.last_valid) if hasattr(self, 'recorder') else {}

    def get_preds(self, dl=None, act=None):
        "Predictions and targets over `dl` (default: validation loader), concatenated on the CPU."
        g = GatherPreds(act)
        self.validate(dl, cbs=[g])
        return g.result()

    def save(self, path, config=None, extras=None, with_opt=True, train_state=None):
        "Write a checkpoint: model, config, optimizer, training position, RNG states and extras."
        ts = train_state if train_state is not None else {'epoch': self.epoch, 'iter': 0}
        ts = dict(ts, cbs={cb.name: cb.state_dict() for cb in self.cbs if cb.state_dict()})
        opt = self.opt.state_dict() if with_opt and self.opt is not None else None
        return save_checkpoint(path, self.model.state_dict(), config, opt, ts, get_rng_state(), extras)

    def load(self, path, with_opt=True, strict=True):
        "Load a checkpoint's model (and optimizer) state; returns the checkpoint dict."
        ck = load_checkpoint(path)
        load_model_state(self.model, ck['model'], path, strict=strict)
        if with_opt and ck.get('opt') is not None:
            if self.opt is None:
                self.create_opt()
            try:
                self.opt.load_state_dict(ck['opt'])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"optimizer state in {path} doesn't fit this optimizer: {e}") from None
        return ck

    def __repr__(self):
        return f'Learner({type(self.model).__name__}, {self.dls}, cbs={[type(c).__name__ for c in self.cbs]})'
