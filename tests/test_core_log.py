import io

import pytest
from core_utils import synth_learner

from common.log import log, set_verbosity, show_progress
from common.recorder import ProgressCallback
from common.stopping import TimeBudget


@pytest.fixture(autouse=True)
def _normal():
    yield
    set_verbosity('normal')


def test_levels_and_streams(capsys):
    log.info('hello %d', 1)
    log.debug('hidden')
    log.warning('careful')
    out, err = capsys.readouterr()
    assert out == 'hello 1\n' and err == 'careful\n'
    set_verbosity('verbose')
    log.debug('shown')
    assert capsys.readouterr().out == 'shown\n'
    set_verbosity('quiet')
    log.info('hidden')
    log.warning('still shown')
    out, err = capsys.readouterr()
    assert out == '' and err == 'still shown\n' and not show_progress()


def test_other_ranks_keep_quiet_but_warn(capsys, monkeypatch):
    monkeypatch.setenv('RANK', '1')
    log.info('rank 0 only')
    log.warning('every rank')
    out, err = capsys.readouterr()
    assert out == '' and err == 'every rank\n' and not show_progress()


def test_unknown_verbosity_is_refused():
    with pytest.raises(ValueError, match='verbosity must be one of'):
        set_verbosity('loud')


def test_training_output_follows_the_verbosity(capsys):
    for level, shown in (('quiet', False), ('normal', True)):
        set_verbosity(level)
        table = io.StringIO()
        learn = synth_learner(n=32, bs=16, cbs=[ProgressCallback(file=table)])
        learn.fit(1)
        learn.fit(1, cbs=[TimeBudget(0.0)])
        assert ('train_loss' in table.getvalue()) == shown  # the per-epoch table
        assert ('time budget of 0.0 min reached' in capsys.readouterr().out) == shown
