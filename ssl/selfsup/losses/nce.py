"""Binary noise-contrastive estimation (Gutmann & Hyvarinen 2010) as used for
non-parametric instance discrimination (Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination", eq. 4-7).

The model of instance i given feature v is ``P(i|v) = exp(s_i) / Z`` with score
``s_i = v_i^T f / tau`` against the memory-bank entry ``v_i``; noise samples come from the
uniform distribution ``P_n = 1/n`` over the n bank entries, m of them per data sample.
The posterior that a candidate came from the data is

    h(i, v) = P(i|v) / (P(i|v) + m P_n(i)) = sigmoid(s_i - log Z - log(m / n))

and the loss is ``-log h(positive) - sum_j log(1 - h(noise_j))``, averaged over the batch.
Z is intractable; the paper estimates it once by Monte Carlo on the first iteration,
``Z ~ n * mean_j exp(s_j)`` over the noise samples, and keeps it fixed. Here the estimate
is the mean over the first ``z_batches`` batches (1 = the paper), held in buffers so that
it is saved with checkpoints, and frozen afterwards.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed


class NCEOutput(NamedTuple):
    loss: Tensor
    log_z: Tensor  # the log normalisation constant used (detached)


def nce_loss(pos: Tensor, noise: Tensor, log_z: Tensor | float, num_data: int) -> Tensor:
    """The NCE loss for scores ``pos`` [B] (data) and ``noise`` [B, m] (noise samples),
    in units of the logit ``s = v^T f / tau``; noise uniform over ``num_data`` entries."""
    m = noise.shape[1]
    shift = log_z + math.log(m / num_data)  # log Z + log(m P_n)
    log_h_pos = F.logsigmoid(pos - shift)  # [B]
    log_1m_h_noise = F.logsigmoid(-(noise - shift))  # [B, m]
    return -(log_h_pos + log_1m_h_noise.sum(dim=1)).mean()


def estimate_log_z(noise: Tensor, num_data: int) -> Tensor:
    """Monte-Carlo ``log Z = log(n * mean_j exp(s_j))`` over the noise scores [B, m]."""
    return math.log(num_data) + torch.logsumexp(noise.detach().float().flatten(), 0) - math.log(noise.numel())


class NCE(nn.Module):
    """Binary NCE with the normalisation constant estimated on the first ``z_batches``
    batches and frozen afterwards (mean over ranks when distributed).

    Args:
        num_data: n, the number of memory-bank entries (training images).
        z_batches: how many first batches estimate Z (Wu et al.: 1).
    """

    log_z: Tensor
    z_seen: Tensor

    def __init__(self, num_data: int, z_batches: int = 1) -> None:
        super().__init__()
        if z_batches < 1:
            raise ValueError(f"z_batches must be >= 1, got {z_batches}")
        self.num_data, self.z_batches = num_data, z_batches
        self.register_buffer("log_z", torch.zeros(()))
        self.register_buffer("z_seen", torch.zeros((), dtype=torch.long))

    @property
    def frozen(self) -> bool:
        return int(self.z_seen) >= self.z_batches

    @torch.no_grad()
    def observe(self, noise: Tensor) -> None:
        """Fold the Z estimate of the noise scores [B, m] into the running mean (of Z, not
        of log Z), unless the estimate is already frozen."""
        if self.frozen:
            return
        log_z_batch = distributed.all_reduce_mean(estimate_log_z(noise, self.num_data).exp()).log()
        seen = int(self.z_seen)
        if seen == 0:
            self.log_z.copy_(log_z_batch)
        else:  # log((seen * Z + Z_batch) / (seen + 1))
            both = torch.stack([self.log_z + math.log(seen), log_z_batch])
            self.log_z.copy_(torch.logsumexp(both, 0) - math.log(seen + 1))
        self.z_seen.add_(1)

    def forward(self, pos: Tensor, noise: Tensor) -> NCEOutput:
        """``pos`` [B] and ``noise`` [B, m] scores (``v^T f / tau``) -> loss, log Z."""
        if self.training:
            self.observe(noise)
        if int(self.z_seen) == 0:
            raise RuntimeError("Z has not been estimated yet: run a training batch first")
        log_z = self.log_z.detach()
        return NCEOutput(nce_loss(pos.float(), noise.float(), log_z, self.num_data), log_z)
