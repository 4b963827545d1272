"Schedules against exact values; discriminative LR helpers."

import math

import pytest

from common.optim import discriminative_lrs, lrs_for
from common.schedule import (
    combine_scheds,
    one_cycle,
    one_cycle_mom,
    sched_const,
    sched_cos,
    sched_exp,
    sched_lin,
    slanted_triangular,
)


def test_basic_schedules():
    assert sched_lin(1, 3)(0.5) == 2
    assert sched_cos(1, 3)(0) == pytest.approx(1) and sched_cos(1, 3)(1) == pytest.approx(3)
    assert sched_cos(0, 2)(0.25) == pytest.approx(1 - math.cos(math.pi / 4))
    assert sched_exp(1e-4, 1e-2)(0.5) == pytest.approx(1e-3)
    assert sched_const(7)(0.3) == 7
    with pytest.raises(ValueError):
        sched_exp(0, 1)


def test_combine_scheds():
    f = combine_scheds([0.3, 0.7], [sched_lin(0, 1), sched_lin(1, 0)])
    assert f(0) == 0 and f(0.15) == pytest.approx(0.5) and f(0.3) == pytest.approx(1) and f(1) == pytest.approx(0)
    assert f(0.65) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        combine_scheds([0.3, 0.6], [sched_lin(0, 1), sched_lin(1, 0)])


def test_one_cycle_endpoints():
    f = one_cycle(1e-2, pct_start=0.25, div=25, div_final=1e5)
    assert f(0) == pytest.approx(1e-2 / 25)
    assert f(0.25) == pytest.approx(1e-2)
    assert f(1) == pytest.approx(1e-2 / 1e5)
    assert f(0.125) == pytest.approx((1e-2 / 25 + 1e-2) / 2)  # cosine midpoint
    m = one_cycle_mom((0.95, 0.85, 0.95), 0.25)
    assert m(0) == pytest.approx(0.95) and m(0.25) == pytest.approx(0.85) and m(1) == pytest.approx(0.95)


def test_stlr_matches_paper_formula():
    lr_max, cut_frac, ratio, T = 0.01, 0.1, 32, 1000
    f = slanted_triangular(lr_max, cut_frac, ratio)
    cut = math.floor(T * cut_frac)
    for t in [0, 1, 50, 99, 100, 101, 500, 999, 1000]:
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
        expected = lr_max * (1 + p * (ratio - 1)) / ratio
        assert f(t / T) == pytest.approx(expected), t


def test_lrs_for():
    assert lrs_for(1e-3, 3) == [1e-3] * 3
    assert lrs_for(slice(1e-2), 3) == [1e-3, 1e-3, 1e-2]
    lo, hi = 1e-5, 1e-3
    assert lrs_for(slice(lo, hi), 3) == pytest.approx([1e-5, 1e-4, 1e-3])
    assert lrs_for(1e-2, 4, div=2.6) == pytest.approx([1e-2 / 2.6**3, 1e-2 / 2.6**2, 1e-2 / 2.6, 1e-2])
    with pytest.raises(ValueError):
        lrs_for([1, 2], 3)


def test_discriminative_lrs_is_the_ulmfit_rule_exactly():
    lr = 1e-2
    assert discriminative_lrs(lr, 5) == [lr / 2.6**4, lr / 2.6**3, lr / 2.6**2, lr / 2.6, lr]
    assert discriminative_lrs(lr, 1) == [lr]
    assert discriminative_lrs(lr, 3, factor=10) == [lr / 100, lr / 10, lr]
    # fastai writes the same rule as a geometric spread, even_mults(lr / 2.6**4, lr, 5)
    start, n = lr / 2.6**4, 5
    step = (lr / start) ** (1 / (n - 1))
    assert discriminative_lrs(lr, n) == pytest.approx([start * step**i for i in range(n)], rel=1e-12)
    assert lrs_for(lr, 5, div=2.6) == discriminative_lrs(lr, 5)
