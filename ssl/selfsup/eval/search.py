"""Cosine top-k search on faiss (Johnson, Douze, Jegou 2017, "Billion-scale similarity search
with GPUs") over L2-normalised features, so inner product is cosine similarity: the
neighbour search under the kNN protocol (:mod:`selfsup.eval.knn`). The
train features are read chunk by chunk from a tensor or a lazy float16 file
(:class:`selfsup.eval.features.FeatureFile`), never converted to float32 all at once
(the queries, far fewer, are), and the index is chosen by size (:func:`plan_index`):

- exact (default up to ``exact_max`` = 2,000,000 train rows): for each train chunk an
  ``IndexFlatIP`` over that chunk answers every query, and ``faiss.ResultHeap`` merges
  the per-chunk top-k: the neighbours of one flat index over all rows (up to ties).
- IVF (beyond ``exact_max``, or ``kind="ivf"``): an inverted file of ``nlist`` cells
  (default ``round(sqrt(N) / 2)``, :func:`default_nlist`) from spherical k-means on a seeded sample of
  ``256 * nlist`` rows (faiss's own cap per centroid); a query scans the ``nprobe`` cells whose centroids are nearest.
  Codes are float16 (``IndexIVFScalarQuantizer``, ``QT_fp16``: the precision of the
  feature cache, half the memory of float32) or float32 (``IndexIVFFlat``, ``codes="flat"``).
  Rows are added chunk by chunk.

nprobe trades recall for time: a query scans about ``nprobe * N / nlist`` rows, so search
time grows linearly with nprobe while recall@k (the fraction of the exact top-k that IVF
returns) saturates. On clustered synthetic features (20,000 x 64, 100 clusters, k = 200,
the default 71 cells; tests/test_knn_scale.py) recall@k is 0.92 at nprobe 1, 0.97 at 4,
0.98 at the default 8, 0.99 at 16 and 0.999 at 32; at 1,000,000 x 512 (4,096 clusters,
512 cells, benchmarks/knn_scale.py) 0.966 at 1, 0.979 at 4 and 0.983 at 8, where IVF with
nprobe 1 (k-means, adding and search) took 5.7x less time than the exact search.
Building costs about ``N * nlist`` similarities to assign rows to cells plus k-means on
``256 * nlist`` rows, and a scanned row costs several times a row of the exact search's
matrix product (faiss scans codes, the exact search multiplies matrices).

faiss GPU indexes are used when faiss was built with GPU support and torch sees a GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import faiss
import numpy as np
import torch
from torch import Tensor

from selfsup.memory import empty_float32
from selfsup.progress import progress

EXACT_MAX = 2_000_000  # auto: exact search up to this many train rows
NPROBE = 8  # IVF cells scanned per query (see the module docstring for the recall trade-off)
GPU_MAX_K = 2048  # faiss GPU k-selection limit
# IVF k-means sample rows per cell: faiss's own cap (ClusteringParameters.max_points_per_centroid).
# Fewer gives centroids that split clusters across cells: on 250,000 x 512 clustered rows
# (8 clusters per cell) recall@200 at nprobe 1 was 0.75 with 40 rows per cell, 0.99 with 256.
TRAIN_PER_LIST = 256
KMEANS_ITERS = 10  # IVF k-means iterations (faiss's IVF default)


class RowSource(Protocol):
    """Anything with ``shape == (N, D)`` and ``rows(start, stop) -> Tensor [stop - start, D]``
    returning a fresh tensor on each call (e.g. :class:`selfsup.eval.features.FeatureFile`)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def rows(self, start: int, stop: int) -> Tensor: ...


Features = Tensor | RowSource


@dataclass(frozen=True)
class IndexOptions:
    """How the search index is chosen and built.

    kind: "auto" (exact up to ``exact_max`` rows, IVF beyond), "exact" or "ivf".
    nlist: IVF cells; None means :func:`default_nlist`. Always capped at ``N // 39``
        (faiss's k-means needs at least 39 training points per centroid).
    nprobe: IVF cells scanned per query (capped at nlist).
    codes: IVF storage, "fp16" (IndexIVFScalarQuantizer) or "flat" (IndexIVFFlat, float32).
    The k-means sample is ``min(N, TRAIN_PER_LIST * nlist)`` rows drawn with ``seed``, run for
    ``KMEANS_ITERS`` iterations.
    chunk_rows: train rows read, normalised and indexed at a time; query_rows: queries per
        faiss search call.
    gpu: True / False, or None for faiss GPU indexes when available.
    """

    kind: str = "auto"
    exact_max: int = EXACT_MAX
    nlist: int | None = None
    nprobe: int = NPROBE
    codes: str = "fp16"
    chunk_rows: int = 65_536
    query_rows: int = 16_384
    gpu: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "exact", "ivf"):
            raise ValueError(f"index kind must be 'auto', 'exact' or 'ivf', not {self.kind!r}")
        if self.codes not in ("fp16", "flat"):
            raise ValueError(f"IVF codes must be 'fp16' or 'flat', not {self.codes!r}")
        for name in ("exact_max", "nlist", "nprobe", "chunk_rows", "query_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, not {value}")


@dataclass(frozen=True)
class IndexPlan:
    """The index a search uses and its settings (``describe()`` is what reports state)."""

    kind: str  # "exact" | "ivf"
    rows: int
    dim: int
    k: int
    device: str  # "cpu" | "gpu"
    chunk_rows: int
    query_rows: int
    nlist: int | None = None
    nprobe: int | None = None
    codes: str | None = None
    train_rows: int | None = None
    kmeans_iters: int | None = None
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        """The plan as a flat dict without unset fields, e.g. for results.json."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def faiss_gpu_available() -> bool:
    """faiss built with GPU support and a GPU visible to torch."""
    return hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()


def default_nlist(n_rows: int) -> int:
    """IVF cells for ``n_rows``: ``round(sqrt(N) / 2)``, at most ``N // 39``, at least 1.

    An evaluation builds its index for one search, so fewer cells than the
    ``4 * sqrt(N)`` of indexes built once and searched many times: building costs
    ``N * nlist`` similarities to assign the rows plus k-means on ``256 * nlist`` rows
    (``nlist^2`` growth), while a query scans ``nprobe * N / nlist`` rows. At 1,000,000
    rows that is 500 cells (benchmarks/knn_scale.py measures 512).
    """
    return max(1, min(round(math.sqrt(n_rows) / 2), n_rows // 39))


def plan_index(n_rows: int, dim: int, k: int, options: IndexOptions | None = None,
               gpu_available: bool = False) -> IndexPlan:
    """The size rule: exact search up to ``options.exact_max`` train rows, IVF beyond it
    (or whatever ``options.kind`` forces); on GPU when allowed and available."""
    o = options or IndexOptions()
    if n_rows < 1:
        raise ValueError("no train features to search")
    if k < 1:
        raise ValueError(f"k must be positive, not {k}")
    if o.gpu and not gpu_available:
        raise RuntimeError("IndexOptions(gpu=True) but faiss has no GPU support or no GPU is visible")
    kind = o.kind if o.kind != "auto" else ("exact" if n_rows <= o.exact_max else "ivf")
    k = min(k, n_rows)
    gpu = (gpu_available if o.gpu is None else o.gpu) and k <= GPU_MAX_K
    common = {"rows": n_rows, "dim": dim, "k": k, "device": "gpu" if gpu else "cpu", "chunk_rows": o.chunk_rows,
              "query_rows": o.query_rows}
    if kind == "exact":
        return IndexPlan("exact", **common)
    nlist = max(1, min(o.nlist, n_rows // 39)) if o.nlist is not None else default_nlist(n_rows)
    return IndexPlan("ivf", **common, nlist=nlist, nprobe=min(o.nprobe, nlist), codes=o.codes,
                     train_rows=min(n_rows, TRAIN_PER_LIST * nlist), kmeans_iters=KMEANS_ITERS, seed=o.seed)


# --------------------------------------------------------------------------- reading rows


def read_rows(source: Features, start: int, stop: int) -> Tensor:
    """Rows ``[start, stop)`` of a tensor or a :class:`RowSource`."""
    return source[start:stop] if isinstance(source, Tensor) else source.rows(start, stop)


def unit_rows(x: Tensor, owned: bool = False) -> np.ndarray:
    """L2-normalised float32 rows ``[R, D]``. ``x`` itself is left untouched unless ``owned``
    (a fresh tensor nobody else holds, normalised in place when it is already float32)."""
    y = x.detach().to("cpu", torch.float32)
    shared = y.data_ptr() == x.data_ptr() and not owned
    a = y.numpy().copy(order="C") if shared else np.ascontiguousarray(y.numpy())
    faiss.normalize_L2(a)  # in place, [R, D]
    return a


def chunk_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 size), ...]`` covering ``range(n)``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def unit_chunks(source: Features, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, normalised float32 chunk ``[<= chunk_rows, D]``) over the whole source."""
    owned = not isinstance(source, Tensor)  # a RowSource returns fresh rows; a tensor slice is the caller's
    for start, stop in chunk_bounds(source.shape[0], chunk_rows):
        yield start, unit_rows(read_rows(source, start, stop), owned)


def load_unit(source: Features, chunk_rows: int = 65_536) -> np.ndarray:
    """All rows, normalised, as one float32 array ``[N, D]`` (for the queries)."""
    out = empty_float32(*source.shape)  # [N, D]
    for start, chunk in unit_chunks(source, chunk_rows):
        out[start:start + len(chunk)] = chunk
    return out


def sample_unit_rows(source: Features, n: int, seed: int, chunk_rows: int) -> np.ndarray:
    """``n`` distinct rows drawn with ``seed`` (in row order), normalised ``[n, D]``; read chunk by chunk."""
    total = source.shape[0]
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(total, generator=g)[:n].sort().values.numpy()  # [n]
    out = empty_float32(len(picked), source.shape[1])  # [n, D]
    filled = 0
    for start, stop in chunk_bounds(total, chunk_rows):
        lo, hi = np.searchsorted(picked, [start, stop])
        if hi > lo:
            rows = read_rows(source, start, stop)[picked[lo:hi] - start]  # [r, D], a fresh copy
            out[filled:filled + hi - lo] = unit_rows(rows, owned=True)
            filled += hi - lo
    return out


# --------------------------------------------------------------------------- faiss indexes


@functools.lru_cache(maxsize=1)
def _gpu_resources() -> Any:
    return faiss.StandardGpuResources()


def _on_device(index: faiss.Index, plan: IndexPlan) -> faiss.Index:
    if plan.device != "gpu":
        return index
    return faiss.index_cpu_to_gpu(_gpu_resources(), torch.cuda.current_device(), index)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Cells scanned per query of a CPU or GPU IVF index."""
    if nprobe < 1:
        raise ValueError(f"nprobe must be positive, not {nprobe}")
    space = faiss.ParameterSpace() if isinstance(index, faiss.IndexIVF) else faiss.GpuParameterSpace()
    space.set_index_parameter(index, "nprobe", nprobe)


def exact_search(train: Features, xq: np.ndarray, k: int, plan: IndexPlan) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of normalised ``xq`` ``[Q, D]`` against every train row:
    one flat index per train chunk, per-chunk results merged by ``faiss.ResultHeap``.
    Returns (similarities ``[Q, k]``, row indices ``[Q, k]``), best first."""
    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    index = _on_device(faiss.IndexFlatIP(xq.shape[1]), plan)
    queries = chunk_bounds(len(xq), plan.query_rows)
    chunks = math.ceil(train.shape[0] / plan.chunk_rows)
    for start, xb in progress(unit_chunks(train, plan.chunk_rows), "kNN search (train chunks)", total=chunks):
        index.reset()
        index.add(xb)
        kc = min(k, len(xb))  # a short last chunk still fills every slot it returns
        for qs, qe in queries:
            sims, ids = index.search(xq[qs:qe], kc)  # [q, kc] each
            heap.add_result_subset(np.arange(qs, qe), sims, ids + start)
    heap.finalize()
    return heap.D, heap.I


def new_ivf(plan: IndexPlan) -> faiss.Index:
    """An empty, untrained IVF index for ``plan`` (inner product; on the GPU when planned)."""
    spec = f"IVF{plan.nlist},{'SQfp16' if plan.codes == 'fp16' else 'Flat'}"
    index = faiss.index_factory(plan.dim, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = plan.kmeans_iters
    ivf.cp.seed = plan.seed
    ivf.cp.max_points_per_centroid = max(ivf.cp.max_points_per_centroid, -(-plan.train_rows // plan.nlist))
    index = _on_device(index, plan)
    set_nprobe(index, plan.nprobe)
    return index


def train_ivf(index: faiss.Index, train: Features, plan: IndexPlan) -> None:
    """Spherical k-means (faiss) of the IVF centroids on a seeded sample of ``plan.train_rows`` rows."""
    index.train(sample_unit_rows(train, plan.train_rows, plan.seed, plan.chunk_rows))  # sample [S, D]


def add_rows(index: faiss.Index, train: Features, plan: IndexPlan) -> None:
    """Every train row, normalised, added chunk by chunk (ids are row numbers)."""
    chunks = math.ceil(train.shape[0] / plan.chunk_rows)
    for _, xb in progress(unit_chunks(train, plan.chunk_rows), "kNN index (train chunks)", total=chunks):
        index.add(xb)


def build_ivf(train: Features, plan: IndexPlan) -> faiss.Index:
    """An IVF index over every train row: :func:`new_ivf`, :func:`train_ivf`, :func:`add_rows`."""
    index = new_ivf(plan)
    train_ivf(index, train, plan)
    add_rows(index, train, plan)
    return index


def index_search(index: faiss.Index, xq: np.ndarray, k: int, query_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` over query chunks: (similarities ``[Q, k]``, ids ``[Q, k]``); an IVF
    search returns id -1 (similarity -FLT_MAX) where the scanned cells hold fewer than k rows."""
    sims = np.empty((len(xq), k), dtype=np.float32)
    ids = np.empty((len(xq), k), dtype=np.int64)
    for qs, qe in progress(chunk_bounds(len(xq), query_rows), "kNN search (query chunks)"):
        sims[qs:qe], ids[qs:qe] = index.search(xq[qs:qe], k)
    return sims, ids


# --------------------------------------------------------------------------- public API


def search_with_plan(train: Features, queries: Features, k: int,
                     options: IndexOptions | None = None) -> tuple[Tensor, Tensor, IndexPlan]:
    """Cosine top-k of each query among the train rows: (similarities ``[Q, k']``,
    indices ``[Q, k']``, the plan used), ``k' = min(k, N)``, best first. ``train`` and
    ``queries`` are tensors or lazy sources; neither is modified."""
    n, d = train.shape
    if queries.shape[1] != d:
        raise ValueError(f"queries have {queries.shape[1]} columns, train features {d}")
    plan = plan_index(n, d, k, options, faiss_gpu_available())
    xq = load_unit(queries, plan.chunk_rows)  # [Q, D]
    if plan.kind == "exact":
        sims, idx = exact_search(train, xq, plan.k, plan)
    else:
        sims, idx = index_search(build_ivf(train, plan), xq, plan.k, plan.query_rows)
    return torch.from_numpy(sims), torch.from_numpy(idx), plan


def search(train: Features, queries: Features, k: int, options: IndexOptions | None = None) -> tuple[Tensor, Tensor]:
    """Cosine top-k: (similarities ``[Q, k]``, indices ``[Q, k]``); exact unless the size rule
    or ``options`` choose IVF (see :func:`plan_index`)."""
    sims, idx, _ = search_with_plan(train, queries, k, options)
    return sims, idx
