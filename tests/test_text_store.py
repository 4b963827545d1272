"Token store: round trip, reuse, existing vocab, labels/splits, loaders built from it."

import numpy as np
import pandas as pd
import torch

from ulmfit.datasets import TableReader, TextCorpusReader
from ulmfit.loaders import LMLoader
from ulmfit.recipe import clas_loader
from ulmfit.store import TokenStore, build_store
from ulmfit.tokenize import SpacyTokenizer

DF = pd.DataFrame(
    dict(
        text=['Great movie!', 'Bad bad film.', 'The END', 'great great film', 'meh', 'Loved it'],
        label=['pos', 'neg', 'neg', 'pos', 'neg', 'pos'],
        is_valid=[0, 0, 0, 0, 1, 1],
    )
)


def test_round_trip_and_reuse(tmp_path):
    s = build_store(TableReader(DF, label_cols='label'), min_freq=1, n_workers=1, root=tmp_path, progress=False)
    tok = SpacyTokenizer()
    assert len(s) == 6 and s.ids.dtype == np.uint16
    for i, t in enumerate(DF.text):
        assert s.vocab.textify(s[i], decode_caps=False) == ' '.join(tok(t))
    assert s.label_names == ['neg', 'pos'] and s.labels.tolist() == [1, 0, 0, 1, 0, 1]
    assert s.split_names == ['train', 'valid'] and s.split_idx('valid').tolist() == [4, 5]
    assert s.is_valid.tolist() == [False] * 4 + [True] * 2
    mtime = (s.path / 'tokens.bin').stat().st_mtime_ns
    s2 = build_store(TableReader(DF, label_cols='label'), min_freq=1, n_workers=2, root=tmp_path, progress=False)
    assert s2.path == s.path and (s2.path / 'tokens.bin').stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in (tmp_path / 'cache').iterdir()] == [s.path.name]  # no temp folders left
    assert TokenStore(s.path).meta['n_tokens'] == s.n_tokens


def test_existing_vocab_and_parallel_identical(tmp_path):
    lm = build_store(TableReader(DF, label_cols='label'), min_freq=2, n_workers=2, root=tmp_path, progress=False)
    other = DF.assign(text=DF.text + ' unseenword')
    clas = build_store(
        TableReader(other, label_cols='label'), vocab=lm.vocab, n_workers=1, root=tmp_path, progress=False
    )
    assert clas.vocab == lm.vocab and clas.path != lm.path
    assert all(clas[i][-1] == 0 for i in range(len(clas)))  # unseen -> xxunk
    assert clas.meta['n_unk'] >= 6


def test_loaders_from_store(tmp_path):
    p = tmp_path / 'c.txt'
    p.write_text('\n'.join(f'line {i} of the corpus, it is fine.' for i in range(50)))
    s = build_store(TextCorpusReader(p, mode='lines'), min_freq=1, n_workers=1, root=tmp_path, progress=False)
    x, y = next(iter(LMLoader(s, bs=4, bptt=8)))
    assert x.shape == (4, 8) and (x[:, 1:] == y[:, :-1]).all()
    c = build_store(TableReader(DF, label_cols='label'), min_freq=1, n_workers=1, root=tmp_path, progress=False)
    trn, val = (clas_loader(c, c.labeled_idx(s), bs=2, train=s == 'train') for s in ('train', 'valid'))
    xb, yb = next(iter(trn))
    assert xb.shape[0] == 2 and yb.dtype == torch.long
    assert sum(len(b[1]) for b in val) == 2


def test_multi_label(tmp_path):
    df = pd.DataFrame(dict(text=['a b', 'c d', 'e'], x=[1, 0, 1], y=[0, 1, 1]))
    s = build_store(
        TableReader(df, label_cols=['x', 'y'], valid_col=None), min_freq=1, n_workers=1, root=tmp_path, progress=False
    )
    assert s.multi_label and s.label_names == ['x', 'y'] and s.labels.tolist() == [[1, 0], [0, 1], [1, 1]]


def test_disk_full_while_building_names_the_cache_and_keeps_nothing(tmp_path, monkeypatch):
    import errno

    import pytest

    from common.checkpoint import DiskFullError
    from ulmfit.vocab import Vocab

    def full(self, path):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(Vocab, 'save', full)
    with pytest.raises(DiskFullError, match=r'cache: no space left on device .*the disk is full'):
        build_store(TableReader(DF, label_cols='label'), min_freq=1, n_workers=1, root=tmp_path, progress=False)
    assert list((tmp_path / 'cache').iterdir()) == []


def test_empty_corpora_are_refused_naming_the_source(tmp_path):
    import io
    import tarfile

    import pytest

    from ulmfit.datasets import DataError, ImdbReader

    (tmp_path / 'blank.txt').write_text('   \n\n  \t\n')
    with pytest.raises(DataError, match=r'blank\.txt: no text'):
        build_store(TextCorpusReader(tmp_path / 'blank.txt'), n_workers=1, root=tmp_path, progress=False)
    with tarfile.open(tmp_path / 'other.tgz', 'w:gz') as tf:
        info = tarfile.TarInfo('readme.md')
        info.size = 2
        tf.addfile(info, io.BytesIO(b'hi'))
    with pytest.raises(DataError, match=r'other\.tgz: no IMDB reviews'):
        build_store(ImdbReader(tmp_path / 'other.tgz'), n_workers=1, root=tmp_path, progress=False)
    assert not any((tmp_path / 'cache').iterdir())  # no 0-document store is cached
