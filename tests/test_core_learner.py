"The loop: event order, cancel semantics, fit-scoped callbacks, learning, freezing, precision, NaN guard."

import math
from functools import partial

import pytest
import torch
from core_utils import synth_learner
from torch import nn

from common.events import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidateException,
    DebugCallback,
)
from common.precision import MixedPrecision


class EventLog(Callback):
    order = 100
    EV = [
        'before_fit',
        'before_epoch',
        'before_train',
        'before_batch',
        'after_pred',
        'after_loss',
        'before_backward',
        'before_step',
        'after_step',
        'after_batch',
        'after_train',
        'before_validate',
        'after_validate',
        'after_epoch',
        'after_fit',
        'after_cancel_fit',
        'after_cancel_epoch',
        'after_cancel_train',
        'after_cancel_validate',
        'after_cancel_batch',
        'after_cancel_step',
    ]

    def __init__(self):
        self.log = []
        for e in self.EV:
            setattr(self, e, partial(self.log.append, e))


def run_log(learn, n_epoch=1, cbs=()):
    log = EventLog()
    # EventLog handles events through instance attributes, like DebugCallback.
    learn.fit(n_epoch, cbs=[log, *cbs])
    return log.log


def test_event_order_one_epoch():
    learn = synth_learner(n=32, bs=16)
    log = run_log(learn)
    batch = ['before_batch', 'after_pred', 'after_loss', 'before_backward', 'before_step', 'after_step', 'after_batch']
    vbatch = ['before_batch', 'after_pred', 'after_loss', 'after_batch']
    expected = (
        ['before_fit', 'before_epoch', 'before_train']
        + batch * 2
        + ['after_train', 'before_validate']
        + vbatch
        + ['after_validate', 'after_epoch', 'after_fit']
    )
    assert log == expected


def test_unknown_event_fails_loudly():
    with pytest.raises(AttributeError, match='not a training event'):

        class Typo(Callback):
            def before_btach(self): ...

    learn = synth_learner()
    with pytest.raises(ValueError, match='unknown event'):
        learn.emit('after_everything')
    with pytest.raises(ValueError, match='unknown event'):
        DebugCallback('befor_fit')


def _raiser(event, exc, when=lambda learn: True):
    class R(Callback):
        order = 50

    def fn(self):
        if self.learn.training and when(self.learn):
            raise exc()

    setattr(R, event, fn)
    return R()


@pytest.mark.parametrize(
    'event,exc,skipped,must_follow',
    [
        ('before_step', CancelStepException, 'after_step_missing', ['after_cancel_step', 'after_step', 'after_batch']),
        ('after_pred', CancelBatchException, 'after_loss', ['after_cancel_batch', 'after_batch']),
        (
            'before_train',
            CancelTrainException,
            'before_batch',
            ['after_cancel_train', 'after_train', 'before_validate'],
        ),
        ('before_epoch', CancelEpochException, 'before_train', ['after_cancel_epoch', 'after_epoch']),
        ('before_fit', CancelFitException, 'before_epoch', ['after_cancel_fit', 'after_fit']),
    ],
)
def test_cancel_guarantees(event, exc, skipped, must_follow):
    learn = synth_learner(n=32, bs=16)
    if event in ('before_train', 'before_epoch', 'before_fit'):

        class R(Callback):
            order = 50

        setattr(R, event, lambda self: (_ for _ in ()).throw(exc()))
        cb = R()
    else:
        cb = _raiser(event, exc)
    log = run_log(learn, cbs=[cb])
    train_part = log[: log.index('after_train')] if 'after_train' in log else log
    assert skipped not in train_part
    i = log.index(must_follow[0])
    assert log[i : i + len(must_follow)] == must_follow
    assert log[-1] == 'after_fit'


def test_cancel_step_keeps_weights():
    learn = synth_learner(n=32, bs=16)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, cbs=[_raiser('before_step', CancelStepException)])
    # BatchNorm running stats move in the forward pass; parameters must not.
    assert all(torch.equal(a, b) for a, b in zip(w0, learn.model.parameters()))


def test_cancel_validate():
    learn = synth_learner(n=32, bs=16)

    class R(Callback):
        def before_validate(self):
            raise CancelValidateException()

    log = run_log(learn, cbs=[R()])
    valid_part = log[log.index('after_train') + 1 :]
    assert valid_part == ['after_cancel_validate', 'after_validate', 'after_epoch', 'after_fit']


def test_fit_scoped_callbacks_removed():
    learn = synth_learner(n=32)
    cb = DebugCallback('after_batch', lambda learn: None)
    n = len(learn.cbs)
    learn.fit(1, cbs=[cb])
    assert cb not in learn.cbs and len(learn.cbs) == n and not hasattr(learn, 'debug')


def test_debug_callback_runs_function_at_event():
    learn = synth_learner(n=32, bs=16)
    seen = []
    learn.fit(1, cbs=[DebugCallback('after_loss', lambda L: seen.append((L.training, float(L.loss.detach()))))])
    assert len(seen) == 2 + 1 and seen[0][0] and not seen[-1][0]


def fits_line(learn, epochs=6):
    start = learn.validate()['valid_loss']
    learn.fit_one_cycle(epochs, 3e-2)
    end = learn.recorder.history[-1]['valid_loss']
    assert end < 0.05 * start, (start, end)


def test_loss_goes_down_and_learns_line():
    fits_line(synth_learner(n=512, bs=32))


def test_per_group_lrs_and_wd_off_for_bn_and_bias():
    learn = synth_learner()
    learn.lr = [1e-3, 1e-2]
    opt = learn.create_opt()
    by_group = {}
    for pg in opt.param_groups:
        by_group.setdefault(pg['layer_group'], set()).add(pg['lr'])
        ids = {id(p) for p in pg['params']}
        bn = {id(p) for p in learn.model.body[1].parameters()}
        biases = {id(learn.model.body[0].bias), id(learn.model.head.bias)}
        if ids & (bn | biases):
            assert pg['weight_decay'] == 0 and ids <= (bn | biases)
        else:
            assert pg['weight_decay'] == pytest.approx(0.01)
    assert by_group == {0: {1e-3}, 1: {1e-2}}
    assert opt.defaults['betas'] == (0.9, 0.99) and opt.defaults['eps'] == 1e-5


def test_one_cycle_drives_each_group():
    learn = synth_learner(n=64, bs=16)
    learn.fit_one_cycle(2, [1e-3, 1e-2], pct_start=0.25)
    lrs = learn.recorder.lrs
    assert lrs[0][0] == pytest.approx(1e-3 / 25) and lrs[0][1] == pytest.approx(1e-2 / 25)
    peak = max(range(len(lrs)), key=lambda i: lrs[i][1])
    assert lrs[peak][1] == pytest.approx(1e-2, rel=0.05) and lrs[peak][0] == pytest.approx(1e-3, rel=0.05)
    assert learn.recorder.moms[0][0] == pytest.approx(0.95)


def test_freeze_to_keeps_bn_trainable_and_resets_opt():
    learn = synth_learner()
    learn.fit(1)
    assert learn.opt is not None
    learn.freeze()
    assert learn.opt is None
    body_lin, bn = learn.model.body[0], learn.model.body[1]
    assert not body_lin.weight.requires_grad and bn.weight.requires_grad and bn.bias.requires_grad
    assert all(p.requires_grad for p in learn.model.head.parameters())
    w = body_lin.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(w, body_lin.weight) and len(learn.opt.state) > 0
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


def test_freeze_bn_too_when_asked():
    learn = synth_learner(train_bn=False)
    learn.freeze()
    assert not learn.model.body[1].weight.requires_grad


def test_lr_find_restores_weights_and_suggests(tmp_path):
    learn = synth_learner(n=512, bs=16)
    learn.create_opt()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    res = learn.lr_find(num_it=60, plot_path=tmp_path / 'lr.png')
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert 1e-7 < res['steep'] < 10 and 1e-8 < res['minimum'] < 1
    assert (tmp_path / 'lr.png').stat().st_size > 1000
    assert len(learn.opt.state) == 0  # optimizer state restored (it was empty)


def test_lr_find_stops_on_divergence():
    learn = synth_learner(n=2048, bs=8)
    learn.lr_find(end_lr=1e4, num_it=200)
    finder_losses = learn.recorder.losses
    assert len(finder_losses) < 200


def test_bf16_fit_runs_and_learns():
    fits_line(synth_learner(n=512, bs=32, precision='bf16'))


def test_fp16_scaler_skips_step_on_inf_and_lowers_scale():
    learn = synth_learner(n=64, bs=16, precision='fp16')
    mp = learn.mixed_precision
    assert isinstance(mp, MixedPrecision)
    mp.init_scale = 2.0**8  # small enough that the ordinary steps don't overflow fp16
    snapshots = []

    class InjectInf(Callback):
        order = 5  # before MixedPrecision's before_step (order 10)

        def before_step(self):
            snapshots.append([p.detach().clone() for p in self.learn.model.parameters()])
            if self.learn.train_iter == 1:
                self.learn.model.head.weight.grad[0, 0] = float('inf')

    class After(Callback):
        order = 90

        def after_step(self):
            snapshots[-1] = (
                snapshots[-1],
                [p.detach().clone() for p in self.learn.model.parameters()],
                mp.scaler.get_scale(),
            )

    learn.fit(1, cbs=[InjectInf(), After()])
    (b0, a0, s0), (b1, a1, s1) = snapshots[0], snapshots[1]
    assert any(not torch.equal(x, y) for x, y in zip(b0, a0))  # a normal step moved the weights
    assert all(torch.equal(x, y) for x, y in zip(b1, a1))  # the inf step was skipped
    assert s1 == s0 / 2 and mp.n_skipped == 1
    assert math.isfinite(learn.recorder.losses[1]) and learn.recorder.losses[1] < 1e3  # logged loss is unscaled


def test_fp16_learns_on_cpu():
    fits_line(synth_learner(n=512, bs=32, precision='fp16'))


def test_nan_guard_fires_with_clear_message():
    learn = synth_learner(n=64, bs=16)

    class Poison(Callback):
        order = 20

        def after_loss(self):
            if self.learn.training and self.learn.iter == 2:
                self.learn.loss = self.learn.loss * float('nan')

    with pytest.raises(FloatingPointError, match='epoch 1, batch 3'):
        learn.fit(1, cbs=[Poison()])


def test_gradient_clip_bounds_norm():
    learn = synth_learner(n=32, bs=16, clip=1e-3)
    norms = []

    class Measure(Callback):
        order = 25

        def before_step(self):
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in self.learn.model.parameters()]).item())

    learn.fit(1, cbs=[Measure()])
    assert max(norms) <= 1e-3 * 1.001


def test_metrics_and_get_preds():
    from common.metrics import AvgMetric, F1Score, accuracy, f1_score

    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] > 0).long()
    from torch.utils.data import DataLoader, TensorDataset

    from common.learner import DataLoaders, Learner

    dls = DataLoaders(
        DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=30)
    )
    learn = Learner(nn.Linear(2, 2), dls, nn.CrossEntropyLoss(), lr=0.1, metrics=[accuracy, F1Score()], progress=False)
    learn.fit(3)
    res = learn.validate()
    preds, targs = learn.get_preds()
    assert preds.shape == (200, 2) and torch.equal(targs, y)
    acc = (preds.argmax(1) == y).float().mean().item()
    assert res['accuracy'] == pytest.approx(acc) and acc > 0.9
    assert res['f1'] == pytest.approx(f1_score(preds.argmax(1), y))
    assert AvgMetric(accuracy).name == 'accuracy'


def test_confusion_matrix_counts_actual_by_predicted():
    from common.metrics import confusion_matrix

    preds, targets = torch.tensor([0, 2, 1, 1, 2, 0]), torch.tensor([0, 1, 1, 2, 2, 2])
    assert confusion_matrix(preds, targets, 3).tolist() == [[1, 0, 0], [0, 1, 1], [1, 1, 1]]
    assert confusion_matrix(torch.tensor([1]), torch.tensor([1]), 3).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_early_stopping_and_save_best(tmp_path):
    from common.events import Callback
    from common.stopping import EarlyStopping, SaveBest

    class FakeValid(Callback):  # valid losses 3, 2, 2.5, 2.6, 1 ...: best at epoch 2, no gain for 2 epochs after
        order = 51
        seq = [3.0, 2.0, 2.5, 2.6, 1.0]

        def after_validate(self):
            self.learn.recorder.last_valid['valid_loss'] = self.seq[self.learn.epoch]

    learn = synth_learner(n=64)
    snap = {}

    class Snap(Callback):
        order = 80

        def after_epoch(self):
            snap[self.learn.epoch] = {k: v.clone() for k, v in self.learn.model.state_dict().items()}

    learn.fit(5, cbs=[FakeValid(), SaveBest(tmp_path / 'best.pth'), EarlyStopping(patience=2), Snap()])
    assert len(learn.recorder.history) == 4  # stopped after two epochs without improvement
    for k, v in learn.model.state_dict().items():  # the best epoch's weights were loaded back
        assert torch.equal(v, snap[1][k]), k


def test_time_budget_stops_with_checkpoint(tmp_path):
    from common.stopping import CheckpointCallback, TimeBudget

    learn = synth_learner(n=256, bs=8)
    ck = tmp_path / 'last.pth'
    budget = TimeBudget(max_minutes=0.0)
    learn.fit(3, cbs=[CheckpointCallback(ck), budget])
    assert budget.reached and learn.train_iter == 1 and ck.exists()


class AddTerm(Callback):
    "Adds zero to the loss backward sees, as AR/TAR adds its term."

    loss_role = 'add'

    def __init__(self, order):
        self.order, self.seen = order, []

    def after_loss(self):
        if self.learn.training:
            self.seen.append(self.learn.loss_grad)
            self.learn.loss_grad = self.learn.loss_grad + 0.0


def test_loss_grad_roles_must_run_replace_add_scale():
    learn = synth_learner(n=32, bs=16, precision='fp16')  # MixedPrecision (order 10) scales loss_grad
    with pytest.raises(ValueError, match=r"AddTerm \('add', order 20\).*after MixedPrecision"):
        learn.fit(1, cbs=[AddTerm(20)])  # an unscaled term after the scaling
    assert not any(isinstance(cb, AddTerm) for cb in learn.cbs)  # nothing was attached

    class Replace(Callback):
        order, loss_role = 15, 'replace'

    with pytest.raises(ValueError, match='Replace'):
        synth_learner(cbs=[AddTerm(5), Replace()])  # a replacement would drop the added term
    add = AddTerm(5)
    learn.fit(1, cbs=[add])  # add, then scale: fine
    assert add.seen and all(t is not None for t in add.seen)


def test_layer_groups_are_split_once_per_freeze_and_optimizer():
    from core_utils import two_group_splitter

    calls = []

    def splitter(m):
        calls.append(1)
        return two_group_splitter(m)

    learn = synth_learner(n=32, bs=16)
    learn.splitter = splitter
    learn.freeze_to(-1)
    assert len(calls) == 1 and [len(g) for g in learn.layer_groups()] == [4, 2] and len(calls) == 1
    learn.fit_one_cycle(1, 1e-2)  # builds the optimizer: one more split
    assert learn.n_groups == 2 and len(calls) == 2


def test_a_learner_that_never_fit_predicts_and_validates_with_progress_bars():
    learn = synth_learner(progress=True)  # e.g. a saved classifier loaded only to evaluate it
    preds, targs = learn.get_preds()
    assert preds.shape == targs.shape and len(preds) > 0
    assert 'valid_loss' in learn.validate()


def test_recorder_draws_its_loss_and_schedule(tmp_path):
    learn = synth_learner(n=128, bs=16)
    learn.fit_one_cycle(1, 1e-2)
    learn.recorder.plot_loss(tmp_path / 'loss.png')
    learn.recorder.plot_sched(tmp_path / 'sched.png')
    assert (tmp_path / 'loss.png').stat().st_size > 1000 and (tmp_path / 'sched.png').stat().st_size > 1000
