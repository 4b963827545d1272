"Vocab: specials first, min_freq, max_vocab, padding to 8, unknowns, round trips, JSON."

from ulmfit.tokenize import SPECIALS, SpacyTokenizer
from ulmfit.vocab import Vocab, undo_caps


def test_specials_and_padding():
    v = Vocab.from_counts({'a': 5, 'b': 3, 'c': 2}, min_freq=3)
    assert v.itos[:9] == SPECIALS and v.itos[9:11] == ['a', 'b'] and 'c' not in v
    assert len(v) % 8 == 0 and len(v) == 16 and v.itos[11].startswith('xxfake')


def test_order_and_max_vocab():
    counts = {f't{i}': 100 - i for i in range(50)}
    v = Vocab.from_counts(counts, max_vocab=24, min_freq=1)
    assert len(v) == 24 and v.itos[9:] == [f't{i}' for i in range(15)]
    v = Vocab.from_counts({'x': 4, 'y': 4, 'z': 9}, min_freq=1)  # ties keep first-seen order
    assert v.itos[9:12] == ['z', 'x', 'y']


def test_specials_in_counts_not_duplicated():
    v = Vocab.from_counts({'xxbos': 100, 'xxmaj': 50, 'the': 10}, min_freq=1)
    assert v.itos.count('xxbos') == 1 and v.stoi['xxbos'] == 2 and v.stoi['the'] == 9


def test_unknowns_and_round_trip():
    tok = SpacyTokenizer()
    text = 'The movie was GREAT, I loved it. The end.'
    toks = tok(text)
    v = Vocab.from_tokens([toks], min_freq=1)
    ids = v.numericalize(toks)
    assert v.textify(ids, decode_caps=False) == ' '.join(toks)
    assert v.textify(ids) == 'xxbos The movie was GREAT , i loved it . The end .'
    assert list(v.numericalize(['never-seen', 'the'])) == [0, v.stoi['the']]


def test_undo_caps():
    assert undo_caps(['xxmaj', 'the', 'xxup', 'end', 'x']) == ['The', 'END', 'x']


def test_save_load(tmp_path):
    v = Vocab.from_counts({'é': 5, 'b': 4}, min_freq=1)
    v.save(tmp_path / 'vocab.json')
    assert Vocab.load(tmp_path / 'vocab.json') == v
