"""InfoNCE (van den Oord, Li, Vinyals 2018, "Representation Learning with Contrastive
Predictive Coding"), one implementation for every contrastive method in selfsup.

Each query ``q_i`` has one positive key ``k_i`` and a set of negative candidates; the loss
is the cross entropy of picking the positive among all N candidates with logits
``sim(q, c) / temperature``. The negatives may come from

- the batch: the other keys (MoCo v3, CPC), optionally the other queries too (SimCLR's
  NT-Xent, Chen et al. 2020: 2N-2 negatives for 2N views), gathered from all
  distributed ranks when ``gather_distributed`` is set (see :mod:`selfsup.distributed`
  for the gradients);
- a queue of past keys ``[K, D]`` shared by every query (MoCo, He et al. 2020);
- a memory bank, as samples ``[B, K, D]`` drawn per query (Wu et al. 2018), or ``[K, D]``.

The loss is a lower bound on mutual information, ``I(q; k) >= log(N) - L`` (Oord et al.
2018; Poole et al. 2019), where N counts the candidates actually scored (the positive
included); it is reported as ``mi_bound`` in nats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed


class LossOutput(NamedTuple):
    loss: Tensor
    mi_bound: Tensor  # log(candidates) - loss, nats (detached)
    candidates: int = 0  # N: candidates per query, the positive included


def mi_lower_bound(loss: Tensor, candidates: int) -> Tensor:
    """The InfoNCE bound ``log(N) - L`` in nats (detached)."""
    return math.log(candidates) - loss.detach()


def full_precision(x: Tensor) -> Tensor:
    """Half-precision tensors (autocast) as float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def no_autocast(x: Tensor) -> torch.autocast:
    """A context in which matrix products on ``x``'s device run in the inputs' precision:
    similarities divided by a small temperature need float32, even under mixed precision."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def cross_entropy_bound(logits: Tensor, target: Tensor, masked: int = 0) -> LossOutput:
    """InfoNCE from scored candidates: ``logits`` [B, N'] (already divided by the temperature),
    the positive's column ``target`` [B]; ``masked`` columns per row are -inf (not candidates)."""
    loss = F.cross_entropy(full_precision(logits), target)
    n = logits.shape[1] - masked
    return LossOutput(loss, mi_lower_bound(loss, n), n)


def extra_logits(query: Tensor, negatives: Tensor) -> Tensor:
    """Similarities of ``query`` [B, D] with negatives shared by all queries ``[K, D]``
    (a queue) or drawn per query ``[B, K, D]`` (memory-bank samples) -> ``[B, K]``."""
    if negatives.ndim == 2:
        return query @ negatives.T  # [B, K]
    if negatives.ndim == 3 and negatives.shape[0] == query.shape[0]:
        return torch.einsum("bd,bkd->bk", query, negatives)  # [B, K]
    raise ValueError(f"negatives must be [K, D] or [B, K, D] with B = {query.shape[0]}, got {tuple(negatives.shape)}")


class InfoNCE(nn.Module):
    """InfoNCE with negatives from the batch, a queue or a memory bank.

    Args:
        temperature: softmax temperature tau.
        batch_negatives: the other keys of the (gathered) batch are negatives. Off, each
            query is scored against its positive and the given ``negatives`` only (MoCo v2).
        query_negatives: the other queries of the batch are negatives too (SimCLR).
        symmetric: average the loss of both directions, query -> key and key -> query
            (the reverse direction uses the same extra ``negatives``).
        gather_distributed: in-batch candidates are gathered from every rank; gradients
            reach the rows of every rank (:func:`selfsup.distributed.gather`).
        normalize: score cosine similarities (L2-normalised vectors); off, raw dot
            products (CPC's bilinear critic).
    """

    def __init__(self, temperature: float = 0.1, *, batch_negatives: bool = True, query_negatives: bool = False,
                 symmetric: bool = False, gather_distributed: bool = False, normalize: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if query_negatives and not batch_negatives:
            raise ValueError("query_negatives needs batch_negatives")
        self.temperature = temperature
        self.batch_negatives, self.query_negatives = batch_negatives, query_negatives
        self.symmetric, self.gather_distributed, self.normalize = symmetric, gather_distributed, normalize

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> LossOutput:
        """``query``, ``key`` [B, D] (row i of each is a positive pair); ``negatives``
        optional ``[K, D]`` or ``[B, K, D]``. Returns the mean loss over the queries."""
        if query.shape != key.shape:
            raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} differ in shape")
        if negatives is None and not self.batch_negatives:
            raise ValueError("this InfoNCE has no batch negatives; pass negatives (a queue or bank samples)")
        with no_autocast(query):
            return self._forward(full_precision(query), full_precision(key),
                                 full_precision(negatives) if negatives is not None else None)

    def _forward(self, q: Tensor, k: Tensor, neg: Tensor | None) -> LossOutput:
        outs = [cross_entropy_bound(*scored) for scored in self._scored(q, k, neg)]
        if len(outs) == 1:
            return outs[0]
        loss = (outs[0].loss + outs[1].loss) / 2
        return LossOutput(loss, mi_lower_bound(loss, outs[0].candidates), outs[0].candidates)

    def score_matrices(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """The critic scores this InfoNCE takes its cross entropy of, for the other MI bounds
        (:mod:`selfsup.losses.mi_bounds`): one ``(scores [B, N'], target [B])`` per direction (two when
        ``symmetric``), ``scores`` already divided by the temperature, the positive of row i in
        column ``target[i]``, -inf where a column is no candidate of the row."""
        with no_autocast(query):
            return [(logits, target) for logits, target, _ in self._scored(
                full_precision(query), full_precision(key), full_precision(negatives) if negatives is not None else None)]

    def _scored(self, q: Tensor, k: Tensor, neg: Tensor | None) -> list[tuple[Tensor, Tensor, int]]:
        """``(logits, target, masked)`` of each direction (see :meth:`_direction`)."""
        if self.normalize:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            neg = F.normalize(neg, dim=-1) if neg is not None else None
        gather = self.gather_distributed and self.batch_negatives
        q_all = distributed.gather(q) if gather and (self.query_negatives or self.symmetric) else q  # [R*B, D]
        k_all = distributed.gather(k) if gather else k  # [R*B, D]
        offset = distributed.rank() * q.shape[0] if gather else 0
        out = [self._direction(q, k_all, q_all, neg, offset)]
        if self.symmetric:
            out.append(self._direction(k, q_all, k_all, neg, offset))
        return out

    def _direction(self, anchor: Tensor, keys: Tensor, anchors_all: Tensor, neg: Tensor | None,
                   offset: int) -> tuple[Tensor, Tensor, int]:
        """Logits ``[B, N (+1 masked)]``, the positive's column ``[B]`` and the count of masked
        columns per row, of ``anchor`` [B, D] whose positives are ``keys[offset + i]`` (batch
        negatives) or the aligned rows of ``keys`` (no batch negatives)."""
        b = anchor.shape[0]
        idx = torch.arange(b, device=anchor.device)
        if self.batch_negatives:
            parts = [anchor @ keys.T]  # [B, R*B]
            target = idx + offset
        else:
            parts = [(anchor * keys).sum(-1, keepdim=True)]  # [B, 1]
            target = torch.zeros_like(idx)
        masked = 0
        if self.query_negatives:
            same = anchor @ anchors_all.T  # [B, R*B]
            same = same.index_put((idx, idx + offset), same.new_tensor(float("-inf")))  # not its own candidate
            parts.append(same)
            masked = 1
        if neg is not None:
            parts.append(extra_logits(anchor, neg))  # [B, K]
        logits = torch.cat(parts, dim=1) / self.temperature  # [B, N (+1 masked)]
        return logits, target, masked


class NTXent(InfoNCE):
    """SimCLR's normalised temperature-scaled cross entropy over 2N views, both directions:
    each view's positive is the other view of its image, its negatives the other 2N-2
    views (gathered over ranks when distributed). ``forward(z1, z2)`` with z1, z2 [N, D].

    Args:
        temperature: tau (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet).
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__(temperature, batch_negatives=True, query_negatives=True, symmetric=True,
                         gather_distributed=gather_distributed, normalize=True)
