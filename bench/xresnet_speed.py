"""Training throughput of xresnet18 (bs 32, 10 classes, random images): one JSON line with images_per_s.

    python -m bench.xresnet_speed --size 64 --precision fp32 --channels-last

A full step is forward, loss, backward and an optimizer step, run through the `Learner` (with --bare, a bare loop,
which says so in the output as "loop": "bare").
"""

import argparse
import json
import os
import sys
import time

# glibc hands large freed buffers back to the OS and then page-faults them in again on the next step; on the
# small VMs this runs on that alone costs a third of the step. Keep them: re-exec with the knobs set.
# OpenMP threads that spin at every op's barrier lose their core to any other busy process on a shared 2-core
# VM (2-4x slower); sleeping waiters cost little when the machine is idle. An explicit setting in the
# environment wins over this default.
_ENV = {
    'MALLOC_MMAP_MAX_': '0',
    'MALLOC_TRIM_THRESHOLD_': '68719476736',
    'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'),
}
if (
    __name__ == '__main__'
    and any(os.environ.get(k) != v for k, v in _ENV.items())
    and not os.environ.get('XRESNET_BENCH_NO_REEXEC')
):
    os.execve(sys.executable, sys.orig_argv, {**os.environ, **_ENV})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vision.xresnet import xresnet18  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, default=64, help='image side in pixels (64 or 128)')
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'], help='autocast dtype of the step')
    p.add_argument('--channels-last', action='store_true', help='NHWC memory format for model and batch')
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--steps', type=int, default=20, help='timed steps (after warm-up)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--bare', action='store_true', help='time a bare loop instead of the Learner')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
    return p.parse_args(argv)


class RandomImages:
    "`n` batches of the same random (bs, 3, size, size) images and labels: the timing excludes data loading."

    def __init__(self, n, bs, size, channels_last):
        g = torch.Generator().manual_seed(0)
        self.xb = torch.randn(bs, 3, size, size, generator=g)
        if channels_last:
            self.xb = self.xb.contiguous(memory_format=torch.channels_last)
        self.yb = torch.randint(0, 10, (bs,), generator=g)
        self.n = n

    def __iter__(self):
        return ((self.xb, self.yb) for _ in range(self.n))

    def __len__(self):
        return self.n


def bare_steps(model, data, precision):
    "Forward, loss, backward, SGD-with-momentum step for every batch of `data`."
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    model.train()
    for xb, yb in data:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
            loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def learner_steps(model, data, precision):
    "The same steps through `Learner.fit` (one epoch, no validation batches)."
    from common.learner import DataLoaders, Learner

    learn = Learner(
        model, DataLoaders(data), F.cross_entropy, lr=1e-2, precision=precision, progress=False, device='cpu'
    )
    learn.fit(1)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = xresnet18(n_out=10)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = bare_steps if args.bare else learner_steps
    run(model, RandomImages(args.warmup, args.bs, args.size, args.channels_last), args.precision)
    t0, c0 = time.perf_counter(), time.process_time()
    run(model, RandomImages(args.steps, args.bs, args.size, args.channels_last), args.precision)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = args.steps * args.bs
    # On a shared machine wall time depends on the neighbours; CPU time (all threads) much less so:
    # images_per_cpu_s * threads estimates the throughput of an idle machine.
    print(
        json.dumps(
            {
                'images_per_s': round(n / dt, 1),
                'images_per_cpu_s': round(n / cpu, 1),
                'model': 'xresnet18',
                'bs': args.bs,
                'size': args.size,
                'precision': args.precision,
                'channels_last': args.channels_last,
                'steps': args.steps,
                'loop': 'learner' if run is learner_steps else 'bare',
                'threads': torch.get_num_threads(),
                'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
                'load_avg_1min': round(os.getloadavg()[0], 2),
                'torch': torch.__version__,
            }
        )
    )


if __name__ == '__main__':
    main()
