"""Dataset registry: every dataset yields uint8 image tensors ``[C, H, W]`` and int labels.

Labels are ``-1`` for unlabeled images. Small datasets are held in memory as one
uint8 tensor and served a whole batch at a time (``__getitems__``), so a DataLoader
needs no workers for them; image folders decode files in DataLoader workers.

Splits: ``"train"`` (pretraining and the training side of evaluation) and
``"test"`` (evaluation only). STL-10 pretrains on ``train+unlabeled``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup.config import DataConfig
from selfsup.registry import Registry

if TYPE_CHECKING:
    from PIL import Image

DATASETS: Registry[Callable[[DataConfig, str], "ImageDataset"]] = Registry("dataset")

CACHE_DIR = Path.home() / ".cache" / "selfsup"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataError(RuntimeError):
    """The data cannot be found or read; the message says how to fix it."""


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the images (never the dataset's name)."""

    in_chans: int
    image_size: int
    num_classes: int  # 0 when unlabeled
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_samples: int = 0  # training images (0: unknown); sizes per-image state such as memory banks


class ImageDataset(Dataset):
    """Base: ``__getitem__`` -> (uint8 [C,H,W], label); ``labels`` is a LongTensor [N]."""

    labels: Tensor
    num_classes: int
    in_chans: int
    image_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def channel_stats(self, max_images: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std in [0, 1] units over (at most) ``max_images`` images."""
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(self), generator=g)[:max_images].tolist()
        x, _ = self.__getitems__(idx)
        x = x.float().div_(255)  # [N, C, H, W]
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

    def info(self) -> DataInfo:
        mean, std = self.channel_stats()
        return DataInfo(self.in_chans, self.image_size, self.num_classes, mean, std, len(self))

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        items = [item for item in (self[i] for i in indices) if item is not None]  # None: a skipped bad file
        return collate(items) if items else self.empty_batch()

    def empty_batch(self) -> tuple[Tensor, ...]:
        """A batch of zero images (every file of a batch was skipped as unreadable)."""
        return (torch.empty(0, self.in_chans, self.image_size, self.image_size, dtype=torch.uint8),
                torch.empty(0, dtype=torch.long))

    def set_bad_file_log(self, path: Path) -> None:
        """Where skipped unreadable files are listed (only image folders have any)."""

    def keep_batches_full(self) -> None:
        """Replace unreadable files instead of dropping them (image folders), so that every
        batch has its full size: distributed training needs the same batch on every rank."""


def collate(batch: tuple[Tensor, ...] | list) -> tuple[Tensor, ...]:
    """DataLoader collate: a batch from ``__getitems__`` passes through; a list of
    (image, label, ...) items is stacked."""
    if isinstance(batch, tuple):
        return batch
    images, *rest = zip(*batch)
    return (torch.stack(images), *(torch.as_tensor(r) for r in rest))


class WithIndices(ImageDataset):
    """Yields (image, label, dataset index) for methods with per-image state (memory banks)."""

    def __init__(self, base: ImageDataset) -> None:
        self.base, self.labels = base, base.labels
        self.num_classes, self.in_chans, self.image_size = base.num_classes, base.in_chans, base.image_size

    def __getitem__(self, i: int) -> tuple[Tensor, int, int] | None:
        item = self.base[i]
        return None if item is None else (*item, i)

    def set_bad_file_log(self, path: Path) -> None:
        self.base.set_bad_file_log(path)

    def keep_batches_full(self) -> None:
        self.base.keep_batches_full()

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(self.base, TensorImages):  # nothing can be skipped: one indexing op per batch
            return (*self.base.__getitems__(indices), torch.as_tensor(indices, dtype=torch.long))
        return super().__getitems__(indices)

    def empty_batch(self) -> tuple[Tensor, ...]:
        return (*self.base.empty_batch(), torch.empty(0, dtype=torch.long))


class TensorImages(ImageDataset):
    """Images held in memory: uint8 ``[N, C, H, W]`` and labels ``[N]``."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            raise DataError("the dataset holds no images")
        self.images, self.labels, self.num_classes = images, labels.long(), num_classes
        self.in_chans, self.image_size = images.shape[1], images.shape[-1]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]


def resize_images(images: Tensor, size: int | None) -> Tensor:
    """Resize a uint8 batch ``[N, C, H, W]`` to ``size`` x ``size`` (antialiased)."""
    if size is None or (images.shape[-1] == size and images.shape[-2] == size):
        return images
    from torchvision.transforms.v2 import functional as TF

    out = [TF.resize(chunk, [size, size], antialias=True) for chunk in images.split(4096)]
    return torch.cat(out)


def subset(ds: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """A seeded random subset of ``n`` images (the whole set when n is None or too big)."""
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    if type(ds) is TensorImages:  # in memory: copy the rows (a memory-mapped set keeps its mapping)
        return TensorImages(ds.images[idx], ds.labels[idx], ds.num_classes)
    return Subset(ds, idx.tolist())


class Subset(ImageDataset):
    """The images of ``base`` at ``indices``, in that order."""

    def __init__(self, base: ImageDataset, indices: list[int]) -> None:
        self.base, self.indices = base, indices
        self.labels = base.labels[torch.as_tensor(indices, dtype=torch.long)]
        self.num_classes, self.in_chans, self.image_size = base.num_classes, base.in_chans, base.image_size

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        return self.base[self.indices[i]]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        return self.base.__getitems__([self.indices[i] for i in indices])  # one indexing op for tensors

    def set_bad_file_log(self, path: Path) -> None:
        self.base.set_bad_file_log(path)

    def keep_batches_full(self) -> None:
        self.base.keep_batches_full()


# --------------------------------------------------------------------------- builders


def build_dataset(cfg: DataConfig, split: str) -> ImageDataset:
    """The dataset named by ``cfg.name`` for ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS.get(cfg.name)(cfg, split)


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


# --------------------------------------------------------------------------- image folders


def decode_image(path: str, in_chans: int, exif_orientation: bool = True) -> Tensor:
    """uint8 ``[C, H, W]`` of an image file as grayscale (C=1) or RGB (C=3), the way an
    image viewer shows it.

    The EXIF Orientation tag (JPEG, PNG, WebP) is applied first, so a phone photo stored
    sideways comes out upright (an unreadable EXIF block leaves the pixels as stored);
    ``exif_orientation=False`` keeps the stored pixel grid instead (for annotations made
    on it; Pillow applies a TIFF's Orientation tag itself, as its reported size says).
    Multi-frame files (GIF, TIFF, WebP, APNG) give their first frame. Palette, CMYK, RGBA,
    grayscale+alpha and 16-bit images are converted; transparency is dropped, not
    composited (each pixel keeps its stored colour, as torchvision's ImageFolder loader
    does); 16-bit values are scaled to 8 bits (65535 -> 255) instead of clipped.
    Any failure (missing permission, not an image, truncated or corrupt data) is a
    DataError naming the file.
    """
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    try:
        # from a file object, not the path: Pillow memory-maps uncompressed files opened by path,
        # and its mapping of a TIFF whose Orientation swaps width and height garbles the pixels
        with open(path, "rb") as f, Image.open(f) as im:
            im.load()  # decode now (the first frame): truncated files fail here, not later
            if exif_orientation:
                im = _upright(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16/32-bit grayscale
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
            elif im.mode == "P":
                im = im.convert("RGBA")  # palettes with transparency convert cleanly through RGBA
            im = im.convert("L" if in_chans == 1 else "RGB")
            return TF.pil_to_tensor(im)  # uint8 [C, H, W]
    except Exception as err:  # PIL raises many types for corrupt, truncated or foreign files
        raise DataError(f"cannot decode image {path!r}: {type(err).__name__}: {err}. Remove or replace the "
                        f"file, or set data.on_bad_file=skip to leave such files out") from None


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF Orientation tag (1-8) says; unchanged without a tag or
    when the EXIF block cannot be parsed (viewers then show the stored pixels too)."""
    from PIL import ImageOps

    try:
        ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
    except Exception:  # malformed EXIF raises assorted types; the pixels themselves are fine
        pass
    return im


class FolderImages(ImageDataset):
    """Image files decoded on access (in DataLoader workers), resized to a square side.

    ``on_bad_file="skip"`` leaves unreadable files out of their batch (``__getitem__``
    returns None, ``__getitems__`` drops it), warns once per process and appends the file
    and the reason to the log set by :meth:`set_bad_file_log`; ``"error"`` raises. After
    :meth:`keep_batches_full` (distributed training) an unreadable file is replaced by
    the next readable one instead, so no batch shrinks.
    """

    def __init__(self, files: list[str], labels: list[int], num_classes: int, size: int, in_chans: int,
                 on_bad_file: str = "skip", class_names: tuple[str, ...] = ()) -> None:
        self.files = files
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes, self.image_size, self.in_chans = num_classes, size, in_chans
        self.class_names = class_names  # label i is class_names[i] (class-folder names; empty when unlabeled)
        self.on_bad_file = on_bad_file
        self.bad_file_log: Path | None = None
        self.skipped: dict[str, str] = {}  # unreadable file -> reason, in this process (each worker has its own)
        self.substitute = False

    def set_bad_file_log(self, path: Path) -> None:
        self.bad_file_log = Path(path)

    def load(self, i: int) -> tuple[Tensor, int]:
        """Image ``i`` (uint8 ``[C, S, S]``: shorter side resized to S, centre crop) and its
        label; a DataError when the file cannot be decoded."""
        from torchvision.transforms.v2 import functional as TF

        img = decode_image(self.files[i], self.in_chans)
        img = TF.resize(img, self.image_size, antialias=True)  # shorter side -> size
        img = TF.center_crop(img, [self.image_size, self.image_size])
        return img, int(self.labels[i])

    def keep_batches_full(self) -> None:
        self.substitute = True

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        for step in range(len(self.files) if self.substitute else 1):
            j = (i + step) % len(self.files)
            if self.files[j] in self.skipped:  # known unreadable: not decoded again in later epochs
                continue
            try:
                return self.load(j)  # j != i: the next readable image stands in for file i
            except DataError as err:
                if self.on_bad_file == "error":
                    raise
                self._skip(self.files[j], str(err))
        if self.substitute:
            raise DataError(f"none of the {len(self.files)} image files can be decoded (see the warnings)")
        return None

    def _skip(self, path: str, reason: str) -> None:
        import warnings

        if not self.skipped:
            where = f"; the list is in {self.bad_file_log}" if self.bad_file_log else ""
            warnings.warn(f"skipping unreadable images (data.on_bad_file=skip), first: {reason}{where}", stacklevel=2)
        self.skipped[path] = reason
        if self.bad_file_log is not None:
            with open(self.bad_file_log, "a") as f:  # one short line per file: appends do not interleave
                f.write(f"{path}\t{reason}\n")


# Folders that never hold the user's images, besides every name starting with "." (hidden:
# .thumbnails/, .DS_Store, ._photo.jpg AppleDouble files): macOS resource forks unpacked from
# zip files, Synology and QNAP thumbnail and recycle folders, Windows recycle bins and volume
# data, fsck's lost+found, Python caches. Compared case-insensitively.
IGNORED_NAMES = frozenset(n.lower() for n in (
    "__MACOSX", "@eaDir", "@Recycle", "#recycle", "#snapshot", "$RECYCLE.BIN", "RECYCLER",
    "System Volume Information", "lost+found", "__pycache__"))

FileId = tuple  # (st_dev, st_ino) of a file after following links, or ("path", resolved path)

# Names that count as images (case-insensitive): torchvision ImageFolder's list plus other
# formats Pillow decodes (GIF and APNG give their first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp", ".tif", ".tiff",
                    ".webp", ".gif", ".avif")


def is_ignored(name: str) -> bool:
    """True for a hidden name (leading ``.``) or a system folder of :data:`IGNORED_NAMES`."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _few(names: list[str], n: int = 3) -> str:
    """``'a', 'b', 'c' and 4 more``: a short list for one-line messages."""
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def file_id(path: str) -> FileId:
    """What makes two paths one file: ``(st_dev, st_ino)`` after following symlinks, which
    hard links share too; the resolved path when the file cannot be stat-ed (a broken link)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return (st.st_dev, st.st_ino)


def _list_dir(folder: str) -> tuple[list[str], list[str]]:
    """(image files, subfolders) directly in ``folder`` as paths, sorted by name, hidden and
    system names left out. Links are followed; a broken link with an image name counts as
    a file (it is then reported as unreadable). Raises DataError when the folder cannot be read."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not is_ignored(e.name)), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot list image folder {folder!r} ({err.strerror or err}); check that it "
                        f"exists and is readable") from None
    dirs = [e.path for e in entries if e.is_dir()]
    files = [e.path for e in entries if not e.is_dir() and _is_image_name(e.name)]
    return files, dirs


def _unique(paths: list[str]) -> list[tuple[str, FileId]]:
    """``(path, id)`` of each file once, in the given order: a later path to the same file
    (a symlink, a hard link, a linked folder) is dropped."""
    out, seen = [], set()
    for path in paths:
        fid = file_id(path)
        if fid not in seen:
            seen.add(fid)
            out.append((path, fid))
    return out


def _walk_images(folder: str) -> list[tuple[str, FileId]]:
    """``(path, id)`` of every image under ``folder`` (subfolders and linked folders
    included, hidden and system names left out), sorted by path, each file once; a folder
    reached again through a link (a link loop) is read once."""
    seen_dirs: set[FileId] = set()
    found: list[str] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        did = file_id(d)
        if did in seen_dirs:
            continue
        seen_dirs.add(did)
        files, dirs = _list_dir(d)
        found += files
        stack += reversed(dirs)  # depth first, in name order
    return _unique(sorted(found))


@dataclass(frozen=True)
class FolderScan:
    """The images of one folder: by class (class subfolders, read recursively) or loose
    (a flat, unlabeled folder); each file listed once, ``ids`` maps it to its :func:`file_id`."""

    folder: str
    classes: dict[str, list[str]]  # class-folder name -> its image files, sorted; {} for a flat folder
    loose: list[str]  # a flat folder's image files, sorted; [] when it has classes
    ids: dict[str, FileId]


def scan_folder(folder: str) -> FolderScan:
    """Read ``folder`` as class subfolders or as loose images (hidden and system entries
    ignored, see :func:`is_ignored`).

    Raises DataError when it mixes loose images with subfolders, or when one file (through
    a symlink or hard link) is in two classes.
    """
    files, dirs = _list_dir(folder)
    if files and dirs:
        raise DataError(
            f"image folder {folder!r} mixes {len(files)} loose image(s) ({_few([os.path.basename(f) for f in files])}) "
            f"with subfolder(s) ({_few([os.path.basename(d) + '/' for d in dirs])}); put every image in a class "
            f"subfolder (labelled) or move the subfolders out (unlabeled). Hidden names (starting with '.') and "
            f"system folders such as __MACOSX are ignored")
    if not dirs:
        loose = _unique(files)
        return FolderScan(folder, {}, [p for p, _ in loose], dict(loose))
    classes: dict[str, list[str]] = {}
    ids: dict[str, FileId] = {}
    owner: dict[FileId, tuple[str, str]] = {}  # file id -> (class, path) where first seen
    for d in dirs:
        name, listed = os.path.basename(d), _walk_images(d)
        for path, fid in listed:
            first_class, first_path = owner.setdefault(fid, (name, path))
            if first_class != name:
                raise DataError(f"{path!r} (class {name!r}) and {first_path!r} (class {first_class!r}) are the same "
                                f"file (a symlink or hard link); an image can have only one label: remove one of them")
        classes[name] = [p for p, _ in listed]
        ids.update(listed)
    return FolderScan(folder, classes, [], ids)


def _split_dirs(root: Path) -> tuple[str, str | None]:
    """(training folder, test folder or None) of an image-folder root: ``train/`` and
    ``test/`` (else ``val/``) when present, else the root and no test folder."""
    test = next((str(root / s) for s in ("test", "val") if (root / s).is_dir()), None)
    if (root / "train").is_dir():
        return str(root / "train"), test
    if test is not None:
        sub = os.path.basename(test)
        raise DataError(f"image folder {str(root)!r} has a {sub}/ subfolder but no train/; put the training images "
                        f"in train/ (class subfolders), or move {sub}/ out to split the folder itself")
    return str(root), None


def holdout_split(classes: dict[str, list[str]], folder: str, fraction: float,
                  seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, test) files per class: ``round(n * fraction)`` of a class's ``n`` images
    held out, at least 1 and at most ``n - 1`` when ``n >= 2`` (a single image trains).

    Which files are held out depends only on ``seed`` and each file's path relative to
    ``folder`` (the files ranked by a hash of both), never on the order files are listed
    in; adding a file moves at most one other file between the sides.
    """
    prefix = os.path.join(folder, "")  # the scan's paths are folder + os.sep + ...: slicing is 10x a Path's cost

    def rank(path: str) -> bytes:
        rel = path[len(prefix):] if path.startswith(prefix) else Path(path).relative_to(folder).as_posix()
        return hashlib.sha256(f"{seed}\0{rel.replace(os.sep, '/')}".encode()).digest()

    train, test = {}, {}
    for name, files in classes.items():
        n = len(files)
        k = 0 if n < 2 else min(max(int(n * fraction + 0.5), 1), n - 1)
        held = set(sorted(files, key=rank)[:k])
        train[name] = [f for f in files if f not in held]
        test[name] = [f for f in files if f in held]
    return train, test


def folder_split(root: Path, split: str, fraction: float = 0.2,
                 seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, class names) of ``split`` ("train" or "test") of an image folder.

    Class numbers are the sorted class-folder names of the training folder, the same for
    both splits. Without ``test/`` or ``val/`` a labelled folder is split by
    :func:`holdout_split` (``fraction`` 0: all images train, no test split). Labels are -1
    and the class list empty for an unlabeled (flat) folder.

    Raises DataError for: a test split that cannot exist (unlabeled folder without test/,
    ``fraction`` 0); a test class the training folder lacks; a training class folder with
    no images; loose images beside class folders; one file in two classes or in both
    splits; no images at all.
    """
    train_dir, test_dir = _split_dirs(root)
    train = scan_folder(train_dir)
    if not train.classes:
        files = _unlabeled_side(train, test_dir, split, root)
        return files, [-1] * len(files), []
    empty = sorted(name for name, files in train.classes.items() if not files)
    if empty:
        raise DataError(f"class folder(s) {_few(empty)} in {train_dir!r} hold no images (hidden and non-image files "
                        f"and system folders are not counted); add images to them or remove them")
    names = sorted(train.classes)
    if test_dir is None:
        chosen = _held_out_side(train, root, split, fraction, seed)
    elif split == "train":
        chosen = train.classes
    else:
        chosen = _test_classes(train, scan_folder(test_dir), names)
    files = [f for name in names for f in chosen.get(name, [])]
    labels = [i for i, name in enumerate(names) for _ in chosen.get(name, [])]
    return _nonempty(files, test_dir if split == "test" and test_dir else train_dir), labels, names


def _unlabeled_side(train: FolderScan, test_dir: str | None, split: str, root: Path) -> list[str]:
    """The files of ``split`` when the training folder has no class subfolders."""
    if split == "train":
        return _nonempty(train.loose, train.folder)
    if test_dir is None:
        raise DataError(f"image folder {str(root)!r} is unlabeled (no class subfolders) and has no test/ or val/ "
                        f"subfolder, so there is nothing to evaluate on; kNN and probes need a folder of class "
                        f"subfolders")
    test = scan_folder(test_dir)
    if test.classes:
        raise DataError(f"{test_dir!r} has class subfolders ({_few(sorted(test.classes))}) but {train.folder!r} has "
                        f"none; kNN and probes need labelled training images: put them in the same class subfolders")
    return _nonempty(test.loose, test_dir)


def _held_out_side(train: FolderScan, root: Path, split: str, fraction: float, seed: int) -> dict[str, list[str]]:
    """``split``'s files per class of a labelled folder without test/ or val/ (see :func:`holdout_split`)."""
    if fraction <= 0:
        if split == "test":
            raise DataError(f"image folder {str(root)!r} has no test/ or val/ subfolder and data.holdout_fraction is "
                            f"0, so there is nothing to evaluate on; set data.holdout_fraction (e.g. 0.2) or add test/")
        return train.classes
    kept, held = holdout_split(train.classes, train.folder, fraction, seed)
    if split == "test" and not any(held.values()):
        raise DataError(f"no class in {train.folder!r} has two or more images, so none can be held out for testing; "
                        f"add images or a test/ subfolder")
    return held if split == "test" else kept


def _test_classes(train: FolderScan, test: FolderScan, names: list[str]) -> dict[str, list[str]]:
    """``test``'s files per class, checked against the training folder's classes and files."""
    if not test.classes:
        raise DataError(f"{test.folder!r} holds loose images but {train.folder!r} has class subfolders; put the test "
                        f"images in class subfolders named like the training ones ({_few(names)})")
    extra = sorted(name for name, files in test.classes.items() if files and name not in train.classes)
    if extra:
        raise DataError(f"test class(es) {_few(extra, 10)} in {test.folder!r} are not in {train.folder!r} (classes "
                        f"{_few(names)}); class numbers come from the training folder: add the class(es) there or "
                        f"remove them from the test folder")
    train_ids = set(train.ids.values())
    shared = [path for path, fid in test.ids.items() if fid in train_ids]
    if shared:
        raise DataError(f"{len(shared)} test image(s) are the same files (symlinks or hard links) as training "
                        f"images, first {shared[0]!r}; a test image seen in training inflates the score: remove them "
                        f"from one split")
    return test.classes


def _nonempty(files: list[str], folder: str) -> list[str]:
    if not files:
        raise DataError(f"image folder {folder!r} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)} "
                        f"(names starting with '.' and system folders such as __MACOSX are ignored)")
    return files


@DATASETS.register("image-folder")
def image_folder(cfg: DataConfig, split: str) -> ImageDataset:
    """Any folder of images. Class subfolders give labels; a flat folder is unlabeled.

    If ``root`` holds ``train/`` and ``test/`` (or ``val/``) subfolders they are the
    splits; a labelled folder without them is split by ``data.holdout_fraction`` and
    ``data.holdout_seed`` (see :func:`folder_split`); an unlabeled one is all training.
    Hidden entries (names starting with ``.``) and system folders (:data:`IGNORED_NAMES`)
    are ignored; each file counts once however it is linked.
    """
    if not cfg.root:
        raise DataError("data.root must name the image folder for dataset 'image-folder'")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    files, labels, names = folder_split(root, split, cfg.holdout_fraction, cfg.holdout_seed)
    ds = FolderImages(files, labels, len(names), cfg.image_size or 224, cfg.in_chans or 3, cfg.on_bad_file,
                      tuple(names))
    if cfg.cache == "uint8":
        from selfsup.data.decoded import cached_folder

        return cached_folder(ds, cfg.cache_dir, split, cfg.num_workers)
    return ds
