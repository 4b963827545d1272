"""Linear probe of a language model's encoder on IMDB sentiment: how much a frozen LM already knows.

    python bench/probe.py MODEL_DIR [MODEL_DIR ...] [--n-fit 5000 --n-eval 2500 --max-len 1440 --seed 0]

For each model folder: read `n_fit + n_eval` random TRAIN reviews (a fixed, seeded draw; the test reviews are never
touched) with the frozen encoder, concat-pool the last layer's outputs ([last, max, mean], 3 x emb_sz features),
standardise them with the fit set's statistics, and fit an L2-regularised logistic regression (full-batch LBFGS) on
the first `n_fit`. The L2 weight is chosen on a 20% split of the fit set, then refit on all of it; the accuracy is
measured on the other `n_eval` reviews (the same ones for any `n_fit`, e.g. 22500 for a head on every other
training review). Prints one JSON line per model.

The reviews come from the IMDB token store (`ULMFIT_DATA`, built if missing); tokens the LM's vocab lacks become
its xxunk.
"""

import argparse
import json
import os
import sys
import time

if __name__ == '__main__' and 'OMP_WAIT_POLICY' not in os.environ:
    # Sleeping OpenMP waiters: spinning ones make a busy 2-core machine several times slower (see lm_speed.py).
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'
    os.execv(sys.executable, sys.orig_argv)  # the same command line (python -m bench.probe ...)
import numpy as np
import torch
import torch.nn.functional as F

from common.perf import tune_malloc
from ulmfit.awd_lstm import AWDLSTMEncoder
from ulmfit.classifier import SentenceEncoder, masked_concat_pool
from ulmfit.model_io import load_encoder_folder

L2_GRID = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def probe_split(labels, n_fit, n_eval, seed):
    """Seeded disjoint (fit, eval) index arrays into the labelled training reviews. The eval reviews are the end of
    the permutation, so they stay the same whatever `n_fit` is."""
    if n_fit + n_eval > len(labels):
        raise ValueError(f'n_fit + n_eval = {n_fit + n_eval} but there are only {len(labels)} labelled reviews')
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[:n_fit], perm[len(perm) - n_eval :]


def encode(enc_state, config, docs, max_len, bs=64):
    "Concat-pooled features (n_docs, 3 * emb_sz) of the frozen encoder, reading each doc's last `max_len` tokens."
    enc = AWDLSTMEncoder(config)
    enc.load_state_dict(enc_state)
    senc = SentenceEncoder(enc, bptt=max_len, max_len=max_len, pad_id=config.pad_id).eval()
    order = np.argsort([-len(d) for d in docs], kind='stable')  # similar lengths together: little padding
    feats = torch.empty(len(docs), 3 * config.emb_sz)
    with torch.no_grad():
        for i in range(0, len(docs), bs):
            idx = order[i : i + bs]
            rows = [torch.as_tensor(docs[j][-max_len:], dtype=torch.long) for j in idx]
            x = torch.full((len(rows), max(len(r) for r in rows)), config.pad_id, dtype=torch.long)
            for k, r in enumerate(rows):
                x[k, x.size(1) - len(r) :] = r  # pad at the front
            feats[torch.as_tensor(idx)] = masked_concat_pool(*senc(x))
    return feats


def fit_logreg(x, y, l2, steps=100):
    "Full-batch LBFGS on the mean cross-entropy + l2 * |w|²; returns (w, b)."
    w = torch.zeros(x.size(1), 2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def accuracy(x, y, wb):
    return ((x @ wb[0] + wb[1]).argmax(1) == y).float().mean().item()


def probe(feats_fit, y_fit, feats_eval, y_eval, seed=0):
    "Standardise, choose L2 on a 20% split of the fit set, refit, return (eval accuracy, chosen l2, split accs)."
    mu, sd = feats_fit.mean(0), feats_fit.std(0).clamp(min=1e-6)
    xf, xe = (feats_fit - mu) / sd, (feats_eval - mu) / sd
    perm = torch.randperm(len(xf), generator=torch.Generator().manual_seed(seed))
    n_in = len(xf) * 4 // 5
    tr, va = perm[:n_in], perm[n_in:]
    accs = {l2: accuracy(xf[va], y_fit[va], fit_logreg(xf[tr], y_fit[tr], l2)) for l2 in L2_GRID}
    best = max(L2_GRID, key=lambda l2: (accs[l2], l2))
    return accuracy(xe, y_eval, fit_logreg(xf, y_fit, best)), best, accs


def imdb_train_docs(itos, max_vocab):
    "Token ids (in the LM's vocab) and 0/1 labels of the labelled IMDB training reviews."
    from ulmfit.imdb import imdb_store

    store, _ = imdb_store({'dataset': 'imdb', 'max_vocab': max_vocab, 'min_freq': 3})
    idx = store.labeled_idx('train')
    stoi = {t: i for i, t in enumerate(itos)}
    unk = stoi.get('xxunk', 0)
    remap = np.array([stoi.get(t, unk) for t in store.vocab.itos], dtype=np.int64)  # store id -> LM id
    docs = [remap[np.asarray(store[i], dtype=np.int64)] for i in idx]
    return docs, torch.as_tensor(store.labels[idx], dtype=torch.long)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('models', nargs='+', help='LM model folders (lm.pth, encoder.pth, vocab.json, config.json)')
    ap.add_argument('--n-fit', type=int, default=5000, help='training reviews the probe is fitted on')
    ap.add_argument('--n-eval', type=int, default=2500, help='other training reviews it is measured on')
    ap.add_argument('--max-len', type=int, default=1440, help="read each review's last N tokens")
    ap.add_argument('--max-vocab', type=int, default=30000, help='vocab cap of the IMDB token store to read from')
    ap.add_argument('--seed', type=int, default=0, help='seed of the review draw and the L2 split')
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
    a = ap.parse_args(argv)
    tune_malloc()
    if a.threads:
        torch.set_num_threads(a.threads)
    cache = {}
    for m in a.models:
        t0 = time.time()
        state, config, itos = load_encoder_folder(m)
        key = tuple(itos)
        if key not in cache:
            cache.clear()
            cache[key] = imdb_train_docs(itos, a.max_vocab)
        docs, labels = cache[key]
        fit, ev = probe_split(labels, a.n_fit, a.n_eval, a.seed)
        t1 = time.time()
        feats = encode(state, config, [docs[i] for i in np.concatenate([fit, ev])], a.max_len)
        t2 = time.time()
        acc, l2, accs = probe(feats[: len(fit)], labels[fit], feats[len(fit) :], labels[ev], a.seed)
        print(
            json.dumps(
                {
                    'model': str(m),
                    'probe_accuracy': round(acc, 4),
                    'l2': l2,
                    'l2_split_acc': {str(k): round(v, 4) for k, v in accs.items()},
                    'features': feats.size(1),
                    'n_fit': len(fit),
                    'n_eval': len(ev),
                    'max_len': a.max_len,
                    'seed': a.seed,
                    'encode_s': round(t2 - t1, 1),
                    'fit_s': round(time.time() - t2, 1),
                    'total_s': round(time.time() - t0, 1),
                    'threads': torch.get_num_threads(),
                    'loadavg': [round(v, 2) for v in os.getloadavg()],
                    'emb_sz': config.emb_sz,
                    'n_hid': config.n_hid,
                    'n_layers': config.n_layers,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
