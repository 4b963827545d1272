"""Pretrain an AWD-LSTM language model: `python -m ulmfit pretrain [--preset tiny|cpu|paper] [--key value ...]`.

corpus (WikiText-103 by default, or any corpus the readers accept) → token store → LMLoader → one-cycle
training with AR/TAR and clipping → a model folder (full LM, encoder, vocab, config) inside the run folder.
Runs under `torchrun --nproc_per_node=N -m ulmfit pretrain ...` with DDP (each rank reads its own rows).
"""
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from common.callback import Callback, CancelFitException
from common.callbacks import CheckpointCallback, TimeBudget
from common.config import Setting, parse_run_config
from common.distributed import cleanup_distributed, setup_distributed
from common.learner import DataLoaders
from common.runs import RunLogger, new_run_dir, write_config, write_json

from .awd_lstm import AWDLSTMConfig
from .datasets import ImdbReader, TextCorpusReader, WikiTextReader
from .loaders import LMLoader
from .model_io import save_model_folder
from .recipe import lm_learner
from .sampled_softmax import SampledSoftmax
from .store import build_store
from .tokenize import SpacyTokenizer

SETTINGS = {
    'corpus': Setting('', 'training corpus: file(s) or folder, comma-separated (.txt/.gz, WikiText .tokens/.raw), an '
                          "IMDB folder or .tgz, or 'imdb' (all 100k review texts, labels unused); "
                          'empty = WikiText-103 train (downloaded, or from ULMFIT_MIRROR)'),
    'valid': Setting('', 'validation corpus; empty = WikiText-103 valid (beside the corpus or in ULMFIT_MIRROR), '
                         'else 1% of the corpus documents'),
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
    'n_workers': Setting(0, 'tokenizer processes (0 = one per core)'),
    'bs': Setting(64, 'global batch size (rows of the LM stream)'),
    'bptt': Setting(70, 'tokens per sequence (back-propagation through time)'),
    'var_bptt': Setting(True, 'vary the sequence length as AWD-LSTM does'),
    'epochs': Setting(1, 'epochs of one-cycle training'),
    'epoch_tokens': Setting(0, 'train on only the first N tokens of each (shuffled) epoch (0 = all of it)'),
    'sampled_softmax': Setting(0, 'train with a sampled softmax of this many draws per batch (0 = full softmax); '
                                  'validation is always exact'),
    'sample_alpha': Setting(0.75, 'sampled softmax proposal: training unigram counts to this power'),
    'snapshot_mtokens': Setting([0.], 'millions of training tokens after which to save a model folder '
                                      '(snapshots/<N>M) and its exact validation figures, e.g. 2.5,5,10 (0 = none)'),
    'lr': Setting(5e-3, 'peak learning rate'),
    'wd': Setting(0.01, 'decoupled weight decay'),
    'moms': Setting([0.8, 0.7, 0.8], 'one-cycle momentums (beta1) start,middle,end'),
    'pct_start': Setting(0.25, 'fraction of training spent warming up'),
    'clip': Setting(0.1, 'gradient clipping (total norm)'),
    'alpha': Setting(2.0, 'AR (activation regularization) weight'),
    'beta': Setting(1.0, 'TAR (temporal activation regularization) weight'),
    'precision': Setting('fp32', 'fp32, bf16 (CPU or GPU) or fp16 (GPU, with loss scaling)', ('fp32', 'bf16', 'fp16')),
    'backwards': Setting(False, 'train on the reversed token stream (for a bidirectional ensemble)'),
    'max_minutes': Setting(0.0, 'stop cleanly with a checkpoint after this many minutes (0 = no limit)'),
    'checkpoint_minutes': Setting(20.0, 'also checkpoint every N minutes inside an epoch'),
    'seed': Setting(42, 'random seed'),
    'name': Setting('', 'run folder name under runs/ (default: lm-<preset>[-bwd])'),
    'runs': Setting('runs', 'where run folders go'),
    'resume': Setting('', 'a run folder to continue from its last checkpoint'),
    'dry_run': Setting(False, 'build everything, train 2 batches, write the folder: a quick check'),
}

PRESETS = {
    'tiny': dict(model='tiny', max_docs=30, max_valid_docs=4, max_vocab=4000, min_freq=2, bs=16, bptt=35,
                 epochs=1, lr=1e-2, checkpoint_minutes=0.),
    # Sized for a few hours on a 2-core CPU: the half-width model, and a 30k vocab because the full-softmax
    # decoder costs more than the three LSTMs at 60k (206 of ~330 GFLOP per batch of 32x70 tokens).
    'cpu': dict(model='cpu', bs=32, bptt=70, epochs=1, lr=3e-3, max_vocab=30000, max_minutes=180.),
    # The ULMFiT WikiText-103 recipe for a GPU: full size, fp16.
    'paper': dict(model='paper', bs=128, bptt=70, epochs=10, lr=5e-3, precision='fp16'),
}


class FirstDocs:
    "The first `n` documents of a reader (all when n == 0), with a fingerprint that says so."

    def __init__(self, reader, n):
        self.reader, self.n = reader, n

    def __iter__(self):
        for i, d in enumerate(self.reader):
            if self.n and i >= self.n:
                return
            yield d

    def fingerprint(self):
        return {**self.reader.fingerprint(), 'first_docs': self.n}


def corpus_reader(paths, split='train'):
    "A reader for corpus files: WikiText .tokens/.raw files by name, anything else as plain text."
    paths = [Path(p) for p in (paths.split(',') if isinstance(paths, str) else paths) if str(p)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"corpus not found: {', '.join(missing)}")
    if all(p.name.split('.')[-1] in ('tokens', 'raw') or p.name.endswith(('.tokens.gz', '.raw.gz')) for p in paths):
        return WikiTextReader(paths)
    if len(paths) == 1 and ((paths[0] / 'train' / 'pos').is_dir() or paths[0].name.endswith(('.tgz', '.tar.gz'))):
        return ImdbReader(paths[0])  # the same reader as `imdb` uses, so both share one token store
    return TextCorpusReader(paths, split=split)


def _wt103_file(folder, split):
    for name in (f'wiki.{split}.tokens', f'wiki.{split}.tokens.gz', f'wiki.{split}.raw', f'wiki.{split}.raw.gz'):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def resolve_corpora(cfg):
    "(train reader, valid reader or None, a line describing them)."
    if cfg['corpus'] == 'imdb':
        from common.download import untar_data
        src = str(untar_data('imdb'))
        train = corpus_reader(src)
    elif cfg['corpus']:
        train = corpus_reader(cfg['corpus'])
        src = cfg['corpus']
    else:
        from common.download import untar_data
        folder = untar_data('wikitext-103')
        path = _wt103_file(folder, 'train')
        if path is None:
            raise FileNotFoundError(f"no wiki.train.tokens in {folder}")
        train, src = corpus_reader([path]), str(path)
    valid = None
    if cfg['valid']:
        valid = corpus_reader(cfg['valid'], split='valid')
    elif not isinstance(train, ImdbReader):  # IMDB is validated on 1% of its own reviews, not on WikiText
        candidates = [Path(cfg['corpus'].split(',')[0]).parent] if cfg['corpus'] else [Path(src).parent]
        if os.environ.get('ULMFIT_MIRROR'):
            candidates.append(Path(os.environ['ULMFIT_MIRROR']) / 'wikitext-103')
        for c in candidates:
            p = _wt103_file(c, 'valid')
            if p is not None:
                valid = WikiTextReader([p])
                break
    # Unwrapped when all docs are read, so the store key is the reader's own: `prepare` and `imdb` build the same.
    first = lambda r, n: FirstDocs(r, n) if n else r  # noqa: E731
    return first(train, cfg['max_docs']), (first(valid, cfg['max_valid_docs']) if valid else None), src


def build_lm_data(cfg, r=0, ws=1):
    "Token stores and LM loaders for training and validation; returns (dls, vocab, info)."
    tok = SpacyTokenizer() if cfg['tokenizer'] == 'spacy' else None
    train_r, valid_r, src = resolve_corpora(cfg)
    n_workers = cfg['n_workers'] or None
    if tok is None:  # SentencePiece: trained on (a sample of) the corpus, cached by the store's key
        from .tokenize import SentencePieceTokenizer
        from .store import data_root
        sp_dir = data_root() / 'cache' / 'spm' / str(abs(hash(json.dumps(train_r.fingerprint(), default=str))))
        if not (sp_dir / 'spm.model').exists():
            texts = (d.text for i, d in enumerate(train_r) if i < 20000)
            SentencePieceTokenizer.train(texts, sp_dir, vocab_sz=min(cfg['max_vocab'], 15000))
        tok = SentencePieceTokenizer(sp_dir / 'spm.model')
    store = build_store(train_r, tok, max_vocab=cfg['max_vocab'], min_freq=cfg['min_freq'], n_workers=n_workers,
                        name='lm-train')
    holdout = None
    if valid_r is not None:
        vstore = build_store(valid_r, tok, vocab=store.vocab, n_workers=n_workers, name='lm-valid')
        v_ids, v_offsets, v_idx = vstore.ids, vstore.offsets, None
        t_idx = None
    else:  # hold out 1% of the documents (at least one)
        g = torch.Generator().manual_seed(cfg['seed'])
        perm = torch.randperm(len(store), generator=g).numpy()
        n_val = max(1, len(store) // 100)
        holdout, t_idx = perm[:n_val], perm[n_val:]
        v_ids, v_offsets, v_idx = store.ids, store.offsets, holdout
    lm = dict(bs=cfg['bs'], bptt=cfg['bptt'], backwards=cfg['backwards'], rank=r, world_size=ws)
    train = LMLoader(store.ids, store.offsets, t_idx, shuffle=True, var_bptt=cfg['var_bptt'], **lm)
    if cfg['epoch_tokens']:
        train = FirstBatches(train, math.ceil(cfg['epoch_tokens'] / (cfg['bs'] * cfg['bptt'])))
    valid = LMLoader(v_ids, v_offsets, v_idx, shuffle=False, **lm)
    info = {'corpus': src, 'train_docs': len(store) if t_idx is None else len(t_idx), 'train_tokens': train.n_tokens,
            'valid_tokens': valid.n_tokens, 'vocab_size': len(store.vocab), 'store': str(store.path),
            'tokenizer': tok.config()}
    info['counts'] = np.bincount(store.ids[:] if t_idx is None else np.concatenate([store[i] for i in t_idx]),
                                 minlength=len(store.vocab))  # the sampled softmax's proposal
    return DataLoaders(train, valid), store.vocab, info


def main(argv=None):
    cfg = parse_run_config(argv, SETTINGS, PRESETS, prog='python -m ulmfit pretrain', description=__doc__)
    r, ws = setup_distributed()
    try:
        return pretrain(cfg, r, ws)
    finally:
        cleanup_distributed()


def pretrain(cfg, r=0, ws=1):
    "Run the whole pretraining; returns the run folder."
    t0 = time.time()
    resume = None
    if cfg['resume']:
        run_dir = Path(cfg['resume'])
        resume = run_dir / 'checkpoints' / 'last.pth'
        if not resume.exists():
            raise FileNotFoundError(f"nothing to resume: {resume} does not exist")
        saved = json.loads((run_dir / 'config.json').read_text())
        cfg = {**saved, 'resume': cfg['resume']}
    torch.manual_seed(cfg['seed'])
    if ws > 1 and r != 0:
        torch.distributed.barrier()  # rank 0 builds the token stores first; the others then open them
    dls, vocab, info = build_lm_data(cfg, r, ws)
    counts = info.pop('counts')
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
    if r == 0:
        print(f"corpus: {info['corpus']}: {info['train_docs']:,} docs, {info['train_tokens']:,} tokens; "
              f"valid {info['valid_tokens']:,} tokens; vocab {info['vocab_size']:,}; model {cfg['model']}; "
              f"{ws} process(es); run folder {run_dir}")
    ck = run_dir / 'checkpoints' / 'last.pth'
    cbs = [CheckpointCallback(ck, every_minutes=cfg['checkpoint_minutes'] or None, config=config.to_dict(),
                              extras={'itos': list(vocab.itos)}),
           RunLogger(run_dir, 'pretrain')]
    if cfg['max_minutes']:
        cbs.append(TimeBudget(cfg['max_minutes']))
    if cfg['dry_run']:
        cbs.append(_StopAfter(2))
    if cfg['sampled_softmax']:
        cbs.append(SampledSoftmax(counts, cfg['sampled_softmax'], cfg['sample_alpha']))
    milestones = [m for m in cfg['snapshot_mtokens'] if m > 0]
    if milestones and r == 0:
        # The first ~100k validation tokens: perplexity within about 1% of the whole set's, at a fraction of the cost.
        vdl = FirstBatches(dls.valid, math.ceil(100_000 / (cfg['bs'] * cfg['bptt'])))
        cbs.append(TokenSnapshots(milestones, run_dir / 'snapshots', config, vocab.itos, vdl, ws,
                                  extras={'backwards': cfg['backwards'], 'tokenizer': info['tokenizer']}))
    learn = lm_learner(config, dls, lr=cfg['lr'], wd=cfg['wd'], clip=cfg['clip'], precision=cfg['precision'],
                       alpha=cfg['alpha'], beta=cfg['beta'], cbs=cbs, path=run_dir)
    learn.fit_one_cycle(cfg['epochs'], cfg['lr'], pct_start=cfg['pct_start'], moms=tuple(cfg['moms']), resume=resume)
    if r != 0:
        return run_dir
    # The last epoch's validation is the final one unless the time budget cut training short.
    done = len(learn.recorder.history) == cfg['epochs'] and not getattr(learn, 'budget_reached', False)
    res = dict(learn.recorder.last_valid) if done and learn.recorder.last_valid else learn.validate()
    model_dir = save_model_folder(run_dir / 'model', learn.model, config, vocab.itos,
                                  extras={'backwards': cfg['backwards'], 'tokenizer': info['tokenizer']})
    final = {'valid_loss': res['valid_loss'], 'perplexity': res['perplexity'], 'accuracy': res['lm_accuracy'],
             'epochs_done': len(learn.recorder.history), 'train_tokens': info['train_tokens'],
             'budget_reached': bool(getattr(learn, 'budget_reached', False)),
             'wall_s': round(time.time() - t0, 1), 'model_dir': str(model_dir)}
    write_json(run_dir / 'metrics.json', final)
    print(f"valid loss {final['valid_loss']:.4f}, perplexity {final['perplexity']:.2f}, accuracy "
          f"{final['accuracy']:.4f}; model folder: {model_dir}")
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
        for _, b in zip(range(self.n), self.dl):
            yield b


def evaluate_lm(model, dl):
    "Exact (full-softmax) validation loss, perplexity and accuracy of an LM over `dl`, from a fresh state."
    model.eval()
    total, correct, n = 0., 0, 0
    with torch.no_grad():
        model[0].reset()
        for xb, yb in dl:
            logits = model(xb)[0]  # (bs, sl, vocab_sz)
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), yb.reshape(-1),
                                                             reduction='sum'))
            correct += int((logits.argmax(-1) == yb).sum())
            n += yb.numel()
    return {'valid_loss': total / n, 'perplexity': math.exp(total / n), 'accuracy': correct / n}


class TokenSnapshots(Callback):
    """After each milestone of training tokens (millions), save a model folder `<folder>/<N>M` and its exact
    validation figures (appended to `<folder>/snapshots.jsonl`): one run gives the learning curve."""
    order = 60  # after the Recorder

    def __init__(self, mtokens, folder, config, itos, valid_dl, world_size=1, extras=None):
        self.todo, self.folder, self.config, self.itos = sorted(mtokens), Path(folder), config, itos
        self.valid_dl, self.ws, self.extras, self.tokens, self.t0 = valid_dl, world_size, extras, 0, None

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
        train_s = time.time() - self.t0
        t = time.time()
        res = evaluate_lm(model, self.valid_dl) if self.valid_dl is not None else {}
        model[0].hidden, model[0].bs = hidden, bs
        model.train()
        path = save_model_folder(self.folder / f'{m:g}M', model, self.config, self.itos, extras=self.extras)
        row = {'mtokens': m, 'tokens': self.tokens, 'train_s': round(train_s, 1), 'eval_s': round(time.time() - t, 1),
               **res, 'model_dir': str(path), 'loadavg': os.getloadavg()}
        with open(self.folder / 'snapshots.jsonl', 'a') as f:
            f.write(json.dumps(row) + '\n')
        self.t0 += time.time() - t  # evaluation time is not training time
        print(f"snapshot {m:g}M tokens: {json.dumps(row)}")


class _StopAfter(Callback):
    "Stop after `n` training batches (for --dry-run)."
    order = 90

    def __init__(self, n):
        self.n = n

    def after_batch(self):
        if self.learn.training and self.learn.train_iter >= self.n:
            raise CancelFitException()


if __name__ == '__main__':
    main()
