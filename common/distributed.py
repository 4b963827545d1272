"""Multi-process training with `torch.distributed`, launched by `torchrun`.

Each process trains on its own share of every global batch; DDP averages gradients, so N processes
with per-process batch bs/N take the same steps as one process with batch bs. Only rank 0 prints,
plots and writes files.
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .events import Callback


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else int(os.environ.get('RANK', 0))


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def setup_distributed(backend=None):
    "Join the process group torchrun describes in the environment (no-op when not launched by torchrun)."
    if not is_distributed() and int(os.environ.get('WORLD_SIZE', 1)) > 1:
        backend = backend or ('nccl' if torch.cuda.is_available() else 'gloo')
        if backend == 'nccl':
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        dist.init_process_group(backend)
    return rank(), world_size()


def cleanup_distributed():
    if is_distributed():
        dist.destroy_process_group()


def shard(t, r, n):
    "Rank r's contiguous share of the first dimension of `t` (or of each tuple item); shares differ by a row at most."
    if isinstance(t, (tuple, list)):
        return type(t)(shard(o, r, n) for o in t)
    if not isinstance(t, torch.Tensor):
        return t
    bs = t.shape[0]
    if bs < n:
        raise ValueError(f"a batch of {bs} rows can't give each of {n} processes a row: use a batch size >= {n}")
    return t[r * bs // n : (r + 1) * bs // n]


def share_weight(bs, r, n):
    "Rank r's mean loss weight (rows_r * n / bs) that makes DDP's plain gradient average the whole batch's gradient."
    return (((r + 1) * bs // n) - (r * bs // n)) * n / bs


def all_reduce_sum(values):
    "Each number of `values` summed over all processes (as float64)."
    dev = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_cat(t):
    "A CPU tensor concatenated (along dim 0) over all processes, in rank order; shapes may differ in dim 0."
    out = [None] * world_size()
    dist.all_gather_object(out, t.cpu())
    return torch.cat(out)


class DistributedCallback(Callback):
    "Wraps the model in DDP for training and feeds each rank its share of each global batch."

    order = -15

    def before_fit(self):
        dev = next(self.learn.model.parameters()).device
        self.learn.ddp_model = DDP(self.learn.model, device_ids=[dev.index] if dev.type == 'cuda' else None)

    def after_fit(self):
        self.learn.ddp_model = None

    def before_batch(self):
        # Loaders that already shard by rank (e.g. the LM loader) say so with `distributed_aware`.
        self.weight = None
        if self.learn.training and not getattr(self.learn.dl, 'distributed_aware', False):
            r, n = rank(), world_size()
            bs = self.learn.yb.shape[0] if isinstance(self.learn.yb, torch.Tensor) else None
            self.learn.xb, self.learn.yb = shard((self.learn.xb, self.learn.yb), r, n)
            if bs is not None and bs % n:
                self.weight = share_weight(bs, r, n)

    def before_backward(self):
        # An uneven batch (e.g. a classifier's last one): ranks hold different row counts, and DDP averages their
        # gradients with equal weight, so each rank's mean loss is weighted by its share of the rows first.
        if self.weight is not None:
            self.learn.loss_grad = self.learn.loss_grad * self.weight

    def after_validate(self):
        # A loader that shards by rank (the LM loader) shows each rank 1/N of the validation stream (others show every
        # rank everything): the metrics' running sums are added up over the ranks to cover the whole stream.
        rec = getattr(self.learn, 'recorder', None)
        if rec is not None and getattr(self.learn.dl, 'distributed_aware', False):
            for m in [rec.valid_loss, *rec.metrics]:
                m.sync()
