"""Token store: a corpus tokenized and numericalized once, kept on disk and memory-mapped afterwards.

    ULMFIT_DATA/cache/<key>/
        tokens.bin    every document's ids back to back (uint16 if the vocab fits, else int32)
        offsets.npy   (n_docs + 1,) int64: doc i is tokens[offsets[i]:offsets[i + 1]]
        labels.npy    (n_docs,) int64 class ids (-1 = unlabeled) or (n_docs, n_labels) float32 (multi-label)
        splits.npy    (n_docs,) uint8 index into meta['split_names']
        vocab.json    the Vocab
        meta.json     counts, dtype, label/split names, tokenizer config, the sources' fingerprint

`key` hashes the sources (paths + sizes + mtimes) and the tokenizer/vocab settings, so a second run with the same
inputs finds the folder and just opens it. The folder is built under a temp name and renamed when complete.
"""

import errno
import hashlib
import json
import os
import random
import shutil
import time
from array import array
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.checkpoint import DiskFullError, atomic_write_json
from common.config import ConfigError
from common.download import get_data_root
from common.log import show_progress
from ulmfit.tokenize import SentencePieceTokenizer, SpacyTokenizer, TokenTable, encode_texts
from ulmfit.vocab import Vocab

STORE_VERSION = 1


class TokenStore:
    "A built store, memory-mapped: `store[i]` is doc i's ids, `store.labels[i]` its label."

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / 'meta.json').exists():
            raise FileNotFoundError(f'not a token store: {self.path}')
        self.meta = json.loads((self.path / 'meta.json').read_text(encoding='utf-8'))
        self.vocab = Vocab.load(self.path / 'vocab.json')
        n, dtype = self.meta['n_tokens'], self.meta['dtype']
        # np.memmap refuses empty files; an empty corpus gets an empty array.
        self.ids = np.memmap(self.path / 'tokens.bin', dtype=dtype, mode='r', shape=(n,)) if n else np.zeros(0, dtype)
        self.offsets = np.load(self.path / 'offsets.npy')  # (n_docs + 1,)
        self.labels = np.load(self.path / 'labels.npy')
        self.splits = np.load(self.path / 'splits.npy')
        self.label_names, self.split_names = self.meta['label_names'], self.meta['split_names']
        self.multi_label = self.meta['multi_label']
        self.lengths, self.n_tokens = np.diff(self.offsets), len(self.ids)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def __repr__(self):
        return f'TokenStore({self.path}, {len(self)} docs, {len(self.ids)} tokens, vocab {len(self.vocab)})'

    def split_idx(self, *names):
        "Indices of the docs in any of the named splits (all docs when no name is given)."
        if not names:
            return np.arange(len(self))
        bad = [n for n in names if n not in self.split_names]
        if bad:
            raise KeyError(f'{self.path}: no split {bad}; splits are {self.split_names}')
        codes = [self.split_names.index(n) for n in names]
        return np.flatnonzero(np.isin(self.splits, codes))

    def labeled_idx(self, *names):
        "Indices of labeled docs in the named splits."
        idx = self.split_idx(*names)
        return idx if self.multi_label else idx[self.labels[idx] >= 0]

    @property
    def is_valid(self):
        return np.isin(self.splits, [i for i, s in enumerate(self.split_names) if s == 'valid'])


def build_store(
    reader,
    tok=None,
    vocab=None,
    max_vocab=60000,
    min_freq=3,
    n_workers=None,
    root=None,
    chunk=256,
    progress=True,
    name='',
):
    "Tokenize + numericalize `reader`'s docs into a TokenStore under `root/cache` (reused), against `vocab` if given."
    tok = tok or SpacyTokenizer()
    vocab_cfg = dict(max_vocab=max_vocab, min_freq=min_freq)
    if vocab is not None:  # a given vocab is known by its tokens
        vocab_cfg = dict(vocab_sha256=hashlib.sha256('\n'.join(vocab.itos).encode()).hexdigest())
    blob = dict(
        v=STORE_VERSION, source=reader.fingerprint(), tok=tok.config(), vocab=vocab_cfg
    )  # what decides its contents
    key = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]
    cache = get_data_root(root) / 'cache'
    final = cache / key
    if (final / 'meta.json').exists():
        return TokenStore(final)
    tmp = cache / f'.tmp-{key}-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build(reader, tok, vocab, blob, key, n_workers, chunk, progress, tmp, name)
        try:
            os.rename(tmp, final)
        except OSError:  # somebody else finished the same store first: theirs is identical
            if not (final / 'meta.json').exists():
                raise
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(
            f'{cache}: no space left on device while building the token store of {name or key} '
            f'(the disk is full); nothing was kept. Free some space and run again'
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenStore(final)


def _build(reader, tok, vocab, blob, key, n_workers, chunk, progress, tmp, name):
    t0 = time.time()
    labels, splits, split_names, lens = [], array('B'), {}, array('q')

    def texts():
        "Feed texts to the workers; remember labels/splits here (they're small)."
        for d in reader:
            labels.append(d.label)
            splits.append(split_names.setdefault(d.split or 'train', len(split_names)))
            yield d.text

    # pass 1: tokenize in parallel, ids into a growing table of strings (counted), appended to a temp file
    table = TokenTable()
    show = progress and show_progress()
    bar = tqdm(desc=f'tokenizing {name}'.strip(), unit=' docs', disable=not show, mininterval=1, smoothing=0.1)
    n_tok = 0
    with bar, open(tmp / 'pass1.bin', 'wb') as f:
        for ids, dl in encode_texts(texts(), tok, n_workers, chunk, table):
            ids.astype(np.int32).tofile(f)
            lens.extend(dl.tolist())
            n_tok += len(ids)
            bar.update(len(dl))
            bar.set_postfix(tokens=n_tok, refresh=False)
    # pass 2: final vocab, then map the temp ids to it a block at a time
    if vocab is None:
        vocab = Vocab.from_counts(table.counter(), **blob['vocab'])
    m = np.fromiter((vocab.stoi.get(t, 0) for t in table.itos), np.int64, len(table.itos))
    dtype = np.uint16 if len(vocab) <= 1 << 16 else np.int32
    n_unk = 0
    with open(tmp / 'tokens.bin', 'wb') as f:
        if n_tok:
            p1 = np.memmap(tmp / 'pass1.bin', dtype=np.int32, mode='r')
            for s in range(0, n_tok, 1 << 24):
                out = m[p1[s : s + (1 << 24)]]
                n_unk += int((out == 0).sum())
                out.astype(dtype).tofile(f)
            del p1
    os.remove(tmp / 'pass1.bin')
    np.save(tmp / 'offsets.npy', np.concatenate([[0], np.cumsum(np.frombuffer(lens, np.int64))]))
    lab, label_names, multi = _encode_labels(labels, reader)
    np.save(tmp / 'labels.npy', lab)
    np.save(tmp / 'splits.npy', np.frombuffer(splits, np.uint8).copy())
    vocab.save(tmp / 'vocab.json')
    meta = dict(
        version=STORE_VERSION,
        key=key,
        name=name,
        n_docs=len(lens),
        n_tokens=n_tok,
        n_unk=n_unk,
        dtype=np.dtype(dtype).name,
        vocab_size=len(vocab),
        distinct_tokens=len(table.itos),
        label_names=label_names,
        multi_label=multi,
        split_names=list(split_names),
        split_counts={s: int((np.frombuffer(splits, np.uint8) == i).sum()) for s, i in split_names.items()},
        tokenizer=blob['tok'],
        source=blob['source'],
        seconds=round(time.time() - t0, 1),
        created=time.strftime('%Y-%m-%dT%H:%M:%S'),
    )
    atomic_write_json(tmp / 'meta.json', meta)


def spm_key(*inputs):
    "SentencePiece cache key of its inputs, the same in every process and DDP rank (Python's hash() is salted)."
    return hashlib.sha256(json.dumps(list(inputs), sort_keys=True, default=str).encode()).hexdigest()[:20]


def make_tokenizer(kind, reader=None, root=None, spm_vocab_size=15000, spm_model_type='unigram'):
    "'spacy' (fastai rules) or 'spm': SentencePiece trained on a sample of `reader`'s docs (reused from `root/cache`)."
    if kind == 'spacy':
        return SpacyTokenizer()
    if kind != 'spm':
        raise ConfigError(f"tokenizer: must be 'spacy' or 'spm', not {kind!r}")
    n_sample, seed = 20000, 42  # a reservoir sample of 20,000 docs
    key = spm_key(reader.fingerprint(), spm_vocab_size, spm_model_type, n_sample, seed)
    out = get_data_root(root) / 'cache' / f'spm-{key}'
    if (out / 'spm.model').exists():
        return SentencePieceTokenizer(out / 'spm.model')
    rng, sample = random.Random(seed), []
    for i, d in enumerate(reader):
        if i < n_sample:
            sample.append(d.text)
        elif (j := rng.randrange(i + 1)) < n_sample:
            sample[j] = d.text
    return SentencePieceTokenizer.train(sample, out, vocab_sz=spm_vocab_size, model_type=spm_model_type)


def _encode_labels(labels, reader):
    "Raw labels -> (array, names, multi_label). Single: int ids (-1 unlabeled); multi: (n, n_labels) 0/1 floats."
    present = [lb for lb in labels if lb is not None]
    if not present:
        return np.full(len(labels), -1, np.int64), [], False
    if isinstance(present[0], tuple):
        cols = getattr(reader, 'label_cols', None)
        if cols and len(cols) > 1 and len(present[0]) == len(cols):  # one 0/1 column per label
            return np.array([lb if lb is not None else [0] * len(cols) for lb in labels], np.float32), list(cols), True
        names = sorted({str(x) for lb in present for x in lb})
        pos = {n: i for i, n in enumerate(names)}
        arr = np.zeros((len(labels), len(names)), np.float32)
        for i, lb in enumerate(labels):
            for x in lb or ():
                arr[i, pos[str(x)]] = 1
        return arr, names, True
    uniq = sorted(set(present), key=lambda v: (str(type(v)), v))
    pos = {v: i for i, v in enumerate(uniq)}
    return np.array([-1 if lb is None else pos[lb] for lb in labels], np.int64), [str(v) for v in uniq], False
