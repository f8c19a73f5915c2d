"""Weighted k-nearest-neighbour classification on faiss (Wu et al. 2018, "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination"; the protocol of DINO and
solo-learn): cosine similarity, each of the k neighbours votes for its class with
weight exp(sim / T). One exact search at the largest k answers every (k, T) pair."""

from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import Tensor


def search(train: Tensor, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact cosine top-k: (similarities [Q, k], indices [Q, k]) via a faiss inner-product index."""
    xb = np.ascontiguousarray(train.float().numpy(), dtype=np.float32)
    xq = np.ascontiguousarray(queries.float().numpy(), dtype=np.float32)
    faiss.normalize_L2(xb)
    faiss.normalize_L2(xq)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    sims, idx = index.search(xq, min(k, xb.shape[0]))
    return torch.from_numpy(sims), torch.from_numpy(idx)


def vote(sims: Tensor, neighbour_labels: Tensor, k: int, temperature: float, num_classes: int) -> Tensor:
    """Class scores [Q, classes] from the first k neighbours, weighted by exp(sim / T)."""
    w = (sims[:, :k] / temperature).exp()  # [Q, k]
    scores = torch.zeros(sims.shape[0], num_classes, dtype=w.dtype)
    return scores.scatter_add_(1, neighbour_labels[:, :k], w)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent."""
    out = {}
    pred = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # [Q, maxk]
    hit = pred == labels[:, None]
    for k in ks:
        out[f"top{k}"] = 100.0 * hit[:, :k].any(1).float().mean().item()
    return out


def knn_evaluate(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor,
                 pairs: list[tuple[int, float]], num_classes: int) -> dict[str, dict[str, float]]:
    """Top-1/top-5 of weighted kNN for each (k, T) in ``pairs``; keys like ``"k=20,T=0.07"``."""
    kmax = max(k for k, _ in pairs)
    sims, idx = search(train, test, kmax)
    neighbour_labels = train_labels[idx]  # [Q, kmax]
    return {f"k={k},T={t:g}": topk_accuracy(vote(sims, neighbour_labels, k, t, num_classes), test_labels)
            for k, t in pairs}
