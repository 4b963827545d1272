"""Regularisation tricks for image classification: each a pure function first, then a thin callback.

mixup(x, y, lam, perm)            MixUp (Zhang et al. 2018, https://arxiv.org/abs/1710.09412)
cutmix(x, y, box, perm)           CutMix (Yun et al. 2019, https://arxiv.org/abs/1905.04899)
mix_loss(loss_fn, pred, ...)      lam * loss(pred, y_a) + (1 - lam) * loss(pred, y_b), reduced as loss_fn asks
label_smoothing_ce(...)           label smoothing (Szegedy et al. 2016, https://arxiv.org/abs/1512.00567)
"""

import math
import random
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Beta

from common.events import Callback


# ---- losses -------------------------------------------------------------------------------------------------
def reduce_loss(loss, reduction='mean'):
    "Reduce a per-sample loss the way torch losses do: 'mean', 'sum' or 'none'."
    if reduction not in ('mean', 'sum', 'none'):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return loss if reduction == 'none' else loss.mean() if reduction == 'mean' else loss.sum()


@contextmanager
def no_reduce(loss_fn):
    "Yield `loss_fn` giving one loss per sample (a loss module's `reduction` is 'none' until the block exits)."
    if hasattr(loss_fn, 'reduction'):
        old = loss_fn.reduction
        loss_fn.reduction = 'none'
        try:
            yield loss_fn
        finally:
            loss_fn.reduction = old
    else:
        yield partial(loss_fn, reduction='none')


def label_smoothing_ce(logits, target, eps=0.1, reduction='mean'):
    "Cross-entropy against (1 - eps) * one_hot + eps / n_classes; equals F.cross_entropy(label_smoothing=eps)."
    logp = F.log_softmax(logits, dim=-1)  # (bs, n_classes)
    nll = -logp.gather(-1, target[:, None])[:, 0]  # (bs,)
    uniform = -logp.mean(-1)  # (bs,) cross-entropy against the uniform distribution
    return reduce_loss((1 - eps) * nll + eps * uniform, reduction)


class LabelSmoothingCrossEntropy(nn.Module):
    "`label_smoothing_ce` as a loss module; `reduction` can be switched (MixUp sets it to 'none')."

    def __init__(self, eps=0.1, reduction='mean'):
        super().__init__()
        self.eps, self.reduction = eps, reduction

    def forward(self, logits, target):
        return label_smoothing_ce(logits, target, self.eps, self.reduction)

    def extra_repr(self):
        return f'eps={self.eps}, reduction={self.reduction!r}'


def mix_loss(loss_fn, pred, y_a, y_b, lam):
    "lam * loss(pred, y_a) + (1 - lam) * loss(pred, y_b) per sample, then reduced as `loss_fn` itself reduces."
    with no_reduce(loss_fn) as lf:
        loss = lam * lf(pred, y_a) + (1 - lam) * lf(pred, y_b)  # (bs,); lam is (bs,) or a number
    return reduce_loss(loss, getattr(loss_fn, 'reduction', 'mean'))


# ---- MixUp --------------------------------------------------------------------------------------------------
def mixup(x, y, lam, perm):
    "Blend sample i with sample perm[i]: lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]. Returns (x_mixed, y, y[perm])."
    lam = lam.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)  # (bs, 1, 1, 1): one weight per sample
    return lam * x + (1 - lam) * x[perm], y, y[perm]


def draw_lam(bs, alpha, device=None):
    "One lam ~ Beta(alpha, alpha) per sample, folded to max(lam, 1 - lam) so each sample stays the main one."
    lam = Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample((bs,))
    return torch.max(lam, 1 - lam).to(device)


class MixUp(Callback):
    "Train on blends of pairs of samples and of their losses; validation batches are left alone."

    # After the device move (-20) and the batch transforms (-10), so blending happens on float images on the
    # device; before MixedPrecision (10), whose `after_loss` must see the mixed loss to scale it.
    order = 8
    loss_role = 'replace'  # it recomputes loss_grad from the two targets (common/events.py checks the order)

    def __init__(self, alpha=0.4):
        self.alpha = alpha

    def before_batch(self):
        if not self.learn.training:
            return
        xb, yb = self.learn.xb, self.learn.yb
        self.lam = draw_lam(len(yb), self.alpha, xb.device)  # (bs,)
        self.perm = torch.randperm(len(yb), device=xb.device)
        self.learn.xb, self.y_a, self.y_b = mixup(xb, yb, self.lam, self.perm)

    def after_loss(self):
        learn = self.learn
        if learn.training:
            learn.loss = learn.loss_grad = mix_loss(learn.loss_fn, learn.pred, self.y_a, self.y_b, self.lam)


# ---- CutMix -------------------------------------------------------------------------------------------------
def cutmix_box(h, w, lam, cy, cx):
    "The (y0, y1, x0, x1) box to paste: area (1 - lam) * h * w centred at (cy, cx), clipped to the image."
    # Clipping makes the box smaller than asked near the border, which is why `cutmix` recomputes lam.
    r = math.sqrt(1 - lam)
    ch, cw = int(h * r), int(w * r)
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    return y0, y1, x0, x1


def cutmix(x, y, box, perm):
    "Paste `box` of sample perm[i] into sample i; returns (x_mixed, y, y[perm], lam = fraction of x kept)."
    y0, y1, x0, x1 = box
    x = x.clone()
    x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])
    return x, y, y[perm], lam


class CutMix(MixUp):
    "Train on images with a patch pasted from another sample; the loss is mixed by the patch's area, as in MixUp."

    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def before_batch(self):
        if not self.learn.training:
            return
        xb, yb = self.learn.xb, self.learn.yb
        h, w = xb.shape[-2:]
        lam = float(Beta(torch.tensor(float(self.alpha)), torch.tensor(float(self.alpha))).sample())
        box = cutmix_box(h, w, lam, random.randrange(h), random.randrange(w))
        self.perm = torch.randperm(len(yb), device=xb.device)
        self.learn.xb, self.y_a, self.y_b, self.lam = cutmix(xb, yb, box, self.perm)
