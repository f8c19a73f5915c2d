"""Contrastive predictive coding on images, CPC v2 (Henaff, Srinivas, De Fauw, Razavi,
Doersch, Eslami, van den Oord 2019, "Data-Efficient Image Recognition with Contrastive
Predictive Coding"; CPC: van den Oord, Li, Vinyals 2018).

1. Each augmented view is cut into a ``grid x grid`` lattice of overlapping patches:
   the view is ``s * (grid + 1)`` pixels wide, patches are ``2s`` wide with stride ``s``
   (50% overlap; with the default grid 7 each patch is a quarter of the view, as the
   paper's 64 px patches of a 256 px crop). Each patch is augmented on its own
   (``patch_augment``, CPC v2's per-patch colour dropping, flips and spatial jitter).
2. The shared encoder embeds all ``B * grid**2`` patches in one batched forward:
   ``z`` [B, D, gh, gw] (pooled features per patch).
3. A causal context network summarises, at each position, the rows above and the
   position's own row: a PixelCNN-style stack of residual blocks whose convolutions
   see only rows <= r (top-padded kernels, the same as a vertically masked convolution),
   so the context of row r never sees rows > r.
4. For each offset k in ``offsets``, a linear predictor ``W_k`` maps the context at
   (r, c) to a prediction of ``z`` at (r + k, c), scored with InfoNCE against every other
   patch embedding of the batch (other positions and other images; N = B * grid**2
   candidates). The loss is the mean over offsets; ``mi_bound`` is the mean of the
   per-offset bounds (``mi_bound_k<k>`` each).

The paper's critic is a plain dot product (``cosine: false``, temperature 1). It also
replaces BatchNorm in the encoder with layer normalisation, because BatchNorm lets
patches of one image share statistics; with timm ResNets set
``encoder.kwargs.norm_layer: groupnorm1`` (the configs do). ``exported_encoder()`` is
the encoder, applied to whole images at evaluation (the paper pools patch features).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.losses import InfoNCE, LossOutput
from selfsup.methods._pixels import is_vit
from selfsup.methods.base import METHODS, Method
from selfsup.methods.jigsaw import assemble_tiles


@dataclass
class CPCViewAugment(AugmentConfig):
    """The whole view: random crops and flips, no colour change (that is per patch)."""

    crop_scale: tuple[float, float] = (0.35, 1.0)
    jitter_p: float = param(0.0, ge=0, le=1, help="probability of colour jitter")
    grayscale_p: float = param(0.0, ge=0, le=1)


@dataclass
class CPCPatchAugment(AugmentConfig):
    """Each patch on its own: spatial jitter (crops of 60-100%), flips, colour jitter,
    colour dropping (grayscale) with p = 0.25."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    grayscale_p: float = param(0.25, ge=0, le=1)


@dataclass
class CPCConfig:
    """CPC v2 hyper-parameters: a 7x7 grid of half-overlapping patches, predictions 1 to 5
    rows below, a residual masked-convolution context network, dot-product scores at
    temperature 1, per-patch augmentation."""

    grid: int = param(7, ge=2, help="patches per side")
    view_size: int | None = param(None, gt=0, help="view side in px, rounded to a multiple of grid + 1; "
                                                   "None: the image size")
    offsets: list[int] = param(default_factory=lambda: [1, 2, 3, 4, 5], help="rows ahead to predict")
    context_dim: int = param(512, gt=0)
    context_blocks: int = param(4, ge=1, help="residual masked-convolution blocks")
    context_kernel: int = param(3, ge=1, help="rows (and columns) each causal convolution sees")
    temperature: float = param(1.0, gt=0)
    cosine: bool = param(False, help="score cosine similarities instead of dot products")
    augment_patches: bool = param(True, help="augment each patch independently")
    view_augment: CPCViewAugment = field(default_factory=CPCViewAugment)
    patch_augment: CPCPatchAugment = field(default_factory=CPCPatchAugment)

    def __post_init__(self) -> None:
        if not self.offsets or any(k < 1 or k >= self.grid for k in self.offsets):
            raise ValueError(f"offsets must be non-empty and within 1..grid-1 = {self.grid - 1}, got {self.offsets}")
        if len(set(self.offsets)) != len(self.offsets):
            raise ValueError(f"offsets repeat: {self.offsets}")


# --------------------------------------------------------------------------- patches


def patch_geometry(size: int, grid: int) -> tuple[int, int, int]:
    """(stride, patch, view side) of a ``grid x grid`` lattice of half-overlapping
    patches fitted to ``size`` px: stride ``s = round(size / (grid + 1))``, patch ``2s``,
    view ``s * (grid + 1)``."""
    s = max(1, round(size / (grid + 1)))
    return s, 2 * s, s * (grid + 1)


def extract_patches(x: Tensor, grid: int) -> Tensor:
    """Views ``[B, C, V, V]`` with ``V = s * (grid + 1)`` -> patches ``[B, grid*grid, C, 2s, 2s]``
    in row-major order: patch (r, c) is ``x[..., r*s : r*s + 2s, c*s : c*s + 2s]``."""
    b, c, h, w = x.shape
    s = h // (grid + 1)
    if h != w or s * (grid + 1) != h:
        raise ValueError(f"a {grid}x{grid} grid of half-overlapping patches needs a square view whose side is a "
                         f"multiple of {grid + 1}, got {h}x{w}")
    p = 2 * s
    t = x.unfold(2, p, s).unfold(3, p, s)  # [B, C, grid, grid, p, p]
    return t.permute(0, 2, 3, 1, 4, 5).reshape(b, grid * grid, c, p, p)


# --------------------------------------------------------------------------- context network


class CausalConv2d(nn.Conv2d):
    """A k x k convolution whose output at row r sees input rows r-k+1..r only (padding
    on top and on both sides, none below): a PixelCNN-style vertically masked convolution."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__(in_ch, out_ch, kernel, padding=0)
        self.pads = (kernel // 2, (kernel - 1) // 2, kernel - 1, 0)  # left, right, top, bottom

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


class ContextNetwork(nn.Module):
    """``z`` [B, D, gh, gw] -> context [B, C, gh, gw] where row r depends on rows <= r only:
    a 1x1 input projection, residual blocks (ReLU, causal k x k conv, ReLU, 1x1 conv) and
    no normalisation across positions (which would leak rows)."""

    def __init__(self, in_dim: int, dim: int, blocks: int, kernel: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), CausalConv2d(dim, dim, kernel), nn.ReLU(), nn.Conv2d(dim, dim, 1))
            for _ in range(blocks))

    def forward(self, z: Tensor) -> Tensor:
        c = self.proj(z)
        for block in self.blocks:
            c = c + block(c)
        return c


def offset_pairs(pred: Tensor, z: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, aligned targets and the remaining candidates for offset ``k``.

    ``pred``, ``z`` [B, D, gh, gw]: the prediction made at (r, c) targets ``z`` at (r + k, c).
    Returns queries ``[M, D]`` (rows 0..gh-k-1 of ``pred``), their positives ``[M, D]``
    (rows k..gh-1 of ``z``, in the same order; M = B*(gh-k)*gw) and the other patches
    ``[B*k*gw, D]`` (rows 0..k-1 of ``z``), so positives + others are all B*gh*gw patches.
    """
    d = z.shape[1]

    def rows(t: Tensor) -> Tensor:  # [B, D, r, gw] -> [B*r*gw, D]
        return t.permute(0, 2, 3, 1).reshape(-1, d)

    gh = z.shape[2]
    return rows(pred[:, :, : gh - k]), rows(z[:, :, k:]), rows(z[:, :, :k])


@METHODS.register("cpc")
class CPC(Method):
    Config = CPCConfig

    def __init__(self, cfg: CPCConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        if is_vit(encoder):
            raise ValueError("cpc embeds small patches of any size; use a convolutional encoder, not a ViT")
        self.stride, self.patch, self.view_size = patch_geometry(cfg.view_size or info.image_size, cfg.grid)
        zero, one = (0.0,) * info.in_chans, (1.0,) * info.in_chans
        self.view_augment = BatchAugment(cfg.view_augment, zero, one, self.view_size)  # [0, 1] views
        patch_cfg = cfg.patch_augment if cfg.augment_patches else AugmentConfig(
            crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, jitter_p=0.0, grayscale_p=0.0)
        self.patch_augment = BatchAugment(patch_cfg, info.mean, info.std, self.patch)  # normalised patches
        self.context = ContextNetwork(self.num_features, cfg.context_dim, cfg.context_blocks, cfg.context_kernel)
        self.predictors = nn.ModuleList(nn.Conv2d(cfg.context_dim, self.num_features, 1) for _ in cfg.offsets)
        self.criterion = InfoNCE(cfg.temperature, batch_negatives=True, normalize=cfg.cosine)

    def encoder_input_sizes(self) -> list[int]:
        return [self.patch]  # the encoder embeds each patch; whole images only at evaluation

    def embed_patches(self, views: Tensor) -> Tensor:
        """[0, 1] views ``[B, C, V, V]`` -> patch embeddings ``z`` [B, D, g, g] (one encoder forward)."""
        b, g = views.shape[0], self.cfg.grid
        patches = extract_patches(views, g).flatten(0, 1)  # [B*G, C, p, p]
        z = self.encoder(self.patch_augment(patches))  # [B*G, D]
        return z.view(b, g, g, -1).permute(0, 3, 1, 2)  # [B, D, g, g]

    def predict(self, z: Tensor) -> dict[int, LossOutput]:
        """InfoNCE of every offset for patch embeddings ``z`` [B, D, g, g]."""
        c = self.context(z)  # [B, C, g, g], row r sees rows <= r
        out = {}
        for k, predictor in zip(self.cfg.offsets, self.predictors):
            queries, keys, others = offset_pairs(predictor(c), z, k)  # [M, D], [M, D], [B*k*g, D]
            out[k] = self.criterion(queries, keys, others)
        return out

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """uint8 ``[n, C, S, S]`` -> the view ``[n, C, V, V]`` and its ``grid x grid`` half-overlapping patches,
        each augmented on its own, laid side by side ``[n, C, grid*p, grid*p]`` (what the encoder embeds)."""
        views = self.view_augment(images)  # [n, C, V, V] in [0, 1]
        mean = torch.tensor(self.info.mean, device=views.device).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std, device=views.device).view(1, -1, 1, 1)
        patches = extract_patches(views, self.cfg.grid)  # [n, G, C, p, p]
        augmented = self.patch_augment(patches.flatten(0, 1)).view_as(patches)  # normalised, [n, G, C, p, p]
        return [("view", (views - mean) / std),
                (f"{self.cfg.grid}x{self.cfg.grid} patches", assemble_tiles(augmented, self.cfg.grid))]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        z = self.embed_patches(self.view_augment(images))  # [B, D, g, g]
        per_offset = self.predict(z)
        loss = torch.stack([o.loss for o in per_offset.values()]).mean()
        result = {"loss": loss, "mi_bound": torch.stack([o.mi_bound for o in per_offset.values()]).mean()}
        result.update({f"mi_bound_k{k}": o.mi_bound for k, o in per_offset.items()})
        result["features"] = z.mean(dim=(2, 3)).detach()  # [B, D]: patch features averaged over the grid
        return result
