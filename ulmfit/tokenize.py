"Text -> tokens: fastai-style rules around spaCy's English tokenizer, a SentencePiece alternative, and a parallel runner."
import gc
import html
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, repeat
from multiprocessing import get_context

import numpy as np
from spacy.attrs import IDX, LENGTH, ORTH

# Special tokens and their ids are fixed: every vocab starts with them in this order.
UNK, PAD, BOS, EOS, FLD, REP, WREP, UP, MAJ = 'xxunk xxpad xxbos xxeos xxfld xxrep xxwrep xxup xxmaj'.split()
SPECIALS = [UNK, PAD, BOS, EOS, FLD, REP, WREP, UP, MAJ]


# ---------------------------------------------------------------- pre-rules (text -> text)

_HTML_FIXES = [('#39;', "'"), ('amp;', '&'), ('#146;', "'"), ('nbsp;', ' '), ('#36;', '$'), ('\\n', '\n'),
               ('quot;', "'"), ('<br />', '\n'), ('\\"', '"'), ('<unk>', UNK), (' @.@ ', '.'), (' @-@ ', '-'),
               (' @,@ ', ','), ('\\', ' \\ ')]
_re_spaces = re.compile(r'  +')


def fix_html(t: str) -> str:
    "Undo HTML/WikiText escapes: `'a<br />b &lt;i&gt;'` -> `'a\\nb <i>'`, `'x @-@ y'` -> `'x-y'`, `'&amp;'` -> `'&&'`."
    for old, new in _HTML_FIXES:
        if old in t: t = t.replace(old, new)
    if '&' in t: t = html.unescape(t)
    return _re_spaces.sub(' ', t) if '  ' in t else t


_re_rep = re.compile(r'(\S)(\1{3,})')


def _has_run4(t: str) -> bool:
    "Does any character occur 4 times in a row? (A vectorised pre-check: the regex alone costs ~50 us per review.)"
    a = np.frombuffer(t.encode('utf-32-le', 'surrogatepass'), np.uint32)
    e = a[1:] == a[:-1]
    return bool((e[:-2] & e[1:-1] & e[2:]).any())


def replace_rep(t: str) -> str:
    "A character repeated 4+ times: `'wow!!!!!'` -> `'wow xxrep 5 ! '`."
    if len(t) < 4 or not _has_run4(t): return t
    return _re_rep.sub(lambda m: f' {REP} {len(m.group(0))} {m.group(1)} ', t)


# In any match the word and the non-word run after it are whole (the repeat must start with a word character right
# after them), so possessive quantifiers change no match; they only stop the backtracking at every other word.
_re_wrep = re.compile(r'(\b\w++\W++)(\1{3,})')


def replace_wrep(t: str) -> str:
    "A word repeated 4+ times: `'no no no no way'` -> `' xxwrep 4 no  way'`."
    return _re_wrep.sub(lambda m: f' {WREP} {len(m.group(2).split()) + 1} {m.group(1)} ', t)


_re_spec = re.compile(r'([/#])')


def spec_add_spaces(t: str) -> str:
    "Put spaces around `/` and `#`: `'and/or #1'` -> `'and / or  # 1'`."
    return _re_spec.sub(r' \1 ', t) if '/' in t or '#' in t else t


def rm_useless_spaces(t: str) -> str:
    "Collapse runs of spaces (not other whitespace): `'a   b\\n\\nc'` -> `'a b\\n\\nc'`."
    return _re_spaces.sub(' ', t) if '  ' in t else t


# ---------------------------------------------------------------- post-rules (tokens -> tokens)

def replace_all_caps(toks: list[str]) -> list[str]:
    "All-caps tokens longer than one char: `['THE', 'End', 'I']` -> `['xxup', 'the', 'End', 'I']`."
    res = []
    for t in toks:
        if len(t) > 1 and t.isupper(): res += [UP, t.lower()]
        else: res.append(t)
    return res


def replace_maj(toks: list[str]) -> list[str]:
    "Capitalised tokens: `['The', 'iPhone', 'A']` -> `['xxmaj', 'the', 'iPhone', 'A']`."
    res = []
    for t in toks:
        if len(t) > 1 and t[0].isupper() and t[1:].islower(): res += [MAJ, t.lower()]
        else: res.append(t)
    return res


def lowercase(toks: list[str]) -> list[str]:
    "Lowercase every token: `['xxmaj', 'the', 'iPhone']` -> `['xxmaj', 'the', 'iphone']`."
    return [t.lower() for t in toks]


PRE_RULES = [fix_html, replace_rep, replace_wrep, spec_add_spaces, rm_useless_spaces]
POST_RULES = [replace_all_caps, replace_maj, lowercase]


def apply_pre_rules(t: str, rules=PRE_RULES) -> str:
    "Run the text-level rules in order."
    for r in rules: t = r(t)
    return t


def apply_post_rules(toks: list[str], rules=POST_RULES) -> list[str]:
    "Run the token-level rules in order (fastai v1 order: caps, then maj, then lowercase)."
    for r in rules: toks = r(toks)
    return toks


# ---------------------------------------------------------------- spaCy tokenizer with a chunk memo

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


_PIPES = {}  # (lang, fast, rules) -> tokenizer, shared by the SpacyTokenizers of a process
_OPEN1, _CLOSE1 = frozenset('("\''), frozenset(',!?;:)"\'')  # one-character prefixes/suffixes spaCy always splits


def _blank_tokenizer(lang: str, fast: bool, rules: bool = True):
    "spaCy's tokenizer for `lang` (no model download); `fast` skips lexical attributes, `rules=False` special cases."
    if (lang, fast, rules) not in _PIPES:
        import spacy
        nlp = spacy.blank(lang)
        # New words normally get spaCy's lexical attributes (shape, like_num, ...) computed: that is most of the
        # time spent on unseen words, and it never changes where tokens are split.
        if fast: nlp.vocab.lex_attr_getters = {}
        if not rules: nlp.tokenizer.rules = {}
        _PIPES[lang, fast, rules] = nlp.tokenizer
    return _PIPES[lang, fast, rules]


class SpacyTokenizer:
    "fastai-compatible rules + spaCy's blank English tokenizer; `tok(text) -> list[str]`, memoized per piece."
    kind = 'spacy'

    def __init__(self, lang: str = 'en', include_bos: bool = True, include_eos: bool = False,
                 memo_size: int = 2_000_000):
        self.lang, self.include_bos, self.include_eos, self.memo_size = lang, include_bos, include_eos, memo_size
        self._ref, self._fast, self._memos, self._specials, self._risks, self._ends = None, None, {}, None, None, None
        self._lens = None

    def config(self) -> dict:
        "Everything that changes the output (goes into the store's cache key)."
        import spacy
        return dict(kind=self.kind, lang=self.lang, include_bos=self.include_bos, include_eos=self.include_eos,
                    spacy=spacy.__version__, rules_version=2)

    def __getstate__(self):  # the spaCy pipelines are rebuilt in each worker process
        return dict(lang=self.lang, include_bos=self.include_bos, include_eos=self.include_eos,
                    memo_size=self.memo_size)

    def __setstate__(self, d):
        self.__init__(**d)

    @property
    def spacy_tok(self):
        "Plain `spacy.blank(lang).tokenizer`."
        if self._ref is None: self._ref = _blank_tokenizer(self.lang, fast=False)
        return self._ref

    @property
    def _fast_tok(self):
        if self._fast is None: self._fast = _blank_tokenizer(self.lang, fast=True)
        return self._fast

    @property
    def _risk_sets(self):
        """(left, right, bit, mask): token pairs that can join into a special case across a space, as bitmasks.

        spaCy re-checks special cases containing affixes ("''", ":-)", "a.m.") on the token sequence after the affix
        split, and that match can straddle a space: "Back'' ''Return" gives '' ' ' rather than '' ''. A key whose
        split (without special cases) is [t1, ..., tn] can only straddle a boundary where the left piece ends with
        some t_i and the right piece starts with t_(i+1). `bit[t_i] & mask[t_(i+1)]` is nonzero exactly for such pairs;
        `left`/`right` are the tokens that have a bit/mask."""
        if self._risks is None:
            tok, bare = self._fast_tok, _blank_tokenizer(self.lang, fast=True, rules=False)
            pairs = set()
            for k in tok.rules:
                if tok.find_prefix(k) or tok.find_suffix(k) or tok.find_infix(k) or ' ' in k:
                    p = [t.text for t in bare(k) if not t.is_space]
                    pairs.update(zip(p, p[1:]))
            bit = {a: 1 << j for j, a in enumerate(sorted({a for a, _ in pairs}))}
            mask = {}
            for a, b in pairs: mask[b] = mask.get(b, 0) | bit[a]
            self._risks = tuple(bit), tuple(mask), bit, mask
        return self._risks

    def _flag(self, p: str, risk: tuple[dict, dict], toks: list[str], bare: list[str]) -> None:
        "Record the risk masks of the tokens piece `p` starts/ends with, split with and without special cases."
        _, _, bit, mask = self._risk_sets
        st = mask.get(toks[0], 0) | mask.get(bare[0], 0)
        en = bit.get(toks[-1], 0) | bit.get(bare[-1], 0)
        if st: risk[0][p] = st
        if en: risk[1][p] = en

    @property
    def _special_keys(self) -> frozenset:
        if self._specials is None: self._specials = frozenset(self._fast_tok.rules)
        return self._specials

    def prepare(self, text: str) -> str:
        "Add xxbos/xxeos (as fastai does, before the rules) and run the pre-rules."
        if self.include_bos: text = f'{BOS} {text}'
        if self.include_eos: text = f'{text} {EOS}'
        return apply_pre_rules(text)

    def reference(self, text: str) -> list[str]:
        "The slow, obviously-correct path: pre-rules, plain spaCy on the whole text, post-rules."
        return apply_post_rules([t.text for t in self.spacy_tok(self.prepare(text))])

    @property
    def _special_ends(self) -> tuple[frozenset, frozenset]:
        "First and last token texts that any special case produces."
        if self._ends is None:
            outs = [[t[ORTH] for t in v] for v in self._fast_tok.rules.values()]
            self._ends = frozenset(o[0] for o in outs if o), frozenset(o[-1] for o in outs if o)
        return self._ends

    def _other_risk(self, p: str, t: str, start: bool) -> bool:
        "Does `p` start (or end) with a risky token other than `t`?"
        _, _, bit, mask = self._risk_sets
        if self._lens is None: self._lens = sorted(set(map(len, mask))), sorted(set(map(len, bit)))
        if start: return any(p[:n] != t and p[:n] in mask for n in self._lens[0])
        return any(p[-n:] != t and p[-n:] in bit for n in self._lens[1])

    def _fill(self, miss: list[str], memo: dict, risk: tuple[dict, dict], conv) -> None:
        "Tokenize the pieces missing from `memo` with one spaCy call; store `conv(tokens)` and boundary risk masks."
        # A piece with whitespace inside ('end.\\n\\nThe', from '<br /><br />') is its chunks plus one token per
        # whitespace run: the run itself, or run + ' ' at the piece's end (that space joins it). Its chunks are
        # common pieces on their own, so only they go through spaCy.
        simple, composite = [], []
        for p in miss: (composite if _re_ws.search(p) else simple).append(p)
        subs = [_re_split_ws.findall(p) for p in composite]
        simple = list(dict.fromkeys(simple + [c for cs in subs for c in cs if not c[0].isspace() and c not in memo]))
        # A purely alphabetic piece is one token unless it is one of spaCy's special cases ("cannot", "gonna"):
        # no prefix, suffix, infix or URL pattern of the English tokenizer can fire on letters alone.
        left, right, _, _ = self._risk_sets
        if simple:
            specials = self._special_keys
            for p in simple:
                tk = [p] if p.isalpha() and p not in specials else self._affix_split(p)
                if tk:
                    memo[p] = conv(tk)
                    if p.startswith(right) or p.endswith(left): self._flag(p, risk, tk, tk)
            rest = [p for p in simple if p not in memo]
            if rest:
                toks = self._split(self._fast_tok, rest)
                # The split without special cases can only differ at an end whose token a special case produced:
                # affixes are stripped from the outside in, identically, until a special case stops the stripping.
                # And it only adds a flag if the piece starts/ends with some other risky token.
                firsts, lasts = self._special_ends
                cand = [i for i, (p, tk) in enumerate(zip(rest, toks))
                        if (tk[0] in firsts and self._other_risk(p, tk[0], start=True))
                        or (tk[-1] in lasts and self._other_risk(p, tk[-1], start=False))]
                bare = dict(zip(cand, self._split(_blank_tokenizer(self.lang, True, False), [rest[i] for i in cand])))
                for i, (p, tk) in enumerate(zip(rest, toks)):
                    memo[p] = conv(tk)
                    if p.startswith(right) or p.endswith(left): self._flag(p, risk, tk, bare.get(i, tk))
        for p, cs in zip(composite, subs):
            res = []
            for j, c in enumerate(cs):
                res += memo[c] if not c[0].isspace() else conv([c + ' ' if j == len(cs) - 1 else c])
            memo[p] = tuple(res)
            st = risk[0].get(cs[0], 0) if not cs[0][0].isspace() else 0
            en = risk[1].get(cs[-1], 0) if not cs[-1][0].isspace() else 0
            if st: risk[0][p] = st
            if en: risk[1][p] = en

    def _affix_split(self, p: str) -> list[str] | None:
        """Tokens of a word with one opening bracket/quote and/or one closing mark (`'(film,'` -> `['(', 'film', ',']`),
        or None when `p` is not of that shape or a special case could be involved (English rules only).

        spaCy strips one prefix and one suffix per step, checking the special cases on `p`, `p` minus its prefix,
        `p` minus its suffix and the stem; these marks are affixes after any letter, and letters never are. A '.'
        is only a suffix after some letters (lowercase, or two capitals): here only after a-z."""
        n = len(p)
        if n < 2 or self.lang != 'en': return None
        a = 1 if p[0] in _OPEN1 else 0
        b = n - 1 if p[-1] in _CLOSE1 or (p[-1] == '.' and 'a' <= p[-2] <= 'z') else n
        w = p[a:b]
        if (a == 0 and b == n) or not w.isalpha(): return None
        specials = self._special_keys
        if p in specials or w in specials or p[a:] in specials or p[:b] in specials: return None
        toks = ([p[0]] if a else []) + [w] + ([p[-1]] if b < n else [])
        _, _, bit, mask = self._risk_sets  # a special case with affixes could join two of these tokens
        if any(bit.get(x, 0) & mask.get(y, 0) for x, y in zip(toks, toks[1:])): return None
        return toks

    @staticmethod
    def _split(tokenizer, pieces: list[str]) -> list[list[str]]:
        "Tokens of each piece, from one call on the pieces joined by ' zqz ' (a word no special case involves)."
        # Each piece sees the same single-space context as in the text; a token belongs to the piece it starts in.
        if not pieces: return []
        starts, pos = [], 4
        for p in pieces: starts.append(pos); pos += len(p) + 5
        joined = 'zqz ' + ' zqz '.join(pieces) + ' zqz'
        idx, lens = tokenizer(joined).to_array([IDX, LENGTH]).T  # no Token objects: much cheaper
        starts = np.asarray(starts)
        k = np.searchsorted(starts, idx, 'right') - 1
        keep = (k >= 0) & (idx < starts[k] + np.fromiter(map(len, pieces), np.int64, len(pieces))[k])
        toks = [[] for _ in pieces]
        for kk, i, n in zip(k[keep].tolist(), idx[keep].tolist(), lens[keep].tolist()): toks[kk].append(joined[i:i + n])
        return toks

    def _pieces(self, text: str) -> tuple[str, list[str] | None]:
        "The prepared text and its pieces, or None for the pieces when the text must take the plain path."
        text = self.prepare(text)
        if len(text) > 1 and text[-1] == ' ' and not text[-2].isspace(): text = text[:-1]  # spaCy drops it too
        if not text or text[0].isspace() or text[-1].isspace() or '  ' in text or _re_ws_sp_ws.search(text):
            return text, None
        return text, text.split(' ')

    def _run(self, texts: list[str], memo: dict, risk: tuple[dict, dict], conv) -> list[list]:
        "Outputs of a batch of documents: every piece missing from the memo goes through one `_fill`."
        if len(memo) > self.memo_size: memo.clear(); risk[0].clear(); risk[1].clear()  # bounded memory
        docs, miss = [], {}
        for t in texts:
            text, pieces = self._pieces(t)
            got = None if pieces is None else list(map(memo.get, pieces))
            if got is not None and None in got:
                miss.update(dict.fromkeys(p for p, g in zip(pieces, got) if g is None))
                got = None  # looked up again after the fill
            docs.append((text, pieces, got))
        if miss: self._fill(list(miss), memo, risk, conv)
        return [self._plain(text, conv) if pieces is None else self._join(text, pieces, got, memo, risk, conv)
                for text, pieces, got in docs]

    def _join(self, text: str, pieces: list[str], got: list | None, memo: dict, risk: tuple[dict, dict], conv) -> list:
        "Output of one document from the memo, or from the plain path if a special case joins two of its pieces."
        if got is None: got = list(map(memo.__getitem__, pieces))
        starts, ends = risk

        def risky(): return map(int.__and__, map(ends.get, pieces, repeat(0)), map(starts.get, pieces[1:], repeat(0)))
        # A special case might straddle the space between pieces i and i + 1 (pieces that can start one are rarer).
        if not starts.keys().isdisjoint(pieces) and any(risky()):
            for i in [i for i, r in enumerate(risky()) if r]:
                # Tokenize 4 pieces either side in context (longer than any special case); if that differs
                # from the memo, the match happened: redo the whole text the plain way.
                lo, hi = max(0, i - 3), min(len(pieces), i + 5)
                if list(self._plain(' '.join(pieces[lo:hi]), conv)) != list(chain.from_iterable(got[lo:hi])):
                    return self._plain(text, conv)
        return list(chain.from_iterable(got))

    def _plain(self, text: str, conv) -> list:
        return list(conv([t.text for t in self._fast_tok(text)]))

    def _conv(self, post: dict, stoi: dict | None = None, itos: list | None = None):
        "Tokens -> post-processed tokens (or their ids in `stoi`/`itos`), cached per token: the rules are per token."
        def conv(toks):
            res = []
            for t in toks:
                r = post.get(t)
                if r is None:
                    r = apply_post_rules([t])
                    if stoi is not None:
                        for j, u in enumerate(r):
                            i = stoi.get(u)
                            if i is None: i = stoi[u] = len(itos); itos.append(u)
                            r[j] = i
                    r = post[t] = tuple(r)
                res += r
            return tuple(res)
        return conv

    def batch(self, texts: list[str]) -> list[list[str]]:
        "Tokens of each document (identical to `reference`); pieces unseen so far go through spaCy together."
        m = self._memos
        if 'str' not in m: m.update(str={}, str_risk=({}, {}), str_conv=self._conv({}))
        return self._run(texts, m['str'], m['str_risk'], m['str_conv'])

    def encode_batch(self, texts: list[str], stoi: dict, itos: list) -> list[list[int]]:
        "Token ids of each document in a growing table (`stoi`/`itos`, extended in place; one table per tokenizer)."
        m = self._memos
        if m.get('ids_of') is not stoi:
            m.update(ids={}, ids_risk=({}, {}), ids_of=stoi, ids_conv=self._conv({}, stoi, itos))
        return self._run(texts, m['ids'], m['ids_risk'], m['ids_conv'])

    def __call__(self, text: str) -> list[str]:
        "Tokens of one document (identical to `reference(text)`)."
        return self.batch([text])[0]

    def encode(self, text: str, stoi: dict, itos: list) -> list[int]:
        "Token ids of one document in a growing table (`stoi`/`itos`, extended in place; one table per tokenizer)."
        return self.encode_batch([text], stoi, itos)[0]


# ---------------------------------------------------------------- SentencePiece

class SentencePieceTokenizer:
    "Pre-rules + a SentencePiece model (unigram or BPE), same specials; `tok(text) -> list[str]`."
    kind = 'spm'

    def __init__(self, model_path, include_bos: bool = True, include_eos: bool = False):
        self.model_path, self.include_bos, self.include_eos = str(model_path), include_bos, include_eos
        self._sp = None

    @classmethod
    def train(cls, texts: Iterable[str], out_dir, vocab_sz: int = 15000, model_type: str = 'unigram',
              max_sentences: int = 1_000_000, char_coverage: float = 0.99999, **kwargs):
        "Train a model on `texts` (a sample of the corpus), write `out_dir/spm.model`, return the tokenizer."
        import sentencepiece as spm
        out_dir = os.fspath(out_dir); os.makedirs(out_dir, exist_ok=True)
        raw = os.path.join(out_dir, 'spm_train.txt')
        with open(raw, 'w', encoding='utf-8') as f:
            for n, t in enumerate(texts):
                if n >= max_sentences: break
                f.write(apply_pre_rules(t).replace('\n', ' ') + '\n')
        # Our specials are user-defined symbols so they are never split; SentencePiece's own unk/bos/eos/pad map
        # onto ours.
        spm.SentencePieceTrainer.train(
            input=raw, model_prefix=os.path.join(out_dir, 'spm'), vocab_size=vocab_sz, model_type=model_type,
            character_coverage=char_coverage, unk_piece=UNK, pad_piece=PAD, bos_piece=BOS, eos_piece=EOS,
            unk_id=0, pad_id=1, bos_id=2, eos_id=3, user_defined_symbols=SPECIALS[4:], hard_vocab_limit=False,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, minloglevel=2, **kwargs)
        os.remove(raw)
        return cls(os.path.join(out_dir, 'spm.model'))

    def config(self) -> dict:
        import hashlib
        with open(self.model_path, 'rb') as f: h = hashlib.sha256(f.read()).hexdigest()
        return dict(kind=self.kind, model_sha256=h, include_bos=self.include_bos, include_eos=self.include_eos)

    def __getstate__(self):
        return dict(model_path=self.model_path, include_bos=self.include_bos, include_eos=self.include_eos)

    def __setstate__(self, d):
        self.__init__(**d)

    @property
    def sp(self):
        if self._sp is None:
            import sentencepiece as spm
            self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        return self._sp

    def __call__(self, text: str) -> list[str]:
        toks = self.sp.encode(apply_pre_rules(text), out_type=str)
        return ([BOS] if self.include_bos else []) + toks + ([EOS] if self.include_eos else [])

    def encode(self, text: str, stoi: dict, itos: list) -> list[int]:
        res = []
        for t in self(text):
            i = stoi.get(t)
            if i is None: i = stoi[t] = len(itos); itos.append(t)
            res.append(i)
        return res

    # The batch interface the parallel runner calls (the spaCy tokenizer's, which batches for speed).
    def batch(self, texts: list[str]) -> list[list[str]]: return [self(t) for t in texts]

    def encode_batch(self, texts: list[str], stoi: dict, itos: list) -> list[list[int]]:
        return [self.encode(t, stoi, itos) for t in texts]


# ---------------------------------------------------------------- parallel runner

_W = {}  # per-process worker state

# Tokenizing allocates millions of small objects that live on in the memo, so the cyclic garbage collector's young
# generations fill and get scanned very often, walking that memo each time: ~15-25% of a worker's time on IMDB.
# Nothing here builds reference cycles, so workers (and the in-process path, for its duration) collect rarely.
_GC_THRESHOLD = (100_000, 50, 100)


@contextmanager
def _relaxed_gc():
    old = gc.get_threshold()
    gc.set_threshold(*_GC_THRESHOLD)
    try: yield
    finally: gc.set_threshold(*old)


def _init_worker(tok):
    gc.set_threshold(*_GC_THRESHOLD)
    # `pid` names this worker's id table; random so two runs in one process never share a mapping
    _W.clear(); _W.update(tok=tok, stoi={}, itos=[], sent=0, pid=(os.getpid(), os.urandom(8).hex()))


def _tok_batch(texts):
    return _W['tok'].batch(texts)


def _enc_batch(texts):
    "Encode a batch with worker-local ids; ship the ids as one array plus the tokens this worker saw first."
    tok, stoi, itos = _W['tok'], _W['stoi'], _W['itos']
    docs = tok.encode_batch(texts, stoi, itos)
    lens = np.fromiter(map(len, docs), np.int64, len(docs))
    ids = np.fromiter(chain.from_iterable(docs), np.int32, int(lens.sum()))
    new = itos[_W['sent']:]; _W['sent'] = len(itos)
    return _W['pid'], ids, lens, new


def _batches(texts: Iterable[str], chunk: int) -> Iterator[list[str]]:
    b = []
    for t in texts:
        b.append(t)
        if len(b) == chunk: yield b; b = []
    if b: yield b


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def _run(fn, tok, texts, n_workers, chunk):
    "Map `fn` over batches of `texts` in worker processes; results in order, at most a few batches in flight."
    n_workers = default_workers() if n_workers is None else n_workers
    if n_workers <= 1:
        with _relaxed_gc():
            _init_worker(tok)
            for b in _batches(texts, chunk): yield fn(b)
        return
    # Pool.imap would read the whole input ahead; a small window of async tasks keeps memory bounded.
    with _relaxed_gc(), get_context('fork').Pool(n_workers, initializer=_init_worker, initargs=(tok,)) as pool:
        pending = deque()
        for b in _batches(texts, chunk):
            pending.append(pool.apply_async(fn, (b,)))
            if len(pending) >= 3 * n_workers: yield pending.popleft().get()
        while pending: yield pending.popleft().get()


def tokenize_texts(texts: Iterable[str], tok=None, n_workers: int | None = None, chunk: int = 256
                   ) -> Iterator[list[str]]:
    "Tokenize `texts` in `n_workers` processes, yielding one token list per text, in order."
    tok = tok or SpacyTokenizer()
    for res in _run(_tok_batch, tok, texts, n_workers, chunk): yield from res


class TokenTable:
    "Maps each worker's local ids to one growing table of token strings, and counts them."
    def __init__(self):
        self.stoi, self.itos, self._maps, self.counts = {}, [], {}, np.zeros(1024, np.int64)

    def add(self, pid, local_ids, new_toks):
        "Translate a worker batch (local ids + the tokens it saw first) to table ids and count them."
        m = self._maps.setdefault(pid, np.zeros(0, np.int32))
        ext = np.empty(len(new_toks), np.int32)
        for j, t in enumerate(new_toks):
            i = self.stoi.get(t)
            if i is None: i = self.stoi[t] = len(self.itos); self.itos.append(t)
            ext[j] = i
        if len(ext): m = self._maps[pid] = np.concatenate([m, ext])
        ids = m[local_ids]
        if len(self.itos) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(max(len(self.itos), 2 * len(self.counts)) -
                                                                len(self.counts), np.int64)])
        self.counts += np.bincount(ids, minlength=len(self.counts)) if len(ids) else 0
        return ids

    def counter(self) -> dict:
        return {t: int(c) for t, c in zip(self.itos, self.counts[:len(self.itos)])}


def encode_texts(texts: Iterable[str], tok=None, n_workers: int | None = None, chunk: int = 256,
                 table: TokenTable | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    "Tokenize in parallel, yielding (ids int32, doc_lens) per batch with ids into `table` (which also counts)."
    tok = tok or SpacyTokenizer()
    table = TokenTable() if table is None else table
    for pid, ids, lens, new in _run(_enc_batch, tok, texts, n_workers, chunk):
        yield table.add(pid, ids, new), lens
