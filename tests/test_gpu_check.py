"""bench/gpu_check.py: skips at once without CUDA, and its checks pass on the CPU (a reduced run here; `make gpu-check
ARGS='--device cpu'` runs them all)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / 'bench' / 'gpu_check.py'


def _module():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA device is present: the check would run')
def test_skips_without_cuda():
    p = subprocess.run(
        [sys.executable, '-m', 'bench.gpu_check'], cwd=SCRIPT.parents[1], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and p.stdout.strip() == 'no CUDA device: skipped'


def test_reduced_cpu_run_passes(capsys):
    rc = _module().main(['--device', 'cpu', '--small', '--only', 'lm,parity'])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [ln.split()[:2] for ln in out.splitlines()[1:6]]
    assert rows == [
        ['lm_fp32', 'PASS'],
        ['lm_fp16', 'PASS'],
        ['lm_bf16', 'PASS'],
        ['parity_eval', 'PASS'],
        ['parity_weight_dropout', 'PASS'],
    ]
    assert '"bench": "gpu_check_lm"' in out
