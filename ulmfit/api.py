"""`TextClassifier`: ULMFiT on your own labelled texts.

    clf = TextClassifier.from_pretrained('runs/lm-cpu/model')   # a model folder (ours or imported from fastai)
    clf = TextClassifier.from_pretrained('fastai-wt103')         # fastai's published WT103 LM (downloaded once)
    clf.fine_tune_lm(texts)                                      # list / Series / DataFrame column / folder of .txt
    clf.fit(df, text_col='text', label_col='label', valid_col='is_valid')
    clf.predict(['great film', 'dull'])                          # [Prediction(label, probs), ...] in input order
    clf.save('my-clf'); TextClassifier.load('my-clf')

Empty texts are predicted as `Prediction(None, {})` with a warning. Texts are read whole; the classifier pools over
the outputs of their last `max_len` tokens, as in training and in fastai.
"""

import functools
import warnings
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.learner import DataLoaders
from common.log import log, quiet, show_progress

from . import recipe
from .awd_lstm import AWDLSTMConfig, get_language_model
from .classifier import encoder_state, fit_thresholds
from .datasets import DataError, TableReader, as_frame, check_labelled, path_kind, reader_for, table_source
from .model_io import load_classifier, load_model_folder, save_classifier, save_model_folder, tokenizer_for
from .pretrained import pretrained_folder
from .store import build_store
from .tokenize import SpacyTokenizer
from .vocab import Vocab

Prediction = namedtuple('Prediction', 'label probs')
# What a saved classifier records of how it reads texts (older folders lack the last three: the defaults hold).
SAVED_SETTINGS = ('multi_label', 'thresholds', 'bptt', 'max_len', 'drop_mult', 'truncate', 'backwards')


def _text_reader(texts, text_col='text'):
    "A reader over texts given as a folder or file of texts (datasets.reader_for), a table's column or a list."
    if isinstance(texts, (str, Path)) and Path(texts).exists() and path_kind(texts) != 'table':
        return reader_for([texts], label_col=None)
    df = as_frame(texts, text_col)
    return TableReader(df[[text_col]].rename(columns={text_col: 'text'}), text_cols='text', valid_col=None)


def _obeys_verbose(method):
    "Run a TextClassifier method without log lines or progress bars unless the classifier is `verbose`."

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with quiet(not self.verbose):
            return method(self, *args, **kwargs)

    return run


class TextClassifier:
    "ULMFiT: a pretrained AWD-LSTM language model, fine-tuned on your texts, then a classifier on top."

    def __init__(
        self,
        lm_state=None,
        config=None,
        itos=None,
        tokenizer=None,
        precision='fp32',
        bs=32,
        bptt=72,
        max_len=72 * 20,
        data_root=None,
        verbose=True,
    ):
        self.lm_state, self.config, self.itos = lm_state, config or AWDLSTMConfig.preset('cpu'), itos
        self.tok = tokenizer or SpacyTokenizer()
        self.precision, self.bs, self.bptt, self.max_len = precision, bs, bptt, max_len
        self.data_root, self.verbose = data_root, verbose
        self.vocab, self.enc_state, self.model, self.classes, self.multi_label = None, None, None, None, False
        self.thresholds, self.truncate, self.backwards = None, 0, False  # imdb's classifiers may read cut or reversed
        self.drop_mult = 0.5  # the classifier's, saved with it

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs):
        "Start from a language-model folder (from `pretrain` or `import-fastai`) or a name such as 'fastai-wt103'."
        folder = pretrained_folder(model_dir, kwargs.get('data_root'))
        model, config, itos, extras = load_model_folder(folder, with_extras=True)
        kwargs.setdefault('tokenizer', tokenizer_for(folder, extras))  # read texts as the LM was trained
        return cls(lm_state=model.state_dict(), config=config, itos=itos, **kwargs)

    # ---- stage 2: the language model ----------------------------------------------------------------
    def _store(self, reader, name, vocab=None):
        return build_store(reader, self.tok, vocab=vocab, root=self.data_root, progress=show_progress(), name=name)

    def _new_vocab(self, texts, text_col='text'):
        "Take the vocab of `texts` and re-index the pretrained LM to it; (their store, the LM state or None)."
        store = self._store(_text_reader(texts, text_col), 'texts')
        self.vocab, state = store.vocab, None
        if self.lm_state is None:
            warnings.warn(
                'no pretrained language model: training from scratch (expect much lower accuracy)', stacklevel=4
            )
        else:
            state, n = recipe.match_embeds(self.lm_state, self.itos, self.vocab.itos)
            log.info(f'vocab transfer: {n:,} of {len(self.vocab):,} tokens found in the pretrained vocab')
        self.itos, self.config = list(self.vocab.itos), replace(self.config, vocab_sz=len(self.vocab))
        self.enc_state = encoder_state(state) if state is not None else None
        return store, state

    @_obeys_verbose
    def fine_tune_lm(
        self,
        texts,
        text_col='text',
        frozen_epochs=1,
        epochs=2,
        lr=2e-3,
        frozen_lr=2e-2,
        bs=32,
        bptt=70,
        valid_pct=0.1,
        drop_mult=0.3,
    ):
        "Fine-tune the language model on `texts` (no labels needed); builds the vocab from them."
        store, state = self._new_vocab(texts, text_col)
        dls = recipe.lm_data(store, bs=bs, bptt=bptt, valid_pct=valid_pct)
        kw = dict(precision=self.precision, drop_mult=drop_mult)
        learn = recipe.finetune_lm(state, self.config, dls, frozen_epochs, frozen_lr, epochs, lr, **kw)
        self.lm_state = learn.model.state_dict()
        self.enc_state = encoder_state(self.lm_state)
        self.lm_results = learn.validate()
        return self

    def save_lm(self, path):
        "Write the (fine-tuned) language model as a model folder."
        m = get_language_model(self.config)
        m.load_state_dict(self.lm_state)
        return save_model_folder(path, m, self.config, self.itos)

    # ---- stage 3: the classifier -------------------------------------------------------------------
    @_obeys_verbose
    def fit(
        self,
        data,
        text_col='text',
        label_col='label',
        valid_col=None,
        valid_pct=0.1,
        stages=None,
        label_smoothing=0.0,
        drop_mult=0.5,
        seed=42,
    ):
        "Train the classifier with gradual unfreezing; `label_col` may list 0/1 columns (multi-label)."
        df = as_frame(data, text_col).copy()
        label_cols = [label_col] if isinstance(label_col, str) else list(label_col)
        check_labelled(df, text_col, label_cols, valid_col)
        if valid_col is None:
            df['is_valid'] = np.random.default_rng(seed).random(len(df)) < valid_pct  # a random `valid_pct` held out
            valid_col = 'is_valid'
        self.multi_label = len(label_cols) > 1
        if not self.multi_label:
            labels, valid = df[label_cols[0]], df[valid_col].astype(bool)
            unseen = sorted(map(str, set(labels[valid].dropna()) - set(labels[~valid].dropna())))
            if unseen:
                raise DataError(f"{table_source(df)}: validation labels never seen in training: {unseen}")
        reader = TableReader(
            df, text_cols=text_col, label_cols=label_cols if self.multi_label else label_cols[0], valid_col=valid_col
        )
        if self.vocab is None:  # no LM fine-tuning: the vocab comes from these texts, the LM rows are matched
            self._new_vocab(df, text_col)
        store = self._store(reader, 'labelled', self.vocab)
        self.classes = list(store.label_names)
        tr, va = store.labeled_idx('train'), store.labeled_idx('valid')
        if len(tr) == 0 or len(va) == 0:
            raise DataError(f"need labelled rows in both training ({len(tr)}) and validation ({len(va)})")
        dls = DataLoaders(recipe.clas_loader(store, tr, self.bs, train=True), recipe.clas_loader(store, va, self.bs))
        kw = dict(drop_mult=drop_mult, bptt=self.bptt, max_len=self.max_len, precision=self.precision)
        learn = recipe.clas_learner(self.config, len(self.classes), dls, self.multi_label, label_smoothing, **kw)
        stages = stages or recipe.CLAS_STAGES
        self.stage_times = recipe.train_classifier(learn, self.enc_state, stages)
        self.model, self.drop_mult = learn.model.eval(), drop_mult
        probs, targs = recipe.predict_probs(learn, dls.valid, self.multi_label)
        if self.multi_label:
            self.thresholds = fit_thresholds(probs, targs).tolist()
            hits = (probs >= torch.tensor(self.thresholds)) == targs.bool()
            self.results = {'accuracy_multi': hits.float().mean().item()}
        else:
            self.results = recipe.classification_report(probs, targs, self.classes)
        return self

    # ---- prediction ----------------------------------------------------------------------------------
    def predict(self, texts, bs=64):
        "Labels and probabilities for each text, in input order (internally sorted by length for speed)."
        if isinstance(texts, str):
            raise TypeError(
                "predict() takes a list of texts, not one string (it would classify each character): "
                "use predict([text])"
            )
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"predict() takes strings; not a string at position(s) {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''} (the first is {type(texts[bad[0]]).__name__})"
            )
        if self.model is None:
            raise RuntimeError("the classifier isn't trained: call fit() or TextClassifier.load() first")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            warnings.warn(
                f"{len(empty)} empty or whitespace-only text(s) (first at position {empty[0]}): "
                "predicted as label None",
                stacklevel=2,
            )
        keep = [i for i, t in enumerate(texts) if t.strip()]
        ids = [self.vocab.numericalize(toks) for toks in self.tok.batch([texts[i] for i in keep])]
        if self.backwards:  # as recipe.clas_loader reads for a backward model: reversed, then cut in reading order
            ids = [t[::-1].copy() for t in ids]
        if self.truncate:  # a classifier trained on cut documents (imdb --truncate N) reads them so
            ids = [t[-self.truncate :] for t in ids]
        out = [Prediction(None, {})] * len(texts)
        if not keep:
            return out
        dl = recipe.ids_loader(ids, bs, pad_idx=self.vocab.pad_idx)
        for i, p in zip(keep, recipe.model_probs(self.model, dl, self.multi_label)):
            if self.multi_label:
                label = [str(c) for c, v, t in zip(self.classes, p, self.thresholds) if v >= t]
            else:
                label = str(self.classes[int(p.argmax())])
            out[i] = Prediction(label, {str(c): float(v) for c, v in zip(self.classes, p)})
        return out

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, path, overwrite=False):
        "Write the classifier as one self-contained folder; an existing non-empty folder only with `overwrite=True`."
        if self.model is None:
            raise RuntimeError("nothing to save: the classifier isn't trained")
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
            raise FileExistsError(
                f"{path} exists: choose a new folder, or pass overwrite=True to replace what is in it"
            )
        settings = {k: getattr(self, k) for k in SAVED_SETTINGS} | {'tokenizer': self.tok.config()}
        spm_model = getattr(self.tok, 'model_path', None)  # a SentencePiece model is copied into the folder
        return save_classifier(path, self.model, self.config, self.itos, self.classes, settings, spm_model)

    @classmethod
    def load(cls, path, **kwargs):
        "Load a folder written by `save` (or by `python -m ulmfit imdb`)."
        model, config, itos, classes, settings = load_classifier(path)
        kwargs.setdefault('tokenizer', tokenizer_for(path, settings))  # the tokenizer it was trained with
        clf = cls(config=config, itos=itos, bptt=settings['bptt'], max_len=settings['max_len'], **kwargs)
        clf.model, clf.classes, clf.vocab = model.eval(), classes, Vocab(itos)
        for k in SAVED_SETTINGS:
            setattr(clf, k, settings.get(k, getattr(clf, k)))
        return clf
