"Importing fastai's AWD-LSTM LM files: key names, shapes, the vocab pickle, and logits against a reference forward."

import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checkpoint import CheckpointError
from ulmfit.cli import import_fastai_main
from ulmfit.fastai_import import convert_fastai_state, import_fastai, read_itos
from ulmfit.model_io import load_encoder_folder, load_model_folder

V, EMB, HID, N = 24, 8, 10, 3


def fastai_state(v1=False, seed=0):
    "A state dict with exactly the names and shapes of fastai's WT103 files (tiny sizes)."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    emb = r(V, EMB)
    sd = {'0.encoder.weight': emb, '0.encoder_dp.emb.weight': emb.clone()}
    sizes = [EMB] + [HID] * (N - 1) + [EMB]
    for i, (ni, nh) in enumerate(zip(sizes[:-1], sizes[1:])):
        sd[f'0.rnns.{i}.weight_hh_l0_raw'] = r(4 * nh, nh)
        sd[f'0.rnns.{i}.module.weight_ih_l0'] = r(4 * nh, ni)
        sd[f'0.rnns.{i}.module.bias_ih_l0'] = r(4 * nh)
        sd[f'0.rnns.{i}.module.bias_hh_l0'] = r(4 * nh)
        if v1:  # v1 also saved the last dropped copy of the hidden weight: must be ignored
            sd[f'0.rnns.{i}.module.weight_hh_l0'] = torch.zeros(4 * nh, nh)
    sd['1.decoder.weight'] = emb.clone()
    sd['1.decoder.bias'] = r(V)
    return sd


def reference_logits(sd, x):
    "fastai's LM in eval mode, written directly with nn.LSTM and F.embedding/F.linear."
    h = F.embedding(x, sd['0.encoder.weight'])
    for i in range(N):
        w_ih = sd[f'0.rnns.{i}.module.weight_ih_l0']
        lstm = nn.LSTM(w_ih.shape[1], w_ih.shape[0] // 4, batch_first=True)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(w_ih)
            lstm.weight_hh_l0.copy_(sd[f'0.rnns.{i}.weight_hh_l0_raw'])
            lstm.bias_ih_l0.copy_(sd[f'0.rnns.{i}.module.bias_ih_l0'])
            lstm.bias_hh_l0.copy_(sd[f'0.rnns.{i}.module.bias_hh_l0'])
        h, _ = lstm(h)
    return F.linear(h, sd['1.decoder.weight'], sd['1.decoder.bias'])


def itos():
    return ['xxunk', 'xxpad'] + [f'w{i}' for i in range(V - 2)]


@pytest.mark.parametrize('v1,wrapped', [(False, False), (True, True)])
def test_import_matches_reference_forward(tmp_path, v1, wrapped):
    sd = fastai_state(v1)
    torch.save({'model': sd, 'opt': {'state': {}}} if wrapped else sd, tmp_path / 'lm.pth')
    with open(tmp_path / 'itos.pkl', 'wb') as f:
        pickle.dump(itos(), f)
    assert (
        import_fastai_main(
            [
                '--weights',
                str(tmp_path / 'lm.pth'),
                '--vocab',
                str(tmp_path / 'itos.pkl'),
                '--out',
                str(tmp_path / 'out'),
            ]
        )
        == 0
    )
    model, config, vocab = load_model_folder(tmp_path / 'out')
    assert (config.vocab_sz, config.emb_sz, config.n_hid, config.n_layers) == (V, EMB, HID, N)
    assert config.tie_weights and vocab == itos()
    x = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        ours = model(x)[0]
    assert torch.allclose(ours, reference_logits(sd, x), atol=1e-5)
    enc_sd, _, _ = load_encoder_folder(tmp_path / 'out')
    assert torch.equal(enc_sd['rnns.0.module.weight_hh_l0'], sd['0.rnns.0.weight_hh_l0_raw'])


def test_unknown_key_is_an_error():
    sd = fastai_state()
    sd['0.something_else'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match='something_else'):
        convert_fastai_state(sd)


class Evil:
    def __reduce__(self):
        return (print, ('pwned',))


def test_vocab_pickle_is_restricted(tmp_path):
    with open(tmp_path / 'ok.pkl', 'wb') as f:
        pickle.dump(['a', 'b'], f)
    assert read_itos(tmp_path / 'ok.pkl') == ['a', 'b']
    for i, bad in enumerate([['a', Evil()], {'a': 1}, ['a', 3]]):
        p = tmp_path / f'bad{i}.pkl'
        with open(p, 'wb') as f:
            pickle.dump(bad, f)
        with pytest.raises(CheckpointError):
            read_itos(p)


def test_vocab_size_mismatch(tmp_path):
    torch.save(fastai_state(), tmp_path / 'lm.pth')
    with open(tmp_path / 'itos.pkl', 'wb') as f:
        pickle.dump(itos()[:-1], f)
    with pytest.raises(CheckpointError, match='rows'):
        import_fastai(tmp_path / 'lm.pth', tmp_path / 'itos.pkl', tmp_path / 'out')


def test_out_folder_is_not_overwritten_unless_asked(tmp_path, capsys):
    import ulmfit.__main__ as ulmfit_cli

    torch.save(fastai_state(), tmp_path / 'lm.pth')
    with open(tmp_path / 'itos.pkl', 'wb') as f:
        pickle.dump(itos(), f)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'vocab.json').write_text('{"itos": ["mine"]}')
    argv = [
        'import-fastai',
        '--weights',
        str(tmp_path / 'lm.pth'),
        '--vocab',
        str(tmp_path / 'itos.pkl'),
        '--out',
        str(out),
    ]
    assert ulmfit_cli.main(argv) == 2
    assert f'error: {out} exists' in capsys.readouterr().err
    assert (out / 'vocab.json').read_text() == '{"itos": ["mine"]}'
    assert ulmfit_cli.main(argv + ['--overwrite']) == 0
    assert (out / 'lm.pth').exists()


def test_a_bad_vocab_pickle_is_a_one_line_error(tmp_path, capsys):
    import ulmfit.__main__ as ulmfit_cli

    torch.save(fastai_state(), tmp_path / 'lm.pth')
    with open(tmp_path / 'itos.pkl', 'wb') as f:
        pickle.dump({'not': 'a list'}, f)
    argv = ['import-fastai', '--weights', str(tmp_path / 'lm.pth'), '--vocab', str(tmp_path / 'itos.pkl')]
    assert ulmfit_cli.main([*argv, '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'itos.pkl'}: expected a list of strings" in err and 'Traceback' not in err
