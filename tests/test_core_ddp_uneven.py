"DDP on two gloo processes: an uneven last batch trains like one process, and validation covers every rank's share."

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.distributed import shard, share_weight
from common.learner import DataLoaders, Learner
from common.metrics import F1Score


class RankShards:
    "A validation loader that, like the LM loader, gives each rank only its own rows (`distributed_aware`)."

    distributed_aware = True

    def __init__(self, x, y, bs, rank=0, world=1):
        self.x, self.y, self.bs, self.rank, self.world = x[rank::world], y[rank::world], bs, rank, world

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def __iter__(self):
        for i in range(0, len(self.x), self.bs):
            yield self.x[i : i + self.bs], self.y[i : i + self.bs]


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(67, 3, generator=g)  # 67 rows at bs 16: the last batch has 3 rows, split 1 + 2 over 2 ranks
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def make_learner(rank=0, world=1):
    torch.manual_seed(0)
    x, y = data()
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), RankShards(x, y, 8, rank, world))
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    return Learner(model, dls, nn.MSELoss(), lr=1e-2, progress=False, device='cpu')


def _worker(rank, world, port, out):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from common.distributed import cleanup_distributed, setup_distributed

    setup_distributed('gloo')
    learn = make_learner(rank, world)
    learn.fit_one_cycle(2, 1e-2)  # before: shard() raised on the 3-row batch
    f1 = F1Score()
    f1.reset()
    f1.preds, f1.targs = [torch.full((rank + 1,), rank)], [torch.ones(rank + 1, dtype=torch.long)]
    f1.sync()
    if rank == 0:
        torch.save(
            {
                'model': learn.model.state_dict(),
                'valid_loss': learn.recorder.last_valid['valid_loss'],
                'f1_preds': f1.preds[0],
            },
            out,
        )
    cleanup_distributed()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned processes
def test_uneven_batches_and_validation_over_all_ranks(tmp_path):
    out = str(tmp_path / 'ddp.pth')
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    single = make_learner()
    single.fit_one_cycle(2, 1e-2)
    for k, v in single.model.state_dict().items():
        assert torch.allclose(v, ddp['model'][k], atol=1e-5), k
    # rank 0 reported the loss over the whole validation set, not over its half
    assert abs(ddp['valid_loss'] - single.recorder.last_valid['valid_loss']) < 1e-5
    assert ddp['f1_preds'].tolist() == [0, 1, 1]  # F1 gathers every rank's predictions


def test_shard_uneven_rows_cover_the_batch_once():
    t = torch.arange(7)
    parts = [shard(t, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), t) and [len(p) for p in parts] == [2, 2, 3]
    # DDP averages the ranks' gradients: weighting each rank's mean by rows_r * n / bs gives the batch mean
    vals = torch.randn(7)
    avg = sum(share_weight(7, r, 3) * vals[p].mean() for r, p in enumerate(parts)) / 3
    assert torch.allclose(avg, vals.mean())
