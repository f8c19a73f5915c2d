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
