"""What every dataset is: uint8 image tensors ``[C, H, W]`` with int labels (``-1`` when
unlabeled), the wrappers that index, subset and batch them, and the dataset registry.

Small datasets are held in memory as one uint8 tensor (:class:`TensorImages`) and served a
whole batch at a time (``__getitems__``), so a DataLoader needs no workers for them. The
datasets themselves register in :data:`DATASETS` from :mod:`selfsup.data.standard` (the
torchvision and scikit-learn sets) and :mod:`selfsup.data.folders` (any image folder);
:mod:`selfsup.data.datasets` imports them all and builds one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup.config import DataConfig
from selfsup.registry import Registry

DATASETS: Registry[Callable[[DataConfig, str], "ImageDataset"]] = Registry("dataset")


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

    @classmethod
    def from_json(cls, d: dict) -> DataInfo:
        """The DataInfo a run's ``data_info.json`` holds (``dataclasses.asdict`` of one, lists for tuples).

        Raises:
            TypeError, ValueError: ``d`` is not such a dict (a key missing or foreign, a count not a positive
                integer, a statistic not ``in_chans`` finite numbers, a std not above 0)."""
        import math

        info = cls(**{**d, "mean": tuple(float(v) for v in d["mean"]), "std": tuple(float(v) for v in d["std"])})
        counts = (info.in_chans, info.image_size, info.num_classes, info.num_samples)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts) or min(info.in_chans,
                                                                                           info.image_size) < 1:
            raise ValueError(f"channels, side, classes and images must be integers (channels, side >= 1): {counts}")
        if not len(info.mean) == len(info.std) == info.in_chans or \
                not all(math.isfinite(v) for v in (*info.mean, *info.std)) or min(info.std) <= 0:
            raise ValueError(f"mean {info.mean} and std {info.std} must be {info.in_chans} finite numbers each, the "
                             f"std above 0")
        return info


class ImageDataset(Dataset):
    """Base: ``__getitem__`` -> (uint8 [C,H,W], label); ``labels`` is a LongTensor [N]."""

    labels: Tensor
    num_classes: int
    in_chans: int
    image_size: int
    class_names: tuple[str, ...] = ()  # label i's name where the data has names (an image folder's class folders)

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

    def fingerprint(self) -> str | None:
        """A hash of everything :meth:`info` reads that can change while the config stays the same (an image
        folder's files), from the file system alone (no image decoded), or None where there is none: the same
        hash later means the same :meth:`info` without decoding the images again. Image folders have one."""
        return None

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
        self.class_names = base.class_names

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
        self.class_names = base.class_names

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        return self.base[self.indices[i]]

    def fingerprint(self) -> str | None:
        """The base's fingerprint and these indices (:meth:`ImageDataset.fingerprint`)."""
        import hashlib

        base = self.base.fingerprint()
        if base is None:
            return None
        return hashlib.sha256(f"{base}|{','.join(map(str, self.indices))}".encode()).hexdigest()

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        return self.base.__getitems__([self.indices[i] for i in indices])  # one indexing op for tensors

    def set_bad_file_log(self, path: Path) -> None:
        self.base.set_bad_file_log(path)

    def keep_batches_full(self) -> None:
        self.base.keep_batches_full()
