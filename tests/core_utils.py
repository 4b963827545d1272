"Synthetic learners for the training-core tests: y = a*x + b, and a small classifier with BatchNorm."

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.learner import DataLoaders, Learner


def linear_data(n=256, bs=16, a=2.0, b=1.0, seed=0, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    y = a * x + b + 0.01 * torch.randn(n, 1, generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=shuffle)
    valid = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    return DataLoaders(train, valid)


class TwoLayer(nn.Module):
    "A tiny MLP with BatchNorm and dropout (dropout makes RNG state matter for resume tests)."

    def __init__(self, ni=1, nh=8, no=1, p=0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(ni, nh), nn.BatchNorm1d(nh), nn.ReLU(), nn.Dropout(p))
        self.head = nn.Linear(nh, no)

    def forward(self, x):
        return self.head(self.body(x))


def two_group_splitter(m):
    return [list(m.body.parameters()), list(m.head.parameters())]


def synth_learner(n=256, bs=16, lr=1e-2, seed=0, progress=False, data_seed=0, **kwargs):
    torch.manual_seed(seed)
    return Learner(
        TwoLayer(),
        linear_data(n, bs, seed=data_seed),
        nn.MSELoss(),
        lr=lr,
        splitter=two_group_splitter,
        progress=progress,
        device='cpu',
        **kwargs,
    )
