"""The ULMFiT classifier: the AWD-LSTM encoder read in BPTT chunks, masked concat pooling, a small MLP head.

    ids (bs, sl) ─ SentenceEncoder ─ (output (bs, w, emb_sz), pad mask (bs, w))
                 ─ masked_concat_pool ─ (bs, 3*emb_sz)
                 ─ [BatchNorm ─ Dropout ─ Linear ─ ReLU] ... ─ logits (bs, n_out)

It returns `(logits, output, output, mask)`, like the LM's `(logits, raw, out)`, so AR/TAR regularise it too.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .awd_lstm import AWDLSTMEncoder


class SentenceEncoder(nn.Module):
    "Runs the encoder over whole documents `bptt` tokens at a time, carrying the hidden state."

    # Only each document's last `max_len` tokens keep outputs (and gradients), so memory is bounded on long documents.
    # Rows may be padded at the front or at the end: each document is read from a zero state starting at its first
    # real token, so the amount of padding changes nothing.
    def __init__(self, encoder, bptt=72, max_len=72 * 20, pad_id=1):
        super().__init__()
        self.encoder, self.bptt, self.max_len, self.pad_id = encoder, bptt, max_len, pad_id

    def forward(self, x):  # (bs, sl) -> output (bs, w, emb_sz), mask (bs, w) with True at padding
        bs, sl = x.shape
        real = x != self.pad_id
        lengths = real.sum(1)  # (bs,)
        if bool((lengths == 0).any()):
            raise ValueError("SentenceEncoder got a document made only of padding")
        # Left-align every row, then sort longest first:
        #   [p p p a b c]      [d e f g h i]    chunk by chunk the rows still running are a prefix,
        #   [d e f g h i]  ->  [a b c p p p]    so finished rows cost nothing and padding is
        #   [p p p p j k]      [j k p p p p]    never read before a document's first token.
        start = real.int().argmax(1)  # (bs,) first real token
        x = x.gather(1, (torch.arange(sl, device=x.device) + start[:, None]) % sl)
        lengths, order = lengths.sort(descending=True)
        x, lens = x[order], lengths.tolist()
        hidden = self.encoder.init_hidden(bs)
        outs, starts = [], []
        for s in range(0, lens[0], self.bptt):
            n = sum(ln > s for ln in lens)  # rows with tokens in this chunk
            hidden = [(h[:, :n], c[:, :n]) for h, c in hidden]
            # Does any running row have one of its last max_len tokens in [s, s+bptt)?
            keep = s + self.bptt > lens[n - 1] - self.max_len
            with torch.set_grad_enabled(keep and torch.is_grad_enabled()):
                out, hidden = self.encoder.step(x[:n, s : s + self.bptt], hidden)  # (n, chunk, emb_sz)
            hidden = [(h.detach(), c.detach()) for h, c in hidden]  # no gradient across chunks
            if keep:
                outs.append(F.pad(out, (0, 0, 0, 0, 0, bs - n)))  # finished rows: zeros, masked below
                starts.append(s)
        output = torch.cat(outs, 1)  # (bs, w, emb_sz)
        # Kept chunks need not be adjacent (a short row's window ends long before a long row's begins).
        pos = torch.cat([torch.arange(s, s + o.size(1), device=x.device) for s, o in zip(starts, outs)])[None]
        mask = (pos >= lengths[:, None]) | (pos < lengths[:, None] - self.max_len)  # (bs, w)
        inv = order.argsort()
        return output[inv], mask[inv]

    def reset(self):
        pass  # the state starts at zero for every batch: nothing carries over


def masked_concat_pool(output, mask):
    "[last real token, max, mean] over the non-pad positions: output (bs, w, n), mask (bs, w) True at pad."
    real = ~mask
    pos = torch.arange(output.size(1), device=output.device)
    last_idx = (pos * real).argmax(1)  # (bs,) the last real position, wherever the padding is
    last = output[torch.arange(output.size(0), device=output.device), last_idx]  # (bs, n)
    mx = output.masked_fill(mask[..., None], float('-inf')).max(1).values  # (bs, n)
    mean = output.masked_fill(mask[..., None], 0.0).sum(1) / real.sum(1, keepdim=True).to(output.dtype)
    return torch.cat([last, mx, mean], 1)  # (bs, 3n)


def lin_bn_drop(ni, nf, p, act=True):
    "BatchNorm → Dropout → Linear (→ ReLU)."
    # The Linear keeps its bias, as fastai v1 `bn_drop_lin` (the published ULMFiT heads) does and v2 `LinBnDrop`
    # doesn't: with the BatchNorm before it, its shift β already reaches the output as W·β (any bias, as W has full
    # row rank here: ni > nf), and keeping it keeps saved classifiers loadable.
    layers = [nn.BatchNorm1d(ni), nn.Dropout(p), nn.Linear(ni, nf)]
    return layers + [nn.ReLU(inplace=True)] if act else layers


class PoolingLinearClassifier(nn.Module):
    "Masked concat pooling, then BatchNorm/Dropout/Linear/ReLU blocks through `dims` (first is 3*emb_sz)."

    def __init__(self, dims, ps):
        super().__init__()
        if len(ps) != len(dims) - 1:
            raise ValueError(f"need one dropout per linear layer: dims={dims}, ps={ps}")
        layers = []
        for i, (ni, nf, p) in enumerate(zip(dims[:-1], dims[1:], ps)):
            layers += lin_bn_drop(ni, nf, p, act=i < len(ps) - 1)
        self.layers = nn.Sequential(*layers)

    def forward(self, inp):  # (output (bs, w, emb_sz), mask (bs, w)) -> logits (bs, n_out), output, output, mask
        output, mask = inp
        # Raw and dropped outputs are the same here (no dropout before pooling), as in fastai v2 for AR/TAR.
        return self.layers(masked_concat_pool(output, mask)), output, output, mask


def get_text_classifier(config, n_out, bptt=72, max_len=72 * 20, lin_ftrs=(50,), ps=None):
    "nn.Sequential(SentenceEncoder, PoolingLinearClassifier); `config` carries the classifier dropouts (`clas_config`)."
    if ps is None:
        ps = [config.p('output_p')] + [0.1] * len(lin_ftrs)  # fastai's head dropouts
    enc = SentenceEncoder(AWDLSTMEncoder(config), bptt=bptt, max_len=max_len, pad_id=config.pad_id)
    head = PoolingLinearClassifier([config.emb_sz * 3, *lin_ftrs, n_out], list(ps))
    return nn.Sequential(enc, head)


def clas_splitter(model):
    "Layer groups: embedding, each LSTM, head."
    enc = model[0].encoder
    return [list(enc.embed.parameters())] + [list(r.parameters()) for r in enc.rnns] + [list(model[1].parameters())]


def encoder_state(state):
    "The encoder's part of a state dict: a language model's ('0.' keys) or an encoder's own."
    if any(k.startswith('1.decoder') for k in state):
        return {k[2:]: v for k, v in state.items() if k.startswith('0.')}
    return dict(state)


def load_encoder(model, state):
    "Load encoder weights (from an LM or encoder state dict) into a classifier built by get_text_classifier."
    model[0].encoder.load_state_dict(encoder_state(state))
    return model


def fit_thresholds(probs, targets, grid=None):
    "Per-label decision thresholds for multi-label targets that maximise each label's F1: probs, targets (n, n_labels)."
    grid = torch.linspace(0.05, 0.95, 19) if grid is None else torch.as_tensor(grid)
    t = targets.bool()[None]  # (1, n, L)
    pred = probs[None] >= grid[:, None, None]  # (g, n, L)
    tp = (pred & t).sum(1).float()
    f1 = 2 * tp / (pred.sum(1) + t.sum(1)).float().clamp(min=1)  # (g, L)
    return grid[f1.argmax(0)]  # (L,)
