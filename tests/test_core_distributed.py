"Two gloo processes with half the batch each take the same steps as one process with the whole batch."

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.learner import DataLoaders, Learner


def make_learner():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), None)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))  # no BatchNorm/dropout: per-rank stats differ
    return Learner(model, dls, nn.MSELoss(), lr=1e-2, progress=False, device='cpu')


def _worker(rank, world, port, out):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from common.distributed import cleanup_distributed, setup_distributed

    setup_distributed('gloo')
    learn = make_learner()
    assert any(type(c).__name__ == 'DistributedCallback' for c in learn.cbs)
    learn.fit_one_cycle(2, 1e-2)
    if rank == 0:
        torch.save(learn.model.state_dict(), out)
    cleanup_distributed()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned processes
def test_two_processes_match_one(tmp_path):
    out = str(tmp_path / 'ddp.pth')
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    single = make_learner()
    single.fit_one_cycle(2, 1e-2)
    ddp = torch.load(out, weights_only=True)
    for k, v in single.model.state_dict().items():
        assert torch.allclose(v, ddp[k], atol=1e-5), k
