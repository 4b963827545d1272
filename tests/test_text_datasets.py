"Readers: IMDB folder/archive, WikiText articles, plain text modes, tables; each bad-input case errors clearly."

import gzip
import tarfile

import pandas as pd
import pytest

from ulmfit.datasets import (
    DataError,
    ImdbReader,
    MultiReader,
    TableReader,
    TextCorpusReader,
    WikiTextReader,
    dataset_reader,
    find_bad_utf8,
    reader_for,
)


def _imdb(root):
    for split, folder, name, text in [
        ('train', 'pos', '0_9.txt', 'Great!'),
        ('train', 'neg', '1_2.txt', 'Awful.'),
        ('train', 'unsup', '5_0.txt', 'Hmm.'),
        ('test', 'pos', '3_8.txt', 'Nice.'),
    ]:
        d = root / 'imdb' / split / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return root / 'imdb'


def test_imdb_folder_and_archive(tmp_path):
    path = _imdb(tmp_path)
    docs = list(ImdbReader(path))
    assert [(d.text, d.label, d.split) for d in docs] == [
        ('Great!', 'pos', 'train'),
        ('Awful.', 'neg', 'train'),
        ('Hmm.', None, 'unsup'),
        ('Nice.', 'pos', 'test'),
    ]
    assert [d.label for d in ImdbReader(path, splits=('test',), label='rating')] == [8]
    with tarfile.open(tmp_path / 'imdb.tgz', 'w:gz') as tf:
        tf.add(path, 'imdb')
    assert sorted(d.text for d in ImdbReader(tmp_path / 'imdb.tgz')) == sorted(d.text for d in docs)


def test_imdb_bad_bytes_and_empty(tmp_path):
    path = _imdb(tmp_path)
    (path / 'train' / 'pos' / '0_9.txt').write_bytes(b'ok \xff bad')
    with pytest.raises(DataError, match=r'0_9\.txt.*byte offset 3.*errors=.replace'):
        list(ImdbReader(path))
    assert next(iter(ImdbReader(path, errors='replace'))).text == 'ok \ufffd bad'
    (path / 'train' / 'pos' / '0_9.txt').write_bytes(b'')
    with pytest.raises(DataError, match='0_9.txt: empty file'):
        list(ImdbReader(path))


def test_wikitext_articles_and_gz(tmp_path):
    text = (
        ' \n = Alpha = \n \n Alpha is a letter . \n \n = = History = = \n \n Old . \n = 1 rad / s = \n \n'
        ' = Beta = \n \n B @-@ side . \n'
    )  # the formula line inside a paragraph is not a heading
    p = tmp_path / 'wiki.valid.raw.gz'
    with gzip.open(p, 'wt') as f:
        f.write(text)
    docs = list(WikiTextReader(p))
    assert len(docs) == 2 and docs[0].split == 'valid'
    assert docs[0].text.startswith('= Alpha =') and 'History' in docs[0].text and docs[1].text.startswith('= Beta =')


def test_plain_text_modes(tmp_path):
    lines = tmp_path / 'lines.txt'
    lines.write_text('doc one\ndoc two\n')
    assert [d.text for d in TextCorpusReader(lines)] == ['doc one', 'doc two']
    blank = tmp_path / 'blank.txt.gz'
    with gzip.open(blank, 'wt') as f:
        f.write('Title A\npara 1\npara 2\n\nTitle B\npara\n')
    assert [d.text for d in TextCorpusReader(blank)] == ['Title A\npara 1\npara 2', 'Title B\npara']
    folder = tmp_path / 'folder'
    folder.mkdir()
    (folder / 'a.txt').write_text('first')
    (folder / 'b.txt').write_text('second')
    assert [d.text for d in TextCorpusReader(folder)] == ['first', 'second']


def test_plain_text_errors(tmp_path):
    empty = tmp_path / 'empty.txt'
    empty.write_text('')
    with pytest.raises(DataError, match='empty.txt: empty file'):
        list(TextCorpusReader(empty))
    bad = tmp_path / 'bad.txt'
    bad.write_bytes(b'fine line\nsecond \xc3\x28 line\n')
    with pytest.raises(DataError, match=r'bad\.txt.*byte offset 17'):
        list(TextCorpusReader(bad, mode='lines'))
    assert find_bad_utf8(bad) == 17
    assert len(list(TextCorpusReader(bad, mode='lines', errors='replace'))) == 2


def test_tables(tmp_path):
    df = pd.DataFrame(dict(title=['T1', 'T2'], body=['b1', 'b2'], label=['x', 'y'], is_valid=[False, True]))
    docs = list(TableReader(df, text_cols=['title', 'body'], label_cols='label'))
    assert docs[0].text == 'xxfld 1 T1 xxfld 2 b1' and docs[0].label == 'x' and docs[1].split == 'valid'
    df.to_csv(tmp_path / 't.csv', index=False)
    df.to_csv(tmp_path / 't.tsv', index=False, sep='\t')
    df.to_parquet(tmp_path / 't.parquet')
    for ext in ('csv', 'tsv', 'parquet'):
        got = [(d.text, d.label, d.split) for d in TableReader(tmp_path / f't.{ext}', 'body', 'label')]
        assert got == [('b1', 'x', 'train'), ('b2', 'y', 'valid')], ext


def test_table_errors(tmp_path):
    df = pd.DataFrame(dict(text=['a', 'b', 'c'], label=['x', None, 'y']))
    with pytest.raises(DataError, match="missing text column 'review'.*columns are"):
        TableReader(df, text_cols='review')
    with pytest.raises(DataError, match="label column 'label' has a missing value at row 1"):
        list(TableReader(df, label_cols='label'))
    (tmp_path / 'e.csv').write_text('')
    with pytest.raises(DataError, match='e.csv: empty file'):
        TableReader(tmp_path / 'e.csv')
    (tmp_path / 'b.csv').write_bytes(b'text,label\nok,x\nbad \xff,y\n')
    with pytest.raises(DataError, match=r'b\.csv: undecodable bytes at byte offset 20'):
        list(TableReader(tmp_path / 'b.csv', label_cols='label'))
    assert len(list(TableReader(tmp_path / 'b.csv', label_cols='label', errors='replace'))) == 2


def test_reader_for_picks_by_path(tmp_path):
    imdb = _imdb(tmp_path)
    (tmp_path / 'wiki').mkdir()
    (tmp_path / 'wiki' / 'wiki.valid.tokens').write_text(' = A = \n one two \n')
    (tmp_path / 'a.txt').write_text('first doc\nsecond doc\n')
    (tmp_path / 'b.txt').write_text('third doc\n')
    pd.DataFrame({'text': ['x', 'y'], 'label': ['p', 'n']}).to_csv(tmp_path / 't.csv', index=False)
    pd.DataFrame({'text': ['x', 'y']}).to_csv(tmp_path / 'u.csv', index=False)
    assert isinstance(reader_for([imdb]), ImdbReader)
    assert isinstance(reader_for([tmp_path / 'wiki']), WikiTextReader)
    assert isinstance(reader_for(str(tmp_path / 'wiki' / 'wiki.valid.tokens')), WikiTextReader)
    assert [d.label for d in reader_for([tmp_path / 't.csv'])] == ['p', 'n']
    with pytest.raises(DataError, match="missing label column 'label'"):
        reader_for([tmp_path / 'u.csv'])
    assert [d.label for d in reader_for([tmp_path / 'u.csv'], label_col=None)] == [None, None]
    both = reader_for(f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}", split='valid')  # one reader for both files
    assert isinstance(both, TextCorpusReader) and [(d.text, d.split) for d in both][-1] == ('third doc', 'valid')
    mixed = reader_for([tmp_path / 'a.txt', tmp_path / 't.csv'])
    assert isinstance(mixed, MultiReader) and [d.text for d in mixed] == ['first doc', 'second doc', 'x', 'y']
    with pytest.raises(FileNotFoundError, match='corpus not found: .*nope.txt'):
        reader_for([tmp_path / 'a.txt', tmp_path / 'nope.txt'])


def test_dataset_reader_by_name(tmp_path):
    (tmp_path / 'sample').mkdir()
    pd.DataFrame({'text': ['x'], 'label': ['p'], 'is_valid': [True]}).to_csv(tmp_path / 'sample' / 'texts.csv')
    assert [(d.text, d.split) for d in dataset_reader('imdb_sample', folder=tmp_path)] == [('x', 'valid')]
    assert isinstance(dataset_reader('imdb', folder=_imdb(tmp_path / 'i')), ImdbReader)
    with pytest.raises(ValueError, match="unknown dataset 'imbd'"):
        dataset_reader('imbd')


def test_one_rule_for_table_files(tmp_path):
    from ulmfit.datasets import as_frame, path_kind, table_kind

    assert [table_kind(n) for n in ('a.csv', 'a.CSV.gz', 'a.tsv', 'a.tab', 'a.pq', 'a.parquet', 'a.txt')] == [
        'csv',
        'csv',
        'tsv',
        'tsv',
        'parquet',
        'parquet',
        None,
    ]
    pd.DataFrame({'text': ['x y'], 'label': ['p']}).to_csv(tmp_path / 't.tab', sep='\t', index=False)
    pd.DataFrame({'text': ['x y'], 'label': ['p']}).to_csv(tmp_path / 't.csv.gz', index=False)
    for name in ('t.tab', 't.csv.gz'):  # the API's reader, the CLI's reader and the store's reader agree
        assert path_kind(tmp_path / name) == 'table'
        assert list(as_frame(tmp_path / name, 'text')['text']) == ['x y']
        assert [d.text for d in TableReader(tmp_path / name, label_cols='label')] == ['x y']


def test_table_label_columns_may_be_any_sequence_and_columns_are_checked_as_read(tmp_path):
    import numpy as np

    df = pd.DataFrame({'text': ['a b', 'c d'], 'x': [1, 0], 'y': [0, 1]})
    for cols in (pd.Index(['x', 'y']), np.array(['x', 'y']), ('x', 'y')):
        assert [d.label for d in TableReader(df, label_cols=cols)] == [(1, 0), (0, 1)]
    # a Parquet file whose text column was saved as the index: in the schema, not in the frame pandas reads
    df.set_index('text').to_parquet(tmp_path / 't.parquet')
    with pytest.raises(DataError, match=r"t\.parquet: missing text column 'text'; columns are \['x', 'y'\]"):
        list(TableReader(tmp_path / 't.parquet', label_cols='x'))
