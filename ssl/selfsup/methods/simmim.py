"""SimMIM (Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu 2022, "SimMIM: A Simple Framework for
Masked Image Modeling"): random square patches of the input (default 60%) are replaced by
a learned mask token, the encoder sees the whole masked image, a light decoder predicts
the pixels, and the loss is the L1 error on the masked pixels only.

Works with any timm encoder. On a ``VisionTransformer`` the mask token lives in the
patch-embedding space (it replaces the embeddings of masked patches before the position
embeddings, as in the paper); on any other encoder (convnets, but also Swin and other
timm transformers) it is a learned pixel patch (``C x m x m``) pasted over the masked
squares of the normalised image. The decoder is the
paper's: a 1x1 conv from the last feature map (``forward_features``; a ViT's patch tokens
as a grid) and a pixel shuffle up to the input size, i.e. one linear layer per token.

Mask patches. The paper masks 32x32 squares of 192 px images (a 6x6 grid). By default the
mask patch side is the divisor of the image size closest to a sixth of it (and a multiple
of a ViT's patch size): 32 px at 192 or 224, 4 px at 28 (Fashion-MNIST, a 7x7 grid) and
32 (CIFAR, 8x8).

Mask count: ``ceil(G * mask_ratio)`` of the G mask patches are masked, the reference code's
``mask_count`` (microsoft/SimMIM, ``data/data_simmim.py``, ``MaskGenerator``): 30 of 49 (7x7)
and 39 of 64 (8x8) at 0.6 (see ``_pixels.simmim_visible_count``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.methods._pixels import (PixelDecoder, encoder_name, feature_map, is_vit, masked_loss, patchify,
                                     random_masking, simmim_visible_count, upsample_mask, vit_patch_size,
                                     vit_tokens)
from selfsup.methods.base import METHODS, Method


def default_mask_patch_size(image_size: int, unit: int = 1) -> int:
    """The multiple of ``unit`` dividing ``image_size`` that is closest to ``image_size / 6``
    (the paper's 32 px squares on 192 px images); the smaller one on a tie."""
    sizes = [m for m in range(unit, image_size + 1, unit) if image_size % m == 0]
    if not sizes:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {unit}")
    return min(sizes, key=lambda m: (abs(m - image_size / 6), m))


def mask_image(x: Tensor, mask: Tensor, token: Tensor) -> Tensor:
    """Paste the pixel patch ``token`` [1, C, m, m] over the masked squares of ``x`` [B, C, H, W];
    ``mask`` [B, (H/m)*(W/m)] is True where masked."""
    b, _, h, w = x.shape
    m = token.shape[-1]
    pixel_mask = upsample_mask(mask, h // m, m).view(b, 1, h, w)  # [B, 1, H, W]
    tiled = token.to(x.dtype).repeat(1, 1, h // m, w // m)  # [1, C, H, W]
    return torch.where(pixel_mask, tiled, x)


def simmim_augment() -> AugmentConfig:
    """SimMIM's augmentation: random resized crops (scale 0.67-1) and flips only."""
    return AugmentConfig(crop_scale=(0.67, 1.0), jitter_p=0.0, grayscale_p=0.0)


@dataclass
class SimMIMConfig:
    """SimMIM hyper-parameters; the paper's defaults: mask ratio 0.6 of 32 px squares
    (here scaled with the image size, see the module docstring), L1 loss on masked pixels."""

    mask_ratio: float = param(0.6, gt=0, lt=1, help="fraction of mask patches replaced by the mask token; "
                              "ceil(G * mask_ratio) of the G mask patches, as in SimMIM's code")
    mask_patch_size: int | None = param(None, gt=0, help="side of a masked square in pixels; None: about "
                                        "image_size / 6, a divisor of the image size")
    augment: AugmentConfig = field(default_factory=simmim_augment)


@METHODS.register("simmim")
class SimMIM(Method):
    Config = SimMIMConfig

    def __init__(self, cfg: SimMIMConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        size, chans = info.image_size, info.in_chans
        self.vit = is_vit(encoder)
        unit = vit_patch_size(encoder) if self.vit else 1
        m = cfg.mask_patch_size or default_mask_patch_size(size, unit)
        if size % m or m % unit:
            raise ValueError(f"method 'simmim': mask_patch_size {m} must divide the image size {size}"
                             + (f" and be a multiple of the patch size {unit} of encoder {encoder_name(encoder)!r}"
                                if self.vit else ""))
        self.mask_patch, self.token_patch, self.grid = m, unit, size // m
        self.num_visible = simmim_visible_count(self.grid * self.grid, cfg.mask_ratio)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, size)
        if self.vit:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))  # patch-embedding space
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        else:
            self.mask_token = nn.Parameter(torch.zeros(1, chans, m, m))  # pixel space (0 = the data mean)
        self.decoder = PixelDecoder.for_encoder(encoder, chans, size)

    def encode(self, x: Tensor, mask: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` and mask ``[B, grid*grid]`` -> ``forward_features`` of the
        masked input (``[B, F, h, w]`` for convnets, ``[B, prefix + N, E]`` for ViTs)."""
        if self.vit:
            token_mask = upsample_mask(mask, self.grid, self.mask_patch // self.token_patch)  # [B, N]
            return vit_tokens(self.encoder, x, self.mask_token, token_mask)
        return self.encoder.forward_features(mask_image(x, mask, self.mask_token))

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """uint8 ``[n, C, S, S]`` -> the augmented view and its masked image ``[n, C, S, S]``
        (:func:`mask_image`): the learnt pixel mask token on a convnet; zeros (the data mean) on a
        ViT, whose mask token lives in the patch-embedding space."""
        x = self.augment(images)  # [n, C, S, S]
        mask, _ = random_masking(x.shape[0], self.grid * self.grid, self.num_visible, x.device)  # [n, G]
        token = torch.zeros(1, x.shape[1], self.mask_patch, self.mask_patch) if self.vit else self.mask_token
        return [("augmented", x), (f"masked {self.cfg.mask_ratio:.0%}", mask_image(x, mask, token.detach()))]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        x = self.augment(images)  # [B, C, S, S]
        mask, _ = random_masking(x.shape[0], self.grid * self.grid, self.num_visible, x.device)  # [B, G]
        feats = self.encode(x, mask)
        pred = self.decoder(feature_map(self.encoder, feats))  # [B, C, S, S]
        m = self.mask_patch
        loss = masked_loss(patchify(pred, m), patchify(x, m), mask, "l1")
        features = self.encoder.forward_head(feats, pre_logits=True)  # [B, D] of the masked image
        return {"loss": loss, "features": features.detach()}
