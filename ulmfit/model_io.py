"""A language-model folder and a classifier folder: everything needed to rebuild the model, from plain data only.

    DIR/lm.pth        checkpoint (common.checkpoint format): full LM state dict, config dict, extras['itos']
    DIR/encoder.pth   the same for the encoder alone (keys without the '0.' prefix), for classifiers
    DIR/vocab.json    {"itos": [...]};  DIR/config.json: the AWDLSTMConfig as a dict

A classifier folder holds clas.pth (extras: itos, classes, settings), vocab.json and config.json (+ classes, settings).
"""

import json
import shutil
from pathlib import Path

from common.checkpoint import CheckpointError, atomic_write_json, load_checkpoint, load_model_state, save_checkpoint
from common.config import ConfigError

from .awd_lstm import AWDLSTMConfig, clas_config, get_language_model
from .classifier import encoder_state, get_text_classifier
from .tokenize import SentencePieceTokenizer, SpacyTokenizer


def save_model_folder(path, model, config, itos, extras=None, spm_model=None):
    "Write a language model, its config, vocab and SentencePiece model (`spm_model`, if it used one) to folder `path`."
    if len(itos) != config.vocab_sz:
        raise ValueError(f"vocab has {len(itos)} tokens but config.vocab_sz is {config.vocab_sz}")
    path, cfg, itos = Path(path), config.to_dict(), list(itos)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ex = dict(extras or {}, itos=itos)
    save_checkpoint(path / 'lm.pth', sd, config=cfg, extras=ex)
    save_checkpoint(path / 'encoder.pth', encoder_state(sd), config=cfg, extras=ex)
    atomic_write_json(path / 'vocab.json', {'itos': itos})
    atomic_write_json(path / 'config.json', cfg)
    if spm_model:
        shutil.copyfile(spm_model, path / 'spm.model')
    return path


def _load_folder(path, name, map_location):
    "Checkpoint `name` of a model folder, its config and vocab (refused when it doesn't fit the embedding)."
    ck = load_checkpoint(Path(path) / name, map_location)
    config = AWDLSTMConfig.from_dict(ck['config'])
    d = json.loads((Path(path) / 'vocab.json').read_text(encoding='utf-8'))
    itos = d['itos'] if isinstance(d, dict) else d
    if len(itos) != config.vocab_sz:  # vocab.json replaced by another model's?
        raise CheckpointError(
            f"{Path(path) / 'vocab.json'}: {len(itos)} tokens, but the model's embedding has {config.vocab_sz} rows: "
            "the vocab belongs to another model (was the folder overwritten?). Use an intact model folder"
        )
    return ck, config, itos


def load_model_folder(path, map_location='cpu', with_extras=False):
    "Rebuild the LM of a folder written by `save_model_folder`: (model, config, itos), plus extras if asked."
    ck, config, itos = _load_folder(path, 'lm.pth', map_location)
    model = load_model_state(get_language_model(config), ck['model'], Path(path) / 'lm.pth')
    return (model, config, itos, ck['extras']) if with_extras else (model, config, itos)


def load_encoder_folder(path, map_location='cpu'):
    "The encoder part of a model folder: returns (encoder state dict, config, itos)."
    ck, config, itos = _load_folder(path, 'encoder.pth', map_location)
    return ck['model'], config, itos


def save_classifier(path, model, config, itos, classes, settings, spm_model=None):
    "A classifier folder: clas.pth (state dict + config + vocab + classes + settings), vocab.json, config.json."
    path = Path(path)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    extras = {'itos': list(itos), 'classes': [str(c) for c in classes], 'settings': settings}
    save_checkpoint(path / 'clas.pth', sd, config=config.to_dict(), extras=extras)
    atomic_write_json(path / 'vocab.json', {'itos': list(itos)})
    atomic_write_json(path / 'config.json', {**config.to_dict(), 'classes': extras['classes'], **settings})
    if spm_model:  # the tokenizer's model travels with the classifier (see tokenizer_for), as in a model folder
        shutil.copyfile(spm_model, path / 'spm.model')
    return path


def load_classifier(path):
    "Rebuild a saved classifier: (model, config, itos, classes, settings)."
    path = Path(path)
    ck = load_checkpoint(path / 'clas.pth')
    try:
        config = AWDLSTMConfig.from_dict(ck['config'])
        itos, classes, settings = ck['extras']['itos'], ck['extras']['classes'], ck['extras']['settings']
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'clas.pth'} is not a classifier folder's checkpoint: {e}") from None
    if len(itos) != config.vocab_sz:
        raise CheckpointError(f"{path}: vocab has {len(itos)} tokens but the model expects {config.vocab_sz}")
    cfg = clas_config(config, settings.get('drop_mult', 0.5))
    model = get_text_classifier(cfg, len(classes), bptt=settings['bptt'], max_len=settings['max_len'])
    load_model_state(model, ck['model'], path / 'clas.pth')
    return model, config, itos, classes, settings


def tokenizer_for(model_dir, extras):
    "The tokenizer a model folder was trained with (extras['tokenizer'] in lm.pth; spaCy rules if not recorded)."
    cfg = extras.get('tokenizer') or {}
    if cfg.get('kind') == 'spm':
        spm_path = Path(model_dir) / 'spm.model'  # a copy in the folder wins over a recorded path
        if not spm_path.exists() and 'model_path' not in cfg:
            raise FileNotFoundError(f"{model_dir} was trained with SentencePiece but has no spm.model")
        return SentencePieceTokenizer(spm_path if spm_path.exists() else cfg['model_path'])
    return SpacyTokenizer()


def check_spacy_lm(model_dir, extras):
    "Refuse an LM trained on SentencePiece pieces where texts are read with spaCy rules (its vocab would not match)."
    if (extras.get('tokenizer') or {}).get('kind') == 'spm':
        raise ConfigError(
            f"{model_dir}: this LM was trained on SentencePiece pieces, but IMDB is read with spaCy rules, so "
            "almost none of its vocab would match: pretrain with --tokenizer spacy, or use the Python API "
            "(TextClassifier.from_pretrained reads with the LM's own tokenizer)"
        )
