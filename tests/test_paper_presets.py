"The `paper` presets are fastai's published recipes (see the comment beside each value); `div` shapes the schedule."

from common.config import resolve_config
from common.schedule import one_cycle
from ulmfit import imdb, pretrain


def test_pretrain_paper_is_train_wt103():
    c = resolve_config(pretrain.SETTINGS, pretrain.PRESETS, 'paper')
    want = dict(
        bs=256,
        bptt=80,
        var_bptt=False,
        epochs=12,
        lr=1e-2,
        drop_mult=0.1,
        wd=0.1,
        div=10.0,
        pct_start=0.3,
        moms=[0.8, 0.7, 0.8],
        clip=0.1,
        precision='fp16',
        alpha=2.0,
        beta=1.0,
    )
    assert {k: c[k] for k in want} == want
    s = one_cycle(c['lr'], c['pct_start'], c['div'])
    assert abs(s(0.0) - 1e-3) < 1e-12 and abs(s(1.0) - 1e-7) < 1e-12  # lr/div up, then down to lr/(div*1e4)


def test_imdb_paper_is_the_fastbook_recipe():
    c = resolve_config(imdb.SETTINGS, imdb.PRESETS, 'paper')
    want = dict(
        lm_bs=128,
        lm_bptt=80,
        lm_drop_mult=0.3,
        lm_frozen_lr=2e-2,
        lm_epochs=10,
        lm_lr=2e-3,
        clas_bs=128,
        bptt=72,
        max_len=1440,
        truncate=0,
        clas_drop_mult=0.5,
        clas_lr=2e-2,
        clas_epochs=[1, 1, 1, 2],
    )
    assert {k: c[k] for k in want} == want
    # the cpu preset keeps reading the last 288 tokens only, by name, until measured
    assert resolve_config(imdb.SETTINGS, imdb.PRESETS, 'cpu')['truncate'] == 288
