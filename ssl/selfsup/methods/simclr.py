"""SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive
Learning of Visual Representations"): two augmented views per image, an MLP projection
head, and NT-Xent over the 2N views with 2N-2 negatives per anchor: the shared InfoNCE
with the other queries as negatives, symmetric, gathered from every rank when distributed
(gradients reach every rank's views, as with the paper's cross-replica concatenation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.heads import mlp
from selfsup.losses import NTXent
from selfsup.methods._contrastive import BoundChoice, bound_criterion
from selfsup.methods.base import METHODS, Method


@dataclass
class SimCLRConfig(BoundChoice):
    """SimCLR hyper-parameters; defaults are the paper's CIFAR-10 settings (appendix B.9):
    temperature 0.5, a 2-layer projection head whose hidden layer has the representation's
    width (2048 for a ResNet-50) -> 128, SimCLR augmentations."""

    temperature: float = param(0.5, gt=0)
    proj_hidden_dim: int = param(0, ge=0, help="hidden width of the projection head; 0: the encoder's width")
    proj_dim: int = param(128, gt=0)
    proj_layers: int = param(2, ge=1)
    gather_distributed: bool = param(True, help="negatives from every rank's batch (2N-2 over the global batch)")
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@METHODS.register("simclr")
class SimCLR(Method):
    Config = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)
        hidden = cfg.proj_hidden_dim or self.num_features
        self.projector = mlp(self.num_features, hidden, cfg.proj_dim, cfg.proj_layers)
        self.criterion = bound_criterion(NTXent(cfg.temperature, gather_distributed=cfg.gather_distributed), cfg)

    def view_augments(self) -> list[Callable[[Tensor], Tensor]]:
        """The two views' augmentations (the alignment monitor's pairs)."""
        return [self.augment, self.augment]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        n = images.shape[0]
        views = torch.cat([self.augment(images), self.augment(images)])  # [2N, C, S, S]
        h = self.encoder(views)  # [2N, D]
        z = self.projector(h)  # [2N, P]
        out = self.criterion(z[:n], z[n:])
        return {"loss": out.loss, "mi_bound": out.mi_bound, "features": h[:n].detach()}
