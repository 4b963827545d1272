"Checkpoints: round trip, safe loading, clear errors; resume equivalence; run folders and configs."

import errno
import json
import os
import pickle
import stat

import pytest
import torch
from core_utils import TwoLayer, synth_learner

from common.checkpoint import (
    CheckpointError,
    DiskFullError,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
    temp_files,
)
from common.cli import Interrupted
from common.config import Setting, parse_run_config, resolve_config
from common.events import Callback, CancelFitException
from common.runs import RunLogger, new_run_dir, write_json
from common.stopping import CheckpointCallback


def test_round_trip(tmp_path):
    learn = synth_learner(n=64)
    learn.fit(1)
    p = learn.save(tmp_path / 'a.pth', config={'nh': 8}, extras={'vocab': ['a', 'b']})
    ck = load_checkpoint(p)
    assert ck['config'] == {'nh': 8} and ck['extras']['vocab'] == ['a', 'b'] and ck['opt'] is not None
    other = synth_learner(n=64, seed=1)
    other.load(p)
    for a, b in zip(learn.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(f.name.endswith('.tmp') for f in tmp_path.iterdir())


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_refuses_pickle_with_code(tmp_path):
    p = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'payload': Evil()}, p)
    with pytest.raises(CheckpointError, match='evil.pth'):
        load_checkpoint(p)


def test_truncated_and_missing_files(tmp_path):
    p = tmp_path / 'ok.pth'
    save_checkpoint(p, TwoLayer().state_dict())
    data = p.read_bytes()
    bad = tmp_path / 'cut.pth'
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='cut.pth'):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'nope.pth')
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        load_checkpoint(tmp_path / 'empty.pth')


def test_shape_mismatch_names_file_and_key(tmp_path):
    p = save_checkpoint(tmp_path / 'wide.pth', TwoLayer(nh=16).state_dict())
    learn = synth_learner()
    with pytest.raises(CheckpointError, match=r'wide.pth[\s\S]*body.0.weight'):
        learn.load(p)


class Interrupt(Callback):
    "Simulates a crash right after a mid-epoch checkpoint."

    order = 80

    def __init__(self, at_iter):
        self.at = at_iter

    def after_batch(self):
        if self.learn.training and self.learn.train_iter == self.at:
            self.learn.checkpoint.save_now()
            raise CancelFitException()


@pytest.mark.parametrize('stop_at', [5, 16 + 7, 32])  # mid epoch 1, mid epoch 2, an epoch boundary
def test_resume_matches_uninterrupted(tmp_path, stop_at):
    ref = synth_learner(n=256, bs=16, seed=3)
    ref.fit_one_cycle(3, 1e-2)
    ck = tmp_path / 'last.pth'
    a = synth_learner(n=256, bs=16, seed=3)
    a.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(ck, every_epoch=(stop_at % 16 == 0)), Interrupt(stop_at)])
    torch.manual_seed(1234)  # a fresh process: different model init and RNG
    b = synth_learner(n=256, bs=16, seed=99)
    b.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(ck)], resume=ck)
    for (k, x), y in zip(ref.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k
    assert [r['epoch'] for r in b.recorder.history] == [1, 2, 3]


class StopAtEpochEnd(Callback):
    "Simulates a crash right after the checkpoint of the first epoch's end."

    order = 80  # after CheckpointCallback (70) saved it

    def after_epoch(self):
        raise CancelFitException()


def test_resume_from_an_epoch_end_checkpoint_matches_uninterrupted(tmp_path):
    ref = synth_learner(n=256, bs=16, seed=3)
    ref.fit_one_cycle(3, 1e-2)
    ck = tmp_path / 'last.pth'
    synth_learner(n=256, bs=16, seed=3).fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(ck), StopAtEpochEnd()])
    assert load_checkpoint(ck)['train_state']['iter'] == 0
    torch.manual_seed(1234)
    b = synth_learner(n=256, bs=16, seed=99)
    b.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(ck)], resume=ck)
    for (k, x), y in zip(ref.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k  # before the fix: the next epoch's data order came out different


def test_resume_needs_training_position(tmp_path):
    p = save_checkpoint(tmp_path / 'plain.pth', TwoLayer().state_dict())
    with pytest.raises(ValueError, match='no training position'):
        synth_learner().fit(1, resume=p)


def test_config_presets_and_overrides(capsys):
    S = {
        'lr': Setting(1e-3, 'learning rate'),
        'epochs': Setting(1, 'epochs'),
        'name': Setting('run', 'name'),
        'precision': Setting('fp32', 'precision', ('fp32', 'bf16', 'fp16')),
    }
    P = {'tiny': {'epochs': 1}, 'cpu': {'epochs': 3}, 'paper': {'epochs': 10, 'lr': 1e-2}}
    cfg = parse_run_config(['--preset', 'paper', '--lr', '0.5', '--name', 'x'], S, P, 'prog', 'desc')
    assert cfg == {'lr': 0.5, 'epochs': 10, 'name': 'x', 'precision': 'fp32', 'preset': 'paper'}
    with pytest.raises(SystemExit):
        parse_run_config(['--lrr', '1'], S, P, 'prog', 'desc')
    assert 'lrr' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_run_config(['--precision', 'fp8'], S, P, 'prog', 'desc')
    with pytest.raises(ValueError, match='unknown config key'):
        resolve_config(S, {'tiny': {'epoch': 1}}, 'tiny')
    with pytest.raises(ValueError, match='unknown preset'):
        resolve_config(S, P, 'huge')


def test_run_dirs_never_overwrite(tmp_path):
    a = new_run_dir('exp', tmp_path)
    (a / 'config.json').write_text('{"mine": 1}')
    b = new_run_dir('exp', tmp_path)
    assert a != b and b.name == 'exp-2' and json.loads((a / 'config.json').read_text()) == {'mine': 1}


def test_run_logger_writes_metrics_and_plots(tmp_path):
    d = new_run_dir('r', tmp_path)
    learn = synth_learner(n=64, cbs=[RunLogger(d)])
    learn.fit(2)
    rows = [json.loads(line) for line in (d / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [1, 2] and 'valid_loss' in rows[0]
    assert (d / 'plots' / 'train_loss.png').exists() and (d / 'plots' / 'train_sched.png').exists()


def test_pickle_module_is_not_needed_to_load(tmp_path):
    # A checkpoint holds only plain data: loading it with a bare unpickler must not import project classes.
    learn = synth_learner(n=64)
    p = learn.save(tmp_path / 'c.pth', config={'a': 1})
    with open(p, 'rb') as f:
        assert f.read(2) == b'PK'  # torch's zip format
    assert isinstance(pickle, object)


class CtrlC(Callback):
    "Raises KeyboardInterrupt at training batch `at` (counted over the fit), as Ctrl-C would."

    order = 80

    def __init__(self, at, event='after_batch'):
        self.at = at
        setattr(self, event, self._fire)

    def _fire(self):
        done = self.learn.train_iter if self.learn.training else -1
        if done == self.at or (not self.learn.training and self.at == 'valid'):
            raise KeyboardInterrupt()


@pytest.mark.parametrize('stop_at', [5, 16 + 7])
def test_ctrl_c_saves_a_checkpoint_and_resume_matches_uninterrupted(tmp_path, stop_at):
    ref = synth_learner(n=256, bs=16, seed=3)
    ref.fit_one_cycle(3, 1e-2)
    ck = tmp_path / 'last.pth'
    a = synth_learner(n=256, bs=16, seed=3)
    with pytest.raises(KeyboardInterrupt, match=f'batch {stop_at % 16}: .*last.pth') as e:
        a.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(ck, every_epoch=False), CtrlC(stop_at)])
    assert (
        isinstance(e.value, Interrupted)
        and e.value.checkpoint == ck
        and load_checkpoint(ck)['train_state']['iter'] == stop_at % 16
    )
    torch.manual_seed(1234)
    b = synth_learner(n=256, bs=16, seed=99)
    b.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(ck)], resume=ck)
    for (k, x), y in zip(ref.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k
    assert [r['epoch'] for r in b.recorder.history] == [1, 2, 3]


@pytest.mark.parametrize('event,at', [('after_loss', 21), ('after_batch', 'valid')])
def test_ctrl_c_mid_batch_or_in_validation_resumes_the_same_schedule(tmp_path, event, at):
    ck = tmp_path / 'last.pth'
    a = synth_learner(n=256, bs=16, seed=3)
    with pytest.raises(KeyboardInterrupt) as e:
        a.fit_one_cycle(2, 1e-2, cbs=[CheckpointCallback(ck, every_epoch=False), CtrlC(at, event)])
    assert isinstance(e.value, Interrupted)
    ts = load_checkpoint(ck)['train_state']
    assert (ts['epoch'], ts['iter']) == ((1, 5) if at == 21 else (0, 16))  # a cut batch is trained again
    b = synth_learner(n=256, bs=16, seed=99)
    b.fit_one_cycle(2, 1e-2, cbs=[CheckpointCallback(ck)], resume=ck)
    assert b.train_iter == 32 and [r['epoch'] for r in b.recorder.history] == [1, 2]


def test_ctrl_c_before_a_batch_is_under_way_trains_that_batch_again(tmp_path):
    class EarlyCtrlC(CtrlC):
        order = -25  # in `before_batch`, before any other callback has seen the batch

    ck = tmp_path / 'last.pth'
    cbs = [CheckpointCallback(ck, every_epoch=False), EarlyCtrlC(21, 'before_batch')]
    with pytest.raises(Interrupted):
        synth_learner(n=256, bs=16).fit(2, cbs=cbs)
    ts = load_checkpoint(ck)['train_state']
    assert (ts['epoch'], ts['iter'], ts['train_iter']) == (1, 5, 21)


def test_ctrl_c_without_a_checkpoint_callback_is_a_plain_interrupt():
    with pytest.raises(KeyboardInterrupt) as e:
        synth_learner().fit(1, cbs=[CtrlC(2)])
    assert not isinstance(e.value, Interrupted)


def test_disk_full_names_the_file_and_leaves_nothing_partial(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path / 'last.pth', TwoLayer().state_dict())
    before = p.read_bytes()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, 'No space left on device')

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, 'fdopen', lambda fd, mode: Full(real_fdopen(fd, mode)))
    for write in (
        lambda: save_checkpoint(p, TwoLayer().state_dict()),  # torch.save: 'unexpected pos ...'
        lambda: write_json(tmp_path / 'metrics.json', {'a': 1}),
    ):
        with pytest.raises(
            DiskFullError, match=r'(last\.pth|metrics\.json): no space left on device \(the disk is full\)'
        ):
            write()
    monkeypatch.undo()
    assert p.read_bytes() == before and sorted(f.name for f in tmp_path.iterdir()) == ['last.pth']


def test_atomic_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = save_checkpoint(tmp_path / 'm.pth', TwoLayer().state_dict())
        plain = tmp_path / 'plain.txt'
        plain.write_text('x')
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_stale_temp_files_are_cleaned_and_rows_agree_with_the_checkpoint(tmp_path):
    class Killed(BaseException):
        "SIGKILL stand-in: nothing runs after it."

    class KillAfterRow(Callback):
        order = 67  # after RunLogger (65) appended the epoch's row, before CheckpointCallback (70) saved it

        def after_epoch(self):
            if self.learn.epoch == 1:
                raise Killed()

    d = new_run_dir('r', tmp_path)
    ck = d / 'checkpoints' / 'last.pth'
    a = synth_learner(n=64, cbs=[RunLogger(d)])
    with pytest.raises(Killed):
        a.fit(3, cbs=[CheckpointCallback(ck), KillAfterRow()])
    stale = ck.parent / '.last.pth.x1y2z3.tmp'  # a kill in the middle of a checkpoint write leaves this
    stale.write_bytes(b'partial')
    rows = lambda: [json.loads(line)['epoch'] for line in (d / 'metrics.jsonl').read_text().splitlines()]  # noqa: E731
    assert rows() == [1, 2]  # epoch 2's row is written, its checkpoint is not
    b = synth_learner(n=64, cbs=[RunLogger(d)])
    b.fit(3, cbs=[CheckpointCallback(ck)], resume=ck)
    assert not stale.exists()
    assert rows() == [1, 2, 3]


def test_atomic_write_json_writes_utf8_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / 'sub' / 'v.json'
    atomic_write_json(p, {'itos': ['café', 'naïve'], 'path': tmp_path})
    assert p.read_bytes() == json.dumps(
        {'itos': ['café', 'naïve'], 'path': str(tmp_path)}, indent=1, ensure_ascii=False
    ).encode('utf-8')
    atomic_write_json(p, [1, 2], indent=None)
    assert p.read_text(encoding='utf-8') == '[1, 2]' and temp_files(p) == []
