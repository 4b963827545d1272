"""Text -> tokens, in four parts:

rules.py     the special tokens, the fastai rules and the plain `reference()` path (spaCy on the whole text)
fast.py      `SpacyTokenizer`: the same tokens as `reference()`, memoised per space-separated piece
spm.py       `SentencePieceTokenizer`: the same rules and specials around a SentencePiece model
parallel.py  `tokenize_texts`/`encode_texts` in worker processes, and `TokenTable`, which merges their ids
"""

from .fast import SpacyTokenizer
from .parallel import TokenTable, default_workers, encode_texts, tokenize_texts
from .rules import (
    BOS,
    EOS,
    FLD,
    MAJ,
    PAD,
    POST_RULES,
    PRE_RULES,
    REP,
    SPECIALS,
    UNK,
    UP,
    WREP,
    apply_post_rules,
    apply_pre_rules,
    blank_tokenizer,
    fix_html,
    lowercase,
    prepare,
    reference,
    replace_all_caps,
    replace_maj,
    replace_rep,
    replace_wrep,
    rm_useless_spaces,
    spec_add_spaces,
)
from .spm import SentencePieceTokenizer

__all__ = ['SpacyTokenizer', 'SentencePieceTokenizer']
__all__ += ['tokenize_texts', 'encode_texts', 'TokenTable', 'default_workers']
__all__ += ['UNK', 'PAD', 'BOS', 'EOS', 'FLD', 'REP', 'WREP', 'UP', 'MAJ', 'SPECIALS']
__all__ += ['PRE_RULES', 'fix_html', 'replace_rep', 'replace_wrep', 'spec_add_spaces', 'rm_useless_spaces']
__all__ += ['POST_RULES', 'replace_all_caps', 'replace_maj', 'lowercase']
__all__ += ['apply_pre_rules', 'apply_post_rules', 'blank_tokenizer', 'prepare', 'reference']
