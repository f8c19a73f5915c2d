"""MoCo v2 (Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive
Learning"; MoCo: He, Fan, Wu, Xie, Girshick 2020, "Momentum Contrast for Unsupervised
Visual Representation Learning").

A query view is encoded by the online encoder and a 2-layer MLP head; the key view by a
momentum (EMA) copy of both. Each query is scored against its key and a FIFO queue of
the keys of past batches (65,536 by default) with InfoNCE at temperature 0.2; after the
step the batch's keys (gathered from all ranks) are enqueued.

- Momentum: MoCo v2 uses a constant 0.999; here the coefficient follows the cosine
  schedule of BYOL / MoCo v3 from ``momentum`` (0.99) to ``momentum_end`` (1.0), driven
  by ``on_train_step_end``. ``momentum_end == momentum`` gives a constant coefficient.
- BatchNorm: the paper shuffles the key batch across 8 GPUs so that a query and its key
  never share BatchNorm statistics ("shuffling BN"). Here both branches run BatchNorm in
  ``bn_splits`` groups per device (queries in data order, keys after a random
  permutation of the global batch, undone afterwards): across ranks when distributed,
  and emulating 8 devices on one device with ``bn_splits: 8``. ``shuffle_bn: false``
  keeps the keys in data order (the leaky baseline of the paper's ablation).
- The head has no BatchNorm (MoCo v2: linear, ReLU, linear), so it runs on the whole batch.
- ``exported_encoder()`` is the query (online) encoder, as in the paper's evaluation.
- The queue lives in registered buffers, so checkpoints hold it. As in the paper it
  starts full of random unit vectors, so ``mi_bound = log(1 + queue_size) - L`` is a
  valid bound only once real keys have replaced them (after queue_size / global batch
  steps): random vectors are not samples of the keys' distribution.
  ``random_init_queue: false`` starts from an empty queue instead and scores only the
  keys enqueued so far (none at the very first step, whose loss is 0): a valid bound
  from the start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.heads import mlp
from selfsup.losses import InfoNCE, Queue
from selfsup.methods._contrastive import (BoundChoice, MomentumTeacher, bound_criterion, check_momentum,
                                         grouped_forward, shuffled_forward)
from selfsup.methods.base import METHODS, Method


@dataclass
class MoCoV2Augment(AugmentConfig):
    """MoCo v2's augmentation: SimCLR's with crops of 20-100% and Gaussian blur p=0.5."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    blur_p: float = param(0.5, ge=0, le=1, help="probability of Gaussian blur")


@dataclass
class MoCoConfig(BoundChoice):
    """MoCo v2 hyper-parameters; defaults are the paper's ImageNet settings (queue 65,536,
    temperature 0.2, MLP head 2048 -> 128, MoCo v2 augmentation, 8 BatchNorm groups of 32
    at batch 256) except for the cosine momentum schedule (see the module docstring)."""

    temperature: float = param(0.2, gt=0)
    queue_size: int = param(65536, gt=0, help="negatives kept from past batches")
    proj_hidden_dim: int = param(2048, gt=0)
    proj_dim: int = param(128, gt=0)
    momentum: float = param(0.99, ge=0, le=1, help="EMA coefficient at the first step")
    momentum_end: float = param(1.0, ge=0, le=1, help="EMA coefficient at the last step (cosine schedule)")
    shuffle_bn: bool = param(True, help="encode keys in shuffled BatchNorm groups (MoCo's shuffling BN)")
    bn_splits: int = param(8, ge=1, help="BatchNorm groups per device (8 emulates the paper's 8 GPUs)")
    random_init_queue: bool = param(True, help="start from random unit vectors (the paper); false: an empty queue")
    augment: MoCoV2Augment = field(default_factory=MoCoV2Augment)

    def __post_init__(self) -> None:
        check_momentum(self.momentum, self.momentum_end)


@METHODS.register("moco")
class MoCo(Method):
    Config = MoCoConfig

    def __init__(self, cfg: MoCoConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)
        self.projector = mlp(self.num_features, cfg.proj_hidden_dim, cfg.proj_dim, 2, batch_norm=False)
        self.teacher = MomentumTeacher(self.encoder, self.projector, cfg.momentum, cfg.momentum_end)
        self.queue = Queue(cfg.queue_size, cfg.proj_dim, random_init=cfg.random_init_queue)
        self.criterion = bound_criterion(InfoNCE(cfg.temperature, batch_negatives=False), cfg)

    def view_augments(self) -> list[Callable[[Tensor], Tensor]]:
        """The two views' augmentations (the alignment monitor's pairs)."""
        return [self.augment, self.augment]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        x_q, x_k = self.augment(images), self.augment(images)  # [B, C, S, S] each
        h = grouped_forward(self.encoder, x_q, cfg.bn_splits)  # [B, D]
        q = self.projector(h)  # [B, P]
        with torch.no_grad():
            encode_keys = shuffled_forward if cfg.shuffle_bn else grouped_forward
            k = encode_keys(self.teacher, x_k, cfg.bn_splits)  # [B, P]
        out = self.criterion(q, k, self.queue.negatives())  # queue [K, P]
        self.queue.push(distributed.gather(k))
        return {"loss": out.loss, "mi_bound": out.mi_bound, "momentum": torch.tensor(self.teacher.current),
                "features": h.detach()}

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        self.teacher.update(step, total_steps)

    def exported_encoder(self) -> nn.Module:
        """The query encoder (the paper evaluates it; the key encoder is its EMA)."""
        return self.encoder
