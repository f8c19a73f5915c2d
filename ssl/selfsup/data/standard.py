"""The standard datasets, held in memory as :class:`~selfsup.data.base.TensorImages`:
MNIST, Fashion-MNIST, CIFAR-10/100 and STL-10 through torchvision, scikit-learn's 8x8 digits.

Each is found under ``data.root``, a system folder (Debian's Fashion-MNIST package) or the
cache, or downloaded when ``data.download`` is set; a missing one is a DataError saying how
to get it. Splits: ``"train"`` and ``"test"``; STL-10 pretrains on ``train+unlabeled``.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch

from selfsup.config import DataConfig
from selfsup.data.base import DATASETS, DataError, TensorImages, resize_images

CACHE_DIR = Path.home() / ".cache" / "selfsup"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def _from_torchvision(data, targets, num_classes: int, size: int | None) -> TensorImages:
    x = torch.as_tensor(data)
    if x.ndim == 3:  # [N, H, W] grayscale
        x = x[:, None]
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # [N, H, W, C] -> [N, C, H, W]
        x = x.permute(0, 3, 1, 2)
    x = resize_images(x.contiguous(), size)
    return TensorImages(x, torch.as_tensor(targets), num_classes)


def _missing(name: str, tried: list[str], how: str) -> DataError:
    return DataError(f"{name} was not found (looked in: {'; '.join(tried)}). {how}")


def _stage_idx_files(src: Path, dst_root: Path, folder: str, names: list[str]) -> Path:
    """Copy (and gunzip) IDX files into torchvision's ``root/<folder>/raw`` layout."""
    raw = dst_root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in names:
        out = raw / name
        if out.exists():
            continue
        tmp = out.with_suffix(".tmp")
        if (src / name).exists():
            shutil.copyfile(src / name, tmp)
        else:
            with gzip.open(src / f"{name}.gz", "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        tmp.replace(out)
    return dst_root


_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _has_idx(folder: Path) -> bool:
    return all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in _MNIST_FILES)


def _mnist_like(cls_name: str, cfg: DataConfig, split: str, system_dir: Path | None, how: str) -> TensorImages:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    train = split == "train"
    candidates = [Path(cfg.root)] if cfg.root else []
    if system_dir is not None and not cfg.root:
        candidates.append(system_dir)
    tried = []
    for folder in candidates:
        tried.append(str(folder))
        if (folder / cls_name / "raw").is_dir() and _has_idx(folder / cls_name / "raw"):
            ds = cls(str(folder), train=train, download=False)
            return _from_torchvision(ds.data, ds.targets, 10, cfg.image_size)
        if _has_idx(folder):  # flat folder of IDX files, e.g. Debian's dataset-fashion-mnist
            staged = _stage_idx_files(folder, CACHE_DIR / "datasets", cls_name, _MNIST_FILES)
            ds = cls(str(staged), train=train, download=False)
            return _from_torchvision(ds.data, ds.targets, 10, cfg.image_size)
    if cfg.download:
        root = Path(cfg.root) if cfg.root else CACHE_DIR / "datasets"
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as err:  # network errors come in many types
            raise _missing(cls_name, tried, f"Downloading into {root} failed ({err}). {how}") from err
        return _from_torchvision(ds.data, ds.targets, 10, cfg.image_size)
    raise _missing(cls_name, tried or ["no root given"],
                   f"{how} Or set data.download=true to download it, or data.root=DIR to point at it.")


@DATASETS.register("fashion-mnist")
def fashion_mnist(cfg: DataConfig, split: str) -> TensorImages:
    """Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grayscale, 10 classes."""
    return _mnist_like("FashionMNIST", cfg, split, FASHION_MNIST_SYSTEM_DIR,
                       "On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist.")


@DATASETS.register("mnist")
def mnist(cfg: DataConfig, split: str) -> TensorImages:
    """MNIST (LeCun et al. 1998): 60k/10k 28x28 grayscale digits."""
    return _mnist_like("MNIST", cfg, split, None, "")


def _cifar(cls_name: str, num_classes: int, cfg: DataConfig, split: str) -> TensorImages:
    import torchvision.datasets as tvd

    root = Path(cfg.root) if cfg.root else CACHE_DIR / "datasets"
    cls = getattr(tvd, cls_name)
    try:
        ds = cls(str(root), train=split == "train", download=cfg.download)
    except RuntimeError as err:
        raise _missing(cls_name, [str(root)], f"({err}) Set data.download=true (needs the network) "
                       f"or data.root to a folder holding the extracted python-version archive.") from None
    return _from_torchvision(ds.data, ds.targets, num_classes, cfg.image_size)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig, split: str) -> TensorImages:
    """CIFAR-10 (Krizhevsky 2009): 50k/10k 32x32 RGB, 10 classes."""
    return _cifar("CIFAR10", 10, cfg, split)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig, split: str) -> TensorImages:
    """CIFAR-100 (Krizhevsky 2009): 50k/10k 32x32 RGB, 100 classes."""
    return _cifar("CIFAR100", 100, cfg, split)


@DATASETS.register("stl10")
def stl10(cfg: DataConfig, split: str) -> TensorImages:
    """STL-10 (Coates et al. 2011): 96x96 RGB; pretraining uses train+unlabeled (105k)."""
    import torchvision.datasets as tvd

    root = Path(cfg.root) if cfg.root else CACHE_DIR / "datasets"
    tv_split = "train+unlabeled" if split == "train" else "test"
    try:
        ds = tvd.STL10(str(root), split=tv_split, download=cfg.download)
    except RuntimeError as err:
        raise _missing("STL10", [str(root)], f"({err}) Set data.download=true (needs the network) "
                       f"or data.root to the folder holding stl10_binary/.") from None
    return _from_torchvision(ds.data, ds.labels, 10, cfg.image_size)


@DATASETS.register("digits")
def digits(cfg: DataConfig, split: str) -> TensorImages:
    """scikit-learn's bundled 8x8 digits (1,797 images), split 80/20 stratified with seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = torch.from_numpy(d.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]  # [N,1,8,8]
    labels = torch.from_numpy(d.target)
    tr, te = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=d.target)
    idx = torch.as_tensor(tr if split == "train" else te)
    return TensorImages(resize_images(images[idx], cfg.image_size), labels[idx], 10)
