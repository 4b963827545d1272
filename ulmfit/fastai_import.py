"""Import fastai's published AWD-LSTM language models (WikiText-103 `wt103-fwd` / `wt103-bwd`) into a model folder.

    python -m ulmfit import-fastai --weights lstm_fwd.pth --vocab itos_wt103.pkl --out models/wt103-fwd

fastai key                                   ours
0.encoder.weight                             0.embed.emb.weight   (= 1.decoder.weight when tied)
0.encoder_dp.emb.weight                      dropped: the same matrix again
0.rnns.{i}.weight_hh_l0_raw                  0.rnns.{i}.module.weight_hh_l0
0.rnns.{i}.module.weight_ih_l0 / bias_*      0.rnns.{i}.module.weight_ih_l0 / bias_*
0.rnns.{i}.module.weight_hh_l0 (v1 only)     dropped: a weight-dropped copy from the last training step
1.decoder.weight / 1.decoder.bias            1.decoder.weight / 1.decoder.bias
"""

import io
import pickle
import re
from pathlib import Path

import torch

from common.checkpoint import CheckpointError, load_file

from .awd_lstm import AWDLSTMConfig, get_language_model
from .model_io import save_model_folder


class _ListOfStrUnpickler(pickle.Unpickler):
    "Unpickles only builtin lists and strings: a vocab file can't run code."

    def find_class(self, module, name):
        if module in ('builtins', '__builtin__') and name in ('list', 'str'):
            return {'list': list, 'str': str}[name]
        raise pickle.UnpicklingError(f"vocab pickle refers to {module}.{name}; only lists of strings are accepted")


def read_itos(path):
    "Read fastai's `itos` pickle (a list of str) without running any code from it."
    try:
        itos = _ListOfStrUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not a plain list-of-strings pickle ({e})") from None
    if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
        raise CheckpointError(f"{path}: expected a list of strings, got {type(itos).__name__}")
    return itos


def read_fastai_state(path):
    "The state dict of a fastai checkpoint (bare, or {'model': ..., 'opt': ...}), loaded with weights_only."
    obj = load_file(path)  # weights_only, with a one-line CheckpointError for code, damage or truncation
    if isinstance(obj, dict) and isinstance(obj.get('model'), dict):
        obj = obj['model']
    if not isinstance(obj, dict) or '0.encoder.weight' not in obj:
        raise CheckpointError(f"{path}: not a fastai AWD-LSTM language model state dict (no '0.encoder.weight')")
    return obj


_RNN_KEY = re.compile(r'0\.rnns\.(\d+)\.(weight_hh_l0_raw|module\.(weight_ih_l0|bias_ih_l0|bias_hh_l0|weight_hh_l0))$')


def convert_fastai_state(sd, pad_id=1):
    "fastai LM state dict -> (our state dict, AWDLSTMConfig), sizes inferred from the shapes."
    out, n_layers = {}, 0
    for k, v in sd.items():
        m = _RNN_KEY.match(k)
        if k == '0.encoder.weight':
            out['0.embed.emb.weight'] = v
        elif k in ('1.decoder.weight', '1.decoder.bias'):
            out[k] = v
        elif m:
            i, name = int(m.group(1)), m.group(2)
            n_layers = max(n_layers, i + 1)
            if name != 'module.weight_hh_l0':  # v1's weight-dropped copy is dropped
                out[f'0.rnns.{i}.module.weight_hh_l0' if name == 'weight_hh_l0_raw' else f'0.rnns.{i}.{name}'] = v
        elif k != '0.encoder_dp.emb.weight':  # the embedding again
            raise CheckpointError(f"unexpected key in fastai state dict: {k!r}")
    vocab_sz, emb_sz = out['0.embed.emb.weight'].shape
    n_hid = out['0.rnns.0.module.weight_ih_l0'].shape[0] // 4 if n_layers > 1 else emb_sz  # 1150 (v1) or 1152 (v2)
    dec_w = out.get('1.decoder.weight')
    tied = dec_w is None or torch.equal(dec_w, out['0.embed.emb.weight'])
    if tied:  # one tensor for both, as our tied model holds it
        out['1.decoder.weight'] = out['0.embed.emb.weight']
    config = AWDLSTMConfig(
        vocab_sz, emb_sz, n_hid, n_layers, pad_id, tie_weights=tied, out_bias='1.decoder.bias' in out
    )
    return out, config


def import_fastai(weights, vocab, out_dir, overwrite=False):
    "Convert a fastai .pth + itos pickle into our model folder (an existing one only if `overwrite`)."
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists: choose a new --out folder, or pass --overwrite to replace its model")
    itos = read_itos(vocab)
    sd, config = convert_fastai_state(read_fastai_state(weights), pad_id=itos.index('xxpad') if 'xxpad' in itos else 1)
    if len(itos) != config.vocab_sz:
        raise CheckpointError(f"vocab has {len(itos)} tokens but the embedding has {config.vocab_sz} rows")
    model = get_language_model(config)
    model.load_state_dict(sd)
    save_model_folder(out_dir, model, config, itos, extras={'source': f'fastai:{Path(weights).name}'})
    return model, config, itos
