"""Pretext-invariant representation learning (Misra & van der Maaten 2020, "Self-Supervised
Learning of Pretext-Invariant Representations", CVPR; PIRL), with the jigsaw transform.

An image I gives two views: the image itself, augmented, and its jigsaw transform I_t, a
3x3 grid of jittered tiles in a uniformly random order (:mod:`selfsup.methods.jigsaw`'s
tiling; each tile normalised on its own, jigsaw's defence against low-level cues). The shared
encoder embeds both: ``f(v_I)`` is the pooled feature of the image through a linear
projection to 128-d; ``g(v_It)`` embeds each of the 9 tiles with the same encoder, projects
each to 128-d with one shared linear layer, concatenates them in their shuffled order and
projects the 1152-d result to 128-d. Both are L2-normalised.

A memory bank holds ``m_I`` for every training image, the exponential moving average of
``f(v_I)`` (momentum 0.5), and the loss is the paper's eq. 5,

    L = lambda * L_NCE(m_I, g(v_It)) + (1 - lambda) * L_NCE(m_I, f(v_I)),   lambda = 0.5,

each term NPID's binary NCE (:mod:`selfsup.losses.nce`) of the positive ``m_I`` against
negatives ``m_I'`` drawn uniformly from the bank, on cosine similarities / 0.07. The two terms
share the negatives and the normalisation constant Z, estimated on the first batch (over both
terms' negatives) and fixed, as in the authors' implementation (VISSL, ``nce_loss_with_memory``,
``norm_constant: -1``). The bank, its momentum update (after scoring) and the scores are NPID's
(:mod:`selfsup.methods.npid`, :class:`selfsup.losses.MemoryBank`).

Negatives: the paper draws 32,000 per image from ImageNet's 1,281,167 training images (2.5%);
``num_negatives`` 0 (the default) keeps that fraction of the bank, so 1,499 for Fashion-MNIST's
60,000 images and 1,249 for CIFAR-10's 50,000 (at least 1).

Augmentation, after the authors' config (VISSL ``pirl_jigsaw_4node_resnet50``): the image view
is a random resized crop of 8-100% with colour jitter (0.4, hue 0.2), grayscale 0.2 and flips;
the jigsaw view is a separate crop of 60-100%, resized to 3 cells (jigsaw's geometry) and cut
into tiles. VISSL jitters the colour of each tile on its own; here the jigsaw view is jittered
as a whole before it is cut (the per-tile normalisation removes each tile's brightness and
contrast either way).

``objective: infonce`` replaces each binary NCE term by the cross entropy of the positive among
its 1 + m candidates (VISSL's ``loss_type: cross_entropy``), which needs no Z: NPID's NCE, with
Z fixed while the bank is still random, collapses on Fashion-MNIST (:mod:`selfsup.methods.npid`),
and PIRL's does too (measured in ``configs/pirl-fashion-mnist.yaml``, which uses ``infonce``).

``mi_bound`` is ``lambda``-mixed like the loss: the InfoNCE bound ``log(m + 1) - L`` of each
term's scores, the positive among its m negatives (``mi_bound_jigsaw``, ``mi_bound_image``).
The method needs each image's dataset index (``needs_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import param
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.losses import NCE, MemoryBank, cross_entropy_bound, full_precision, nce_loss, no_autocast
from selfsup.methods.base import METHODS, Method
from selfsup.methods.jigsaw import GRID, NUM_TILES, assemble_tiles, jittered_tiles, shuffle_tiles, tile_geometry
from selfsup.methods.npid import bank_indices, bank_scores, memory_bank_rows

#: The paper's negatives per image and the ImageNet training set they were drawn from.
PAPER_NEGATIVES, PAPER_BANK_ROWS = 32000, 1281167


@dataclass
class PIRLAugment(AugmentConfig):
    """The image view (VISSL's PIRL config): crops of 8-100%, colour jitter 0.4 (hue 0.2) always,
    grayscale 0.2, flips."""

    jitter_p: float = param(1.0, ge=0, le=1, help="probability of colour jitter")
    hue: float = param(0.2, ge=0, le=0.5)


@dataclass
class PIRLPatchAugment(PIRLAugment):
    """The jigsaw view before it is cut into tiles: crops of 60-100% (VISSL's ``crop_scale_patches``)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)


@dataclass
class PIRLConfig:
    """PIRL hyper-parameters; defaults are the paper's (128-d features, temperature 0.07, lambda 0.5,
    bank momentum 0.5, 32,000 negatives for ImageNet, scaled to the bank) and jigsaw's tiling."""

    feature_dim: int = param(128, gt=0)
    objective: Literal["nce", "infonce"] = param(
        "nce", help="nce: the paper's binary NCE with Z fixed after the first batch; infonce: cross entropy of the "
                    "positive among the 1 + m candidates (VISSL's loss_type cross_entropy)")
    temperature: float = param(0.07, gt=0)
    loss_lambda: float = param(0.5, ge=0, le=1, help="weight of the jigsaw term; 1 - lambda weighs the image term")
    num_negatives: int = param(0, ge=0, help="bank entries drawn per image; 0: the paper's 32,000 / 1,281,167 "
                                             "of the bank (2.5%)")
    bank_size: int = param(0, ge=0, help="memory-bank rows; 0: the number of training images")
    bank_momentum: float = param(0.5, ge=0, lt=1)
    z_batches: int = param(1, ge=1, help="first batches that estimate Z, which is fixed afterwards")
    tile_size: int | None = param(None, gt=0, help="tile side in pixels; None: from the image size (jigsaw's rule)")
    min_tile_size: int = param(16, gt=0, help="smallest tile side when tile_size is None")
    tile_fraction: float = param(64 / 75, gt=0, le=1, help="tile side / cell side; the rest is gap and jitter")
    augment: PIRLAugment = field(default_factory=PIRLAugment)
    patch_augment: PIRLPatchAugment = field(default_factory=PIRLPatchAugment)


def scaled_negatives(num_negatives: int, bank_rows: int) -> int:
    """``num_negatives``, or when it is 0 the paper's fraction of the bank: ``round(32000 * n /
    1281167)``, at least 1."""
    return num_negatives or max(1, round(PAPER_NEGATIVES * bank_rows / PAPER_BANK_ROWS))


@METHODS.register("pirl")
class PIRL(Method):
    Config = PIRLConfig
    needs_indices = True

    def __init__(self, cfg: PIRLConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        self.tile, cell = tile_geometry(info.image_size, cfg.tile_size, cfg.min_tile_size, cfg.tile_fraction)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)
        self.patch_augment = BatchAugment(cfg.patch_augment, info.mean, info.std, GRID * cell)
        self.image_head = nn.Linear(self.num_features, cfg.feature_dim)  # f
        self.tile_head = nn.Linear(self.num_features, cfg.feature_dim)  # each tile, shared
        self.jigsaw_head = nn.Linear(NUM_TILES * cfg.feature_dim, cfg.feature_dim)  # g, on the concatenation
        size = memory_bank_rows("pirl", cfg.bank_size, info.num_samples)
        self.num_negatives = scaled_negatives(cfg.num_negatives, size)
        self.bank = MemoryBank(size, cfg.feature_dim, cfg.bank_momentum)
        self.nce = NCE(size, cfg.z_batches) if cfg.objective == "nce" else None  # infonce needs no Z

    def encoder_input_sizes(self) -> list[int]:
        return [self.info.image_size, self.tile]  # the image, and each of its jigsaw tiles

    def image_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Augmented images ``[B, C, S, S]`` -> (pooled ``[B, D]``, ``f(v_I)`` ``[B, F]`` normalised)."""
        h = self.encoder(x)  # [B, D]
        return h, F.normalize(full_precision(self.image_head(h)), dim=1)

    def jigsaw_features(self, tiles: Tensor) -> Tensor:
        """Tiles ``[B, 9, C, T, T]`` in their shuffled order -> ``g(v_It)`` ``[B, F]`` normalised."""
        b = tiles.shape[0]
        z = self.tile_head(self.encoder(tiles.flatten(0, 1)))  # [B*9, F]: one forward over every tile
        return F.normalize(full_precision(self.jigsaw_head(z.reshape(b, -1))), dim=1)  # [B, 9F] -> [B, F]

    def random_permutations(self, b: int, device: torch.device) -> Tensor:
        """``[B, 9]`` tile orders, uniform over the 9! permutations."""
        return distributed.draw_local(lambda rows: torch.rand(rows, NUM_TILES, device=device).argsort(1), b)

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """uint8 ``[n, C, S, S]`` -> the image view v_I ``[n, C, S, S]``, the patch view
        ``[n, C, 3c, 3c]`` and its jittered, normalised tiles in a random order as a mosaic
        ``[n, C, 3T, 3T]`` (:func:`~selfsup.methods.jigsaw.assemble_tiles`): the two sides of the loss."""
        patches = self.patch_augment(images)  # [n, C, 3c, 3c]
        perms = self.random_permutations(images.shape[0], images.device)  # [n, 9]
        tiles = shuffle_tiles(jittered_tiles(patches, self.tile), perms)  # [n, 9, C, T, T]
        return [("image view", self.augment(images)), ("patch view", patches), ("jigsaw tiles", assemble_tiles(tiles))]

    def training_step(self, images: Tensor, indices: Tensor | None = None,
                      labels: Tensor | None = None) -> dict[str, Tensor]:
        cfg = self.cfg
        indices = bank_indices("pirl", indices, self.bank)
        b = images.shape[0]
        h, f = self.image_features(self.augment(images))  # [B, D], [B, F]
        perms = self.random_permutations(b, images.device)  # [B, 9], uniform over the 9! orders
        g = self.jigsaw_features(shuffle_tiles(jittered_tiles(self.patch_augment(images), self.tile), perms))
        noise_idx = distributed.draw_local(lambda rows: self.bank.sample((rows, self.num_negatives)), b)  # [B, m]
        with no_autocast(f):  # scores / 0.07 in float32
            scored = [bank_scores(v, self.bank.bank, indices, noise_idx) for v in (g, f)]
            pos = tuple(p / cfg.temperature for p, _ in scored)  # ([B], [B])
            noise = tuple(n / cfg.temperature for _, n in scored)  # ([B, m], [B, m])
            infonce = [cross_entropy_bound(torch.cat([p[:, None], n], 1), torch.zeros_like(indices))
                       for p, n in zip(pos, noise)]  # the positive in column 0 of [B, 1 + m]
            result: dict[str, Tensor] = {}
            if self.nce is None:
                jigsaw, image = (t.loss for t in infonce)
            else:
                result["log_z"] = log_z = self.nce(torch.cat(pos), torch.cat(noise)).log_z  # from both terms
                jigsaw, image = (nce_loss(p, n, log_z, self.bank.size) for p, n in zip(pos, noise))
        self.bank.update(distributed.gather(indices), distributed.gather(f.detach()))  # after scoring
        lam = cfg.loss_lambda
        bounds = [t.mi_bound for t in infonce]
        return {"loss": lam * jigsaw + (1 - lam) * image, "mi_bound": lam * bounds[0] + (1 - lam) * bounds[1],
                "mi_bound_jigsaw": bounds[0], "mi_bound_image": bounds[1], "loss_jigsaw": jigsaw.detach(),
                "loss_image": image.detach(), **result, "features": h.detach()}
