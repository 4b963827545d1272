"""Learner overhead: the same model and data trained by a bare PyTorch loop and by the Learner with the
standard callbacks (recorder, progress bar, metrics, gradient clipping). Prints one JSON line.

    python -m bench.learner_overhead [--batches 200] [--repeats 5] [--width 256]
"""

import argparse
import io
import json
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.learner import DataLoaders, Learner
from common.metrics import accuracy
from common.optim import adamw, make_param_groups
from common.perf import tune_malloc
from common.recorder import ProgressCallback


def make(width, n_in=64, n_out=10, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))


def data(batches, bs, n_in=64, n_out=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * bs, n_in, generator=g)
    y = torch.randint(0, n_out, (batches * bs,), generator=g)
    return (
        DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True),
        DataLoader(TensorDataset(x[: bs * 4], y[: bs * 4]), batch_size=bs),
    )


def bare(width, train, valid, clip):
    model, loss_fn = make(width), nn.CrossEntropyLoss()
    # The same optimizer the Learner builds (no weight decay on biases): only the loop differs.
    opt = adamw(make_param_groups(model, [list(model.parameters())]), lr=1e-3)
    t = time.perf_counter()
    model.train()
    for xb, yb in train:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        loss.item()  # a real loop logs the loss too
    model.eval()
    with torch.no_grad():
        accs = [accuracy(model(xb), yb).item() for xb, yb in valid]
    return time.perf_counter() - t, sum(accs)


def with_learner(width, train, valid, clip):
    learn = Learner(
        make(width),
        DataLoaders(train, valid),
        nn.CrossEntropyLoss(),
        lr=1e-3,
        metrics=[accuracy],
        clip=clip,
        progress=False,
        device='cpu',
    )
    learn.add_cbs(ProgressCallback(file=io.StringIO()))  # a real bar, written where it doesn't clutter the output
    learn.progress.enabled = True
    t = time.perf_counter()
    learn.fit(1)
    return time.perf_counter() - t, learn.recorder.history[-1]['accuracy']


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batches', type=int, default=200)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--width', type=int, default=256)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--clip', type=float, default=1.0)
    a = p.parse_args(argv)
    malloc = tune_malloc()
    train, valid = data(a.batches, a.bs)
    bare(a.width, train, valid, a.clip), with_learner(a.width, train, valid, a.clip)  # warm-up
    tb, tl = [], []
    for _ in range(a.repeats):  # interleaved, so machine noise hits both alike
        tb.append(bare(a.width, train, valid, a.clip)[0])
        tl.append(with_learner(a.width, train, valid, a.clip)[0])
    mb, ml = statistics.median(tb), statistics.median(tl)
    print(
        json.dumps(
            {
                'bench': 'learner_overhead',
                'bare_s': round(mb, 4),
                'learner_s': round(ml, 4),
                'overhead_pct': round(100 * (ml / mb - 1), 2),
                # the fastest run of each is the least disturbed by other load on the machine
                'overhead_pct_min': round(100 * (min(tl) / min(tb) - 1), 2),
                'ms_per_batch_bare': round(1e3 * mb / a.batches, 3),
                'config': {
                    **vars(a),
                    'threads': torch.get_num_threads(),
                    'malloc_tuned': malloc,
                    'torch': torch.__version__,
                    'callbacks': 'device, recorder, metrics(accuracy), progress bar, gradient clip, NaN guard',
                },
            }
        )
    )


if __name__ == '__main__':
    main()
