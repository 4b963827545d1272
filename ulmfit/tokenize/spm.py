"SentencePiece (unigram or BPE) behind the same pre-rules and specials as the spaCy path."

import hashlib
from functools import cached_property
from itertools import islice
from pathlib import Path

import sentencepiece as spm

from .rules import BOS, EOS, PAD, SPECIALS, UNK, apply_pre_rules, token_id


class SentencePieceTokenizer:
    "Pre-rules + a SentencePiece model (unigram or BPE), same specials; `tok(text) -> list[str]`."

    kind = 'spm'

    def __init__(self, model_path, include_bos=True, include_eos=False):
        self.model_path, self.include_bos, self.include_eos = str(model_path), include_bos, include_eos

    @classmethod
    def train(
        cls,
        texts,
        out_dir,
        vocab_sz=15000,
        model_type='unigram',
        max_sentences=1_000_000,
        char_coverage=0.99999,
        **kwargs,
    ):
        "Train a model on `texts` (a sample of the corpus), write `out_dir/spm.model`, return the tokenizer."
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        raw = out_dir / 'spm_train.txt'
        with open(raw, 'w', encoding='utf-8') as f:
            f.writelines(apply_pre_rules(t).replace('\n', ' ') + '\n' for t in islice(texts, max_sentences))
        # Our specials are user-defined symbols so they are never split; SentencePiece's own unk/pad/bos/eos are ours.
        ours = dict(unk_piece=UNK, pad_piece=PAD, bos_piece=BOS, eos_piece=EOS, unk_id=0, pad_id=1, bos_id=2, eos_id=3)
        spm.SentencePieceTrainer.train(
            input=str(raw),
            model_prefix=str(out_dir / 'spm'),
            vocab_size=vocab_sz,
            model_type=model_type,
            character_coverage=char_coverage,
            **ours,
            user_defined_symbols=SPECIALS[4:],
            hard_vocab_limit=False,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            minloglevel=2,
            **kwargs,
        )
        raw.unlink()
        return cls(out_dir / 'spm.model')

    def config(self):
        h = hashlib.sha256(Path(self.model_path).read_bytes()).hexdigest()
        return dict(kind=self.kind, model_sha256=h, include_bos=self.include_bos, include_eos=self.include_eos)

    def __getstate__(self):  # only the settings: the SentencePiece processor is loaded again after unpickling
        return dict(model_path=self.model_path, include_bos=self.include_bos, include_eos=self.include_eos)

    @cached_property
    def sp(self):
        return spm.SentencePieceProcessor(model_file=self.model_path)

    def __call__(self, text):
        toks = self.sp.encode(apply_pre_rules(text), out_type=str)
        return ([BOS] if self.include_bos else []) + toks + ([EOS] if self.include_eos else [])

    def encode(self, text, stoi, itos):
        return [token_id(stoi, itos, t) for t in self(text)]

    # The batch interface the parallel runner calls (the spaCy tokenizer's, which batches for speed).
    def batch(self, texts):
        return [self(t) for t in texts]

    def encode_batch(self, texts, stoi, itos):
        return [self.encode(t, stoi, itos) for t in texts]
