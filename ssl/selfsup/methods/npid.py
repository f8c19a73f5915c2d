"""Non-parametric instance discrimination (Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination", NPID).

Every training image is its own class. The encoder and a linear layer give an
L2-normalised 128-d feature ``v``; a memory bank holds one normalised vector per image,
updated with momentum 0.5 after each step. The classifier ``P(i|v) = exp(w_i^T v / tau) / Z``
(tau = 0.07) is trained with binary NCE against m = 4096 noise entries drawn uniformly from
the bank, Z estimated on the first batch and then fixed (:mod:`selfsup.losses.nce`). The
paper's exact objective, the non-parametric softmax over all n bank entries (its eq. 2,
which NCE approximates for large n), is ``objective: softmax``.

Z fixed while the bank is still random is NCE's weak point when the features of all
images start nearly coinciding (Fashion-MNIST with a convnet): once the bank's rows
concentrate, the noise posteriors sum to far more than 1 and the gradient pushes every
feature off the bank's common direction together. Measured with the authors' own recipe
re-implemented (benchmarks/npid_authors.py, benchmarks/results/npid_authors.md): the
encoder ends below where it started, as selfsup's NCE does; the softmax learns. The
Fashion-MNIST config therefore uses ``objective: softmax``.

The method needs each image's dataset index: ``training_step(images, indices=...)``
(``needs_indices``); ``labels`` (optional, -1 when unknown) feed a free monitor, the
weighted kNN accuracy of the batch against the labelled memory bank (k = 200, as in the
paper's kNN evaluation, excluding the image's own entry). ``mi_bound`` is the InfoNCE
bound ``log(m + 1) - L`` of the same scores, the positive among its m noise entries
(softmax: ``log n - L``, the positive among every bank entry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.losses import NCE, MemoryBank, cross_entropy_bound, full_precision, no_autocast
from selfsup.methods.base import METHODS, Method


@dataclass
class NPIDAugment(AugmentConfig):
    """The paper's augmentation: crops of 20-100%, colour jitter 0.4 (hue 0.4) always,
    grayscale 0.2, horizontal flips."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter_p: float = param(1.0, ge=0, le=1, help="probability of colour jitter")
    hue: float = param(0.4, ge=0, le=0.5)


@dataclass
class NPIDConfig:
    """NPID hyper-parameters; defaults are the paper's (128-d features, tau 0.07, 4096
    noise samples, bank momentum 0.5, Z from the first batch). The memory bank has one row
    per training image; ``bank_size`` 0 (the default) takes that number from the data."""

    feature_dim: int = param(128, gt=0)
    objective: Literal["nce", "softmax"] = param(
        "nce", help="nce: binary NCE against num_noise bank samples, Z fixed (eq. 4-7, O(m) per image); "
                    "softmax: the exact non-parametric softmax over every bank entry (eq. 2, O(n) per image)")
    temperature: float = param(0.07, gt=0)
    num_noise: int = param(4096, gt=0, help="m: noise samples per image (objective nce)")
    bank_size: int = param(0, ge=0, help="memory-bank rows; 0: the number of training images")
    bank_momentum: float = param(0.5, ge=0, lt=1)
    z_batches: int = param(1, ge=1, help="first batches that estimate Z, which is fixed afterwards (objective nce)")
    knn_k: int = param(200, ge=0, help="neighbours of the memory-bank kNN monitor (0: off; needs labels)")
    knn_temperature: float = param(0.07, gt=0)
    augment: NPIDAugment = field(default_factory=NPIDAugment)


def bank_scores(v: Tensor, bank: Tensor, indices: Tensor, noise_idx: Tensor) -> tuple[Tensor, Tensor]:
    """Dot products of features ``v`` [B, F] with their own bank rows ``indices`` [B] ->
    [B], and with the noise rows ``noise_idx`` [B, m] -> [B, m].

    Scores all n rows with one matrix product when that is smaller than gathering the
    B*m noise rows (n <= m*F: CIFAR, Fashion-MNIST), otherwise gathers them (ImageNet).
    Either way the backward pass holds its own copy of the rows it needs, so the bank can
    be updated in place before ``backward``.
    """
    n, f = bank.shape
    if n <= noise_idx.shape[1] * f:
        every = v @ bank.T.clone()  # [B, n]
        return every.gather(1, indices[:, None]).squeeze(1), every.gather(1, noise_idx)
    pos = (v * bank.index_select(0, indices)).sum(-1)  # [B]
    noise = torch.einsum("bf,bmf->bm", v, bank[noise_idx])  # [B, m]
    return pos, noise


def memory_bank_rows(method: str, bank_size: int, num_samples: int) -> int:
    """Rows of a memory bank with one row per training image: ``bank_size``, or when it is 0 the
    number of training images ``num_samples`` (0: unknown).

    Raises:
        ValueError: both are 0, or both are set and differ (naming ``method.bank_size``).
    """
    size = bank_size or num_samples
    if size <= 0:
        raise ValueError(f"{method}: method.bank_size is 0 and the data did not say how many training images "
                         f"there are; set method.bank_size to the number of training images")
    if num_samples and size != num_samples:
        raise ValueError(f"{method}: method.bank_size={size} but the training set has {num_samples} images; "
                         f"set method.bank_size=0 to size the memory bank from the data")
    return size


def bank_indices(method: str, indices: Tensor | None, bank: MemoryBank) -> Tensor:
    """The images' dataset indices ``[B]`` as bank rows: long, on the bank's device, checked.

    Raises:
        ValueError: no indices (naming ``training_step(images, indices=...)``).
        IndexError: an index outside the bank.
    """
    if indices is None:
        raise ValueError(f"{method} needs the dataset index of every image: call training_step(images, indices=...) "
                         f"with a LongTensor [B] of dataset indices (the training loop passes them to methods "
                         f"with needs_indices = True)")
    indices = indices.to(bank.bank.device, torch.long)
    bank.check_indices(indices)
    return indices


@torch.no_grad()
def bank_knn_accuracy(sims: Tensor, bank_labels: Tensor, labels: Tensor, indices: Tensor, k: int,
                      temperature: float, num_classes: int) -> Tensor | None:
    """Weighted kNN (Wu et al. 2018) of the batch against the labelled bank entries.

    ``sims`` [B, n] cosine similarities; ``bank_labels`` [n] (-1: unknown); ``labels`` [B]
    (-1: unknown); each query's own entry ``indices`` [B] is excluded. Votes are
    ``exp(sim / temperature)``; returns the accuracy over the labelled queries (None if none).
    """
    known = labels >= 0
    if not known.any():
        return None
    sims = sims.masked_fill(bank_labels[None] < 0, float("-inf"))
    sims = sims.scatter(1, indices[:, None], float("-inf"))  # [B, n]
    top, idx = sims.topk(min(k, sims.shape[1]), dim=1)  # [B, k]
    weights = (top / temperature).exp()  # unlabelled neighbours weigh 0
    votes = torch.zeros(sims.shape[0], num_classes, device=sims.device)
    votes.scatter_add_(1, bank_labels[idx].clamp(min=0), weights)  # [B, C]
    return (votes.argmax(1) == labels)[known].float().mean()


@METHODS.register("npid")
class NPID(Method):
    Config = NPIDConfig
    needs_indices = True

    bank_labels: Tensor

    def __init__(self, cfg: NPIDConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)
        self.head = nn.Linear(self.num_features, cfg.feature_dim)
        size = memory_bank_rows("npid", cfg.bank_size, info.num_samples)
        self.bank = MemoryBank(size, cfg.feature_dim, cfg.bank_momentum)
        self.nce = NCE(size, cfg.z_batches) if cfg.objective == "nce" else None  # softmax needs no Z estimate
        self.register_buffer("bank_labels", torch.full((size,), -1, dtype=torch.long))

    def training_step(self, images: Tensor, indices: Tensor | None = None,
                      labels: Tensor | None = None) -> dict[str, Tensor]:
        cfg = self.cfg
        indices = bank_indices("npid", indices, self.bank)
        h = self.encoder(self.augment(images))  # [B, D]
        v = F.normalize(full_precision(self.head(h)), dim=1)  # [B, F]
        with no_autocast(v):  # scores / 0.07 in float32
            if cfg.objective == "softmax":
                every = v @ self.bank.bank.T.clone() / cfg.temperature  # [B, n]
                out = cross_entropy_bound(every, indices)  # the positive is the image's own row
                loss, bound = out.loss, out.mi_bound
                log_z = torch.logsumexp(every.detach(), 1).mean()  # the exact log Z, mean over the batch
                sims = every.detach() * cfg.temperature if labels is not None and cfg.knn_k > 0 else None
            else:
                noise_idx = distributed.draw_local(lambda rows: self.bank.sample((rows, cfg.num_noise)),
                                                   v.shape[0])  # [B, m], uniform over the bank
                pos, noise = bank_scores(v, self.bank.bank, indices, noise_idx)  # [B], [B, m]
                pos, noise = pos / cfg.temperature, noise / cfg.temperature
                nce = self.nce(pos, noise)
                loss, log_z = nce.loss, nce.log_z
                logits = torch.cat([pos[:, None], noise], dim=1).detach()  # [B, 1 + m]
                bound = cross_entropy_bound(logits, torch.zeros_like(indices)).mi_bound
                sims = v.detach() @ self.bank.bank.T if labels is not None and cfg.knn_k > 0 else None  # [B, n]
        result = {"loss": loss, "mi_bound": bound, "log_z": log_z, "features": h.detach()}
        if sims is not None and self.info.num_classes > 0:
            labels = labels.to(indices.device)
            acc = bank_knn_accuracy(sims, self.bank_labels, labels, indices, cfg.knn_k, cfg.knn_temperature,
                                    self.info.num_classes)
            if acc is not None:
                result["bank_knn_acc"] = acc
        all_indices = distributed.gather(indices)
        self.bank.update(all_indices, distributed.gather(v.detach()))  # after scoring, as in the paper
        if labels is not None:
            self.bank_labels.index_copy_(0, all_indices, distributed.gather(labels.to(indices.device)))
        return result
