"""The few collective operations the contrastive methods need; each is the identity
when ``torch.distributed`` is not initialised or has one process.

``gather`` concatenates a tensor from every rank along dim 0 and is differentiable
(``torch.distributed.nn.functional.all_gather``): the backward pass sums the gradient of
the gathered tensor over all ranks and returns the local slice (a reduce-scatter on NCCL,
an all-to-all and a sum on gloo), so each rank receives the gradient of *every* rank's loss
with respect to its own rows. With DDP averaging parameter gradients over ranks, this gives exactly the
gradient of the mean loss over the global batch (tests/test_contrastive.py checks it
against one process on the concatenated batch). Rows that do not require gradients
(keys of a momentum encoder) are gathered without any backward communication.

Random draws (augmentation parameters, masks, noise, tile offsets) go through
``draw_local``: every rank runs the same random stream (the same seed, the same calls,
the same generator state restored from a checkpoint), draws for the whole global batch
and keeps the rows of its own slice. With the data sampler's contiguous per-rank slices
(:class:`selfsup.data.EpochShuffle`), R processes of batch b see exactly the images and
random draws of one process of batch R*b, and a run resumed on a different number of
devices continues the same streams.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


# where launchers put a process's rank before the process group exists: torchrun (RANK, LOCAL_RANK),
# Lightning's DDP launcher (LOCAL_RANK, NODE_RANK in the processes it starts) and SLURM (SLURM_PROCID)
LAUNCHER_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def launcher_rank_zero() -> bool:
    """Whether this process is rank 0 as its launcher says (every variable of :data:`LAUNCHER_RANK_VARS`
    that is set holds 0; a process no launcher started is rank 0), for what happens before the process
    group exists: checking and writing a run directory, lines printed once."""
    return all(int(os.environ[v]) == 0 for v in LAUNCHER_RANK_VARS if os.environ.get(v, "").isdigit())


def is_rank_zero() -> bool:
    """Rank 0 of the process group once it exists, else :func:`launcher_rank_zero`."""
    return rank() == 0 if is_distributed() else launcher_rank_zero()


def _all_gather_cat(x: Tensor) -> Tensor:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def gather(x: Tensor) -> Tensor:
    """``[b, ...]`` on each of R ranks -> ``[R*b, ...]`` (rank order); every rank must pass
    the same ``b``. Differentiable as described in the module docstring."""
    if not is_distributed():
        return x
    if x.requires_grad:  # torch's differentiable all_gather: backward is a reduce-scatter of the gradient
        return torch.cat(dist_nn.all_gather(x))
    return _all_gather_cat(x)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a new tensor; ``x`` is untouched)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


@torch.no_grad()
def broadcast(x: Tensor, src: int = 0) -> Tensor:
    """``x`` of rank ``src`` on every rank (in place)."""
    if is_distributed():
        dist.broadcast(x, src)
    return x


def draw_local(draw: Callable[[int], Tensor], rows: int) -> Tensor:
    """This rank's ``rows`` rows of a random draw made for the global batch.

    ``draw(n)`` must return ``n`` rows (dim 0) from a random stream that is identical on
    every rank; each rank draws ``world_size * rows`` and keeps rows
    ``[rank * rows, (rank + 1) * rows)``, the slice its images occupy in the global batch.
    Every rank must pass the same ``rows`` (the loader drops incomplete batches and
    replaces unreadable files). The cost is a draw for the global batch on every rank:
    negligible for augmentation parameters and masks, R times the local noise tensor for
    the denoising method. Draws made inside timm models (dropout, drop-path) use local
    shapes and are not covered: with them, ranks stay in step but differ from one process.
    """
    if not is_distributed():
        return draw(rows)
    r = dist.get_rank()
    return draw(rows * dist.get_world_size())[r * rows:(r + 1) * rows]


def shard(n: int) -> range:
    """This rank's contiguous share of ``n`` items (all of them in one process)."""
    w, r = world_size(), rank()
    return range(r * n // w, (r + 1) * n // w)


@torch.no_grad()
def gather_to_rank0(x: Tensor, max_bytes: int = 64 * 2**20) -> Tensor:
    """The rows of every rank concatenated in rank order on rank 0; every other rank gets
    its own ``x`` back. Ranks may hold different numbers of rows (a collective: all must
    call it). Rows travel in padded all-gathers of at most ``max_bytes`` in all, through
    the backend's device (a GPU for NCCL); ranks other than 0 drop what they receive."""
    if not is_distributed():
        return x
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    sizes = _all_gather_cat(torch.tensor([x.shape[0]], device=dev)).tolist()  # rows per rank
    row_bytes = math.prod(x.shape[1:]) * x.element_size()  # from the shape: the same on a rank with no rows
    step = max(1, max_bytes // (row_bytes * len(sizes)))
    keep = dist.get_rank() == 0
    parts: list[list[Tensor]] = [[] for _ in sizes]
    for start in range(0, max(sizes), step):
        rows = min(step, max(sizes) - start)
        padded = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=dev)
        piece = x[start:start + rows]
        padded[:len(piece)] = piece.to(dev)
        got = _all_gather_cat(padded).split(rows)
        if keep:
            for r, chunk in enumerate(got):
                parts[r].append(chunk[:max(0, min(rows, sizes[r] - start))].to(x.device))
    return torch.cat([t for rank_parts in parts for t in rank_parts]) if keep else x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (a decision all ranks must share)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
