"""`python -m vision train`: an xresnet on Imagewoof (10 dog breeds) with one-cycle, label smoothing and optional
MixUp/CutMix. Writes runs/<name>/ (never over an existing run): config.json, metrics.jsonl, report.md,
metrics.json, plots/ (losses, schedule, accuracy, confusion matrix), checkpoints/model.pth.
"""

import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from common.config import Setting, config_to_json, parse_run_config
from common.download import untar_data
from common.learner import Learner
from common.log import log, show_progress
from common.metrics import accuracy, confusion_matrix
from common.optim import OPTIMIZERS
from common.plots import plot_confusion
from common.runs import RunLogger, new_run_dir, write_config, write_json

from .data import BatchTransform, imagenet_folder_dls, write_synthetic_images
from .tricks import CutMix, LabelSmoothingCrossEntropy, MixUp
from .xresnet import create_model, list_models, model_from_dict

# Settings shared by both entry points (data location, speed knobs, run folder).
COMMON_SETTINGS = {
    'name': Setting(None, "run folder name under runs_dir (default: <entry point>-<preset>; '-2', '-3'... if taken)"),
    'runs_dir': Setting('runs', 'where run folders go'),
    'data_path': Setting(None, 'a local copy of the data set folder (skips download / mirror)'),
    'mirror': Setting(None, 'folder holding the data set archives (default: $ULMFIT_MIRROR)'),
    'size': Setting(128, 'image side in pixels (training crops and validation centre crops)'),
    'bs': Setting(64, 'batch size'),
    'label_smoothing': Setting(0.1, 'label smoothing eps (0 = plain cross-entropy)'),
    'wd': Setting(1e-2, 'weight decay (decoupled for AdamW)'),
    'opt': Setting('adamw', 'optimizer', tuple(OPTIMIZERS)),
    'precision': Setting('fp32', 'autocast precision', ('fp32', 'bf16', 'fp16')),
    'channels_last': Setting(False, 'NHWC memory format for model and batches (faster with bf16/fp16 on GPUs)'),
    'workers': Setting(2, 'DataLoader worker processes (decode + crop)'),
    'threads': Setting(0, 'torch CPU threads (0 = torch default)'),
    'on_error': Setting(
        'raise', "an unreadable image: 'raise' (stop, naming the file) or 'skip' (warn, go on)", ('raise', 'skip')
    ),
    'seed': Setting(42, 'random seed'),
    'progress': Setting(True, 'progress bars'),
}

SETTINGS = {
    **COMMON_SETTINGS,
    'data': Setting('imagewoof2-160', 'data set name in the download registry'),
    'arch': Setting('xresnet50', 'model', tuple(list_models())),
    'width': Setting(1.0, 'width multiplier of the xresnet (1.0 = the paper)'),
    'epochs': Setting(5, 'epochs of one-cycle training'),
    'lr': Setting(8e-3, 'peak learning rate of the one-cycle schedule'),
    'pct_start': Setting(0.25, 'fraction of the cycle spent warming up'),
    'mixup': Setting(0.0, 'MixUp alpha (0 = off); 0.2-0.4 helps runs of 20+ epochs'),
    'cutmix': Setting(0.0, 'CutMix alpha (0 = off)'),
    'n_train': Setting(None, 'use only this many training images (a seeded random subset)'),
    'n_valid': Setting(None, 'use only this many validation images'),
    'dry_run': Setting(False, 'train on synthetic images with the tiny model in a temporary folder: a quick check'),
}

PRESETS = {
    # Smoke test: ~1 minute on 2 CPU cores. Says nothing about accuracy; checks that every piece runs.
    'tiny': dict(
        arch='xresnet18',
        width=0.25,
        size=32,
        bs=32,
        epochs=1,
        lr=1e-2,
        n_train=320,
        n_valid=160,
        workers=1,
        progress=False,
    ),
    # A useful result on a 2-core CPU in under an hour: 64 px, half-width xresnet18 (~59% in 17 min, 2 cores).
    'cpu': dict(arch='xresnet18', width=0.5, size=64, bs=64, epochs=10, lr=1e-2, workers=1),
    # The Imagewoof leaderboard's 128 px / 5 epoch setting, on one GPU.
    'paper': dict(
        arch='xresnet50', size=128, bs=64, epochs=5, lr=8e-3, workers=8, precision='bf16', channels_last=True
    ),
}


# ---- helpers shared with `transfer` -------------------------------------------------------------------------
def start_run(cfg, prefix, **resolved):
    "Seed and threads, a new run folder and the data set folder; writes the config with the resolved paths."
    torch.manual_seed(cfg['seed'])  # the process-wide settings are `common.entry.setup_process`
    random.seed(cfg['seed'])  # the crops' draws when images load in this process (workers=0)
    if cfg['threads']:
        torch.set_num_threads(cfg['threads'])
    run_dir = new_run_dir(cfg['name'] or f"{prefix}-{cfg['preset']}", cfg['runs_dir'])
    # `data_path` if given, else the download registry (mirror first if set)
    path = Path(cfg['data_path'] or untar_data(cfg['data'], mirror=cfg['mirror']))
    cfg.update(resolved_data_path=str(path), **resolved)
    write_config(run_dir, cfg)
    return run_dir, path


def make_learner(model, dls, cfg, run_dir, stage='train', **kw):
    "A Learner with the run's loss, optimizer, precision, batch transforms and run logging."
    cbs = [BatchTransform(channels_last=cfg['channels_last']), RunLogger(run_dir, stage)]
    cbs += [cb(cfg[k]) for k, cb in (('mixup', MixUp), ('cutmix', CutMix)) if cfg.get(k)]  # train's settings only
    if cfg['channels_last']:
        model = model.to(memory_format=torch.channels_last)
    return Learner(
        model,
        dls,
        LabelSmoothingCrossEntropy(cfg['label_smoothing']),  # plain cross-entropy when eps = 0
        opt_fn=OPTIMIZERS[cfg['opt']],
        wd=cfg['wd'],
        cbs=cbs,
        metrics=[accuracy],
        precision=cfg['precision'],
        progress=cfg['progress'] and show_progress(),
        **kw,
    )


def save_model(path, model, cfg, classes):
    "Checkpoint = state dict + run config + model config + class list (plain data, safe to load)."
    extras = {'model_config': asdict(model.config), 'classes': list(classes)}
    return save_checkpoint(path, model.state_dict(), config=cfg, extras=extras)


def load_model(path):
    "Rebuild an xresnet from a checkpoint written by `save_model`; returns (model, checkpoint dict)."
    ck = load_checkpoint(path)
    if 'model_config' not in ck['extras']:
        raise ValueError(f"{path} has no model_config: not a vision checkpoint")
    model = model_from_dict(ck['extras']['model_config'])
    load_model_state(model, ck['model'], path)
    return model, ck


def fmt_table(header, rows):
    "A markdown table."
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows])


def history_table(history):
    "Per-epoch markdown table from the recorder's history."
    cols = ('train_loss', 'valid_loss', 'accuracy')  # nan where a row has none
    rows = [[h['epoch'], *(f"{h.get(c, float('nan')):.4f}" for c in cols), h['time_s']] for h in history]
    return fmt_table(['epoch', 'train loss', 'valid loss', 'accuracy', 'time (s)'], rows)


# ---- the entry point ----------------------------------------------------------------------------------------
# --dry-run of both entry points: 32 px, a few batches of 8 per epoch, read in the main process.
COMMON_DRY_RUN = dict(size=32, bs=8, workers=0, progress=False, precision='fp32', channels_last=False)
# Here: three classes of coloured squares, a quarter-width xresnet18, one epoch.
DRY_RUN = dict(
    COMMON_DRY_RUN, arch='xresnet18', width=0.25, epochs=1, n_train=None, n_valid=None, name='imagewoof-dry-run'
)


def main(argv=None):
    "Entry point of `python -m vision train`; returns the exit status."
    cfg = parse_run_config(argv, SETTINGS, PRESETS, prog='python -m vision train', description=__doc__)
    if cfg['dry_run']:
        with tempfile.TemporaryDirectory(prefix='vision-dry-run-') as tmp:
            splits = (('train', 8), ('val', 4))  # images per class; an ImageNet-style folder: <split>/<class>/
            names = [f'{split}/c{c}/c{c}_{i}.png' for split, n in splits for c in range(3) for i in range(n)]
            images = write_synthetic_images(Path(tmp) / 'images', names)
            train({**cfg, **DRY_RUN, 'data_path': str(images), 'runs_dir': tmp})
        log.info('dry run finished on synthetic images; its temporary folder is removed')
    else:
        train(cfg)
    return 0


def train(cfg):
    "Train, evaluate and report; returns (run folder, metrics)."
    run_dir, path = start_run(cfg, 'imagewoof')
    log.info(f"run folder: {run_dir}\ndata: {path}")

    dls, classes = imagenet_folder_dls(
        path, cfg['size'], cfg['bs'], cfg['workers'], cfg['on_error'], cfg['n_train'], cfg['n_valid'], seed=cfg['seed']
    )
    log.info(f"{len(dls.train.dataset)} training / {len(dls.valid.dataset)} validation images, {len(classes)} classes")
    model = create_model(cfg['arch'], n_out=len(classes), width=cfg['width'])
    learn = make_learner(model, dls, cfg, run_dir)

    t0 = time.time()
    learn.fit_one_cycle(cfg['epochs'], cfg['lr'], pct_start=cfg['pct_start'])
    train_s = time.time() - t0
    ck = save_model(run_dir / 'checkpoints' / 'model.pth', learn.model, cfg, classes)

    preds, targs = learn.get_preds()
    cm = confusion_matrix(preds.argmax(-1), targs, len(classes))  # rows: actual class
    acc = float(cm.diag().sum() / cm.sum())
    plot_confusion(cm.numpy(), classes, run_dir / 'plots' / 'confusion.png')
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()
    metrics = {
        'accuracy': acc,
        'train_minutes': round(train_s / 60, 2),
        'epochs': cfg['epochs'],
        'n_train': len(dls.train.dataset),
        'n_valid': len(dls.valid.dataset),
        'per_class_accuracy': dict(zip(classes, per_class)),
        'checkpoint': str(ck),
    }
    write_json(run_dir / 'metrics.json', metrics)
    report = [  # paragraphs, separated by blank lines
        f"# Imagewoof: {cfg['arch']} (width {cfg['width']}), {cfg['size']} px, {cfg['epochs']} epochs",
        f"**Validation accuracy: {acc:.4f}** on {len(dls.valid.dataset)} images "
        f"({len(dls.train.dataset)} training images); training took {train_s / 60:.1f} min.",
        f"Preset `{cfg['preset']}`; one-cycle lr {cfg['lr']}, {cfg['opt']} wd {cfg['wd']}, label smoothing "
        f"{cfg['label_smoothing']}, mixup {cfg['mixup']}, cutmix {cfg['cutmix']}, precision {cfg['precision']}, "
        f"bs {cfg['bs']}, torch threads {torch.get_num_threads()}.",
        history_table(learn.recorder.history),
        fmt_table(['class', 'accuracy'], [[c, f'{a:.3f}'] for c, a in zip(classes, per_class)]),
        'Plots: `plots/train_loss.png`, `plots/train_sched.png`, `plots/train_metrics.png`, `plots/confusion.png`.\n'
        f'Checkpoint: `{ck}`.',
        f'```json\n{config_to_json(cfg)}\n```',
    ]
    (run_dir / 'report.md').write_text('\n\n'.join(report) + '\n')
    log.info(f"validation accuracy {acc:.4f} after {train_s / 60:.1f} min; report: {run_dir / 'report.md'}")
    return run_dir, metrics
