"""Training to a time budget: plan the number of steps that fit, then run one complete schedule over them.

    probe   the first steps run at pct = 0; after the first `n_skip` they are timed, for at least `n_probe` steps and
            `probe_pct` of the budget (a noisy step time wants a long average), or until the budget is spent
    plan    n_steps = plan_steps(step_s, budget_s, ...): the whole fit, the probe's steps included
    run     step i (from 0) runs at pct = i / (n_steps - 1); training stops after the last, and that epoch's validation

A schedule cut by a clock (`TimeBudget`) never reaches its low final LR; a planned one always does.
"""

import math
import time

from .distributed import all_reduce_sum, world_size
from .events import CancelFitException, CancelTrainException
from .log import log
from .optim import lrs_for
from .schedule import MOMS, ParamScheduler, one_cycle_scheds

MAX_EPOCHS = 10**6  # the epochs a planned fit is started with: the plan ends it long before


def plan_steps(step_s, budget_s, overhead_s=0.0, elapsed_s=0.0, n_done=0, valid_s=0.0, epoch_len=0):
    "The total training steps, the `n_done` taken included, that fit in `budget_s` seconds (at least `n_done`, and 1)."
    if step_s <= 0:
        raise ValueError(f"plan_steps needs a positive step time, got {step_s}")

    def cost(n):  # `elapsed_s` spent, `step_s` per further step, `overhead_s` once, `valid_s` per epoch and at the end
        n_valid = math.ceil(n / epoch_len) - n_done // epoch_len if valid_s and epoch_len else 0
        return elapsed_s + (n - n_done) * step_s + n_valid * valid_s + overhead_s

    lo, hi = n_done, n_done + max(int((budget_s - elapsed_s - overhead_s) // step_s), 0)
    while lo < hi:  # the largest n with cost(n) <= budget_s (cost grows with n)
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget_s:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 1)


def split_budget(left_s, weights, reserved_s=0.0):
    "Seconds for the first of the stages still to run (`weights`, in order): its share of `left_s - reserved_s`."
    total = sum(weights)
    return max(left_s - reserved_s, 0.0) * weights[0] / total if total else 0.0


class StageBudget:
    "`total_s` seconds for stages in order: each gets its weight's share of what is left at its start, or its reserve."

    def __init__(self, total_s, weights, clock=None):
        self.total_s, self.weights, self.clock = total_s, dict(weights), clock or time.perf_counter
        self.t0, self.reserved = self.clock(), {}

    def left(self):
        return self.total_s - (self.clock() - self.t0)

    def reserve(self, name, seconds):
        self.reserved[name] = seconds

    def start(self, name):
        "Seconds for stage `name`, which starts now."
        if name in self.reserved:
            return self.reserved[name]
        names = list(self.weights)
        rest = names[names.index(name) :]
        w = [self.weights[n] for n in rest if n not in self.reserved]
        return split_budget(self.left(), w, sum(self.reserved[n] for n in rest if n in self.reserved))


class PlannedSchedule(ParamScheduler):
    "A `ParamScheduler` whose pct runs over the number of steps planned to fit in `budget_s` seconds."

    def __init__(
        self,
        scheds,
        budget_s,
        overhead_s=0.0,
        n_probe=20,
        n_skip=2,
        probe_pct=0.02,
        valid_s=None,
        valid_ratio=1 / 3,
        clock=None,
    ):
        if not 0 <= n_skip < n_probe:
            raise ValueError(f"PlannedSchedule times steps n_skip+1..n_probe; got n_skip={n_skip}, n_probe={n_probe}")
        super().__init__(scheds)
        self.budget_s, self.overhead_s, self.valid_s = budget_s, overhead_s, valid_s
        self.n_probe, self.n_skip, self.probe_s = n_probe, n_skip, probe_pct * budget_s
        self.valid_ratio, self.clock = valid_ratio, clock or time.perf_counter
        self.n_steps = self.step_s = None

    def before_fit(self):
        super().before_fit()
        self.t0, self.timed, self.n_timed = self.clock(), 0.0, 0

    def before_epoch(self):
        if self.n_steps is not None and self.learn.train_iter >= self.n_steps:
            raise CancelFitException()
        if self.n_steps is None:  # what the progress bar shows until the plan (fit's loop has its range by now)
            self.learn.n_epoch = self.learn.epoch + 1

    def before_train(self):
        self.last = self.clock()

    def before_batch(self):
        if not self.learn.training:
            return
        i = self.learn.train_iter  # steps taken before this one
        if self.n_steps is not None and i >= self.n_steps:
            raise CancelTrainException()  # the plan is done: this epoch's validation still runs
        self.set_hypers(0.0 if self.n_steps is None else min(i / max(self.n_steps - 1, 1), 1.0))

    def after_batch(self):
        if not self.learn.training or self.n_steps is not None:
            return
        now = self.clock()
        i = self.learn.train_iter  # steps taken, this one included
        if i > self.n_skip:
            self.timed, self.n_timed = self.timed + now - self.last, self.n_timed + 1
        self.last = now
        # A share too small for the whole probe is spent: plan (that is, stop) as soon as a step has been timed.
        if (i >= self.n_probe and self.timed >= self.probe_s) or (self.n_timed and now - self.t0 >= self.budget_s):
            self._plan(now, i)

    def _plan(self, now, i):
        self.step_s, elapsed_s, ws = self.timed / self.n_timed, now - self.t0, world_size()
        if ws > 1:  # every process must stop at the same step: all plan from the mean timings
            self.step_s, elapsed_s = (v / ws for v in all_reduce_sum([self.step_s, elapsed_s]))
        dl_len, valid, valid_s = len(self.learn.dls.train), self.learn.dls.valid, self.valid_s
        # A validation batch costs `valid_ratio` training steps per row: a forward pass is about a third of a step, more
        # when validation computes what training skips (the full softmax of a model trained with a sampled one).
        if valid_s is None and valid is not None:
            valid_s = len(valid) * self.step_s * self.valid_ratio * _bs(valid) / _bs(self.learn.dls.train)
        valid_s = valid_s or 0.0
        self.n_steps = plan_steps(self.step_s, self.budget_s, self.overhead_s, elapsed_s, i, valid_s, dl_len)
        self.learn.n_epoch = math.ceil(self.n_steps / dl_len)  # what the progress bar shows
        log.info(
            f'budget {self.budget_s / 60:.1f} min: {self.step_s:.3f} s/step over steps {self.n_skip + 1}-{i}, '
            f'{valid_s:.0f} s per validation: {self.n_steps:,} steps ({self.n_steps / dl_len:.2f} epochs)'
        )

    def state_dict(self):
        return {'n_steps': self.n_steps, 'step_s': self.step_s}

    def load_state_dict(self, state):
        self.n_steps, self.step_s = state.get('n_steps'), state.get('step_s')


def _bs(dl):
    "Rows per batch of a DataLoader or an LMLoader."
    return getattr(dl, 'batch_size', None) or getattr(dl, 'bs', None) or 1


def fit_one_cycle_budget(
    learn, budget_s, lr_max=None, pct_start=0.25, div=25.0, div_final=1e5, moms=MOMS, cbs=None, resume=None, **plan
):
    "`learn.fit_one_cycle` over the steps that fit in `budget_s` seconds; returns the PlannedSchedule (`n_steps`)."
    lrs = lrs_for(lr_max if lr_max is not None else learn.lr, learn.n_groups)
    sched = PlannedSchedule(one_cycle_scheds(lrs, pct_start, div, div_final, moms), budget_s, **plan)
    learn.fit(MAX_EPOCHS, lr=lrs, cbs=[sched, *(cbs or [])], resume=resume)
    return sched
