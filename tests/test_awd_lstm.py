"AWD-LSTM language model and ULMFiT classifier: shapes, gradients, each dropout's arithmetic, pooling masks."

import warnings

import pytest
import torch
import torch.nn as nn

from common.events import Callback, check_loss_roles
from common.precision import MixedPrecision
from ulmfit.awd_lstm import (
    PRESETS,
    ARTARCallback,
    AWDLSTMConfig,
    EmbeddingDropout,
    RNNCallback,
    RNNDropout,
    WeightDropout,
    ar_tar,
    clas_config,
    get_language_model,
    lm_accuracy,
    lm_loss,
    lm_splitter,
    lstm_with_weights,
)
from ulmfit.classifier import (
    SentenceEncoder,
    clas_splitter,
    fit_thresholds,
    get_text_classifier,
    load_encoder,
    masked_concat_pool,
)

V = 50


def tiny(**kw):
    return AWDLSTMConfig.preset('tiny', vocab_sz=V, **kw)


def ids(bs, sl, lo=2, seed=0):
    return torch.randint(lo, V, (bs, sl), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed_and_no_warnings():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # e.g. RNN "weights not contiguous" warnings fail the test
        yield


def test_presets_and_config_roundtrip():
    assert PRESETS['paper'] == AWDLSTMConfig(
        emb_sz=400,
        n_hid=1152,
        n_layers=3,
        pad_id=1,
        output_p=0.1,
        hidden_p=0.15,
        input_p=0.25,
        embed_p=0.02,
        weight_p=0.2,
    )
    c = tiny(drop_mult=0.5)
    assert c.p('weight_p') == pytest.approx(0.1)
    assert AWDLSTMConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        AWDLSTMConfig.from_dict({**c.to_dict(), 'typo': 1})
    with pytest.raises(ValueError):
        AWDLSTMConfig.preset('huge')


def test_lm_forward_backward_every_param_gets_grad():
    m = get_language_model(tiny())
    x = ids(3, 7)
    logits, raw, out = m(x)
    assert logits.shape == (3, 7, V) and raw.shape == out.shape == (3, 7, 32)
    assert m[1].decoder.weight is m[0].embed.emb.weight  # tied
    (lm_loss(logits, x) + ar_tar(raw, out)).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []
    assert 0 <= lm_accuracy(logits, x) <= 1


def test_classifier_forward_backward_every_param_gets_grad():
    m = get_text_classifier(clas_config(tiny()), n_out=3, bptt=4, max_len=8)
    x = ids(4, 13)
    x[0, :5] = 1  # padding
    m(x)[0].sum().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_embedding_dropout_drops_whole_rows_and_rescales():
    emb = nn.Embedding(V, 6)
    dp = EmbeddingDropout(emb, 0.5).train()
    x = torch.arange(V)[None].repeat(2, 1)  # every word twice
    y = dp(x)  # (2, V, 6)
    ratio = y / emb.weight[None]
    dropped = (y == 0).all(-1)
    assert torch.equal(dropped[0], dropped[1])  # a word is dropped everywhere in the batch
    assert 0 < dropped[0].sum() < V
    assert torch.allclose(ratio[~dropped], torch.tensor(2.0))  # kept rows scaled by 1/(1-p)
    assert torch.equal(dp.eval()(x), emb(x))


def test_rnn_dropout_mask_shared_across_time():
    dp = RNNDropout(0.5).train()
    y = dp(torch.ones(4, 9, 16))
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every time step
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(dp.eval()(torch.ones(4, 9, 16)), torch.ones(4, 9, 16))


def test_weight_dropout_resamples_in_train_not_in_eval_and_raw_gets_grad():
    wd = WeightDropout(nn.LSTM(5, 6, batch_first=True), 0.5)
    x, h = torch.randn(2, 4, 5), (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6))
    wd.train()
    a, b = wd(x, h)[0], wd(x, h)[0]
    assert not torch.allclose(a, b)  # a fresh DropConnect mask each forward
    a.sum().backward()
    assert wd.module.weight_hh_l0.grad is not None and (wd.module.weight_hh_l0.grad == 0).any()
    wd.eval()
    ref, _ = wd.module(x, h)
    assert torch.equal(wd(x, h)[0], ref) and torch.equal(wd(x, h)[0], wd(x, h)[0])
    # The training path is nn.LSTM with a dropped-out hidden-to-hidden weight (the same mask, replayed by seed).
    wd.train()
    torch.manual_seed(7)
    got = wd(x, h)[0]
    ref_lstm = nn.LSTM(5, 6, batch_first=True)
    ref_lstm.load_state_dict(wd.module.state_dict())
    torch.manual_seed(7)
    with torch.no_grad():
        ref_lstm.weight_hh_l0.copy_(torch.nn.functional.dropout(wd.module.weight_hh_l0, 0.5, True))
    assert torch.allclose(got, ref_lstm(x, h)[0], atol=1e-6)


DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('batch_first', [True, False])
def test_lstm_with_weights_is_nn_lstm_with_those_weights(device, batch_first):
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, batch_first=batch_first).to(device)
    x = torch.randn(2, 4, 5, device=device)  # (bs, sl, ni) or (sl, bs, ni)
    h = (torch.randn(1, x.size(0 if batch_first else 1), 6, device=device),) * 2
    own = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    (out, (hn, cn)), (rout, (rh, rc)) = lstm_with_weights(lstm, x, h, own), lstm(x, h)
    for a, b in [(out, rout), (hn, rh), (cn, rc)]:
        assert torch.allclose(a, b, atol=1e-6)
    # Other weights: the same as an nn.LSTM holding them, forward and backward.
    new = [(torch.randn_like(w) / 3).requires_grad_() for w in own]
    ref = nn.LSTM(5, 6, batch_first=batch_first).to(device)
    with torch.no_grad():
        for p, w in zip([ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0], new):
            p.copy_(w)
    (out, (hn, cn)), (rout, (rh, rc)) = lstm_with_weights(lstm, x, h, new), ref(x, h)
    for a, b in [(out, rout), (hn, rh), (cn, rc)]:
        assert torch.allclose(a, b, atol=1e-6)
    (out.sum() + cn.sum()).backward()
    (rout.sum() + rc.sum()).backward()
    for w, p in zip(new, [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0]):
        assert torch.allclose(w.grad, p.grad, atol=1e-5)
    assert all(p.grad is None for p in lstm.parameters())  # the module's own weights were not used


def test_hidden_state_carries_across_calls_and_reset_clears_it():
    m = get_language_model(tiny()).eval()
    x = ids(2, 10)
    whole = m(x)[0]
    m[0].reset()
    halves = torch.cat([m(x[:, :5])[0], m(x[:, 5:])[0]], 1)
    assert torch.allclose(whole, halves, atol=1e-5)  # state carried from the first half into the second
    assert not m[0].hidden[0][0].requires_grad  # detached between batches
    m[0].reset()
    assert all((h == 0).all() and (c == 0).all() for h, c in m[0].hidden)
    fresh = m(x[:, 5:])[0]
    assert not torch.allclose(fresh, halves[:, 5:])  # without the carried state the output differs
    m[0].reset()
    assert torch.allclose(m(x[:, 5:])[0], fresh)


def test_ar_tar_exact_formula():
    raw, out = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    ar = sum(out[b, t, j] ** 2 for b in range(2) for t in range(5) for j in range(3)) / 30
    tar = sum((raw[b, t + 1, j] - raw[b, t, j]) ** 2 for b in range(2) for t in range(4) for j in range(3)) / 24
    assert torch.allclose(ar_tar(raw, out, alpha=2.0, beta=1.0), 2 * ar + tar)
    assert torch.allclose(ar_tar(raw, out, alpha=0.0, beta=3.0), 3 * tar)


class _FakeLearn:
    "Just the attributes the RNN callbacks touch."

    def __init__(self, model):
        self.model, self.training = model, True


def test_rnn_and_artar_callbacks():
    m = get_language_model(tiny())
    learn = _FakeLearn(m)
    rnn, artar = RNNCallback(), ARTARCallback(alpha=2.0, beta=1.0)
    learn.rnn, rnn.learn, artar.learn = rnn, learn, learn
    x = ids(2, 6)
    rnn.before_train()
    learn.pred = m(x)
    rnn.after_pred()
    assert learn.pred.shape == (2, 6, V)
    learn.loss = learn.loss_grad = lm_loss(learn.pred, x)
    artar.after_loss()
    expected = learn.loss + ar_tar(rnn.raw_out, rnn.out)
    assert torch.allclose(learn.loss_grad, expected)
    learn.training = False
    learn.loss_grad = learn.loss
    artar.after_loss()
    assert learn.loss_grad is learn.loss  # validation: no regulariser


def _eval_clas(**kw):
    m = get_text_classifier(clas_config(tiny()), n_out=2, **kw)
    return m.eval()


@pytest.mark.parametrize('where', ['front', 'end'])
def test_pooling_prediction_unchanged_by_more_padding(where):
    m = _eval_clas(bptt=4, max_len=12)
    x = ids(3, 9)
    x[1, :3] = 1 if where == 'front' else x[1, :3]
    x[1, 6:] = 1 if where == 'end' else x[1, 6:]
    pad = torch.ones(3, 7, dtype=torch.long)
    more = torch.cat([pad, x], 1) if where == 'front' else torch.cat([x, pad], 1)
    assert torch.allclose(m(x)[0], m(more)[0], atol=1e-5)
    # ...and a document gives the same prediction alone as inside a padded batch
    alone = m(x[1:2][x[1:2] != 1][None])[0]
    assert torch.allclose(alone, m(x)[0][1:2], atol=1e-5)


def test_masked_concat_pool_exact():
    out = torch.randn(2, 5, 3)
    mask = torch.tensor([[True, True, False, False, False], [False, False, False, True, True]])
    p = masked_concat_pool(out, mask)
    for b, real in enumerate([[2, 3, 4], [0, 1, 2]]):
        o = out[b, real]
        assert torch.allclose(p[b], torch.cat([o[-1], o.max(0).values, o.mean(0)]))


def test_sentence_encoder_chunking_equals_single_pass():
    m = _eval_clas(bptt=3, max_len=100)
    se = m[0]
    x = ids(2, 11)
    output, mask = se(x)
    ref = se.encoder.step(x, se.encoder.init_hidden(2))[0]
    assert not mask.any() and torch.allclose(output, ref, atol=1e-5)


def test_sentence_encoder_keeps_only_last_max_len():
    se = SentenceEncoder(get_language_model(tiny())[0], bptt=4, max_len=6).eval()
    x = ids(2, 17)
    x[1, :9] = 1  # row 1 has 8 real tokens
    output, mask = se(x)
    assert ((~mask).sum(1) == 6).all()
    full = se.encoder.step(x[:1], se.encoder.init_hidden(1))[0]  # (1, 17, emb_sz)
    assert torch.allclose(output[0][~mask[0]], full[0, -6:], atol=1e-5)


def test_splitters_cover_every_parameter_once():
    for model, split, n in [
        (get_language_model(tiny()), lm_splitter, 3),
        (get_text_classifier(clas_config(tiny()), 2), clas_splitter, 4),
    ]:
        groups = split(model)
        assert len(groups) == n
        ids_ = [id(p) for g in groups for p in g]
        assert len(ids_) == len(set(ids_)) and set(ids_) == {id(p) for p in model.parameters()}


def test_load_encoder_from_lm_state():
    lm = get_language_model(tiny())
    clas = get_text_classifier(clas_config(tiny()), 2)
    load_encoder(clas, lm.state_dict())
    assert torch.equal(clas[0].encoder.embed.emb.weight, lm[0].embed.emb.weight)
    assert torch.equal(clas[0].encoder.rnns[1].module.weight_hh_l0, lm[0].rnns[1].module.weight_hh_l0)


def test_fit_thresholds():
    probs = torch.tensor([[0.9, 0.3], [0.6, 0.2], [0.2, 0.25], [0.1, 0.1]])
    targs = torch.tensor([[1, 1], [1, 1], [0, 1], [0, 0]])
    th = fit_thresholds(probs, targs)
    assert th[0] > 0.2 and th[0] <= 0.6 and th[1] <= 0.2 and th[1] > 0.1


def test_sample_next_top_k_min_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    from ulmfit.generate import sample_next

    assert sample_next(logits, temperature=0.0).item() == 0
    assert {sample_next(logits, top_k=2, generator=g).item() for _ in range(200)} == {0, 1}
    # min_p 0.4: keep tokens with p >= 0.4 * 0.5 = 0.2
    assert {sample_next(logits, min_p=0.4, generator=g).item() for _ in range(200)} == {0, 1}


def test_generate_from_model_folder(tmp_path):
    from ulmfit.generate import generate, generate_ids
    from ulmfit.model_io import load_model_folder, save_model_folder
    from ulmfit.tokenize import SPECIALS

    itos = SPECIALS + ['the', 'movie', 'was', 'good', '.', 'bad', 'a']
    c = AWDLSTMConfig.preset('tiny', vocab_sz=len(itos))
    save_model_folder(tmp_path, get_language_model(c), c, itos)
    model, c2, itos2 = load_model_folder(tmp_path)
    assert c2 == c and itos2 == itos
    new = generate_ids(model, [2, 9, 10], 5, ban_ids=(0, 1), generator=torch.Generator().manual_seed(0))
    assert len(new) == 5 and not set(new) & {0, 1}
    text = generate(tmp_path, 'The movie was', words=4, seed=0)
    assert text.startswith('The movie was') and 'xxbos' not in text


def test_lm_trains_through_the_learner_with_rnn_callbacks():
    from common.learner import DataLoaders, Learner

    m = get_language_model(tiny())
    x = ids(4, 9)
    batches = [(x[:, :-1], x[:, 1:])] * 6
    learn = Learner(
        m,
        DataLoaders(batches, batches[:1]),
        lm_loss,
        splitter=lm_splitter,
        clip=0.1,
        metrics=[lm_accuracy],
        cbs=[RNNCallback(), ARTARCallback()],
        progress=False,
        device='cpu',
    )
    before = learn.validate()
    learn.fit(2, lr=1e-2)
    assert learn.validate()['valid_loss'] < before['valid_loss']
    with pytest.raises(ValueError, match='RNNCallback'):
        Learner(m, DataLoaders(batches), lm_loss, cbs=[ARTARCallback()], progress=False, device='cpu').fit(1)


def test_ar_tar_adds_to_the_loss_between_mixup_and_fp16_scaling():
    class Replace(Callback):
        order, loss_role = 8, 'replace'  # where MixUp/CutMix compute the loss afresh

    check_loss_roles(sorted([MixedPrecision('fp16'), ARTARCallback(), Replace()], key=lambda c: c.order))
    assert ARTARCallback.loss_role == 'add' and Replace.order < ARTARCallback.order < MixedPrecision.order
