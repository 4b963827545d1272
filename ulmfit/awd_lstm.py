"""AWD-LSTM (Merity et al. 2017, "Regularizing and Optimizing LSTM Language Models"), as used by ULMFiT.

Four small dropout modules, a stack of LSTMs and a tied decoder:

    ids (bs, sl) ─ EmbeddingDropout ─ RNNDropout(input_p)
                 ─ LSTM₀ ─ RNNDropout(hidden_p) ─ LSTM₁ ─ ... ─ LSTMₙ ─ raw (bs, sl, emb_sz)
                   (each LSTM's hidden-to-hidden weight goes through WeightDropout)
    raw ─ RNNDropout(output_p) ─ Linear (weight tied to the embedding) ─ logits (bs, sl, vocab_sz)

The language model returns `(logits, raw, out)`: AR/TAR need the last layer's raw and dropped outputs.
`RNNCallback` unpacks that tuple at `after_pred`, so losses and metrics see plain logits.
"""

import contextlib
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.events import Callback


@dataclass
class AWDLSTMConfig:
    "Model hyperparameters; defaults are fastai's `awd_lstm_lm_config` (the ULMFiT WikiText-103 model)."

    vocab_sz: int = 0  # set from the vocab when the model is built
    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    pad_id: int = 1
    output_p: float = 0.1
    hidden_p: float = 0.15
    input_p: float = 0.25
    embed_p: float = 0.02
    weight_p: float = 0.2
    tie_weights: bool = True
    out_bias: bool = True
    drop_mult: float = 1.0  # scales every dropout above

    def p(self, name):
        "A dropout probability after `drop_mult`."
        return getattr(self, name) * self.drop_mult

    to_dict = asdict

    @classmethod
    def from_dict(cls, d):
        "Rebuild from `to_dict()`; an unknown key is an error, not silently dropped."
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown AWDLSTMConfig keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name, **overrides):
        "One of PRESETS, with `overrides` applied."
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS = {
    'paper': AWDLSTMConfig(),  # the ULMFiT / fastai WT103 language model
    # Half `paper`'s matmul work per token (33 vs 65 MFLOP forward, 30k vocab), 1.9x its training tokens/s on a 2-core
    # CPU (bench/lm_speed.py): a few-hour budget sees twice the text, and it still fine-tunes into a good classifier.
    'cpu': AWDLSTMConfig(emb_sz=256, n_hid=768),
    'tiny': AWDLSTMConfig(emb_sz=32, n_hid=64, n_layers=2),
}

# fastai's `awd_lstm_clas_config`: the classifier's dropouts (with drop_mult 0.5 in the ULMFiT IMDB recipe).
CLAS_DROPOUTS = dict(output_p=0.4, hidden_p=0.3, input_p=0.4, embed_p=0.05, weight_p=0.5)


def clas_config(config, drop_mult=0.5):
    "The same sizes as `config` with the classifier's dropouts."
    return replace(config, drop_mult=drop_mult, **CLAS_DROPOUTS)


def dropout_mask(x, sz, p):
    "A Bernoulli(1-p) mask of shape `sz` like `x`, scaled by 1/(1-p) so the expectation is unchanged."
    return x.new_empty(*sz).bernoulli_(1 - p).div_(1 - p)


class RNNDropout(nn.Dropout):
    "Variational dropout: one mask per sequence, shared across all time steps."

    def forward(self, x):  # (bs, sl, n)
        if not self.training or self.p == 0.0:
            return x
        return x * dropout_mask(x.detach(), (x.size(0), 1, x.size(2)), self.p)  # mask (bs, 1, n)


class EmbeddingDropout(nn.Module):
    "Drops whole rows of the embedding matrix (a word vanishes everywhere in the batch) and rescales the rest."

    def __init__(self, emb, embed_p):
        super().__init__()
        self.emb, self.embed_p = emb, embed_p

    def forward(self, words):  # (bs, sl) -> (bs, sl, emb_sz)
        out = self.emb(words)  # (bs, sl, emb_sz)
        if self.training and self.embed_p != 0.0:
            # One mask value per vocab row, looked up per token: the same as scaling the whole matrix's rows,
            # without materialising a (vocab_sz, emb_sz) copy every batch.
            mask = dropout_mask(out.detach(), (self.emb.num_embeddings, 1), self.embed_p)  # (vocab_sz, 1)
            out = out * F.embedding(words, mask)  # (bs, sl, 1)
        return out


def lstm_with_weights(lstm, x, hidden, weights):
    "`lstm(x, hidden)` for a one-layer, unidirectional `lstm`, with `weights` = [w_ih, w_hh, b_ih, b_hh] as its own."
    # The fused kernel nn.LSTM itself uses (private `torch._VF.lstm`): nothing is reassigned on the module and autograd
    # reaches `weights`. cuDNN wants the four weights in one contiguous buffer, in this order, or it copies them and
    # warns; under fp16 autocast the buffer is cast once rather than weight by weight.
    if x.is_cuda:
        flat = torch.cat([w.reshape(-1) for w in weights])
        if torch.is_autocast_enabled('cuda'):  # fp16 (bf16 runs in fp32, see `lstm_in_fp32`)
            flat = flat.to(torch.get_autocast_dtype('cuda'))
        weights = [v.view_as(w) for v, w in zip(flat.split([w.numel() for w in weights]), weights)]
    # has_biases, num_layers, dropout, train, bidirectional, batch_first
    out, h, c = torch._VF.lstm(x, hidden, weights, True, 1, 0.0, True, False, lstm.batch_first)
    return out, (h, c)


class WeightDropout(nn.Module):
    "DropConnect on an `nn.LSTM`'s hidden-to-hidden weight (kept undropped in the module), a fresh mask per forward."

    def __init__(self, module, weight_p):
        super().__init__()
        if not isinstance(module, nn.LSTM) or module.num_layers != 1 or module.bidirectional:
            raise TypeError("WeightDropout wraps a one-layer, unidirectional nn.LSTM")
        self.module, self.weight_p = module, weight_p

    def forward(self, x, hidden):  # x (bs, sl, ni), hidden 2 x (1, bs, nh)
        m = self.module
        fp32 = _lstm_fp32(x)
        with torch.autocast(x.device.type, enabled=False) if fp32 else contextlib.nullcontext():
            if fp32:
                x, hidden = x.float(), tuple(h.float() for h in hidden)
            if not self.training or self.weight_p == 0.0:
                return m(x, hidden)
            w_hh = F.dropout(m.weight_hh_l0, self.weight_p, training=True)
            return lstm_with_weights(m, x, hidden, [m.weight_ih_l0, w_hh, m.bias_ih_l0, m.bias_hh_l0])


def lstm_in_fp32(device_type, autocast_dtype, onednn_has_dtype=True):
    "Whether the LSTM kernel runs in fp32 (autocast off around it) under autocast to `autocast_dtype`."
    if device_type == 'cuda':
        # bf16: yes. Autocast's cuDNN RNN wrapper casts to fp16 whatever the autocast dtype (AutocastRNN.cpp,
        # `_cudnn_rnn_cast_reflatten`), so the LSTMs would run fp16 with no loss scaler, and bf16 RNNs need cuDNN
        # >= 9.13. The decoder, the larger matmul, still runs in bf16. fp16: no, the GradScaler covers cuDNN's fp16.
        return autocast_dtype == torch.bfloat16
    # CPU: only where oneDNN has no LSTM in that dtype, which fails (bf16 on AVX2-only CPUs, fp16 without AVX512-FP16).
    return device_type == 'cpu' and not onednn_has_dtype


def _lstm_fp32(x):
    dt = x.device.type
    if dt not in ('cpu', 'cuda') or not torch.is_autocast_enabled(dt):
        return False
    dtype = torch.get_autocast_dtype(dt)
    onednn = torch.ops.mkldnn
    has = dt != 'cpu' or (
        onednn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16 else onednn._is_mkldnn_fp16_supported()
    )
    return lstm_in_fp32(dt, dtype, has)


class AWDLSTMEncoder(nn.Module):
    "Embedding + `n_layers` weight-dropped LSTMs; the hidden state is carried (detached) from batch to batch."

    def __init__(self, config):
        super().__init__()
        c = config
        self.bs, self.n_layers, self.hidden = 1, c.n_layers, None
        emb = nn.Embedding(c.vocab_sz, c.emb_sz, padding_idx=c.pad_id)
        nn.init.uniform_(emb.weight, -0.1, 0.1)
        with torch.no_grad():
            emb.weight[c.pad_id].zero_()
        self.embed = EmbeddingDropout(emb, c.p('embed_p'))
        self.input_dp = RNNDropout(c.p('input_p'))
        # The last layer outputs emb_sz so the decoder can share the embedding matrix.
        sizes = [c.emb_sz] + [c.n_hid] * (c.n_layers - 1) + [c.emb_sz]
        self.rnns = nn.ModuleList(
            [WeightDropout(nn.LSTM(ni, nh, batch_first=True), c.p('weight_p')) for ni, nh in zip(sizes[:-1], sizes[1:])]
        )
        self.hidden_dps = nn.ModuleList([RNNDropout(c.p('hidden_p')) for _ in range(c.n_layers - 1)])

    def step(self, x, hidden):
        "One pass over `x` (bs, sl) from `hidden` (list of (h, c) per layer); returns (raw output, new hidden)."
        out = self.input_dp(self.embed(x))  # (bs, sl, emb_sz)
        new_hidden = []
        for i, rnn in enumerate(self.rnns):
            out, h = rnn(out, hidden[i])  # (bs, sl, n_hid), or emb_sz for the last layer
            new_hidden.append(h)
            if i < self.n_layers - 1:
                out = self.hidden_dps[i](out)
        return out, new_hidden

    def forward(self, x):  # (bs, sl) -> (bs, sl, emb_sz)
        if self.hidden is None or x.size(0) != self.bs:
            self.reset(x.size(0))
        out, hidden = self.step(x, self.hidden)
        # Truncated BPTT: the state flows into the next batch, its gradient does not.
        self.hidden = [(h.detach(), c.detach()) for h, c in hidden]
        return out

    def init_hidden(self, bs):
        "Zero (h, c) for every layer."
        w = self.embed.emb.weight
        return [(w.new_zeros(1, bs, r.module.hidden_size), w.new_zeros(1, bs, r.module.hidden_size)) for r in self.rnns]

    def reset(self, bs=None):
        "Forget the hidden state (between epochs, documents, or when the batch size changes)."
        self.bs = bs if bs is not None else self.bs
        self.hidden = self.init_hidden(self.bs)


class LinearDecoder(nn.Module):
    "Output dropout, then a linear layer to the vocab whose weight may be the embedding's."

    skip_logits = False  # set by `SampledSoftmax`: training returns no logits, the loss samples words from `out`

    def __init__(self, config, tie_to=None):
        super().__init__()
        c = config
        self.output_dp = RNNDropout(c.p('output_p'))
        self.decoder = nn.Linear(c.emb_sz, c.vocab_sz, bias=c.out_bias)
        if tie_to is not None:
            self.decoder.weight = tie_to.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        if c.out_bias:
            nn.init.zeros_(self.decoder.bias)

    def forward(self, raw):  # (bs, sl, emb_sz) -> logits (bs, sl, vocab_sz), raw, dropped
        out = self.output_dp(raw)
        if self.skip_logits and self.training:
            return None, raw, out
        return self.decoder(out), raw, out


def get_language_model(config):
    "nn.Sequential(AWDLSTMEncoder, LinearDecoder); forward returns (logits, raw, out)."
    if config.vocab_sz <= 0:
        raise ValueError("set config.vocab_sz (the vocab's size) before building the model")
    enc = AWDLSTMEncoder(config)
    return nn.Sequential(enc, LinearDecoder(config, tie_to=enc.embed.emb if config.tie_weights else None))


def lm_splitter(model):
    "Layer groups for discriminative LRs: each LSTM, then embedding + decoder (which share the tied matrix)."
    enc, dec = model[0], model[1]
    groups = [list(rnn.parameters()) for rnn in enc.rnns]
    last = list(enc.embed.parameters())
    last += [p for p in dec.parameters() if all(p is not q for q in last)]
    return groups + [last]


def lm_loss(pred, y):
    "Cross-entropy over every position: pred (bs, sl, vocab_sz), y (bs, sl)."
    return F.cross_entropy(pred.reshape(-1, pred.size(-1)).float(), y.reshape(-1))


def lm_accuracy(pred, y):
    "Next-token accuracy."
    return (pred.argmax(-1) == y).float().mean()


def ar_tar(raw_out, out, alpha=2.0, beta=1.0, mask=None):
    "Activation regularization α·mean(out²) + temporal AR β·mean((raw[t+1] - raw[t])²), both (bs, sl, n)."
    sq, dsq = out.float().pow(2), (raw_out[:, 1:] - raw_out[:, :-1]).float().pow(2)  # (bs, sl, n), (bs, sl-1, n)
    if mask is None:
        return alpha * sq.mean() + beta * dsq.mean()
    # `mask` (bs, sl) is True at padding: the means run over real positions (and pairs of adjacent real ones) only,
    # so the amount of padding in a classifier batch doesn't change the penalty.
    real = (~mask)[..., None].float()  # (bs, sl, 1)
    pair = real[:, 1:] * real[:, :-1]  # (bs, sl-1, 1) both ends real
    n = out.size(-1)
    ar = alpha * (sq * real).sum() / (real.sum() * n).clamp(min=1)
    tar = beta * (dsq * pair).sum() / (pair.sum() * n).clamp(min=1)
    return ar + tar


def reset_model(model):
    "Call `reset()` on every submodule that has one (the encoder's hidden state)."
    for m in model.modules():
        if m is not model and hasattr(m, 'reset') and callable(m.reset):
            m.reset()


class RNNCallback(Callback):
    "Resets hidden state before each train/valid pass; unpacks (logits, raw, out[, mask]) so losses see logits."

    order = -5

    def before_train(self):
        reset_model(self.learn.model)

    before_validate = before_train

    def after_pred(self):
        if isinstance(self.learn.pred, tuple):
            self.learn.pred, self.raw_out, self.out, *mask = self.learn.pred
            self.mask = mask[0] if mask else None  # the classifier's padding mask
        else:
            self.raw_out = self.out = self.mask = None


class ARTARCallback(Callback):
    "Adds `ar_tar` to the loss backward sees (training only); needs `RNNCallback`."

    # For the language model and the classifier alike, as fastai does (v1 `RNNLearner`, v2 `RNNRegularizer`).
    # After MixUp-like callbacks (8), which compute the loss afresh, and before MixedPrecision (10), which scales it.
    order = 9
    loss_role = 'add'

    def __init__(self, alpha=2.0, beta=1.0):
        self.alpha, self.beta = alpha, beta

    def before_fit(self):
        if not isinstance(getattr(self.learn, 'rnn', None), RNNCallback):
            raise ValueError("ARTARCallback needs an RNNCallback in the same Learner (it unpacks the LM's outputs)")

    def after_loss(self):
        rnn = self.learn.rnn
        if self.learn.training and rnn.raw_out is not None:
            reg = ar_tar(rnn.raw_out, rnn.out, self.alpha, self.beta, rnn.mask)
            self.learn.loss_grad = self.learn.loss_grad + reg
