"""Hyper-parameter schedules as functions of training progress `pct` in [0, 1], and the callbacks that apply them.

A schedule is a plain function `f(pct) -> value` that works without a Learner; one-cycle and slanted triangular are
compositions of two halves. `ParamScheduler` sets them on the optimizer each batch; `LRFinder` sweeps the LR.
"""

import copy
import itertools
import math

from .events import Callback, CancelFitException, CancelValidateException
from .optim import get_hyper, set_hyper

MOMS = (0.95, 0.85, 0.95)  # one-cycle momentum (or Adam's beta1): fastai's default


def sched_lin(start, end):
    "Linear from `start` to `end`."
    return lambda pct: start + pct * (end - start)


def sched_cos(start, end):
    "Cosine-annealed from `start` to `end`."
    return lambda pct: start + (1 + math.cos(math.pi * (1 - pct))) * (end - start) / 2


def sched_exp(start, end):
    "Exponential (geometric) from `start` to `end`; both must be positive."
    if start <= 0 or end <= 0:
        raise ValueError(f"sched_exp needs positive endpoints, got {start} and {end}")
    return lambda pct: start * (end / start) ** pct


def sched_const(value):
    "Always `value`."
    return lambda pct: value


def combine_scheds(pcts, scheds):
    "Run `scheds[i]` over the fraction `pcts[i]` of training; `pcts` must sum to 1."
    if len(pcts) != len(scheds):
        raise ValueError(f"combine_scheds: {len(pcts)} fractions for {len(scheds)} schedules")
    if abs(sum(pcts) - 1) > 1e-6 or any(p < 0 for p in pcts):
        raise ValueError(f"combine_scheds: fractions must be >= 0 and sum to 1, got {pcts}")
    bounds = [0.0, *itertools.accumulate(pcts)]

    def _inner(pct):
        pct = min(max(pct, 0.0), 1.0)
        # The last phase that starts at or before pct (skipping zero-length phases).
        i = max(j for j in range(len(scheds)) if bounds[j] <= pct and (pcts[j] > 0 or j == len(scheds) - 1))
        return scheds[i](min((pct - bounds[i]) / pcts[i], 1.0) if pcts[i] else 1.0)  # a zero-length phase: its end

    return _inner


def one_cycle(lr_max, pct_start=0.25, div=25.0, div_final=1e5):
    "LR of the one-cycle policy: cosine warm-up from lr_max/div to lr_max, then cosine down to lr_max/div_final."
    return combine_scheds(
        [pct_start, 1 - pct_start], [sched_cos(lr_max / div, lr_max), sched_cos(lr_max, lr_max / div_final)]
    )


def one_cycle_mom(moms=MOMS, pct_start=0.25):
    "Momentum (or Adam's beta1) of the one-cycle policy: down while the LR rises, then back up."
    return combine_scheds([pct_start, 1 - pct_start], [sched_cos(moms[0], moms[1]), sched_cos(moms[1], moms[2])])


def one_cycle_scheds(lrs, pct_start=0.25, div=25.0, div_final=1e5, moms=MOMS):
    "One-cycle schedules for each layer group's peak LR in `lrs` (and momentum unless `moms` is None)."
    scheds = {'lr': [one_cycle(lr, pct_start, div, div_final) for lr in lrs]}
    if moms is not None:
        scheds['mom'] = [one_cycle_mom(moms, pct_start)] * len(lrs)
    return scheds


def slanted_triangular(lr_max, cut_frac=0.1, ratio=32):
    "Slanted triangular LR (Howard & Ruder 2018, eq. 3): lr_max/ratio up to lr_max over `cut_frac`, then back down."
    # Eq. 3 with T steps, cut = T*cut_frac: p = t/cut before the cut, 1 - (t-cut)/(cut*(1/cut_frac - 1)) after it, and
    # lr = lr_max * (1 + p*(ratio-1)) / ratio; in pct = t/T both halves are straight lines.
    return combine_scheds(
        [cut_frac, 1 - cut_frac], [sched_lin(lr_max / ratio, lr_max), sched_lin(lr_max, lr_max / ratio)]
    )


class ParamScheduler(Callback):
    "Sets hyper-parameters each training batch: {'lr': sched or [sched per layer group], 'mom': ...}."

    order = 0

    def __init__(self, scheds):
        self.scheds = scheds

    def before_fit(self):
        self.n_groups = 1 + max(pg['layer_group'] for pg in self.learn.opt.param_groups)

    def before_batch(self):
        if self.learn.training:
            self.set_hypers(self.learn.pct_train)

    def set_hypers(self, pct):
        "Set each scheduled hyper-parameter of each layer group to its value at `pct`."
        n = self.n_groups
        for name, s in self.scheds.items():
            fns = s if isinstance(s, (list, tuple)) else [s] * n
            if len(fns) != n:
                raise ValueError(f"{len(fns)} schedules for '{name}' but the splitter gives {n} param groups")
            set_hyper(self.learn.opt, name, [f(pct) for f in fns])


class LRFinder(Callback):
    "Exponential LR sweep from `start_lr` to `end_lr`; stops when the loss exceeds 4x its best."

    order = 5

    def __init__(self, start_lr=1e-7, end_lr=10.0, num_it=100, stop_div=True, beta=0.98):
        self.start_lr, self.end_lr, self.num_it, self.stop_div, self.beta = start_lr, end_lr, num_it, stop_div, beta

    def before_fit(self):
        self.saved_model = copy.deepcopy(self.learn.model.state_dict())
        self.saved_opt = copy.deepcopy(self.learn.opt.state_dict())
        self.lrs, self.losses, self.best, self.avg = [], [], float('inf'), 0.0

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
        # The first smoothed values are a few noisy batches: they neither set the best loss nor count as divergence.
        warm = len(self.losses) > max(5, self.num_it // 20)
        if warm:
            self.best = min(self.best, smooth)
        diverged = self.stop_div and warm and (smooth > 4 * self.best or not math.isfinite(smooth))
        if diverged or self.learn.train_iter >= self.num_it:
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


def lr_finding(learn):
    "Whether an LR sweep is running (the weights are restored after it: nothing it trains is saved or logged)."
    return isinstance(getattr(learn, 'lr_finder', None), LRFinder)
