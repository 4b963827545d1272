"A time budget plans the steps that fit: the planner's arithmetic, the budget split, and a complete schedule."

from types import SimpleNamespace

import pytest

import common.budget as budget
from common.budget import PlannedSchedule, StageBudget, fit_one_cycle_budget, plan_steps, split_budget
from common.events import Callback
from common.schedule import one_cycle
from tests.core_utils import synth_learner


def test_plan_steps_arithmetic():
    assert plan_steps(0.5, 100.0) == 200
    assert plan_steps(0.5, 100.0, overhead_s=10.0, elapsed_s=5.0, n_done=4) == 174  # 5 + 170 * 0.5 + 10 = 100
    # a 2 s validation after every 50 steps and the last: 5 + 154 * 0.5 + 4 * 2 + 10 = 100; 159 steps cost 100.5
    assert plan_steps(0.5, 100.0, overhead_s=10.0, elapsed_s=5.0, n_done=4, valid_s=2.0, epoch_len=50) == 158
    # validations already behind (in elapsed_s) are not counted again: 60 done, one validation past
    assert plan_steps(1.0, 100.0, elapsed_s=70.0, n_done=60, valid_s=5.0, epoch_len=50) == 85  # 70 + 25 + 5 = 100
    assert plan_steps(1.0, 10.0, elapsed_s=20.0, n_done=7) == 7  # over budget already: stop where we are
    assert plan_steps(3.0, 1.0) == 1
    with pytest.raises(ValueError, match='positive step time'):
        plan_steps(0.0, 10.0)


def test_split_budget_and_stage_budget():
    assert split_budget(100.0, [1, 3]) == 25.0
    assert split_budget(100.0, [1, 1], reserved_s=20.0) == 40.0
    assert split_budget(10.0, [0, 0]) == 0.0
    now = [0.0]
    b = StageBudget(100.0, {'a': 1, 'b': 1, 'eval': 2}, clock=lambda: now[0])
    assert b.start('a') == 25.0
    now[0] = 40.0  # 'a' overran by 15 s: the later stages share what is left
    assert b.start('b') == 20.0
    b.reserve('eval', 5.0)  # measured: eval is taken off the top, 'b' gets the rest
    assert b.start('b') == 55.0 and b.start('eval') == 5.0


class FakeClock(Callback):
    "Advances a fake clock: `step_s` per training batch, `valid_batch_s` per validation batch."

    order = -30

    def __init__(self, step_s, valid_batch_s):
        self.now, self.step_s, self.valid_batch_s = 0.0, step_s, valid_batch_s

    def __call__(self):
        return self.now

    def after_pred(self):  # a batch that runs
        self.now += self.step_s if self.learn.training else self.valid_batch_s


@pytest.mark.parametrize('budget_s', [30.0, 60.0])
def test_planned_one_cycle_completes_within_the_budget(budget_s, monkeypatch):
    learn = synth_learner(n=256, bs=16)  # 16 steps per epoch, 2 validation batches
    clock = FakeClock(0.5, 0.25)
    monkeypatch.setattr(budget, 'time', SimpleNamespace(perf_counter=clock))  # the planner's clock only
    learn.add_cbs(clock)
    lr = 1e-2
    sched = fit_one_cycle_budget(learn, budget_s, lr, n_probe=4, n_skip=1, valid_s=0.5)
    # planned after 4 steps (2 s): as many as fit with a 0.5 s validation after every 16 steps and the last
    n = plan_steps(0.5, budget_s, elapsed_s=2.0, n_done=4, valid_s=0.5, epoch_len=16)
    assert sched.step_s == 0.5 and sched.n_steps == n == {30.0: 56, 60.0: 112}[budget_s]
    assert learn.train_iter == n and len(learn.recorder.lrs) == n
    lrs = [g[-1] for g in learn.recorder.lrs]
    s = one_cycle(lr)
    assert lrs[:4] == [pytest.approx(s(0.0))] * 4  # the probe runs at the schedule's start
    assert lrs[-1] == pytest.approx(s(1.0)) and lrs[-2] > lrs[-1]  # and the last planned step ends it
    assert max(lrs) == pytest.approx(lr, rel=1e-3)
    assert clock.now <= budget_s and clock.now > budget_s - 1  # the budget used, not overrun
    assert 'valid_loss' in learn.recorder.history[-1]  # the last (partial) epoch is validated


def test_planned_schedule_checks_its_probe():
    with pytest.raises(ValueError, match='n_skip'):
        PlannedSchedule({}, 10.0, n_probe=2, n_skip=2)


def test_the_probe_lasts_n_probe_steps_and_probe_pct_of_the_budget(monkeypatch):
    learn = synth_learner(n=256, bs=16)
    clock = FakeClock(0.5, 0.0)
    monkeypatch.setattr(budget, 'time', SimpleNamespace(perf_counter=clock))
    learn.add_cbs(clock)
    sched = fit_one_cycle_budget(learn, 100.0, 1e-2, n_probe=4, n_skip=1, probe_pct=0.05, valid_s=0.0)
    # 5 s of timed steps (0.05 * 100): steps 2-11, so the plan comes after step 11, at 5.5 s
    assert sched.n_steps == plan_steps(0.5, 100.0, elapsed_s=5.5, n_done=11) == 200
    lrs = [g[-1] for g in learn.recorder.lrs]
    assert lrs[:11] == [pytest.approx(one_cycle(1e-2)(0.0))] * 11 and lrs[11] > lrs[10]


def test_a_budget_spent_during_the_probe_stops_at_once(monkeypatch):
    learn = synth_learner(n=256, bs=16)
    clock = FakeClock(0.5, 0.0)
    monkeypatch.setattr(budget, 'time', SimpleNamespace(perf_counter=clock))
    learn.add_cbs(clock)
    sched = fit_one_cycle_budget(learn, 1.2, 1e-2, n_probe=10, n_skip=1, valid_s=0.0)
    assert sched.n_steps == learn.train_iter == 3  # 1.5 s after step 3: spent, so no more steps


def test_the_validation_estimate_follows_valid_ratio(monkeypatch):
    plans = {}
    for ratio in (1 / 3, 3.0):
        learn = synth_learner(n=256, bs=16)  # 16 steps per epoch, 2 validation batches of 32 rows
        clock = FakeClock(0.5, 0.25)
        monkeypatch.setattr(budget, 'time', SimpleNamespace(perf_counter=clock))
        learn.add_cbs(clock)
        plans[ratio] = fit_one_cycle_budget(learn, 30.0, 1e-2, n_probe=4, n_skip=1, valid_ratio=ratio).n_steps
    # a validation pass is estimated at 2 batches x 0.5 s x ratio x 32/16 rows: 0.67 s, or 6 s
    for ratio, valid_s in ((1 / 3, 2 * 0.5 * (1 / 3) * 2), (3.0, 2 * 0.5 * 3.0 * 2)):
        assert plans[ratio] == plan_steps(0.5, 30.0, elapsed_s=2.0, n_done=4, valid_s=valid_s, epoch_len=16)
    assert plans[3.0] < plans[1 / 3]
