"The command lines: every --help works, expected errors are one `error:` line with exit code 2, Ctrl-C exits 130."

import pytest

import ulmfit.__main__ as ulmfit_cli
import vision.__main__ as vision_cli
from common.cli import run_command


@pytest.mark.parametrize('argv', [['--help'], *[[c, '--help'] for c in ulmfit_cli.COMMANDS]])
def test_every_ulmfit_help_exits_0(argv, capsys):
    try:
        rc = ulmfit_cli.main(argv)
    except SystemExit as e:  # argparse's --help
        rc = e.code
    assert rc == 0, capsys.readouterr().err
    assert 'usage' in capsys.readouterr().out


@pytest.mark.parametrize('argv', [['--help'], ['train', '--help'], ['transfer', '--help']])
def test_every_vision_help_exits_0(argv, capsys):
    try:
        rc = vision_cli.main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 0, capsys.readouterr().err


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace('\r', '\n').splitlines() if ln.startswith('error: ') or 'error: ' in ln]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def test_expected_errors_are_one_line_and_exit_2(tmp_path, capsys):
    # a missing model folder (CheckpointError)
    assert ulmfit_cli.main(['generate', '--model', str(tmp_path / 'nope'), 'the']) == 2
    assert str(tmp_path / 'nope') in _one_error_line(capsys)
    # an empty corpus (DataError)
    (tmp_path / 'empty.txt').write_text('  \n\n')
    assert ulmfit_cli.main(['prepare', '--corpus', str(tmp_path / 'empty.txt'), '--data', str(tmp_path)]) == 2
    assert 'empty.txt' in _one_error_line(capsys)
    # a missing file given as a setting
    assert ulmfit_cli.main(['pretrain', '--corpus', str(tmp_path / 'missing.txt')]) == 2
    assert 'missing.txt' in _one_error_line(capsys)
    # a missing CSV
    assert (
        ulmfit_cli.main(
            ['classify', '--csv', str(tmp_path / 'gone.csv'), '--pretrained', 'none', '--runs', str(tmp_path / 'runs')]
        )
        == 2
    )
    assert 'gone.csv' in _one_error_line(capsys)
    # a vision setting
    assert vision_cli.main(['transfer', '--experiments', 'bogus']) == 2
    assert 'bogus' in _one_error_line(capsys)


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path):
    with pytest.raises(Exception, match='nope'):
        ulmfit_cli.main(['generate', '--debug', '--model', str(tmp_path / 'nope'), 'the'])

    def buggy(argv):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        run_command(buggy, [])


def test_ctrl_c_exits_130_with_a_message(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt()

    assert run_command(interrupted, []) == 130
    assert 'interrupted' in capsys.readouterr().err


def test_classify_checks_the_table_before_making_a_run_folder(tmp_path, capsys):
    runs = tmp_path / 'runs'
    csv = tmp_path / 'one.csv'
    csv.write_text('text,label\na good film,pos\nanother good one,pos\n')
    for _ in range(2):
        assert ulmfit_cli.main(['classify', '--csv', str(csv), '--pretrained', 'none', '--runs', str(runs)]) == 2
        assert "one.csv: label column 'label' has 1 class" in _one_error_line(capsys)
    assert (
        ulmfit_cli.main(
            ['classify', '--csv', str(csv), '--label-col', 'stars', '--pretrained', 'none', '--runs', str(runs)]
        )
        == 2
    )
    assert "one.csv: no column 'stars'" in _one_error_line(capsys)
    assert not runs.exists() or not any(runs.iterdir())


def test_predict_checks_the_output_folder_first(tmp_path, capsys, monkeypatch):
    import ulmfit.api

    monkeypatch.setattr(ulmfit.api.TextClassifier, 'load', lambda *a, **k: pytest.fail('loaded the model first'))
    (tmp_path / 'new.csv').write_text('text\nhello\n')
    out = tmp_path / 'no' / 'such' / 'preds.csv'
    assert (
        ulmfit_cli.main(['predict', '--model', str(tmp_path), '--csv', str(tmp_path / 'new.csv'), '--out', str(out)])
        == 2
    )
    assert f"{out.parent} does not exist" in _one_error_line(capsys)


# Every training entry point's --dry-run: synthetic data, a tiny model, a few batches, nothing left behind.
DRY_RUNS = [
    (ulmfit_cli, ['pretrain', '--dry-run', 'true']),
    (ulmfit_cli, ['imdb', '--dry-run', 'true']),
    (ulmfit_cli, ['classify', '--dry-run']),
    (vision_cli, ['train', '--dry-run', 'true']),
    (vision_cli, ['transfer', '--dry-run', 'true']),
]


@pytest.mark.parametrize('cli,argv', DRY_RUNS, ids=[' '.join(a[:1]) for _, a in DRY_RUNS])
def test_every_training_command_has_a_dry_run(cli, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a dry run writes nothing into the working folder (./runs, ./data)
    monkeypatch.delenv('ULMFIT_MIRROR', raising=False)  # nor reads the mirror
    assert cli.main([*argv, '--quiet']) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == ''  # --quiet: warnings only
    assert list(tmp_path.iterdir()) == []


def test_quiet_and_verbose_are_global_flags_and_the_level_is_restored(capsys):
    from common.log import log

    level = log.level
    assert ulmfit_cli.main(['models', '--quiet']) == 0
    assert capsys.readouterr().out == '' and log.level == level
    assert ulmfit_cli.main(['models']) == 0 and 'fastai-wt103' in capsys.readouterr().out
    assert ulmfit_cli.main(['--help']) == 0 and '--quiet' in capsys.readouterr().out


def test_process_setup_comes_before_torch_loads():
    "OMP_WAIT_POLICY only takes effect if set before torch loads libgomp: the front doors must not import torch."
    import subprocess
    import sys

    code = "import sys, ulmfit.__main__, vision.__main__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.strip() == 'False'


def _refuse(argv=None):
    from common.config import ConfigError

    raise ConfigError('lr: must be positive')


def test_dispatch_without_extra_expected_errors(capsys):
    from common.entry import dispatch

    assert dispatch('prog', {'go': ('test_cli:_refuse', 'refuses')}, ['go']) == 2
    assert 'error: lr: must be positive' in capsys.readouterr().err


def test_resume_flags_are_not_abbreviated(tmp_path, capsys):
    # an abbreviation would be taken by argparse but not matched by the resume check, so it is refused outright
    with pytest.raises(SystemExit) as e:
        ulmfit_cli.main(['pretrain', '--resume', str(tmp_path), '--max-min', '60'])
    assert e.value.code == 2 and 'unrecognized arguments: --max-min' in capsys.readouterr().err


def test_classify_leaves_no_run_folder_when_the_split_leaves_a_label_out(tmp_path, capsys):
    import numpy as np

    in_valid = np.random.default_rng(42).random(12) < 0.5  # the split `fit` draws (seed 42, valid_pct 0.5)
    labels = ['pos', 'neg'] * 6
    labels[int(np.flatnonzero(in_valid)[0])] = 'meh'  # only in a validation row
    csv = tmp_path / 'few.csv'
    csv.write_text('text,label\n' + ''.join(f'review number {i},{lb}\n' for i, lb in enumerate(labels)))
    runs = tmp_path / 'runs'
    argv = ['classify', '--csv', str(csv), '--pretrained', 'none', '--valid-pct', '0.5', '--lm-epochs', '0']
    assert ulmfit_cli.main([*argv, '--runs', str(runs)]) == 2
    assert 'meh' in _one_error_line(capsys)
    assert not runs.exists() or not any(runs.iterdir())
