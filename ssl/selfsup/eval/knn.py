"""Weighted k-nearest-neighbour classification on faiss (Wu et al. 2018, "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination"; the protocol of DINO and
solo-learn): cosine similarity, each of the k neighbours votes for its class with
weight exp(sim / T), ranked in a form that cannot overflow for any T > 0 (:func:`vote`).
One search at the largest k answers every (k, T) pair. Features with NaN or inf and
labels outside ``[0, num_classes)`` (-1: unlabeled) are refused, never scored.

The neighbours come from :func:`selfsup.eval.search.search_with_plan` (faiss, exact or IVF
by size; its building blocks stay importable from here as before).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.config import ConfigError
from selfsup.data.base import DataError
from selfsup.eval.search import (EXACT_MAX, GPU_MAX_K, KMEANS_ITERS, NPROBE, TRAIN_PER_LIST, Features,
                                 IndexOptions, IndexPlan, RowSource, add_rows, build_ivf, chunk_bounds,
                                 default_nlist, exact_search, faiss_gpu_available, index_search, load_unit,
                                 new_ivf, plan_index, read_rows, sample_unit_rows, search, search_with_plan,
                                 set_nprobe, train_ivf, unit_chunks, unit_rows)

__all__ = ["EXACT_MAX", "GPU_MAX_K", "KMEANS_ITERS", "NPROBE", "TRAIN_PER_LIST", "VOTE_CELLS", "Features",
           "IndexOptions", "IndexPlan", "RowSource", "add_rows", "build_ivf", "check_finite", "check_labels",
           "check_pairs", "chunk_bounds", "default_nlist", "exact_search", "faiss_gpu_available", "index_search",
           "knn_accuracy", "knn_evaluate", "knn_evaluate_with_index", "knn_warnings", "load_unit", "new_ivf",
           "nonfinite_rows", "percent", "plan_index", "read_rows", "sample_unit_rows", "search", "search_with_plan",
           "set_nprobe", "topk_accuracy", "topk_hits", "train_ivf", "unit_chunks", "unit_rows", "vote"]

VOTE_CELLS = 2 ** 22  # queries x classes voted at a time (float64 class scores: 32 MiB a tensor)


def vote(sims: Tensor, neighbour_labels: Tensor, k: int, temperature: float, num_classes: int) -> Tensor:
    """Weighted-kNN class scores ``[Q, num_classes]`` (float64) from the first ``k`` neighbours.

    Neighbour j of a query votes for its class with weight ``exp(s_j / T)``; a class's
    total is ``W_c = sum_j exp(s_j / T)``. What is returned is a strictly increasing function
    of ``W_c``, so classes rank as by ``W_c``, but it is finite for every finite ``T > 0``
    and finite similarity (``W_c`` itself overflows float32 once ``s / T > 88``, at ``T = 0.01``,
    and float64 once ``s / T > 709``). With ``m_c`` the class's best similarity every
    exponent is ``<= 0``:

    - ``T <= 1``: ``T log W_c = m_c + T log sum_j exp((s_j - m_c) / T)``
    - ``T > 1``: ``log W_c = m_c / T + log sum_j exp((s_j - m_c) / T)``

    A class without a vote scores -inf (:func:`topk_accuracy` never counts it as a
    prediction). ``sims`` ``[Q, K]``, ``neighbour_labels`` ``[Q, K]`` (class of each
    neighbour; -1 where the search returned no neighbour: it casts no vote, whatever its
    similarity). Raises ValueError for labels ``>= num_classes`` or a ``T`` that is not finite and positive.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"the kNN temperature must be finite and > 0, not {temperature}")
    labels = neighbour_labels[:, :k]  # [Q, k]
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"neighbour label {int(labels.max())} is not below num_classes={num_classes}")
    labels = torch.where(labels < 0, num_classes, labels)  # no neighbour: a spare column, dropped below
    s = sims[:, :k].to(torch.float64)  # [Q, k]
    best = torch.full((s.shape[0], num_classes + 1), -math.inf, dtype=torch.float64)  # [Q, C+1]
    best.scatter_reduce_(1, labels, s, reduce="amax")  # m_c, -inf for classes without a vote
    w = ((s - best.gather(1, labels)) / temperature).exp()  # [Q, k], in [0, 1]; the class's best is 1
    log_total = torch.zeros_like(best).scatter_add_(1, labels, w).log()  # [Q, C+1], >= 0 where voted
    scores = best + temperature * log_total if temperature <= 1 else best / temperature + log_total
    return scores[:, :num_classes]


def topk_hits(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, Tensor]:
    """For each k, whether each row's label is among its k best classes: ``{k: [Q] bool}``.

    A class scored -inf or NaN is no prediction and never a hit: a kNN class that got no
    vote (so a query with no neighbour is a miss), a class a probe never saw, a diverged
    probe. Among equal scores the order is torch's.
    """
    s = torch.where(scores.isnan(), -math.inf, scores)  # [Q, C]
    top = s.topk(min(max(ks), s.shape[1]), dim=1)  # [Q, maxk]
    hit = (top.indices == labels[:, None]) & (top.values > -math.inf)  # [Q, maxk]
    return {k: hit[:, :k].any(1) for k in ks}


def percent(hits: Tensor) -> float:
    """The share of True in ``hits`` ``[Q]``, in percent. Raises ValueError when empty."""
    if len(hits) == 0:
        raise ValueError("no rows to score: top-k accuracy of an empty set is undefined")
    return 100.0 * hits.double().mean().item()


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent of ``scores`` ``[Q, C]`` against ``labels`` ``[Q]``
    (:func:`topk_hits`: -inf and NaN scores are no prediction). Raises ValueError when there are no rows."""
    return {f"top{k}": percent(hits) for k, hits in topk_hits(scores, labels, ks).items()}


def knn_accuracy(sims: Tensor, neighbour_labels: Tensor, test_labels: Tensor, k: int, temperature: float,
                 num_classes: int, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-1/top-5 (percent) of weighted kNN at (k, T) from the search results ``sims``,
    ``neighbour_labels`` ``[Q, K]`` (-1: no neighbour), voted in blocks of
    :data:`VOTE_CELLS` query-class scores."""
    rows = max(1, VOTE_CELLS // (num_classes + 1))
    hits = [topk_hits(vote(sims[a:b], neighbour_labels[a:b], k, temperature, num_classes), test_labels[a:b], ks)
            for a, b in chunk_bounds(len(sims), rows)]
    return {f"top{j}": percent(torch.cat([h[j] for h in hits])) for j in ks}


def _rows_text(rows: Tensor, limit: int = 5) -> str:
    """"3, 17, 40" or "3, 17, 40, 41, 50 and 12 more" for sorted row numbers ``[n]``."""
    shown = ", ".join(str(r) for r in rows[:limit].tolist())
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def nonfinite_rows(source: Features, chunk_rows: int = 65_536) -> Tensor:
    """Sorted numbers ``[n]`` of the rows holding NaN or inf, read chunk by chunk.

    A row whose sum is finite holds no NaN or inf (either makes the sum NaN or inf), so only rows
    with a non-finite sum are checked element by element (a sum can also overflow on finite values
    near float's limit: those rows are checked and kept). One read of each chunk and an ``[n]``
    vector, instead of two ``[n, D]`` masks: 10k x 2048 features 70 -> 8 ms (1 thread)."""
    bad = []
    for a, b in chunk_bounds(source.shape[0], chunk_rows):
        chunk = read_rows(source, a, b)  # [n, D]
        if chunk.is_complex():  # a NaN in the imaginary part counts too
            chunk = torch.view_as_real(chunk).flatten(1)  # [n, 2D]
        sums = chunk.sum(1, dtype=torch.float64 if chunk.dtype == torch.float64 else torch.float32)  # [n]
        suspects = (~sums.isfinite()).nonzero().squeeze(1)  # [s]
        bad.append(suspects[~chunk[suspects].isfinite().all(1)] + a)  # [n_bad]
    return torch.cat(bad) if bad else torch.empty(0, dtype=torch.long)


def check_finite(source: Features, what: str, chunk_rows: int = 65_536) -> None:
    """Refuse features ``[N, D]`` with NaN or inf rows: a non-finite row has no similarity, so
    scoring it (as faiss would, as class 0) is a silent wrong number. Raises DataError."""
    bad = nonfinite_rows(source, chunk_rows)
    if len(bad):
        raise DataError(f"{len(bad)} of {source.shape[0]} {what} feature rows hold NaN or inf (rows "
                        f"{_rows_text(bad)}), so they cannot be scored: the encoder's output is not finite for "
                        f"these images (weights holding NaN or inf, or finite ones large enough that the activations "
                        f"overflow float32, as a run that diverged leaves them); evaluate an earlier checkpoint "
                        f"(RUN/checkpoints/)")


def check_labels(labels: Tensor, num_classes: int, what: str) -> None:
    """Refuse labels ``[N]`` outside ``[0, num_classes)`` (-1 marks an unlabeled image) or
    that are not integers. Raises DataError."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"{what} labels must be integer class numbers, got dtype {labels.dtype}")
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().squeeze(1)  # [n]
    if len(bad):
        raise DataError(f"{len(bad)} of {len(labels)} {what} labels lie outside [0, {num_classes}) (e.g. "
                        f"{int(labels[bad[0]])} at row {int(bad[0])}; rows {_rows_text(bad)}): -1 marks an "
                        f"unlabeled image, which kNN and linear probes cannot score; leave unlabeled images out "
                        f"of the evaluation and count every class in num_classes")


def check_pairs(pairs: list[tuple[int, float]]) -> None:
    """Refuse a (k, T) list that is empty or holds a k that is not a whole number >= 1 or a T
    that is not finite and > 0. Raises ConfigError."""
    def ok(pair: Any) -> bool:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            return False
        k, t = pair
        return (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
                and isinstance(t, (int, float, np.floating)) and not isinstance(t, bool)
                and math.isfinite(t) and t > 0)
    if not pairs or not all(ok(p) for p in pairs):
        raise ConfigError(f"eval.knn must be a non-empty list of (k, T) pairs with whole k >= 1 and finite "
                          f"T > 0, not {pairs}")


def knn_warnings(train_labels: Tensor, test_labels: Tensor, ks: list[int], num_classes: int, plan: IndexPlan,
                 missing: Tensor, class_names: Sequence[str] = ()) -> list[str]:
    """One-line warnings for the report: a k beyond the training set or the smallest class,
    test classes without train rows, queries that got fewer than k neighbours.
    ``missing`` ``[Q, k']``: True where the search returned no neighbour; ``class_names``: label i's
    name (an image folder's class folders), said beside the class number when given."""
    def named(c: int) -> str:
        return f"{c} '{class_names[c]}'" if c < len(class_names) else str(c)

    out = []
    counts = torch.bincount(train_labels, minlength=num_classes)  # [C]
    present = (counts > 0).nonzero().squeeze(1)  # [c]
    smallest = int(present[counts[present].argmin()])
    n = len(train_labels)
    for k in sorted(set(ks)):
        if k > n:
            out.append(f"kNN k={k} exceeds the {n} train rows: every query votes with all {n} of them; "
                       f"choose k < {n} in eval.knn")
        elif k > counts[smallest]:
            out.append(f"kNN k={k} exceeds the {int(counts[smallest])} train rows of the smallest class "
                       f"(class {named(smallest)}): it fills at most {int(counts[smallest])} of the k votes, so larger "
                       f"classes outvote it; choose k <= {int(counts[smallest])} in eval.knn")
    unseen = counts[test_labels] == 0  # [Q]
    if unseen.any():
        classes = ", ".join(named(c) for c in test_labels[unseen].unique().tolist())
        out.append(f"{int(unseen.sum())} of {len(test_labels)} test rows belong to classes without train rows "
                   f"(class {classes}): kNN can never predict them")
    short, empty = int(missing.any(1).sum()), int(missing.all(1).sum())
    if short:
        cells = f" (IVF, nprobe {plan.nprobe} of {plan.nlist} cells)" if plan.kind == "ivf" else ""
        out.append(f"{short} of {len(test_labels)} queries got fewer than k={plan.k} neighbours from the "
                   f"search{cells}, {empty} none at all: each voted with the neighbours found (none: a miss); "
                   f"raise eval.knn_nprobe or set eval.knn_index=exact")
    return out


def knn_evaluate_with_index(train: Features, train_labels: Tensor, test: Features, test_labels: Tensor,
                            pairs: list[tuple[int, float]], num_classes: int,
                            options: IndexOptions | None = None,
                            class_names: Sequence[str] = ()) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Top-1/top-5 of weighted kNN for each (k, T) in ``pairs`` (keys like ``"k=20,T=0.07"``)
    and the index used: its plan, search seconds, how many queries got fewer than k
    neighbours (``short_queries``, IVF only: a missing neighbour casts no vote, a query with
    none is a miss) and ``warnings`` (one-line strings for the report, :func:`knn_warnings`).

    ``train`` ``[N, D]``, ``test`` ``[Q, D]``: tensors or lazy sources; labels ``[N]``, ``[Q]``
    in ``[0, num_classes)``; ``class_names``: for the warnings (:func:`knn_warnings`). Raises
    ConfigError (bad pairs), ValueError (labels that do not
    match the rows), DataError (no test rows, NaN or inf features, labels out of range).
    """
    check_pairs(pairs)
    if len(train_labels) != train.shape[0] or len(test_labels) != test.shape[0]:
        raise ValueError(f"labels ({len(train_labels)} train, {len(test_labels)} test) do not match the "
                         f"feature rows ({train.shape[0]} train, {test.shape[0]} test)")
    if test.shape[0] == 0:
        raise DataError("no test rows to score with kNN: the test split is empty")
    check_labels(train_labels, num_classes, "train")
    check_labels(test_labels, num_classes, "test")
    chunk_rows = (options or IndexOptions()).chunk_rows
    check_finite(train, "train", chunk_rows)
    check_finite(test, "test", chunk_rows)
    kmax = max(k for k, _ in pairs)
    t0 = time.perf_counter()
    sims, idx, plan = search_with_plan(train, test, kmax, options)
    missing = idx < 0  # [Q, k']
    neighbour_labels = torch.where(missing, -1, train_labels[idx.clamp_min(0)])  # [Q, k']; -1: no vote
    results = {f"k={k},T={t:g}": knn_accuracy(sims, neighbour_labels, test_labels, k, t, num_classes)
               for k, t in pairs}
    info = {**plan.describe(), "seconds": round(time.perf_counter() - t0, 3),
            "short_queries": int(missing.any(1).sum()),
            "warnings": knn_warnings(train_labels, test_labels, [k for k, _ in pairs], num_classes, plan, missing,
                                     class_names)}
    asked = options.nlist if options is not None else None
    if plan.kind == "ivf" and asked is not None and plan.nlist < asked:  # search_plan's cap, said where it bit
        info["warnings"].append(f"eval.knn_nlist={asked} was capped at {plan.nlist} IVF cells: faiss's k-means needs "
                                f"at least 39 training rows per cell and there are {plan.rows}; set eval.knn_nlist "
                                f"<= {plan.nlist}, or eval.knn_index=exact for a set this small")
    return results, info


def knn_evaluate(train: Features, train_labels: Tensor, test: Features, test_labels: Tensor,
                 pairs: list[tuple[int, float]], num_classes: int,
                 options: IndexOptions | None = None) -> dict[str, dict[str, float]]:
    """Top-1/top-5 of weighted kNN for each (k, T) in ``pairs``; keys like ``"k=20,T=0.07"``
    (:func:`knn_evaluate_with_index` without the index description and warnings)."""
    return knn_evaluate_with_index(train, train_labels, test, test_labels, pairs, num_classes, options)[0]
