"""Deep InfoMax, the local objective (Hjelm, Fedorov, Lavoie-Marchildon, Grewal, Bachman,
Trischler, Bengio 2019, "Learning deep representations by mutual information estimation and
maximization", ICLR; DIM(L)).

The encoder's pooled output of an image, its global feature, should share information with
every local patch of that image. One forward of the timm encoder gives both: the pooled
features ``h`` [B, D] and an intermediate feature map ``C(x)`` [B, C, H, W] (timm
``forward_intermediates``), whose P = H * W positions each see one receptive-field patch.
Two small MI networks embed them into a shared space of ``mi_units`` (the authors' code:
2048): the global one an MLP on ``h``, the local one the same network at every position (a
1x1 convolution). Each is a two-layer MLP (linear, BatchNorm, ReLU, linear) with a linear
shortcut initialised near the identity, followed by LayerNorm, as in the authors' code
(rdevon/DIM, ``MI1x1ConvNet``). The critic is their dot product ("encode and dot product").

Scores: at position p, ``scores_p[i, j] = G(h_i) . L(C(x_j))_p``, a [B, B] matrix whose
diagonal pairs an image's global feature with its own patch (the joint) and whose other
entries pair it with another image's patch at the same position (the product of marginals).
The bound is computed on all P matrices at once, stacked as ``[P * B, B]`` rows with the
positive of row (p, i) in column i. JS (the paper's default: the Jensen-Shannon f-GAN bound,
:func:`selfsup.losses.mi_bounds.js`) and InfoNCE (:func:`selfsup.losses.mi_bounds.infonce`,
the paper's DIM(L) NCE variant) are both means over their rows or pairs, so this equals the
average over positions of each position's bound, the paper's ``1/M^2 sum_i I(C_i(X); E(X))``.
The authors' InfoNCE code takes the negatives of a patch from every position of the other
images; here they come from the same position, the paper's per-position estimate, so the
InfoNCE estimate is at most ``log B``.

``mi_bound`` is the bound's MI estimate in nats: InfoNCE's ``log B - L``, or for JS the NWJ
bound read on the same critic (Poole et al. 2019). The authors' critic is the plain dot product
of two LayerNorm-ed ``mi_units``-wide vectors, whose scores start at tens of units (the standard
deviation is ``sqrt(mi_units)``); NWJ's ``e^f`` term then reads the JS-trained critic as about
-1e60 nats for the first steps (measured on digits), and InfoNCE's loss starts an order of
magnitude above ``log B``. The critic here divides the dot product by ``sqrt(mi_units)``
(``scaled_scores``), so the scores start near unit scale; LayerNorm's learnt gains can still
grow them. ``scaled_scores: false`` is the authors' critic.

Defaults (the authors' code for their CIFAR-10 convnet, ``basic32x32``): the local map is
that of the middle convolution, 8 x 8 on a 32 px image (7 x 7 on 28 px MNIST), stride 4.
``local_stage`` None therefore takes the deepest stage of the timm encoder whose stride
(``feature_info`` reduction) is at most 4: ``layer1`` of a ResNet, the first stage of a
ConvNeXt. The global objective, the prior matching and the multiple globals of the paper
are not part of this method. The local objective needs a feature map with positions, so the
encoder must be a timm convnet with ``forward_intermediates``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from selfsup.config import ConfigError, param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.encoders import is_convnet
from selfsup.losses import full_precision, no_autocast
from selfsup.losses.mi_bounds import Bound, infonce, js
from selfsup.methods.base import METHODS, Method

#: The stride of the paper's local feature map (8 x 8 on 32 px images).
PAPER_LOCAL_STRIDE = 4


def dim_augment() -> AugmentConfig:
    """The authors train on the images as they are, with flips: whole-image crops (area 1,
    aspect 1), no colour change."""
    return AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0)


@dataclass
class DIMConfig:
    """Deep InfoMax (local) hyper-parameters; defaults are the authors' (Hjelm et al. 2019 and
    their code): the JS estimator, MI networks of 2048 units, the local map at stride 4; the
    critic's dot product is scaled by ``1/sqrt(mi_units)`` (``scaled_scores``, module docstring)."""

    estimator: Literal["js", "infonce"] = param(
        "js", help="MI bound trained and reported: js (the paper's default, MI read by NWJ) or infonce")
    mi_units: int = param(2048, gt=0, help="width of the shared space of the local and global MI networks")
    scaled_scores: bool = param(True, help="divide the critic's dot products by sqrt(mi_units); false: the "
                                           "authors' unscaled dot product")
    local_stage: int | None = param(
        None, help="index into the encoder's forward_intermediates maps (negative: from the end); "
                   "None: the deepest stage at stride <= 4 (the paper's 8x8 map of a 32 px image)")
    augment: AugmentConfig = field(default_factory=dim_augment)


# --------------------------------------------------------------------------- MI networks


class MINetwork(nn.Module):
    """``[..., in_dim]`` -> ``[..., units]``: LayerNorm(MLP(x) + shortcut(x)) with MLP = linear (no
    bias), BatchNorm, ReLU, linear, and a linear shortcut that starts as a noisy identity where
    ``units >= in_dim`` (Hjelm et al.'s MI network). Applied to the channels of every position
    of a map it is their 1x1-convolution network; BatchNorm pools the statistics over all
    leading dimensions (a BatchNorm2d's, for a map)."""

    def __init__(self, in_dim: int, units: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_dim, units, bias=False), nn.BatchNorm1d(units), nn.ReLU(),
                                   nn.Linear(units, units))
        self.shortcut = nn.Linear(in_dim, units, bias=False)
        self.norm = nn.LayerNorm(units)
        if units >= in_dim:
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[:in_dim].fill_diagonal_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [N, in_dim]
        out = self.norm(self.block(flat) + self.shortcut(flat))  # [N, units]
        return out.view(*x.shape[:-1], -1)


# --------------------------------------------------------------------------- scores and bound


def local_global_scores(global_emb: Tensor, local_emb: Tensor, scale: float = 1.0) -> Tensor:
    """Scaled dot products of every image's global embedding with every image's local embedding
    at the same position: ``global_emb`` [B, U], ``local_emb`` [B, P, U] -> ``[P, B, B]`` with
    ``scores[p, i, j] = scale * global_emb[i] . local_emb[j, p]`` (float32 under autocast)."""
    with no_autocast(global_emb):
        return scale * torch.einsum("iu,jpu->pij", full_precision(global_emb), full_precision(local_emb))


def dim_bound(scores: Tensor, estimator: str) -> Bound:
    """The local DIM bound on per-position scores ``[P, B, B]`` (diagonal of each: the positives):
    the mean over positions of ``js`` or ``infonce`` on each ``[B, B]`` matrix.

    Raises:
        ValueError: an unknown estimator, or fewer than 2 images (no negative pair).
    """
    p, b, b2 = scores.shape
    if b != b2 or b < 2:
        raise ValueError(f"dim needs at least 2 images per batch, each against the others' patches; got scores of "
                         f"shape {tuple(scores.shape)}")
    rows = scores.reshape(p * b, b)  # row p * B + i: global i against position p of every image
    target = torch.arange(b, device=scores.device).repeat(p)  # [P * B]
    if estimator == "js":
        return js(rows, target)
    if estimator == "infonce":
        return infonce(rows, target)
    raise ValueError(f"dim: unknown estimator {estimator!r}; choose js or infonce")


def default_local_stage(reductions: list[int], stride: int = PAPER_LOCAL_STRIDE) -> int:
    """Index of the deepest feature map whose stride (``reductions``, timm's ``feature_info``) is
    at most ``stride``.

    Raises:
        ConfigError: when every map is coarser (naming ``method.local_stage``).
    """
    fine = [i for i, r in enumerate(reductions) if r <= stride]
    if not fine:
        raise ConfigError(f"dim: the encoder has no feature map at stride <= {stride} (strides {reductions}); "
                          f"set method.local_stage to the index of the map to use")
    return fine[-1]


def check_encoder(encoder: nn.Module) -> list[int]:
    """The strides of the encoder's feature maps, after checking that dim can use it.

    Raises:
        ConfigError: a transformer (no convolutional feature map) or a model without
            ``forward_intermediates``.
    """
    name = type(encoder).__name__
    if not is_convnet(encoder):
        raise ConfigError(f"dim needs a convolutional encoder (a timm convnet such as resnet18 or convnext_tiny) for "
                          f"its local feature map; {name} is a transformer: set encoder.name to a convnet")
    info = getattr(encoder, "feature_info", None)
    if not hasattr(encoder, "forward_intermediates") or not info:
        raise ConfigError(f"dim needs a timm convnet with forward_intermediates and feature_info; {name} has none: "
                          f"set encoder.name to another convnet (resnet18, convnext_tiny, ...)")
    return [int(f["reduction"]) for f in info]


@METHODS.register("dim")
class DIM(Method):
    Config = DIMConfig

    def __init__(self, cfg: DIMConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        reductions = check_encoder(encoder)
        stage = default_local_stage(reductions) if cfg.local_stage is None else cfg.local_stage
        if not -len(reductions) <= stage < len(reductions):
            raise ConfigError(f"dim: method.local_stage={stage} is out of range for the encoder's "
                              f"{len(reductions)} feature maps; use 0..{len(reductions) - 1} or None")
        self.local_stage = stage % len(reductions)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)
        channels = int(encoder.feature_info[self.local_stage]["num_chs"])
        self.global_net = MINetwork(self.num_features, cfg.mi_units)
        self.local_net = MINetwork(channels, cfg.mi_units)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Views ``[B, C, S, S]`` -> (pooled features ``[B, D]``, local map ``[B, P, C']``), one forward."""
        final, (local,) = self.encoder.forward_intermediates(x, indices=[self.local_stage])
        h = self.encoder.forward_head(final)  # [B, D], what encoder(x) returns
        return h, local.flatten(2).transpose(1, 2)  # [B, P, C'], positions row-major

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        h, local = self.encode(self.augment(images))  # [B, D], [B, P, C']
        scale = self.cfg.mi_units ** -0.5 if self.cfg.scaled_scores else 1.0
        scores = local_global_scores(self.global_net(h), self.local_net(local), scale)  # [P, B, B]
        bound = dim_bound(scores, self.cfg.estimator)
        return {"loss": bound.loss, "mi_bound": bound.mi, "features": h.detach()}
