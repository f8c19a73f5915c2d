"""Feature extraction, done once per (encoder weights, dataset, split) and cached on disk."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor, nn

from selfsup import distributed
from selfsup.progress import progress
from selfsup.data import CleanTransform, DataInfo, ImageDataset, TensorImages, make_loader
from selfsup.data.base import Subset, WithIndices
from selfsup.data.imagefiles import FolderImages
from selfsup.eval.layers import Stage, stage_vectors
from selfsup.fileio import save_tensors
from selfsup.memory import empty_float32

FLOAT16_RTOL = 2.0 ** -11  # float16's unit roundoff: the relative error of rounding a normal value
# float16 rounding of a column stays below this share of the column's standard deviation: its rounding noise
# (RMS: the largest error / sqrt(3)) then adds at most 7% to the spread the probe's standardisation reads;
# random-init resnet18 / resnet50 features on Fashion-MNIST have at most 4.6% / 9.3% (float16), while a column
# 1e4 +- 1e-2 has 40,000% (float32)
SPREAD_RTOL = 2.0 ** -3
HASH_CHUNK_BYTES = 64 * 2**20  # image bytes hashed at a time


def fingerprint(encoder: nn.Module) -> str:
    """A short hash of what the encoder computes (the cache key): its structure (each submodule's path,
    class and plain attributes: strides, dilations, pooling type, activation classes;
    :func:`selfsup.encoders.model_fingerprint`) and its weights and buffers. The weights alone named two
    encoders alike that compute other features (timm's ``output_stride`` or ``global_pool`` change no
    weight), so an evaluation folder shared by both read one's cached features as the other's."""
    from selfsup.encoders import model_fingerprint

    h = hashlib.blake2b(digest_size=12)
    structure, _ = model_fingerprint(encoder)  # [(path, class, sorted plain attributes)]
    h.update(repr(structure).encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _update_rows(h: "hashlib._Hash", images: Tensor, indices: Tensor | None = None) -> None:
    """Feed the bytes of ``images`` ``[N, ...]`` (the rows at ``indices`` when given) to ``h``,
    a chunk of rows at a time (no copy of the whole tensor)."""
    n = len(images) if indices is None else len(indices)
    row_bytes = max(1, images[:1].numel() * images.element_size())
    step = max(1, HASH_CHUNK_BYTES // row_bytes)
    for start in range(0, n, step):
        rows = images[start:start + step] if indices is None else images[indices[start:start + step]]
        h.update(rows.contiguous().reshape(-1).view(torch.uint8).numpy())  # [rows * bytes]


def dataset_fingerprint(ds: ImageDataset) -> str:
    """A hash of the images and labels ``ds`` yields, cheap where it can be:

    - image folders (:class:`FolderImages`): each file's path, size and modification time,
      its label, the side length and channels (``selfsup.data.decoded.folder_key``);
    - a memory-mapped decoded copy: its file's path, size and modification time (the
      name holds the folder's key) and the labels;
    - images in memory: their bytes and the labels;
    - a subset: its rows of an in-memory base, else the base's fingerprint and the indices;
    - anything else: every image read through ``__getitems__``, and the labels.
    """
    from selfsup.data.decoded import MappedImages, folder_key

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(ds).__name__}|{len(ds)}|{ds.num_classes}|{ds.in_chans}|{ds.image_size}|".encode())
    h.update(ds.labels.long().contiguous().numpy())  # [N]
    if isinstance(ds, WithIndices):
        h.update(dataset_fingerprint(ds.base).encode())
    elif isinstance(ds, Subset):
        idx = torch.as_tensor(ds.indices, dtype=torch.long)  # [n]
        if type(ds.base) is TensorImages:
            _update_rows(h, ds.base.images, idx)
        else:
            h.update(dataset_fingerprint(ds.base).encode())
            h.update(idx.numpy())
    elif isinstance(ds, MappedImages):
        st = ds.path.stat()
        h.update(f"{ds.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{list(ds.shape)}".encode())
    elif isinstance(ds, TensorImages):
        _update_rows(h, ds.images)
    elif isinstance(ds, FolderImages):
        h.update(folder_key(ds).encode())
    else:
        for start in range(0, len(ds), 256):
            h.update(ds.__getitems__(list(range(start, min(start + 256, len(ds)))))[0].contiguous().numpy())
    return h.hexdigest()


def float16_faithful(x: Tensor, chunk_elements: int = 2**22) -> bool:
    """Whether float16 holds the features ``x`` ``[N, D]`` faithfully: every value is finite and
    rounding it to float16 changes it by at most :data:`FLOAT16_RTOL` (2^-11) times the largest
    |value| of its row and of its column, the scales cosine kNN (rows) and the probe's
    standardisation (columns) see. Fails for values above float16's range (65504, they would
    become inf) and for rows or columns that lie wholly in float16's subnormal range
    (below 2^-14 = 6.1e-5, where float16 keeps only a few bits). And every column's largest
    rounding error is at most :data:`SPREAD_RTOL` (2^-3) of its standard deviation over the rows
    (a constant column excepted: float16 keeps it constant): the probe standardises each column, so a column whose values
    vary little around a large one (a feature one constant vector dominates, as random-init
    efficientvit_b0's) would reach it as float16's rounding steps, not as its variation. Read
    ``chunk_elements`` values at a time (no full-size temporary), in one pass: the row bound is
    checked per chunk (rows are whole in a chunk), the column bounds at the end on the largest
    rounding error of each column (``max_i err_ij <= rtol * colmax_j`` is ``err_ij <= rtol * colmax_j``
    for all i) and its float64 sum and sum of squares."""
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {list(x.shape)}")
    n, d = x.shape
    if n == 0 or d == 0:
        return True
    step = max(1, chunk_elements // d)
    col_max = torch.zeros(d)  # [D] largest |value| of each column
    col_err = torch.zeros(d)  # [D] largest float16 rounding error of each column
    col_sum, col_sq = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)  # [D], [D]
    col_lo, col_hi = torch.full((d,), math.inf), torch.full((d,), -math.inf)  # [D], [D] signed extremes
    for start in range(0, n, step):
        c = x[start:start + step].float()  # [R, D]
        a = c.abs()  # [R, D]
        if not a.isfinite().all():
            return False
        err = (c.half().float() - c).abs()  # [R, D]; inf where float16 overflows
        if not (err <= FLOAT16_RTOL * a.amax(1, keepdim=True)).all():  # the row bound
            return False
        torch.maximum(col_max, a.amax(0), out=col_max)
        torch.maximum(col_err, err.amax(0), out=col_err)
        col_sum += c.double().sum(0)
        col_sq += c.double().square().sum(0)
        torch.minimum(col_lo, c.amin(0), out=col_lo)
        torch.maximum(col_hi, c.amax(0), out=col_hi)
    mean = col_sum / n
    std = (col_sq / n - mean.square()).clamp_min(0).sqrt()  # [D] population std over the rows
    spread_ok = (col_lo == col_hi) | (col_err.double() <= SPREAD_RTOL * std)
    return bool((col_err <= FLOAT16_RTOL * col_max).all() and spread_ok.all())  # the column bounds


def storage_dtype(x: Tensor) -> torch.dtype:
    """float16 where :func:`float16_faithful` allows it, else float32 (features never need more)."""
    return torch.float16 if float16_faithful(x) else torch.float32


@contextlib.contextmanager
def inference_layout(encoder: nn.Module, channels_last: bool) -> Iterator[torch.memory_format]:
    """The memory format for images going through ``encoder`` while features are extracted:
    ``channels_last`` for a convnet when asked (the ``encoder.channels_last`` config key, which
    training uses too), else contiguous. oneDNN's max pooling and BatchNorm are vectorised over
    channels in channels_last; contiguous, the stem's max pooling alone was 18% of a slim resnet18's
    extraction time (1 thread, Xeon, benchmarks/results/layers.md). A convnet's weights are put in
    that layout for the duration and given back contiguous on exit when they were, so the caller's
    module (exported, hashed or trained next) is left as it was: contiguous when it was, and never
    holding inference-mode tensors (the layout change is made outside inference mode)."""
    from selfsup.encoders import is_convnet

    if not (channels_last and is_convnet(encoder)):
        yield torch.contiguous_format
        return
    was_contiguous = all(p.is_contiguous() for p in encoder.parameters())
    with torch.inference_mode(False):  # new weights made under inference mode could never train again
        encoder.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        if was_contiguous:
            with torch.inference_mode(False):
                encoder.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def extract_features(encoder: nn.Module, ds: ImageDataset, info: DataInfo, batch_size: int = 512,
                     device: str | torch.device = "cpu", num_workers: int = 0,
                     sharded: bool = False, channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """Pooled features ``[N, D]`` (float32) and labels ``[N]`` of clean images, encoder in eval mode.

    ``sharded`` (a collective: every rank of a distributed run calls it): each rank
    extracts a contiguous share of the images; rank 0 gets all rows in dataset order, the
    other ranks their own share. ``channels_last``: a convnet runs in that memory format
    (:func:`inference_layout`; the same features up to float rounding)."""
    encoder = encoder.to(device).eval()
    clean = CleanTransform(info.mean, info.std, info.image_size)
    share = rank_share(ds) if sharded else ds
    feats, labels = [], []
    if share is not None:
        loader = make_loader(share, batch_size, train=False, num_workers=num_workers)
        with inference_layout(encoder, channels_last) as layout:
            for images, y in progress(loader, "features", total=len(loader), unit="batch"):
                x = clean(images.to(device, non_blocking=True)).contiguous(memory_format=layout)
                feats.append(encoder(x).float().cpu())
                labels.append(y)
    mine = torch.cat(feats) if feats else torch.empty(0, _feature_dim(encoder, info, device))  # [n, D]
    my_labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)  # [n]
    if not sharded:
        return mine, my_labels
    return distributed.gather_to_rank0(mine), distributed.gather_to_rank0(my_labels)


def memory_budget() -> int:
    """Bytes of stage rows :class:`StageRows` keeps in memory: an eighth of the machine's
    physical memory, at most 2 GiB (2 GiB when the size is unknown)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 2 << 30
    return min(2 << 30, total // 8)


class StageRows:
    """Rows of several stages' features, appended a batch at a time: in memory when all
    stages' float32 rows fit ``budget`` bytes (:func:`memory_budget`), else in anonymous float32
    scratch files in ``directory`` (nothing left behind on any exit), so extracting every stage
    of 60k images never needs them all in memory. A batch goes to the end of its stage's file in
    one sequential write: 7 ms for 512 rows of 12.5k values against 27-42 ms through a writable
    memory map (each first touch of a mapped page faults); the file is mapped only to be read.

    ``append({stage: [B, D_stage]})`` adds a batch; ``features(stage)`` is the float32 ``[n, D]``
    tensor of the rows written (in memory, or a read mapping of the scratch file, paged in as
    read); ``on_disk`` says which."""

    def __init__(self, directory: str | Path, max_rows: int, budget: int | None = None) -> None:
        self.directory = Path(directory)
        self.max_rows = max_rows
        self.budget = memory_budget() if budget is None else budget
        self.n = 0
        self.on_disk: bool | None = None  # decided by the first batch, which gives every stage's width
        self._maps: dict[str, np.ndarray] = {}  # in memory: [max_rows, D] per stage
        self._files: dict[str, Any] = {}  # on disk: a temporary file per stage, rows appended
        self._dims: dict[str, int] = {}

    def _scratch(self) -> Any:
        self.directory.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryFile(prefix=".stage-", suffix=".f32", dir=self.directory)

    def slots(self, b: int) -> dict[str, Tensor] | None:
        """Where the next ``b`` rows of each stage go (``{stage: [b, D]}`` views of the in-memory rows), for
        :func:`selfsup.eval.layers.stage_vectors` to pool into directly; None before the first batch (the
        widths are not known yet), on disk, or past the end. A batch written there is appended without a copy."""
        if self.on_disk is not False or not self._maps or self.n + b > self.max_rows:
            return None
        return {name: torch.from_numpy(rows)[self.n:self.n + b] for name, rows in self._maps.items()}

    def append(self, vectors: dict[str, Tensor]) -> None:
        rows = {len(v) for v in vectors.values()}
        if len(rows) != 1:
            raise ValueError(f"stages of one batch must have the same rows, got {sorted(rows)}")
        b = rows.pop()
        if self.n + b > self.max_rows:
            raise ValueError(f"more rows ({self.n + b}) than the {self.max_rows} expected")
        if self.on_disk is None:
            self.on_disk = 4 * max(1, self.max_rows) * sum(v.shape[1] for v in vectors.values()) > self.budget
        for name, v in vectors.items():
            self._dims.setdefault(name, v.shape[1])
            if self.on_disk:
                if name not in self._files:
                    self._files[name] = self._scratch()
                f = self._files[name]
                v.float().cpu().contiguous().numpy().tofile(f)  # [B, D] at the end of the file
                continue
            if name not in self._maps:
                self._maps[name] = empty_float32(max(1, self.max_rows), v.shape[1])  # no huge-page stalls
            dest = torch.from_numpy(self._maps[name])[self.n:self.n + b]  # [B, D]
            if v.data_ptr() != dest.data_ptr():  # not already written there through slots()
                dest.copy_(v.float().cpu())
        self.n += b

    def features(self, name: str) -> Tensor:
        """The float32 ``[n, D]`` rows of stage ``name`` appended so far."""
        if not self.on_disk:
            return torch.from_numpy(self._maps[name])[:self.n]  # [n, D]
        dim = self._dims[name]
        if self.n == 0:
            return torch.empty(0, dim)
        f = self._files[name]
        f.flush()
        return torch.from_numpy(np.memmap(f, dtype=np.float32, mode="c", shape=(self.n, dim)))  # [n, D]


@torch.inference_mode()
def extract_stages(encoder: nn.Module, ds: ImageDataset, info: DataInfo, stages: Sequence[Stage], pool: str,
                   scratch_dir: str | Path, batch_size: int = 512, device: str | torch.device = "cpu",
                   num_workers: int = 0, sharded: bool = False,
                   label: str = "the encoder", channels_last: bool = False) -> tuple[StageRows, Tensor]:
    """Pooled features of every stage in ``stages`` (:mod:`selfsup.eval.layers`) of clean images,
    encoder in eval mode, from ONE forward pass per batch; the rows go to a :class:`StageRows`
    in ``scratch_dir`` (``rows.features(name)``: float32 ``[n, D_stage]``), the labels ``[n]``
    are returned beside it. The final stage's rows equal :func:`extract_features`'s.

    ``sharded`` (every rank of a distributed run calls it): each rank extracts its own
    contiguous share (:func:`rank_share`); the caller gathers a stage at a time.
    ``channels_last``: as :func:`extract_features`'s."""
    encoder = encoder.to(device).eval()
    clean = CleanTransform(info.mean, info.std, info.image_size)
    share = rank_share(ds) if sharded else ds
    rows = StageRows(scratch_dir, 0 if share is None else len(share))
    labels = []
    if share is not None:
        loader = make_loader(share, batch_size, train=False, num_workers=num_workers)
        with inference_layout(encoder, channels_last) as layout:
            for images, y in progress(loader, f"stage features of {label}", total=len(loader), unit="batch"):
                x = clean(images.to(device, non_blocking=True)).contiguous(memory_format=layout)
                # {stage: [B, D_stage]}, pooled straight into the rows when they are in memory
                rows.append(stage_vectors(encoder, x, stages, pool, label, into=rows.slots(len(x))))
                labels.append(y)
    if rows.n == 0:  # no images here: the widths from one blank image, for the gather
        blank = torch.zeros(1, info.in_chans, info.image_size, info.image_size, device=device)
        rows = StageRows(scratch_dir, 1)
        rows.append(stage_vectors(encoder, blank, stages, pool, label))
        rows.n = 0
    return rows, torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)


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
    a float16 or float32 file far larger than memory can be streamed. ``offset`` (``[D]``), when
    given, is subtracted from every row read (e.g. centring raw pixels on the training
    mean without materialising a centred copy).
    """

    def __init__(self, path: str | Path, name: str = "features", offset: Tensor | None = None) -> None:
        self.path = Path(path)
        self.name = name
        with safe_open(str(self.path), "pt") as f:
            sl = f.get_slice(name)
            shape = tuple(sl.get_shape())
            self.dtype = sl.get_dtype()  # safetensors dtype code: "F16" or "F32"
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
        filled chunk by chunk so no whole-file copy in the stored dtype exists beside it."""
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
    """Features stored as safetensors under ``directory``, keyed by name and checked against
    a key (the caller's: :mod:`selfsup.eval.evaluate` joins the encoder's fingerprint and the
    data's, so neither a retrained encoder nor other data reuses stale features) and,
    when the caller passes them, against the data's labels.

    Features are stored as float16 when :func:`float16_faithful` says float16 holds them
    (each value within 2^-11 of the largest |value| of its row and of its column), else as
    float32 (values beyond float16's range, rows or columns of tiny values, non-finite
    values, which are kept as they are). ``get`` loads a split into memory as float32;
    ``get_lazy`` returns a :class:`FeatureFile` that streams the rows, for evaluators
    (kNN) that never need them all at once."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def has(self, name: str, key: str, labels: Tensor | None = None) -> bool:
        """Whether ``name`` is cached under ``key`` (and, given the data's ``labels`` ``[N]``,
        holds those labels: see :func:`labels_agree`). A file that cannot be read as one (cut short, damaged,
        not safetensors, no labels) is not: it is recomputed and written over, like a stale entry."""
        from safetensors import SafetensorError

        path = self.path(name)
        if not path.exists():
            return False
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") != key or not {"features", "labels"} <= set(f.keys()):
                    return False
                return labels is None or labels_agree(f.get_tensor("labels"), labels)
        except (SafetensorError, OSError, ValueError, RuntimeError):  # the rust reader's and torch's errors
            return False

    def store(self, name: str, key: str, feats: Tensor, labels: Tensor) -> None:
        """Write features ``[N, D]`` (float16 or float32, see :func:`storage_dtype`) and labels
        ``[N]`` under ``name``."""
        if feats.ndim != 2 or labels.shape != (len(feats),):
            raise ValueError(f"features for {name!r} must be [N, D] with labels [N], got "
                             f"{list(feats.shape)} and {list(labels.shape)}")
        save_tensors({"features": feats.to(storage_dtype(feats)), "labels": labels}, self.path(name), {"key": key})

    def get(self, name: str, key: str, compute: Callable[[], tuple[Tensor, Tensor]],
            labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Float32 features ``[N, D]`` (as stored: float16-rounded within the stated tolerance,
        or exact) and labels ``[N]``; see :meth:`get_lazy`."""
        lazy, stored = self.get_lazy(name, key, compute, labels)
        return lazy.load(), stored

    def get_lazy(self, name: str, key: str, compute: Callable[[], tuple[Tensor, Tensor]],
                 labels: Tensor | None = None) -> tuple[FeatureFile, Tensor]:
        """A lazy :class:`FeatureFile` over the cached features and the labels ``[N]``;
        computed and stored first when missing, under another key, or (given the data's
        ``labels``) holding other labels: a stale entry is recomputed, never used."""
        path = self.path(name)
        if not self.has(name, key, labels):
            self.store(name, key, *compute())
        lazy = FeatureFile(path)
        labels = lazy.tensor("labels")
        if labels.shape != (lazy.shape[0],):
            raise ValueError(f"{path}: {lazy.shape[0]} feature rows but labels of shape {list(labels.shape)}; "
                             f"delete the file to recompute it")
        return lazy, labels


def labels_agree(stored: Tensor, labels: Tensor) -> bool:
    """Whether cached labels ``stored`` ``[n]`` are those of data with labels ``labels`` ``[N]``:
    equal, or (when unreadable images were left out while extracting, n < N) the labels of
    some of its rows in order."""
    stored, labels = stored.long().reshape(-1), labels.long().reshape(-1)
    if len(stored) == len(labels):
        return torch.equal(stored, labels)
    if len(stored) > len(labels):
        return False
    it = iter(labels.tolist())
    return all(any(y == v for v in it) for y in stored.tolist())  # a subsequence: one pass over labels
