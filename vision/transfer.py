"""`python -m vision transfer`: reuse an Imagewoof xresnet on Oxford-IIIT Pet (37 breeds), four ways.

    scratch           the same architecture, random init, everything trained
    naive             pretrained body + new head, everything trainable from the start
    frozen_bn         body frozen INCLUDING its BatchNorm layers, head trained; then all unfrozen, one LR
    frozen_except_bn  body frozen EXCEPT BatchNorm, head + BN trained; then all unfrozen with discriminative
                      LRs from `bn_splitter` (lower LRs for earlier layers)

Each gets the same number of epochs. Freezing BN as well is the trap: its running statistics and affine terms
still describe Imagewoof, and a frozen body's features never adapt to them.
Writes runs/<name>/report.md with the table of the four accuracies.
"""

import copy
import dataclasses
import random
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from common.config import ConfigError, Setting, config_to_json, parse_run_config
from common.download import get_mirror
from common.log import log
from common.optim import discriminative_lrs
from common.runs import write_json

from .data import image_dls, pets_items, subsample, write_synthetic_images
from .train import (
    COMMON_DRY_RUN,
    COMMON_SETTINGS,
    fmt_table,
    history_table,
    load_model,
    make_learner,
    save_model,
    start_run,
)
from .xresnet import bn_splitter, body, create_model, make_head, splitter, xresnet

EXPERIMENTS = {  # each variant, as its report row describes it
    'scratch': 'from scratch (random init), all trainable',
    'naive': 'pretrained, all trainable from the start',
    'frozen_bn': 'body frozen incl. BatchNorm, then unfrozen (one LR)',
    'frozen_except_bn': 'body frozen except BatchNorm, then unfrozen (discriminative LRs, BN-aware splitter)',
}

SETTINGS = {
    **COMMON_SETTINGS,
    'checkpoint': Setting(
        None, 'Imagewoof checkpoint (default: newest runs_dir/imagewoof-<preset>*/checkpoints/model.pth)'
    ),
    'data': Setting(
        None,
        'data set name in the download registry (default: oxford-iiit-pet-subset-160 when a '
        'mirror is set, as the mirror holds only that subset; else oxford-iiit-pet)',
    ),
    'valid_pct': Setting(0.2, 'fraction of the Pets images held out for validation (seeded random split)'),
    'split_seed': Setting(42, 'seed of the train/valid split'),
    'n_images': Setting(None, 'use only this many Pets images (a seeded random subset, before the split)'),
    'epochs_frozen': Setting(2, 'epochs with the body frozen (the two freezing experiments)'),
    'epochs_unfrozen': Setting(4, 'epochs after unfreezing; scratch and naive get both counts together'),
    'lr': Setting(1e-2, 'peak LR for the head (and for scratch/naive)'),
    'lr_unfrozen': Setting(2e-3, 'peak LR after unfreezing (top layer group)'),
    'lr_spread': Setting(10.0, 'discriminative LRs: the first layer group gets lr_unfrozen / lr_spread'),
    'experiments': Setting(list(EXPERIMENTS), 'comma-separated subset of: ' + ', '.join(EXPERIMENTS)),
    'dry_run': Setting(
        False,
        'all four experiments on synthetic images from a random tiny xresnet, in a temporary folder: a quick check',
    ),
}

PRESETS = {
    'tiny': dict(size=32, bs=32, n_images=400, epochs_frozen=1, epochs_unfrozen=1, workers=1, progress=False),
    'cpu': dict(size=64, bs=32, epochs_frozen=2, epochs_unfrozen=3, workers=1),
    'paper': dict(size=128, bs=64, epochs_frozen=3, epochs_unfrozen=5, workers=8, precision='bf16', channels_last=True),
}


def find_checkpoint(runs_dir, preset):
    "The newest runs_dir/imagewoof-<preset>*/checkpoints/model.pth."
    found = sorted(Path(runs_dir).glob(f'imagewoof-{preset}*/checkpoints/model.pth'), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no Imagewoof checkpoint under {runs_dir}/imagewoof-{preset}*; run "
            f"`python -m vision train --preset {preset}` first or pass --checkpoint"
        )
    return found[-1]


def body_width(b, c_in, size):
    "Channels of the body's output, found by running a small batch through it (BN statistics left untouched)."
    was_training = b.training
    b.eval()
    with torch.no_grad():
        nf = b(torch.zeros(2, c_in, size, size, device=next(b.parameters()).device)).shape[1]
    b.train(was_training)
    return nf


def transfer_model(pretrained, n_out, size):
    "Pretrained body (cut before the pooling layer) + new head: concat pool, flatten, linear to `n_out`."
    b = copy.deepcopy(body(pretrained))
    nf = body_width(b, pretrained.config.c_in, size)
    model = nn.Sequential(b, make_head(nf, n_out, concat_pool=True))
    model.config = dataclasses.replace(pretrained.config, n_out=n_out)
    return model


def run_experiment(kind, src, dls, n_out, cfg, run_dir):
    "Train one of the four variants from the pretrained `src`; returns (accuracy, minutes, recorder history)."
    if kind == 'scratch':  # same architecture, fresh weights everywhere
        src = xresnet(dataclasses.replace(src.config, n_out=n_out))
    model = transfer_model(src, n_out, cfg['size'])
    split = bn_splitter if kind == 'frozen_except_bn' else splitter
    train_bn = kind != 'frozen_bn'  # frozen_bn: BN is frozen with the rest of the body
    learn = make_learner(model, dls, cfg, run_dir, stage=kind, splitter=split, train_bn=train_bn)
    history, t0 = [], time.time()
    if kind in ('scratch', 'naive'):
        learn.fit_one_cycle(cfg['epochs_frozen'] + cfg['epochs_unfrozen'], cfg['lr'])
        history += learn.recorder.history
    else:
        learn.freeze()  # only the last group: the head (+ body BN, bn_splitter)
        learn.fit_one_cycle(cfg['epochs_frozen'], cfg['lr'])
        history += learn.recorder.history
        learn.unfreeze()
        n, lr = learn.n_groups, cfg['lr_unfrozen']
        # lr_spread is the ratio of the top group's LR to the first group's, spread evenly over the groups between
        lrs = [lr] * n if kind == 'frozen_bn' else discriminative_lrs(lr, n, cfg['lr_spread'] ** (1 / (n - 1)))
        learn.fit_one_cycle(cfg['epochs_unfrozen'], lrs)
        history += [dict(h, epoch=h['epoch'] + cfg['epochs_frozen']) for h in learn.recorder.history]
    return learn.validate()['accuracy'], (time.time() - t0) / 60, history


# --dry-run: a random quarter-width xresnet18 stands in for the Imagewoof checkpoint; one epoch frozen, one not.
DRY_RUN = dict(
    COMMON_DRY_RUN, n_images=None, epochs_frozen=1, epochs_unfrozen=1, data='synthetic', name='pets-transfer-dry-run'
)


def main(argv=None):
    "Entry point of `python -m vision transfer`; returns the exit status."
    cfg = parse_run_config(argv, SETTINGS, PRESETS, prog='python -m vision transfer', description=__doc__)
    unknown = [e for e in cfg['experiments'] if e not in EXPERIMENTS]
    if unknown:
        raise ConfigError(f"experiments: unknown {unknown}; choose from {', '.join(EXPERIMENTS)}")
    if cfg['dry_run']:
        with tempfile.TemporaryDirectory(prefix='vision-dry-run-') as tmp:
            ck = save_model(Path(tmp) / 'model.pth', create_model('xresnet18', n_out=3, width=0.25), {}, range(3))
            names = [f'breed{c}_{i}.png' for c in range(3) for i in range(12)]
            images = write_synthetic_images(Path(tmp) / 'pets', names)
            transfer({**cfg, **DRY_RUN, 'checkpoint': str(ck), 'data_path': str(images), 'runs_dir': tmp})
        log.info('dry run finished on synthetic images; its temporary folder is removed')
    else:
        transfer(cfg)
    return 0


def transfer(cfg):
    "The experiments, their table and report; returns (run folder, results)."
    ck_path = Path(cfg['checkpoint'] or find_checkpoint(cfg['runs_dir'], cfg['preset']))
    pretrained, ck = load_model(ck_path)  # before the run folder: a wrong checkpoint leaves nothing behind
    if cfg['data'] is None:
        cfg['data'] = 'oxford-iiit-pet-subset-160' if get_mirror(cfg['mirror']) else 'oxford-iiit-pet'
    run_dir, path = start_run(cfg, 'pets-transfer', resolved_checkpoint=str(ck_path))
    images = path / 'images' if (path / 'images').is_dir() else path
    log.info(f"run folder: {run_dir}\ncheckpoint: {ck_path}\ndata: {images}")

    (tp, tl), (vp, vl), classes = pets_items(images, cfg['valid_pct'], cfg['split_seed'])
    n_all = len(tp) + len(vp)
    if cfg['n_images']:
        frac = cfg['n_images'] / n_all
        (tp, tl), (vp, vl) = subsample((tp, tl), round(len(tp) * frac)), subsample((vp, vl), round(len(vp) * frac))
    split_note = (
        f"Seeded random split (numpy default_rng({cfg['split_seed']}) permutation) of the {n_all} images "
        f"in `{images}`: {round(n_all * cfg['valid_pct'])} ({cfg['valid_pct']:.0%}) held out for "
        f"validation, the rest for training; labels are the file names without the trailing `_<n>.jpg`; "
        f"{len(classes)} classes. Used here: {len(tp)} training / {len(vp)} validation images."
    )
    log.info(split_note)
    dls = image_dls((tp, tl), (vp, vl), cfg['size'], cfg['bs'], cfg['workers'], cfg['on_error'])

    results, histories = {}, {}
    for kind in cfg['experiments']:
        torch.manual_seed(cfg['seed'])  # same head init, data order and crops for every variant
        random.seed(cfg['seed'])
        acc, minutes, hist = run_experiment(kind, pretrained, dls, len(classes), cfg, run_dir)
        results[kind], histories[kind] = {'accuracy': acc, 'minutes': round(minutes, 2)}, hist
        log.info(f"{kind}: accuracy {acc:.4f} in {minutes:.1f} min")
        write_json(run_dir / 'metrics.json', {'results': results, 'split': split_note, 'checkpoint': str(ck_path)})

    epochs = cfg['epochs_frozen'] + cfg['epochs_unfrozen']
    frozen = f"{cfg['epochs_frozen']} frozen + {cfg['epochs_unfrozen']}"
    rows = [
        [k, EXPERIMENTS[k], epochs if k in ('scratch', 'naive') else frozen, f"{r['accuracy']:.4f}", r['minutes']]
        for k, r in results.items()
    ]
    report = [  # paragraphs, separated by blank lines
        f"# Transfer: Imagewoof xresnet -> Oxford-IIIT Pet ({len(classes)} breeds), {cfg['size']} px",
        f"Pretrained: `{ck_path}` ({ck['config'].get('arch', '?')}, width {ck['config'].get('width', '?')}; "
        f"Imagewoof trained at {ck['config'].get('size', '?')} px).",
        f"Split: {split_note}",
        fmt_table(['variant', 'what', 'epochs', 'accuracy', 'minutes'], rows),
        f"Head LR {cfg['lr']}; after unfreezing: top LR {cfg['lr_unfrozen']}, discriminative spread "
        f"{cfg['lr_spread']}x over the layer groups (frozen_except_bn only); {cfg['opt']} wd {cfg['wd']}, "
        f"label smoothing {cfg['label_smoothing']}, bs {cfg['bs']}, precision {cfg['precision']}.",
    ]
    for k, h in histories.items():
        report += [f'## {k}', history_table(h)]
    report.append(f'```json\n{config_to_json(cfg)}\n```')
    (run_dir / 'report.md').write_text('\n\n'.join(report) + '\n')
    log.info(f"report: {run_dir / 'report.md'}")
    return run_dir, results
