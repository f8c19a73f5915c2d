"""Every dataset by name: importing this module registers them all in :data:`DATASETS`, and
:func:`build_dataset` builds one for a split.

Every dataset yields uint8 image tensors ``[C, H, W]`` and int labels (``-1`` for unlabeled
images). Splits: ``"train"`` (pretraining and the training side of evaluation) and ``"test"``
(evaluation only). Where each part lives:

- :mod:`selfsup.data.base`: what a dataset is (``ImageDataset``, ``TensorImages``, ``Subset``,
  ``WithIndices``, ``DataInfo``, ``DataError``, ``collate``) and the registry;
- :mod:`selfsup.data.standard`: MNIST, Fashion-MNIST, CIFAR-10/100, STL-10, digits;
- :mod:`selfsup.data.imagefiles`: decoding image files (``decode_image``, ``FolderImages``);
- :mod:`selfsup.data.folders`: image folders, their classes and train/test split.

The names below stay importable from here as before.
"""

from __future__ import annotations

from selfsup.config import DataConfig
from selfsup.data.base import (DATASETS, DataError, DataInfo, ImageDataset, Subset, TensorImages, WithIndices,
                               collate, resize_images, subset)
from selfsup.data.folders import (IGNORED_NAMES, IMAGE_EXTENSIONS, FileId, FolderScan, file_id, folder_split,
                                  holdout_split, image_folder, is_ignored, scan_folder)
from selfsup.data.imagefiles import FolderImages, decode_image
from selfsup.data.standard import (CACHE_DIR, FASHION_MNIST_SYSTEM_DIR, cifar10, cifar100, digits, fashion_mnist,
                                   mnist, stl10)

__all__ = ["CACHE_DIR", "DATASETS", "DataError", "DataInfo", "FASHION_MNIST_SYSTEM_DIR", "FileId", "FolderImages",
           "FolderScan", "IGNORED_NAMES", "IMAGE_EXTENSIONS", "ImageDataset", "Subset", "TensorImages", "WithIndices",
           "build_dataset", "cifar10", "cifar100", "collate", "decode_image", "digits", "fashion_mnist", "file_id",
           "folder_split", "holdout_split", "image_folder", "is_ignored", "mnist", "resize_images", "scan_folder",
           "stl10", "subset"]


def build_dataset(cfg: DataConfig, split: str) -> ImageDataset:
    """The dataset named by ``cfg.name`` for ``split`` ("train" or "test").

    Raises ValueError for another split, RegistryError for an unknown name, and whatever the
    dataset raises (DataError when its files are missing or unreadable)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS.get(cfg.name)(cfg, split)
