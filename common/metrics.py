"""Metrics: plain functions `metric(pred, targ) -> scalar tensor`, and accumulators over a validation pass.

A plain function is averaged over batches, weighted by the number of targets in each batch. Metrics that
aren't batch averages (F1) or come from the loss (perplexity) are `Metric` objects.
"""

import math

import torch

from .distributed import all_gather_cat, all_reduce_sum


def accuracy(pred, targ):
    "Fraction of argmax predictions equal to the target (works on (bs, n) or (bs, sl, n) logits)."
    return (pred.argmax(dim=-1) == targ).float().mean()


def accuracy_multi(pred, targ, thresh=0.5, sigmoid=True):
    "Per-label accuracy for multi-label targets (logits thresholded after a sigmoid)."
    if sigmoid:
        pred = pred.sigmoid()
    return ((pred > thresh) == targ.bool()).float().mean()


class Metric:
    "Accumulates over a validation pass: `reset()`, `accumulate(learn)`, then `value`."

    name = 'metric'

    def reset(self): ...
    def accumulate(self, learn): ...

    def sync(self):
        "Combine this pass's accumulators over all DDP processes (each saw part of the data)."
        raise NotImplementedError(f"{type(self).__name__} can't combine its values across processes")

    @property
    def value(self): ...


class WeightedAvg(Metric):
    "Average over the pass of a per-batch value, a subclass's `batch_value(learn)`, weighted by the number of targets."

    def reset(self):
        self.total, self.count = 0.0, 0

    def accumulate(self, learn):
        n = _n_targets(learn.yb)
        self.total += float(self.batch_value(learn)) * n
        self.count += n

    def sync(self):
        self.total, self.count = all_reduce_sum([self.total, self.count])

    @property
    def value(self):
        return self.total / self.count if self.count else float('nan')


class AvgMetric(WeightedAvg):
    "Batch average of `fn(pred, targ)`, weighted by the number of targets."

    def __init__(self, fn):
        self.fn, self.name = fn, getattr(fn, '__name__', type(fn).__name__)

    def batch_value(self, learn):
        return self.fn(learn.pred, learn.yb)


class AvgLoss(WeightedAvg):
    "Average loss over the pass, weighted by the number of targets."

    name = 'loss'

    def batch_value(self, learn):
        return learn.loss


class Perplexity(AvgLoss):
    "exp(average cross-entropy) over the validation pass."

    name = 'perplexity'

    @property
    def value(self):
        v = super().value
        return math.exp(v) if v == v and v < 700 else float('inf')


class F1Score(Metric):
    "F1 over the whole pass: binary (for `pos_label`) or 'macro' averaged over classes."

    def __init__(self, average='binary', pos_label=1):
        if average not in ('binary', 'macro'):
            raise ValueError(f"F1Score average must be 'binary' or 'macro', got {average!r}")
        self.average, self.pos_label = average, pos_label
        self.name = 'f1' if average == 'binary' else 'f1_macro'

    def reset(self):
        self.preds, self.targs = [], []

    def accumulate(self, learn):
        self.preds.append(learn.pred.argmax(-1).flatten().cpu())
        self.targs.append(learn.yb.flatten().cpu())

    def sync(self):
        cat = lambda ts: torch.cat(ts) if ts else torch.empty(0, dtype=torch.long)  # noqa: E731
        self.preds, self.targs = [all_gather_cat(cat(self.preds))], [all_gather_cat(cat(self.targs))]

    @property
    def value(self):
        if not self.preds:
            return float('nan')
        return f1_score(torch.cat(self.preds), torch.cat(self.targs), self.average, self.pos_label)


def f1_score(pred, targ, average='binary', pos_label=1):
    "F1 of integer predictions against integer targets."

    def f1_for(c):
        tp = ((pred == c) & (targ == c)).sum().item()
        fp = ((pred == c) & (targ != c)).sum().item()
        fn = ((pred != c) & (targ == c)).sum().item()
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    if average == 'binary':
        return f1_for(pos_label)
    classes = torch.unique(torch.cat([pred, targ])).tolist()
    return sum(f1_for(c) for c in classes) / len(classes)


def confusion_matrix(preds, targets, n):
    "counts[i, j] = items of class i predicted as class j, from integer predictions and targets (n classes)."
    return torch.bincount(targets.long() * n + preds.long(), minlength=n * n).view(n, n)


def as_metric(m):
    "A `Metric` as is; a function wrapped in `AvgMetric`."
    return m if isinstance(m, Metric) else AvgMetric(m)


def _n_targets(yb):
    if isinstance(yb, torch.Tensor):
        return yb.shape[0] * (yb.shape[1] if yb.ndim == 2 and yb.dtype == torch.long else 1)
    return len(yb)
