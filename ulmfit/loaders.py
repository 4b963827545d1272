"Batches for the language model (LMLoader) and the classifier (SortishSampler, SortSampler, pad_collate)."

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from common.config import ConfigError


class LMLoader:
    """Language-model batches straight off a token store's memmap. Each epoch the docs are shuffled (torch's global
    RNG) and concatenated into one stream, cut into `bs` contiguous rows. Batch i is the next window of every row, the
    target is the input shifted by one token, so the hidden state of row r carries over from batch i to batch i + 1:

        stream:  d3 d3 d3 d0 d0 d1 d1 d1 d1 d4 d4 d2 d2 d2 d2 d2 d2 d5 ...   (n tokens)
                 └──────── row 0 ────────┘└──────── row 1 ────────┘ ...     (bs rows of L = n // bs tokens)

                   batch 0     batch 1     batch 2
                 ┌──────────┬──────────┬──────┐
        row 0    │ t0 .. t69│t70 .. ...│ ...  │      x = row[j : j + sl]
        row 1    │          │          │      │      y = row[j + 1 : j + 1 + sl]
        ...      │          │          │      │
        row bs-1 └──────────┴──────────┴──────┘

    The stream is never materialized: a window's positions are mapped back to (doc, offset) with a searchsorted on
    the shuffled docs' cumulative lengths, then gathered from the memmap. With `rank`/`world_size` each DDP rank
    takes its own `bs // world_size` contiguous rows of the global batch (all ranks must share the torch seed so they
    shuffle and draw sequence lengths identically). `backwards=True` reads the stream end to start."""

    distributed_aware = True

    def __init__(
        self,
        ids,
        offsets=None,
        doc_idx=None,
        bs=64,
        bptt=70,
        shuffle=False,
        var_bptt=False,
        backwards=False,
        rank=0,
        world_size=1,
    ):
        if offsets is None:  # a TokenStore
            ids, offsets = ids.ids, ids.offsets
        if bs % world_size:
            raise ConfigError(f'bs: global bs={bs} is not divisible by world_size={world_size}')
        self.ids, self.offsets = ids, np.asarray(offsets)
        self.doc_idx = np.arange(len(self.offsets) - 1) if doc_idx is None else np.asarray(doc_idx)
        self.bs, self.global_bs, self.bptt, self.shuffle = bs // world_size, bs, bptt, shuffle
        self.var_bptt, self.backwards, self.rank, self.world_size = var_bptt, backwards, rank, world_size
        self.n_tokens = int((self.offsets[self.doc_idx + 1] - self.offsets[self.doc_idx]).sum())
        self.row_len = self.n_tokens // bs  # L: tokens per row (the stream's tail that doesn't fill a row is dropped)
        if self.row_len < 2:
            raise ConfigError(
                f'bs: {self.n_tokens} tokens are too few for {bs} rows of the LM batch; lower bs or give more text'
            )

    def __len__(self):
        "Batches per epoch (exact for fixed bptt, the expected count with var_bptt)."
        return math.ceil((self.row_len - 1) / self.bptt)

    def _seq_len(self):
        if not self.var_bptt:
            return self.bptt
        bptt = self.bptt if torch.rand(()).item() < 0.95 else self.bptt / 2
        return max(5, int(round(float(torch.normal(float(bptt), 5.0, ())))))

    def __iter__(self):
        order = self.doc_idx[torch.randperm(len(self.doc_idx)).numpy()] if self.shuffle else self.doc_idx
        starts = self.offsets[order]  # where each doc of the stream lives in the memmap
        cum = np.zeros(len(order) + 1, np.int64)
        np.cumsum(self.offsets[order + 1] - starts, out=cum[1:])  # stream position where each doc starts
        n, L = cum[-1], self.row_len
        rows = np.arange(self.rank * self.bs, (self.rank + 1) * self.bs, dtype=np.int64) * L  # (bs,) row starts
        j = 0
        while j < L - 1:
            sl = min(self._seq_len(), L - 1 - j)
            pos = rows[:, None] + j + np.arange(sl + 1)  # (bs, sl + 1) stream positions
            if self.backwards:
                pos = n - 1 - pos
            k = np.searchsorted(cum, pos, side='right') - 1  # which doc of the stream
            win = torch.from_numpy(np.asarray(self.ids[starts[k] + pos - cum[k]], dtype=np.int64))  # (bs, sl + 1)
            yield win[:, :-1], win[:, 1:]  # x, y: (bs, sl)
            j += sl


class SortSampler(Sampler):
    "Indices sorted by length, longest first (validation: little padding, deterministic)."

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths)

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        return iter(np.argsort(-self.lengths, kind='stable').tolist())


class SortishSampler(SortSampler):
    """Roughly sorted by length, with randomness (torch's global RNG):

        randperm ─► [ megabatch 0 (50*bs) ][ megabatch 1 ] ...     each sorted by length, longest first
                 ─► cut into batches of bs ─► the full batch holding the longest doc goes first (so an
                    out-of-memory shows up at once), the other full batches are shuffled, the partial batch goes last

    The DataLoader cuts this index stream into batches of bs again, so the partial batch must stay last: anywhere else
    it shifts every later cut, and those batches straddle two length groups (lots of padding). Last, it is also what
    `drop_last=True` drops (fastai v2 text/data.py `SortedDL.get_idxs` likewise keeps `batches[-1]` last)."""

    def __init__(self, lengths, bs, mega=50):
        super().__init__(lengths)
        self.bs, self.mega = bs, mega

    def __iter__(self):
        idx = torch.randperm(len(self.lengths)).numpy()
        sz = self.bs * self.mega
        megas = [idx[i : i + sz] for i in range(0, len(idx), sz)]
        idx = np.concatenate([m[np.argsort(-self.lengths[m], kind='stable')] for m in megas])
        batches = [idx[i : i + self.bs] for i in range(0, len(idx), self.bs)]
        last = [batches.pop()] if len(batches) > 1 and len(batches[-1]) < self.bs else []
        first = batches.pop(int(np.argmax([self.lengths[b[0]] for b in batches])))  # b[0] is each batch's longest
        rest = [batches[i] for i in torch.randperm(len(batches)).tolist()]
        return iter(np.concatenate([first] + rest + last).tolist())


def pad_collate(samples, pad_idx=1, pad_first=True, max_len=None):
    """[(ids, label), ...] -> x (bs, sl) LongTensor padded with `pad_idx`, y (bs,) or (bs, n_labels).

        pad_first=True:   [pad pad pad  a   b   c ]      (the RNN reads the text last, right before pooling)
                          [ d   e   f   g   h   i ]
        pad_first=False:  [ a   b   c  pad pad pad]
    `max_len` keeps the last max_len tokens of longer docs."""
    seqs = [np.asarray(s[0]) for s in samples]
    if max_len is not None:
        seqs = [s[-max_len:] for s in seqs]
    sl = max(len(s) for s in seqs)
    x = torch.full((len(seqs), sl), pad_idx, dtype=torch.long)
    for i, s in enumerate(seqs):
        start = sl - len(s) if pad_first else 0
        x[i, start : start + len(s)] = torch.from_numpy(s.astype(np.int64))
    ys = [s[1] for s in samples]
    y = torch.as_tensor(np.stack(ys)) if isinstance(ys[0], np.ndarray) and ys[0].ndim else torch.tensor(ys)
    return x, (y.float() if y.is_floating_point() else y.long())


class TextClassDataset(Dataset):
    "Docs `idx` of a TokenStore as (ids, label); ids truncated to the last `max_len` tokens when given."

    def __init__(self, store, idx, max_len=None):
        self.store, self.idx, self.max_len = store, np.asarray(idx), max_len

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        j = self.idx[i]
        ids = np.asarray(self.store[j])
        return (ids if self.max_len is None else ids[-self.max_len :]), self.store.labels[j]

    @property
    def lengths(self):
        ls = self.store.lengths[self.idx]
        return np.minimum(ls, self.max_len) if self.max_len is not None else ls
