"""`ulmfit <command> ...` (or `python -m ulmfit <command> ...`): the ULMFiT command line. `<command> --help` explains
each command."""

import sys

from common.entry import dispatch

COMMANDS = {
    'prepare': ('ulmfit.prepare:main', 'download a dataset and build its token store (tokenize + numericalize)'),
    'pretrain': ('ulmfit.pretrain:main', 'pretrain an AWD-LSTM language model (WikiText-103 or any corpus)'),
    'generate': ('ulmfit.generate:main', 'generate text from a language-model folder'),
    'import-fastai': ('ulmfit.cli:import_fastai_main', "convert fastai's published WT103 weights into a model folder"),
    'models': (
        'ulmfit.cli:models_main',
        'list the pretrained LMs known by name (fastai-wt103, ...) and whether cached',
    ),
    'imdb': ('ulmfit.imdb:main', 'ULMFiT end to end on IMDB: fine-tune the LM, train the classifier, evaluate'),
    'classify': ('ulmfit.cli:classify_main', 'fine-tune and train a classifier on your own CSV/TSV/Parquet file'),
    'predict': ('ulmfit.cli:predict_main', 'predict labels for a CSV of texts with a saved classifier'),
}


def _expected():
    # called by dispatch after setup_process(): this loads torch, which must come after it
    from .datasets import DataError

    return (DataError,)


def main(argv=None):
    "Run `python -m ulmfit <command>`; returns the exit status."
    return dispatch('python -m ulmfit', COMMANDS, argv, expected=_expected)


if __name__ == '__main__':
    sys.exit(main())
