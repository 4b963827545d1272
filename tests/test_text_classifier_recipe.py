"""The classifier's recipe against fastai: full batches only, sortish batches that stay whole, whole documents read,
AR/TAR on the encoder outputs, and why the head's Linear keeps its bias."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from common.events import DebugCallback
from common.learner import DataLoaders
from ulmfit import recipe
from ulmfit.awd_lstm import AWDLSTMConfig, ar_tar, clas_config
from ulmfit.classifier import get_text_classifier, lin_bn_drop
from ulmfit.datasets import TableReader
from ulmfit.loaders import SortishSampler
from ulmfit.store import build_store


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "65 labelled training docs of 3..40 words and 8 validation docs."
    rng = np.random.default_rng(0)
    words = 'the a film movie good bad great awful plot actor scene music long short fun dull'.split()
    n = 73
    texts = [' '.join(rng.choice(words, rng.integers(3, 41))) for _ in range(n)]
    df = pd.DataFrame(
        dict(text=texts, label=['pos' if 'good' in t else 'neg' for t in texts], is_valid=[0] * 65 + [1] * 8)
    )
    return build_store(
        TableReader(df, label_cols='label'),
        min_freq=1,
        n_workers=1,
        root=tmp_path_factory.mktemp('store'),
        progress=False,
    )


def _learner(store, bs=32, **kw):
    cfg = AWDLSTMConfig.preset('tiny', vocab_sz=len(store.vocab))
    dls = DataLoaders(
        recipe.clas_loader(store, store.labeled_idx('train'), bs, train=True),
        recipe.clas_loader(store, store.labeled_idx('valid'), bs),
    )
    return recipe.clas_learner(cfg, 2, dls, **kw)


def test_training_drops_the_one_row_batch(store):
    learn = _learner(store)
    learn.remove_cbs([learn.progress])
    sizes = [len(y) for _, y in learn.dls.train]
    assert sizes == [32, 32]  # 65 rows: the 1-row batch is dropped (it crashed BatchNorm1d in training mode)
    learn.fit(1, lr=1e-3)


def test_sortish_partial_batch_goes_last():
    lengths = np.random.default_rng(1).permutation(100) + 1  # distinct lengths, one megabatch
    for seed in range(5):
        torch.manual_seed(seed)
        idx = list(SortishSampler(lengths, bs=8))
        assert sorted(idx) == list(range(100))
        chunks = [idx[i : i + 8] for i in range(0, 100, 8)]  # how the DataLoader cuts the stream
        assert len(chunks[-1]) == 4
        for c in chunks:  # every cut is one sorted run of the megabatch, not two halves of neighbours
            ls = lengths[c]
            assert (np.diff(ls) < 0).all()
        assert lengths[chunks[0][0]] == lengths.max()


def test_loader_reads_whole_documents_and_truncates_the_reading_end(store):
    idx = store.labeled_idx('train')[:6]
    docs = {tuple(np.asarray(store[j]).tolist()) for j in idx}
    x, _ = next(iter(recipe.clas_loader(store, idx, bs=3)))
    rows = {tuple(r[r != store.vocab.pad_idx].tolist()) for r in x}
    assert rows <= docs  # whole documents, nothing cut
    bwd, _ = next(iter(recipe.clas_loader(store, idx, bs=3, max_len=2, backwards=True)))
    fwd_docs = [np.asarray(store[j]).tolist() for j in idx]
    for r in bwd:
        kept = r[r != store.vocab.pad_idx].tolist()
        # the reversed document's last 2 tokens: the review's first two, read backwards
        assert any(kept == d[:2][::-1] for d in fwd_docs)


def test_masked_ar_tar_exact():
    out, raw = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = torch.tensor([[True, True, False, False, False], [False, False, False, False, True]])
    rows = [(0, [2, 3, 4]), (1, [0, 1, 2, 3])]
    ar = torch.cat([out[b, r].reshape(-1) for b, r in rows]).pow(2).mean()
    tar = torch.cat([(raw[b, r][1:] - raw[b, r][:-1]).reshape(-1) for b, r in rows]).pow(2).mean()
    assert torch.allclose(ar_tar(raw, out, 2.0, 1.0, mask), 2 * ar + tar)
    assert torch.allclose(ar_tar(raw, out, 2.0, 1.0, torch.zeros(2, 5, dtype=torch.bool)), ar_tar(raw, out))


def test_classifier_loss_gets_ar_tar_over_real_positions(store):
    learn = _learner(store)
    learn.remove_cbs([learn.progress])
    seen = []

    def check(L):
        if L.training and not seen:
            rnn = L.rnn
            assert rnn.mask is not None and rnn.mask.shape == rnn.out.shape[:2]
            reg = ar_tar(rnn.raw_out, rnn.out, 2.0, 1.0, rnn.mask)
            seen.append(float((L.loss_grad - L.loss - reg).detach()))

    learn.fit(1, lr=1e-3, cbs=[DebugCallback('after_loss', check)])
    assert seen and abs(seen[0]) < 1e-5


def test_classifier_ar_tar_unchanged_by_more_padding():
    torch.manual_seed(0)
    cfg = clas_config(AWDLSTMConfig.preset('tiny', vocab_sz=50), drop_mult=0.0)
    m = get_text_classifier(cfg, 2, bptt=4, max_len=12).train()
    x = torch.randint(2, 50, (3, 9))
    x[1, :3] = cfg.pad_id
    more = torch.cat([torch.full((3, 7), cfg.pad_id), x], 1)
    _, raw, out, mask = m(x)
    _, raw2, out2, mask2 = m(more)
    assert torch.allclose(ar_tar(raw, out, mask=mask), ar_tar(raw2, out2, mask=mask2), atol=1e-6)


def test_head_bias_is_redundant_after_batchnorm():
    "What v2's LinBnDrop(bias=False) can express, ours can, and back: BatchNorm's shift absorbs the Linear's bias."
    torch.manual_seed(0)
    bn, _, lin = lin_bn_drop(12, 5, 0.0, act=False)
    with torch.no_grad():
        bn.bias.normal_(), bn.running_mean.normal_(), lin.bias.normal_()
    x = torch.randn(7, 12)
    ref = nn.Sequential(bn, lin).eval()(x)
    # β' with W·β' = W·β + b exists because W (5 x 12) has full row rank; then the bias can go.
    shift = torch.linalg.lstsq(lin.weight, lin.bias[:, None] + lin.weight @ bn.bias[:, None]).solution[:, 0]
    with torch.no_grad():
        bn.bias.copy_(shift), lin.bias.zero_()
    assert torch.allclose(nn.Sequential(bn, lin).eval()(x), ref, atol=1e-5)
