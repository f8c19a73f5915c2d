"""InfoNCE / NT-Xent (van den Oord et al. 2018; Chen et al. 2020, SimCLR).

For 2N embeddings (two views of N images), each view's positive is the other view
of its image and its negatives are the other 2N-2 embeddings of the batch. The
loss is a lower bound on mutual information: I >= log(K) - L with K = 2N - 1
candidates per anchor (Poole et al. 2019), reported as ``mi_bound`` in nats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LossOutput(NamedTuple):
    loss: Tensor
    mi_bound: Tensor  # log(candidates) - loss, nats (detached)


class NTXent(nn.Module):
    """Normalised temperature-scaled cross entropy over 2N views, both directions.

    Args:
        temperature: softmax temperature tau (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> LossOutput:
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2N, D]
        logits = z @ z.T / self.temperature  # [2N, 2N]
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is not its own candidate
        target = torch.arange(2 * n, device=z.device).roll(n)  # i <-> i + N
        loss = F.cross_entropy(logits, target)
        return LossOutput(loss, math.log(2 * n - 1) - loss.detach())
