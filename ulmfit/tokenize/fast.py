"The memoised spaCy path: the same tokens as `rules.reference`, several times faster on real text."

import re
from functools import cached_property
from itertools import chain, repeat

import numpy as np
import spacy
from spacy.attrs import IDX, LENGTH, ORTH

from .rules import apply_post_rules, blank_tokenizer, prepare, reference, token_id

# spaCy walks the text alternating between runs of whitespace and runs of non-whitespace ("chunks"). Each chunk is
# tokenized on its own (prefixes/suffixes/infixes/special cases never look past it); a whitespace run gives nothing
# when it is a single ' ' after a chunk, else one token (minus that ' '). So if we cut the text at single spaces,
#
#   "xxbos Great movie!! \n\nThe end"      (after the pre-rules: no double spaces)
#    └───┘ └───┘ └────┘ └─────┘ └─┘         pieces = text.split(' ')
#      ↓     ↓      ↓       ↓     ↓
#   [xxbos][xxmaj great][movie ! !][\n\n xxmaj the][end]
#
# every piece maps to the same tokens wherever it appears (between single spaces), and that map, piece -> final
# post-processed tokens (or their ids), can be memoized per process. Real text repeats its pieces a lot, so most of
# spaCy's per-call work and all of the post-rule Python work disappear. Texts where this reasoning needs care (a
# space between two other whitespace chars, leading whitespace, double spaces) take the plain path; the output is
# the same either way, and tests plus bench/tokenize_speed.py --reference-docs check it against plain spaCy.
_re_ws_sp_ws = re.compile(r'\s \s')
_re_ws = re.compile(r'\s')
_re_split_ws = re.compile(r'\S+|\s+')
_OPEN1, _CLOSE1 = frozenset('("\''), frozenset(',!?;:)"\'')  # one-character prefixes/suffixes spaCy always splits


def _set_risk(risk, p, st, en):
    "Record piece `p`'s start/end risk masks (only the nonzero ones: most pieces have none)."
    if st:
        risk[0][p] = st
    if en:
        risk[1][p] = en


class SpacyTokenizer:
    "fastai-compatible rules + spaCy's blank English tokenizer; `tok(text) -> list[str]`, memoized per piece."

    kind = 'spacy'
    _ids = None  # (stoi, memo, risk, conv) of the id table `encode_batch` last extended

    def __init__(self, lang='en', include_bos=True, include_eos=False, memo_size=2_000_000):
        self.lang, self.include_bos, self.include_eos, self.memo_size = lang, include_bos, include_eos, memo_size

    def config(self):
        "Everything that changes the output (goes into the store's cache key)."
        out = dict(kind=self.kind, lang=self.lang, include_bos=self.include_bos, include_eos=self.include_eos)
        return dict(out, spacy=spacy.__version__, rules_version=2)

    def __getstate__(self):  # only the settings: the spaCy pipelines, memos and id table are rebuilt after unpickling
        return {k: getattr(self, k) for k in ('lang', 'include_bos', 'include_eos', 'memo_size')}

    @cached_property
    def _fast_tok(self):
        return blank_tokenizer(self.lang, fast=True)

    @cached_property
    def _risk_sets(self):
        "(left, right, bit, mask): token pairs that can join into a special case across a space, as bitmasks."
        # spaCy re-checks special cases containing affixes ("''", ":-)", "a.m.") on the token sequence after the affix
        # split, and that match can straddle a space: "Back'' ''Return" gives '' ' ' rather than '' ''. A key whose
        # split (without special cases) is [t1, ..., tn] can only straddle a boundary where the left piece ends with
        # some t_i and the right piece starts with t_(i+1). `bit[t_i] & mask[t_(i+1)]` is nonzero exactly for such
        # pairs; `left`/`right` are the tokens that have a bit/mask.
        tok, bare = self._fast_tok, blank_tokenizer(self.lang, fast=True, rules=False)
        pairs = set()
        for k in tok.rules:
            if tok.find_prefix(k) or tok.find_suffix(k) or tok.find_infix(k) or ' ' in k:
                p = [t.text for t in bare(k) if not t.is_space]
                pairs.update(zip(p, p[1:]))
        bit = {a: 1 << j for j, a in enumerate(sorted({a for a, _ in pairs}))}
        mask = {}
        for a, b in pairs:
            mask[b] = mask.get(b, 0) | bit[a]
        return tuple(bit), tuple(mask), bit, mask

    def _flag(self, p, risk, toks, bare):
        "Record the risk masks of the tokens piece `p` starts/ends with, split with and without special cases."
        _, _, bit, mask = self._risk_sets
        _set_risk(risk, p, mask.get(toks[0], 0) | mask.get(bare[0], 0), bit.get(toks[-1], 0) | bit.get(bare[-1], 0))

    @cached_property
    def _special_keys(self):
        return frozenset(self._fast_tok.rules)

    def reference(self, text):
        "The slow, obviously-correct path (`rules.reference`) with this tokenizer's settings."
        return reference(text, self.lang, self.include_bos, self.include_eos)

    @cached_property
    def _special_ends(self):
        "First and last token texts that any special case produces."
        outs = [[t[ORTH] for t in v] for v in self._fast_tok.rules.values()]
        return frozenset(o[0] for o in outs if o), frozenset(o[-1] for o in outs if o)

    @cached_property
    def _risk_lens(self):
        _, _, bit, mask = self._risk_sets
        return sorted(set(map(len, mask))), sorted(set(map(len, bit)))

    def _other_risk(self, p, t, start):
        "Does `p` start (or end) with a risky token other than `t`?"
        _, _, bit, mask = self._risk_sets
        if start:
            return any(p[:n] != t and p[:n] in mask for n in self._risk_lens[0])
        return any(p[-n:] != t and p[-n:] in bit for n in self._risk_lens[1])

    def _fill(self, miss, memo, risk, conv):
        "Tokenize the pieces missing from `memo` with one spaCy call; store `conv(tokens)` and boundary risk masks."
        # A piece with whitespace inside ('end.\\n\\nThe', from '<br /><br />') is its chunks plus one token per
        # whitespace run: the run itself, or run + ' ' at the piece's end (that space joins it). Its chunks are
        # common pieces on their own, so only they go through spaCy.
        simple, composite = [], []
        for p in miss:
            (composite if _re_ws.search(p) else simple).append(p)
        subs = [_re_split_ws.findall(p) for p in composite]
        simple = list(dict.fromkeys(simple + [c for cs in subs for c in cs if not c[0].isspace() and c not in memo]))
        # A purely alphabetic piece is one token unless it is one of spaCy's special cases ("cannot", "gonna"):
        # no prefix, suffix, infix or URL pattern of the English tokenizer can fire on letters alone.
        left, right, _, _ = self._risk_sets
        specials = self._special_keys
        for p in simple:
            tk = [p] if p.isalpha() and p not in specials else self._affix_split(p)
            if tk:
                memo[p] = conv(tk)
                if p.startswith(right) or p.endswith(left):
                    self._flag(p, risk, tk, tk)
        rest = [p for p in simple if p not in memo]
        toks = self._split(self._fast_tok, rest)
        # The split without special cases can only differ at an end whose token a special case produced: affixes
        # are stripped from the outside in, identically, until a special case stops the stripping. And it only adds
        # a flag if the piece starts/ends with some other risky token.
        firsts, lasts = self._special_ends
        cand = [
            i
            for i, (p, tk) in enumerate(zip(rest, toks))
            if (tk[0] in firsts and self._other_risk(p, tk[0], start=True))
            or (tk[-1] in lasts and self._other_risk(p, tk[-1], start=False))
        ]
        bare = dict(zip(cand, self._split(blank_tokenizer(self.lang, fast=True, rules=False), [rest[i] for i in cand])))
        for i, (p, tk) in enumerate(zip(rest, toks)):
            memo[p] = conv(tk)
            if p.startswith(right) or p.endswith(left):
                self._flag(p, risk, tk, bare.get(i, tk))
        for p, cs in zip(composite, subs):
            res = []
            for j, c in enumerate(cs):
                res += memo[c] if not c[0].isspace() else conv([c + ' ' if j == len(cs) - 1 else c])
            memo[p] = tuple(res)
            _set_risk(risk, p, risk[0].get(cs[0], 0), risk[1].get(cs[-1], 0))  # whitespace runs never have masks

    def _affix_split(self, p):
        "`'(film,'` -> `['(', 'film', ',']`: one opening and/or closing mark around letters, else None (English only)."
        # spaCy strips one prefix and one suffix per step, checking the special cases on `p`, `p` minus its prefix,
        # `p` minus its suffix and the stem; these marks are affixes after any letter, and letters never are. A '.'
        # is only a suffix after some letters (lowercase, or two capitals): here only after a-z.
        n = len(p)
        if n < 2 or self.lang != 'en':
            return None
        a = 1 if p[0] in _OPEN1 else 0
        b = n - 1 if p[-1] in _CLOSE1 or (p[-1] == '.' and 'a' <= p[-2] <= 'z') else n
        w = p[a:b]
        if (a == 0 and b == n) or not w.isalpha():
            return None
        if not self._special_keys.isdisjoint((p, w, p[a:], p[:b])):
            return None
        toks = ([p[0]] if a else []) + [w] + ([p[-1]] if b < n else [])
        _, _, bit, mask = self._risk_sets  # a special case with affixes could join two of these tokens
        if any(bit.get(x, 0) & mask.get(y, 0) for x, y in zip(toks, toks[1:])):
            return None
        return toks

    @staticmethod
    def _split(tokenizer, pieces):
        "Tokens of each piece, from one call on the pieces joined by ' zqz ' (a word no special case involves)."
        # Each piece sees the same single-space context as in the text; a token belongs to the piece it starts in.
        if not pieces:
            return []
        n = np.fromiter(map(len, pieces), np.int64, len(pieces))
        starts = 4 + np.cumsum(n + 5) - (n + 5)  # each piece is followed by ' zqz '
        joined = 'zqz ' + ' zqz '.join(pieces) + ' zqz'
        idx, lens = tokenizer(joined).to_array([IDX, LENGTH]).T  # no Token objects: much cheaper
        k = np.searchsorted(starts, idx, 'right') - 1
        keep = (k >= 0) & (idx < starts[k] + n[k])
        toks = [[] for _ in pieces]
        for kk, i, n in zip(k[keep].tolist(), idx[keep].tolist(), lens[keep].tolist()):
            toks[kk].append(joined[i : i + n])
        return toks

    def _pieces(self, text):
        "The prepared text and its pieces, or None for the pieces when the text must take the plain path."
        text = prepare(text, self.include_bos, self.include_eos)
        if len(text) > 1 and text[-1] == ' ' and not text[-2].isspace():
            text = text[:-1]  # spaCy drops it too
        if not text or text[0].isspace() or text[-1].isspace() or '  ' in text or _re_ws_sp_ws.search(text):
            return text, None
        return text, text.split(' ')

    def _run(self, texts, memo, risk, conv):
        "Outputs of a batch of documents: every piece missing from the memo goes through one `_fill`."
        if len(memo) > self.memo_size:  # bounded memory
            for d in (memo, *risk):
                d.clear()
        docs, miss = [], {}
        for t in texts:
            text, pieces = self._pieces(t)
            got = None if pieces is None else list(map(memo.get, pieces))
            if got is not None and None in got:
                miss.update(dict.fromkeys(p for p, g in zip(pieces, got) if g is None))
                got = None  # looked up again after the fill
            docs.append((text, pieces, got))
        if miss:
            self._fill(list(miss), memo, risk, conv)
        return [
            self._plain(text, conv) if pieces is None else self._join(text, pieces, got, memo, risk, conv)
            for text, pieces, got in docs
        ]

    def _join(self, text, pieces, got, memo, risk, conv):
        "Output of one document from the memo, or from the plain path if a special case joins two of its pieces."
        if got is None:
            got = list(map(memo.__getitem__, pieces))
        starts, ends = risk

        def risky():
            return map(int.__and__, map(ends.get, pieces, repeat(0)), map(starts.get, pieces[1:], repeat(0)))

        # A special case might straddle the space between pieces i and i + 1 (pieces that can start one are rarer).
        if not starts.keys().isdisjoint(pieces) and any(risky()):
            for i in [i for i, r in enumerate(risky()) if r]:
                # Tokenize 4 pieces either side in context (longer than any special case); if that differs
                # from the memo, the match happened: redo the whole text the plain way.
                lo, hi = max(0, i - 3), min(len(pieces), i + 5)
                if list(self._plain(' '.join(pieces[lo:hi]), conv)) != list(chain.from_iterable(got[lo:hi])):
                    return self._plain(text, conv)
        return list(chain.from_iterable(got))

    def _plain(self, text, conv):
        return list(conv([t.text for t in self._fast_tok(text)]))

    def _conv(self, post, stoi=None, itos=None):
        "Tokens -> post-processed tokens (or their ids in `stoi`/`itos`), cached per token: the rules are per token."

        def conv(toks):
            res = []
            for t in toks:
                r = post.get(t)
                if r is None:
                    r = apply_post_rules([t])
                    if stoi is not None:
                        r = [token_id(stoi, itos, u) for u in r]
                    r = post[t] = tuple(r)
                res += r
            return tuple(res)

        return conv

    @cached_property
    def _strs(self):
        return {}, ({}, {}), self._conv({})  # memo, risk, conv of `batch`

    def batch(self, texts):
        "Tokens of each document (identical to `reference`); pieces unseen so far go through spaCy together."
        return self._run(texts, *self._strs)

    def encode_batch(self, texts, stoi, itos):
        "Token ids of each document in a growing table (`stoi`/`itos`, extended in place; one table per tokenizer)."
        if self._ids is None or self._ids[0] is not stoi:
            self._ids = stoi, {}, ({}, {}), self._conv({}, stoi, itos)
        return self._run(texts, *self._ids[1:])

    def __call__(self, text):
        "Tokens of one document (identical to `reference(text)`)."
        return self.batch([text])[0]

    def encode(self, text, stoi, itos):
        "Token ids of one document in a growing table (`stoi`/`itos`, extended in place; one table per tokenizer)."
        return self.encode_batch([text], stoi, itos)[0]
