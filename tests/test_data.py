"""Dataset registry: Fashion-MNIST from the Debian package, image folders, clear errors."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.config import DataConfig
from selfsup.data import DataError, build_dataset, make_loader
from selfsup.data.standard import FASHION_MNIST_SYSTEM_DIR


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


def test_decoded_uint8_cache_matches_decoding_and_follows_the_folder(tmp_path):
    """data.cache=uint8: the mapped copy holds exactly what decoding gives, skips unreadable
    files (listed in the bad-file log), is reused while the folder is unchanged and rebuilt
    when a file changes; DataLoader workers map it themselves."""
    import pickle

    from selfsup.data import make_loader
    from selfsup.data.decoded import MappedImages

    root, cache = tmp_path / "photos", tmp_path / "cache"
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        for i in range(5):
            path = root / "train" / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = torch.randint(0, 256, (12 + i, 10, 3), dtype=torch.uint8, generator=g).numpy()
            Image.fromarray(arr).save(path)
    (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # train/ without test/: data.holdout_fraction=0 keeps every image in the training split
    plain = build_dataset(DataConfig(name="image-folder", root=str(root), image_size=8, holdout_fraction=0), "train")
    cfg = DataConfig(name="image-folder", root=str(root), image_size=8, cache="uint8", cache_dir=str(cache),
                     holdout_fraction=0)
    with pytest.warns(UserWarning, match="1 unreadable image"):
        mapped = build_dataset(cfg, "train")
    assert isinstance(mapped, MappedImages) and len(mapped) == 10 and len(plain) == 11
    good = [i for i, f in enumerate(plain.files) if not f.endswith("broken.png")]
    expected = torch.stack([plain.load(i)[0] for i in good])  # [10, 3, 8, 8]
    assert torch.equal(mapped.images, expected)
    assert mapped.labels.tolist() == [plain.labels[i].item() for i in good]
    log = tmp_path / "bad.txt"
    mapped.set_bad_file_log(log)
    assert "broken.png\tcannot decode image" in log.read_text()

    again = build_dataset(cfg, "train")  # unchanged folder: the same file, no decoding (no warning)
    assert again.path == mapped.path and len(list(cache.glob("*.u8"))) == 1
    state = pickle.loads(pickle.dumps(again))  # what a spawned worker receives: no pixels, it maps the file
    assert state._images is None and torch.equal(state.images, expected)
    x, y = next(iter(make_loader(again, 4, train=False)))
    assert torch.equal(x, expected[:4]) and y.tolist() == again.labels[:4].tolist()

    Image.fromarray(torch.zeros(9, 9, 3, dtype=torch.uint8).numpy()).save(root / "train" / "a" / "0.png")
    with pytest.warns(UserWarning):
        changed = build_dataset(cfg, "train")
    assert changed.path != mapped.path and changed.images[0].sum() == 0

    strict = DataConfig(name="image-folder", root=str(root), image_size=8, cache="uint8", cache_dir=str(cache),
                        on_bad_file="error", holdout_fraction=0)
    with pytest.raises(DataError, match="broken.png"):
        build_dataset(strict, "train")


def test_decoded_cache_dir_that_cannot_be_made_is_a_clear_error(tmp_path):
    for c in ("a", "b"):
        _png(tmp_path / "photos" / "train" / c / "0.png", 10)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = DataConfig(name="image-folder", root=str(tmp_path / "photos"), image_size=8, cache="uint8",
                     cache_dir=str(blocker / "cache"))
    with pytest.raises(DataError, match="cannot use .*a-file/cache.*set data.cache_dir to a writable directory"):
        build_dataset(cfg, "train")


def test_an_empty_selection_is_an_empty_dataset_not_an_index_error():
    """Selecting no rows (e.g. the labelled rows of an unlabeled set) gives zero images."""
    from selfsup.data.base import Subset, TensorImages

    ds = TensorImages(torch.arange(12, dtype=torch.uint8).view(3, 1, 2, 2), torch.tensor([0, 1, -1]), 2)
    empty = Subset(ds, [])
    assert len(empty) == 0 and empty.labels.dtype == torch.long
    assert ds.__getitems__([])[0].shape == (0, 1, 2, 2)
    assert Subset(ds, [2, 0]).labels.tolist() == [-1, 0]
