"Test-wide settings: one intra-op thread (tiny tensors run faster so, and results don't depend on the core count)."
import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # for the tests' shared helpers (core_utils)
os.environ.setdefault('MPLBACKEND', 'Agg')
