"""Large float32 row buffers (features of every image of a split) that are filled once.

numpy asks the kernel for transparent huge pages on every array of 4 MiB or more
(``madvise(MADV_HUGEPAGE)``). Where the kernel's THP defrag setting is ``madvise`` (the default
of most distributions) and memory is fragmented, e.g. a machine whose page cache holds the
datasets, each first touch of such an array can stall in direct compaction: writing 368 MiB
of stage rows into a fresh ``np.empty`` took 0.1 to 1.7 s, erratically, against 0.12-0.15 s
into memory from torch's allocator, which does not advise huge pages (one 2-core VM,
2026-12-02; benchmarks/results/layers.md). The buffers here come from torch's allocator.
"""

from __future__ import annotations

import numpy as np
import torch


def empty_float32(*shape: int) -> np.ndarray:
    """An uninitialised, writable, C-contiguous float32 array of ``shape``, allocated by torch
    (no huge-page advice, see the module docstring); ``torch.from_numpy`` of it shares its
    memory. Raises ValueError for a negative or fractional dimension and RuntimeError when the memory cannot be
    allocated (torch's error, which names the bytes asked for)."""
    if any(isinstance(s, bool) or int(s) != s or s < 0 for s in shape):
        raise ValueError(f"a buffer's dimensions must be whole numbers >= 0, got {list(shape)}")
    return torch.empty(tuple(int(s) for s in shape), dtype=torch.float32).numpy()
