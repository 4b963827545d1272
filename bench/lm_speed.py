"""Language-model training throughput: AWD-LSTM on random token ids, the full training step through the Learner
(forward, AR/TAR, backward, gradient clipping 0.1, AdamW). Prints one JSON line.

    python -m bench.lm_speed [--small] [--precision fp32|bf16|fp32,bf16] [--vocab 30000 --bs 32 --bptt 70
                             --batches 20 --warmup 2] [--emb-sz N --n-hid N --n-layers N] [--sampled-softmax K]

Default sizes are the `paper` preset (emb 400, n_hid 1152, 3 layers); --small is emb 200, n_hid 512, 3 layers.
Several precisions (comma-separated) run interleaved in one process, so their ratio is fair on a noisy machine.
`gflops` is the model's matmul work (3 x forward FLOPs per token) per second, next to a plain fp32 matmul.
`--sampled-softmax K` trains as `pretrain --sampled-softmax K` does (K draws per batch from Zipf-like counts, alpha
0.75); its `gflops` counts the decoder over the distinct drawn words only.
"""

import argparse
import json
import os
import statistics
import sys
import time

if __name__ == '__main__' and 'OMP_WAIT_POLICY' not in os.environ:
    # OpenMP threads that spin while waiting make a busy 2-core machine several times slower (the LSTM's
    # per-time-step kernels wait a lot); sleeping waiters avoid that. It must be set before torch loads.
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'
    os.execv(sys.executable, sys.orig_argv)  # the same command line (python -m bench.x ...)
import torch

from common.events import Callback
from common.learner import DataLoaders, Learner
from common.perf import tune_malloc
from ulmfit.awd_lstm import ARTARCallback, AWDLSTMConfig, RNNCallback, get_language_model, lm_loss, lm_splitter
from ulmfit.sampled_softmax import SampledSoftmax


class BatchTimer(Callback):
    "Wall time of every batch (before_batch to after_batch)."

    order = 100

    def __init__(self):
        self.times = []

    def before_batch(self):
        self.t0 = time.perf_counter()

    def after_batch(self):
        self.times.append(time.perf_counter() - self.t0)


def matmul_gflops(n=2048, reps=5):
    "A plain fp32 n x n matmul: what this machine's BLAS reaches."
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e9


def lm_flops_per_token(c, decoder_cols=None):
    """Forward matmul FLOPs per token: each LSTM's 4 gates over [input, hidden], plus the decoder over
    `decoder_cols` words (default: the whole vocab)."""
    sizes = [c.emb_sz] + [c.n_hid] * (c.n_layers - 1) + [c.emb_sz]
    lstm = sum(2 * 4 * nh * (ni + nh) for ni, nh in zip(sizes[:-1], sizes[1:]))
    return lstm + 2 * c.emb_sz * (c.vocab_sz if decoder_cols is None else decoder_cols)


def zipf_counts(vocab):
    "Word counts of a Zipf-like corpus (count ∝ 1 / rank), the sampled softmax's proposal here."
    return (1e7 / torch.arange(1, vocab + 1, dtype=torch.float64)).round()


def random_batches(n, bs, bptt, vocab, seed=0):
    "Random ids; the target is the input shifted by one, as in an LM loader."
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (n, bs, bptt + 1), generator=g)
    return [(d[:, :-1], d[:, 1:]) for d in data]


def run(config, precision, batches, bs, bptt, seed=0, sampled=0):
    "Train on `batches` (with a sampled softmax of `sampled` draws unless 0); returns the per-batch times."
    torch.manual_seed(seed)
    model = get_language_model(config)
    timer = BatchTimer()
    extra = [SampledSoftmax(zipf_counts(config.vocab_sz), sampled)] if sampled else []
    learn = Learner(
        model,
        DataLoaders(batches),
        lm_loss,
        splitter=lm_splitter,
        precision=precision,
        clip=0.1,
        cbs=[RNNCallback(), ARTARCallback(alpha=2.0, beta=1.0), timer, *extra],
        progress=False,
        device='cpu',
    )
    learn.fit(1, lr=1e-3)
    return timer.times, learn.recorder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--small', action='store_true', help='emb 200, n_hid 512, 3 layers')
    ap.add_argument('--precision', default='fp32', help='fp32, bf16, or several comma-separated')
    ap.add_argument('--vocab', type=int, default=30000)
    ap.add_argument('--bs', type=int, default=32)
    ap.add_argument('--bptt', type=int, default=70)
    ap.add_argument('--batches', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--emb-sz', type=int)
    ap.add_argument('--n-hid', type=int)
    ap.add_argument('--n-layers', type=int)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--sampled-softmax', type=int, default=0, help='K draws per batch (0 = full softmax)')
    a = ap.parse_args(argv)
    tuned = tune_malloc()
    if a.threads:
        torch.set_num_threads(a.threads)
    c = AWDLSTMConfig.preset('paper', vocab_sz=a.vocab)
    if a.small:
        c = AWDLSTMConfig.preset('paper', vocab_sz=a.vocab, emb_sz=200, n_hid=512, n_layers=3)
    for k in ('emb_sz', 'n_hid', 'n_layers'):
        if getattr(a, k) is not None:
            setattr(c, k, getattr(a, k))
    data = random_batches(a.warmup + a.batches, a.bs, a.bptt, a.vocab)
    precisions = a.precision.split(',')
    runs = {}
    for p in precisions:
        times, rec = run(c, p, data, a.bs, a.bptt, sampled=a.sampled_softmax)
        t = statistics.median(times[a.warmup :])
        cols = None
        if a.sampled_softmax:  # the mean number of distinct words K draws give
            cols = SampledSoftmax(zipf_counts(a.vocab), a.sampled_softmax).sampler.expected_distinct(a.sampled_softmax)
        runs[p] = dict(
            tokens_per_s=round(a.bs * a.bptt / t, 1),
            ms_per_batch=round(1000 * t, 1),
            gflops=round(3 * lm_flops_per_token(c, cols) * a.bs * a.bptt / t / 1e9, 1),
        )
    mm = matmul_gflops()
    first = runs[precisions[0]]
    res = dict(
        bench='lm_speed',
        **first,
        precision=precisions[0],
        matmul_gflops=round(mm, 1),
        pct_of_matmul=round(100 * first['gflops'] / mm, 1),
        config=c.to_dict(),
        sampled_softmax=a.sampled_softmax,
        bs=a.bs,
        bptt=a.bptt,
        batches=a.batches,
        warmup=a.warmup,
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
