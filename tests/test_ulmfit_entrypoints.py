"Entry points on tiny synthetic corpora: pretrain writes a loadable model folder, generation reads it, DDP = 1 process."
import json
import os
import random
import socket

import torch
import torch.multiprocessing as mp

from ulmfit.generate import generate
from ulmfit.model_io import load_model_folder
from ulmfit.pretrain import PRESETS, SETTINGS, pretrain
from common.config import resolve_config

WORDS = 'the cat dog sat on a mat and ran to house tree sun moon big small red blue'.split()


def write_corpus(path, n_docs, seed):
    rnd = random.Random(seed)
    docs = ['\n'.join(' '.join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 20))).capitalize() + '.'
                      for _ in range(3)) for _ in range(n_docs)]
    path.write_text('\n\n'.join(docs) + '\n')
    return path


def tiny_cfg(tmp_path, **over):
    corpus = write_corpus(tmp_path / 'train.txt', 60, 0)
    valid = write_corpus(tmp_path / 'valid.txt', 6, 1)
    return resolve_config(SETTINGS, PRESETS, 'tiny', {
        'corpus': str(corpus), 'valid': str(valid), 'max_docs': 0, 'max_valid_docs': 0, 'min_freq': 1, 'bs': 4,
        'bptt': 8, 'runs': str(tmp_path / 'runs'), 'n_workers': 1, **over})


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
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port), ULMFIT_DATA=data_root)
    torch.set_num_threads(1)
    from common.distributed import cleanup_distributed, setup_distributed
    r, ws = setup_distributed('gloo')
    pretrain(cfg, r, ws)
    cleanup_distributed()


def test_two_process_pretraining_matches_one(tmp_path, monkeypatch):
    data_root = str(tmp_path / 'data')
    monkeypatch.setenv('ULMFIT_DATA', data_root)
    # No dropout and fixed bptt: the per-rank random draws are then the only difference, and there are none.
    cfg = tiny_cfg(tmp_path, drop_mult=0.0, var_bptt=False, epochs=1, checkpoint_minutes=0.)
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
