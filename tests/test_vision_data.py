"Image data on small images drawn here: folder and Pets labelling, splits, bad files, transform shapes."

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vision.data import (
    BadImageError,
    BatchTransform,
    ImageDataset,
    check_images,
    flip_batch,
    folder_items,
    imagenet_folder_dls,
    normalize,
    pets_items,
    pets_label,
    random_resized_crop,
    resize_centre_crop,
    train_tfm,
    valid_tfm,
)

COLOURS = {'n01': (255, 0, 0), 'n02': (0, 255, 0), 'n03': (0, 0, 255)}


def draw(path, colour=(128, 64, 32), size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path)
    return path


@pytest.fixture
def woof(tmp_path):
    "train/<class>/ and val/<class>/ with 4 + 2 solid-colour JPEGs per class."
    for split, n in (('train', 4), ('val', 2)):
        for c, col in COLOURS.items():
            for i in range(n):
                draw(tmp_path / split / c / f'{c}_{i}.JPEG', col)
    (tmp_path / 'noisy_imagewoof.csv').write_text('not an image\n')
    return tmp_path


def test_folder_items_labels_from_folder_names(woof):
    paths, labels, classes = folder_items(woof / 'train')
    assert classes == ['n01', 'n02', 'n03'] and len(paths) == 12
    assert all(classes[lbl] == p.parent.name for p, lbl in zip(paths, labels))
    vp, vl, vc = folder_items(woof / 'val', classes=classes)
    assert vc == classes and len(vp) == 6


def test_imagenet_folder_dls_yield_uint8_batches(woof):
    dls, classes = imagenet_folder_dls(woof, size=16, bs=4, num_workers=0)
    xb, yb = next(iter(dls.train))
    assert xb.dtype == torch.uint8 and xb.shape == (4, 3, 16, 16) and yb.shape == (4,)
    xb, yb = next(iter(dls.valid))  # validation: centre crops of solid images keep the colour
    for x, y in zip(xb, yb):
        assert tuple(x[:, 8, 8].tolist()) == pytest.approx(COLOURS[classes[y]], abs=3)
    assert len(dls.train) == 3  # 12 images, bs 4, last partial batch dropped


@pytest.mark.parametrize(
    'name,label',
    [
        ('great_pyrenees_173.jpg', 'great_pyrenees'),
        ('Abyssinian_1.jpg', 'Abyssinian'),
        ('american_pit_bull_terrier_10.jpg', 'american_pit_bull_terrier'),
    ],
)
def test_pets_label(name, label):
    assert pets_label(name) == label


def test_pets_label_rejects_other_names():
    with pytest.raises(ValueError, match='nolabel.jpg'):
        pets_label('nolabel.jpg')


def test_pets_split_is_seeded_disjoint_and_complete(tmp_path):
    for breed in ('Bengal', 'beagle', 'scottish_terrier'):
        for i in range(1, 11):
            draw(tmp_path / 'images' / f'{breed}_{i}.jpg')
    (tp, tl), (vp, vl), classes = pets_items(tmp_path / 'images', valid_pct=0.2, seed=1)
    assert classes == ['Bengal', 'beagle', 'scottish_terrier']
    assert len(vp) == 6 and len(tp) == 24 and not set(tp) & set(vp)
    assert all(classes[lbl] == pets_label(p) for p, lbl in zip(tp + vp, tl + vl))
    assert pets_items(tmp_path / 'images', 0.2, seed=1)[1][0] == vp
    assert pets_items(tmp_path / 'images', 0.2, seed=2)[1][0] != vp


def test_corrupt_image_is_reported_with_its_path(woof):
    bad = woof / 'train' / 'n02' / 'broken.JPEG'
    bad.write_bytes(b'\xff\xd8 definitely not a jpeg')
    paths, labels, _ = folder_items(woof / 'train')
    assert check_images(paths) == [bad]
    ds = ImageDataset(paths, labels, lambda p: valid_tfm(p, 8))
    i = paths.index(bad)
    with pytest.raises(BadImageError, match='broken.JPEG'):
        ds[i]
    skip = ImageDataset(paths, labels, lambda p: valid_tfm(p, 8), on_error='skip')
    with pytest.warns(UserWarning, match='broken.JPEG'):
        x, y = skip[i]
    assert x.shape == (3, 8, 8) and y == labels[(i + 1) % len(paths)]


@pytest.mark.parametrize('wh', [(40, 30), (30, 40), (200, 20), (16, 16)])
def test_crops_are_square_of_the_requested_size(wh):
    img = Image.new('RGB', wh, (10, 20, 30))
    assert random_resized_crop(img, 12).size == (12, 12)
    assert resize_centre_crop(img, 12).size == (12, 12)


def test_centre_crop_takes_the_middle():
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, 10:20] = 255  # white middle third of a wide image
    out = np.asarray(resize_centre_crop(Image.fromarray(a), 10))
    assert out.min() == 255


def test_image_pipelines_give_uint8_chw(tmp_path):
    p = draw(tmp_path / 'a.jpg', size=(64, 48))
    for t in (train_tfm(p, 24), valid_tfm(p, 24)):
        assert t.dtype == torch.uint8 and t.shape == (3, 24, 24)


def test_flip_and_normalize_on_the_batch():
    xb = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    assert torch.equal(flip_batch(xb, p=1.0), xb.flip(-1)) and torch.equal(flip_batch(xb, p=0.0), xb)
    u8 = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(
        normalize(u8, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)), torch.tensor([2.0, 1.0, 0.5])[None, :, None, None]
    )


def test_batch_transform_flips_only_in_training():
    torch.manual_seed(0)
    xb = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    ref = normalize(xb, (0.5,) * 3, (0.5,) * 3)
    for training in (False, True):
        learn = SimpleNamespace(training=training, xb=xb)
        cb = BatchTransform(((0.5,) * 3, (0.5,) * 3))
        cb.learn = learn
        cb.before_batch()
        flipped = [not torch.equal(a, r) for a, r in zip(learn.xb, ref)]
        assert torch.allclose(torch.where(torch.tensor(flipped)[:, None, None, None], learn.xb.flip(-1), learn.xb), ref)
        assert any(flipped) == training
