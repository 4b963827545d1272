"""Events, cancel exceptions and the `Callback` base class of the training core.

A callback has methods named after the events it handles and an `order` (lower runs first). Only the cancel
exceptions leave a stage early; each has an `after_cancel_*` event, and the stage's `after_*` still fires.

The standard callbacks, by `order`: -30 Resume, -20 DeviceCallback, -15 DistributedCallback, 0 ParamScheduler,
5 LRFinder, 10 MixedPrecision, 20 GradientClip, 30 NanGuard, 50 Recorder, 55 GatherPreds, 60 ProgressCallback,
65 RunLogger, 70 EarlyStopping, SaveBest and CheckpointCallback, 75 TimeBudget, 100 DebugCallback.
"""

import pdb
import re

EVENTS = frozenset(
    '''before_fit before_epoch before_train before_batch after_pred after_loss
    before_backward before_step after_step after_batch after_train
    before_validate after_validate after_epoch after_fit
    after_cancel_fit after_cancel_epoch after_cancel_train after_cancel_validate
    after_cancel_batch after_cancel_step'''.split()
)


class CancelStepException(Exception):
    "Skip the optimizer step (the batch still ends with `after_batch`)."


class CancelBatchException(Exception):
    "Skip the rest of this batch; `after_batch` still fires."


class CancelTrainException(Exception):
    "Skip the rest of this epoch's training phase; `after_train` still fires."


class CancelValidateException(Exception):
    "Skip the rest of this epoch's validation phase; `after_validate` still fires."


class CancelEpochException(Exception):
    "Skip the rest of this epoch; `after_epoch` still fires."


class CancelFitException(Exception):
    "Stop training; `after_fit` still fires."


# Short names, as used in the course notebooks.
CancelStep, CancelBatch, CancelTrain = CancelStepException, CancelBatchException, CancelTrainException
CancelValidate, CancelEpoch, CancelFit = CancelValidateException, CancelEpochException, CancelFitException

CANCEL = dict(
    step=CancelStep, batch=CancelBatch, train=CancelTrain, validate=CancelValidate, epoch=CancelEpoch, fit=CancelFit
)


# What a callback's `after_loss` does to `learn.loss_grad` (the loss backward sees), in the order they must run:
# 'replace' computes it afresh from the predictions (MixUp), 'add' adds a term to it (AR/TAR), 'scale' multiplies
# it (fp16 loss scaling). An addition before a replacement is lost; an addition or replacement after the scaling is
# unscaled (or undoes it). `check_loss_roles` turns a wrong `order` into an error when the callbacks are attached.
LOSS_ROLES = ('replace', 'add', 'scale')


class Callback:
    "Base class: override methods named after events; `self.learn` is set when attached."

    order = 0
    learn = None
    loss_role = None  # one of LOSS_ROLES if `after_loss` changes `learn.loss_grad`

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A method that looks like an event handler but isn't one is almost always a typo.
        for name in vars(cls):
            if name.startswith(('before_', 'after_')) and name not in EVENTS:
                raise AttributeError(
                    f"{cls.__name__}.{name} is not a training event; events are: {', '.join(sorted(EVENTS))}"
                )

    @property
    def name(self):
        "snake_case class name without the `Callback` suffix, e.g. `GradientClip` -> `gradient_clip`."
        n = type(self).__name__.removesuffix('Callback') or 'Callback'  # the base class keeps its name
        n = re.sub(r'(.)([A-Z][a-z]+)', r'\1_\2', n)  # LRFinder -> LR_Finder
        return re.sub(r'([a-z0-9])([A-Z])', r'\1_\2', n).lower()  # MixedPrecision -> mixed_precision, RNN -> rnn

    # Callbacks that must survive a resume override these two.
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f'{type(self).__name__}(order={self.order})'


def check_loss_roles(cbs):
    "Raise ValueError unless the callbacks (sorted by `order`) that change `loss_grad` run replace, add, scale."
    last = None
    for cb in cbs:
        if cb.loss_role is None:
            continue
        if cb.loss_role not in LOSS_ROLES:
            raise ValueError(f"{type(cb).__name__}.loss_role is {cb.loss_role!r}; use one of {LOSS_ROLES} or None")
        if last is not None and LOSS_ROLES.index(cb.loss_role) < LOSS_ROLES.index(last.loss_role):
            raise ValueError(
                f"{type(cb).__name__} ({cb.loss_role!r}, order {cb.order}) would change loss_grad after "
                f"{type(last).__name__} ({last.loss_role!r}, order {last.order}); "
                f"{' before '.join(LOSS_ROLES)} must hold, so give it a lower order"
            )
        if last is None or LOSS_ROLES.index(cb.loss_role) > LOSS_ROLES.index(last.loss_role):
            last = cb


class DebugCallback(Callback):
    "At `event`, call `fn(learn)`, or drop into pdb when no function is given."

    order = 100

    def __init__(self, event, fn=None):
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are: {', '.join(sorted(EVENTS))}")
        self.event, self.fn = event, fn
        setattr(self, event, self._run)  # instance attribute: looked up by the Learner's `emit`

    def _run(self):
        if self.fn is not None:
            self.fn(self.learn)
        else:
            pdb.set_trace()
