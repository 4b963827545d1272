"""Build (or find) the token store for a dataset: `python -m ulmfit prepare --dataset imdb`.

Datasets are fetched into $ULMFIT_DATA (default ./data) from their fast.ai URLs, or from a mirror folder
(--mirror / $ULMFIT_MIRROR) holding the archive of the same file name. --corpus reads explicit files or folders
instead (WikiText .raw/.tokens[.gz], plain-text corpora, CSV/TSV/Parquet, an IMDB folder or .tgz). The store goes to
$ULMFIT_DATA/cache/<key>/ and a second run with the same inputs and settings reuses it at once.
"""

import argparse
import time
from pathlib import Path

from common.log import log
from ulmfit.datasets import DATASETS, ERRORS_HELP, dataset_reader, reader_for
from ulmfit.store import build_store, make_tokenizer
from ulmfit.vocab import Vocab


def prepare_dataset(
    dataset='imdb',
    corpus=None,
    tokenizer='spacy',
    max_vocab=60000,
    min_freq=3,
    n_workers=None,
    mirror=None,
    root=None,
    vocab=None,
    spm_vocab_size=15000,
    spm_model_type='unigram',
    errors='strict',
    progress=True,
):
    "Fetch + tokenize + numericalize a dataset into a TokenStore (reused when already built)."
    reader = reader_for(corpus, errors=errors) if corpus else dataset_reader(dataset, root, mirror, errors=errors)
    if isinstance(vocab, (str, Path)):
        p = Path(vocab)
        vocab = Vocab.load(p / 'vocab.json' if p.is_dir() else p)
    tok = make_tokenizer(tokenizer, reader, root, spm_vocab_size, spm_model_type)
    name = dataset if not corpus else ','.join(Path(c).name for c in corpus)
    return build_store(reader, tok, vocab, max_vocab, min_freq, n_workers, root, progress=progress, name=name)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog='python -m ulmfit prepare', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        '--dataset',
        choices=DATASETS,
        default=None,
        help='named dataset to fetch and tokenize (imdb: train+test+unsup, labels pos/neg)',
    )
    ap.add_argument(
        '--corpus',
        nargs='+',
        metavar='PATH',
        help='explicit files/folders instead of a download (e.g. wiki.valid.raw.gz, train.txt.gz, texts.csv)',
    )
    ap.add_argument(
        '--tokenizer',
        choices=('spacy', 'spm'),
        default='spacy',
        help='spacy: fastai rules + spaCy English (default); spm: SentencePiece trained on a sample',
    )
    ap.add_argument('--max-vocab', type=int, default=60000, help='vocab size cap incl. specials (default 60000)')
    ap.add_argument('--min-freq', type=int, default=3, help='keep tokens seen at least this often (default 3)')
    ap.add_argument(
        '--vocab-from', dest='vocab', metavar='PATH', help="reuse a vocab: a store folder or vocab.json (e.g. the LM's)"
    )
    ap.add_argument('--spm-vocab-size', type=int, default=15000, help='SentencePiece vocab size (default 15000)')
    ap.add_argument('--spm-model-type', choices=('unigram', 'bpe'), default='unigram')
    ap.add_argument('--n-workers', type=int, default=None, help='tokenizer processes (default: all cores)')
    ap.add_argument('--mirror', metavar='DIR', help='folder holding dataset archives (overrides $ULMFIT_MIRROR)')
    ap.add_argument('--data', dest='root', metavar='DIR', help='data root (overrides $ULMFIT_DATA, default ./data)')
    ap.add_argument('--errors', choices=('strict', 'replace'), default='strict', help=ERRORS_HELP)
    a = ap.parse_args(argv)
    if not a.dataset and not a.corpus:
        ap.error('give --dataset or --corpus')
    t0 = time.time()
    store = prepare_dataset(**vars(a))  # every flag's dest is a parameter of prepare_dataset
    m = store.meta
    log.info(
        f'docs: {m["n_docs"]:,}  tokens: {m["n_tokens"]:,}  vocab: {m["vocab_size"]:,} '
        f'(distinct tokens {m["distinct_tokens"]:,}, unk {m["n_unk"]:,})'
    )
    log.info(f'splits: {m["split_counts"]}  labels: {m["label_names"] or "none"}')
    log.info(f'store: {store.path}  ({time.time() - t0:.1f}s; built in {m["seconds"]}s)')
    return 0
