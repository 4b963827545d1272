"""Events, cancel exceptions and the `Callback` base class of the training core.

A `Learner` fires a fixed set of named events. A callback is an object with methods named after the
events it cares about, and an `order` (lower runs first). Control flow that leaves a stage early goes
only through the cancel exceptions below; each has a matching `after_cancel_*` event, and the stage's
`after_*` event still fires.
"""
import re

EVENTS = frozenset('''before_fit before_epoch before_train before_batch after_pred after_loss
    before_backward before_step after_step after_batch after_train
    before_validate after_validate after_epoch after_fit
    after_cancel_fit after_cancel_epoch after_cancel_train after_cancel_validate
    after_cancel_batch after_cancel_step'''.split())


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


class Callback:
    "Base class: override methods named after events; `self.learn` is set when attached."
    order = 0
    learn = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A method that looks like an event handler but isn't one is almost always a typo.
        for name in vars(cls):
            if name.startswith(('before_', 'after_')) and name not in EVENTS:
                raise AttributeError(f"{cls.__name__}.{name} is not a training event; events are: "
                                     f"{', '.join(sorted(EVENTS))}")

    def __getattr__(self, name):
        # Read-through to the learner (`self.model`, `self.loss`, ...), as in the course code.
        if name != 'learn' and self.learn is not None and not name.startswith('__'):
            return getattr(self.learn, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def name(self):
        "snake_case class name without the `Callback` suffix, e.g. `GradientClip` -> `gradient_clip`."
        n = type(self).__name__
        if n.endswith('Callback') and n != 'Callback':
            n = n[:-len('Callback')]
        n = re.sub(r'(.)([A-Z][a-z]+)', r'\1_\2', n)  # LRFinder -> LR_Finder
        return re.sub(r'([a-z0-9])([A-Z])', r'\1_\2', n).lower()  # MixedPrecision -> mixed_precision, RNN -> rnn

    # Callbacks that must survive a resume override these two.
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f'{type(self).__name__}(order={self.order})'
