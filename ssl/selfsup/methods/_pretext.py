"""Shared by the pretext tasks whose target is the label of a transform the method
applied itself (RotNet's rotation, jigsaw's permutation): augment, transform, embed with
the shared encoder, classify the label with an MLP head, cross entropy and accuracy.

Not a method itself (the method registry skips modules starting with ``_``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data import BatchAugment, DataInfo
from selfsup.heads import mlp
from selfsup.methods.base import Method


def classification_terms(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``logits`` [M, K], ``target`` [M] -> (cross entropy, accuracy), both scalars."""
    loss = F.cross_entropy(logits, target)
    acc = (logits.detach().argmax(1) == target).float().mean()
    return loss, acc


class TransformClassification(Method):
    """A method that predicts which of ``num_labels`` transforms it applied.

    The config needs ``augment`` (an ``AugmentConfig``), ``head_hidden_dim`` and
    ``head_layers``. A subclass sets ``label_name`` (the accuracy is logged as
    ``<label_name>_acc``) and implements:

    - ``transform(x)``: augmented views -> (transformed inputs, labels ``[M]``);
    - ``embed(inputs)``: -> (head input ``[M, head_in_dim]``, pooled encoder features ``[B, D]``).
    """

    label_name: ClassVar[str]

    def __init__(self, cfg: Any, encoder: nn.Module, info: DataInfo, *, view_size: int, head_in_dim: int,
                 num_labels: int) -> None:
        super().__init__(cfg, encoder, info)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, view_size)
        self.head = mlp(head_in_dim, cfg.head_hidden_dim, num_labels, cfg.head_layers)
        self.view_size = view_size

    def encoder_input_sizes(self) -> list[int]:
        return [self.view_size]  # the encoder sees the transformed views

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def embed(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        inputs, target = self.transform(self.augment(images))
        z, features = self.embed(inputs)  # [M, head_in_dim], [B, D]
        logits = self.head(z)  # [M, num_labels]
        loss, acc = classification_terms(logits, target)
        return {"loss": loss, f"{self.label_name}_acc": acc, "features": features.detach()}
