"""The small commands: `classify` and `predict` (ULMFiT on your own CSV/TSV/Parquet files), `import-fastai` and
`models` (pretrained weights).

python -m ulmfit classify --csv reviews.csv --text-col text --label-col label [--pretrained runs/lm-cpu/model]
python -m ulmfit classify --csv reviews.csv --pretrained fastai-wt103     # fastai's published WT103 weights
python -m ulmfit predict --model runs/clf-reviews/classifier --csv new.csv --out preds.csv
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from common.download import archive_source, get_data_root
from common.log import log
from common.runs import new_run_dir, write_config, write_json

from . import pretrained
from .awd_lstm import AWDLSTMConfig
from .datasets import ERRORS_HELP
from .dry_run import dry_run_folder, write_table
from .fastai_import import import_fastai
from .pretrained import PRETRAINED, find_pretrained, get_pretrained, model_dir, named_for, resolve_pretrained


def _parser(prog, doc):
    "An argument parser that prints `doc` (a module docstring) as written."
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def classify_main(argv=None):
    "Entry point of `python -m ulmfit classify`; returns the exit status."
    p = _parser('python -m ulmfit classify', __doc__)
    p.add_argument('--csv', help='labelled data: .csv, .tsv or .parquet (required)')
    p.add_argument('--text-col', default='text', help='text column (default: text)')
    p.add_argument(
        '--label-col',
        default='label',
        help='label column; several comma-separated 0/1 columns make a multi-label task (default: label)',
    )
    p.add_argument('--valid-col', default=None, help='boolean column marking validation rows (default: random split)')
    p.add_argument('--valid-pct', type=float, default=0.1, help='validation fraction without --valid-col')
    p.add_argument(
        '--pretrained',
        default='',
        help="language-model folder or fastai-wt103 (fastai's published WikiText-103 weights); default: newest "
        "runs/lm-*/model, else from scratch; 'none' = from scratch",
    )
    p.add_argument('--lm-epochs', type=int, default=1, help='LM fine-tuning epochs with all layers (0 = skip)')
    p.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    p.add_argument('--bs', type=int, default=32, help='classifier batch size')
    p.add_argument('--name', default='', help='run folder name (default: clf-<file stem>)')
    p.add_argument('--runs', default='runs', help='where run folders go')
    p.add_argument('--errors', choices=('strict', 'replace'), default='strict', help=ERRORS_HELP)
    p.add_argument(
        '--dry-run',
        action='store_true',
        help='fine-tune and train on a synthetic table with the tiny model, in a temporary folder: a quick check',
    )
    a = p.parse_args(argv)
    if a.dry_run:
        with dry_run_folder() as tmp:
            csv = write_table(tmp / 'texts.csv', 48)
            dry = dict(csv=str(csv), valid_col='is_valid', pretrained='none', bs=8, name='clf-dry-run')
            a = argparse.Namespace(**{**vars(a), **dry, 'runs': str(tmp / 'runs')})
            classify(a, config=AWDLSTMConfig.preset('tiny'), lm=dict(bs=8, bptt=16))
        return 0
    if not a.csv:
        p.error('the following arguments are required: --csv')
    classify(a)
    return 0


def classify(a, config=None, lm=None):
    "The classify command with parsed arguments `a`; `config` (no pretrained LM) and `lm` (fine-tuning) for dry runs."
    # torch, pandas and spacy load only when a command runs: `--help` and bad arguments answer at once
    from .api import TextClassifier
    from .datasets import DataError, as_frame, check_labelled

    t0 = time.time()
    # Check everything the user gave before making the run folder: a failed try leaves nothing behind.
    df = as_frame(a.csv, a.text_col, a.errors)
    labels = a.label_col.split(',')
    label_col = labels if len(labels) > 1 else labels[0]
    check_labelled(df, a.text_col, labels, a.valid_col)
    src = resolve_pretrained(a.pretrained, a.runs)
    kw = dict(precision=a.precision, bs=a.bs)
    clf = TextClassifier.from_pretrained(src, **kw) if src else TextClassifier(config=config, **kw)
    run_dir = new_run_dir(a.name or f'clf-{Path(a.csv).stem}', a.runs)
    write_config(run_dir, {**vars(a), 'pretrained_resolved': str(src)})
    log.info(f"pretrained LM: {src or 'none (training from scratch)'}; run folder {run_dir}")
    try:
        if a.lm_epochs and (src or a.dry_run):
            clf.fine_tune_lm(df[a.text_col], epochs=a.lm_epochs, **(lm or {}))
        clf.fit(df, text_col=a.text_col, label_col=label_col, valid_col=a.valid_col, valid_pct=a.valid_pct)
    except DataError:  # e.g. validation labels the training rows lack (known only once split): leave nothing behind
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    out = clf.save(run_dir / 'classifier')
    res = {k: v for k, v in clf.results.items() if k != 'confusion'}
    write_json(run_dir / 'metrics.json', {**res, 'wall_s': round(time.time() - t0, 1)})
    log.info(
        f"validation: {json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)})}; classifier folder: {out}"
    )


def predict_main(argv=None):
    "Entry point of `python -m ulmfit predict`; returns the exit status."
    p = _parser('python -m ulmfit predict', __doc__)
    p.add_argument('--model', required=True, help='classifier folder (from classify, imdb or TextClassifier.save)')
    p.add_argument('--csv', required=True, help='texts to classify: .csv, .tsv or .parquet')
    p.add_argument('--text-col', default='text')
    p.add_argument('--out', required=True, help='output CSV: the input columns plus pred and one prob_<class> each')
    p.add_argument('--errors', choices=('strict', 'replace'), default='strict', help=ERRORS_HELP)
    a = p.parse_args(argv)
    # torch, pandas and spacy load only after the arguments parse
    from .api import TextClassifier
    from .datasets import DataError, as_frame

    out = Path(a.out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out (existing files are never overwritten)")
    if not out.parent.is_dir():  # found out now, not after every prediction is computed
        raise FileNotFoundError(f"{out}: folder {out.parent} does not exist; create it or choose another --out")
    clf = TextClassifier.load(a.model)
    df = as_frame(a.csv, a.text_col, a.errors)
    if a.text_col not in df.columns:
        raise DataError(f"{a.csv}: no column {a.text_col!r}; columns are {list(df.columns)}")
    preds = clf.predict(df[a.text_col].fillna('').astype(str).tolist())  # an empty cell is an empty text
    df['pred'] = [p.label if not isinstance(p.label, list) else '|'.join(p.label) for p in preds]
    for c in clf.classes:
        df[f'prob_{c}'] = [p.probs.get(str(c)) for p in preds]
    df.to_csv(out, index=False)
    log.info(f'wrote {len(df):,} predictions to {out}')
    return 0


def import_fastai_main(argv=None):
    "CLI: python -m ulmfit import-fastai --weights W.pth --vocab itos.pkl --out DIR"
    ap = argparse.ArgumentParser(prog='ulmfit import-fastai', description=import_fastai.__doc__)
    ap.add_argument('--weights', required=True, help="fastai LM .pth (bare state dict or {'model': ...})")
    ap.add_argument('--vocab', required=True, help='itos pickle (list of str)')
    ap.add_argument('--out', required=True, help='model folder to write (a new one, unless --overwrite)')
    ap.add_argument('--overwrite', action='store_true', help='replace the model in an existing --out folder')
    a = ap.parse_args(argv)
    _, config, itos = import_fastai(a.weights, a.vocab, a.out, overwrite=a.overwrite)
    log.info(
        f"imported {config.n_layers}-layer AWD-LSTM (emb {config.emb_sz}, hid {config.n_hid}, "
        f"vocab {len(itos)}, tied={config.tie_weights}) -> {a.out}"
    )
    return 0


def models_main(argv=None):
    "CLI: list the known names, where each would come from, and whether it is cached; --get NAME fetches one."
    p = _parser('python -m ulmfit models', pretrained.__doc__)
    p.add_argument(
        '--get',
        default='',
        choices=['', *PRETRAINED],
        metavar='NAME',
        help='download and import NAME now (e.g. before going offline)',
    )
    p.add_argument('--runs', default='runs', help='where local run folders are looked for')
    a = p.parse_args(argv)
    if a.get:
        get_pretrained(a.get)
    log.info(f"{'name':<18} {'direction':<9} {'cached':<6} source")
    for name, e in PRETRAINED.items():
        src = archive_source(e['dataset'])
        cached = 'yes' if (model_dir(name) / 'lm.pth').exists() else 'no'
        log.info(f"{name:<18} {'backward' if e['backwards'] else 'forward':<9} {cached:<6} {src}")
    log.info(f"cache: {get_data_root() / 'models'}")
    for bwd in (False, True):
        local = find_pretrained(a.runs, bwd)
        log.info(
            f"default {'backward' if bwd else 'forward'} LM without --pretrained: "
            f"{local or f'{named_for(bwd)} with --preset paper, else random weights'}"
        )
    return 0
