"The classifier's validation reviews come from the training reviews; the test reviews are read once, at the end."

import io
import random
import tarfile

import numpy as np
import pytest

from ulmfit import recipe
from ulmfit.recipe import holdout


def test_holdout_is_disjoint_seeded_and_stratified():
    idx = np.arange(100, 400)
    labels = np.array([0] * 200 + [1] * 100)  # two thirds label 0
    train, valid = holdout(idx, labels, 30, seed=1)
    assert len(valid) == 30 and len(train) == 270
    assert not set(train) & set(valid) and set(train) | set(valid) == set(idx)
    assert list(valid) == sorted(valid) and list(train) == sorted(train)
    assert abs((labels[valid - 100] == 0).sum() - 20) <= 1  # each label in proportion
    assert np.array_equal(holdout(idx, labels, 30, seed=1)[1], valid)
    assert not np.array_equal(holdout(idx, labels, 30, seed=2)[1], valid)
    assert len(holdout(idx, labels, 0)[1]) == 0
    with pytest.raises(ValueError):
        holdout(idx, labels, 300)


def sample_mirror(tmp_path, n=48, n_test=12):
    "An imdb_sample archive: `n` rows, the last `n_test` of them the test split (is_valid)."
    rnd, rows = random.Random(0), ['label,text,is_valid']
    words = 'the a film movie plot actor scene story was is and but very quite'.split()
    for i in range(n):
        text = ' '.join(rnd.choice(words) for _ in range(rnd.randint(6, 20)))
        rows.append(f"{'positive,' + text + ' good' if i % 2 else 'negative,' + text + ' bad'},{i >= n - n_test}")
    csv = '\n'.join(rows).encode()
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    with tarfile.open(mirror / 'imdb_sample.tgz', 'w:gz') as tf:
        info = tarfile.TarInfo('imdb_sample/texts.csv')
        info.size = len(csv)
        tf.addfile(info, io.BytesIO(csv))
    return mirror


TINY = [
    '--min-freq',
    '1',
    '--lm-bs',
    '4',
    '--lm-bptt',
    '8',
    '--lm-epochs',
    '0',
    '--clas-bs',
    '4',
    '--clas-epochs',
    '1,1,1,1',
    '--max-len',
    '32',
    '--bptt',
    '16',
    '--pretrained',
    'none',
]


def test_imdb_validates_on_held_out_training_reviews_and_tests_once(tmp_path, monkeypatch):
    from ulmfit.imdb import main

    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    monkeypatch.setenv('ULMFIT_MIRROR', str(sample_mirror(tmp_path)))
    loaders, evaluated = [], []
    make_loader, predict = recipe.clas_loader, recipe.predict_probs

    def clas_loader(store, idx, bs=64, train=False, *args, **kwargs):
        dl = make_loader(store, idx, bs, train, *args, **kwargs)
        loaders.append((dl, 'train' if train else 'eval', set(np.asarray(idx).tolist()), store))
        return dl

    def predict_probs(learn, dl, *args, **kwargs):
        evaluated.append(dl)
        return predict(learn, dl, *args, **kwargs)

    monkeypatch.setattr(recipe, 'clas_loader', clas_loader)
    monkeypatch.setattr(recipe, 'predict_probs', predict_probs)
    assert (
        main(
            [
                '--preset',
                'tiny',
                '--runs',
                str(tmp_path / 'runs'),
                '--clas-valid-docs',
                '8',
                '--train-docs',
                '20',
                *TINY,
            ]
        )
        is not None
    )
    store = loaders[0][3]
    test = set(store.labeled_idx('valid').tolist())
    train_all = set(store.labeled_idx('train').tolist())
    (train_dl, _, train, _), (valid_dl, _, valid, _), (test_dl, _, tested, _) = loaders
    assert len(valid) == 8 and valid <= train_all and not train & valid
    assert len(train) == 20 and train <= train_all - valid  # train_docs draws from the rest
    assert not test & (train | valid)
    assert evaluated == [test_dl] and tested == test  # the test set: once, all of it, at the end
    labels = store.labels[sorted(valid)]
    assert (labels == 0).sum() == 4  # stratified: half of each label, as in the training reviews


def test_holding_out_every_training_review_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from ulmfit.__main__ import main

    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    monkeypatch.setenv('ULMFIT_MIRROR', str(sample_mirror(tmp_path)))
    assert main(['imdb', '--preset', 'tiny', '--runs', str(tmp_path / 'runs'), '--clas-valid-docs', '36', *TINY]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert err[-1].startswith('error: clas_valid_docs: 36 would leave none of the 36')
    # found once the reviews are read, before the LM is fine-tuned, and no run folder is left behind
    assert 'epoch' not in out.out + out.err and not list((tmp_path / 'runs').glob('*'))


def test_a_resumed_run_trains_the_classifier_on_the_same_reviews(tmp_path, monkeypatch):
    import shutil

    from ulmfit.imdb import main

    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    monkeypatch.setenv('ULMFIT_MIRROR', str(sample_mirror(tmp_path)))
    trained, make_loader = [], recipe.clas_loader

    def clas_loader(store, idx, bs=64, train=False, *args, **kwargs):
        if train:
            trained.append(sorted(np.asarray(idx).tolist()))
        return make_loader(store, idx, bs, train, *args, **kwargs)

    monkeypatch.setattr(recipe, 'clas_loader', clas_loader)
    args = ['--preset', 'tiny', '--runs', str(tmp_path / 'runs'), '--name', 'r', '--lm-docs', '20']
    main(
        [
            *args,
            '--clas-valid-docs',
            '8',
            '--train-docs',
            '12',
            *TINY,
            '--lm-frozen-epochs',
            '0',
            '--clas-epochs',
            '1,0,0,0',
        ]
    )
    run = tmp_path / 'runs' / 'r'
    shutil.rmtree(run / 'clas_fwd')  # as if the run had stopped after LM fine-tuning
    main(['--resume', str(run)])  # reuses the fine-tuned LM, then trains the classifier again
    assert len(trained) == 2 and len(trained[0]) == 12 and trained[1] == trained[0]
    saved = (run / 'clas_fwd' / 'clas.pth').stat().st_mtime_ns
    (run / 'metrics.json').unlink()
    main(['--resume', str(run)])  # both stages done: the saved classifier is only evaluated
    assert (run / 'clas_fwd' / 'clas.pth').stat().st_mtime_ns == saved and (run / 'metrics.json').exists()
