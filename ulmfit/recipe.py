"""The ULMFiT recipe (Howard & Ruder 2018) as plain functions, shared by `python -m ulmfit imdb` and the
`TextClassifier` API:

    pretrained LM ──match_embeds──▶ LM on the target vocab ──finetune_lm──▶ encoder
    encoder ──train_classifier (gradual unfreezing)──▶ classifier ──evaluate──▶ report
"""

import time
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.budget import fit_one_cycle_budget
from common.config import ConfigError
from common.learner import DataLoaders, Learner
from common.log import log, show_progress
from common.metrics import Perplexity, accuracy, accuracy_multi, confusion_matrix
from common.optim import discriminative_lrs

from .awd_lstm import ARTARCallback, RNNCallback, clas_config, get_language_model, lm_accuracy, lm_loss, lm_splitter
from .classifier import clas_splitter, get_text_classifier, load_encoder
from .loaders import LMLoader, SortishSampler, SortSampler, TextClassDataset, pad_collate

# The fastai ULMFiT IMDB example's gradual unfreezing: (freeze_to, the stage's top lr as a share of the first's).
UNFREEZING = ((-1, 1), (-2, 1 / 2), (-3, 1 / 4), (0, 1 / 20))


def clas_stages(lr=2e-2, epochs=(1, 1, 1, 2)):
    "The classifier's stage table [(freeze_to, epochs, top lr)]: `UNFREEZING` from a first-stage `lr`, `epochs` each."
    if len(epochs) != len(UNFREEZING):
        raise ConfigError(f'clas_epochs: {list(epochs)} must give {len(UNFREEZING)} stages (head, -2, -3, all)')
    return [(n, e, lr * f) for (n, f), e in zip(UNFREEZING, epochs)]


CLAS_STAGES = clas_stages()


def match_embeds(state, old_itos, new_itos):
    "Re-index a LM state dict to `new_itos`: shared tokens keep their rows, new ones get the mean; (state, n_matched)."
    old_stoi = {t: i for i, t in enumerate(old_itos)}
    pairs = [(i, old_stoi[t]) for i, t in enumerate(new_itos) if t in old_stoi]
    new_idx = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    old_idx = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    out = dict(state)
    for k, v in state.items():  # the embedding, the (tied) decoder weight and the decoder bias
        if v.shape[:1] == (len(old_itos),) and (k.endswith('emb.weight') or '.decoder.' in k or 'encoder.weight' in k):
            out[k] = v.mean(0, keepdim=True).expand(len(new_itos), *v.shape[1:]).clone()  # (new_vocab, ...)
            out[k][new_idx] = v[old_idx]
    return out, len(pairs)


def _awd_learner(model, dls, loss, splitter, metrics, alpha, beta, cbs, **kwargs):
    "A Learner (AdamW by default) with hidden-state resets, AR/TAR and a progress bar; `kwargs` go to Learner."
    cbs = [RNNCallback(), ARTARCallback(alpha, beta), *cbs]
    return Learner(model, dls, loss, splitter=splitter, metrics=metrics, progress=show_progress(), cbs=cbs, **kwargs)


def lm_learner(config, dls, lr=2e-3, wd=0.01, clip=0.1, precision='fp32', alpha=2.0, beta=1.0, cbs=(), path=None):
    "A Learner for an AWD-LSTM language model (AR/TAR, clipping, accuracy and perplexity)."
    model, metrics = get_language_model(config), [lm_accuracy, Perplexity()]
    kw = dict(lr=lr, wd=wd, precision=precision, clip=clip, path=path)
    return _awd_learner(model, dls, lm_loss, lm_splitter, metrics, alpha, beta, cbs, **kw)


def split_docs(docs, valid_pct, seed=42):
    "(train, valid) document indices: `valid_pct` of `docs` (at least one) held out at random; both sorted."
    docs = np.asarray(docs)
    perm = docs[torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).numpy()]
    n_val = max(1, int(round(len(docs) * valid_pct)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def lm_loaders(train, valid, bs=64, bptt=70, backwards=False, rank=0, world_size=1, var_bptt=True):
    "An LM's DataLoaders from (store, doc indices or None for all) pairs; training shuffles and varies its bptt."
    kw = dict(bs=bs, bptt=bptt, backwards=backwards, rank=rank, world_size=world_size)
    return DataLoaders(
        LMLoader(train[0].ids, train[0].offsets, train[1], shuffle=True, var_bptt=var_bptt, **kw),
        LMLoader(valid[0].ids, valid[0].offsets, valid[1], shuffle=False, **kw),
    )


def lm_data(store, bs=64, bptt=70, valid_pct=0.1, seed=42, backwards=False, docs=None):
    "LM loaders over a store's docs (all, or `docs`), holding out `valid_pct` of the documents at random."
    train_idx, valid_idx = split_docs(np.arange(len(store)) if docs is None else docs, valid_pct, seed)
    return lm_loaders((store, train_idx), (store, valid_idx), bs, bptt, backwards)


def fit_stage(learn, name, epochs, lr, moms, budget=None):
    "`fit_one_cycle` for `epochs`, or with a `budget` (stage name -> seconds) one cycle that fits the stage's time."
    if budget is None:
        learn.fit_one_cycle(epochs, lr, moms=moms)
    else:
        fit_one_cycle_budget(learn, budget(name), lr, moms=moms)


def _span(epochs, budget):
    return f'{epochs} epoch(s)' if budget is None else 'one cycle planned to fit its time'


def finetune_lm(
    lm_state,
    config,
    dls,
    frozen_epochs=1,
    frozen_lr=2e-2,
    epochs=10,
    lr=2e-3,
    moms=(0.8, 0.7, 0.8),
    precision='fp32',
    drop_mult=1.0,
    cbs=(),
    path=None,
    budget=None,
):
    "ULMFiT stage 2: the last layer group (it holds the new tokens' rows), then everything; returns the Learner."
    config = replace(config, drop_mult=drop_mult)
    learn = lm_learner(config, dls, lr=lr, precision=precision, cbs=cbs, path=path)
    if lm_state is not None:
        learn.model.load_state_dict(lm_state)
    if frozen_epochs:
        learn.freeze()
        log.info(f'LM fine-tuning: {_span(frozen_epochs, budget)} of the last layer group at lr {frozen_lr}')
        fit_stage(learn, 'lm_frozen', frozen_epochs, frozen_lr, moms, budget)
    if epochs:
        learn.unfreeze()
        log.info(f'LM fine-tuning: {_span(epochs, budget)} of all layers at lr {lr}')
        fit_stage(learn, 'lm', epochs, lr, moms, budget)
    return learn


class Reversed(TextClassDataset):
    "A TextClassDataset with each document's tokens in reverse order (for the backward model)."

    def __getitem__(self, i):
        ids, y = super().__getitem__(i)
        return np.ascontiguousarray(ids[::-1]), y


def clas_loader(store, idx, bs=64, train=False, max_len=None, backwards=False, num_workers=0):
    "A classification DataLoader of whole documents: SortishSampler for training, SortSampler otherwise; front padding."
    # `max_len` keeps each document's last tokens *in reading order*, a cheaper approximation of reading it whole: for
    # the backward model that is the review's beginning, the part fastai's backward model pools over.
    ds = (Reversed if backwards else TextClassDataset)(store, idx)
    lengths = np.minimum(ds.lengths, max_len) if max_len else ds.lengths
    sampler = SortishSampler(lengths, bs) if train else SortSampler(lengths)
    collate = partial(pad_collate, pad_idx=store.vocab.pad_idx, pad_first=True, max_len=max_len)
    # Training drops the last partial batch, as fastai v1 does (`TextClasDataBunch.create`): a one-row batch crashes
    # BatchNorm1d in training mode. A training set smaller than one batch keeps its only batch.
    kw = dict(sampler=sampler, num_workers=num_workers, drop_last=train and len(ds) >= bs, collate_fn=collate)
    return DataLoader(ds, batch_size=bs if train else 2 * bs, **kw)


def clas_learner(
    config,
    n_out,
    dls,
    multi_label=False,
    label_smoothing=0.0,
    drop_mult=0.5,
    bptt=72,
    max_len=72 * 20,
    precision='fp32',
    wd=0.01,
    clip=None,
    alpha=2.0,
    beta=1.0,
    cbs=(),
    path=None,
):
    "A Learner for a ULMFiT classifier (softmax, or sigmoid per label for multi-label targets), with AR/TAR."
    model = get_text_classifier(clas_config(config, drop_mult), n_out, bptt=bptt, max_len=max_len)
    if multi_label:
        loss, metrics = nn.BCEWithLogitsLoss(), [accuracy_multi]
    else:
        loss, metrics = nn.CrossEntropyLoss(label_smoothing=label_smoothing), [accuracy]
    kw = dict(wd=wd, precision=precision, clip=clip, path=path)
    return _awd_learner(model, dls, loss, clas_splitter, metrics, alpha, beta, cbs, **kw)


def train_classifier(
    learn, enc_state, stages=CLAS_STAGES, moms=(0.8, 0.7, 0.8), div=2.6, budget=None, after_stage=None
):
    "ULMFiT stage 3: gradual unfreezing over `stages` with LRs lr / div**k down the layer groups; the stage times."
    if enc_state is not None:
        load_encoder(learn.model, enc_state)
    times = []
    for j, (n, epochs, lr) in enumerate(stages):
        learn.freeze_to(n)
        lrs = discriminative_lrs(lr, learn.n_groups, div)
        t = time.time()
        if epochs or budget is None:
            log.info(f'classifier: freeze_to({n}), {_span(epochs, budget)}, lr {lrs[0]:.2e} .. {lrs[-1]:.2e}')
            fit_stage(learn, f'clas_{j}', epochs, lrs, moms, budget)
        if after_stage is not None:
            after_stage(j)
        times.append(round(time.time() - t, 1))
    return times


def forward_s_per_token(learn, dl):
    "Seconds per token of the model's forward pass (no gradient) over the classification loader `dl`, timed."
    t = time.perf_counter()
    learn.get_preds(dl)
    return (time.perf_counter() - t) / max(n_tokens(dl), 1)


def n_tokens(dl):
    "Tokens a classification loader from `clas_loader` reads (after its cut to max_len)."
    return int(np.sum(dl.sampler.lengths))


def classification_report(probs, targets, classes):
    "Accuracy, per-class precision/recall/F1 and the confusion matrix (rows: actual)."
    pred = probs.argmax(1)
    cm = confusion_matrix(pred, targets, len(classes))
    per = {}
    for i, c in enumerate(classes):
        tp, support = cm[i, i].item(), cm[i].sum().item()
        prec, rec = tp / max(cm[:, i].sum().item(), 1), tp / max(support, 1)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[str(c)] = {'precision': prec, 'recall': rec, 'f1': f1, 'support': support}
    return {'accuracy': (pred == targets).float().mean().item(), 'per_class': per, 'confusion': cm.tolist()}


def predict_probs(learn, dl, multi_label=False):
    "Probabilities and targets over `dl`, back in the dataset's order (the sampler sorts by length)."
    probs, targs = learn.get_preds(dl, act=(torch.sigmoid if multi_label else partial(torch.softmax, dim=-1)))
    return in_dataset_order(dl, probs, targs)


def in_dataset_order(dl, *ts):
    "Tensors of per-item results in `dl`'s sampler order, put back in the dataset's order."
    order = torch.as_tensor(list(iter(dl.sampler)))
    return tuple(t[order.argsort()] for t in ts)


def ids_loader(ids, bs=64, pad_idx=1):
    "A prediction DataLoader over token-id arrays: longest first (SortSampler), padding at the front, labels 0."
    collate = partial(pad_collate, pad_idx=pad_idx, pad_first=True)
    return DataLoader([(t, 0) for t in ids], bs, sampler=SortSampler([len(t) for t in ids]), collate_fn=collate)


@torch.no_grad()
def model_probs(model, dl, multi_label=False):
    "Probabilities of a classifier over `dl` without a Learner (on the model's device), in the dataset's order."
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for x, _ in dl:
        logits = model(x.to(dev))[0]  # (bs, n_out)
        out.append((torch.sigmoid(logits) if multi_label else torch.softmax(logits.float(), -1)).cpu())
    return in_dataset_order(dl, torch.cat(out))[0]


def holdout(idx, labels, n_valid, seed=42):
    "(train, valid) of the labelled docs `idx`: `n_valid` held out at random, each label in proportion; both sorted."
    idx, labels = np.asarray(idx), np.asarray(labels)
    if not 0 <= n_valid < len(idx):
        raise ValueError(f"can't hold out {n_valid} of {len(idx)} labelled documents and train on the rest")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(idx), generator=g).numpy()
    order = order[np.argsort(labels[order], kind='stable')]  # grouped by label, random within each label
    # Evenly spaced picks along the label-grouped order: every label gets its share, to within one document.
    picked = np.zeros(len(idx), bool)
    picked[(np.arange(n_valid) * len(idx)) // max(n_valid, 1)] = True
    return np.sort(idx[order[~picked]]), np.sort(idx[order[picked]])
