"""Hyper-parameter schedules as functions of training progress `pct` in [0, 1].

A schedule is a plain function `f(pct) -> value`. One-cycle is a composition of two cosine halves,
slanted triangular is a composition of two linear halves; each works without a Learner.
"""
import math


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
    bounds = [0.]
    for p in pcts:
        bounds.append(bounds[-1] + p)

    def _inner(pct):
        pct = min(max(pct, 0.), 1.)
        # The last phase that starts at or before pct (skipping zero-length phases).
        i = max(j for j in range(len(scheds)) if bounds[j] <= pct and (pcts[j] > 0 or j == len(scheds) - 1))
        if pcts[i] == 0:
            return scheds[i](1.)
        return scheds[i](min((pct - bounds[i]) / pcts[i], 1.))
    return _inner


def one_cycle(lr_max, pct_start=0.25, div=25., div_final=1e5):
    "LR of the one-cycle policy: cosine warm-up from lr_max/div to lr_max, then cosine down to lr_max/div_final."
    return combine_scheds([pct_start, 1 - pct_start],
                          [sched_cos(lr_max / div, lr_max), sched_cos(lr_max, lr_max / div_final)])


def one_cycle_mom(moms=(0.95, 0.85, 0.95), pct_start=0.25):
    "Momentum (or Adam's beta1) of the one-cycle policy: down while the LR rises, then back up."
    return combine_scheds([pct_start, 1 - pct_start],
                          [sched_cos(moms[0], moms[1]), sched_cos(moms[1], moms[2])])


def slanted_triangular(lr_max, cut_frac=0.1, ratio=32):
    """Slanted triangular LR (Howard & Ruder 2018, eq. 3).

    With T iterations, cut = T*cut_frac, p = t/cut before the cut and 1 - (t-cut)/(cut*(1/cut_frac - 1))
    after it; lr = lr_max * (1 + p*(ratio-1)) / ratio. In terms of pct = t/T that is a linear rise from
    lr_max/ratio to lr_max over `cut_frac`, then a linear fall back to lr_max/ratio.
    """
    return combine_scheds([cut_frac, 1 - cut_frac],
                          [sched_lin(lr_max / ratio, lr_max), sched_lin(lr_max, lr_max / ratio)])


def per_group(make_sched, values):
    "One schedule per param group: `make_sched(v)` for each value `v` in `values`."
    return [make_sched(v) for v in values]
