"""The numerics of a step: mixed precision with fp16 loss scaling, gradient clipping, and the NaN guard."""

import math

import torch
from torch import nn

from .events import Callback, CancelStepException


class _StepProbe:
    "Stands in for the optimizer in GradScaler.step: it only records whether the step would happen."

    def __init__(self, opt):
        self.param_groups, self.stepped = opt.param_groups, False

    def step(self, *args, **kwargs):
        self.stepped = True


class MixedPrecision(Callback):
    "Autocast to bf16 or fp16; for fp16, dynamic loss scaling of `learn.loss_grad` (`learn.loss` stays unscaled)."

    order = 10
    loss_role = 'scale'  # after every callback that replaces `loss_grad` or adds to it (see common.events)
    DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}

    def __init__(self, precision='bf16', scaler=None, init_scale=2.0**16):
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
        self.pending, self.n_skipped = None, 0

    def before_batch(self):
        self.device_type = next(self.learn.model.parameters()).device.type  # validate() may run before any fit
        self.ctx = torch.autocast(self.device_type, dtype=self.DTYPES[self.precision])
        self.ctx.__enter__()

    def after_loss(self):
        self._exit()
        if self.scaler is not None and self.learn.training:
            self.learn.loss_grad = self.scaler.scale(self.learn.loss_grad)

    def _exit(self):
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None

    after_cancel_batch = _exit

    def before_step(self):  # unscale before GradientClip (later in this event); skip a step with inf/NaN gradients
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
        # A resume loads callback state before `before_fit`, where the scaler may first be made: it loads it there.
        self.pending = state.get('scaler')


class GradientClip(Callback):
    "Clip gradients to a total L2 norm of `max_norm`."

    order = 20

    def __init__(self, max_norm=1.0):
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
                f"holds NaN/inf values"
            )
