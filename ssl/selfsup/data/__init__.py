"""Datasets, loaders and batched augmentation."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from selfsup.data.augment import AugmentConfig, BatchAugment, CleanTransform
from selfsup.data.datasets import (DATASETS, DataError, DataInfo, ImageDataset, TensorImages, WithIndices,
                                   build_dataset, collate, subset)

__all__ = ["AugmentConfig", "BatchAugment", "CleanTransform", "DATASETS", "DataError", "DataInfo",
           "ImageDataset", "TensorImages", "build_dataset", "collate", "subset", "make_loader"]


def make_loader(ds: ImageDataset, batch_size: int, *, train: bool, num_workers: int = 0,
                seed: int = 0, with_indices: bool = False) -> DataLoader:
    """A DataLoader yielding (uint8 [B, C, H, W], labels [B]), plus dataset indices [B]
    when ``with_indices`` (methods with per-image state).

    In-memory datasets are indexed a batch at a time in the main process; folders
    decode in ``num_workers`` persistent workers. Memory is pinned when CUDA is present.
    """
    in_memory = isinstance(ds, TensorImages)
    if with_indices:
        ds = WithIndices(ds)
    workers = 0 if in_memory else num_workers
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(ds) >= batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed) if train else None,
    )
