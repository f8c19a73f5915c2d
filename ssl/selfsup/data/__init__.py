"""Datasets, loaders and batched augmentation."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from selfsup import distributed
from selfsup.data.augment import AugmentConfig, BatchAugment, CleanTransform
from selfsup.data.base import DataError, DataInfo, ImageDataset, TensorImages, WithIndices, collate, subset
from selfsup.data.datasets import DATASETS, build_dataset  # every dataset registered

__all__ = ["AugmentConfig", "BatchAugment", "CleanTransform", "DATASETS", "DataError", "DataInfo",
           "ImageDataset", "TensorImages", "build_dataset", "collate", "subset", "make_loader", "EpochShuffle"]


class EpochShuffle(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch), so a run resumed at epoch e
    sees the same batches as one that never stopped, however often the loader is
    iterated in between. Lightning calls ``set_epoch`` at the start of every epoch.

    Distributed (read when iterated, so the loader can be built before the process
    group exists): each run of ``batch_size x world_size`` consecutive indices of the
    permutation is one global batch, and rank r takes its r-th contiguous slice. The
    global batches are then the same for any number of devices with the same global
    batch, gathering the ranks' rows restores one process's order (see
    :func:`selfsup.distributed.draw_local`), and the incomplete last global batch is
    dropped on every rank alike.
    """

    def __init__(self, data_source: ImageDataset, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.data_source, self.batch_size = data_source, batch_size
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, world = len(self.data_source), distributed.world_size()
        return n if world == 1 else n // (self.batch_size * world) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.data_source), generator=g)  # [N]
        world, b = distributed.world_size(), self.batch_size
        if world > 1:
            steps = len(perm) // (b * world)
            if steps == 0:
                raise ValueError(f"{len(perm)} training images are fewer than one global batch "
                                 f"(data.batch_size {b} x {world} processes); lower data.batch_size")
            perm = perm[:steps * b * world].view(steps, world, b)[:, distributed.rank()].flatten()
        yield from perm.tolist()


def make_loader(ds: ImageDataset, batch_size: int, *, train: bool, num_workers: int = 0,
                seed: int = 0, with_indices: bool = False) -> DataLoader:
    """A DataLoader yielding (uint8 [B, C, H, W], labels [B]), plus dataset indices [B]
    when ``with_indices`` (methods with per-image state).

    In-memory datasets are indexed a batch at a time in the main process; folders
    decode (and memory-mapped copies read) in ``num_workers`` persistent workers, a batch
    per call. Memory is pinned when CUDA is present.
    """
    in_memory = type(ds) is TensorImages  # memory-mapped sets (data.cache=uint8) read in workers too
    if with_indices:
        ds = WithIndices(ds)
    workers = 0 if in_memory else num_workers
    sampler = EpochShuffle(ds, batch_size, seed) if train else None
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
