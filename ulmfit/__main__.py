"""`python -m ulmfit <command> ...`: the ULMFiT command line. `python -m ulmfit <command> --help` explains each."""
import importlib
import sys

COMMANDS = {
    'prepare': ('ulmfit.prepare', 'download a dataset and build its token store (tokenize + numericalize)'),
    'pretrain': ('ulmfit.pretrain', 'pretrain an AWD-LSTM language model (WikiText-103 or any corpus)'),
    'generate': ('ulmfit.generate', 'generate text from a language-model folder'),
    'import-fastai': ('ulmfit.fastai_import', "convert fastai's published WT103 weights into a model folder"),
    'models': ('ulmfit.pretrained', 'list the pretrained LMs known by name (fastai-wt103, ...) and whether cached'),
    'imdb': ('ulmfit.imdb', 'ULMFiT end to end on IMDB: fine-tune the LM, train the classifier, evaluate'),
    'classify': ('ulmfit.cli', 'fine-tune and train a classifier on your own CSV/TSV/Parquet file'),
    'predict': ('ulmfit.cli', 'predict labels for a CSV of texts with a saved classifier'),
}


def usage():
    lines = ['usage: python -m ulmfit <command> [options]', '', 'commands:']
    lines += [f'  {name:<14} {desc}' for name, (_, desc) in COMMANDS.items()]
    lines += ['', "run 'python -m ulmfit <command> --help' for a command's options; add --debug to see the traceback "
                  "behind an error"]
    return '\n'.join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from common.cli import run_command
    from common.perf import tune_malloc
    from .datasets import DataError
    tune_malloc()
    mod = importlib.import_module(COMMANDS[cmd][0])
    fn = getattr(mod, f'{cmd.replace("-", "_")}_main', None) or mod.main
    return run_command(fn, rest, expected=(DataError,))


if __name__ == '__main__':
    sys.exit(main())
