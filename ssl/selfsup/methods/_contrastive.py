"""Shared by the contrastive methods with a momentum encoder (moco, mocov3): the
exponential-moving-average teacher and its cosine momentum schedule (Grill et al. 2020,
BYOL; Chen, Xie, He 2021, MoCo v3), and BatchNorm over groups of a batch, with MoCo's
shuffled BN (He et al. 2020).

Not a method itself (the method registry skips modules starting with ``_``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import param
from selfsup.losses import InfoNCE
from selfsup.losses.mi_bounds import ContrastiveBound

# --------------------------------------------------------------------------- momentum teacher


@dataclass
class BoundChoice:
    """``method.estimator``: the MI bound a contrastive method trains with and reports, on its
    InfoNCE critic's scores (:class:`selfsup.losses.mi_bounds.ContrastiveBound`). InfoNCE is the
    method's own objective; the others are for comparing bounds on one critic (Poole et al. 2019)."""

    estimator: Literal["infonce", "nwj", "js", "dv", "smile"] = param(
        "infonce", help="MI bound of the loss and of the reported MI (train/mi_bound): infonce (the method's "
                        "own), nwj, js (read by NWJ), dv (MINE's gradient), smile")
    smile_tau: float = param(5.0, gt=0, when=("estimator", ("smile",)),
                             help="estimator=smile: the clip tau of the partition term")


def bound_criterion(criterion: InfoNCE, cfg: BoundChoice) -> ContrastiveBound:
    """``criterion`` with its scores read by ``cfg.estimator``."""
    return ContrastiveBound(criterion, cfg.estimator, cfg.smile_tau)


def check_momentum(base: float, end: float) -> None:
    if not 0 <= base <= end <= 1:
        raise ValueError(f"momentum must satisfy 0 <= momentum <= momentum_end <= 1, got {base} and {end}")


def cosine_momentum(step: int, total_steps: int, base: float, end: float = 1.0) -> float:
    """EMA coefficient at ``step`` of ``total_steps``: ``base`` at step 0, rising to ``end``
    on a half cosine, ``end - (end - base) * (1 + cos(pi * step / total)) / 2``."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return end - (end - base) * (1 + math.cos(math.pi * progress)) / 2


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``theta_t <- m * theta_t + (1 - m) * theta_o`` for every parameter, in place.
    Buffers (BatchNorm running statistics) are the target's own."""
    t = list(target.parameters())
    o = [p.detach() for p in online.parameters()]
    if len(t) != len(o):
        raise ValueError(f"target has {len(t)} parameters, online {len(o)}")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, o, alpha=1 - momentum)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` (no parameter requires gradients)."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


class MomentumTeacher(nn.Module):
    """Frozen EMA copies of an online ``encoder`` and ``head``: ``teacher(x) = head(encoder(x))``.

    ``update(step, total_steps)`` moves the copies towards the online modules with the
    cosine momentum schedule from ``base`` to ``end`` and returns the coefficient used.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, base: float, end: float = 1.0) -> None:
        super().__init__()
        check_momentum(base, end)
        self.base, self.end = base, end
        self.current = base  # the coefficient of the last update (for logging)
        self.encoder, self.head = momentum_copy(encoder), momentum_copy(head)
        object.__setattr__(self, "_online", (encoder, head))  # not registered: the method owns them

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def update(self, step: int, total_steps: int) -> float:
        m = cosine_momentum(step, total_steps, self.base, self.end)
        ema_update_(self.encoder, self._online[0], m)
        ema_update_(self.head, self._online[1], m)
        self.current = m
        return m


# --------------------------------------------------------------------------- BatchNorm groups


def bn_groups(batch: int, splits: int) -> int:
    """How many groups of at least 2 samples (BatchNorm needs 2) ``batch`` splits into,
    at most ``splits``."""
    return max(1, min(splits, batch // 2))


def grouped_forward(module: nn.Module, x: Tensor, splits: int) -> Tensor:
    """``module`` on ``x`` [B, ...] in :func:`bn_groups` consecutive groups, so that
    BatchNorm statistics are computed per group (as on ``splits`` devices); -> [B, ...]."""
    groups = bn_groups(x.shape[0], splits)
    if groups == 1:
        return module(x)
    return torch.cat([module(part) for part in x.tensor_split(groups)])


def shuffle_permutation(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of ``n``, the same on every rank (rank 0's)."""
    perm = torch.randperm(n, device="cpu", generator=generator).to(device)
    return distributed.broadcast(perm, 0)


@torch.no_grad()
def shuffled_forward(module: nn.Module, x: Tensor, splits: int = 1, perm: Tensor | None = None) -> Tensor:
    """MoCo's shuffling BN (He et al. 2020, sec. 3.3) for a network without gradients.

    The global batch (gathered from all ranks) is permuted, each rank encodes its slice of
    the permuted batch in ``splits`` BatchNorm groups, and the outputs are gathered and
    un-permuted, so sample i's key gets its BatchNorm statistics from a different subset
    than its query (encoded in data order by :func:`grouped_forward`). On one device the
    groups play the part of the devices. ``perm`` (global, for tests) overrides the draw.
    ``x`` [B, ...] -> ``module(x)`` [B, ...] in the original order.
    """
    b = x.shape[0]
    x_all = distributed.gather(x)  # [R*B, ...]
    if perm is None:
        perm = shuffle_permutation(x_all.shape[0], x.device)
    start = distributed.rank() * b
    mine = perm[start:start + b]  # which global samples this rank encodes
    y = grouped_forward(module, x_all[mine], splits)  # [B, ...]
    y_all = distributed.gather(y)  # [R*B, ...] in permuted order
    unshuffled = torch.empty_like(y_all).index_copy_(0, perm, y_all)  # row perm[j] <- y_all[j]
    return unshuffled[start:start + b]
