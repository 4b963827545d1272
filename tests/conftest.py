"Test-wide settings: one intra-op thread (tiny tensors run faster so, and results don't depend on the core count)."

import os

import torch

torch.set_num_threads(1)
os.environ.setdefault('MPLBACKEND', 'Agg')
