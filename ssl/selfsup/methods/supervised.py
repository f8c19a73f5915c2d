"""Supervised pretraining (cross-entropy on the dataset's class labels), the upper reference that
self-supervised results are read against (He et al. 2016, "Deep Residual Learning for Image
Recognition"; compared with, e.g., in Chen et al. 2020, SimCLR, and He et al. 2020, MoCo):
the same encoder, the same batched augmentation, a linear classifier on the pooled features."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataError, DataInfo
from selfsup.heads import mlp
from selfsup.methods.base import METHODS, Method


def supervised_augment() -> AugmentConfig:
    """Random resized crops of 25-100% of the image and flips; no colour distortion (the
    standard supervised recipe keeps colour, which carries class information)."""
    return AugmentConfig(crop_scale=(0.25, 1.0), jitter_p=0.0, grayscale_p=0.0)


@dataclass
class SupervisedConfig:
    """Supervised classification: a linear classifier by default (``head_layers=1``), optional
    label smoothing (Szegedy et al. 2016), crops and flips."""

    head_layers: int = param(1, ge=1, help="1: linear classifier; more: an MLP with BatchNorm")
    head_hidden_dim: int = param(512, gt=0, help="hidden width when head_layers > 1")
    label_smoothing: float = param(0.0, ge=0, lt=1)
    augment: AugmentConfig = field(default_factory=supervised_augment)


@METHODS.register("supervised")
class Supervised(Method):
    Config = SupervisedConfig
    needs_labels = True

    def __init__(self, cfg: SupervisedConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        if info.num_classes < 2:
            raise DataError("method 'supervised' needs class labels, and this dataset has none; pretrain it on a "
                            "labelled dataset (class subfolders for image-folder)")
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)
        self.classifier = mlp(self.num_features, cfg.head_hidden_dim, info.num_classes, cfg.head_layers)

    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """uint8 images ``[B, C, H, W]``, labels ``[B]`` (-1: unknown, ignored by the loss)."""
        known = labels >= 0
        if not known.any():
            raise DataError("method 'supervised' got a batch without any labelled image")
        h = self.encoder(self.augment(images))  # [B, D]
        logits = self.classifier(h)  # [B, classes]
        loss = F.cross_entropy(logits[known], labels[known], label_smoothing=self.cfg.label_smoothing)
        acc = (logits.detach()[known].argmax(1) == labels[known]).float().mean()
        return {"loss": loss, "train_acc": acc, "features": h.detach()}
