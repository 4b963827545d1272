"""Multi-process training with `torch.distributed`, launched by `torchrun`.

Each process trains on its own share of every global batch; DDP averages gradients, so N processes
with per-process batch bs/N take the same steps as one process with batch bs. Only rank 0 prints,
plots and writes files.
"""
import os

import torch
import torch.distributed as dist

from .callback import Callback


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else int(os.environ.get('RANK', 0))


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def setup_distributed(backend=None):
    "Join the process group torchrun describes in the environment (no-op when not launched by torchrun)."
    if is_distributed() or int(os.environ.get('WORLD_SIZE', 1)) <= 1:
        return rank(), world_size()
    backend = backend or ('nccl' if torch.cuda.is_available() else 'gloo')
    if backend == 'nccl':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    dist.init_process_group(backend)
    return rank(), world_size()


def cleanup_distributed():
    if is_distributed():
        dist.destroy_process_group()


def shard(t, r, n):
    "Rank r's contiguous share of the first dimension of `t` (or of each tensor in a tuple)."
    if isinstance(t, (tuple, list)):
        return type(t)(shard(o, r, n) for o in t)
    if not isinstance(t, torch.Tensor):
        return t
    bs = t.shape[0]
    if bs % n:
        raise ValueError(f"batch size {bs} can't be split evenly over {n} processes")
    return t[r * bs // n:(r + 1) * bs // n]


class DistributedCallback(Callback):
    "Wraps the model in DDP for training and feeds each rank its share of each global batch."
    order = -15

    def before_fit(self):
        from torch.nn.parallel import DistributedDataParallel as DDP
        dev = next(self.learn.model.parameters()).device
        self.learn.ddp_model = DDP(self.learn.model, device_ids=[dev.index] if dev.type == 'cuda' else None)

    def after_fit(self):
        self.learn.ddp_model = None

    def before_batch(self):
        # Loaders that already shard by rank (e.g. the LM loader) say so with `distributed_aware`.
        if self.learn.training and not getattr(self.learn.dl, 'distributed_aware', False):
            self.learn.xb = shard(self.learn.xb, rank(), world_size())
            self.learn.yb = shard(self.learn.yb, rank(), world_size())
