"Plots written as PNG files (matplotlib with the Agg backend: no display needed)."

from pathlib import Path

import numpy as np


def _subplots(*args, **kwargs):
    "`plt.subplots`; matplotlib loads only when a plot is drawn."
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig, path):
    import matplotlib.pyplot as plt  # loaded by `_subplots`

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def smooth(values, beta=0.98):
    "Debiased exponential moving average."
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def plot_losses(recorder, path):
    "Smoothed training loss per batch, and validation loss at each epoch end."
    fig, ax = _subplots(figsize=(7, 4))
    ax.plot(smooth(recorder.losses), label='train (smoothed)')
    n = len(recorder.losses)
    ep = [r for r in recorder.history if 'valid_loss' in r]
    if ep and n:
        per = n / len(recorder.history)
        ax.plot([per * (i + 1) for i in range(len(ep))], [r['valid_loss'] for r in ep], 'o-', label='valid')
    ax.set_xlabel('batch'), ax.set_ylabel('loss'), ax.legend()
    return _save(fig, path)


def plot_metrics(history, path, keys=None):
    "Each per-epoch metric against the epoch number."
    keys = keys or [k for k in (history[0] if history else {}) if k not in ('epoch', 'time_s')]
    fig, axs = _subplots(1, max(len(keys), 1), figsize=(4 * max(len(keys), 1), 3.5), squeeze=False)
    for ax, k in zip(axs[0], keys):
        ax.plot([r['epoch'] for r in history], [r.get(k, float('nan')) for r in history], 'o-')
        ax.set_title(k), ax.set_xlabel('epoch')
    return _save(fig, path)


def plot_sched(recorder, path):
    "Learning rate (each layer group) and momentum per batch."
    fig, (a, b) = _subplots(1, 2, figsize=(10, 3.5))
    if recorder.lrs:
        for g in range(len(recorder.lrs[0])):
            a.plot([lr[g] for lr in recorder.lrs], label=f'group {g}')
        b.plot([m[-1] for m in recorder.moms])
    a.set_title('learning rate'), a.set_yscale('log'), b.set_title('momentum')
    if recorder.lrs and len(recorder.lrs[0]) > 1:
        a.legend(fontsize=7)
    return _save(fig, path)


def plot_lr_find(lrs, losses, suggestions, path):
    "LR finder: loss against LR on a log scale, with the suggested LRs marked."
    fig, ax = _subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    for name, lr in suggestions.items():
        if lr and name in ('minimum', 'steep'):
            ax.axvline(lr, ls='--', color='r' if name == 'steep' else 'g', label=f'{name}: {lr:.2e}')
    ax.set_xscale('log'), ax.set_xlabel('learning rate'), ax.set_ylabel('loss (smoothed)'), ax.legend()
    return _save(fig, path)


def plot_confusion(cm, classes, path, normalize=False):
    "Confusion matrix (rows: actual, columns: predicted)."
    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = _subplots(figsize=(max(4, 0.5 * n + 2), max(4, 0.5 * n + 2)))
    ax.imshow(cm, cmap='Blues')
    ax.set_xticks(range(n)), ax.set_yticks(range(n))
    ax.set_xticklabels(classes, rotation=90, fontsize=7), ax.set_yticklabels(classes, fontsize=7)
    if n <= 20:
        for i, j in np.ndindex(n, n):
            label = f'{cm[i, j]:.2f}' if normalize else f'{int(cm[i, j])}'
            color = 'white' if cm[i, j] > cm.max() / 2 else 'black'
            ax.text(j, i, label, ha='center', va='center', fontsize=7, color=color)
    ax.set_xlabel('predicted'), ax.set_ylabel('actual')
    return _save(fig, path)
