"LM loader layout (target = input shifted by one, rows continue across batches), samplers, padding."

import numpy as np
import pytest
import torch

from ulmfit.loaders import LMLoader, SortishSampler, SortSampler, pad_collate


def _corpus(n_docs=23, seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 40, n_docs)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    ids = np.arange(offsets[-1], dtype=np.int32)  # token value = its position in the memmap: easy to trace
    return ids, offsets


def _stream(ids, offsets, order):
    return np.concatenate([ids[offsets[i] : offsets[i + 1]] for i in order])


@pytest.mark.parametrize('backwards', [False, True])
def test_lm_rows_continue_and_target_shifted(backwards):
    ids, offsets = _corpus()
    bs, bptt = 4, 7
    dl = LMLoader(ids, offsets, bs=bs, bptt=bptt, backwards=backwards)
    batches = list(dl)
    assert len(batches) == len(dl)
    stream = _stream(ids, offsets, range(len(offsets) - 1))
    if backwards:
        stream = stream[::-1]
    L = len(stream) // bs
    xs = torch.cat([x for x, _ in batches], 1)  # (bs, L - 1): each row read end to end
    ys = torch.cat([y for _, y in batches], 1)
    for r in range(bs):
        row = stream[r * L : (r + 1) * L]
        assert xs[r].tolist() == row[:-1].tolist()
        assert ys[r].tolist() == row[1:].tolist()
    for x, y in batches:
        assert x.dtype == torch.long and x.shape == y.shape and x.shape[0] == bs
        assert (x[:, 1:] == y[:, :-1]).all()


def test_lm_shuffle_uses_torch_rng_and_covers_docs():
    ids, offsets = _corpus()
    dl = LMLoader(ids, offsets, bs=2, bptt=5, shuffle=True)
    torch.manual_seed(0)
    a = [x.clone() for x, _ in dl]
    torch.manual_seed(0)
    b = [x.clone() for x, _ in dl]
    assert all((p == q).all() for p, q in zip(a, b))
    torch.manual_seed(0)
    order = torch.randperm(len(offsets) - 1).numpy()
    stream = _stream(ids, offsets, order)
    L = len(stream) // 2
    assert torch.cat(a, 1)[1].tolist() == stream[L : 2 * L - 1].tolist()


def test_lm_distributed_rows_and_var_bptt():
    ids, offsets = _corpus()
    full = torch.cat([x for x, _ in LMLoader(ids, offsets, bs=4, bptt=6)], 1)
    parts = [torch.cat([x for x, _ in LMLoader(ids, offsets, bs=4, bptt=6, rank=r, world_size=2)], 1) for r in (0, 1)]
    assert LMLoader.distributed_aware
    assert (torch.cat(parts, 0) == full).all()
    torch.manual_seed(1)
    v = list(LMLoader(ids, offsets, bs=4, bptt=10, var_bptt=True))
    assert all(x.shape[1] >= 1 for x, _ in v) and len({x.shape[1] for x, _ in v}) > 1
    assert (
        torch.cat([x for x, _ in v], 1) == torch.cat([x for x, _ in LMLoader(ids, offsets, bs=4, bptt=10)], 1)
    ).all()


def test_samplers_yield_every_index_once():
    lengths = np.random.default_rng(0).integers(1, 500, 1003)
    torch.manual_seed(0)
    s = list(SortishSampler(lengths, bs=8, mega=5))
    assert sorted(s) == list(range(1003))
    assert lengths[s[0]] == lengths.max()  # the longest batch comes first
    first = lengths[s[:8]]
    assert (np.diff(first) <= 0).all()  # sorted inside a batch
    v = list(SortSampler(lengths))
    assert sorted(v) == list(range(1003)) and (np.diff(lengths[v]) <= 0).all()


def test_pad_collate_front_end_and_truncation():
    samples = [(np.array([5, 6, 7]), 1), (np.array([9]), 0)]
    x, y = pad_collate(samples)
    assert x.tolist() == [[5, 6, 7], [1, 1, 9]] and y.tolist() == [1, 0] and y.dtype == torch.long
    x, _ = pad_collate(samples, pad_first=False, pad_idx=0)
    assert x.tolist() == [[5, 6, 7], [9, 0, 0]]
    x, _ = pad_collate(samples, max_len=2)
    assert x.tolist() == [[6, 7], [1, 9]]
    x, y = pad_collate(
        [(np.array([3]), np.array([1.0, 0.0, 1.0], np.float32)), (np.array([4]), np.zeros(3, np.float32))]
    )
    assert y.shape == (2, 3) and y.dtype == torch.float32
