"""Tokenizing a corpus in worker processes. Each worker encodes with its own growing id table and sends back ids plus
the tokens it saw first; `TokenTable` maps them to one table's ids and counts every token (the vocab's counts)."""

import gc
import os
from collections import deque
from contextlib import contextmanager
from itertools import chain, islice
from multiprocessing import get_context

import numpy as np

from .fast import SpacyTokenizer
from .rules import token_id

_W = {}  # per-process worker state

# Tokenizing allocates millions of small objects that live on in the memo, so the cyclic garbage collector's young
# generations fill and get scanned very often, walking that memo each time: ~15-25% of a worker's time on IMDB.
# Nothing here builds reference cycles, so workers (and the in-process path, for its duration) collect rarely.
_GC_THRESHOLD = (100_000, 50, 100)


@contextmanager
def _relaxed_gc():
    old = gc.get_threshold()
    gc.set_threshold(*_GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _init_worker(tok):  # runs inside _relaxed_gc (forked workers inherit its threshold)
    # `pid` names this worker's id table; random so two runs in one process never share a mapping
    _W.clear()
    _W.update(tok=tok, stoi={}, itos=[], sent=0, pid=(os.getpid(), os.urandom(8).hex()))


def _tok_batch(texts):
    return _W['tok'].batch(texts)


def _enc_batch(texts):
    "Encode a batch with worker-local ids; ship the ids as one array plus the tokens this worker saw first."
    tok, stoi, itos = _W['tok'], _W['stoi'], _W['itos']
    docs = tok.encode_batch(texts, stoi, itos)
    lens = np.fromiter(map(len, docs), np.int64, len(docs))
    ids = np.fromiter(chain.from_iterable(docs), np.int32, int(lens.sum()))
    new = itos[_W['sent'] :]
    _W['sent'] = len(itos)
    return _W['pid'], ids, lens, new


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def _run(fn, tok, texts, n_workers, chunk):
    "Map `fn` over batches of `texts` in worker processes; results in order, at most a few batches in flight."
    tok = tok or SpacyTokenizer()
    n_workers = default_workers() if n_workers is None else n_workers
    it = iter(texts)
    batches = iter(lambda: list(islice(it, chunk)), [])  # lists of `chunk` texts, the last one maybe shorter
    if n_workers <= 1:
        with _relaxed_gc():
            _init_worker(tok)
            for b in batches:
                yield fn(b)
        return
    # Pool.imap would read the whole input ahead; a small window of async tasks keeps memory bounded.
    with _relaxed_gc(), get_context('fork').Pool(n_workers, initializer=_init_worker, initargs=(tok,)) as pool:
        pending = deque()
        for b in batches:
            pending.append(pool.apply_async(fn, (b,)))
            if len(pending) >= 3 * n_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def tokenize_texts(texts, tok=None, n_workers=None, chunk=256):
    "Tokenize `texts` in `n_workers` processes, yielding one token list per text, in order."
    for res in _run(_tok_batch, tok, texts, n_workers, chunk):
        yield from res


class TokenTable:
    "Maps each worker's local ids to one growing table of token strings, and counts them."

    def __init__(self):
        self.stoi, self.itos, self._maps, self.counts = {}, [], {}, np.zeros(1024, np.int64)

    def add(self, pid, local_ids, new_toks):
        "Translate a worker batch (local ids + the tokens it saw first) to table ids and count them."
        m = self._maps.setdefault(pid, np.zeros(0, np.int32))
        ext = np.fromiter((token_id(self.stoi, self.itos, t) for t in new_toks), np.int32, len(new_toks))
        if len(ext):
            m = self._maps[pid] = np.concatenate([m, ext])
        ids = m[local_ids]
        if len(self.itos) > len(self.counts):
            self.counts = np.pad(self.counts, (0, max(len(self.itos), 2 * len(self.counts)) - len(self.counts)))
        self.counts += np.bincount(ids, minlength=len(self.counts)) if len(ids) else 0
        return ids

    def counter(self):
        return {t: int(c) for t, c in zip(self.itos, self.counts[: len(self.itos)])}


def encode_texts(texts, tok=None, n_workers=None, chunk=256, table=None):
    "Tokenize in parallel, yielding (ids int32, doc_lens) per batch with ids into `table` (which also counts)."
    table = TokenTable() if table is None else table
    for pid, ids, lens, new in _run(_enc_batch, tok, texts, n_workers, chunk):
        yield table.add(pid, ids, new), lens
