"""The fastai text rules around spaCy's English tokenizer, and the plain path through them.

    text ─ xxbos ─ pre-rules (text -> text) ─ spaCy ─ post-rules (tokens -> tokens) ─ tokens

`reference(text)` is that pipeline written out; `SpacyTokenizer` (fast.py) gives the same tokens much faster.
"""

import functools
import html
import re

import numpy as np

# Special tokens and their ids are fixed: every vocab starts with them in this order.
UNK, PAD, BOS, EOS, FLD, REP, WREP, UP, MAJ = 'xxunk xxpad xxbos xxeos xxfld xxrep xxwrep xxup xxmaj'.split()
SPECIALS = [UNK, PAD, BOS, EOS, FLD, REP, WREP, UP, MAJ]


# ---------------------------------------------------------------- pre-rules (text -> text)
# In fastai's order, which shows in the output: 'amp;' -> '&' runs first, so '&amp;' -> '&&'.
_HTML_FIXES = [('#39;', "'"), ('amp;', '&'), ('#146;', "'"), ('nbsp;', ' '), ('#36;', '$'), ('\\n', '\n')]
_HTML_FIXES += [('quot;', "'"), ('<br />', '\n'), ('\\"', '"'), ('<unk>', UNK)]
_HTML_FIXES += [(' @.@ ', '.'), (' @-@ ', '-'), (' @,@ ', ','), ('\\', ' \\ ')]  # WikiText's escapes, then backslashes
_re_spaces = re.compile(r'  +')
_re_rep = re.compile(r'(\S)(\1{3,})')
# In any match the word and the non-word run after it are whole (the repeat must start with a word character right
# after them), so possessive quantifiers change no match; they only stop the backtracking at every other word.
_re_wrep = re.compile(r'(\b\w++\W++)(\1{3,})')
_re_spec = re.compile(r'([/#])')


def fix_html(t):
    "Undo HTML/WikiText escapes: `'a<br />b &lt;i&gt;'` -> `'a\\nb <i>'`, `'x @-@ y'` -> `'x-y'`, `'&amp;'` -> `'&&'`."
    for old, new in _HTML_FIXES:
        if old in t:
            t = t.replace(old, new)
    if '&' in t:
        t = html.unescape(t)
    return rm_useless_spaces(t)


def _has_run4(t):
    "Does any character occur 4 times in a row? (A vectorised pre-check: the regex alone costs ~50 us per review.)"
    a = np.frombuffer(t.encode('utf-32-le', 'surrogatepass'), np.uint32)
    e = a[1:] == a[:-1]
    return bool((e[:-2] & e[1:-1] & e[2:]).any())


def replace_rep(t):
    "A character repeated 4+ times: `'wow!!!!!'` -> `'wow xxrep 5 ! '`."
    if len(t) < 4 or not _has_run4(t):
        return t
    return _re_rep.sub(lambda m: f' {REP} {len(m.group(0))} {m.group(1)} ', t)


def replace_wrep(t):
    "A word repeated 4+ times: `'no no no no way'` -> `' xxwrep 4 no  way'`."
    return _re_wrep.sub(lambda m: f' {WREP} {len(m.group(2).split()) + 1} {m.group(1)} ', t)


def spec_add_spaces(t):
    "Put spaces around `/` and `#`: `'and/or #1'` -> `'and / or  # 1'`."
    return _re_spec.sub(r' \1 ', t) if '/' in t or '#' in t else t


def rm_useless_spaces(t):
    "Collapse runs of spaces (not other whitespace): `'a   b\\n\\nc'` -> `'a b\\n\\nc'`."
    return _re_spaces.sub(' ', t) if '  ' in t else t


# ---------------------------------------------------------------- post-rules (tokens -> tokens)
def replace_all_caps(toks):
    "All-caps tokens longer than one char: `['THE', 'End', 'I']` -> `['xxup', 'the', 'End', 'I']`."
    return [u for t in toks for u in ([UP, t.lower()] if len(t) > 1 and t.isupper() else [t])]


def replace_maj(toks):
    "Capitalised tokens: `['The', 'iPhone', 'A']` -> `['xxmaj', 'the', 'iPhone', 'A']`."
    return [u for t in toks for u in ([MAJ, t.lower()] if len(t) > 1 and t[0].isupper() and t[1:].islower() else [t])]


def lowercase(toks):
    "Lowercase every token: `['xxmaj', 'the', 'iPhone']` -> `['xxmaj', 'the', 'iphone']`."
    return [t.lower() for t in toks]


PRE_RULES = [fix_html, replace_rep, replace_wrep, spec_add_spaces, rm_useless_spaces]
POST_RULES = [replace_all_caps, replace_maj, lowercase]


def apply_pre_rules(t, rules=PRE_RULES):
    "Run the text-level rules in order."
    for r in rules:
        t = r(t)
    return t


def apply_post_rules(toks, rules=POST_RULES):
    "Run the token-level rules in order (fastai v1 order: caps, then maj, then lowercase)."
    for r in rules:
        toks = r(toks)
    return toks


def token_id(stoi, itos, t):
    "Id of token `t` in a growing table (`stoi`/`itos`), appending it if new."
    i = stoi.get(t)
    if i is None:
        i = stoi[t] = len(itos)
        itos.append(t)
    return i


# ---------------------------------------------------------------- the plain path
@functools.cache  # one per process and setting, shared by every tokenizer (pass `fast`/`rules` by keyword)
def blank_tokenizer(lang='en', fast=False, rules=True):
    "spaCy's tokenizer for `lang` (no model download); `fast` skips lexical attributes, `rules=False` special cases."
    import spacy

    nlp = spacy.blank(lang)
    # New words normally get spaCy's lexical attributes (shape, like_num, ...) computed: that is most of the time
    # spent on unseen words, and it never changes where tokens are split.
    if fast:
        nlp.vocab.lex_attr_getters = {}
    if not rules:
        nlp.tokenizer.rules = {}
    return nlp.tokenizer


def prepare(text, include_bos=True, include_eos=False):
    "Add xxbos/xxeos (as fastai does, before the rules) and run the pre-rules."
    text = f'{BOS} {text}' if include_bos else text
    return apply_pre_rules(f'{text} {EOS}' if include_eos else text)


def reference(text, lang='en', include_bos=True, include_eos=False):
    "The slow, obviously-correct path: pre-rules, plain spaCy on the whole text, post-rules."
    return apply_post_rules([t.text for t in blank_tokenizer(lang)(prepare(text, include_bos, include_eos))])
