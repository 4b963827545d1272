"""Datasets by name: download (or copy from a mirror), verify, cache and extract safely.

    untar_data('imdb')  ->  $ULMFIT_DATA/imdb/            (default data root: ./data)

    1. archive = $ULMFIT_DATA/archives/imdb.tgz; if missing: copy $ULMFIT_MIRROR/imdb.tgz when a mirror is set and
       holds it, else download the URL (resumable: a `.part` file continues with an HTTP Range request)
    2. check its size and, where the registry knows one for that size, its sha256
    3. extract into a temp folder beside the target, check every member, then rename into place

A folder that exists is complete (it only appears through that final rename), so later calls return at once.
"""

import hashlib
import os
import shutil
import stat
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from .log import log, show_progress

# This project's mirror files, by archive name and size (size -> sha256); the real upstream archives' hashes are not
# recorded here. A file of a known size must match that hash, and any other size is accepted unverified (with a note).
MIRROR_SHA256 = {
    'imdb.tgz': {56242363: 'ee6dba62ec859d3948b6a7eeb16868a315000db3ffbf0ead3a12e952f8bacc9b'},
    'imdb_sample.tgz': {569763: '006bc11705b90d59b9d2771c140e9e66a54c9d51a358cae698c69f661f223618'},
    'imagewoof2-160.tgz': {83997793: 'aa5a70e4d4658a1c7a461f9e3618918f704f9a25656c93b95bd7f7602515c472'},
    'oxford-iiit-pet-subset-160.tgz': {11821500: '9ac3b67e59584a8189e70f6828fa92b77a1afa86733d4169a61db7d3436d739a'},
}


def _entry(url, folder, archive=None):
    "A REGISTRY entry; the archive is named after the URL's file unless `archive` says otherwise."
    archive = archive or url.rsplit('/', 1)[1]
    known = {size: (sha, 'mirror copy') for size, sha in MIRROR_SHA256.get(archive, {}).items()}
    return dict(url=url, archive=archive, folder=folder, known=known)


# name -> url, archive file name, folder it extracts to, and known copies (size -> (sha256, what it is)). An entry may
# also give `size`: then a file of any other size is refused.
S3 = 'https://s3.amazonaws.com/'
REGISTRY = {
    'imdb': _entry(S3 + 'fast-ai-nlp/imdb.tgz', 'imdb'),
    'imdb_sample': _entry(S3 + 'fast-ai-sample/imdb_sample.tgz', 'imdb_sample'),
    'wikitext-103': _entry(S3 + 'fast-ai-nlp/wikitext-103.tgz', 'wikitext-103'),
    'wikitext-103-raw': _entry(S3 + 'research.metamind.io/wikitext/wikitext-103-raw-v1.zip', 'wikitext-103-raw'),
    'wikitext-2': _entry(S3 + 'fast-ai-nlp/wikitext-2.tgz', 'wikitext-2'),
    'imagewoof2-160': _entry(S3 + 'fast-ai-imageclas/imagewoof2-160.tgz', 'imagewoof2-160'),
    'oxford-iiit-pet': _entry(S3 + 'fast-ai-imageclas/oxford-iiit-pet.tgz', 'oxford-iiit-pet'),
    # fastai's WikiText-103 AWD-LSTMs (`URLs.WT103_FWD`/`_BWD`: a `.pth` state dict and a `.pkl` vocab each). fastai
    # publishes no size or hash for them; ulmfit/pretrained.py checks what the archive holds when it imports it.
    'wt103-fwd': _entry(S3 + 'fast-ai-modelzoo/wt103-fwd.tgz', 'wt103-fwd'),
    'wt103-bwd': _entry(S3 + 'fast-ai-modelzoo/wt103-bwd.tgz', 'wt103-bwd'),
    'oxford-iiit-pet-subset-160': _entry(None, 'oxford-iiit-pet', archive='oxford-iiit-pet-subset-160.tgz'),
}


class DownloadError(RuntimeError):
    "A download, verification or extraction failed (the message names the file or URL)."


def get_data_root(root=None):
    "Where datasets live, as a Path: `root`, else $ULMFIT_DATA, else ./data."
    return Path(root or os.environ.get('ULMFIT_DATA') or 'data')


def sha256_file(path, block=1 << 20):
    "The file's sha256 as a hex string."
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while b := f.read(block):
            h.update(b)
    return h.hexdigest()


def verify(path, entry, expected_size=None):
    "Check size (when expected or in the entry) and sha256 (when the registry knows one for this size); True if hashed."
    size = Path(path).stat().st_size
    for want in (expected_size, entry.get('size')):
        if want is not None and size != want:
            raise DownloadError(f'{path}: size {size} bytes, expected {want} (truncated or damaged download)')
    known = entry.get('known', {}).get(size)
    if not known:
        return False
    digest = sha256_file(path)
    if digest != known[0]:
        raise DownloadError(
            f'{path}: sha256 {digest} does not match the registry ({known[0]}, {known[1]}, '
            f'{size} bytes); delete the file and fetch it again'
        )
    return True


def download_url(url, dest, progress=True, timeout=60):
    "Download `url` to `dest` (returned as a Path) with a progress bar; resumes a `dest.part` left by an earlier try."
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + '.part')
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already complete
            os.replace(part, dest)
            return dest
        raise DownloadError(f'{url}: HTTP {e.code} {e.reason}') from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(
            f'{url}: cannot download ({e}); set ULMFIT_MIRROR to a folder holding {dest.name} to work offline'
        ) from None
    with resp:
        if have and resp.status != 206:
            have = 0  # server ignored the Range: start over
        length = resp.headers.get('Content-Length')
        total = have + int(length) if length is not None else None
        show = progress and show_progress()
        with (
            open(part, 'ab' if have else 'wb') as f,
            tqdm(total=total, initial=have, unit='B', unit_scale=True, desc=dest.name, disable=not show) as bar,
        ):
            while b := resp.read(1 << 20):
                f.write(b)
                bar.update(len(b))
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f'{url}: got {part.stat().st_size} of {total} bytes; run again to resume ({part})')
    os.replace(part, dest)
    return dest


def get_mirror(mirror=None):
    "The mirror folder of dataset archives: `mirror`, else $ULMFIT_MIRROR, else None."
    mirror = mirror or os.environ.get('ULMFIT_MIRROR')
    return Path(mirror) if mirror else None


def archive_source(name, mirror=None):
    "Where `name`'s archive comes from when it is not cached: the mirror's copy if it has one, else the URL."
    entry, m = registry_entry(name), get_mirror(mirror)
    if m is None:
        return entry['url']
    src = m / entry['archive']
    return f'{src} (mirror)' if src.exists() or not entry['url'] else f"{entry['url']} (not in the mirror {m})"


def fetch_archive(name, root=None, mirror=None, progress=True):
    "Path to dataset `name`'s archive in `root/archives`, copied from the mirror or downloaded if missing."
    entry = registry_entry(name)
    dest = get_data_root(root) / 'archives' / entry['archive']
    mirror = get_mirror(mirror)
    src = mirror / entry['archive'] if mirror else None
    if dest.exists() and src is not None and src.exists() and src.stat().st_size != dest.stat().st_size:
        dest.unlink()  # the mirror's copy changed (fixed?) since this one was cached: take it again
    if dest.exists():
        verify(dest, entry)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A mirror may hold only some archives (no pretrained models, say): the rest come by URL.
    if src is not None and (src.exists() or not entry['url']):
        if not src.exists():
            raise DownloadError(f'mirror {mirror} has no {entry["archive"]} (looked for {src})')
        tmp = dest.with_name(f'.{dest.name}.copy{os.getpid()}')
        try:
            shutil.copyfile(src, tmp)
            checked = verify(tmp, entry, src.stat().st_size)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    elif not entry['url']:
        raise DownloadError(f'{name} has no download URL; set ULMFIT_MIRROR to a folder holding {entry["archive"]}')
    else:
        download_url(entry['url'], dest, progress)
        try:
            checked = verify(dest, entry)
        except DownloadError:
            dest.unlink()
            raise
    if not checked and progress:
        log.warning(f'note: no known sha256 for {dest} ({dest.stat().st_size} bytes); size checked only')
    return dest


def registry_entry(name):
    if name not in REGISTRY:
        raise KeyError(f'unknown dataset {name!r}; known: {sorted(REGISTRY)}')
    return REGISTRY[name]


def _inside(base, target):
    base = os.path.realpath(base)
    return os.path.commonpath([base, os.path.realpath(os.path.join(base, target))]) == base


def check_members(archive, dest):
    "Refuse absolute paths, `..`, links that leave `dest`, and device files, before extracting anything."
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                n = info.filename
                if os.path.isabs(n) or n.startswith(('/', '\\')) or '..' in Path(n).parts or ':' in n.split('/')[0]:
                    raise DownloadError(f'{archive}: unsafe member path {n!r} (absolute or contains ..)')
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DownloadError(f'{archive}: member {n!r} is a symlink; refusing it')
        return
    try:
        with tarfile.open(archive) as tf:
            for m in tf:
                n = m.name
                if os.path.isabs(n) or '..' in Path(n).parts or not _inside(dest, n):
                    raise DownloadError(f'{archive}: unsafe member path {n!r} (absolute or contains ..)')
                if m.issym() or m.islnk():
                    link = m.linkname if m.islnk() else os.path.join(os.path.dirname(n), m.linkname)
                    if os.path.isabs(m.linkname) or not _inside(dest, link):
                        raise DownloadError(f'{archive}: member {n!r} links to {m.linkname!r}, outside the target')
                if m.ischr() or m.isblk() or m.isfifo():
                    raise DownloadError(f'{archive}: member {n!r} is a device/fifo; refusing it')
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f'{archive}: damaged or partial archive ({type(e).__name__}: {e})') from None


def extract_archive(archive, dest):
    "Extract `archive` (tar/tgz/zip) so that `dest` appears complete or not at all; returns `dest` as a Path."
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise DownloadError(f'{dest} exists already; not overwriting it')
    tmp = dest.parent / f'.{dest.name}.extract{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        check_members(archive, tmp)
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    bad = zf.testzip()
                    if bad:
                        raise DownloadError(f'{archive}: damaged archive (CRC error in {bad!r})')
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    if hasattr(tarfile, 'data_filter'):
                        tf.extractall(tmp, filter='data')
                    else:
                        tf.extractall(tmp)  # checked by check_members above
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise DownloadError(
                f'{archive}: damaged or partial archive ({type(e).__name__}: {e}); nothing was extracted'
            ) from None
        tops = list(tmp.iterdir())
        # One top-level folder becomes `dest` itself; anything else goes into `dest`.
        src = tops[0] if len(tops) == 1 and tops[0].is_dir() else tmp
        try:
            os.rename(src, dest)
        except OSError:  # another process extracted the same archive first: its folder is complete and identical
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def untar_data(name, data_root=None, mirror=None, progress=True):
    "Folder (a Path) of dataset `name` under `data_root` ($ULMFIT_DATA, ./data): fetched, verified, extracted once."
    root = get_data_root(data_root)
    dest = root / registry_entry(name)['folder']
    if dest.exists():
        return dest
    archive = fetch_archive(name, root, mirror, progress)
    if dest.exists():
        return dest  # another process finished first
    if progress:
        log.info(f'extracting {archive} -> {dest}')
    try:
        return extract_archive(archive, dest)
    except DownloadError as e:
        if dest.is_dir():
            return dest  # another process extracted it meanwhile (extract_archive never overwrites)
        archive.unlink(missing_ok=True)  # an archive that fails verification is not kept: the next run fetches anew
        raise DownloadError(f'{e}; the cached copy was removed, so the next run fetches it again') from None
