"""The detector: torchvision's Faster R-CNN on a feature pyramid over a copy of the encoder.

The detector is torchvision's ``FasterRCNN`` (Ren et al. 2015, "Faster R-CNN: Towards
Real-Time Object Detection with Region Proposal Networks") on torchvision's
``FeaturePyramidNetwork`` (Lin et al. 2017, "Feature Pyramid Networks for Object Detection").
The pyramid is built on a copy of the encoder being evaluated (freezing it and resizing a
ViT's position embeddings leave the caller's module as it was):

- convnets (any timm model whose ``feature_info`` has several strides): the deepest map of each
  stride >= 4, read with timm's ``forward_intermediates``;
- plain ViTs (one stride): ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain
  Vision Transformer Backbones for Object Detection") from the last block's map at stride p:
  two 2x deconvolutions (p/4), one (p/2), identity (p) and a 2x max-pool (2p). torchvision's
  FPN then adds its lateral and output convolutions (and a top-down sum ViTDet does without).

With ``detection.deformable`` the FPN output convolutions and the RPN head convolution are
modulated deformable convolutions (Zhu et al. 2019; :mod:`selfsup.detection.deformable`).

The encoder is frozen by default (``trainable_layers=0``); its BatchNorm layers are always
kept in eval mode with frozen affines, so the score measures the features.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from selfsup.config import DetectionConfig
from selfsup.data import DataInfo
from selfsup.detection.deformable import make_deformable
from selfsup.encoders import EncoderError


# --------------------------------------------------------------------------- feature pyramids


def _feature_info(encoder: nn.Module) -> list[dict[str, Any]]:
    info = getattr(encoder, "feature_info", None)
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    if not info or not hasattr(encoder, "forward_intermediates"):
        raise EncoderError(f"{type(encoder).__name__} has no timm feature_info / forward_intermediates, so no "
                           f"feature maps can be read from it for detection; use a timm convnet or ViT")
    return list(info)


def is_plain_vit(encoder: nn.Module) -> bool:
    """A single-stride transformer (ViT, DeiT, ...): every ``feature_info`` entry has one reduction."""
    info = _feature_info(encoder)
    return len({d["reduction"] for d in info}) == 1 and hasattr(encoder, "patch_embed")


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


class ConvPyramid(nn.Module):
    """Multi-scale maps of a timm convnet: for each stride >= 4, the deepest stage with that stride.

    ``forward(x [B, C, H, W])`` -> OrderedDict ``{"0": [B, C0, H/s0, W/s0], ...}``, finest first.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        info = _feature_info(encoder)
        last_of_stride: dict[int, int] = {}
        for i, d in enumerate(info):
            if d["reduction"] >= 4:
                last_of_stride[d["reduction"]] = i  # a deeper stage at the same stride (dilation) wins
        if not last_of_stride:
            raise EncoderError(f"{type(encoder).__name__} has no feature map at stride >= 4")
        self.indices = sorted(last_of_stride.values())
        self.strides = [info[i]["reduction"] for i in self.indices]
        self.channels = [info[i]["num_chs"] for i in self.indices]
        self.deepest = info[self.indices[-1]]["module"]  # the last module whose output is read

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not _frozen(self.encoder)):
            maps = self.encoder.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al. 2022) from a plain ViT's last block.

    The last block's tokens form a map ``[B, D, H/p, W/p]``; deconvolutions give strides p/4
    (``D/4`` channels) and p/2 (``D/2``), the map itself stride p (``D``) and a max-pool stride
    2p (``D``). The ViT's position embeddings are resampled to the detector's input size.
    """

    def __init__(self, encoder: nn.Module, input_size: int) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        self.encoder = encoder
        p = encoder.patch_embed.patch_size[0]
        if p < 4 or p & (p - 1):
            raise EncoderError(f"the ViT's patch size {p} is not a power of two >= 4; the feature pyramid needs "
                               f"power-of-two strides from p/4 to 2p")
        if input_size % p:
            raise EncoderError(f"detection image size {input_size} is not a multiple of the ViT's patch size {p}")
        if tuple(encoder.patch_embed.img_size) != (input_size, input_size):
            encoder.set_input_size(img_size=(input_size, input_size))
        d = encoder.num_features
        self.up4 = nn.Sequential(nn.ConvTranspose2d(d, d // 2, 2, stride=2), LayerNorm2d(d // 2), nn.GELU(),
                                 nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(d, d // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2)
        self.strides = [p // 4, p // 2, p, 2 * p]
        self.channels = [d // 4, d // 2, d, d]
        self.deepest = _feature_info(encoder)[-1]["module"]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not _frozen(self.encoder)):
            m = self.encoder.forward_intermediates(x, indices=1, intermediates_only=True)[-1]  # [B, D, H/p, W/p]
        maps = [self.up4(m), self.up2(m), m, self.down2(m)]
        return OrderedDict((str(i), t) for i, t in enumerate(maps))


class EncoderFPN(nn.Module):
    """A pyramid body plus torchvision's FPN with a max-pooled extra level (``"pool"``);
    ``out_channels`` as torchvision's detectors expect. BatchNorm layers of the encoder stay in
    eval mode whatever ``train()`` says, and a fully frozen encoder stays in eval mode."""

    def __init__(self, body: ConvPyramid | SimplePyramid, channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels
        self.strides = [*body.strides, 2 * body.strides[-1]]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))

    def train(self, mode: bool = True) -> "EncoderFPN":
        super().train(mode)
        encoder = self.body.encoder
        if _frozen(encoder):
            encoder.eval()
        for m in encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def freeze_encoder(encoder: nn.Module, trainable_layers: int, deepest: str) -> int:
    """Freeze ``encoder`` except its ``trainable_layers`` deepest stages, counted back from the
    stage holding module ``deepest`` (the last one the pyramid reads; later layers such as a
    final norm never see a gradient). Stages are timm's coarse parameter groups (stem, then
    stages or blocks); more than there are trains all of them. BatchNorm affines are always
    frozen. Returns the number of trainable encoder parameters."""
    from timm.models import group_parameters

    encoder.requires_grad_(False)
    if trainable_layers > 0:
        if not hasattr(encoder, "group_matcher"):
            raise EncoderError(f"{type(encoder).__name__} has no timm group_matcher, so its stages are unknown; "
                               f"set detection.trainable_layers=0")
        groups = list(group_parameters(encoder, encoder.group_matcher(coarse=True)).values())
        last = max((i for i, names in enumerate(groups) if any(n.startswith(f"{deepest}.") for n in names)),
                   default=len(groups) - 1)
        groups = groups[:last + 1]
        params = dict(encoder.named_parameters())
        for names in groups[-trainable_layers:]:
            for n in names:
                params[n].requires_grad_(True)
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.requires_grad_(False)
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def anchor_sizes(cfg: DetectionConfig, levels: int) -> list[int]:
    """One anchor side per pyramid level, finest first: ``cfg.anchor_sizes``, or ``image_size/16``
    doubling per level (128-pixel images: 8, 16, 32, 64, 128)."""
    if cfg.anchor_sizes:
        if len(cfg.anchor_sizes) != levels:
            raise EncoderError(f"detection.anchor_sizes has {len(cfg.anchor_sizes)} sizes but this encoder's "
                               f"pyramid has {levels} levels; give {levels} sizes or leave it empty")
        return list(cfg.anchor_sizes)
    base = max(4, round(cfg.image_size / 16))
    return [base * 2 ** i for i in range(levels)]


def padded_size(size: int, divisor: int = 32) -> int:
    return int(math.ceil(size / divisor) * divisor)


def build_detector(encoder: nn.Module, info: DataInfo, num_classes: int, cfg: DetectionConfig) -> FasterRCNN:
    """Faster R-CNN (Ren et al. 2015) with an FPN (Lin et al. 2017) over the maps of a copy of
    ``encoder`` (``model.backbone.body.encoder``; ``encoder`` itself is left untouched), for
    ``num_classes`` object classes (plus background), on ``info.in_chans``-channel images
    normalised with ``info.mean``/``info.std``; the copy is frozen per ``cfg.trainable_layers``.

    With ``cfg.deformable`` the FPN's 3x3 output convolutions and the RPN head's 3x3 convolution
    become modulated deformable convolutions (DCNv2, :mod:`selfsup.detection.deformable`) with the
    weights they were initialised with and zero offsets: the detector computes what the plain one
    (same seed) does until it trains. ``model.deformable`` lists the converted modules (empty when off)."""
    encoder = copy.deepcopy(encoder)
    vit = is_plain_vit(encoder)
    body = SimplePyramid(encoder, padded_size(cfg.image_size)) if vit else ConvPyramid(encoder)
    freeze_encoder(encoder, cfg.trainable_layers, body.deepest)
    backbone = EncoderFPN(body, cfg.fpn_channels)
    levels = len(backbone.strides)
    sizes = anchor_sizes(cfg, levels)
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * levels)
    # one bilinear sample per RoIAlign bin: Mask R-CNN (He et al. 2017, sec. 3) finds the result insensitive
    # to the number of samples, and on a CPU the backward pass of 2x2 samples dominates a training step
    roi_pool = MultiScaleRoIAlign([str(i) for i in range(levels - 1)], output_size=7, sampling_ratio=1)
    model = FasterRCNN(
        backbone, num_classes=None,
        min_size=cfg.image_size, max_size=cfg.image_size, fixed_size=(cfg.image_size, cfg.image_size),
        size_divisible=32, image_mean=list(info.mean), image_std=list(info.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),
        box_batch_size_per_image=cfg.rois_per_image, box_score_thresh=cfg.score_threshold, box_detections_per_img=100,
    )
    model.anchor_sizes = sizes
    model.deformable = make_deformable(model) if cfg.deformable else []
    return model

