"""ULMFiT end to end on IMDB: `python -m ulmfit imdb [--preset tiny|cpu|paper] [--key value ...]`.

  1. get IMDB (download, or ULMFIT_MIRROR) and build one token store (train + test + unsup, with labels)
  2. take the pretrained LM: `--pretrained DIR|fastai-wt103|none`; without it, the newest local runs/lm-*/model,
     else with `--preset paper` fastai's published WikiText-103 weights (downloaded once, cached under
     $ULMFIT_DATA/models/), else random weights with a loud banner (`python -m ulmfit models` lists the names)
  3. vocab transfer, then fine-tune the LM on all review text (10% of documents held out)
  4. train the classifier with gradual unfreezing, validating on training reviews held out from it; evaluate once
     on the 25,000 test reviews
  5. with --bidirectional, the same backwards, and the averaged-probability ensemble
The run folder gets report.md, metrics.json (accuracy, per-class precision/recall, stage wall times),
metrics.jsonl, the resolved config, loss/accuracy curves and the confusion matrix. `--resume RUN_DIR`
skips the stages whose outputs are already in that folder.
"""

import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from common.budget import StageBudget
from common.cli import Interrupted
from common.config import ConfigError, Setting, named_settings, parse_run_config, resume_config
from common.learner import DataLoaders
from common.log import log
from common.plots import plot_confusion
from common.runs import RunLogger, new_run_dir, write_config, write_json

from . import recipe
from .awd_lstm import AWDLSTMConfig
from .datasets import ERRORS_HELP, dataset_reader
from .dry_run import dry_run_folder, write_table
from .model_io import check_spacy_lm, load_classifier, load_model_folder, save_classifier, save_model_folder
from .pretrained import resolve_pretrained
from .store import build_store
from .tokenize import SpacyTokenizer

SETTINGS = {
    'dataset': Setting(
        'imdb', 'imdb (50k labelled + 50k unlabelled reviews) or imdb_sample (1,000 rows)', ('imdb', 'imdb_sample')
    ),
    'pretrained': Setting(
        '',
        "forward LM: a model folder, fastai-wt103, or 'none' (from scratch); empty = newest "
        "runs/lm-*/model, else fastai-wt103 with the paper preset, else from scratch",
    ),
    'pretrained_bwd': Setting(
        '',
        "backward LM: a model folder, fastai-wt103-bwd, or 'none'; empty = newest runs/lm-*-bwd/model, else "
        'fastai-wt103-bwd with the paper preset or when --pretrained is fastai-wt103, else from scratch',
    ),
    'bidirectional': Setting(False, 'also train the backward model and report the ensemble'),
    'model': Setting('cpu', 'AWD-LSTM size when there is no pretrained model', ('tiny', 'cpu', 'paper')),
    'max_vocab': Setting(60000, 'largest vocab size'),
    'min_freq': Setting(3, 'minimum count for a token to enter the vocab'),
    'lm_docs': Setting(0, 'fine-tune the LM on this many random documents (0 = all)'),
    'lm_bs': Setting(64, 'LM fine-tuning batch size'),
    'lm_bptt': Setting(70, 'LM fine-tuning sequence length'),
    'lm_drop_mult': Setting(0.3, 'LM fine-tuning dropout multiplier'),
    'lm_frozen_epochs': Setting(1, 'LM epochs with only the last layer group trainable'),
    'lm_frozen_lr': Setting(2e-2, 'learning rate of those'),
    'lm_epochs': Setting(10, 'LM epochs with every layer trainable'),
    'lm_lr': Setting(2e-3, 'learning rate of those'),
    'lm_valid_pct': Setting(0.1, 'fraction of documents held out to validate the LM'),
    'clas_bs': Setting(64, 'classifier batch size'),
    'clas_lr': Setting(2e-2, 'top learning rate of the first unfreezing stage (later stages: /2, /4, /20)'),
    'clas_epochs': Setting([1, 1, 1, 2], 'epochs of the four unfreezing stages: head, -2, -3, all'),
    'clas_drop_mult': Setting(0.5, 'classifier dropout multiplier'),
    'train_docs': Setting(0, 'train the classifier on this many random labelled training reviews (0 = all)'),
    'clas_valid_docs': Setting(
        2500,
        'hold out this many labelled training reviews (at random, each label in proportion) to validate after each '
        'classifier epoch; the classifier never trains on them (0 = no per-epoch validation). The test reviews are '
        'read once, for the final accuracy',
    ),
    'bptt': Setting(72, 'classifier chunk length'),
    'max_len': Setting(
        72 * 20,
        'classifier pools over (and back-propagates through) the last max_len tokens; it '
        'reads the whole document before them, as fastai does',
    ),
    'truncate': Setting(
        0,
        'cut each document to its last N tokens (in reading order) before the classifier reads '
        'it: cheaper, but the hidden state no longer sees the beginning (0 = read whole documents)',
    ),
    'label_smoothing': Setting(0.0, 'label smoothing of the classifier loss'),
    'precision': Setting('fp32', 'fp32, bf16 or fp16 (GPU)', ('fp32', 'bf16', 'fp16')),
    'budget_minutes': Setting(
        0.0,
        'plan the run to fit this many minutes, data included: the time left is shared among the stages by '
        'budget_split, and each stage measures its step time over its first steps, then runs its complete schedule '
        'over the steps that fit its share (0 = the epochs as set)',
    ),
    'budget_split': Setting(
        [0.4, 0.5, 0.1],
        'with budget_minutes: the shares of LM fine-tuning, the classifier and the test evaluation (per direction; '
        "within a part in proportion to the stages' epochs). The evaluation's share is replaced by an estimate from "
        'measured forward speed once the classifier has trained a stage',
    ),
    'seed': Setting(42, 'random seed'),
    'name': Setting('', 'run folder name under runs/ (default: imdb-<preset>)'),
    'runs': Setting('runs', 'where run folders go'),
    'resume': Setting('', 'a run folder to continue (stages already done are skipped)'),
    'errors': Setting('strict', ERRORS_HELP, ('strict', 'replace')),
    'dry_run': Setting(
        False,
        'every stage on a synthetic labelled table with the tiny model, a few batches each, in '
        'a temporary folder: a quick check',
    ),
}

# What `--resume` may change; a different value of anything else would make the rest of the run disagree with its
# first part. The budget applies to what is left of the run.
RESUME_OVERRIDES = ('budget_minutes',)

PRESETS = {
    'tiny': dict(
        dataset='imdb_sample',
        model='tiny',
        max_vocab=8000,
        min_freq=2,
        lm_docs=400,
        lm_bs=32,
        lm_bptt=35,
        lm_epochs=1,
        clas_bs=16,
        clas_epochs=[1, 1, 1, 1],
        max_len=72 * 4,
        lm_valid_pct=0.1,
        clas_valid_docs=100,
    ),
    # About 75 minutes on a 2-core CPU (sized from bench/lm_speed.py and bench/clas_speed.py). truncate=288 keeps
    # this preset's reading as it was timed (documents cut to 288 tokens: the last ones forward, the first ones for
    # the backward model); whether reading whole documents is worth its cost on a CPU awaits measurement.
    # budget_minutes=120: with `pretrain`'s 30, the two README commands fit in 150 minutes.
    'cpu': dict(
        max_vocab=30000,
        lm_docs=2000,
        lm_bs=32,
        lm_epochs=1,
        clas_bs=32,
        clas_epochs=[1, 1, 1, 1],
        train_docs=8000,
        max_len=72 * 4,
        truncate=72 * 4,
        budget_minutes=120.0,
    ),
    # The fastai ULMFiT IMDB recipe, for a GPU: fastbook 10_nlp.ipynb (fastai v2), whose stages match v1's
    # course-v3 lesson3-imdb.ipynb; the other settings' defaults above are that recipe too.
    'paper': dict(
        model='paper',  # the WT103 AWD-LSTM (used only when no pretrained folder is found)
        lm_bs=128,  # dls_lm = ...dataloaders(path, path=path, bs=128, seq_len=80)
        lm_bptt=80,  # ...seq_len=80
        lm_drop_mult=0.3,  # language_model_learner(dls_lm, AWD_LSTM, drop_mult=0.3, ...)
        lm_frozen_epochs=1,
        lm_frozen_lr=2e-2,  # learn.fit_one_cycle(1, 2e-2)
        lm_epochs=10,
        lm_lr=2e-3,  # learn.unfreeze(); learn.fit_one_cycle(10, 2e-3)
        lm_valid_pct=0.1,  # splitter=RandomSplitter(0.1) over train + test + unsup reviews
        clas_bs=128,  # dls_clas = ...dataloaders(path, path=path, bs=128, seq_len=72)
        bptt=72,  # ...seq_len=72
        max_len=72 * 20,  # v2 text/learner.py `text_classifier_learner(max_len=72*20)`
        truncate=0,  # whole documents, as fastai's SentenceEncoder reads them
        clas_drop_mult=0.5,  # text_classifier_learner(dls_clas, AWD_LSTM, drop_mult=0.5, ...)
        clas_lr=2e-2,  # fit_one_cycle(1, 2e-2); then 1e-2, 5e-3, 1e-3 (each a slice(lr/2.6**4, lr))
        clas_epochs=[1, 1, 1, 2],  # freeze_to(-2): 1 epoch, freeze_to(-3): 1, unfreeze(): 2
        precision='fp16',  # .to_fp16() on both learners
    ),
}


def imdb_store(cfg):
    "The token store of the dataset: labels, splits and the vocab built from its text."
    tok, errors = SpacyTokenizer(), cfg.get('errors', 'strict')  # bench.probe passes a partial config
    reader = dataset_reader(cfg['dataset'], folder=cfg.get('sample_folder'), errors=errors)  # a dry run's own table
    store = build_store(reader, tok, max_vocab=cfg['max_vocab'], min_freq=cfg['min_freq'], name=cfg['dataset'])
    return store, 'test' if cfg['dataset'] == 'imdb' else 'valid'


# --dry-run: synthetic reviews, no pretrained LM, the tiny model, every stage for one epoch of a few batches.
DRY_RUN = dict(
    dataset='imdb_sample',
    pretrained='none',
    pretrained_bwd='none',
    model='tiny',
    max_vocab=1000,
    min_freq=1,
    lm_docs=0,
    lm_bs=8,
    lm_bptt=16,
    lm_frozen_epochs=1,
    lm_epochs=1,
    clas_bs=8,
    clas_epochs=[1, 1, 1, 1],
    train_docs=0,
    clas_valid_docs=0,
    bptt=16,
    max_len=32,
    truncate=0,
    precision='fp32',
    name='imdb-dry-run',
    resume='',
    budget_minutes=0.0,
)


def main(argv=None):
    "Entry point of `python -m ulmfit imdb`; returns the exit status."
    cfg = parse_run_config(argv, SETTINGS, PRESETS, prog='python -m ulmfit imdb', description=__doc__)
    if cfg['dry_run']:
        with dry_run_folder() as tmp:
            write_table(tmp / 'texts.csv', 48)
            run({**cfg, **DRY_RUN, 'sample_folder': str(tmp), 'runs': str(tmp / 'runs')})
        return 0
    run(cfg, named_settings(sys.argv[1:] if argv is None else argv))
    return 0


def run(cfg, given=()):
    "The whole pipeline; returns the run folder. `given`: the settings named on the command line."
    t_start, times = time.time(), {}
    if cfg['resume']:
        cfg = resume_config(cfg['resume'], cfg, given, SETTINGS, RESUME_OVERRIDES)
    recipe.clas_stages(cfg['clas_lr'], cfg['clas_epochs'])  # a wrong stage count fails now, not hours later
    budget = stage_budget(cfg) if cfg.get('budget_minutes') else None  # checks the split before any work
    torch.manual_seed(cfg['seed'])
    t = time.time()
    store, test_split = imdb_store(cfg)
    times['data'] = round(time.time() - t, 1)
    split = clas_split(cfg, store, test_split)  # too many held-out reviews fails now, before the LM is fine-tuned
    run_dir = Path(cfg['resume']) if cfg['resume'] else new_run_dir(cfg['name'] or f"imdb-{cfg['preset']}", cfg['runs'])
    log.info(
        f"{cfg['dataset']}: {len(store):,} documents, {store.n_tokens:,} tokens, vocab "
        f"{len(store.vocab):,}; run folder {run_dir}"
    )
    write_config(run_dir, {**cfg, 'store': str(store.path)})
    classes = list(store.label_names)
    directions = ['fwd', 'bwd'] if cfg['bidirectional'] else ['fwd']
    results, probs = {}, {}
    for d in directions:
        try:
            probs[d], targs, results[d], st = one_direction(cfg, store, split, classes, run_dir, d, budget)
        except KeyboardInterrupt:  # resuming skips the finished stages (model folders); the cut one starts over
            raise Interrupted(
                f"the finished stages are kept in {run_dir}",
                resume=f"python -m ulmfit imdb --resume {shlex.quote(str(run_dir))}",
            ) from None
        times.update({f'{d}_{k}': v for k, v in st.items()})
    if len(directions) == 2:
        results['ensemble'] = recipe.classification_report((probs['fwd'] + probs['bwd']) / 2, targs, classes)
    best = 'ensemble' if 'ensemble' in results else 'fwd'
    plot_confusion(results[best]['confusion'], classes, run_dir / 'plots' / 'confusion.png')
    times['total'] = round(time.time() - t_start, 1)
    final = {
        'test_accuracy': {k: v['accuracy'] for k, v in results.items()},
        'results': results,
        'wall_s': times,
        'test_docs': int(len(targs)),
        'vocab_size': len(store.vocab),
    }
    write_json(run_dir / 'metrics.json', final)
    write_report(run_dir, cfg, final, best)
    accs = ', '.join(f'{k} {v:.4f}' for k, v in final['test_accuracy'].items())
    log.info(f"test accuracy: {accs}; report: {run_dir / 'report.md'}")
    return run_dir


def stage_budget(cfg):
    "`budget_minutes` shared per direction by `budget_split`, each part among its stages in proportion to their epochs."
    if len(cfg['budget_split']) != 3 or min(cfg['budget_split']) < 0 or not sum(cfg['budget_split']):
        raise ConfigError(
            f"budget_split: {cfg['budget_split']} must be three shares >= 0 (LM, classifier, evaluation), "
            f"e.g. 0.4,0.5,0.1"
        )
    f_lm, f_clas, f_eval = cfg['budget_split']
    lm = {'lm_frozen': cfg['lm_frozen_epochs'], 'lm': cfg['lm_epochs']}
    clas = {f'clas_{i}': e for i, e in enumerate(cfg['clas_epochs'])}
    weights = {}
    for d in ('fwd', 'bwd') if cfg['bidirectional'] else ('fwd',):
        weights.update({f'{d}/{k}': f_lm * e / max(sum(lm.values()), 1) for k, e in lm.items()})
        weights.update({f'{d}/{k}': f_clas * e / max(sum(clas.values()), 1) for k, e in clas.items()})
        weights[f'{d}/eval'] = f_eval
    return StageBudget(60 * cfg['budget_minutes'], weights)


def one_direction(cfg, store, split, classes, run_dir, d, budget=None):
    "Fine-tune the LM, train the classifier, evaluate it once, in direction `d`; (probs, targets, report, wall times)."
    times = {}
    g = torch.Generator().manual_seed(cfg['seed'])  # draws the LM's and then the classifier's documents
    lm_state, config = finetune_stage(cfg, store, run_dir, d, g, budget, times)
    learn, test_dl, n_train, n_valid = classifier_stage(
        cfg, store, split, run_dir, d, g, lm_state, config, budget, times
    )
    t = time.time()
    p, targs = recipe.predict_probs(learn, test_dl)
    times['evaluate'] = round(time.time() - t, 1)
    res = recipe.classification_report(p, targs, classes)
    log.info(
        f'[{d}] test accuracy {res["accuracy"]:.4f} on {len(targs):,} reviews (trained on {n_train:,}, '
        f'validated on {n_valid:,} held-out training reviews)'
    )
    return p, targs, res, times


def _share(budget, d):
    "The stage-name -> seconds function of a direction's budget (None: the epochs as set)."
    return (lambda stage: budget.start(f'{d}/{stage}')) if budget is not None else None


def finetune_stage(cfg, store, run_dir, d, g, budget, times):
    "ULMFiT stage 2: vocab transfer, LM fine-tuning (or the run folder's fine-tuned LM); (LM state dict, config)."
    lm_dir, backwards = run_dir / f'lm_{d}', d == 'bwd'
    docs = None  # drawn first, so a resumed run draws the classifier's documents from the same state
    if cfg['lm_docs'] and cfg['lm_docs'] < len(store):
        docs = torch.randperm(len(store), generator=g)[: cfg['lm_docs']].sort().values.numpy()
    if (lm_dir / 'lm.pth').exists():
        log.info(f'[{d}] reusing the fine-tuned LM in {lm_dir}')
        lm_model, config, _ = load_model_folder(lm_dir)
        return lm_model.state_dict(), config
    t = time.time()
    key = 'pretrained_bwd' if backwards else 'pretrained'
    src = resolve_pretrained(cfg[key], cfg['runs'], backwards, cfg['preset'], fwd_spec=cfg['pretrained'])
    if src is None:
        opt = key.replace('_', '-')
        log.warning(
            '!' * 80 + f"\n[{d}] NO PRETRAINED LANGUAGE MODEL: fine-tuning starts from random weights, so accuracy "
            f"will be far below ULMFiT's.\n  Run `make lm-pretrain` first, or pass --{opt} DIR or --{opt} fastai-wt103"
            f"{'-bwd' if backwards else ''} (fastai's published WikiText-103 weights).\n" + '!' * 80
        )
        config, state = AWDLSTMConfig.preset(cfg['model'], vocab_sz=len(store.vocab)), None
    else:
        m, pconfig, itos, extras = load_model_folder(src, with_extras=True)
        check_spacy_lm(src, extras)
        state, n = recipe.match_embeds(m.state_dict(), itos, store.vocab.itos)
        log.info(f'[{d}] pretrained LM {src}: {n:,} of {len(store.vocab):,} tokens matched the pretrained vocab')
        config = replace(pconfig, vocab_sz=len(store.vocab))
    dls = recipe.lm_data(store, cfg['lm_bs'], cfg['lm_bptt'], cfg['lm_valid_pct'], cfg['seed'], backwards, docs)
    schedule = [cfg[k] for k in ('lm_frozen_epochs', 'lm_frozen_lr', 'lm_epochs', 'lm_lr')]
    kw = dict(precision=cfg['precision'], drop_mult=cfg['lm_drop_mult'], budget=_share(budget, d))
    learn = recipe.finetune_lm(state, config, dls, *schedule, cbs=[RunLogger(run_dir, f'lm_{d}')], **kw)
    save_model_folder(lm_dir, learn.model, config, store.vocab.itos, extras={'backwards': backwards})
    times['lm_finetune'] = round(time.time() - t, 1)
    return learn.model.state_dict(), config


def classifier_stage(cfg, store, split, run_dir, d, g, lm_state, config, budget, times):
    "ULMFiT stage 3: gradual unfreezing (or the run folder's classifier); (Learner, test loader, n train, n valid)."
    backwards, clas_dir = d == 'bwd', run_dir / f'clas_{d}'
    train_idx, valid_idx, test_idx = split
    if cfg['train_docs'] and cfg['train_docs'] < len(train_idx):
        train_idx = train_idx[torch.randperm(len(train_idx), generator=g)[: cfg['train_docs']].sort().values.numpy()]
    trunc = cfg.get('truncate')
    mk = lambda idx, train: recipe.clas_loader(store, idx, cfg['clas_bs'], train, trunc, backwards)  # noqa: E731
    dls = DataLoaders(mk(train_idx, True), mk(valid_idx, False) if len(valid_idx) else None)
    test_dl = mk(test_idx, False)
    t = time.time()
    kw = dict(bptt=cfg['bptt'], max_len=cfg['max_len'], precision=cfg['precision'])
    kw.update(label_smoothing=cfg['label_smoothing'], drop_mult=cfg['clas_drop_mult'])
    learn = recipe.clas_learner(config, len(store.label_names), dls, cbs=[RunLogger(run_dir, f'clas_{d}')], **kw)
    if (clas_dir / 'clas.pth').exists():  # only predicts: the loaded model replaces the new one
        log.info(f'[{d}] reusing the trained classifier in {clas_dir}')
        learn.model, *_ = load_classifier(clas_dir)
        return learn, test_dl, len(train_idx), len(valid_idx)
    stages = recipe.clas_stages(cfg['clas_lr'], cfg['clas_epochs'])
    sample = (valid_idx if len(valid_idx) else train_idx)[: 8 * cfg['clas_bs']]  # held out at random: a fair sample

    def after(i):  # after the first fit: set the test evaluation's time aside, at the forward speed on `sample`
        if not stages[i][1] or f'{d}/eval' in budget.reserved:
            return
        s_tok = recipe.forward_s_per_token(learn, mk(sample, False))
        budget.reserve(f'{d}/eval', s_tok * recipe.n_tokens(test_dl))
        log.info(
            f"[{d}] evaluation: {recipe.n_tokens(test_dl):,} tokens at {1 / s_tok:,.0f} tokens/s: "
            f"{budget.reserved[f'{d}/eval'] / 60:.1f} min set aside"
        )

    times['clas_stages'] = recipe.train_classifier(
        learn, lm_state, stages, budget=_share(budget, d), after_stage=after if budget is not None else None
    )
    settings = dict(multi_label=False, thresholds=None, bptt=cfg['bptt'], max_len=cfg['max_len'])
    settings.update(drop_mult=cfg['clas_drop_mult'], backwards=backwards, truncate=trunc or 0)
    settings.update(tokenizer=SpacyTokenizer().config())
    save_classifier(clas_dir, learn.model, config, store.vocab.itos, store.label_names, settings)
    times['clas_train'] = round(time.time() - t, 1)
    return learn, test_dl, len(train_idx), len(valid_idx)


def clas_split(cfg, store, test_split):
    "(train, valid, test) indices of the classifier: valid is `clas_valid_docs` training reviews held out, by label."
    train_idx, n_valid = store.labeled_idx('train'), cfg.get('clas_valid_docs', 0)
    if n_valid >= len(train_idx):
        raise ConfigError(
            f"clas_valid_docs: {n_valid} would leave none of the {len(train_idx):,} labelled training "
            f"documents to train on; hold out fewer"
        )
    train_idx, valid_idx = recipe.holdout(train_idx, store.labels[train_idx], n_valid, cfg['seed'])
    return train_idx, valid_idx, store.labeled_idx(test_split)


def write_report(run_dir, cfg, final, best):
    "A short Markdown report beside metrics.json; per-class figures of the `best` model."
    lines = [f"# IMDB sentiment: ULMFiT ({cfg['preset']} preset)", '', '| model | test accuracy |', '|---|---|']
    lines += [f'| {k} | {v:.4f} |' for k, v in final['test_accuracy'].items()]
    lines += ['', f'Per class ({best}):', '', '| class | precision | recall | f1 | support |', '|---|---|---|---|---|']
    for c, m in final['results'][best]['per_class'].items():
        lines.append(f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ['', 'Wall time of each stage (s): ' + ', '.join(f'{k} {v}' for k, v in final['wall_s'].items())]
    lines += ['', '![confusion matrix](plots/confusion.png)', '']
    (Path(run_dir) / 'report.md').write_text('\n'.join(lines))
