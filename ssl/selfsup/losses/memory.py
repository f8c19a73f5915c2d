"""Stores of past embeddings used as negatives: MoCo's FIFO queue of keys (He et al. 2020)
and the instance-discrimination memory bank (Wu, Xiong, Yu, Lin 2018).

Both keep their contents in registered buffers, so checkpoints hold them and a resumed
run continues with the same negatives. Neither communicates: in a distributed run the
caller passes the keys / indices gathered from every rank, so all ranks stay identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Queue(nn.Module):
    """A first-in first-out queue of ``size`` L2-normalised keys ``[size, dim]``.

    With ``random_init`` (MoCo's choice) the queue starts full of random unit vectors, so
    every step scores ``size`` negatives; otherwise it starts empty and only the filled
    rows are returned as negatives while it fills.
    """

    keys: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int, random_init: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.size = size
        keys = F.normalize(torch.randn(size, dim), dim=1) if random_init else torch.zeros(size, dim)
        self.register_buffer("keys", keys)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite
        self.register_buffer("count", torch.tensor(size if random_init else 0))  # filled rows

    def __len__(self) -> int:
        return int(self.count)

    def negatives(self) -> Tensor:
        """A copy of the filled rows ``[min(count, size), dim]`` (a copy, so that the next
        :meth:`push` cannot change a tensor a pending backward still needs)."""
        return self.keys[: len(self)].clone()

    def ordered(self) -> Tensor:
        """The filled rows oldest first ``[n, dim]`` (for inspection and tests)."""
        n = len(self)
        if n < self.size:
            return self.keys[:n].clone()
        return torch.roll(self.keys, -int(self.ptr), dims=0)

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Enqueue ``keys`` [b, dim] (normalised here), dropping the oldest rows; if b > size
        only the last ``size`` keys are kept."""
        keys = F.normalize(keys.detach().float(), dim=-1)[-self.size:]  # [b', dim]
        b = keys.shape[0]
        rows = (self.ptr + torch.arange(b, device=keys.device)) % self.size  # [b']
        self.keys.index_copy_(0, rows, keys.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + b) % self.size)
        self.count.copy_(torch.clamp(self.count + b, max=self.size))


class MemoryBank(nn.Module):
    """One L2-normalised vector per training image ``[size, dim]``, updated with momentum:
    ``v_i <- normalize(m * v_i + (1 - m) * f_i)`` (Wu et al. 2018: m = 0.5). Entries start
    as random unit vectors, as in the paper."""

    bank: Tensor

    def __init__(self, size: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"memory-bank momentum must be in [0, 1), got {momentum}")
        self.size, self.momentum = size, momentum
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))

    def check_indices(self, indices: Tensor) -> None:
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.size):
            raise IndexError(f"sample indices must lie in [0, {self.size}) (the memory-bank size, set it to the "
                             f"number of training images); got [{int(indices.min())}, {int(indices.max())}]")

    def get(self, indices: Tensor) -> Tensor:
        """Rows ``[b, dim]`` (a copy)."""
        return self.bank.index_select(0, indices)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Indices drawn uniformly (with replacement) from the whole bank, of ``shape``."""
        return torch.randint(self.size, shape, device=self.bank.device, generator=generator)

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor) -> None:
        """Momentum update of rows ``indices`` [b] with ``features`` [b, dim]."""
        self.check_indices(indices)
        f = F.normalize(features.detach().float(), dim=-1).to(self.bank.dtype)
        mixed = self.momentum * self.bank.index_select(0, indices) + (1 - self.momentum) * f  # [b, dim]
        self.bank.index_copy_(0, indices, F.normalize(mixed, dim=-1))
