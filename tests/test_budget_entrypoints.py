"`--budget-minutes` in `pretrain` and `imdb`: accepted, explained, shared among the stages by one rule."

import json

import pytest

from common.config import resolve_config
from tests.test_imdb_holdout import TINY, sample_mirror
from tests.test_ulmfit_entrypoints import _cli, _main, tiny_cfg
from ulmfit import imdb, pretrain


@pytest.mark.parametrize('mod', [pretrain, imdb])
def test_cli_takes_a_budget_and_help_explains_it(mod, capsys):
    with pytest.raises(SystemExit):
        mod.main(['--help'])
    out = ' '.join(capsys.readouterr().out.split())
    assert '--budget-minutes' in out and 'complete' in out and 'first steps' in out
    assert resolve_config(mod.SETTINGS, mod.PRESETS, 'tiny', {'budget_minutes': 7.5})['budget_minutes'] == 7.5
    assert resolve_config(mod.SETTINGS, mod.PRESETS, 'paper')['budget_minutes'] == 0  # the published recipe
    assert resolve_config(mod.SETTINGS, mod.PRESETS, 'cpu')['budget_minutes'] > 0


def test_the_cpu_presets_share_150_minutes():
    total = sum(resolve_config(m.SETTINGS, m.PRESETS, 'cpu')['budget_minutes'] for m in (pretrain, imdb))
    assert total == 150


def test_imdb_stage_budget_rule():
    cfg = resolve_config(
        imdb.SETTINGS,
        imdb.PRESETS,
        'cpu',
        {
            'budget_minutes': 100.0,
            'budget_split': [0.4, 0.5, 0.1],
            'lm_frozen_epochs': 1,
            'lm_epochs': 3,
            'clas_epochs': [1, 1, 1, 2],
        },
    )
    b = imdb.stage_budget(cfg)
    w = {k: round(v, 6) for k, v in b.weights.items()}
    assert w == {
        'fwd/lm_frozen': 0.1,
        'fwd/lm': 0.3,
        'fwd/clas_0': 0.1,
        'fwd/clas_1': 0.1,
        'fwd/clas_2': 0.1,
        'fwd/clas_3': 0.2,
        'fwd/eval': 0.1,
    }
    assert b.start('fwd/lm_frozen') == pytest.approx(600.0, rel=1e-3)  # 10% of 100 minutes
    both = imdb.stage_budget({**cfg, 'bidirectional': True})
    assert both.start('fwd/lm_frozen') == pytest.approx(300.0, rel=1e-3)  # the directions split it in halves
    with pytest.raises(imdb.ConfigError, match='budget_split'):
        imdb.stage_budget({**cfg, 'budget_split': [0.5, 0.5]})


def test_pretrain_with_a_budget_runs_one_planned_cycle(tmp_path, monkeypatch):
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    run = pretrain.pretrain(tiny_cfg(tmp_path, budget_minutes=0.05, max_minutes=0.0))
    m = json.loads((run / 'metrics.json').read_text())
    assert m['planned_steps'] >= 20 and m['steps'] == m['planned_steps'] and not m['budget_reached']
    assert m['perplexity'] > 0


def test_imdb_with_a_budget_plans_every_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    monkeypatch.setenv('ULMFIT_MIRROR', str(sample_mirror(tmp_path)))
    from ulmfit import recipe

    timed, tested, speed, predict = [], [], recipe.forward_s_per_token, recipe.predict_probs
    monkeypatch.setattr(
        recipe, 'forward_s_per_token', lambda learn, dl: timed.append(dl.dataset.idx) or speed(learn, dl)
    )
    monkeypatch.setattr(recipe, 'predict_probs', lambda learn, dl: tested.append(dl) or predict(learn, dl))
    imdb.main(
        [
            '--preset',
            'tiny',
            '--runs',
            str(tmp_path / 'runs'),
            '--clas-valid-docs',
            '8',
            *TINY,
            '--lm-epochs',
            '1',
            '--budget-minutes',
            '0.2',
        ]
    )
    out = capsys.readouterr().out
    assert out.count('s/step over steps 3-') == 6  # two LM stages, four classifier stages
    assert 'min set aside' in out and 'test accuracy' in out
    # the forward speed is measured on held-out training reviews; the test reviews are still read once
    assert len(timed) == 1 and len(tested) == 1 and not set(timed[0]) & set(tested[0].dataset.idx)
    assert len(timed[0]) == 8 and set(timed[0]) < set(tested[0].dataset.store.labeled_idx('train'))


def test_make_passes_budget():
    import shutil
    import subprocess

    if shutil.which('make') is None:
        pytest.skip('no make')
    out = subprocess.run(
        ['make', '-n', 'lm-pretrain', 'imdb-classify', 'BUDGET=7', 'PRESET=cpu', 'MIRROR='],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert sum('--budget-minutes 7' in line for line in out) == 2


def test_pretrain_resume_keeps_its_plan(tmp_path, monkeypatch, capsys):
    "A run cut after its plan goes on, on resume, to the same planned step, not a new plan."
    from common.checkpoint import load_checkpoint
    from common.runs import RunLogger

    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))

    class CtrlC(RunLogger):
        def after_batch(self):  # Ctrl-C once the plan is made
            if self.learn.training and self.learn.planned_schedule.n_steps is not None:
                raise KeyboardInterrupt()

    monkeypatch.setattr(pretrain, 'RunLogger', CtrlC)
    assert _main(_cli(tmp_path, '--budget-minutes', '0.2')) == 130
    run = tmp_path / 'runs' / 'lm-tiny'
    ts = load_checkpoint(run / 'checkpoints' / 'last.pth')['train_state']
    planned = ts['cbs']['planned_schedule']['n_steps']
    assert planned > ts['train_iter'] >= 20
    monkeypatch.setattr(pretrain, 'RunLogger', RunLogger)
    assert _main(['pretrain', '--resume', str(run)]) == 0
    m = json.loads((run / 'metrics.json').read_text())
    assert m['planned_steps'] == m['steps'] == planned
