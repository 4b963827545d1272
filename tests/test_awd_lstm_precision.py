"Under bf16 autocast the recurrent kernel runs in fp32 (CUDA autocast would run cuDNN RNNs in fp16, unscaled)."

import torch
from torch import nn

import ulmfit.awd_lstm as A


def test_lstm_precision_policy():
    assert A.lstm_in_fp32('cuda', torch.bfloat16)  # AutocastRNN.cpp casts to fp16: run fp32 instead
    assert not A.lstm_in_fp32('cuda', torch.float16)  # fp16 + GradScaler: cuDNN's fp16 RNN is fine
    assert A.lstm_in_fp32('cpu', torch.bfloat16, onednn_has_dtype=False)
    assert not A.lstm_in_fp32('cpu', torch.bfloat16, onednn_has_dtype=True)
    assert A.lstm_in_fp32('cpu', torch.float16, onednn_has_dtype=False)  # fp16 CPU autocast without oneDNN fp16


def _run(wd, x, h, autocast):
    torch.manual_seed(0)  # the same DropConnect mask each time
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        return wd(x, h)


def test_weight_dropout_runs_fp32_under_bf16_autocast_when_the_policy_says_so(monkeypatch):
    monkeypatch.setattr(A, 'lstm_in_fp32', lambda *a, **k: True)  # what CUDA + bf16 decides
    torch.manual_seed(0)
    wd = A.WeightDropout(nn.LSTM(6, 5, batch_first=True), 0.5)
    x, h = torch.randn(3, 4, 6), (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5))
    for training in (True, False):
        wd.train(training)
        ref, (rh, rc) = _run(wd, x, h, False)
        out, (oh, oc) = _run(wd, x.bfloat16(), (h[0].bfloat16(), h[1].bfloat16()), True)
        assert out.dtype == oh.dtype == torch.float32
        # inputs rounded to bf16 are the only difference: the recurrence itself ran in fp32
        ref2, _ = _run(wd, x.bfloat16().float(), h, False)
        assert torch.equal(out, ref2)
        assert torch.allclose(out, ref, atol=2e-2)
