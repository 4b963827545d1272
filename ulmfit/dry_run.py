"""Synthetic data for `--dry-run`: a training command runs every stage on it in seconds, with a tiny model, nothing
downloaded, and everything (data, token stores, run folder) in a temporary folder that is removed at the end."""

import contextlib
import csv
import os
import random
import tempfile
from pathlib import Path

from common.log import log

WORDS = 'the a film story actor plot scene music it this was is and but very quite not rather so'.split()
CUES = {'neg': 'dull awful boring', 'pos': 'great lovely moving'}  # one per text, so a classifier has a signal


def synthetic_texts(n, seed=0):
    "`n` (text, label) pairs of random words, alternating labels, each text holding one word of its label's cues."
    rnd = random.Random(seed)
    for i in range(n):
        label = 'pos' if i % 2 else 'neg'
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(10, 30))]
        words.insert(rnd.randrange(len(words)), rnd.choice(CUES[label].split()))
        yield ' '.join(words).capitalize() + '.', label


def write_corpus(path, n_docs, seed=0):
    "A plain-text corpus: documents separated by blank lines."
    path.write_text('\n\n'.join(t for t, _ in synthetic_texts(n_docs, seed)) + '\n')
    return path


def write_table(path, n_rows, valid_pct=0.25, seed=0):
    "A labelled CSV with the columns text, label, is_valid (the last `valid_pct` of the rows)."
    n_valid = int(n_rows * valid_pct)
    rows = [[text, label, i >= n_rows - n_valid] for i, (text, label) in enumerate(synthetic_texts(n_rows, seed))]
    with open(path, 'w', newline='') as f:
        csv.writer(f).writerows([['text', 'label', 'is_valid'], *rows])
    return path


@contextlib.contextmanager
def dry_run_folder():
    "A temporary folder that is also the data root ($ULMFIT_DATA) while the dry run lasts; removed afterwards."
    old = os.environ.get('ULMFIT_DATA')
    with tempfile.TemporaryDirectory(prefix='ulmfit-dry-run-') as tmp:
        os.environ['ULMFIT_DATA'] = str(Path(tmp) / 'data')
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop('ULMFIT_DATA', None)
            else:
                os.environ['ULMFIT_DATA'] = old
    log.info('dry run finished: every stage ran on synthetic data; its temporary folder is removed')
