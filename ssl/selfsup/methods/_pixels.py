"""Shared by the pixel-reconstruction pretexts (mae, simmim, denoise): patchify and
unpatchify, each method's count of masked patches (MAE's and SimMIM's own rules), per-sample
random masks with that exact count, losses on masked patches only,
the encoder's last feature map, and a light pixel decoder (a 1x1 conv and a pixel shuffle).

Not a method itself (the method registry skips modules starting with ``_``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from selfsup.config import ConfigError
from selfsup.distributed import draw_local

# --------------------------------------------------------------------------- patches


def patchify(x: Tensor, patch: int) -> Tensor:
    """Images ``[B, C, H, W]`` -> patches ``[B, N, patch*patch*C]``, N = (H/p)(W/p) in
    row-major order; each patch vector is laid out (row, col, channel) as in MAE."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not divisible into {patch}x{patch} patches")
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh, patch, gw, patch)  # [B, C, gh, p, gw, p]
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: Tensor, patch: int, channels: int, grid: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, N, p*p*C]`` -> ``[B, C, gh*p, gw*p]``
    (a square grid unless ``grid`` = (gh, gw) is given)."""
    b, n, d = patches.shape
    if d != patch * patch * channels:
        raise ValueError(f"patch vectors of size {d} are not {patch}x{patch}x{channels}")
    gh, gw = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
    if gh * gw != n:
        raise ValueError(f"{n} patches do not form a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, patch, patch, channels)  # [B, gh, gw, p, p, C]
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


def normalise_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's per-patch normalised targets: each patch ``[..., P]`` to zero mean, unit variance."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


# --------------------------------------------------------------------------- masks


def _exact_ratio(mask_ratio: float) -> Fraction:
    """``mask_ratio`` as the decimal it is written as (its shortest ``repr``): 0.9 -> 9/10.

    Counts are then exact: in floats ``10 * (1 - 0.9)`` is 0.99999..., whose ``int`` is 0, and
    ``100 * 0.55`` is 55.000...01, whose ceiling is 56."""
    return Fraction(repr(float(mask_ratio)))


def _check_visible(n: int, visible: int, mask_ratio: float) -> int:
    """``visible`` if it leaves at least one patch visible and one masked out of ``n``.

    Raises:
        ConfigError: naming ``method.mask_ratio`` and the largest ratio that works on ``n`` patches.
    """
    if 1 <= visible <= n - 1:
        return visible
    if n < 2:
        raise ConfigError(f"method.mask_ratio: a grid of {n} patch cannot be split into visible and masked "
                          f"patches; use a smaller patch (or mask patch) size")
    highest = math.floor((n - 1) / n * 1000) / 1000
    raise ConfigError(f"method.mask_ratio={mask_ratio} leaves {visible} of {n} patches visible; masked "
                      f"image modelling needs at least one visible and one masked patch: use a mask_ratio "
                      f"<= {highest}")


def mae_visible_count(n: int, mask_ratio: float) -> int:
    """MAE's number of visible patches out of ``n``: ``floor(n * (1 - mask_ratio))``.

    He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"; facebookresearch/mae,
    ``models_mae.py``, ``MaskedAutoencoderViT.random_masking``: ``len_keep = int(L * (1 -
    mask_ratio))``. Computed on the ratio as written (:func:`_exact_ratio`), so it differs from
    the reference's float expression only where that one is off by a rounding error (100 patches
    at 0.9: 10 visible here, 9 there; at the paper's 0.75 the two agree on every grid).

    Raises:
        ConfigError: when no patch would be visible (see :func:`_check_visible`).
    """
    return _check_visible(n, math.floor(n * (1 - _exact_ratio(mask_ratio))), mask_ratio)


def simmim_visible_count(n: int, mask_ratio: float) -> int:
    """SimMIM's number of visible mask patches out of ``n``: ``n - ceil(n * mask_ratio)``.

    Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling"; microsoft/SimMIM,
    ``data/data_simmim.py``, ``MaskGenerator``: ``mask_count = int(np.ceil(token_count *
    mask_ratio))`` over the grid of mask patches. Computed on the ratio as written
    (:func:`_exact_ratio`; 100 patches at 0.55: 55 masked here, 56 by the float expression; at
    the paper's 0.6 the two agree on every grid).

    Raises:
        ConfigError: when every patch would be masked (see :func:`_check_visible`).
    """
    return _check_visible(n, n - math.ceil(n * _exact_ratio(mask_ratio)), mask_ratio)


def random_masking(batch: int, n: int, visible: int, device: torch.device | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Independent random masks with the same number of visible patches in every sample.

    ``visible`` comes from the method's own rule (:func:`mae_visible_count`,
    :func:`simmim_visible_count`). Returns ``mask`` [B, N] bool (True = masked) and ``keep``
    [B, K] long, the indices of the K = ``visible`` visible patches of each sample in
    increasing order.

    Raises:
        ValueError: when ``visible`` is not an int between 1 and ``n - 1``.
    """
    if isinstance(visible, bool) or not isinstance(visible, int) or not 1 <= visible <= n - 1:
        raise ValueError(f"random_masking: visible must be a whole number of patches from 1 to {n - 1} of {n}, "
                         f"got {visible!r}")
    noise = draw_local(lambda rows: torch.rand(rows, n, device=device, generator=generator), batch)  # [B, N]
    keep = noise.argsort(dim=1)[:, :visible].sort(dim=1).values  # [B, K]
    mask = torch.ones(batch, n, dtype=torch.bool, device=device).scatter(1, keep, False)  # [B, N]
    return mask, keep


def upsample_mask(mask: Tensor, grid: int, factor: int) -> Tensor:
    """A mask over a ``grid x grid`` patch grid ``[B, grid*grid]`` -> the same mask over the
    ``factor``-times finer grid ``[B, (grid*factor)**2]`` (row-major)."""
    b = mask.shape[0]
    m = mask.view(b, grid, grid)
    m = m.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)  # [B, g*f, g*f]
    return m.reshape(b, -1)


def masked_loss(pred: Tensor, target: Tensor, mask: Tensor, kind: Literal["mse", "l1"] = "mse") -> Tensor:
    """Mean per-element error over the masked patches only.

    ``pred``, ``target`` [B, N, P]; ``mask`` [B, N] bool (True = masked). Visible patches
    contribute nothing (not even a NaN or inf prediction there); with equal-sized patches
    this is also the mean over masked pixels (SimMIM's normalisation).
    """
    diff = pred.float() - target.float()  # [B, N, P]
    err = diff.square() if kind == "mse" else diff.abs()
    per_patch = err.mean(dim=-1)  # [B, N]
    mask = mask.bool()
    return torch.where(mask, per_patch, per_patch.new_zeros(())).sum() / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------- encoders and decoders


def is_vit(encoder: nn.Module) -> bool:
    return isinstance(encoder, VisionTransformer)


def encoder_name(encoder: nn.Module) -> str:
    """timm's architecture name of ``encoder`` (or its class name)."""
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(encoder).__name__)


def vit_patch_size(encoder: VisionTransformer) -> int:
    ph, pw = encoder.patch_embed.patch_size
    if ph != pw:
        raise ValueError(f"{encoder_name(encoder)} has non-square {ph}x{pw} patches; selfsup needs square ones")
    return ph


def feature_map(encoder: nn.Module, feats: Tensor) -> Tensor:
    """The output of ``encoder.forward_features`` as a map ``[B, F, h, w]``: NCHW maps pass
    through, NHWC maps (``output_fmt == "NHWC"``, e.g. Swin) are permuted, and token
    sequences ``[B, prefix + h*w, F]`` (ViTs) lose their prefix tokens and become a square grid."""
    if feats.ndim == 4:
        return feats.permute(0, 3, 1, 2) if getattr(encoder, "output_fmt", "NCHW") == "NHWC" else feats
    if feats.ndim == 3:
        tokens = feats[:, getattr(encoder, "num_prefix_tokens", 0):]  # [B, L, F]
        b, n, d = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{encoder_name(encoder)} gives {n} patch tokens, not a square grid")
        return tokens.transpose(1, 2).reshape(b, d, side, side)
    raise ValueError(f"{encoder_name(encoder)}.forward_features gives a {feats.ndim}-d output; "
                     f"selfsup needs a feature map or a token sequence")


@torch.no_grad()
def feature_map_shape(encoder: nn.Module, in_chans: int, size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the encoder's last feature map for ``size`` px inputs
    (one forward of a blank image, in eval mode so that no BatchNorm statistic moves)."""
    was_training = encoder.training
    encoder.eval()
    try:
        param = next(encoder.parameters())
        x = torch.zeros(1, in_chans, size, size, device=param.device, dtype=param.dtype)
        _, c, h, w = feature_map(encoder, encoder.forward_features(x)).shape
    finally:
        encoder.train(was_training)
    return c, h, w


class PixelDecoder(nn.Module):
    """SimMIM's light decoder: a 1x1 conv from the feature map ``[B, F, h, w]`` to
    ``upscale**2 * C`` channels and a pixel shuffle to ``[B, C, h*upscale, w*upscale]``,
    cropped to ``out_size``. On a ViT's token grid this is a linear layer per token."""

    def __init__(self, in_dim: int, out_chans: int, upscale: int, out_size: int) -> None:
        super().__init__()
        self.out_size = out_size
        self.proj = nn.Conv2d(in_dim, upscale * upscale * out_chans, kernel_size=1)
        self.shuffle = nn.PixelShuffle(upscale)

    @classmethod
    def for_encoder(cls, encoder: nn.Module, in_chans: int, size: int) -> "PixelDecoder":
        """A decoder from ``encoder``'s last feature map back to ``size`` x ``size`` pixels."""
        c, h, w = feature_map_shape(encoder, in_chans, size)
        return cls(c, in_chans, math.ceil(size / min(h, w)), size)

    def forward(self, fmap: Tensor) -> Tensor:
        x = self.shuffle(self.proj(fmap))  # [B, C, h*r, w*r]
        s = self.out_size
        return x[..., :s, :s] if x.shape[-1] != s or x.shape[-2] != s else x


def vit_tokens(encoder: VisionTransformer, x: Tensor, mask_token: Tensor | None = None,
               mask: Tensor | None = None) -> Tensor:
    """``encoder.forward_features`` of a timm ViT, stage by stage, with the patch
    embeddings where ``mask`` [B, N] is True replaced by ``mask_token`` [1, 1, E]:
    ``x`` [B, C, H, W] -> tokens ``[B, prefix + N, E]`` after the final norm.

    ``patch_drop`` (timm's PatchDropout, off by default) is skipped: it would remove tokens."""
    t = encoder.patch_embed(x)  # [B, N, E], or [B, h, w, E] with dynamic_img_size
    if mask is not None:
        shape = t.shape
        t = t.reshape(shape[0], -1, shape[-1])  # [B, N, E]
        t = torch.where(mask[..., None], mask_token.to(t.dtype), t).reshape(shape)
    t = encoder._pos_embed(t)  # [B, prefix + N, E]
    t = encoder.norm_pre(t)
    t = encoder.blocks(t)
    return encoder.norm(t)
