"""Feature extraction, done once per (encoder weights, dataset, split) and cached on disk."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from selfsup import distributed
from selfsup.data import CleanTransform, DataInfo, ImageDataset, make_loader
from selfsup.data.datasets import Subset
from selfsup.fileio import save_tensors


def fingerprint(encoder: nn.Module) -> str:
    """A short hash of the encoder's weights and buffers (the cache key)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def extract_features(encoder: nn.Module, ds: ImageDataset, info: DataInfo, batch_size: int = 512,
                     device: str | torch.device = "cpu", num_workers: int = 0,
                     sharded: bool = False) -> tuple[Tensor, Tensor]:
    """Pooled features ``[N, D]`` (float32) and labels ``[N]`` of clean images, encoder in eval mode.

    ``sharded`` (a collective: every rank of a distributed run calls it): each rank
    extracts a contiguous share of the images; rank 0 gets all rows in dataset order, the
    other ranks their own share."""
    encoder = encoder.to(device).eval()
    clean = CleanTransform(info.mean, info.std, info.image_size)
    share = rank_share(ds) if sharded else ds
    feats, labels = [], []
    if share is not None:
        for images, y in make_loader(share, batch_size, train=False, num_workers=num_workers):
            x = clean(images.to(device, non_blocking=True))
            feats.append(encoder(x).float().cpu())
            labels.append(y)
    mine = torch.cat(feats) if feats else torch.empty(0, _feature_dim(encoder, info, device))  # [n, D]
    my_labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)  # [n]
    if not sharded:
        return mine, my_labels
    return distributed.gather_to_rank0(mine), distributed.gather_to_rank0(my_labels)


def rank_share(ds: ImageDataset) -> ImageDataset | None:
    """This rank's contiguous share of ``ds`` (``ds`` itself in one process; None when empty)."""
    rows = distributed.shard(len(ds))
    if len(rows) == len(ds):
        return ds
    if not rows:
        return None
    return Subset(ds, list(rows))


@torch.no_grad()
def _feature_dim(encoder: nn.Module, info: DataInfo, device: str | torch.device) -> int:
    """Width of the encoder's features (for a rank whose share of the images is empty)."""
    x = torch.zeros(1, info.in_chans, info.image_size, info.image_size, device=device)
    return encoder(x).shape[1]


class FeatureFile:
    """A 2-D tensor in a safetensors file, read lazily a row range at a time.

    ``rows(start, stop)`` returns float32 ``[stop - start, D]`` through
    ``safe_open(...).get_slice``, which reads only that range; the file is opened per
    read, so the memory map (and its resident pages) is released after each chunk and
    a float16 file far larger than memory can be streamed. ``offset`` (``[D]``), when
    given, is subtracted from every row read (e.g. centring raw pixels on the training
    mean without materialising a centred copy).
    """

    def __init__(self, path: str | Path, name: str = "features", offset: Tensor | None = None) -> None:
        self.path = Path(path)
        self.name = name
        with safe_open(str(self.path), "pt") as f:
            sl = f.get_slice(name)
            shape = tuple(sl.get_shape())
            self.dtype = sl.get_dtype()  # safetensors dtype code, e.g. "F16"
        if len(shape) != 2:
            raise ValueError(f"{self.path}: tensor {name!r} has shape {list(shape)}, expected [rows, dim]")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.offset = None if offset is None else offset.detach().float().reshape(1, -1)  # [1, D]
        if self.offset is not None and self.offset.shape[1] != self.shape[1]:
            raise ValueError(f"offset has {self.offset.shape[1]} values, features have {self.shape[1]} columns")

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` as float32 ``[stop - start, D]`` (a fresh tensor)."""
        start, stop = max(0, start), min(stop, self.shape[0])
        with safe_open(str(self.path), "pt") as f:
            x = f.get_slice(self.name)[start:stop].float()  # [R, D]; copies out of the mapping
        return x if self.offset is None else x.sub_(self.offset)  # x is ours: shift in place

    def chunks(self, chunk_rows: int) -> Iterator[Tensor]:
        """Float32 chunks ``[<= chunk_rows, D]`` covering every row in order."""
        for start in range(0, self.shape[0], chunk_rows):
            yield self.rows(start, start + chunk_rows)

    def load(self, chunk_rows: int = 65_536) -> Tensor:
        """Every row as one float32 tensor ``[N, D]`` (for consumers that need it all in memory),
        filled chunk by chunk so no whole-file float16 copy exists beside it."""
        out = torch.empty(self.shape)  # [N, D]
        start = 0
        for x in self.chunks(chunk_rows):
            out[start:start + len(x)] = x
            start += len(x)
        return out

    def mean(self, chunk_rows: int = 65_536) -> Tensor:
        """Column mean ``[D]`` (float32), accumulated in float64 chunk by chunk."""
        total = torch.zeros(self.shape[1], dtype=torch.float64)
        for x in self.chunks(chunk_rows):
            total += x.double().sum(0)
        return (total / max(1, self.shape[0])).float()

    def centered(self, mean: Tensor) -> FeatureFile:
        """The same file, read with ``mean`` (``[D]``) subtracted from every row."""
        shift = mean if self.offset is None else mean + self.offset[0]
        return FeatureFile(self.path, self.name, shift)

    def tensor(self, name: str) -> Tensor:
        """Another (small) tensor of the same file, loaded whole, e.g. ``"labels"``."""
        with safe_open(str(self.path), "pt") as f:
            return f.get_tensor(name)


class FeatureCache:
    """Features stored as float16 safetensors under ``directory``, keyed by name and
    checked against the encoder fingerprint (a retrained encoder never reuses stale features).

    ``get`` loads a split into memory as float32; ``get_lazy`` returns a :class:`FeatureFile`
    that streams the float16 rows, for evaluators (kNN) that never need them all at once."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def has(self, name: str, key: str) -> bool:
        """Whether ``name`` is cached for the encoder with fingerprint ``key``."""
        path = self.path(name)
        if not path.exists():
            return False
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return meta.get("key") == key

    def store(self, name: str, key: str, feats: Tensor, labels: Tensor) -> None:
        """Write features ``[N, D]`` (as float16) and labels ``[N]`` under ``name``."""
        if feats.ndim != 2 or labels.shape != (len(feats),):
            raise ValueError(f"features for {name!r} must be [N, D] with labels [N], got "
                             f"{list(feats.shape)} and {list(labels.shape)}")
        save_tensors({"features": feats.half(), "labels": labels}, self.path(name), {"key": key})

    def get(self, name: str, key: str, compute: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Float32 features ``[N, D]`` (float16-rounded, as stored) and labels ``[N]``."""
        lazy, labels = self.get_lazy(name, key, compute)
        return lazy.load(), labels

    def get_lazy(self, name: str, key: str,
                 compute: Callable[[], tuple[Tensor, Tensor]]) -> tuple[FeatureFile, Tensor]:
        """A lazy :class:`FeatureFile` over the cached features and the labels ``[N]``;
        computed and stored first when missing or stale."""
        path = self.path(name)
        if not self.has(name, key):
            self.store(name, key, *compute())
        lazy = FeatureFile(path)
        labels = lazy.tensor("labels")
        if labels.shape != (lazy.shape[0],):
            raise ValueError(f"{path}: {lazy.shape[0]} feature rows but labels of shape {list(labels.shape)}; "
                             f"delete the file to recompute it")
        return lazy, labels
