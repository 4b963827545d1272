"Sampled softmax against exact formulas, and pretraining with it (plus size overrides, token budget, snapshots)."
import json
import math

import torch
import torch.nn.functional as F

from ulmfit.model_io import load_model_folder
from ulmfit.pretrain import pretrain
from ulmfit.sampled_softmax import UnigramSampler, sampled_softmax_logits

from test_ulmfit_entrypoints import tiny_cfg


def _setup(n=6, e=5, v=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, e, generator=g), torch.randn(v, e, generator=g), torch.randn(v, generator=g),
            torch.randint(0, v, (n,), generator=g))


def test_every_word_once_with_unit_weight_is_the_exact_cross_entropy():
    h, w, b, y = _setup()
    samples = torch.arange(w.size(0))
    logits = sampled_softmax_logits(h, w, b, y, samples, torch.zeros(len(samples)))
    loss = F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long))
    assert torch.allclose(loss, F.cross_entropy(h @ w.t() + b, y), atol=1e-6)


def test_one_draw_estimates_the_partition_without_bias():
    # k = 1: the draw is word j with probability q_j and count 1, so log_w = log q_j. Averaging the estimate
    # exp(s_t) + sum of exp(sampled logits) over every j, weighted by q_j, must give the exact partition.
    h, w, b, y = _setup(v=7)
    q = torch.softmax(torch.randn(7, generator=torch.Generator().manual_seed(1)), 0)
    expected = torch.zeros(len(y))
    for j in range(7):
        logits = sampled_softmax_logits(h, w, b, y, torch.tensor([j]), torch.log(q[j:j + 1]))
        expected += q[j] * logits.exp().sum(1)
    assert torch.allclose(expected, (h @ w.t() + b).exp().sum(1), rtol=1e-5)


def test_sampler_counts_duplicates_into_the_correction():
    torch.manual_seed(0)
    s = UnigramSampler(torch.tensor([0., 1., 4., 16.]), alpha=0.5)  # q = [0, 1, 2, 4] / 7
    assert torch.allclose(s.q, torch.tensor([0., 1., 2., 4.]) / 7)
    ids, log_w = s(1000)
    assert ids.tolist() == [1, 2, 3]  # distinct, sorted, never a zero-count word
    counts = torch.exp(torch.log(1000 * s.q[ids]) - log_w)
    assert torch.allclose(counts, counts.round()) and counts.sum().round() == 1000


def test_pretrain_with_sampled_softmax_sizes_token_budget_and_snapshots(tmp_path, monkeypatch):
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    cfg = tiny_cfg(tmp_path, sampled_softmax=8, emb_sz=24, n_hid=40, n_layers=3, epochs=2, epoch_tokens=320,
                   snapshot_mtokens=[0.0003, 0.0006], var_bptt=False)
    run = pretrain(cfg)
    _, config, _ = load_model_folder(run / 'model')
    assert (config.emb_sz, config.n_hid, config.n_layers) == (24, 40, 3)
    rows = [json.loads(line) for line in (run / 'snapshots' / 'snapshots.jsonl').read_text().splitlines()]
    assert [r['mtokens'] for r in rows] == [0.0003, 0.0006] and rows[0]['tokens'] == 320
    assert all(math.isfinite(r['perplexity']) for r in rows)
    load_model_folder(rows[1]['model_dir'])
    hist = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert hist  # validation ran with the exact softmax after training with the sampled one
    assert json.loads((run / 'metrics.json').read_text())['perplexity'] < 40
