"Vocab: token <-> id, built from counts (specials first, size padded to a multiple of 8), saved as JSON."

import json
from collections import Counter
from itertools import chain

import numpy as np

from common.checkpoint import atomic_write_json
from common.config import ConfigError
from ulmfit.tokenize import MAJ, PAD, SPECIALS, UP

FAKE = 'xxfake'


class Vocab:
    "Maps tokens to ids and back; unknown tokens map to `xxunk` (id 0)."

    def __init__(self, itos):
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError('vocab has duplicate tokens')
        if self.itos[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f'vocab must start with the special tokens {SPECIALS}')

    @classmethod
    def from_counts(cls, counts, max_vocab=60000, min_freq=3, specials=SPECIALS):
        "Most frequent tokens (count >= min_freq, ties in first-seen order) after the specials, padded to 8k size."
        if max_vocab < len(specials):
            raise ConfigError(f'max_vocab: {max_vocab} is smaller than the {len(specials)} specials')
        sp = set(specials)
        toks = [t for t, c in sorted(counts.items(), key=lambda tc: -tc[1]) if c >= min_freq and t not in sp]
        itos = list(specials) + toks[: max_vocab - len(specials)]
        # A multiple of 8 makes the embedding/softmax matrices friendlier to tensor cores.
        itos += [f'{FAKE}{i}' for i in range(-len(itos) % 8)]
        return cls(itos)

    @classmethod
    def from_tokens(cls, docs, **kwargs):
        "Count tokens over `docs` (lists of tokens) and build the vocab."
        return cls.from_counts(Counter(chain.from_iterable(docs)), **kwargs)

    def __len__(self):
        return len(self.itos)

    def __contains__(self, t):
        return t in self.stoi

    def __eq__(self, o):
        return isinstance(o, Vocab) and self.itos == o.itos

    def __repr__(self):
        return f'Vocab({len(self)} tokens: {self.itos[9:14]}...)'

    @property
    def pad_idx(self):
        return self.stoi[PAD]

    def numericalize(self, toks):
        "Tokens -> numpy array of int64 ids (unknowns -> 0)."
        get = self.stoi.get
        return np.fromiter((get(t, 0) for t in toks), np.int64, len(toks))

    def textify(self, ids, sep=' ', decode_caps=True):
        "Ids -> text; with `decode_caps`, `xxmaj the` -> `The` and `xxup the` -> `THE` for display."
        toks = [self.itos[int(i)] for i in ids]
        return sep.join(undo_caps(toks) if decode_caps else toks)

    def save(self, path):
        "Write the vocab as JSON (`{'itos': [...]}`), atomically."
        atomic_write_json(path, dict(itos=self.itos), indent=None)

    @classmethod
    def load(cls, path):
        "Read a vocab written by `save` (or a plain JSON list of tokens)."
        with open(path, encoding='utf-8') as f:
            d = json.load(f)
        return cls(d['itos'] if isinstance(d, dict) else d)


def undo_caps(toks):
    "Undo the case rules for display: `['xxmaj', 'the', 'xxup', 'end']` -> `['The', 'END']`."
    res, mode = [], None
    for t in toks:
        if t in (MAJ, UP) and mode is None:
            mode = t
        else:
            res.append({MAJ: t[:1].upper() + t[1:], UP: t.upper()}.get(mode, t))
            mode = None
    return res
