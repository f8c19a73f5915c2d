"""RotNet (Gidaris, Singh, Komodakis 2018, "Unsupervised Representation Learning by
Predicting Image Rotations"): every image is shown at 0, 90, 180 and 270 degrees in the
same batch and a classifier on the shared encoder predicts which rotation it sees."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from selfsup.config import param
from selfsup.data import AugmentConfig, DataInfo
from selfsup.methods._pretext import TransformClassification
from selfsup.encoders import pooled_width
from selfsup.methods.base import METHODS


def rotation_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, C, H, W]`` -> (the 4 rotations ``[4B, C, H, W]``, labels ``[4B]`` in {0,1,2,3}).

    Label r means a counter-clockwise rotation by r * 90 degrees; the batch holds the
    four rotations of each image (the paper's best setting).
    """
    rots = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return torch.cat(rots), labels


def rotation_light_augment() -> AugmentConfig:
    """Crops and flips only: colour cues carry no rotation information."""
    return AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)


@dataclass
class RotationConfig:
    """RotNet hyper-parameters. The paper puts conv blocks on a NIN trunk; on a pooled
    timm encoder the classifier is an MLP (``head_layers=1`` makes it linear)."""

    head_hidden_dim: int = param(512, gt=0)
    head_layers: int = param(2, ge=1)
    augment: AugmentConfig = field(default_factory=rotation_light_augment)


@METHODS.register("rotation")
class Rotation(TransformClassification):
    Config = RotationConfig
    label_name = "rotation"

    def __init__(self, cfg: RotationConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info, view_size=info.image_size, head_in_dim=pooled_width(encoder),
                         num_labels=4)

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return rotation_batch(x)  # [4N, C, S, S], [4N]

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """uint8 ``[n, C, S, S]`` -> the augmented view at each of the four rotations of
        :func:`rotation_batch`, ``[n, C, S, S]`` each, named by the counter-clockwise angle."""
        inputs, labels = rotation_batch(self.augment(images))  # [4n, C, S, S], [4n]
        n = images.shape[0]
        return [(f"rotated {int(labels[k * n]) * 90}\N{DEGREE SIGN}", inputs[k * n:(k + 1) * n]) for k in range(4)]

    def embed(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(inputs)  # [4N, D]
        return h, h[: inputs.shape[0] // 4]  # the unrotated views come first
