"""Dataset registry: Fashion-MNIST from the Debian package, image folders, clear errors."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.config import DataConfig
from selfsup.data import DataError, build_dataset, make_loader
from selfsup.data.datasets import FASHION_MNIST_SYSTEM_DIR


def test_fashion_mnist_from_debian_package():
    assert FASHION_MNIST_SYSTEM_DIR.is_dir(), "install it: apt-get install dataset-fashion-mnist (.ci/run does)"
    ds = build_dataset(DataConfig(name="fashion-mnist"), "test")
    assert len(ds) == 10000 and ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    x, y = next(iter(make_loader(ds, 32, train=True)))
    assert x.shape == (32, 1, 28, 28) and y.shape == (32,)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"data.download=true.*data.root"):
        build_dataset(DataConfig(name="mnist", root=str(tmp_path)), "train")


def _png(path: Path, value: int, size=(10, 14), channels=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB" if channels == 3 else "L", size[::-1], (value,) * channels).save(path)


def test_image_folder_with_classes_and_splits(tmp_path):
    for split in ("train", "test"):
        for c, v in (("cat", 10), ("dog", 200)):
            for i in range(3):
                _png(tmp_path / split / c / f"{i}.png", v)
    ds = build_dataset(DataConfig(name="image-folder", root=str(tmp_path), image_size=8), "train")
    assert len(ds) == 6 and ds.num_classes == 2
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and y == 1 and int(x.float().mean()) == 200
    test = build_dataset(DataConfig(name="image-folder", root=str(tmp_path), image_size=8), "test")
    assert len(test) == 6


def test_flat_folder_is_unlabeled_and_grayscale_option(tmp_path):
    for i in range(4):
        _png(tmp_path / f"img{i}.png", 50 * i)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = build_dataset(DataConfig(name="image-folder", root=str(tmp_path), image_size=6, in_chans=1), "train")
    assert len(ds) == 4 and ds.num_classes == 0 and ds.labels.tolist() == [-1] * 4
    assert ds[0][0].shape == (1, 6, 6)
    with pytest.raises(DataError, match="no test/ or val/"):
        build_dataset(DataConfig(name="image-folder", root=str(tmp_path)), "test")


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        build_dataset(DataConfig(name="image-folder", root=str(tmp_path)), "train")


def test_unknown_dataset_suggests():
    with pytest.raises(KeyError, match="did you mean 'fashion-mnist'"):
        build_dataset(DataConfig(name="fashion_mnist"), "train")
