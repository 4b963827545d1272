"""Pretrain an AWD-LSTM language model: `python -m ulmfit pretrain [--preset tiny|cpu|paper] [--key value ...]`.

corpus (WikiText-103 by default, or any corpus the readers accept) → token store → LMLoader → one-cycle
training with AR/TAR and clipping → a model folder (full LM, encoder, vocab, config) inside the run folder.
Runs under `torchrun --nproc_per_node=N -m ulmfit pretrain ...` with DDP (each rank reads its own rows).
"""

import itertools
import json
import math
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from common.budget import fit_one_cycle_budget
from common.cli import Interrupted
from common.config import Setting, named_settings, parse_run_config, resume_config
from common.distributed import cleanup_distributed, setup_distributed
from common.download import get_mirror, untar_data
from common.events import Callback, CancelFitException
from common.log import log
from common.runs import RunLogger, new_run_dir, write_config, write_json
from common.stopping import CheckpointCallback, TimeBudget

from .awd_lstm import AWDLSTMConfig
from .datasets import ERRORS_HELP, WikiTextReader, dataset_reader, reader_for, wikitext_file
from .dry_run import dry_run_folder, write_corpus
from .model_io import save_model_folder
from .recipe import lm_learner, lm_loaders, split_docs
from .sampled_softmax import SampledSoftmax, valid_step_ratio
from .store import build_store, make_tokenizer

SETTINGS = {
    'corpus': Setting(
        '',
        'training corpus: file(s) or folder, comma-separated (.txt/.gz, WikiText .tokens/.raw), an '
        "IMDB folder or .tgz, or 'imdb' (all 100k review texts, labels unused); "
        'empty = WikiText-103 train (downloaded, or from ULMFIT_MIRROR)',
    ),
    'valid': Setting(
        '',
        'validation corpus; empty = WikiText-103 valid (beside the corpus or in ULMFIT_MIRROR), '
        'else 1% of the corpus documents',
    ),
    'max_docs': Setting(0, 'use only the first N documents of the corpus (0 = all)'),
    'max_valid_docs': Setting(0, 'use only the first N validation documents (0 = all)'),
    'model': Setting('paper', 'AWD-LSTM size preset (ulmfit.awd_lstm.PRESETS)', ('tiny', 'cpu', 'paper')),
    'emb_sz': Setting(0, "embedding size (0 = the model preset's)"),
    'n_hid': Setting(0, "hidden size of the inner LSTMs (0 = the model preset's)"),
    'n_layers': Setting(0, "number of LSTMs (0 = the model preset's)"),
    'drop_mult': Setting(1.0, 'multiplier on every dropout'),
    'max_vocab': Setting(60000, 'largest vocab size'),
    'min_freq': Setting(3, 'minimum count for a token to enter the vocab'),
    'tokenizer': Setting('spacy', 'spacy (fastai rules) or spm (SentencePiece)', ('spacy', 'spm')),
    'errors': Setting('strict', ERRORS_HELP, ('strict', 'replace')),
    'n_workers': Setting(0, 'tokenizer processes (0 = one per core)'),
    'bs': Setting(64, 'global batch size (rows of the LM stream)'),
    'bptt': Setting(70, 'tokens per sequence (back-propagation through time)'),
    'var_bptt': Setting(True, 'vary the sequence length as AWD-LSTM does'),
    'epochs': Setting(1, 'epochs of one-cycle training'),
    'epoch_tokens': Setting(0, 'train on only the first N tokens of each (shuffled) epoch (0 = all of it)'),
    'sampled_softmax': Setting(
        0, 'train with a sampled softmax of this many draws per batch (0 = full softmax); validation is always exact'
    ),
    'sample_alpha': Setting(0.75, 'sampled softmax proposal: training unigram counts to this power'),
    'snapshot_mtokens': Setting(
        [0.0],
        'millions of training tokens after which to save a model folder (snapshots/<N>M) and its exact validation '
        'figures, e.g. 2.5,5,10 (0 = none)',
    ),
    'lr': Setting(5e-3, 'peak learning rate'),
    'wd': Setting(0.01, 'decoupled weight decay'),
    'moms': Setting([0.8, 0.7, 0.8], 'one-cycle momentums (beta1) start,middle,end'),
    'pct_start': Setting(0.25, 'fraction of training spent warming up'),
    'div': Setting(25.0, 'one-cycle starting LR divisor: training starts at lr/div'),
    'clip': Setting(0.1, 'gradient clipping (total norm)'),
    'alpha': Setting(2.0, 'AR (activation regularization) weight'),
    'beta': Setting(1.0, 'TAR (temporal activation regularization) weight'),
    'precision': Setting('fp32', 'fp32, bf16 (CPU or GPU) or fp16 (GPU, with loss scaling)', ('fp32', 'bf16', 'fp16')),
    'backwards': Setting(False, 'train on the reversed token stream (for a bidirectional ensemble)'),
    'budget_minutes': Setting(
        0.0,
        'plan training to fit this many minutes of the whole run, data included: the '
        'step time measured over the first steps fixes the number of steps, and one '
        'complete one-cycle runs over them (replaces `epochs`; 0 = train `epochs` epochs)',
    ),
    'max_minutes': Setting(
        0.0,
        'hard stop: end cleanly with a checkpoint after this many minutes of training, even '
        'mid-schedule (0 = no limit)',
    ),
    'checkpoint_minutes': Setting(20.0, 'also checkpoint every N minutes inside an epoch'),
    'seed': Setting(42, 'random seed'),
    'name': Setting('', 'run folder name under runs/ (default: lm-<preset>[-bwd])'),
    'runs': Setting('runs', 'where run folders go'),
    'resume': Setting(
        '',
        'a run folder to continue from its last checkpoint (its settings are kept; only '
        'max_minutes, checkpoint_minutes and n_workers may change)',
    ),
    'dry_run': Setting(
        False,
        'build everything, train 2 batches, write the folder: a quick check; without --corpus '
        'on a synthetic corpus with the tiny model, in a temporary folder',
    ),
}

PRESETS = {
    'tiny': dict(
        model='tiny',
        max_docs=30,
        max_valid_docs=4,
        max_vocab=4000,
        min_freq=2,
        bs=16,
        bptt=35,
        epochs=1,
        lr=1e-2,
        checkpoint_minutes=0.0,
    ),
    # Sized for a few hours on a 2-core CPU: the half-width model, and a 30k vocab because the full-softmax decoder
    # costs more than the three LSTMs at 60k (206 of ~330 GFLOP per batch of 32x70 tokens). budget_minutes=30: with
    # `imdb`'s 120 minutes, the two README commands fit in 150 minutes (max_minutes stays a safety stop).
    'cpu': dict(
        model='cpu', bs=32, bptt=70, epochs=1, lr=3e-3, max_vocab=30000, max_minutes=180.0, budget_minutes=30.0
    ),
    # The recipe that made fastai's published WikiText-103 weights: fastai v1 examples/train_wt103.py, `main`'s
    # defaults and its calls `language_model_learner(data, AWD_LSTM, drop_mult=drop_mult, pretrained=False)`,
    # `learn.to_fp16(clip=0.1)`, `learn.fit_one_cycle(epochs, lr, moms=(0.8,0.7), div_factor=10, wd=wd)`.
    'paper': dict(
        model='paper',  # AWD_LSTM at fastai's `awd_lstm_lm_config` sizes (see ulmfit.awd_lstm.AWDLSTMConfig)
        bs=256,  # main(bs=256)
        bptt=80,  # main(bptt=80)
        var_bptt=False,  # v1 text/data.py `LanguageModelPreLoader` reads fixed bptt windows
        epochs=12,  # main(epochs=12)
        lr=1e-2,  # main(lr=1e-2)
        drop_mult=0.1,  # main(drop_mult=0.1): WT103 is large, so 1/10 of the AWD-LSTM dropouts
        wd=0.1,  # main(wd=0.1), passed to fit_one_cycle
        div=10.0,  # fit_one_cycle(div_factor=10); v1 final_div = div*1e4 = 1e5, our one_cycle's default
        moms=[0.8, 0.7, 0.8],  # fit_one_cycle(moms=(0.8,0.7)): down, then back up
        pct_start=0.3,  # v1 train.py `fit_one_cycle` default pct_start=0.3
        clip=0.1,  # to_fp16(clip=0.1)
        precision='fp16',  # to_fp16(...)
        alpha=2.0,
        beta=1.0,  # v1 text/learner.py `RNNLearner` defaults (AR/TAR)
        max_vocab=60000,
        min_freq=3,  # v1 text/data.py `NumericalizeProcessor` defaults (create_data passes none)
    ),
}


# What `--resume` may change: the time budget, checkpoint interval and tokenizer processes. A different value of
# anything else would make the rest of the run disagree with its first part.
RESUME_OVERRIDES = ('max_minutes', 'checkpoint_minutes', 'n_workers')


class FirstDocs:
    "The first `n` documents of a reader (all when n == 0), with a fingerprint that says so."

    def __init__(self, reader, n):
        self.reader, self.n = reader, n

    def __iter__(self):
        return itertools.islice(self.reader, self.n or None)

    def fingerprint(self):
        return {**self.reader.fingerprint(), 'first_docs': self.n}


def resolve_corpora(cfg):
    "(train reader, valid reader or None, a line describing them)."
    if cfg['corpus'] == 'imdb':  # the same reader as `imdb` uses, so both share one token store
        train = dataset_reader('imdb', errors=cfg['errors'])
        src = str(train.path)
    elif cfg['corpus']:
        train, src = reader_for(cfg['corpus'], label_col=None, errors=cfg['errors']), cfg['corpus']
    else:
        path = wikitext_file(untar_data('wikitext-103'), 'train')
        train, src = reader_for([path], errors=cfg['errors']), str(path)
    valid = None
    if cfg['valid']:
        valid = reader_for(cfg['valid'], split='valid', label_col=None, errors=cfg['errors'])
    elif isinstance(train, WikiTextReader):  # WikiText's own valid split; other corpora hold out 1% of their docs
        candidates = [Path(cfg['corpus'].split(',')[0]).parent] if cfg['corpus'] else [Path(src).parent]
        if get_mirror():
            candidates.append(get_mirror() / 'wikitext-103')
        found = [p for p in (wikitext_file(c, 'valid', must=False) for c in candidates) if p]
        if found:
            valid = WikiTextReader(found[:1], errors=cfg['errors'])
    # Unwrapped when all docs are read, so the store key is the reader's own: `prepare` and `imdb` build the same.
    first = lambda r, n: FirstDocs(r, n) if n else r  # noqa: E731
    return first(train, cfg['max_docs']), (first(valid, cfg['max_valid_docs']) if valid else None), src


def build_lm_data(cfg, r=0, ws=1):
    "Token stores and LM loaders for training and validation; (dls, vocab, info, training token counts)."
    train_r, valid_r, src = resolve_corpora(cfg)
    n_workers = cfg['n_workers'] or None
    tok = make_tokenizer(cfg['tokenizer'], train_r, spm_vocab_size=min(cfg['max_vocab'], 15000))
    store = build_store(
        train_r, tok, max_vocab=cfg['max_vocab'], min_freq=cfg['min_freq'], n_workers=n_workers, name='lm-train'
    )
    if valid_r is not None:
        t_idx, valid = None, (build_store(valid_r, tok, vocab=store.vocab, n_workers=n_workers, name='lm-valid'), None)
    else:  # hold out 1% of the documents (at least one)
        t_idx, v_idx = split_docs(np.arange(len(store)), 0.01, cfg['seed'])
        valid = (store, v_idx)
    lm = dict(bs=cfg['bs'], bptt=cfg['bptt'], backwards=cfg['backwards'], rank=r, world_size=ws)
    dls = lm_loaders((store, t_idx), valid, var_bptt=cfg['var_bptt'], **lm)
    if cfg['epoch_tokens']:
        dls.train = FirstBatches(dls.train, math.ceil(cfg['epoch_tokens'] / (cfg['bs'] * cfg['bptt'])))
    info = {
        'corpus': src,
        'train_docs': len(store) if t_idx is None else len(t_idx),
        'train_tokens': dls.train.n_tokens,
        'valid_tokens': dls.valid.n_tokens,
        'vocab_size': len(store.vocab),
        'store': str(store.path),
        'tokenizer': tok.config(),
        'spm_model': getattr(tok, 'model_path', None),
    }
    counts = np.bincount(
        store.ids[:] if t_idx is None else np.concatenate([store[i] for i in t_idx]), minlength=len(store.vocab)
    )  # the sampled softmax's proposal
    return dls, store.vocab, info, counts


# --dry-run without a corpus: a synthetic one, small enough for seconds (one process; DDP dry runs pass --corpus).
DRY_RUN = dict(
    model='tiny',
    max_docs=0,
    max_valid_docs=0,
    max_vocab=1000,
    min_freq=1,
    tokenizer='spacy',
    n_workers=1,
    bs=8,
    bptt=16,
    epochs=1,
    max_minutes=0.0,
    checkpoint_minutes=0.0,
    name='lm-dry-run',
)


def main(argv=None):
    "Entry point of `python -m ulmfit pretrain`; returns the exit status."
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_run_config(argv, SETTINGS, PRESETS, prog='python -m ulmfit pretrain', description=__doc__)
    if cfg['dry_run'] and not cfg['corpus'] and not cfg['resume']:
        with dry_run_folder() as tmp:
            corpus, valid = write_corpus(tmp / 'train.txt', 40), write_corpus(tmp / 'valid.txt', 8, seed=1)
            pretrain({**cfg, **DRY_RUN, 'corpus': str(corpus), 'valid': str(valid), 'runs': str(tmp / 'runs')})
        return 0
    r, ws = setup_distributed()
    try:
        pretrain(cfg, r, ws, given=named_settings(argv))
    finally:
        cleanup_distributed()
    return 0


def pretrain(cfg, r=0, ws=1, given=()):
    "Run the whole pretraining; returns the run folder. `given`: the settings named on the command line."
    t0 = time.time()
    resume = None
    if cfg['resume']:
        run_dir = Path(cfg['resume'])
        resume = run_dir / 'checkpoints' / 'last.pth'
        if not resume.exists():
            raise FileNotFoundError(f"nothing to resume: {resume} does not exist")
        cfg = resume_config(run_dir, cfg, given, SETTINGS, RESUME_OVERRIDES)
    torch.manual_seed(cfg['seed'])
    if ws > 1 and r != 0:
        torch.distributed.barrier()  # rank 0 builds the token stores first; the others then open them
    dls, vocab, info, counts = build_lm_data(cfg, r, ws)
    if ws > 1 and r == 0:
        torch.distributed.barrier()
    torch.manual_seed(cfg['seed'])
    if resume is None:
        name = cfg['name'] or f"lm-{cfg['preset']}{'-bwd' if cfg['backwards'] else ''}"
        run_dir = new_run_dir(name, cfg['runs']) if r == 0 else None
        if ws > 1:
            box = [str(run_dir)]
            torch.distributed.broadcast_object_list(box, src=0)
            run_dir = Path(box[0])
        write_config(run_dir, {**cfg, 'data': info, 'world_size': ws})
    sizes = {k: cfg[k] for k in ('emb_sz', 'n_hid', 'n_layers') if cfg[k]}
    config = AWDLSTMConfig.preset(cfg['model'], vocab_sz=len(vocab), drop_mult=cfg['drop_mult'], **sizes)
    log.info(  # rank 0 only, as every log.info
        f"corpus: {info['corpus']}: {info['train_docs']:,} docs, {info['train_tokens']:,} tokens; "
        f"valid {info['valid_tokens']:,} tokens; vocab {info['vocab_size']:,}; model {cfg['model']}; "
        f"{ws} process(es); run folder {run_dir}"
    )
    ckpt = dict(
        every_minutes=cfg['checkpoint_minutes'] or None, config=config.to_dict(), extras={'itos': list(vocab.itos)}
    )
    cbs = [CheckpointCallback(run_dir / 'checkpoints' / 'last.pth', **ckpt), RunLogger(run_dir, 'pretrain')]
    if cfg['max_minutes']:
        cbs.append(TimeBudget(cfg['max_minutes']))
    if cfg['dry_run']:
        cbs.append(_StopAfter(2))
    valid_ratio = 1 / 3  # the time budget's cost of a validation batch, in training steps
    if cfg['sampled_softmax']:
        ss = SampledSoftmax(counts, cfg['sampled_softmax'], cfg['sample_alpha'])
        cbs.append(ss)  # validation stays exact: its full softmax costs more than a sampled training step's
        valid_ratio = valid_step_ratio(config, ss.sampler.expected_distinct(ss.k))
    extras = {'backwards': cfg['backwards'], 'tokenizer': info['tokenizer']}
    save = partial(save_model_folder, config=config, itos=vocab.itos, extras=extras, spm_model=info['spm_model'])
    milestones = [m for m in cfg['snapshot_mtokens'] if m > 0]
    if milestones and r == 0:
        # The first ~100k validation tokens: perplexity within about 1% of the whole set's, at a fraction of the cost.
        vdl = FirstBatches(dls.valid, math.ceil(100_000 / (cfg['bs'] * cfg['bptt'])))
        cbs.append(TokenSnapshots(milestones, run_dir / 'snapshots', save, vdl, ws))
    hypers = {k: cfg[k] for k in ('lr', 'wd', 'clip', 'precision', 'alpha', 'beta')}
    learn = lm_learner(config, dls, cbs=cbs, path=run_dir, **hypers)
    fit, plan = dict(pct_start=cfg['pct_start'], div=cfg.get('div', 25.0), moms=tuple(cfg['moms']), resume=resume), None
    try:
        if cfg.get('budget_minutes'):  # what the data took is spent: plan the rest (a resumed run keeps its plan)
            budget_s = 60 * cfg['budget_minutes'] - (time.time() - t0)
            plan = fit_one_cycle_budget(learn, budget_s, cfg['lr'], valid_ratio=valid_ratio, **fit)
        else:
            learn.fit_one_cycle(cfg['epochs'], cfg['lr'], **fit)
    except Interrupted as e:
        e.resume = f"python -m ulmfit pretrain --resume {shlex.quote(str(run_dir))}"
        raise
    # The last epoch's validation is the final one unless the time budget cut training short. Every rank validates:
    # the metrics are summed over ranks (DistributedCallback.after_validate).
    budget_reached = hasattr(learn, 'time_budget') and learn.time_budget.reached
    planned = plan is not None and plan.n_steps is not None and learn.train_iter >= plan.n_steps
    done = (planned or plan is None and len(learn.recorder.history) == cfg['epochs']) and not budget_reached
    res = dict(learn.recorder.last_valid) if done and learn.recorder.last_valid else learn.validate()
    if r != 0:
        return run_dir
    model_dir = save(run_dir / 'model', learn.model)
    final = {
        'valid_loss': res['valid_loss'],
        'perplexity': res['perplexity'],
        'accuracy': res['lm_accuracy'],
        'epochs_done': len(learn.recorder.history),
        'train_tokens': info['train_tokens'],
        'budget_reached': budget_reached,
        'steps': learn.train_iter,
        'planned_steps': plan.n_steps if plan is not None else None,
        'wall_s': round(time.time() - t0, 1),
        'model_dir': str(model_dir),
    }
    write_json(run_dir / 'metrics.json', final)
    log.info(
        f"valid loss {final['valid_loss']:.4f}, perplexity {final['perplexity']:.2f}, accuracy "
        f"{final['accuracy']:.4f}; model folder: {model_dir}"
    )
    return run_dir


class FirstBatches:
    "The first `n` batches of each pass over a loader (`len` says so, so one-cycle plans for them)."

    def __init__(self, dl, n):
        self.dl, self.n = dl, min(n, len(dl))

    def __len__(self):
        return self.n

    @property
    def n_tokens(self):
        return min(self.dl.n_tokens, self.n * self.dl.global_bs * self.dl.bptt)

    def __getattr__(self, name):  # the loader's other attributes
        return getattr(self.__dict__['dl'], name)

    def __iter__(self):
        return itertools.islice(self.dl, self.n)


def evaluate_lm(model, dl):
    "Exact (full-softmax) validation loss, perplexity and accuracy of an LM over `dl`, from a fresh state."
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        model[0].reset()
        for xb, yb in dl:
            logits = model(xb)[0]  # (bs, sl, vocab_sz)
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction='sum'))
            correct += int((logits.argmax(-1) == yb).sum())
            n += yb.numel()
    return {'valid_loss': total / n, 'perplexity': math.exp(total / n), 'accuracy': correct / n}


class TokenSnapshots(Callback):
    "At each milestone (millions of training tokens), `save` the model to `<folder>/<N>M`; exact validation figures."

    order = 60  # after the Recorder

    def __init__(self, mtokens, folder, save, valid_dl, world_size=1):
        self.todo, self.folder, self.save, self.valid_dl = sorted(mtokens), Path(folder), save, valid_dl
        self.ws, self.tokens, self.t0 = world_size, 0, None

    def before_fit(self):
        self.t0 = time.time()

    def after_batch(self):
        if not self.learn.training:
            return
        self.tokens += self.learn.xb.numel() * self.ws
        while self.todo and self.tokens >= self.todo[0] * 1e6:
            self._snapshot(self.todo.pop(0))

    def _snapshot(self, m):
        model = self.learn.model
        hidden, bs = model[0].hidden, model[0].bs  # the training stream's state, put back afterwards
        t = time.time()
        res = evaluate_lm(model, self.valid_dl) if self.valid_dl is not None else {}
        model[0].hidden, model[0].bs = hidden, bs
        model.train()
        path = self.save(self.folder / f'{m:g}M', model)
        row = {
            'mtokens': m,
            'tokens': self.tokens,
            'train_s': round(t - self.t0, 1),
            'eval_s': round(time.time() - t, 1),
            **res,
            'model_dir': str(path),
            'loadavg': os.getloadavg(),
        }
        with open(self.folder / 'snapshots.jsonl', 'a') as f:
            f.write(json.dumps(row) + '\n')
        self.t0 += time.time() - t  # evaluation time is not training time
        log.info(f"snapshot {m:g}M tokens: {json.dumps(row)}")


class _StopAfter(Callback):
    "Stop after `n` training batches (for --dry-run)."

    order = 90

    def __init__(self, n):
        self.n = n

    def after_batch(self):
        if self.learn.training and self.learn.train_iter >= self.n:
            raise CancelFitException()
