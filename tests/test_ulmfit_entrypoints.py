"Entry points on tiny synthetic corpora: pretrain writes a loadable model folder, generation reads it, DDP = 1 process."

import json
import os
import random
import socket

import pytest
import torch
import torch.multiprocessing as mp

import ulmfit.__main__ as ulmfit_cli
from common.config import resolve_config
from ulmfit.generate import generate
from ulmfit.model_io import load_model_folder
from ulmfit.pretrain import PRESETS, SETTINGS, pretrain
from ulmfit.store import spm_key

WORDS = 'the cat dog sat on a mat and ran to house tree sun moon big small red blue'.split()


def write_corpus(path, n_docs, seed):
    rnd = random.Random(seed)
    docs = [
        '\n'.join(' '.join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 20))).capitalize() + '.' for _ in range(3))
        for _ in range(n_docs)
    ]
    path.write_text('\n\n'.join(docs) + '\n')
    return path


def tiny_cfg(tmp_path, **over):
    corpus = write_corpus(tmp_path / 'train.txt', 60, 0)
    valid = write_corpus(tmp_path / 'valid.txt', 6, 1)
    return resolve_config(
        SETTINGS,
        PRESETS,
        'tiny',
        {
            'corpus': str(corpus),
            'valid': str(valid),
            'max_docs': 0,
            'max_valid_docs': 0,
            'min_freq': 1,
            'bs': 4,
            'bptt': 8,
            'runs': str(tmp_path / 'runs'),
            'n_workers': 1,
            **over,
        },
    )


def test_pretrain_writes_loadable_model_folder_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    run = pretrain(tiny_cfg(tmp_path))
    metrics = json.loads((run / 'metrics.json').read_text())
    assert metrics['perplexity'] < 40  # a vocab of ~30 words: uniform guessing would be ~30+
    assert (run / 'config.json').exists() and (run / 'metrics.jsonl').exists()
    assert (run / 'checkpoints' / 'last.pth').exists() and any((run / 'plots').iterdir())
    model, config, itos = load_model_folder(run / 'model')
    assert config.vocab_sz == len(itos) and 'cat' in itos
    text = generate(run / 'model', 'the cat', words=12, seed=0)
    assert isinstance(text, str) and text.lower().startswith('the cat') and len(text.split()) >= 8
    # a second run never overwrites the first
    run2 = pretrain(tiny_cfg(tmp_path, dry_run=True))
    assert run2 != run and (run / 'model' / 'lm.pth').exists()


def _ddp_worker(rank, world, port, cfg, data_root):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
        ULMFIT_DATA=data_root,
    )
    torch.set_num_threads(1)
    from common.distributed import cleanup_distributed, setup_distributed

    r, ws = setup_distributed('gloo')
    pretrain(cfg, r, ws)
    cleanup_distributed()


@pytest.mark.slow  # two spawned processes
def test_two_process_pretraining_matches_one(tmp_path, monkeypatch):
    data_root = str(tmp_path / 'data')
    monkeypatch.setenv('ULMFIT_DATA', data_root)
    # No dropout and fixed bptt: the per-rank random draws are then the only difference, and there are none.
    cfg = tiny_cfg(tmp_path, drop_mult=0.0, var_bptt=False, epochs=1, checkpoint_minutes=0.0)
    single = pretrain({**cfg, 'name': 'single'})
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, {**cfg, 'name': 'ddp'}, data_root), nprocs=2, join=True)
    a, _, _ = load_model_folder(single / 'model')
    b, _, _ = load_model_folder(tmp_path / 'runs' / 'ddp' / 'model')
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), k
    # rank 0 reports the validation loss of the whole stream, not of its own half of the rows
    m1, m2 = (json.loads((d / 'metrics.json').read_text()) for d in (single, tmp_path / 'runs' / 'ddp'))
    assert abs(m1['valid_loss'] - m2['valid_loss']) < 1e-4


def _main(argv):
    "The command line; a Ctrl-C that escapes it is a failure here, not the end of the test session."
    try:
        return ulmfit_cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail('KeyboardInterrupt escaped the command')


def _cli(tmp_path, *extra):
    corpus = write_corpus(tmp_path / 'train.txt', 60, 0)
    valid = write_corpus(tmp_path / 'valid.txt', 6, 1)
    return [
        'pretrain',
        '--preset',
        'tiny',
        '--corpus',
        str(corpus),
        '--valid',
        str(valid),
        '--max-docs',
        '0',
        '--max-valid-docs',
        '0',
        '--min-freq',
        '1',
        '--bs',
        '4',
        '--bptt',
        '8',
        '--runs',
        str(tmp_path / 'runs'),
        '--n-workers',
        '1',
        *extra,
    ]


def test_ctrl_c_in_pretrain_checkpoints_prints_resume_and_resume_finishes(tmp_path, monkeypatch, capsys):
    import ulmfit.pretrain as pretrain_mod
    from common.checkpoint import load_checkpoint
    from common.runs import RunLogger

    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))

    class CtrlC(RunLogger):
        def after_batch(self):
            if self.learn.training and self.learn.train_iter == 3:
                raise KeyboardInterrupt()

    monkeypatch.setattr(pretrain_mod, 'RunLogger', CtrlC)
    assert _main(_cli(tmp_path)) == 130
    run = tmp_path / 'runs' / 'lm-tiny'
    err = capsys.readouterr().err
    assert f'resume with: python -m ulmfit pretrain --resume {run}' in err and 'Traceback' not in err
    ts = load_checkpoint(run / 'checkpoints' / 'last.pth')['train_state']
    assert (ts['epoch'], ts['iter'], ts['train_iter']) == (0, 3, 3)
    monkeypatch.setattr(pretrain_mod, 'RunLogger', RunLogger)
    assert ulmfit_cli.main(['pretrain', '--resume', str(run), '--max-minutes', '30']) == 0
    assert 'resuming from' in capsys.readouterr().out
    assert json.loads((run / 'metrics.json').read_text())['epochs_done'] == 1
    assert len((run / 'metrics.jsonl').read_text().splitlines()) == 1
    assert json.loads((run / 'config.json').read_text())['max_minutes'] == 0.0  # the saved config is not rewritten


def test_resume_refuses_settings_it_cannot_change(tmp_path, capsys):
    run = tmp_path / 'runs' / 'r'
    (run / 'checkpoints').mkdir(parents=True)
    (run / 'checkpoints' / 'last.pth').write_bytes(b'x')
    (run / 'config.json').write_text('{"lr": 0.01, "bs": 16, "corpus": "c.txt"}')
    assert ulmfit_cli.main(['pretrain', '--resume', str(run), '--lr', '0.1', '--bs', '8', '--corpus', 'c.txt']) == 2
    assert (
        '--lr, --bs can\'t change (only --max-minutes, --checkpoint-minutes, --n-workers can)'
        in capsys.readouterr().err
    )  # the same value as the run's (--corpus c.txt) is no change


def test_pretrain_offers_errors_replace(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    argv = _cli(tmp_path, '--dry-run', 'true')
    with open(tmp_path / 'train.txt', 'ab') as f:
        f.write(b'\n\nThe cat \xff sat.\n')
    assert ulmfit_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert 'train.txt: undecodable bytes' in err and '--errors replace' in err
    assert ulmfit_cli.main(argv + ['--errors', 'replace']) == 0


def test_sentencepiece_prepare_and_pretrain(tmp_path, monkeypatch, capsys):
    from ulmfit.prepare import prepare_dataset

    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    corpus = write_corpus(tmp_path / 'c.txt', 40, 3)
    assert (
        ulmfit_cli.main(
            [
                'prepare',
                '--corpus',
                str(corpus),
                '--tokenizer',
                'spm',
                '--spm-vocab-size',
                '60',
                '--n-workers',
                '1',
                '--min-freq',
                '1',
            ]
        )
        == 0
    )
    store = prepare_dataset(None, [str(corpus)], 'spm', min_freq=1, n_workers=1, spm_vocab_size=60, progress=False)
    assert len(store) == 40 and store.meta['tokenizer']['kind'] == 'spm'
    args = _cli(
        tmp_path, '--tokenizer', 'spm', '--max-vocab', '80', '--dry-run', 'true', '--snapshot-mtokens', '0.00003'
    )
    assert ulmfit_cli.main(args) == 0
    assert ulmfit_cli.main(args) == 0  # a second run finds the same SentencePiece model
    assert len(list((tmp_path / 'data' / 'cache').glob('spm-*'))) == 2  # prepare's (60 pieces) and pretrain's (80)
    # the key does not depend on the process (a salted hash() would differ in the next run and on other ranks)
    assert spm_key({'reader': 'text', 'files': [['/c.txt', 10, 0]]}, 80) == '07df66d9f31cb7ac8359'
    model = tmp_path / 'runs' / 'lm-tiny' / 'model'
    assert (model / 'spm.model').exists()
    assert generate(model, 'the cat', words=3, seed=0).lower().startswith('the cat')
    # a snapshot (after the first batch of 32 tokens) tokenizes text as its model was trained, too
    snapshot = model.parent / 'snapshots' / '3e-05M'
    assert generate(snapshot, 'the cat', words=3, seed=0).lower().startswith('the cat')
    # the API reads texts with the LM's own SentencePiece model; imdb (spaCy rules) refuses it in one line
    from ulmfit.api import TextClassifier
    from ulmfit.tokenize import SentencePieceTokenizer

    assert isinstance(TextClassifier.from_pretrained(model, verbose=False).tok, SentencePieceTokenizer)
    from test_imdb_holdout import sample_mirror

    monkeypatch.setenv('ULMFIT_MIRROR', str(sample_mirror(tmp_path)))
    capsys.readouterr()
    args = ['imdb', '--preset', 'tiny', '--pretrained', str(model), '--runs', str(tmp_path), '--clas-valid-docs', '8']
    assert ulmfit_cli.main(args) == 2  # the sample's 36 training reviews: hold out fewer than tiny's 100
    assert 'this LM was trained on SentencePiece pieces' in capsys.readouterr().err


def test_ctrl_c_in_imdb_names_the_resume_command(tmp_path, monkeypatch, capsys):
    import ulmfit.imdb as imdb

    class Store(list):
        label_names, vocab, n_tokens, path = ['neg', 'pos'], [], 0, tmp_path

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(imdb, 'imdb_store', lambda cfg: (Store(), 'test'))
    monkeypatch.setattr(imdb, 'clas_split', lambda *args: None)  # the stub store has no labels to hold out
    monkeypatch.setattr(imdb, 'one_direction', ctrl_c)
    assert _main(['imdb', '--preset', 'tiny', '--runs', str(tmp_path / 'runs')]) == 130
    run = tmp_path / 'runs' / 'imdb-tiny'
    assert f'resume with: python -m ulmfit imdb --resume {run}' in capsys.readouterr().err


def test_imdb_resume_refuses_settings_it_cannot_change(tmp_path, capsys):
    run = tmp_path / 'r'
    run.mkdir()
    (run / 'config.json').write_text('{"clas_lr": 0.02, "max_vocab": 60000}')
    assert ulmfit_cli.main(['imdb', '--resume', str(run), '--clas-lr', '0.1', '--max-vocab', '60000']) == 2
    assert "--clas-lr can't change (only --budget-minutes can)" in capsys.readouterr().err
    assert ulmfit_cli.main(['imdb', '--resume', str(tmp_path / 'none')]) == 2
    assert 'nothing to resume' in capsys.readouterr().err


def test_imdb_refuses_a_wrong_stage_count_before_any_work(tmp_path, capsys):
    args = ['imdb', '--clas-epochs', '1,1', '--runs', str(tmp_path / 'runs')]
    assert ulmfit_cli.main(args) == 2
    assert 'clas_epochs: [1, 1] must give 4 stages' in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()


def test_pretrain_validates_wikitext_on_its_valid_split_and_other_corpora_on_their_own_docs(tmp_path, monkeypatch):
    from ulmfit.datasets import WikiTextReader
    from ulmfit.pretrain import resolve_corpora

    mirror = tmp_path / 'mirror' / 'wikitext-103'
    mirror.mkdir(parents=True)
    (mirror / 'wiki.valid.tokens').write_text(' = V = \n valid text \n')
    monkeypatch.setenv('ULMFIT_MIRROR', str(tmp_path / 'mirror'))
    (tmp_path / 'wiki.train.tokens').write_text(' = T = \n train text \n')
    (tmp_path / 'mine.txt').write_text('my own text\nmore of it\n')
    cfg = dict(valid='', errors='strict', max_docs=0, max_valid_docs=0)
    _, valid, _ = resolve_corpora({**cfg, 'corpus': str(tmp_path / 'wiki.train.tokens')})
    assert isinstance(valid, WikiTextReader) and valid.files == [mirror / 'wiki.valid.tokens']
    assert resolve_corpora({**cfg, 'corpus': str(tmp_path / 'mine.txt')})[1] is None  # 1% of its own documents
