"The vision stack end to end on synthetic images: it learns, and freezing leaves BatchNorm as asked."

import pytest
import torch

from common.learner import DataLoaders, Learner
from common.metrics import accuracy
from vision.data import BatchTransform
from vision.transfer import body_width, transfer_model
from vision.tricks import LabelSmoothingCrossEntropy, MixUp
from vision.xresnet import BN_TYPES, bn_splitter, body, splitter, xresnet18

STATS = ((0.5,) * 3, (0.5,) * 3)


def squares(n, size=16, sq=5, seed=0):
    "uint8 images of noise with a bright sq x sq square somewhere in one quadrant; the label is the quadrant."
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 100, (n, 3, size, size), generator=g, dtype=torch.uint8)  # (n, 3, size, size)
    y = torch.randint(0, 4, (n,), generator=g)
    h = size // 2
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        oy, ox = torch.randint(0, h - sq + 1, (2,), generator=g).tolist()
        x[i, :, r * h + oy : r * h + oy + sq, c * h + ox : c * h + ox + sq] = 255
    return x, y


def batches(x, y, bs):
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


@pytest.fixture
def one_thread():
    "One torch thread: on a busy 2-core machine two spinning OpenMP threads make this test 3-5x slower."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_dls(n_train=192, n_valid=128, bs=32):
    return DataLoaders(batches(*squares(n_train, seed=0), bs), batches(*squares(n_valid, seed=1), 64))


def test_xresnet_learns_where_the_square_is(one_thread):
    torch.manual_seed(0)
    model = xresnet18(n_out=4, width=0.125)
    learn = Learner(
        model,
        small_dls(),
        LabelSmoothingCrossEntropy(0.1),
        lr=1e-2,
        metrics=[accuracy],
        cbs=[BatchTransform(STATS, flip=False), MixUp(0.2)],
        progress=False,
        device='cpu',
    )
    learn.fit_one_cycle(3, 1e-2)
    assert learn.recorder.history[-1]['accuracy'] > 0.9


def frozen_learner(split, train_bn):
    torch.manual_seed(0)
    model = transfer_model(xresnet18(n_out=10, width=0.125), n_out=4, size=16)
    learn = Learner(
        model,
        small_dls(64, 32),
        LabelSmoothingCrossEntropy(0.1),
        splitter=split,
        train_bn=train_bn,
        cbs=[BatchTransform(STATS)],
        progress=False,
        device='cpu',
    )
    learn.freeze()
    return learn, model


def snapshot(mods):
    return [p.detach().clone() for m in mods for p in m.parameters(recurse=False)]


def test_new_head_width_found_by_running_the_body_without_touching_bn_stats():
    pre = xresnet18(n_out=10, width=0.25)
    stats = [m.running_mean.clone() for m in body(pre).modules() if isinstance(m, BN_TYPES)]
    assert body_width(body(pre), 3, 32) == 128
    assert all(
        torch.equal(s, m.running_mean)
        for s, m in zip(stats, [m for m in body(pre).modules() if isinstance(m, BN_TYPES)])
    )
    model = transfer_model(pre, n_out=5, size=32)
    assert model[1][-1].in_features == 256 and model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert body(model) is not body(pre)  # a copy: the pretrained model is left as it was


def test_frozen_body_except_bn_trains_only_bn_and_head():
    learn, model = frozen_learner(bn_splitter, train_bn=True)
    bns = [m for m in body(model).modules() if isinstance(m, BN_TYPES)]
    convs = [m for m in body(model).modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(p.requires_grad for m in bns for p in m.parameters())
    assert not any(p.requires_grad for m in convs for p in m.parameters())
    conv0, bn0, head0 = snapshot(convs), snapshot(bns), snapshot(model[1].modules())
    learn.fit(1, 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(conv0, snapshot(convs)))
    assert not all(torch.equal(a, b) for a, b in zip(bn0, snapshot(bns)))
    assert not all(torch.equal(a, b) for a, b in zip(head0, snapshot(model[1].modules())))


def test_bn_stays_trainable_in_frozen_groups_with_the_plain_splitter():
    learn, model = frozen_learner(splitter, train_bn=True)
    assert all(p.requires_grad for m in body(model).modules() if isinstance(m, BN_TYPES) for p in m.parameters())


def test_frozen_body_including_bn():
    learn, model = frozen_learner(splitter, train_bn=False)
    bns = [m for m in body(model).modules() if isinstance(m, BN_TYPES)]
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    bn0 = snapshot(bns)
    learn.fit(1, 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(bn0, snapshot(bns)))
    learn.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('entry', ['train', 'transfer'])
def test_presets_resolve_and_unknown_keys_fail(entry):
    from common.config import resolve_config

    mod = __import__(f'vision.{entry}', fromlist=['SETTINGS'])
    for preset in ('tiny', 'cpu', 'paper'):
        assert resolve_config(mod.SETTINGS, mod.PRESETS, preset)['preset'] == preset
    with pytest.raises(ValueError, match='no_such_key'):
        resolve_config(mod.SETTINGS, mod.PRESETS, 'tiny', {'no_such_key': 1})


def test_a_run_with_in_process_loading_is_repeatable(tmp_path):
    "workers=0: the random crops come from the main process, so the seed must cover them too."
    from common.checkpoint import load_checkpoint
    from vision.data import write_synthetic_images
    from vision.train import DRY_RUN, PRESETS, SETTINGS, train

    splits = (('train', 8), ('val', 2))
    names = [f'{split}/c{c}/c{c}_{i}.png' for split, n in splits for c in range(2) for i in range(n)]
    images = write_synthetic_images(tmp_path / 'images', names)
    cfg = {k: s.default for k, s in SETTINGS.items()} | PRESETS['tiny'] | DRY_RUN | {'data_path': str(images)}
    weights = []
    for run in ('a', 'b'):
        _, metrics = train(cfg | {'runs_dir': str(tmp_path / run), 'preset': 'tiny'})
        weights.append(load_checkpoint(metrics['checkpoint'])['model'])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
