"""Masked autoencoders (He, Chen, Xie, Li, Dollar, Girshick 2022, "Masked Autoencoders Are
Scalable Vision Learners"): a random subset of each image's patches (default 25%) is
embedded by a Vision Transformer, so the encoder's cost falls with the mask ratio; a
small transformer decoder fills in mask tokens, adds its own positional embeddings and
predicts the pixels of every patch; the loss is the mean squared error on the masked
patches only, against per-patch normalised pixels by default.

The encoder is a timm ``VisionTransformer`` used stage by stage: ``patch_embed``, then
``_pos_embed`` (class/register tokens and timm's own learned position embeddings, on all
N patches), then the visible patch tokens are gathered, then ``norm_pre``, ``blocks``
and ``norm``. Nothing is added to or renamed in the encoder, so the exported encoder is
the timm ViT itself. Differences from the paper: the encoder's position embeddings are
timm's learned ones (the paper fixes them to 2-D sine-cosine; the decoder's are sine-cosine
here as there), and ``patch_drop`` (timm's PatchDropout) is not applied.

Mask count: ``floor(N * (1 - mask_ratio))`` of the N patches stay visible, the reference
code's ``len_keep = int(L * (1 - mask_ratio))`` (facebookresearch/mae, ``models_mae.py``,
``random_masking``): 12 of 49 at 0.75, 19 of 49 at 0.6 (see ``_pixels.mae_visible_count``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.methods._pixels import (encoder_name, is_vit, mae_visible_count, masked_loss, normalise_patches,
                                     patchify, random_masking, upsample_mask, vit_patch_size)
from selfsup.methods.base import METHODS, Method


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[grid*grid, dim]`` (row-major), half of
    the channels for the row and half for the column, as in MAE's decoder."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # [dim/4]
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # [g, g]

    def embed(p: Tensor) -> Tensor:
        angles = p.reshape(-1, 1) * omega[None]  # [g*g, dim/4]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # [g*g, dim/2]

    return torch.cat([embed(cols), embed(rows)], dim=1).float()  # [g*g, dim]


def mae_augment() -> AugmentConfig:
    """MAE's augmentation: random resized crops (scale 0.2-1) and flips, no colour changes."""
    return AugmentConfig(crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0)


@dataclass
class MAEConfig:
    """MAE hyper-parameters; defaults are the paper's (mask ratio 0.75, a decoder of 8
    blocks, 512 wide, 16 heads, normalised pixel targets)."""

    mask_ratio: float = param(0.75, gt=0, lt=1, help="fraction of patches hidden from the encoder; "
                              "floor(N * (1 - mask_ratio)) of the N patches stay visible, as in MAE's code")
    decoder_dim: int = param(512, gt=0)
    decoder_depth: int = param(8, ge=1)
    decoder_heads: int = param(16, ge=1)
    decoder_mlp_ratio: float = param(4.0, gt=0)
    norm_pix_loss: bool = param(True, help="normalise each target patch to zero mean, unit variance")
    augment: AugmentConfig = field(default_factory=mae_augment)

    def __post_init__(self) -> None:
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ValueError(f"decoder_dim ({self.decoder_dim}) must be divisible by decoder_heads "
                             f"({self.decoder_heads}) and by 4")


def _init_decoder(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@METHODS.register("mae")
class MAE(Method):
    Config = MAEConfig
    requires_vit = True
    decoder_pos_embed: Tensor

    def __init__(self, cfg: MAEConfig, encoder: nn.Module, info: DataInfo) -> None:
        if not is_vit(encoder):
            raise ValueError(f"method 'mae' needs a timm VisionTransformer encoder (e.g. encoder.name="
                             f"vit_small_patch16_224 with encoder.kwargs.img_size={info.image_size}); "
                             f"got encoder {encoder_name(encoder)!r} ({type(encoder).__name__})")
        super().__init__(cfg, encoder, info)
        self.patch = vit_patch_size(encoder)
        if info.image_size % self.patch:
            raise ValueError(f"method 'mae': image size {info.image_size} is not a multiple of the patch size "
                             f"{self.patch} of encoder {encoder_name(encoder)!r}")
        self.grid = info.image_size // self.patch
        self.num_patches = self.grid * self.grid
        self.num_visible = mae_visible_count(self.num_patches, cfg.mask_ratio)
        self.num_prefix = encoder.num_prefix_tokens
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)

        d = cfg.decoder_dim
        self.decoder_embed = nn.Linear(encoder.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(d, self.grid)[None], persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.Sequential(*[
            Block(d, cfg.decoder_heads, cfg.decoder_mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(cfg.decoder_depth)])
        self.decoder_norm = norm(d)
        self.decoder_pred = nn.Linear(d, self.patch * self.patch * info.in_chans)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(_init_decoder)
        nn.init.normal_(self.mask_token, std=0.02)

    # ---------------------------------------------------------------- stages
    def encode_visible(self, x: Tensor, keep: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` and visible patch indices ``[B, K]`` -> encoder tokens
        ``[B, prefix + K, E]``: the ViT runs on the prefix and the K visible tokens only."""
        enc = self.encoder
        tokens = enc._pos_embed(enc.patch_embed(x))  # [B, prefix + N, E]
        prefix, patches = tokens[:, : self.num_prefix], tokens[:, self.num_prefix:]
        visible = torch.gather(patches, 1, keep[..., None].expand(-1, -1, patches.shape[-1]))  # [B, K, E]
        h = enc.norm_pre(torch.cat([prefix, visible], dim=1))  # [B, prefix + K, E]
        if enc.grad_checkpointing and torch.is_grad_enabled():  # trainer.grad_checkpointing
            return enc.norm(checkpoint_seq(enc.blocks, h))
        return enc.norm(enc.blocks(h))

    def decode(self, latent: Tensor, keep: Tensor) -> Tensor:
        """Encoder tokens ``[B, prefix + K, E]`` -> pixel predictions ``[B, N, p*p*C]``."""
        z = self.decoder_embed(latent)  # [B, prefix + K, Dd]
        b, _, d = z.shape
        full = self.mask_token.to(z.dtype).expand(b, self.num_patches, d)  # [B, N, Dd]
        full = full.scatter(1, keep[..., None].expand(-1, -1, d), z[:, self.num_prefix:])  # [B, N, Dd]
        full = full + self.decoder_pos_embed.to(z.dtype)
        z = torch.cat([z[:, : self.num_prefix], full], dim=1)  # [B, prefix + N, Dd]
        z = self.decoder_norm(self.decoder_blocks(z))
        return self.decoder_pred(z[:, self.num_prefix:])  # [B, N, p*p*C]

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """uint8 ``[n, C, S, S]`` -> the augmented view and what the encoder sees of it: its masked
        patches (:func:`random_masking`, the encoder drops them) zeroed, i.e. the data mean, ``[n, C, S, S]``."""
        x = self.augment(images)  # [n, C, S, S]
        mask, _ = random_masking(x.shape[0], self.num_patches, self.num_visible, x.device)  # [n, N]
        hidden = upsample_mask(mask, self.grid, self.patch).view(x.shape[0], 1, *x.shape[-2:])  # [n, 1, S, S]
        return [("augmented", x), (f"masked {self.cfg.mask_ratio:.0%}", x.masked_fill(hidden, 0.0))]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        x = self.augment(images)  # [B, C, S, S]
        mask, keep = random_masking(x.shape[0], self.num_patches, self.num_visible, x.device)  # [B, N], [B, K]
        latent = self.encode_visible(x, keep)  # [B, prefix + K, E]
        pred = self.decode(latent, keep)  # [B, N, p*p*C]
        target = patchify(x, self.patch)  # [B, N, p*p*C]
        if self.cfg.norm_pix_loss:
            target = normalise_patches(target)
        loss = masked_loss(pred, target, mask, "mse")
        features = self.encoder.forward_head(latent, pre_logits=True)  # [B, D] pooled over the visible tokens
        return {"loss": loss, "features": features.detach()}
