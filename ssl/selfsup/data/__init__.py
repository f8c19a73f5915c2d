"""Datasets, loaders and batched augmentation."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler

from selfsup.data.augment import AugmentConfig, BatchAugment, CleanTransform
from selfsup.data.datasets import (DATASETS, DataError, DataInfo, ImageDataset, TensorImages, WithIndices,
                                   build_dataset, collate, subset)

__all__ = ["AugmentConfig", "BatchAugment", "CleanTransform", "DATASETS", "DataError", "DataInfo",
           "ImageDataset", "TensorImages", "build_dataset", "collate", "subset", "make_loader", "EpochShuffle"]


class EpochShuffle(RandomSampler):
    """A shuffled order that depends only on (seed, epoch), so a run resumed at epoch e
    sees the same batches as one that never stopped, however often the loader is
    iterated in between. Lightning calls ``set_epoch`` at the start of every epoch (and
    swaps in its DistributedSampler, likewise seeded by epoch, when training is
    distributed)."""

    def __init__(self, data_source: ImageDataset, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


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
    sampler = EpochShuffle(ds, seed) if train else None
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and len(ds) >= batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # worker seeds without drawing from the global RNG
    )
