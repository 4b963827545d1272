"""Classifier training throughput: the ULMFiT classifier on random documents, the full training step through the
Learner (SentenceEncoder over BPTT chunks, pooling head, backward, AdamW). Prints one JSON line.

    python -m bench.clas_speed [--small] [--precision fp32|bf16|fp32,bf16] [--sampler sortish|random]
                               [--docs 256 --bs 32 --bptt 72 --max-len 1440 --vocab 30000]

Document lengths are log-normal (median 230, sigma 0.75) clipped to [10, 2048], seeded; batches are padded at
the front with the pad id. `sortish` (default) sorts documents by length and shuffles the batches, as a
training sampler that groups similar lengths would; `random` batches documents in random order.
"""

import argparse
import json
import math
import os
import statistics
import sys

if __name__ == '__main__' and 'OMP_WAIT_POLICY' not in os.environ:
    # OpenMP threads that spin while waiting make a busy 2-core machine several times slower (the LSTM's
    # per-time-step kernels wait a lot); sleeping waiters avoid that. It must be set before torch loads.
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'
    os.execv(sys.executable, sys.orig_argv)  # the same command line (python -m bench.x ...)
import torch
import torch.nn.functional as F

from bench.lm_speed import BatchTimer, lm_flops_per_token, matmul_gflops
from common.learner import DataLoaders, Learner
from common.perf import tune_malloc
from ulmfit.awd_lstm import AWDLSTMConfig, RNNCallback, clas_config
from ulmfit.classifier import clas_splitter, get_text_classifier


def random_docs(n, vocab, median=230, sigma=0.75, lo=10, hi=2048, seed=0):
    "Token-id documents with log-normal lengths (ids >= 2, so never the pad id 1)."
    g = torch.Generator().manual_seed(seed)
    lens = (math.log(median) + sigma * torch.randn(n, generator=g)).exp().round().clamp(lo, hi).long()
    return [torch.randint(2, vocab, (int(n_),), generator=g) for n_ in lens]


def pad_front(docs, pad_id=1):
    "[p p a b c]\n  [d e f g h]  one row per document, padding in front so every document ends at the right."
    sl = max(len(d) for d in docs)
    return torch.stack([F.pad(d, (sl - len(d), 0), value=pad_id) for d in docs])


def make_batches(docs, bs, sampler, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=g).tolist()
    if sampler == 'sortish':
        order.sort(key=lambda i: -len(docs[i]))
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    if sampler == 'sortish':
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    labels = torch.randint(0, 2, (len(docs),), generator=g)
    return [(pad_front([docs[i] for i in b]), labels[b]) for b in batches]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--small', action='store_true', help='emb 200, n_hid 512, 3 layers')
    ap.add_argument('--precision', default='fp32', help='fp32, bf16, or several comma-separated')
    ap.add_argument('--sampler', default='sortish', choices=['sortish', 'random'])
    ap.add_argument('--docs', type=int, default=256)
    ap.add_argument('--bs', type=int, default=32)
    ap.add_argument('--bptt', type=int, default=72)
    ap.add_argument('--max-len', type=int, default=72 * 20)
    ap.add_argument('--vocab', type=int, default=30000)
    ap.add_argument('--threads', type=int, default=None)
    a = ap.parse_args(argv)
    tuned = tune_malloc()
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = dict(emb_sz=200, n_hid=512, n_layers=3) if a.small else {}
    c = clas_config(AWDLSTMConfig.preset('paper', vocab_sz=a.vocab, **sizes), drop_mult=0.5)
    docs = random_docs(a.docs, a.vocab)
    batches = make_batches(docs, a.bs, a.sampler)
    n_tok = sum(x.numel() for x, _ in batches)
    n_real = sum(len(d) for d in docs)
    precisions, runs = a.precision.split(','), {}
    for p in precisions:
        torch.manual_seed(0)
        model = get_text_classifier(c, 2, bptt=a.bptt, max_len=a.max_len)
        timer = BatchTimer()
        learn = Learner(
            model,
            DataLoaders(batches[:1] + batches),
            F.cross_entropy,
            splitter=clas_splitter,
            precision=p,
            cbs=[RNNCallback(), timer],
            progress=False,
            device='cpu',
        )
        learn.fit(1, lr=1e-3)
        t = sum(timer.times[1:])  # the first batch is a warm-up repeat
        lstm_flops = lm_flops_per_token(c) - 2 * c.emb_sz * c.vocab_sz  # the encoder's share; the head is tiny
        runs[p] = dict(
            docs_per_s=round(a.docs / t, 2),
            s_per_epoch=round(t, 1),
            ms_per_batch_median=round(1000 * statistics.median(timer.times[1:]), 1),
            gflops=round(3 * lstm_flops * n_real / t / 1e9, 1),
        )  # counting real tokens only
    first = runs[precisions[0]]
    res = dict(
        bench='clas_speed',
        **first,
        precision=precisions[0],
        sampler=a.sampler,
        docs=a.docs,
        real_tokens=n_real,
        padded_tokens=n_tok,
        pad_frac=round(1 - n_real / n_tok, 3),
        matmul_gflops=round(matmul_gflops(), 1),
        config=c.to_dict(),
        bs=a.bs,
        bptt=a.bptt,
        max_len=a.max_len,
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'),
        malloc_tuned=tuned,
        torch=torch.__version__,
    )
    if len(precisions) > 1:
        res['by_precision'] = runs
    print(json.dumps(res))


if __name__ == '__main__':
    main()
