"""Pretrained language models by name, and which one a run starts from.

    python -m ulmfit models                        # (ulmfit/cli.py) the names, their sources, whether cached
    python -m ulmfit imdb --pretrained fastai-wt103

A name is fastai's published AWD-LSTM pretrained on WikiText-103, forward or backward. On first use its archive
is fetched (common.download) into $ULMFIT_DATA/archives/, extracted, and must hold one `.pth` and one `.pkl` (fastai's
layout); fastai_import converts it into a model folder, renamed into $ULMFIT_DATA/models/<name>/ only when complete,
so later uses are instant and offline. A failure removes what that call wrote.

Which LM a run starts from (`resolve_pretrained`), with no --pretrained given:
  1. the newest local runs/lm-*/model for the direction (backward runs end in -bwd);
  2. with the `paper` preset, fastai's published weights for the direction (what fastai does by default);
  3. none: random weights (the caller prints a loud banner).
"""

import os
import shutil
from pathlib import Path

from common.checkpoint import CheckpointError
from common.download import DownloadError, extract_archive, fetch_archive, get_data_root, registry_entry
from common.log import log

from .fastai_import import import_fastai

# name -> the common.download registry entry of its archive, and its reading direction
PRETRAINED = {
    'fastai-wt103': dict(dataset='wt103-fwd', backwards=False),
    'fastai-wt103-bwd': dict(dataset='wt103-bwd', backwards=True),
}


def named_for(backwards):
    "The published model for a reading direction."
    return next(n for n, e in PRETRAINED.items() if e['backwards'] == backwards)


def model_dir(name, data_root=None):
    "Where the model folder of `name` is cached (a Path)."
    return get_data_root(data_root) / 'models' / name


def find_pretrained(runs, backwards):
    "The newest language-model folder under `runs` for this direction (backward runs end in -bwd), or None."
    cands = [p.parent for p in Path(runs).glob('lm-*/model/lm.pth') if ('-bwd' in p.parent.parent.name) == backwards]
    return max(cands, key=lambda p: (p / 'lm.pth').stat().st_mtime) if cands else None


def _only(folder, ext, archive):
    found = sorted(folder.rglob(f'*.{ext}'))
    if len(found) != 1:
        names = [str(p.relative_to(folder)) for p in found]
        raise DownloadError(
            f"{archive}: expected one .{ext} file (fastai's layout), found {names or 'none'}; "
            f"not a fastai language-model archive"
        )
    return found[0]


def get_pretrained(name, data_root=None, mirror=None, progress=True):
    "The model folder (a Path) of a named pretrained LM: fetched, checked, imported and cached on first use."
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    dest = model_dir(name, data_root)
    if (dest / 'lm.pth').exists():
        return dest
    dataset, root = PRETRAINED[name]['dataset'], get_data_root(data_root)
    archive = root / 'archives' / registry_entry(dataset)['archive']
    fresh = not archive.exists()  # on an interrupt, only what this call fetched is removed
    tmp = dest.parent / f'.{name}.import{os.getpid()}'
    try:
        try:
            archive = fetch_archive(dataset, root, mirror, progress)
        except DownloadError as e:
            raise DownloadError(
                f"pretrained model {name!r}: {e}; or pass --pretrained PATH to a model folder "
                f"(or 'none' for random weights)"
            ) from None
        shutil.rmtree(tmp, ignore_errors=True)
        raw = extract_archive(archive, tmp / 'archive')
        pth, pkl = _only(raw, 'pth', archive), _only(raw, 'pkl', archive)
        try:
            import_fastai(pth, pkl, tmp / 'model')
        except (ValueError, KeyError, CheckpointError) as e:
            msg = str(e).replace(f'{raw}{os.sep}', '').strip().splitlines()[0].split(' Details: ')[0]
            raise DownloadError(f"{archive}: {msg}; not fastai's AWD-LSTM language model") from None
        try:
            os.rename(tmp / 'model', dest)
        except OSError:  # another process got there first: its folder is complete too
            if not (dest / 'lm.pth').exists():
                raise
    except DownloadError as e:  # an archive that fails a check is not kept: the next call fetches it afresh
        if not archive.exists():
            raise
        archive.unlink()
        raise DownloadError(f'{e} (removed it from the cache: run again to fetch it afresh)') from None
    except BaseException:
        if fresh and archive.exists():
            archive.unlink()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        log.info(f'pretrained model {name}: imported into {dest}')
    return dest


def pretrained_folder(spec, data_root=None):
    "A model folder (a Path) from a known name (fetched on first use) or a path."
    if str(spec) in PRETRAINED:
        return get_pretrained(str(spec), data_root)
    if not (Path(spec) / 'lm.pth').exists():
        raise CheckpointError(
            f"{spec}: neither a language-model folder (no lm.pth there) nor a known name "
            f"({', '.join(PRETRAINED)}); see `python -m ulmfit models`"
        )
    return Path(spec)


def resolve_pretrained(spec, runs='runs', backwards=False, preset=None, data_root=None, fwd_spec=''):
    "The LM folder a run starts from, or None: `spec` is a model folder, a name, 'none', or '' (default order)."
    spec = str(spec or '')
    if spec == 'none':
        return None
    if not spec and backwards and fwd_spec in PRETRAINED:  # a named forward model brings its backward partner
        spec = named_for(True)
    if spec in PRETRAINED and PRETRAINED[spec]['backwards'] != backwards:
        d = 'backward' if PRETRAINED[spec]['backwards'] else 'forward'
        raise CheckpointError(
            f"--pretrained{'-bwd' if backwards else ''} {spec}: that is the {d} model; "
            f"this direction takes {named_for(backwards)}"
        )
    if spec:
        return pretrained_folder(spec, data_root)
    local = find_pretrained(runs, backwards)
    if local is None and preset == 'paper':
        return get_pretrained(named_for(backwards), data_root)
    return local
