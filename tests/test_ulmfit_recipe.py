"ULMFiT recipe: vocab transfer, gradual unfreezing, a classifier that must read word order, the TextClassifier API."

import random

import numpy as np
import pandas as pd
import pytest
import torch

from common.checkpoint import CheckpointError
from ulmfit import recipe
from ulmfit.api import TextClassifier
from ulmfit.awd_lstm import AWDLSTMConfig, clas_config, get_language_model
from ulmfit.classifier import get_text_classifier
from ulmfit.datasets import DataError
from ulmfit.model_io import load_classifier, load_encoder_folder, load_model_folder, save_model_folder


def test_match_embeds_copies_shared_rows_and_means_new_ones():
    old = ['xxunk', 'xxpad', 'the', 'cat', 'dog']
    new = ['xxunk', 'xxpad', 'dog', 'zebra', 'the', 'yak', 'fish', 'cat']
    m = get_language_model(AWDLSTMConfig.preset('tiny', vocab_sz=len(old)))
    sd = m.state_dict()
    out, n = recipe.match_embeds(sd, old, new)
    assert n == 5
    for key in ('0.embed.emb.weight', '1.decoder.weight', '1.decoder.bias'):
        w_old, w_new = sd[key], out[key]
        assert w_new.shape[0] == len(new)
        for i, t in enumerate(new):
            expected = w_old[old.index(t)] if t in old else w_old.mean(0)
            assert torch.allclose(w_new[i], expected), (key, t)
    assert torch.equal(out['0.rnns.0.module.weight_ih_l0'], sd['0.rnns.0.module.weight_ih_l0'])
    m2 = get_language_model(AWDLSTMConfig.preset('tiny', vocab_sz=len(new)))
    m2.load_state_dict(out)  # fits a model built for the new vocab


def test_gradual_unfreezing_schedule(monkeypatch):
    cfg = AWDLSTMConfig.preset('tiny', vocab_sz=16)
    learn = recipe.clas_learner(cfg, 2, dls=None)
    calls = []

    def fake_fit(n_epoch, lrs, moms=None):
        trainable = [any(p.requires_grad for p in g) for g in learn.layer_groups()]
        calls.append((n_epoch, lrs, trainable))

    monkeypatch.setattr(learn, 'fit_one_cycle', fake_fit)
    recipe.train_classifier(learn, None)
    # groups: embedding, LSTM 0, LSTM 1, head (tiny has 2 layers)
    assert [c[2] for c in calls] == [
        [False, False, False, True],
        [False, False, True, True],
        [False, True, True, True],
        [True, True, True, True],
    ]
    assert [c[0] for c in calls] == [1, 1, 1, 2]
    for (_, lrs, _), top in zip(calls, (2e-2, 1e-2, 5e-3, 1e-3)):
        assert lrs == [top / 2.6**3, top / 2.6**2, top / 2.6, top]


def order_corpus(n, seed):
    "Label 1 when 'alpha' comes before 'omega': every document holds both words, so only order tells."
    rnd = random.Random(seed)
    fill = ['red', 'green', 'blue', 'big', 'small', 'cat', 'dog', 'runs', 'sleeps', 'very']
    rows = []
    for _ in range(n):
        words = [rnd.choice(fill) for _ in range(rnd.randint(4, 10))]
        i, j = sorted(rnd.sample(range(len(words) + 2), 2))
        first, second = ('alpha', 'omega') if rnd.random() < 0.5 else ('omega', 'alpha')
        words.insert(i, first)
        words.insert(j, second)
        rows.append((' '.join(words), 'pos' if first == 'alpha' else 'neg'))
    return pd.DataFrame(rows, columns=['text', 'label'])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('data')
    df = order_corpus(480, 0)
    df['is_valid'] = np.arange(len(df)) >= 400
    config = AWDLSTMConfig(vocab_sz=0, emb_sz=32, n_hid=64, n_layers=2)
    clf = TextClassifier(config=config, bs=32, data_root=root, verbose=False)
    with pytest.warns(UserWarning, match='from scratch'):
        clf.fit(df, valid_col='is_valid', stages=[(0, 8, 1e-2)], drop_mult=0.1)
    return clf, root


def test_classifier_learns_word_order(trained):
    clf, _ = trained
    assert clf.results['accuracy'] > 0.85, clf.results


def test_predict_keeps_input_order_and_handles_empty(trained):
    clf, _ = trained
    texts = [
        'red alpha dog omega',
        '',
        'omega big big big cat sleeps very very small alpha',
        '   ',
        'alpha ' + 'red ' * 3000 + 'omega',
    ]  # very long: the last max_len tokens are read
    with pytest.warns(UserWarning, match='2 empty'):
        preds = clf.predict(texts)
    assert len(preds) == 5
    assert preds[1].label is None and preds[3].label is None and preds[1].probs == {}
    assert preds[0].label == 'pos' and preds[2].label == 'neg'
    assert set(preds[0].probs) == {'neg', 'pos'} and abs(sum(preds[0].probs.values()) - 1) < 1e-5
    # one by one gives the same answers as in a batch sorted by length
    single = [clf.predict([t])[0] for t in (texts[0], texts[2])]
    assert [p.label for p in single] == [preds[0].label, preds[2].label]
    assert single[0].probs['pos'] == pytest.approx(preds[0].probs['pos'], abs=1e-4)


def test_save_load_round_trip(trained, tmp_path):
    clf, _ = trained
    clf.save(tmp_path / 'clf')
    again = TextClassifier.load(tmp_path / 'clf', verbose=False)
    texts = ['red alpha dog omega', 'omega cat alpha']
    assert [p.label for p in again.predict(texts)] == [p.label for p in clf.predict(texts)]


def test_load_rejects_vocab_mismatch(trained, tmp_path):
    clf, _ = trained
    d = clf.save(tmp_path / 'clf')
    import json

    (d / 'config.json').write_text(json.dumps({'tampered': True}))  # the checkpoint, not config.json, is the truth
    load_classifier(d)
    from common.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(d / 'clas.pth')
    ck['extras']['itos'] = ck['extras']['itos'][:-8]
    save_checkpoint(d / 'clas.pth', ck['model'], ck['config'], extras=ck['extras'])
    with pytest.raises(CheckpointError, match='vocab has'):
        load_classifier(d)


def test_fit_errors_name_the_problem(tmp_path):
    clf = TextClassifier(config=AWDLSTMConfig.preset('tiny'), data_root=tmp_path, verbose=False)
    df = pd.DataFrame({'text': ['a b', 'c d', 'e f'], 'label': ['x', 'y', 'z'], 'v': [False, False, True]})
    with pytest.raises(DataError, match="'labels'"):
        clf.fit(df, label_col='labels', valid_col='v')
    with pytest.raises(ValueError, match=r"never seen in training: \['z'\]"):
        clf.fit(df, valid_col='v')
    with pytest.raises(RuntimeError, match="isn't trained"):
        clf.predict(['hello'])


def test_classifier_prediction_ignores_padding():
    torch.manual_seed(0)
    cfg = clas_config(AWDLSTMConfig.preset('tiny', vocab_sz=50))
    m = get_text_classifier(cfg, 3, bptt=8, max_len=40).eval()
    doc = torch.randint(2, 50, (1, 13))
    m[0].reset()
    a = m(doc)
    padded = torch.cat([torch.full((1, 21), cfg.pad_id), doc], 1)
    m[0].reset()
    b = m(padded)
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    assert torch.allclose(a, b, atol=1e-5)


def test_fit_refuses_fewer_than_two_classes(tmp_path):
    clf = TextClassifier(config=AWDLSTMConfig.preset('tiny'), data_root=tmp_path, verbose=False)
    df = pd.DataFrame({'text': ['a b', 'c d', 'e f'], 'stars': ['x', 'x', 'x']})
    with pytest.raises(DataError, match=r"label column 'stars' has 1 class.*at least 2"):
        clf.fit(df, label_col='stars')


def test_table_errors_name_the_file(tmp_path):
    clf = TextClassifier(config=AWDLSTMConfig.preset('tiny'), data_root=tmp_path, verbose=False)
    csv = tmp_path / 'reviews.csv'
    pd.DataFrame({'text': ['a b', 'c d'], 'label': ['x', 'y']}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"reviews\.csv: no column 'sentiment'"):
        clf.fit(csv, label_col='sentiment')
    with pytest.raises(FileNotFoundError, match=r"missing\.csv: file not found"):
        clf.fit(tmp_path / 'missing.csv')
    (tmp_path / 'bad.csv').write_bytes(b'text,label\nok \xff,x\n')
    with pytest.raises(DataError, match=r"bad\.csv: undecodable bytes at byte offset 14.*--errors replace"):
        clf.fit(tmp_path / 'bad.csv')


def test_predict_refuses_a_bare_string_and_non_strings(trained):
    clf, _ = trained
    with pytest.raises(TypeError, match=r'not one string.*predict\(\[text\]\)'):
        clf.predict('good film')
    with pytest.raises(TypeError, match=r'position\(s\) \[1, 3\].*NoneType'):
        clf.predict(['good film', None, 'bad film', 3])
    assert len(clf.predict(['good film'])) == 1


def test_save_refuses_to_overwrite_unless_asked(trained, tmp_path):
    clf, _ = trained
    lm_dir = tmp_path / 'lm'
    config = AWDLSTMConfig.preset('tiny', vocab_sz=12)
    save_model_folder(lm_dir, get_language_model(config), config, [f't{i}' for i in range(12)])
    before = (lm_dir / 'vocab.json').read_bytes()
    with pytest.raises(FileExistsError, match='overwrite=True'):
        clf.save(lm_dir)
    assert (lm_dir / 'vocab.json').read_bytes() == before
    clf.save(lm_dir, overwrite=True)  # asked for: the LM folder's vocab is now the classifier's...
    with pytest.raises(CheckpointError, match=r'vocab\.json: \d+ tokens, but the model.s embedding has 12 rows'):
        load_model_folder(lm_dir)  # ...and loading the LM notices instead of failing later with an IndexError
    with pytest.raises(CheckpointError, match='12 rows'):
        load_encoder_folder(lm_dir)


def test_encoder_state_is_the_encoders_part_of_an_lm_state_and_keeps_an_encoder_state():
    from ulmfit.classifier import encoder_state

    lm = get_language_model(AWDLSTMConfig.preset('tiny', vocab_sz=20))
    enc = encoder_state(lm.state_dict())
    assert enc.keys() == lm[0].state_dict().keys()
    assert all(torch.equal(enc[k], v) for k, v in lm[0].state_dict().items())
    assert encoder_state(enc).keys() == enc.keys()


def test_ids_loader_reads_longest_first_and_in_dataset_order_puts_results_back():
    ids = [np.arange(n) + 2 for n in (3, 7, 1, 5)]  # ids from 2 up: no padding id among them
    dl = recipe.ids_loader(ids, bs=2, pad_idx=1)
    lens = torch.cat([(x != 1).sum(1) for x, _ in dl])  # (4,) in reading order
    assert lens.tolist() == [7, 5, 3, 1]
    assert recipe.in_dataset_order(dl, lens)[0].tolist() == [3, 7, 1, 5]


def test_predict_tokenizes_the_texts_in_one_batch(trained, monkeypatch):
    clf, _ = trained
    calls, batch = [], clf.tok.batch
    monkeypatch.setattr(clf.tok, 'batch', lambda texts: calls.append(len(texts)) or batch(texts))
    with pytest.warns(UserWarning, match='1 empty'):
        preds = clf.predict(['red alpha dog omega', ' ', 'omega cat alpha'])
    assert calls == [2] and preds[1] == (None, {}) and preds[0].label == 'pos'


def test_one_stage_table_for_imdb_and_the_api():
    assert recipe.CLAS_STAGES == recipe.clas_stages(2e-2, (1, 1, 1, 2))
    assert [(n, e) for n, e, _ in recipe.clas_stages(1e-2, (2, 0, 1, 3))] == [(-1, 2), (-2, 0), (-3, 1), (0, 3)]
    assert [lr for *_, lr in recipe.clas_stages(1e-2, (1, 1, 1, 1))] == pytest.approx([1e-2, 5e-3, 2.5e-3, 5e-4])
    with pytest.raises(ValueError, match=r'clas_epochs: \[1, 1\] must give 4 stages'):
        recipe.clas_stages(1e-2, (1, 1))


def test_a_backward_or_cut_classifier_reads_as_it_was_trained_after_save_and_load(trained, tmp_path, monkeypatch):
    from ulmfit.model_io import load_classifier, save_classifier

    clf, _ = trained
    model, config, itos, classes, settings = load_classifier(clf.save(tmp_path / 'fwd'))
    save_classifier(tmp_path / 'bwd', model, config, itos, classes, {**settings, 'backwards': True, 'truncate': 3})
    bwd = TextClassifier.load(tmp_path / 'bwd', verbose=False)
    seen, make = [], recipe.ids_loader
    monkeypatch.setattr(recipe, 'ids_loader', lambda ids, *a, **k: seen.append(ids) or make(ids, *a, **k))
    bwd.predict(['red alpha dog omega'])
    expect = bwd.vocab.numericalize(bwd.tok.batch(['red alpha dog omega'])[0])[::-1][-3:]  # reversed, then cut
    assert seen[0][0].tolist() == expect.tolist()
    bwd.save(tmp_path / 'again')  # save keeps how it reads
    assert load_classifier(tmp_path / 'again')[4]['backwards'] is True
    assert load_classifier(tmp_path / 'again')[4]['truncate'] == 3


def test_a_loaded_classifier_saves_the_dropout_it_was_trained_with(trained, tmp_path):
    from ulmfit.model_io import load_classifier, save_classifier

    clf, _ = trained
    model, config, itos, classes, settings = load_classifier(clf.save(tmp_path / 'a'))
    save_classifier(tmp_path / 'b', model, config, itos, classes, {**settings, 'drop_mult': 0.7})
    TextClassifier.load(tmp_path / 'b', verbose=False).save(tmp_path / 'c')
    assert load_classifier(tmp_path / 'c')[4]['drop_mult'] == 0.7


def test_a_sentencepiece_classifier_reads_with_its_own_model_after_save_and_load(trained, tmp_path):
    import shutil

    from ulmfit.tokenize import SentencePieceTokenizer

    clf, _ = trained
    texts = [f'the {w} dog sat on {v} mat' for w in ('red', 'big', 'small') for v in ('a', 'the', 'one')] * 20
    spm_tok = SentencePieceTokenizer.train(texts, tmp_path / 'spm', vocab_sz=40)
    spacy_tok, clf.tok = clf.tok, spm_tok
    try:
        folder = clf.save(tmp_path / 'clf')
    finally:
        clf.tok = spacy_tok
    shutil.rmtree(tmp_path / 'spm')  # the folder is self-contained
    again = TextClassifier.load(folder, verbose=False)
    assert isinstance(again.tok, SentencePieceTokenizer)
    assert again.tok.batch(['the red dog sat']) == SentencePieceTokenizer(folder / 'spm.model').batch(
        ['the red dog sat']
    )


def test_a_quiet_classifier_draws_no_progress_and_restores_the_level(tmp_path, capsys):
    from common.log import log

    level = log.level
    df = order_corpus(64, 1)
    clf = TextClassifier(config=AWDLSTMConfig(vocab_sz=0, emb_sz=16, n_hid=16, n_layers=1), bs=16, verbose=False)
    clf.data_root = tmp_path
    with pytest.warns(UserWarning, match='from scratch') as warned:
        clf.fine_tune_lm(df, frozen_epochs=0, epochs=1, bs=4, bptt=8)
        clf.fit(df, stages=[(0, 1, 1e-2)])
    assert warned[0].filename == __file__  # the warning names the caller's line, not the library's
    clf.predict(['alpha red omega'])
    out = capsys.readouterr()
    assert out.out == '' and out.err == '' and log.level == level
