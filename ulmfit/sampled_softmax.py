"""Sampled softmax for language-model training (importance sampling of the partition function, Bengio & Senécal
2008; Jean et al. 2015), exact softmax at validation.

Each training batch draws `k` word ids from a proposal q (the training unigram counts raised to `alpha`), shared by
every position of the batch. A position's loss is a cross-entropy over its true word and the distinct sampled words:

    logits (n, 1 + u):  [ s_t | s_w1 - log(k·q_w1 / c_w1) | ... | s_wu - log(k·q_wu / c_wu) ]      target: column 0

where s_w = h·W_w + b_w, u ≤ k is the number of distinct draws and c_w how often w was drawn. A sampled word equal
to the position's target is masked out. Then exp(s_t) + Σ_cols exp(logit) is an unbiased estimate of the exact
partition Σ_w exp(s_w), and the decoder costs 2·emb_sz·u FLOPs per token instead of 2·emb_sz·vocab_sz.
"""

import torch

from common.events import Callback


def sampled_softmax_logits(h, weight, bias, targets, samples, log_w):
    "Logits of the true class (column 0) and of shared samples, each sample's corrected by `log_w`."
    # h (n, emb_sz), weight (vocab_sz, emb_sz), bias (vocab_sz,) or None, targets (n,), samples (u,) distinct ids,
    # log_w (u,) log of each sample's expected count over its drawn count, log(k·q_w / c_w).
    true = (h * weight[targets]).sum(-1)  # (n,)
    neg = h @ weight[samples].t()  # (n, u)
    if bias is not None:
        true = true + bias[targets]
        neg = neg + bias[samples]
    neg = (neg - log_w).masked_fill(samples[None] == targets[:, None], float('-inf'))  # (n, u)
    return torch.cat([true[:, None], neg], 1)  # (n, 1 + u)


class UnigramSampler:
    "Draws `k` ids with replacement from q ∝ counts**alpha; returns the distinct ids and their log(k·q / count)."

    def __init__(self, counts, alpha=0.75):
        q = torch.as_tensor(counts, dtype=torch.float64).clamp(min=0) ** alpha
        self.q = (q / q.sum()).float()  # (vocab_sz,)

    def __call__(self, k):
        draws = torch.multinomial(self.q, k, replacement=True)
        ids, counts = torch.unique(draws, return_counts=True)  # (u,), (u,)
        return ids, torch.log(k * self.q[ids]) - torch.log(counts.float())

    def expected_distinct(self, k):
        "The expected number of distinct ids among `k` draws: the sampled decoder's width."
        return float((1 - (1 - self.q.double()) ** k).sum())


class SampledSoftmax(Callback):
    "Trains the LM with `sampled_softmax_logits` in place of the decoder's full logits (target: column 0)."

    order = -4  # after RNNCallback (-5) unpacks the model's outputs, before ARTARCallback (9) uses them

    def __init__(self, counts, k=4096, alpha=0.75):
        self.sampler, self.k = UnigramSampler(counts, alpha), k

    def before_fit(self):
        if not isinstance(getattr(self.learn, 'rnn', None), Callback):
            raise ValueError('SampledSoftmax needs an RNNCallback in the same Learner (it unpacks the LM outputs)')
        self.learn.model[1].skip_logits = True  # only takes effect in training mode

    def after_fit(self):
        self.learn.model[1].skip_logits = False

    def after_pred(self):
        if not self.learn.training:
            return
        out = self.learn.rnn.out  # (bs, sl, emb_sz): the dropped last-layer output, the decoder's input
        dec = self.learn.model[1].decoder
        samples, log_w = (t.to(out.device) for t in self.sampler(self.k))
        y = self.learn.yb.reshape(-1)  # (bs * sl,)
        h = out.reshape(-1, out.size(-1))  # (bs * sl, emb_sz)
        self.learn.pred = sampled_softmax_logits(h, dec.weight, dec.bias, y, samples, log_w)  # (bs * sl, 1 + u)
        self.learn.yb = y.new_zeros(y.shape)  # the true word is column 0


def valid_step_ratio(config, n_drawn):
    "What an exact validation batch costs in training steps of a sampled-softmax LM (the time budget's estimate)."
    # Forward matmul FLOPs of the LSTMs and the full decoder, over three times (forward + backward) those of the LSTMs
    # and a decoder of the `n_drawn` distinct sampled words.
    sizes = [config.emb_sz] + [config.n_hid] * (config.n_layers - 1) + [config.emb_sz]
    lstm = sum(8 * nh * (ni + nh) for ni, nh in zip(sizes[:-1], sizes[1:]))
    return (lstm + 2 * config.emb_sz * config.vocab_sz) / (3 * (lstm + 2 * config.emb_sz * (n_drawn + 1)))
