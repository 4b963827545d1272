"""Image data: file lists, Pillow decoding and per-image crops in DataLoader workers, batch augmentation on the device.

    worker (CPU, one image at a time)              training device (one batch at a time, `BatchTransform`)
    --------------------------------------------   ----------------------------------------------------------
    open with Pillow -> RGB                        uint8 (bs, 3, size, size) -> float in [0, 1]
    train: random-resized crop -> size x size      train: flip a random half of the batch left-right
    valid: resize shortest side, centre crop       normalise with the ImageNet mean and std
    -> uint8 tensor (3, size, size)

Workers ship uint8 tensors (a quarter of the bytes of float32) and the float work runs on the device, where it
is one vectorised op per batch instead of one per image.
"""

import math
import random
import re
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from common.events import Callback
from common.learner import DataLoaders

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_EXTS = {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff'}


class BadImageError(RuntimeError):
    "An image file that Pillow can't decode; the message names the file."


# ---- file lists ---------------------------------------------------------------------------------------------
def image_files(folder):
    "Every image file under `folder` (recursive), sorted, so the order is the same on every machine."
    return sorted(p for p in Path(folder).rglob('*') if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def folder_items(folder, classes=None):
    "ImageNet-style `folder/<class>/<image>`: (paths, label indices, classes). Pass `classes` to reuse a vocab."
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}")
    if classes is None:
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    c2i = {c: i for i, c in enumerate(classes)}
    paths = [p for p in image_files(folder) if p.parent.name in c2i]
    if not paths:
        raise FileNotFoundError(f"no images in class folders under {folder}")
    return paths, [c2i[p.parent.name] for p in paths], list(classes)


_PETS_NAME = re.compile(r'^(.+)_\d+$')


def pets_label(path):
    "Oxford-IIIT Pet breed from a file name: 'great_pyrenees_173.jpg' -> 'great_pyrenees'."
    m = _PETS_NAME.match(Path(path).stem)
    if m is None:
        raise ValueError(f"{path}: a Pets file name is <breed>_<number>.<ext>")
    return m.group(1)


def pets_items(folder, valid_pct=0.2, seed=42):
    "Pets images in `folder`: ((train paths, labels), (valid paths, labels), classes) from a seeded random split."
    paths = image_files(folder)
    if not paths:
        raise FileNotFoundError(f"no images under {folder}")
    names = [pets_label(p) for p in paths]
    classes = sorted(set(names))
    c2i = {c: i for i, c in enumerate(classes)}
    labels = [c2i[n] for n in names]
    idx = np.random.default_rng(seed).permutation(len(paths))  # the same seed gives the same split everywhere
    n_valid = int(round(len(paths) * valid_pct))
    t, v = sorted(idx[n_valid:].tolist()), sorted(idx[:n_valid].tolist())
    return ([paths[i] for i in t], [labels[i] for i in t]), ([paths[i] for i in v], [labels[i] for i in v]), classes


def write_synthetic_images(folder, names, size=40, seed=0):
    "Small PNGs for dry runs: `folder/<name>` for each name, each class (the part before the last '_') a colour."
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    colours = {}
    for name in names:
        cls = name.rsplit('_', 1)[0]
        colour = colours.setdefault(cls, rng.integers(0, 256, 3))
        pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)  # (size, size, 3)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)
    return folder


# ---- one image at a time (in the workers) -------------------------------------------------------------------
def open_image(path, draft=None):
    "Decode `path` to an RGB PIL image; `draft` lets the JPEG decoder shrink by 2/4/8 while staying >= draft px."
    try:
        img = Image.open(path)
        if draft is not None and img.format == 'JPEG':
            img.draft('RGB', (draft, draft))
        return img.convert('RGB')
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise BadImageError(f"cannot read image {path}: {e}") from None


def random_resized_crop(img, size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), rng=random):
    "Crop a random area fraction in `scale` with aspect ratio in `ratio` (log-uniform), resize to size x size."
    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return resize_centre_crop(img, size)  # ten misses (a very long image): fall back to the centre


def resize_centre_crop(img, size):
    "Resize so the shorter side is `size`, then cut the central size x size square."
    w, h = img.size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + s, y0 + s))


def to_uint8_tensor(img):
    "PIL RGB image -> uint8 tensor (3, h, w)."
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def train_tfm(path, size, scale=(0.35, 1.0)):
    "Training pipeline of one image: decode, random-resized crop, uint8 (3, size, size)."
    return to_uint8_tensor(random_resized_crop(open_image(path, draft=2 * size), size, scale))


def valid_tfm(path, size):
    "Validation pipeline of one image: decode, resize, centre crop, uint8 (3, size, size)."
    return to_uint8_tensor(resize_centre_crop(open_image(path, draft=size), size))


class ImageDataset(Dataset):
    "(uint8 image, label) per path; an unreadable file raises `BadImageError`, or with 'skip' warns and reads the next."

    def __init__(self, paths, labels, tfm, on_error='raise'):
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.tfm, self.on_error = list(paths), list(labels), tfm, on_error

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        for j in range(len(self.paths)):
            k = (i + j) % len(self.paths)
            try:
                return self.tfm(self.paths[k]), self.labels[k]
            except BadImageError as e:
                if self.on_error == 'raise':
                    raise
                warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
        raise BadImageError(f"none of the {len(self.paths)} images could be read")


def check_images(paths):
    "Paths that Pillow can't decode (a pre-flight check: a few ms per image)."
    bad = []
    for p in paths:
        try:
            open_image(p)
        except BadImageError:
            bad.append(p)
    return bad


# ---- one batch at a time (on the training device) -----------------------------------------------------------
def flip_batch(xb, p=0.5):
    "Mirror a random fraction `p` of the images left-right: one mask for the batch, no Python loop."
    flip = torch.rand(xb.shape[0], device=xb.device) < p  # (bs,)
    return torch.where(flip[:, None, None, None], xb.flip(-1), xb)


def normalize(xb, mean, std):
    "uint8 or [0, 1] float images (bs, 3, h, w) -> (x - mean) / std per channel."
    if xb.dtype == torch.uint8:
        xb = xb.float().div_(255)
    mean, std = (torch.as_tensor(s, dtype=xb.dtype, device=xb.device)[None, :, None, None] for s in (mean, std))
    return (xb - mean) / std


class BatchTransform(Callback):
    "Turns a uint8 batch on the device into normalised floats, flipping half of the training images."

    order = -10  # after DeviceCallback (-20) moved the batch, before tricks like MixUp (8) see it

    def __init__(self, stats=IMAGENET_STATS, flip=True, channels_last=False):
        self.mean, self.std = stats
        self.flip, self.channels_last = flip, channels_last

    def before_batch(self):
        xb = normalize(self.learn.xb, self.mean, self.std)
        if self.flip and self.learn.training:
            xb = flip_batch(xb)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        self.learn.xb = xb


# ---- putting it together ------------------------------------------------------------------------------------
def make_dataloader(ds, bs, train, num_workers=2):
    "A DataLoader that shuffles and drops the last partial batch for training (BN needs > 1 sample)."
    return DataLoader(
        ds,
        batch_size=bs,
        shuffle=train,
        drop_last=train and len(ds) > bs,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def image_dls(train_items, valid_items, size, bs, num_workers=2, on_error='raise', scale=(0.35, 1.0)):
    "DataLoaders from ((paths, labels), (paths, labels)): random-resized crops to train, centre crops to validate."
    tds = ImageDataset(*train_items, partial(train_tfm, size=size, scale=scale), on_error)
    vds = ImageDataset(*valid_items, partial(valid_tfm, size=size), on_error)
    return DataLoaders(make_dataloader(tds, bs, True, num_workers), make_dataloader(vds, bs * 2, False, num_workers))


def subsample(items, n, seed=0):
    "At most `n` of (paths, labels), a seeded random draw (for the small presets)."
    paths, labels = items
    if n is None or n >= len(paths):
        return items
    idx = sorted(np.random.default_rng(seed).permutation(len(paths))[:n].tolist())
    return [paths[i] for i in idx], [labels[i] for i in idx]


def imagenet_folder_dls(path, size, bs, num_workers=2, on_error='raise', n_train=None, n_valid=None, seed=0):
    "`path/train/<class>/*` and `path/val/<class>/*` -> (DataLoaders, classes)."
    *train, classes = folder_items(Path(path) / 'train')
    *valid, _ = folder_items(Path(path) / 'val', classes)
    train, valid = subsample(train, n_train, seed), subsample(valid, n_valid, seed)
    return image_dls(train, valid, size, bs, num_workers, on_error), classes
