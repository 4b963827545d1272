"Download module: mirror use, verification, safe and atomic extraction (no network needed)."

import hashlib
import io
import tarfile
import zipfile

import pytest

from common import download
from common.download import DownloadError, extract_archive, untar_data


def _tgz(path, members):
    "members: (name, bytes) files, or (name, '->', target) symlinks."
    with tarfile.open(path, 'w:gz') as tf:
        for m in members:
            info = tarfile.TarInfo(m[0])
            if len(m) == 3:
                info.type, info.linkname = tarfile.SYMTYPE, m[2]
                tf.addfile(info)
            else:
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


@pytest.fixture
def registry(monkeypatch):
    reg = {'toy': dict(url='http://127.0.0.1:9/toy.tgz', archive='toy.tgz', folder='toy', known={})}
    monkeypatch.setattr(download, 'REGISTRY', reg)
    return reg


def test_mirror_is_used_and_cached(tmp_path, registry, monkeypatch):
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    _tgz(mirror / 'toy.tgz', [('toy/a.txt', b'hello'), ('toy/sub/b.txt', b'x')])
    monkeypatch.setenv('ULMFIT_MIRROR', str(mirror))
    path = untar_data('toy', data_root=tmp_path / 'data')
    assert path == tmp_path / 'data' / 'toy' and (path / 'a.txt').read_text() == 'hello'
    assert (tmp_path / 'data' / 'archives' / 'toy.tgz').exists()
    (mirror / 'toy.tgz').unlink()
    assert untar_data('toy', data_root=tmp_path / 'data') == path  # cached: the mirror is not needed again


def test_sha_checked_by_size(tmp_path, registry):
    mirror = tmp_path / 'm'
    mirror.mkdir()
    arc = _tgz(mirror / 'toy.tgz', [('toy/a.txt', b'hello')])
    size = arc.stat().st_size
    registry['toy']['known'] = {size: ('0' * 64, 'mirror copy')}
    with pytest.raises(DownloadError, match='sha256 .* does not match'):
        untar_data('toy', data_root=tmp_path / 'd', mirror=mirror)
    assert not (tmp_path / 'd' / 'toy').exists() and not (tmp_path / 'd' / 'archives' / 'toy.tgz').exists()
    registry['toy']['known'] = {size: (hashlib.sha256(arc.read_bytes()).hexdigest(), 'mirror copy')}
    assert (untar_data('toy', data_root=tmp_path / 'd', mirror=mirror) / 'a.txt').exists()


@pytest.mark.parametrize(
    'members',
    [
        [('toy/ok.txt', b'1'), ('toy/../../evil.txt', b'x')],
        [('/tmp/abs-evil.txt', b'x')],
        [('toy/link', '->', '../../outside')],
        [('toy/link', '->', '/etc/passwd')],
    ],
)
def test_unsafe_members_rejected(tmp_path, members):
    arc = _tgz(tmp_path / 'bad.tgz', members)
    with pytest.raises(DownloadError, match='bad.tgz'):
        extract_archive(arc, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'evil.txt').exists()
    assert [p.name for p in tmp_path.iterdir()] == ['bad.tgz']  # no temp folder left behind


def test_unsafe_zip_rejected(tmp_path):
    with zipfile.ZipFile(tmp_path / 'bad.zip', 'w') as zf:
        zf.writestr('../evil.txt', 'x')
    with pytest.raises(DownloadError, match='unsafe member'):
        extract_archive(tmp_path / 'bad.zip', tmp_path / 'o')
    with zipfile.ZipFile(tmp_path / 'good.zip', 'w') as zf:
        zf.writestr('w/wiki.valid.raw', 'x')
    assert (extract_archive(tmp_path / 'good.zip', tmp_path / 'g') / 'wiki.valid.raw').exists()


def test_truncated_archive_errors_cleanly(tmp_path):
    arc = _tgz(tmp_path / 'full.tgz', [(f'toy/f{i}.bin', bytes(range(256)) * 200) for i in range(5)])
    (tmp_path / 'cut.tgz').write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    with pytest.raises(DownloadError, match=r'cut\.tgz: damaged or partial archive'):
        extract_archive(tmp_path / 'cut.tgz', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cut.tgz', 'full.tgz']


def test_no_network_no_mirror_is_clear(tmp_path, registry, monkeypatch):
    monkeypatch.delenv('ULMFIT_MIRROR', raising=False)
    with pytest.raises(DownloadError, match='toy.tgz|127.0.0.1'):
        untar_data('toy', data_root=tmp_path, progress=False)
    with pytest.raises(KeyError, match='unknown dataset'):
        untar_data('nope', data_root=tmp_path)


def test_existing_target_not_overwritten(tmp_path):
    arc = _tgz(tmp_path / 'a.tgz', [('toy/a.txt', b'new')])
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'mine.txt').write_text('keep')
    with pytest.raises(DownloadError, match='exists already'):
        extract_archive(arc, tmp_path / 'out')
    assert (tmp_path / 'out' / 'mine.txt').read_text() == 'keep'


def test_a_second_extractor_losing_the_race_uses_the_winners_folder(tmp_path, monkeypatch):
    arc = _tgz(tmp_path / 'a.tgz', [('toy/a.txt', b'same'), ('toy/b.txt', b'data')])
    dest = tmp_path / 'out'
    real_check, raced = download.check_members, []

    def other_process_finishes_first(archive, d):
        real_check(archive, d)
        if not raced:  # the faster process renames its complete folder into place
            raced.append(1)
            with tarfile.open(archive) as tf:
                tf.extractall(tmp_path / 'other', filter='data')
            (tmp_path / 'other' / 'toy').rename(dest)
            (tmp_path / 'other').rmdir()

    monkeypatch.setattr(download, 'check_members', other_process_finishes_first)
    assert extract_archive(arc, dest) == dest  # no 'Directory not empty'
    assert (dest / 'a.txt').read_text() == 'same'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.tgz', 'out']  # no temp folder left


def test_a_damaged_mirror_copy_is_not_kept(tmp_path, registry, monkeypatch):
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    good = _tgz(tmp_path / 'good.tgz', [(f'toy/f{i}.bin', bytes(range(256)) * 200) for i in range(5)])
    (mirror / 'toy.tgz').write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a broken copy on the mirror
    monkeypatch.setenv('ULMFIT_MIRROR', str(mirror))
    with pytest.raises(DownloadError, match='damaged or partial archive.*removed'):
        untar_data('toy', data_root=tmp_path / 'data', progress=False)
    assert not (tmp_path / 'data' / 'archives' / 'toy.tgz').exists()
    (mirror / 'toy.tgz').write_bytes(good.read_bytes())  # the mirror is fixed
    path = untar_data('toy', data_root=tmp_path / 'data', progress=False)
    assert (path / 'f4.bin').read_bytes() == bytes(range(256)) * 200


def test_a_cached_archive_that_differs_from_the_mirror_is_fetched_again(tmp_path, registry, monkeypatch):
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    _tgz(mirror / 'toy.tgz', [('toy/a.txt', b'fixed')])
    (tmp_path / 'data' / 'archives').mkdir(parents=True)
    (tmp_path / 'data' / 'archives' / 'toy.tgz').write_bytes(b'damaged')  # cached before the mirror was fixed
    monkeypatch.setenv('ULMFIT_MIRROR', str(mirror))
    assert (untar_data('toy', data_root=tmp_path / 'data', progress=False) / 'a.txt').read_text() == 'fixed'
