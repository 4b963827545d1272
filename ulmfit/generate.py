"""Text generation from a language-model folder.

python -m ulmfit generate --model DIR "The movie was" --words 50 --temperature 0.8 [--top-k 40 | --min-p 0.05]
"""

import argparse

import torch

from common.config import ConfigError

from .awd_lstm import reset_model
from .model_io import load_model_folder, tokenizer_for
from .tokenize import BOS, EOS, PAD, UNK
from .vocab import undo_caps


def sample_next(logits, temperature=1.0, top_k=None, min_p=None, generator=None):
    "Sample one id per row of logits (bs, vocab_sz); temperature 0 is greedy."
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.size(-1)), -1).values[..., -1:]  # (bs, 1)
        logits = logits.masked_fill(logits < kth, float('-inf'))
    probs = logits.softmax(-1)  # (bs, vocab_sz)
    if min_p is not None:  # keep tokens at least min_p times as likely as the most likely one
        probs = probs.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (bs,)


@torch.no_grad()
def generate_ids(model, ids, n_words, temperature=1.0, top_k=None, min_p=None, ban_ids=(), generator=None):
    "Feed the prompt `ids` to the LM in one pass, then sample `n_words` ids one at a time; returns the new ids."
    model.eval()
    reset_model(model)
    dev = next(model.parameters()).device
    x = torch.as_tensor(list(ids), dtype=torch.long, device=dev)[None]  # (1, sl)
    ban = torch.as_tensor(list(ban_ids), dtype=torch.long, device=dev)
    out = []
    for _ in range(n_words):
        logits = model(x)[0][:, -1]  # (1, vocab_sz): the hidden state carries everything before
        logits[:, ban] = float('-inf')
        x = sample_next(logits, temperature, top_k, min_p, generator)[None]  # (1, 1)
        out.append(int(x))
    return out


def generate(model_dir, prompt, words=50, temperature=0.8, top_k=None, min_p=None, seed=None):
    "Continue `prompt` with `words` sampled tokens from the LM in `model_dir`; returns readable text."
    model, config, itos, extras = load_model_folder(model_dir, with_extras=True)
    if extras.get('backwards'):
        raise ConfigError(f"{model_dir} is a backward LM (it reads text right to left): generate with a forward one")
    stoi = {t: i for i, t in enumerate(itos)}
    toks = tokenizer_for(model_dir, extras)(prompt)
    ids = [stoi.get(t, stoi.get(UNK, 0)) for t in toks]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ban = [stoi[t] for t in (UNK, PAD) if t in stoi]
    new = generate_ids(model, ids, words, temperature, top_k, min_p, ban_ids=ban, generator=gen)
    return detokenize([itos[i] for i in ids + new])


def detokenize(toks):
    "Tokens -> display text: case markers applied, BOS/EOS dropped, no space before punctuation."
    toks = [t for t in undo_caps(toks) if t not in (BOS, EOS)]
    text = ''
    for t in toks:
        if t.startswith('▁'):  # SentencePiece word start
            text += ' ' + t[1:]
        elif text and (t in '.,;:!?)\'"%' or t.startswith("'") or t == "n't" or text.endswith(('(', '$'))):
            text += t
        else:
            text += ' ' + t
    return text.strip()


def main(argv=None):
    "CLI: python -m ulmfit generate --model DIR PROMPT [--words N --temperature T --top-k K --min-p P --seed S]"
    ap = argparse.ArgumentParser(prog='ulmfit generate', description=__doc__.splitlines()[0])
    ap.add_argument('--model', required=True, help='language-model folder')
    ap.add_argument('prompt')
    ap.add_argument('--words', type=int, default=50)
    ap.add_argument('--temperature', type=float, default=0.8)
    ap.add_argument('--top-k', type=int, default=None)
    ap.add_argument('--min-p', type=float, default=None)
    ap.add_argument('--seed', type=int, default=None)
    a = ap.parse_args(argv)
    print(generate(a.model, a.prompt, a.words, a.temperature, a.top_k, a.min_p, a.seed))  # the result, not a log line
    return 0
