"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers").

Two views; the online encoder is followed by a projector (MLP, 4096 hidden, 256 out) and
a predictor (2-layer MLP, 4096 hidden); a momentum (EMA) copy of the encoder and projector
gives the keys. There
is no queue: each query is scored against the keys of the batch (gathered from all ranks
when distributed; keys carry no gradient). The loss is symmetric,
``ctr(q1, k2) + ctr(q2, k1)``, each term scaled by ``2 * tau`` as in the paper's
Algorithm 1 (``scale_loss``); ``mi_bound`` is computed from the unscaled terms.

- Encoders: ViT or ResNet (any timm model). The temperature defaults by encoder: 0.2
  for a ViT (the paper's ViT setting) and 1.0 otherwise (the reference code's ResNet-50
  setting); set ``temperature`` to override. ``freeze_patch_embed`` keeps a ViT's patch
  projection at its random initialisation (the paper's stability trick, sec. 4.2).
- Heads, as the reference code builds them (facebookresearch/moco-v3, ``moco/builder.py``:
  ``MoCo._build_mlp``, ``MoCo_ViT`` and ``MoCo_ResNet._build_projector_and_predictor_mlps``):
  every linear layer without a bias, BatchNorm + ReLU after each hidden layer, and
  by encoder (:data:`VIT_HEADS`, :data:`CONVNET_HEADS`): on a ViT a 3-layer projector and
  a predictor that both end in a BatchNorm without affine parameters (the paper, sec. 5,
  "MLP heads": "all layers in both MLPs have BN"); on any other encoder a 2-layer projector ending in
  that BatchNorm and a predictor that ends in its plain linear layer. ``proj_layers`` and
  ``pred_last_bn`` override the choice.
- Momentum: 0.99 rising to 1 on a cosine schedule, driven by ``on_train_step_end``.
- Augmentation: BYOL's asymmetric pair (Grill et al. 2020), as in the paper.
- ``exported_encoder()`` is the online encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.heads import mlp
from selfsup.losses import InfoNCE
from selfsup.methods._contrastive import MomentumTeacher, check_momentum
from selfsup.methods._pixels import is_vit
from selfsup.methods.base import METHODS, Method

VIT_TEMPERATURE, CONVNET_TEMPERATURE = 0.2, 1.0


@dataclass(frozen=True)
class HeadDefaults:
    """The reference code's head shape for one kind of encoder: the projector's number of
    linear layers and whether the predictor ends in a non-affine BatchNorm."""

    proj_layers: int
    pred_last_bn: bool


# moco-v3 moco/builder.py: MoCo_ViT builds _build_mlp(3, ...) and _build_mlp(2, ...) (last_bn
# defaults to True); MoCo_ResNet builds _build_mlp(2, ...) and _build_mlp(2, ..., False).
VIT_HEADS, CONVNET_HEADS = HeadDefaults(proj_layers=3, pred_last_bn=True), HeadDefaults(proj_layers=2,
                                                                                        pred_last_bn=False)


@dataclass
class ByolView1(AugmentConfig):
    """BYOL's first view: colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur always."""

    saturation: float = param(0.2, ge=0)
    blur_p: float = param(1.0, ge=0, le=1, help="probability of Gaussian blur")


@dataclass
class ByolView2(ByolView1):
    """BYOL's second view: blur with p=0.1, solarisation with p=0.2."""

    blur_p: float = param(0.1, ge=0, le=1, help="probability of Gaussian blur")
    solarize_p: float = param(0.2, ge=0, le=1)


@dataclass
class MoCoV3Config:
    """MoCo v3 hyper-parameters; defaults are the paper's and its reference code's (projector
    4096 -> 256 with 3 layers on a ViT and 2 on a ResNet, predictor 2 layers ending in a
    non-affine BatchNorm on a ViT only, momentum 0.99 -> 1 cosine, BYOL augmentation)."""

    temperature: float | None = param(None, gt=0, help="None: 0.2 for a ViT encoder, 1.0 otherwise")
    proj_hidden_dim: int = param(4096, gt=0)
    proj_dim: int = param(256, gt=0)
    proj_layers: int | None = param(None, ge=1, help="linear layers in the projector; None: 3 for a ViT "
                                    "encoder, 2 otherwise (the reference code's MoCo_ViT / MoCo_ResNet)")
    pred_hidden_dim: int = param(4096, gt=0)
    pred_layers: int = param(2, ge=1)
    pred_last_bn: bool | None = param(None, help="a non-affine BatchNorm on the predictor's output; None: on "
                                      "for a ViT encoder, off otherwise (the reference code's MoCo_ViT / "
                                      "MoCo_ResNet)")
    momentum: float = param(0.99, ge=0, le=1, help="EMA coefficient at the first step")
    momentum_end: float = param(1.0, ge=0, le=1, help="EMA coefficient at the last step (cosine schedule)")
    scale_loss: bool = param(True, help="multiply each loss term by 2 * temperature (the paper's Algorithm 1)")
    freeze_patch_embed: bool = param(False, help="ViT only: keep the random patch projection fixed")
    gather_distributed: bool = param(True, help="keys of all ranks are negatives")
    augment1: ByolView1 = field(default_factory=ByolView1)
    augment2: ByolView2 = field(default_factory=ByolView2)

    def __post_init__(self) -> None:
        check_momentum(self.momentum, self.momentum_end)


def default_temperature(encoder: nn.Module) -> float:
    return VIT_TEMPERATURE if is_vit(encoder) else CONVNET_TEMPERATURE


def default_heads(encoder: nn.Module) -> HeadDefaults:
    """The reference code's head shape for ``encoder``: :data:`VIT_HEADS` for a timm
    VisionTransformer, :data:`CONVNET_HEADS` otherwise."""
    return VIT_HEADS if is_vit(encoder) else CONVNET_HEADS


def build_heads(cfg: MoCoV3Config, in_dim: int, encoder: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """The projector (``in_dim`` -> ``proj_dim``) and the predictor (``proj_dim`` ->
    ``proj_dim``), every linear layer without a bias as in the reference code; the layer
    count and last BatchNorm left as None in ``cfg`` come from :func:`default_heads`."""
    heads = default_heads(encoder)
    proj_layers = cfg.proj_layers if cfg.proj_layers is not None else heads.proj_layers
    pred_last_bn = cfg.pred_last_bn if cfg.pred_last_bn is not None else heads.pred_last_bn
    projector = mlp(in_dim, cfg.proj_hidden_dim, cfg.proj_dim, proj_layers, last_bn=True, last_bias=False)
    predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, cfg.pred_layers, last_bn=pred_last_bn,
                    last_bias=False)
    return projector, predictor


@METHODS.register("mocov3")
class MoCoV3(Method):
    Config = MoCoV3Config

    def __init__(self, cfg: MoCoV3Config, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        if cfg.freeze_patch_embed:
            if not is_vit(encoder):
                raise ValueError("freeze_patch_embed keeps a ViT's patch projection fixed and this encoder has none; "
                                 "set method.freeze_patch_embed=false")
            encoder.patch_embed.requires_grad_(False)
        self.temperature = cfg.temperature if cfg.temperature is not None else default_temperature(encoder)
        self.augment1 = BatchAugment(cfg.augment1, info.mean, info.std, info.image_size)
        self.augment2 = BatchAugment(cfg.augment2, info.mean, info.std, info.image_size)
        self.projector, self.predictor = build_heads(cfg, self.num_features, encoder)
        self.teacher = MomentumTeacher(self.encoder, self.projector, cfg.momentum, cfg.momentum_end)
        self.criterion = InfoNCE(self.temperature, batch_negatives=True, gather_distributed=cfg.gather_distributed)

    def view_augments(self) -> list[Callable[[Tensor], Tensor]]:
        """The two views' augmentations (the alignment monitor's pairs)."""
        return [self.augment1, self.augment2]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        x1, x2 = self.augment1(images), self.augment2(images)  # [B, C, S, S] each
        h1, h2 = self.encoder(x1), self.encoder(x2)  # [B, D] each; BatchNorm statistics per view
        q1, q2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))  # [B, P]
        with torch.no_grad():
            k1, k2 = self.teacher(x1), self.teacher(x2)  # [B, P]
        out12, out21 = self.criterion(q1, k2), self.criterion(q2, k1)
        scale = 2 * self.temperature if self.cfg.scale_loss else 1.0
        loss = scale * (out12.loss + out21.loss)
        return {"loss": loss, "mi_bound": (out12.mi_bound + out21.mi_bound) / 2,
                "momentum": torch.tensor(self.teacher.current), "features": h1.detach()}

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        self.teacher.update(step, total_steps)

    def exported_encoder(self) -> nn.Module:
        """The online (query) encoder."""
        return self.encoder
