"Lazy readers that yield `Doc(text, label, split, name)` from IMDB, WikiText, plain-text corpora and tables."

import codecs
import gzip
import hashlib
import itertools
import os
import re
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.download import untar_data
from ulmfit.tokenize import FLD


class Doc(NamedTuple):
    "One document: its text, label (None when unlabeled), split name and a name for error messages."

    text: str
    label: object = None
    split: str | None = None
    name: str = ''


class DataError(ValueError):
    "Bad input data (the message names the file, row or column)."


def _fingerprint_path(p):
    "Paths + sizes + mtimes of a file or every file under a folder (cheap, changes when the data does)."
    p = Path(p)
    files = [p] if p.is_file() else sorted(f for f in p.rglob('*') if f.is_file())
    return [[str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] for f in files]


# Every command that reads text offers `--errors replace` (`errors='replace'` in Python).
REPLACE_HINT = "rerun with --errors replace (errors='replace' in Python) to substitute them"
ERRORS_HELP = "undecodable bytes: 'strict' stops with the file and offset, 'replace' substitutes them"


def decode(raw, name, errors='strict', base=0):
    "UTF-8 decode with an error naming the file and byte offset; no bytes at all is an empty file."
    if not raw:
        raise DataError(f'{name}: empty file')
    try:
        return raw.decode('utf-8', errors=errors)
    except UnicodeDecodeError as e:
        bad, at = raw[e.start : e.start + 4], base + e.start
        raise DataError(f"{name}: undecodable bytes {bad!r} at byte offset {at} (not UTF-8); {REPLACE_HINT}") from None


def find_bad_utf8(path):
    "Byte offset of the first invalid UTF-8 sequence in `path` (decompressed for .gz), or None."
    dec, pos = codecs.getincrementaldecoder('utf-8')(), 0
    with _open_bin(path) as f:
        while True:
            b, pend = f.read(1 << 20), len(dec.getstate()[0])  # bytes held over from the last block
            try:
                dec.decode(b, final=not b)
            except UnicodeDecodeError as e:
                return pos - pend + e.start
            if not b:
                return None
            pos += len(b)


def _nonempty(docs, error):
    "Yield from `docs`; raise DataError(`error`) when there is nothing to yield."
    docs = iter(docs)
    first = next(docs, None)
    if first is None:
        raise DataError(error)
    yield first
    yield from docs


def _open_bin(path):
    return gzip.open(path, 'rb') if os.fspath(path).endswith('.gz') else open(path, 'rb')


def _check_nonempty(path):
    if os.path.getsize(path) == 0:
        raise DataError(f'{path}: empty file')


def _lines(path, errors='strict'):
    "Decoded lines (with their '\\n'), errors reported with the byte offset in the (decompressed) file."
    _check_nonempty(path)
    pos = 0
    with _open_bin(path) as f:
        for raw in f:
            yield decode(raw, str(path), errors, pos)
            pos += len(raw)
    if pos == 0:
        raise DataError(f'{path}: empty file (nothing after decompression)')


_re_imdb = re.compile(r'(?:^|/)(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$')


class ImdbReader:
    "IMDB reviews (folder or .tgz); label: pos/neg (None for unsup), or with label='rating' the file name's rating."

    def __init__(self, path, splits=('train', 'test', 'unsup'), label='sentiment', errors='strict'):
        self.path, self.splits, self.label, self.errors = Path(path), tuple(splits), label, errors
        if not self.path.exists():
            raise FileNotFoundError(f'IMDB data not found: {self.path}')
        if label not in ('sentiment', 'rating'):
            raise ValueError(f"label must be 'sentiment' or 'rating', not {label!r}")

    def _want(self, split, folder):
        return (split if folder != 'unsup' else 'unsup') in self.splits

    def _doc(self, m, raw, name):
        split, folder, _, rating = m.groups()
        label = None if folder == 'unsup' else folder if self.label == 'sentiment' else int(rating)
        return Doc(decode(raw, name, self.errors), label, split if folder != 'unsup' else 'unsup', name)

    def _folders(self):
        "The (split, folder) pairs of an extracted IMDB folder to read, in a fixed order."
        pairs = itertools.product(('train', 'test'), ('pos', 'neg', 'unsup'))
        return [(s, f) for s, f in pairs if (self.path / s / f).is_dir() and self._want(s, f)]

    def __iter__(self):
        expected = 'train|test/pos|neg|unsup/<id>_<rating>.txt files'
        error = f'{self.path}: no IMDB reviews in splits {list(self.splits)} (expected {expected})'
        return _nonempty(self._docs(), error)

    def _docs(self):
        if self.path.is_file():  # stream straight out of the archive, in archive order
            with tarfile.open(self.path, 'r|*') as tf:
                for mem in tf:
                    m = _re_imdb.search(mem.name)
                    if mem.isfile() and m and self._want(m.group(1), m.group(2)):
                        yield self._doc(m, tf.extractfile(mem).read(), f'{self.path}:{mem.name}')
            return
        for split, folder in self._folders():
            d = self.path / split / folder
            for f in sorted(os.listdir(d), key=lambda f: (len(f), f)):  # by numeric id: the same on every machine
                m = _re_imdb.search(f'{split}/{folder}/{f}')
                if m:
                    yield self._doc(m, (d / f).read_bytes(), str(d / f))

    def fingerprint(self):
        p = self.path
        fp = _fingerprint_path(p) if p.is_file() else [_fingerprint_path(p / s / f) for s, f in self._folders()]
        return dict(reader='imdb', splits=self.splits, label=self.label, errors=self.errors, files=fp)


_re_title = re.compile(r'^ = [^=].* = \n?$')
_re_wiki_file = re.compile(r'\.(raw|tokens)(\.gz)?$')


class WikiTextReader:
    "WikiText `.raw`/`.tokens` files (or a folder of them, `.gz` too), one Doc per article (` = Title = ` heading)."

    def __init__(self, paths, errors='strict'):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.files, self.errors = [], errors
        for p in map(Path, paths):
            if not p.exists():
                raise FileNotFoundError(f'WikiText file not found: {p}')
            self.files += sorted(f for f in p.iterdir() if _re_wiki_file.search(f.name)) if p.is_dir() else [p]
        if not self.files:
            raise FileNotFoundError(f'no WikiText .raw/.tokens files in {paths}')

    def __iter__(self):
        for f in self.files:
            yield from _nonempty(self._file_docs(f), f'{f}: no text (empty or whitespace only)')

    def _file_docs(self, f):
        split = next((s for s in ('train', 'valid', 'test') if f'.{s}.' in f.name or f.name.startswith(s)), 'train')
        buf, title, prev = [], None, ''
        for line, nxt in itertools.pairwise(itertools.chain(_lines(f, self.errors), [''])):  # '' after the last line
            # a level-1 heading: ' = Title = ' on its own between blank lines (a formula like ' = 1 rad / s = '
            # inside a paragraph is not one)
            if _re_title.match(line) and not prev.strip() and not nxt.strip():
                if ''.join(buf).strip():
                    yield Doc(''.join(buf).strip(), None, split, f'{f}: {title}')
                buf, title = [], line.strip(' =\n')
            buf.append(line)
            prev = line
        if ''.join(buf).strip():
            yield Doc(''.join(buf).strip(), None, split, f'{f}: {title}')

    def fingerprint(self):
        return dict(reader='wikitext', errors=self.errors, files=[_fingerprint_path(f) for f in self.files])


class TextCorpusReader:
    "Plain text (.gz too): one doc per line (mode 'lines'), per blank-line paragraph ('blank') or per .txt file."

    def __init__(self, paths, mode='auto', split='train', errors='strict'):
        if mode not in ('auto', 'lines', 'blank'):
            raise ValueError(f"mode must be auto|lines|blank, not {mode!r}")
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.paths, self.mode, self.split, self.errors = [Path(p) for p in paths], mode, split, errors
        for p in self.paths:
            if not p.exists():
                raise FileNotFoundError(f'corpus not found: {p}')

    def _mode(self, f):
        "The mode for file `f`: 'auto' picks 'blank' when its first 1000 lines hold a blank line."
        if self.mode != 'auto':
            return self.mode
        head = list(itertools.islice(_lines(f, self.errors), 1000))
        return 'blank' if any(not x.strip() for x in head[:-1]) else 'lines'

    def _file_docs(self, f):
        lines = enumerate(_lines(f, self.errors), 1)  # (line number, line)
        if self._mode(f) == 'lines':
            yield from (Doc(line.rstrip('\n'), None, self.split, f'{f}:{i}') for i, line in lines if line.strip())
            return
        for nonblank, para in itertools.groupby(lines, key=lambda il: bool(il[1].strip())):
            if nonblank:
                para = list(para)
                yield Doc(''.join(line for _, line in para).rstrip('\n'), None, self.split, f'{f}:{para[0][0]}')

    def __iter__(self):
        for p in self.paths:
            if p.is_dir():
                yield from _nonempty(self._folder_docs(p), f'{p}: no text (no .txt files in the folder)')
            else:
                yield from _nonempty(self._file_docs(p), f'{p}: no text (empty or whitespace only)')

    def _folder_docs(self, p):
        for f in sorted(p.rglob('*')):
            if f.is_file() and re.search(r'\.txt(\.gz)?$', f.name):
                raw = b''.join(_open_bin(f))
                yield Doc(decode(raw, str(f), self.errors), None, self.split, str(f))

    def fingerprint(self):
        files = [_fingerprint_path(p) for p in self.paths]
        return dict(reader='text', mode=self.mode, split=self.split, errors=self.errors, files=files)


def join_fields(values, mark_fields):
    "Several text columns -> one text: `['a', 'b']` -> `'xxfld 1 a xxfld 2 b'` (fastai's field markers)."
    return ' '.join(f'{FLD} {i + 1} {v}' if mark_fields else v for i, v in enumerate(values))


class TableReader:
    """A CSV/TSV/Parquet file or DataFrame: text column(s) joined with `xxfld N` markers, label column(s) (several = 0/1
    multi-label columns), optional `is_valid` column (-> split 'valid'/'train')."""

    def __init__(
        self,
        src,
        text_cols='text',
        label_cols=None,
        valid_col='is_valid',
        mark_fields=None,
        label_delim=None,
        errors='strict',
        chunksize=10_000,
    ):
        self.text_cols = [text_cols] if isinstance(text_cols, str) else list(text_cols)
        self.label_cols = (
            [] if label_cols is None else [label_cols] if isinstance(label_cols, str) else list(label_cols)
        )
        self.valid_col, self.label_delim, self.errors, self.chunksize = valid_col, label_delim, errors, chunksize
        self.mark_fields = len(self.text_cols) > 1 if mark_fields is None else mark_fields
        is_path = isinstance(src, (str, os.PathLike))
        self.src, self.name = src, str(src) if is_path else getattr(src, 'attrs', {}).get('source', 'DataFrame')
        self._kind = table_kind(self.name) or 'csv'
        if is_path:
            if not Path(src).exists():
                raise FileNotFoundError(f'table not found: {src}')
            _check_nonempty(src)
        if self._kind == 'parquet' and is_path:
            import pyarrow.parquet as pq  # only for Parquet files

            cols = list(pq.ParquetFile(src).schema_arrow.names)
        else:
            cols = list(next(self._chunks(nrows=1)).columns)
        self._check_columns(cols)

    def _check_columns(self, cols):
        need = [('text', c) for c in self.text_cols] + [('label', c) for c in self.label_cols]
        for what, c in need:
            if c not in cols:
                raise DataError(f'{self.name}: missing {what} column {c!r}; columns are {cols}')

    def _chunks(self, nrows=None):
        import pandas as pd  # pandas loads only when a table is read

        if isinstance(self.src, pd.DataFrame):
            yield self.src
            return
        if self._kind == 'parquet':
            yield pd.read_parquet(self.src)
            return
        sep = '\t' if self._kind == 'tsv' else ','
        try:
            yield from pd.read_csv(
                self.src, sep=sep, chunksize=self.chunksize, nrows=nrows, encoding='utf-8', encoding_errors=self.errors
            )
        except UnicodeDecodeError:
            off = find_bad_utf8(self.src)
            raise DataError(f"{self.src}: undecodable bytes at byte offset {off} (not UTF-8); {REPLACE_HINT}") from None
        except pd.errors.EmptyDataError:
            raise DataError(f'{self.src}: empty file (no header)') from None

    def _label(self, row, rowno):
        vals = [row[c] for c in self.label_cols]
        for c, v in zip(self.label_cols, vals):
            if v is None or v != v:  # None or NaN
                raise DataError(
                    f'{self.name}: label column {c!r} has a missing value at row {rowno} (0-based, header not counted)'
                )
        if len(vals) > 1:
            return tuple(int(v) for v in vals)  # one 0/1 column per label
        v = vals[0]
        if self.label_delim is not None:
            return tuple(str(v).split(self.label_delim))
        return v.item() if hasattr(v, 'item') else v

    def __iter__(self):
        row0 = 0
        for df in self._chunks():
            self._check_columns(list(df.columns))  # again: a Parquet index column is in the schema, not the frame
            texts = df[self.text_cols].fillna('').astype(str).values.tolist()
            valid = df[self.valid_col].values if self.valid_col and self.valid_col in df.columns else None
            labels = df[self.label_cols].to_dict('records') if self.label_cols else None
            for i, t in enumerate(texts):
                split = None if valid is None else ('valid' if _truthy(valid[i]) else 'train')
                lbl = self._label(labels[i], row0 + i) if labels else None
                yield Doc(join_fields(t, self.mark_fields), lbl, split, f'{self.name} row {row0 + i}')
            row0 += len(df)
        if row0 == 0:
            raise DataError(f'{self.name}: no rows')

    def fingerprint(self):
        import pandas as pd  # pandas loads only when a table is read

        if isinstance(self.src, pd.DataFrame):
            h = hashlib.sha256(pd.util.hash_pandas_object(self.src, index=True).values.tobytes()).hexdigest()
            files = [['DataFrame', h, list(map(str, self.src.columns))]]
        else:
            files = _fingerprint_path(self.src)
        settings = ('text_cols', 'label_cols', 'valid_col', 'mark_fields', 'label_delim', 'errors')
        return dict(reader='table', **{k: getattr(self, k) for k in settings}, files=files)  # meta.json's order


def as_frame(data, text_col, errors='strict'):
    "A DataFrame from a DataFrame, a CSV/TSV/Parquet path, a list/Series of strings (a file's name is kept in attrs)."
    import pandas as pd  # pandas loads only when a table is read

    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, Path)):
        p = Path(data)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found" if not p.exists() else f"{p}: not a file")
        try:
            if table_kind(p) == 'parquet':
                df = pd.read_parquet(p)
            else:  # .gz is decompressed by pandas
                df = pd.read_csv(p, sep='\t' if table_kind(p) == 'tsv' else ',', encoding_errors=errors)
        except UnicodeDecodeError:
            off = find_bad_utf8(p)
            raise DataError(f"{p}: undecodable bytes at byte offset {off} (not UTF-8); {REPLACE_HINT}") from None
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
            raise DataError(f"{p}: not a readable table ({str(e).splitlines()[0]})") from None
        df.attrs['source'] = str(p)
        return df
    if isinstance(data, (list, tuple, pd.Series, np.ndarray)):
        return pd.DataFrame({text_col: list(data)})
    raise TypeError(f"expected a DataFrame, a CSV/TSV/Parquet path or a list of texts, got {type(data).__name__}")


def table_source(df):
    "The file a DataFrame was read from, for error messages."
    return df.attrs.get('source', 'DataFrame')


def check_labelled(df, text_col, label_cols, valid_col=None):
    "Refuse a table that can't train a classifier: missing columns, or fewer than 2 classes in a label column."
    for c in [text_col, *label_cols] + ([valid_col] if valid_col else []):
        if c not in df.columns:
            raise DataError(f"{table_source(df)}: no column {c!r}; columns are {list(df.columns)}")
    if len(label_cols) == 1:
        classes = df[label_cols[0]].dropna().unique()
        if len(classes) < 2:
            found = f'{label_cols[0]!r} has {len(classes)} class(es) {sorted(map(str, classes))}'
            raise DataError(f'{table_source(df)}: label column {found}; a classifier needs at least 2')


def _truthy(v):
    return v.strip().lower() in ('true', '1', 'yes', 'valid') if isinstance(v, str) else bool(v)


# ---- which reader for which dataset: the one place that decides ----
DATASETS = ('imdb', 'imdb_sample', 'wikitext-103', 'wikitext-2')


class MultiReader:
    "Several readers one after another."

    def __init__(self, readers):
        self.readers = list(readers)

    def __iter__(self):
        for r in self.readers:
            yield from r

    def fingerprint(self):
        return dict(reader='multi', parts=[r.fingerprint() for r in self.readers])


def path_kind(p):
    "What a corpus path holds, from how it looks: 'imdb', 'wikitext', 'table' or 'text'."
    p, name = Path(p), Path(p).name.lower()
    if (p.is_dir() and (p / 'train' / 'pos').is_dir()) or name.endswith(('.tgz', '.tar.gz')):
        return 'imdb'
    if '.raw' in name or '.tokens' in name or (p.is_dir() and any(_re_wiki_file.search(q.name) for q in p.iterdir())):
        return 'wikitext'
    return 'table' if table_kind(p) else 'text'


def table_kind(path):
    "'csv', 'tsv' or 'parquet' from a table file's name (.gz too), or None for a name that is not a table's."
    name = Path(path).name.lower().removesuffix('.gz')
    if name.endswith(('.parquet', '.pq')):
        return 'parquet'
    return 'tsv' if name.endswith(('.tsv', '.tab')) else 'csv' if name.endswith('.csv') else None


def reader_for(paths, split='train', label_col='label', errors='strict'):
    "The reader of corpus paths (a list or 'a,b'), by `path_kind`; a table's columns: 'text' and `label_col` (or None)."
    paths = [Path(p) for p in (paths.split(',') if isinstance(paths, str) else paths) if str(p)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"corpus not found: {', '.join(missing)}")
    kinds = [path_kind(p) for p in paths]

    def make(ps, kind):
        if kind == 'imdb':
            return ImdbReader(ps[0], errors=errors)
        if kind == 'wikitext':
            return WikiTextReader(ps, errors=errors)
        if kind == 'table':
            return TableReader(ps[0], text_cols='text', label_cols=label_col, valid_col='is_valid', errors=errors)
        return TextCorpusReader(ps, split=split, errors=errors)

    if len(set(kinds)) == 1 and kinds[0] in ('wikitext', 'text'):
        return make(paths, kinds[0])
    readers = [make([p], k) for p, k in zip(paths, kinds)]
    return readers[0] if len(readers) == 1 else MultiReader(readers)


def wikitext_file(folder, split, must=True):
    "A WikiText folder's file of `split` (wiki.<split>.tokens or .raw, .gz too); None if absent and not `must`."
    for name in (f'wiki.{split}.tokens', f'wiki.{split}.tokens.gz', f'wiki.{split}.raw', f'wiki.{split}.raw.gz'):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    if must:
        raise FileNotFoundError(f'no wiki.{split}.tokens or wiki.{split}.raw in {folder}')


def dataset_reader(name, root=None, mirror=None, folder=None, errors='strict'):
    "The reader of a named dataset (`DATASETS`), fetched (or taken from the mirror) unless its `folder` is given."
    if name not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; choose from {DATASETS}')
    folder = Path(folder) if folder else untar_data(name, root, mirror)
    if name == 'imdb_sample':
        csvs = sorted(folder.rglob('texts.csv'))
        if not csvs:
            raise FileNotFoundError(f'no texts.csv in {folder}')
        return reader_for(csvs[:1], errors=errors)
    return reader_for([folder], errors=errors)
