"MixUp, CutMix and label smoothing against exact hand computations."

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vision.tricks import (
    CutMix,
    LabelSmoothingCrossEntropy,
    MixUp,
    cutmix,
    cutmix_box,
    draw_lam,
    label_smoothing_ce,
    mix_loss,
    mixup,
    no_reduce,
)


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('eps', [0.0, 0.1, 0.3])
def test_label_smoothing_equals_torch(reduction, eps):
    torch.manual_seed(0)
    logits, target = torch.randn(6, 5), torch.randint(0, 5, (6,))
    ref = F.cross_entropy(logits, target, label_smoothing=eps, reduction=reduction)
    assert torch.allclose(label_smoothing_ce(logits, target, eps, reduction), ref, atol=1e-6)
    assert torch.allclose(LabelSmoothingCrossEntropy(eps, reduction)(logits, target), ref, atol=1e-6)


def test_label_smoothing_by_hand():
    "Two classes, logits (0, 0): p = (1/2, 1/2), so the loss is log 2 whatever eps is."
    loss = label_smoothing_ce(torch.zeros(1, 2), torch.tensor([1]), 0.2)
    assert torch.isclose(loss, torch.log(torch.tensor(2.0)))


def test_mixup_blends_each_sample_with_its_partner():
    x = torch.arange(12.0).view(3, 4)  # three "images" of four pixels
    y = torch.tensor([0, 1, 2])
    lam, perm = torch.tensor([0.9, 0.6, 0.5]), torch.tensor([2, 0, 1])
    xm, ya, yb = mixup(x, y, lam, perm)
    expected = torch.stack([0.9 * x[0] + 0.1 * x[2], 0.6 * x[1] + 0.4 * x[0], 0.5 * x[2] + 0.5 * x[1]])
    assert torch.allclose(xm, expected)
    assert ya.tolist() == [0, 1, 2] and yb.tolist() == [2, 0, 1]
    xm4, _, _ = mixup(torch.ones(3, 2, 2, 2), y, lam, perm)  # lam broadcasts over (c, h, w)
    assert xm4.shape == (3, 2, 2, 2)


def test_draw_lam_is_folded_above_one_half():
    torch.manual_seed(0)
    lam = draw_lam(1000, 0.4)
    assert lam.shape == (1000,) and lam.min() >= 0.5 and lam.max() <= 1
    assert lam.std() > 0.05  # one draw per sample, not one per batch


@pytest.mark.parametrize(
    'make_loss',
    [
        lambda: F.cross_entropy,
        lambda: LabelSmoothingCrossEntropy(0.1),
        lambda: LabelSmoothingCrossEntropy(0.1, reduction='sum'),
    ],
)
def test_mix_loss_by_hand(make_loss):
    torch.manual_seed(0)
    loss_fn = make_loss()
    pred, ya, yb = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    lam = torch.tensor([0.5, 0.7, 0.9, 1.0])
    eps = getattr(loss_fn, 'eps', 0.0)
    per = [
        lam[i] * F.cross_entropy(pred[i : i + 1], ya[i : i + 1], label_smoothing=eps)
        + (1 - lam[i]) * F.cross_entropy(pred[i : i + 1], yb[i : i + 1], label_smoothing=eps)
        for i in range(4)
    ]
    expected = torch.stack(per).sum() if getattr(loss_fn, 'reduction', 'mean') == 'sum' else torch.stack(per).mean()
    assert torch.allclose(mix_loss(loss_fn, pred, ya, yb, lam), expected, atol=1e-6)
    assert getattr(loss_fn, 'reduction', 'mean') in ('mean', 'sum')  # switched back after use


def test_no_reduce_restores_reduction_even_on_error():
    lf = LabelSmoothingCrossEntropy()
    with pytest.raises(RuntimeError):
        with no_reduce(lf):
            assert lf.reduction == 'none'
            raise RuntimeError
    assert lf.reduction == 'mean'


def fake_learn(training, bs=4):
    torch.manual_seed(0)
    return SimpleNamespace(
        training=training, xb=torch.randn(bs, 3, 8, 8), yb=torch.arange(bs) % 3, loss_fn=LabelSmoothingCrossEntropy(0.1)
    )


@pytest.mark.parametrize('cb_class', [MixUp, CutMix])
def test_no_mixing_at_validation(cb_class):
    learn = fake_learn(training=False)
    cb = cb_class()
    cb.learn = learn
    xb, yb = learn.xb, learn.yb
    cb.before_batch()
    assert learn.xb is xb and learn.yb is yb
    learn.pred = torch.randn(4, 3)
    learn.loss = learn.loss_grad = learn.loss_fn(learn.pred, yb)
    before = learn.loss
    cb.after_loss()
    assert learn.loss is before


def test_mixup_callback_mixes_inputs_and_loss():
    learn = fake_learn(training=True)
    cb = MixUp(alpha=0.4)
    cb.learn = learn
    x0 = learn.xb.clone()
    torch.manual_seed(1)
    cb.before_batch()
    lam = cb.lam[:, None, None, None]
    assert torch.allclose(learn.xb, lam * x0 + (1 - lam) * x0[cb.perm])
    assert torch.equal(cb.y_b, cb.y_a[cb.perm])
    learn.pred = torch.randn(4, 3)
    learn.loss = learn.loss_grad = learn.loss_fn(learn.pred, learn.yb)
    cb.after_loss()
    expected = (
        cb.lam * label_smoothing_ce(learn.pred, cb.y_a, 0.1, 'none')
        + (1 - cb.lam) * label_smoothing_ce(learn.pred, cb.y_b, 0.1, 'none')
    ).mean()
    assert torch.allclose(learn.loss, expected) and learn.loss_grad is learn.loss
    assert learn.loss_fn.reduction == 'mean'


def test_cutmix_box_area_and_clipping():
    y0, y1, x0, x1 = cutmix_box(32, 32, 0.75, 16, 16)  # sqrt(1 - 0.75) = 0.5: a 16 x 16 box in the middle
    assert (y0, y1, x0, x1) == (8, 24, 8, 24)
    y0, y1, x0, x1 = cutmix_box(32, 32, 0.75, 0, 0)  # centred on the corner: clipped to 8 x 8
    assert (y0, y1, x0, x1) == (0, 8, 0, 8)


def test_cutmix_pastes_the_partner_and_corrects_lam():
    x = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(3)])  # image i is all i
    y, perm = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    box = cutmix_box(4, 4, 0.75, 0, 0)  # clipped to 1 x 1 at the corner
    xm, ya, yb, lam = cutmix(x, y, box, perm)
    assert box == (0, 1, 0, 1) and lam == 1 - 1 / 16  # lam from the clipped area, not 0.75
    for i in range(3):
        assert xm[i, 0, 0, 0] == perm[i] and (xm[i].flatten()[1:] == i).all()
    assert yb.tolist() == [1, 2, 0] and torch.equal(x[0], torch.zeros(1, 4, 4))  # input left untouched


def test_mixup_and_cutmix_must_replace_the_loss_before_fp16_scales_it():
    from common.events import check_loss_roles
    from common.precision import MixedPrecision

    for cls in (MixUp, CutMix):
        check_loss_roles(sorted([MixedPrecision('fp16'), cls()], key=lambda c: c.order))
        late = cls()
        late.order = 11  # after MixedPrecision (10): the scaled loss would be thrown away
        with pytest.raises(ValueError, match='loss_grad'):
            check_loss_roles(sorted([MixedPrecision('fp16'), late], key=lambda c: c.order))
