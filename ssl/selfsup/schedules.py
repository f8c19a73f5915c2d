"""Per-step schedules, precomputed: pure functions of the step count (bottom layer: training and the
detection evaluation both use them)."""

from __future__ import annotations

import math

import torch


def cosine_factors(total_steps: int, warmup_steps: int, min_ratio: float) -> torch.Tensor:
    """Per-step multipliers of the peak lr: linear warmup to 1, then cosine to ``min_ratio``."""
    steps = torch.arange(total_steps + 1, dtype=torch.float64)
    warm = (steps + 1) / max(1, warmup_steps)
    progress = ((steps - warmup_steps) / max(1, total_steps - warmup_steps)).clamp(0, 1)
    cos = min_ratio + (1 - min_ratio) * 0.5 * (1 + torch.cos(math.pi * progress))
    return torch.where(steps < warmup_steps, warm, cos)


def warmup_steps(requested: int, total_steps: int) -> int:
    """The warmup of a run of ``total_steps``: ``requested`` steps, but never more than half the run,
    so that the cosine decay always runs (a 1-epoch run with 1 warmup epoch would otherwise end at the
    peak lr, its final weights taken at the highest lr of the schedule). Pretraining, transfer and
    detection share this rule; the run's log and results state the warmup used."""
    return max(0, min(requested, total_steps // 2))

