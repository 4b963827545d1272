"Named pretrained LMs: a fixture archive in fastai's layout served from 127.0.0.1 (no network), checks, default order."

import io
import pickle
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from test_ulmfit_fastai_import import EMB, HID, V, fastai_state, itos, reference_logits

from common import download
from common.checkpoint import CheckpointError
from common.download import DownloadError
from ulmfit.awd_lstm import AWDLSTMConfig, get_language_model
from ulmfit.cli import models_main
from ulmfit.model_io import load_model_folder, save_model_folder
from ulmfit.pretrained import get_pretrained, resolve_pretrained


def fastai_archive(members=('pth', 'pkl'), bwd=False, pkl_obj=None, pth_obj=None):
    "A .tgz laid out like fastai's wt103-fwd.tgz: one folder holding the .pth state dict and the itos .pkl."
    sd = fastai_state(seed=1 if bwd else 0)
    files = {}
    if 'pth' in members:
        buf = io.BytesIO()
        torch.save(sd if pth_obj is None else pth_obj, buf)
        files['lstm_bwd.pth' if bwd else 'lstm_fwd.pth'] = buf.getvalue()
    if 'pkl' in members:
        files['itos_wt103.pkl'] = pickle.dumps(itos() if pkl_obj is None else pkl_obj)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w:gz') as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"wt103-{'bwd' if bwd else 'fwd'}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue(), sd


class Server:
    "Serves `files` (path -> bytes) on 127.0.0.1 with Range support; counts requests; can cut transfers short."

    def __init__(self):
        self.files, self.requests, self.cut = {}, [], False
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                srv.requests.append(self.path)
                data = srv.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(self.headers['Range'].split('=')[1].rstrip('-')) if self.headers['Range'] else 0
                self.send_response(206 if start else 200)
                self.send_header('Content-Length', str(len(data) - start))
                self.end_headers()
                body = data[start:]
                self.wfile.write(body[: len(body) // 2] if srv.cut else body)  # a cut: the peer closes early

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch, tmp_path):
    "A local server holding both fixture archives, the registry pointed at it, and a fresh data root."
    s = Server()
    for d in ('fwd', 'bwd'):
        s.files[f'/wt103-{d}.tgz'], _ = fastai_archive(bwd=d == 'bwd')
        monkeypatch.setitem(
            download.REGISTRY,
            f'wt103-{d}',
            dict(url=f'{s.url}/wt103-{d}.tgz', archive=f'wt103-{d}.tgz', folder=f'wt103-{d}', known={}),
        )
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    monkeypatch.delenv('ULMFIT_MIRROR', raising=False)
    yield s
    s.close()


def nothing_cached(root):
    "No model folder, temp folder, archive or partial download left under the data root."
    left = [p for p in root.rglob('*') if p.is_file() or p.name.startswith('.')]
    return left == []


def test_named_model_is_downloaded_imported_cached_and_exact(server, tmp_path, capsys):
    assert models_main([]) == 0
    listing = capsys.readouterr().out
    assert 'fastai-wt103 ' in listing and f'{server.url}/wt103-fwd.tgz' in listing and ' no ' in listing
    path = resolve_pretrained('fastai-wt103', tmp_path / 'runs')  # what `--pretrained fastai-wt103` does
    assert path == tmp_path / 'data' / 'models' / 'fastai-wt103' and server.requests == ['/wt103-fwd.tgz']
    model, config, vocab = load_model_folder(path)
    assert vocab == itos() and (config.vocab_sz, config.n_layers) == (V, 3)
    x = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)[0], reference_logits(fastai_state(seed=0), x), atol=1e-5)
    # the second use is instant and offline: nothing is requested, even with the server gone
    server.close()
    assert resolve_pretrained('fastai-wt103', tmp_path / 'runs') == path and server.requests == ['/wt103-fwd.tgz']
    from ulmfit.api import TextClassifier

    clf = TextClassifier.from_pretrained('fastai-wt103', verbose=False)
    assert clf.itos == itos() and len(server.requests) == 1
    assert models_main([]) == 0 and 'fastai-wt103       forward   yes' in capsys.readouterr().out


def test_mirror_folder_serves_the_archive(server, tmp_path, monkeypatch, capsys):
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / 'wt103-bwd.tgz').write_bytes(server.files['/wt103-bwd.tgz'])
    monkeypatch.setenv('ULMFIT_MIRROR', str(mirror))
    assert models_main(['--get', 'fastai-wt103-bwd']) == 0
    out = capsys.readouterr().out
    assert f"{mirror / 'wt103-bwd.tgz'} (mirror)" in out
    assert f'wt103-fwd.tgz (not in the mirror {mirror})' in out
    assert server.requests == [] and (tmp_path / 'data' / 'models' / 'fastai-wt103-bwd' / 'lm.pth').exists()
    # what the mirror lacks comes from its URL (the shared data mirror holds datasets, not these models)
    assert get_pretrained('fastai-wt103', progress=False).name == 'fastai-wt103'
    assert server.requests == ['/wt103-fwd.tgz']


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), 'w'))


@pytest.mark.parametrize(
    'case', ['truncated', 'wrong_size', 'no_pth', 'pkl_with_code', 'pth_with_code', 'cut_transfer']
)
def test_bad_archives_give_one_clear_error_and_cache_nothing(server, tmp_path, monkeypatch, case):
    marker = tmp_path / 'pwned'
    good = server.files['/wt103-fwd.tgz']
    if case == 'truncated':
        server.files['/wt103-fwd.tgz'], match = good[: len(good) // 2], 'damaged or partial archive'
    elif case == 'wrong_size':
        monkeypatch.setitem(download.REGISTRY['wt103-fwd'], 'size', len(good) + 1)
        match = f'size {len(good)} bytes, expected {len(good) + 1}'
    elif case == 'no_pth':
        server.files['/wt103-fwd.tgz'], _ = fastai_archive(members=('pkl',))
        match = r'expected one \.pth file .* found none'
    elif case == 'pkl_with_code':
        server.files['/wt103-fwd.tgz'], _ = fastai_archive(pkl_obj=['a', Evil(marker)])
        match = r'itos_wt103\.pkl: not a plain list-of-strings pickle'
    elif case == 'pth_with_code':
        server.files['/wt103-fwd.tgz'], _ = fastai_archive(pth_obj={'0.encoder.weight': Evil(marker)})
        match = r'refusing to load lstm_fwd\.pth: it needs code to unpickle'
    else:
        server.cut, match = True, 'run again to resume'
    with pytest.raises(DownloadError, match=match) as e:
        get_pretrained('fastai-wt103', progress=False)
    assert '\n' not in str(e.value) and not marker.exists()
    root = tmp_path / 'data'
    if case == 'cut_transfer':  # only the resume state stays; the next call continues it and succeeds
        assert [p.name for p in root.rglob('*') if p.is_file()] == ['wt103-fwd.tgz.part']
        server.cut = False
        assert (get_pretrained('fastai-wt103', progress=False) / 'lm.pth').exists()
        assert server.requests == ['/wt103-fwd.tgz'] * 2
    else:
        assert nothing_cached(root)


def test_no_network_names_url_mirror_and_path(server, tmp_path, monkeypatch):
    monkeypatch.setitem(download.REGISTRY['wt103-fwd'], 'url', 'http://127.0.0.1:9/wt103-fwd.tgz')
    with pytest.raises(DownloadError) as e:
        resolve_pretrained('', tmp_path / 'runs', preset='paper')
    msg = str(e.value)
    assert '\n' not in msg and 'http://127.0.0.1:9/wt103-fwd.tgz' in msg and 'ULMFIT_MIRROR' in msg
    assert '--pretrained PATH' in msg and nothing_cached(tmp_path / 'data')


def local_lm(runs, name):
    config = AWDLSTMConfig.preset('tiny', vocab_sz=len(itos()))
    return save_model_folder(runs / name / 'model', get_language_model(config), config, itos())


def test_default_order_local_then_named_for_paper_then_none(server, tmp_path, capsys):
    runs = tmp_path / 'runs'
    # 3. nothing local, not `paper`: random weights (the caller's banner); nothing is downloaded
    assert resolve_pretrained('', runs, False, 'cpu') is None and resolve_pretrained('', runs, True, 'tiny') is None
    assert server.requests == []
    # 2. nothing local, `paper`: fastai's published weights for the direction
    assert resolve_pretrained('', runs, False, 'paper').name == 'fastai-wt103'
    assert resolve_pretrained('', runs, True, 'paper').name == 'fastai-wt103-bwd'
    assert server.requests == ['/wt103-fwd.tgz', '/wt103-bwd.tgz']
    # 1. a local LM for the direction comes first, with any preset
    fwd, bwd = local_lm(runs, 'lm-tiny'), local_lm(runs, 'lm-tiny-bwd')
    assert resolve_pretrained('', runs, False, 'paper') == fwd and resolve_pretrained('', runs, True, 'paper') == bwd
    # explicit choices: 'none', a path, a named forward model taking its backward partner, a direction mismatch
    assert resolve_pretrained('none', runs, False, 'paper') is None
    assert resolve_pretrained(str(bwd), runs, False, 'cpu') == bwd
    assert resolve_pretrained('', runs, True, 'cpu', fwd_spec='fastai-wt103').name == 'fastai-wt103-bwd'
    with pytest.raises(CheckpointError, match='backward model'):
        resolve_pretrained('fastai-wt103-bwd', runs, False)
    with pytest.raises(CheckpointError, match='fastai-wt13: neither a language-model folder'):
        resolve_pretrained('fastai-wt13', runs, False)
    assert len(server.requests) == 2


def test_help_states_the_default_order(capsys):
    from ulmfit.imdb import main

    with pytest.raises(SystemExit):
        main(['--help'])
    out = capsys.readouterr().out
    assert 'fastai-wt103' in out and 'newest local runs/lm-*/model' in out and 'paper' in out


@pytest.mark.slow
def test_imdb_paper_preset_takes_published_weights_both_directions(tmp_path, monkeypatch):
    "`make imdb-classify PRESET=paper BIDIR=1` with no local LM: both fastai models come from the mirror and are used."
    import random

    from ulmfit.__main__ import main

    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    for d in ('fwd', 'bwd'):
        (mirror / f'wt103-{d}.tgz').write_bytes(fastai_archive(bwd=d == 'bwd')[0])
    rnd, rows = random.Random(0), ['label,text,is_valid']
    for i in range(32):
        words = ' '.join(rnd.choice(itos()[2:]) for _ in range(12))
        rows.append(f"{'positive,' + words + ' good' if i % 2 else 'negative,' + words + ' bad'},{i >= 24}")
    csv = '\n'.join(rows).encode()
    with tarfile.open(mirror / 'imdb_sample.tgz', 'w:gz') as tf:
        info = tarfile.TarInfo('imdb_sample/texts.csv')
        info.size = len(csv)
        tf.addfile(info, io.BytesIO(csv))
    monkeypatch.setenv('ULMFIT_DATA', str(tmp_path / 'data'))
    monkeypatch.setenv('ULMFIT_MIRROR', str(mirror))
    assert (
        main(
            [
                'imdb',
                '--preset',
                'paper',
                '--dataset',
                'imdb_sample',
                '--bidirectional',
                'true',
                '--precision',
                'fp32',
                '--runs',
                str(tmp_path / 'runs'),
                '--min-freq',
                '1',
                '--lm-bs',
                '4',
                '--lm-bptt',
                '8',
                '--lm-epochs',
                '0',
                '--clas-bs',
                '8',
                '--clas-epochs',
                '1,1,1,1',
                '--max-len',
                '32',
                '--bptt',
                '16',
                '--clas-valid-docs',
                '8',  # of the sample's 24 training reviews (the paper preset holds out 2,500)
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / 'data' / 'models').iterdir()) == ['fastai-wt103', 'fastai-wt103-bwd']
    for seed, d in enumerate(('fwd', 'bwd')):  # LSTM weights untouched by the frozen LM stage: the published ones
        lm, config, _ = load_model_folder(tmp_path / 'runs' / 'imdb-paper' / f'lm_{d}')
        assert (config.emb_sz, config.n_hid) == (EMB, HID)
        assert torch.equal(
            lm.state_dict()['0.rnns.1.module.weight_hh_l0'], fastai_state(seed=seed)['0.rnns.1.weight_hh_l0_raw']
        )
