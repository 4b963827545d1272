"Sampled softmax against exact formulas, and pretraining with it (plus size overrides, token budget, snapshots)."

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_ulmfit_entrypoints import tiny_cfg

from ulmfit.model_io import load_model_folder
from ulmfit.pretrain import pretrain
from ulmfit.sampled_softmax import UnigramSampler, sampled_softmax_logits


def _setup(n=6, e=5, v=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, e, generator=g),
        torch.randn(v, e, generator=g),
        torch.randn(v, generator=g),
        torch.randint(0, v, (n,), generator=g),
    )


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
        logits = sampled_softmax_logits(h, w, b, y, torch.tensor([j]), torch.log(q[j : j + 1]))
        expected += q[j] * logits.exp().sum(1)
    assert torch.allclose(expected, (h @ w.t() + b).exp().sum(1), rtol=1e-5)


def test_sampler_counts_duplicates_into_the_correction():
    torch.manual_seed(0)
    s = UnigramSampler(torch.tensor([0.0, 1.0, 4.0, 16.0]), alpha=0.5)  # q = [0, 1, 2, 4] / 7
    assert torch.allclose(s.q, torch.tensor([0.0, 1.0, 2.0, 4.0]) / 7)
    ids, log_w = s(1000)
    assert ids.tolist() == [1, 2, 3]  # distinct, sorted, never a zero-count word
    counts = torch.exp(torch.log(1000 * s.q[ids]) - log_w)
    assert torch.allclose(counts, counts.round()) and counts.sum().round() == 1000


def test_pretrain_with_sampled_softmax_sizes_token_budget_and_snapshots(tmp_path, monkeypatch):
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    cfg = tiny_cfg(
        tmp_path,
        sampled_softmax=8,
        emb_sz=24,
        n_hid=40,
        n_layers=3,
        epochs=2,
        epoch_tokens=320,
        snapshot_mtokens=[0.0003, 0.0006],
        var_bptt=False,
    )
    run = pretrain(cfg)
    _, config, _ = load_model_folder(run / 'model')
    assert (config.emb_sz, config.n_hid, config.n_layers) == (24, 40, 3)
    rows = [json.loads(line) for line in (run / 'snapshots' / 'snapshots.jsonl').read_text().splitlines()]
    assert [r['mtokens'] for r in rows] == [0.0003, 0.0006] and rows[0]['tokens'] == 320
    assert all(math.isfinite(r['perplexity']) for r in rows)
    load_model_folder(rows[1]['model_dir'])
    hist = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert hist  # validation ran with the exact softmax after training with the sampled one
    final = json.loads((run / 'metrics.json').read_text())
    assert final['perplexity'] < 40 and final['train_tokens'] == 320  # the budget, not the whole epoch


def test_probe_separates_a_linear_signal_and_reads_the_frozen_encoder():
    from bench import probe
    from ulmfit.awd_lstm import AWDLSTMConfig, AWDLSTMEncoder

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (600,), generator=g)
    x = torch.randn(600, 12, generator=g)
    x[:, 3] += 3 * (2 * y - 1)  # one informative feature among noisy ones
    acc, l2, accs = probe.probe(x[:400], y[:400], x[400:], y[400:])
    assert acc > 0.95 and l2 in probe.L2_GRID and set(accs) == set(probe.L2_GRID)
    fit, ev = probe.probe_split(y, 300, 200, seed=1)
    assert len(set(fit) | set(ev)) == 500 and not set(fit) & set(ev)
    assert (probe.probe_split(y, 400, 200, seed=1)[1] == ev).all()  # the eval reviews don't depend on n_fit
    config = AWDLSTMConfig(vocab_sz=20, emb_sz=6, n_hid=10, n_layers=2)
    state = AWDLSTMEncoder(config).state_dict()
    docs = [torch.randint(2, 20, (n,), generator=g).numpy() for n in (5, 30, 12)]
    feats = probe.encode(state, config, docs, max_len=16, bs=2)
    alone = probe.encode(state, config, docs[1:2], max_len=16)
    assert feats.shape == (3, 18) and torch.allclose(feats[1], alone[0], atol=1e-5)  # batching changes nothing


def test_pretrain_on_an_imdb_folder_holds_out_reviews_and_shares_the_prepared_store(tmp_path, monkeypatch):
    import random

    from ulmfit.prepare import prepare_dataset

    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    mirror = tmp_path / 'mirror' / 'wikitext-103'
    mirror.mkdir(parents=True)
    (mirror / 'wiki.valid.tokens').write_text(' = T = \n\n the wiki text \n')
    monkeypatch.setenv('ULMFIT_MIRROR', str(mirror.parent))  # must not become IMDB's validation set
    rnd, words = random.Random(0), 'good bad film plot actor great awful movie fun dull'.split()
    for split, folder in [('train', 'pos'), ('train', 'neg'), ('train', 'unsup'), ('test', 'pos'), ('test', 'neg')]:
        (tmp_path / 'imdb' / split / folder).mkdir(parents=True)
        for i in range(25):
            text = ' '.join(rnd.choice(words) for _ in range(40))
            (tmp_path / 'imdb' / split / folder / f'{i}_{0 if folder == "unsup" else 7}.txt').write_text(text)
    run = pretrain(tiny_cfg(tmp_path, corpus=str(tmp_path / 'imdb'), valid='', dry_run=True))
    data = json.loads((run / 'config.json').read_text())['data']
    assert data['train_docs'] == 124  # 125 reviews, 1% (one) held out for validation
    store = prepare_dataset(None, corpus=[str(tmp_path / 'imdb')], max_vocab=4000, min_freq=1, n_workers=1)
    assert data['store'] == str(store.path)


def test_lm_speed_bench_runs_the_sampled_softmax(capsys):
    from bench import lm_speed

    args = ['--small', '--vocab', '500', '--bs', '4', '--bptt', '8', '--batches', '2', '--warmup', '1']
    lm_speed.main([*args, '--sampled-softmax', '64'])
    res = json.loads(capsys.readouterr().out)
    assert res['sampled_softmax'] == 64 and res['tokens_per_s'] > 0
    # its FLOPs count the decoder over the distinct drawn words, fewer than the vocab
    c = lm_speed.AWDLSTMConfig.preset('paper', vocab_sz=500, emb_sz=200, n_hid=512, n_layers=3)
    assert lm_speed.lm_flops_per_token(c, 40) < lm_speed.lm_flops_per_token(c)


def test_an_exact_validation_costs_about_a_sampled_training_step():
    from ulmfit.awd_lstm import AWDLSTMConfig
    from ulmfit.sampled_softmax import valid_step_ratio

    c = AWDLSTMConfig(vocab_sz=30000, emb_sz=300, n_hid=600, n_layers=2)
    # LSTMs 6.48M + full decoder 18M forward FLOPs per token, over 3 x (6.48M + 300 x 2 x 2,381 drawn)
    assert valid_step_ratio(c, 2380) == pytest.approx((6.48e6 + 18e6) / (3 * (6.48e6 + 600 * 2381)))
    assert valid_step_ratio(c, 29999) == pytest.approx(1 / 3)  # every word drawn: the usual third


def test_expected_distinct_draws_match_the_sampler():
    from ulmfit.sampled_softmax import UnigramSampler

    torch.manual_seed(0)
    s = UnigramSampler(torch.arange(1, 501).flip(0).float())
    drawn = sum(len(s(64)[0]) for _ in range(400)) / 400
    assert s.expected_distinct(64) == pytest.approx(drawn, rel=0.02)
