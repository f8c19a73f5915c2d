"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations
by Solving Jigsaw Puzzles"): the image is cut into a 3x3 grid of tiles with random gaps,
each tile is normalised on its own, the tiles are shuffled by one permutation from a
fixed set of maximally distant permutations, the shared encoder embeds every tile (one
batched forward over B*9 tiles), and a head on the concatenated embeddings classifies
which permutation was used.

Geometry. The paper crops 225x225 pixels, splits them into 75x75 cells and takes a 64x64
tile at a random position inside each cell (gaps and jitter, so that edges and lines do
not give the answer away). Here the tile side is ``tile_size`` or, by default, the
paper's 64/75 of a third of the image side, but at least ``min_tile_size`` (16 px) so
that a deep encoder still sees something; the cell side is ``ceil(tile / tile_fraction)``
and the augmented view is resized to 3 cells. A 224 px image gives the paper's 64 px
tiles in 75 px cells; 28 px (Fashion-MNIST) and 32 px (CIFAR) images give 16 px tiles in
19 px cells (a 57 px view). A ViT encoder sees tiles in training and whole images in
evaluation, so it needs ``dynamic_img_size: true`` in ``encoder.kwargs``.

Permutation set. Algorithm 1 of the paper picks, greedily, the permutation with the
largest summed Hamming distance to those already chosen. That keeps the average distance
high, but its many ties leave the *minimum* distance as low as in a random set (2, a
single swap). We keep the greedy selection and score each candidate by its minimum
distance to the chosen set first and by the paper's summed distance second; for 100
permutations this gives minimum distance 6 (random sets: 2-3) at the paper's average
(8.08). The first permutation and the order among exact ties come from ``permutation_seed``;
the set is a registered buffer, so it is saved in every checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.config import param
from selfsup.distributed import draw_local
from selfsup.data import AugmentConfig, DataInfo
from selfsup.methods._pretext import TransformClassification
from selfsup.encoders import pooled_width
from selfsup.methods.base import METHODS

GRID = 3
NUM_TILES = GRID * GRID


# --------------------------------------------------------------------------- permutations


@functools.lru_cache(maxsize=1)
def _all_permutations() -> np.ndarray:
    """All 9! permutations of the tiles, lexicographic, ``[362880, 9]`` int8."""
    n = math.factorial(NUM_TILES)
    flat = itertools.chain.from_iterable(itertools.permutations(range(NUM_TILES)))
    return np.fromiter(flat, dtype=np.int8, count=n * NUM_TILES).reshape(n, NUM_TILES)


@functools.lru_cache(maxsize=8)
def _max_hamming(num: int, seed: int) -> np.ndarray:
    perms = _all_permutations()
    rng = np.random.default_rng(seed)
    cand = np.ascontiguousarray(perms[rng.permutation(len(perms))].T)  # [9, M], seeded order breaks ties
    m = cand.shape[1]
    match = np.zeros(m, np.int8)  # positions where a candidate agrees with the last chosen
    eq = np.zeros(m, np.bool_)
    max_match = np.zeros(m, np.int8)  # 9 - minimum Hamming distance to the chosen set
    sum_match = np.zeros(m, np.int32)  # 9 * len(chosen) - summed Hamming distance
    score = np.zeros(m, np.int32)
    chosen = [0]  # the seeded order makes the first pick uniformly random
    for _ in range(num - 1):
        last = cand[:, chosen[-1]]
        match.fill(0)
        for k in range(NUM_TILES):
            np.equal(cand[k], last[k], out=eq)
            match += eq
        np.maximum(max_match, match, out=max_match)
        sum_match += match
        # Chosen ones have max_match 9 and are never picked again.
        np.multiply(max_match, np.int32(1 << 20), out=score, dtype=np.int32)
        score += sum_match
        chosen.append(int(score.argmin()))
    return cand[:, chosen].T.astype(np.int64)


def max_hamming_permutations(num: int, seed: int = 0) -> Tensor:
    """``num`` permutations of the 9 tiles, ``[num, 9]`` long, chosen greedily so that
    each new one is as far (Hamming distance) as possible from those already chosen:
    largest minimum distance first, largest summed distance (the paper's score) second.

    Deterministic in ``(num, seed)``; about 0.1 s for 100 and 1 s for 1000 permutations.
    """
    if not 2 <= num <= math.factorial(NUM_TILES):
        raise ValueError(f"num must be in [2, 9!], got {num}")
    return torch.from_numpy(_max_hamming(num, seed).copy())


def hamming_distances(perms: Tensor) -> Tensor:
    """Pairwise Hamming distances ``[P, P]`` of permutations ``[P, 9]``."""
    return (perms[:, None, :] != perms[None, :, :]).sum(-1)


def inverse_permutations(perms: Tensor) -> Tensor:
    """``[P, 9]`` -> ``[P, 9]`` with ``inv[perm] = arange(9)`` for each row."""
    return perms.argsort(-1)


# --------------------------------------------------------------------------- tiles


def tile_geometry(image_size: int, tile_size: int | None = None, min_tile_size: int = 16,
                  tile_fraction: float = 64 / 75) -> tuple[int, int]:
    """(tile side, cell side) in pixels; the jigsaw view is ``3 * cell`` pixels wide.

    ``tile_size`` None picks ``tile_fraction`` of a third of ``image_size``, at least
    ``min_tile_size``. Each tile sits at a random offset in ``[0, cell - tile]`` of its cell.
    """
    tile = tile_size or max(min_tile_size, round(image_size / GRID * tile_fraction))
    cell = max(tile, math.ceil(tile / tile_fraction - 1e-9))
    return tile, cell


def random_offsets(batch: int, cell: int, tile: int, device: torch.device | None = None) -> Tensor:
    """Independent (row, col) offsets of each tile inside its cell, ``[B, 9, 2]`` long."""
    return draw_local(lambda rows: torch.randint(0, cell - tile + 1, (rows, NUM_TILES, 2), device=device), batch)


def cut_tiles(x: Tensor, tile: int, offsets: Tensor) -> Tensor:
    """``x`` [B, C, 3c, 3c] -> tiles ``[B, 9, C, tile, tile]`` in row-major grid order;
    tile k starts at ``(k // 3 * c, k % 3 * c) + offsets[:, k]``."""
    b, c, h, w = x.shape
    cell = h // GRID
    if h != w or h % GRID or offsets.shape != (b, NUM_TILES, 2) or int(offsets.max()) > cell - tile:
        raise ValueError(f"cannot cut {tile}px tiles from {tuple(x.shape)} with offsets {tuple(offsets.shape)}")
    k = torch.arange(NUM_TILES, device=x.device)
    top = (k // GRID * cell)[None] + offsets[..., 0]  # [B, 9]
    left = (k % GRID * cell)[None] + offsets[..., 1]  # [B, 9]
    r = torch.arange(tile, device=x.device)
    rows = (top[..., None] + r)[..., :, None]  # [B, 9, T, 1]
    cols = (left[..., None] + r)[..., None, :]  # [B, 9, 1, T]
    bi = torch.arange(b, device=x.device)[:, None, None, None]  # [B, 1, 1, 1]
    tiles = x.permute(0, 2, 3, 1)[bi, rows, cols]  # [B, 9, T, T, C]
    return tiles.permute(0, 1, 4, 2, 3).contiguous()  # [B, 9, C, T, T]


def assemble_tiles(tiles: Tensor, grid: int = GRID) -> Tensor:
    """Tiles ``[B, grid*grid, C, T, T]`` in row-major grid order -> image ``[B, C, grid*T, grid*T]`` (no gaps)."""
    b, _, c, t, _ = tiles.shape
    cells = tiles.view(b, grid, grid, c, t, t)  # [B, g, g, C, T, T]
    return cells.permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * t, grid * t)


def normalise_tiles(tiles: Tensor, eps: float = 1e-4) -> Tensor:
    """Each tile ``[..., C, T, T]`` to zero mean and unit standard deviation on its own,
    so that low-level statistics shared by neighbouring tiles do not give the answer."""
    mean = tiles.mean(dim=(-3, -2, -1), keepdim=True)
    var = tiles.var(dim=(-3, -2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) / (var + eps).sqrt()


def shuffle_tiles(tiles: Tensor, perms: Tensor) -> Tensor:
    """Position i of sample b shows tile ``perms[b, i]``: ``[B, 9, ...]``, ``[B, 9]`` -> ``[B, 9, ...]``.

    ``shuffle_tiles(shuffle_tiles(t, p), inverse_permutations(p))`` is ``t`` again.
    """
    idx = perms.view(*perms.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return torch.gather(tiles, 1, idx)


def jittered_tiles(x: Tensor, tile: int) -> Tensor:
    """Views ``[B, C, 3c, 3c]`` -> tiles ``[B, 9, C, T, T]`` in row-major grid order: a ``tile`` px
    tile at a random offset in each cell, normalised on its own."""
    offsets = random_offsets(x.shape[0], x.shape[-1] // GRID, tile, x.device)  # [B, 9, 2]
    return normalise_tiles(cut_tiles(x, tile, offsets))


# --------------------------------------------------------------------------- method


def jigsaw_augment() -> AugmentConfig:
    """Crops and flips; random grayscale stands in for the paper's defences against
    chromatic aberration (it also trained on grayscale images and jittered colour channels)."""
    return AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.3)


@dataclass
class JigsawConfig:
    """Jigsaw hyper-parameters; the paper's defaults (Noroozi & Favaro 2016): 3x3 tiles
    of 64 px in 75 px cells, 100 permutations of maximal Hamming distance, the tiles'
    fc6 embeddings concatenated and classified through a 4096-unit fc7."""

    num_permutations: int = param(100, ge=2, le=1000, help="size of the permutation set (classes)")
    permutation_seed: int = param(0, help="seed of the deterministic permutation-set selection")
    tile_size: int | None = param(None, gt=0, help="tile side in pixels; None: from the image size")
    min_tile_size: int = param(16, gt=0, help="smallest tile side when tile_size is None")
    tile_fraction: float = param(64 / 75, gt=0, le=1, help="tile side / cell side; the rest is gap and jitter")
    head_hidden_dim: int = param(4096, gt=0)
    head_layers: int = param(2, ge=1)
    augment: AugmentConfig = field(default_factory=jigsaw_augment)


@METHODS.register("jigsaw")
class Jigsaw(TransformClassification):
    Config = JigsawConfig
    label_name = "jigsaw"
    permutations: Tensor

    def __init__(self, cfg: JigsawConfig, encoder: nn.Module, info: DataInfo) -> None:
        tile, cell = tile_geometry(info.image_size, cfg.tile_size, cfg.min_tile_size, cfg.tile_fraction)
        super().__init__(cfg, encoder, info, view_size=GRID * cell, head_in_dim=NUM_TILES * pooled_width(encoder),
                         num_labels=cfg.num_permutations)
        self.tile, self.cell = tile, cell
        self.register_buffer("permutations", max_hamming_permutations(cfg.num_permutations, cfg.permutation_seed))

    def encoder_input_sizes(self) -> list[int]:
        return [self.tile]  # the encoder embeds each tile, never the whole view

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Augmented views ``[B, C, 3c, 3c]`` -> (shuffled tiles ``[B, 9, C, T, T]``, labels ``[B]``)."""
        tiles = jittered_tiles(x, self.tile)  # [B, 9, C, T, T]
        labels = draw_local(lambda rows: torch.randint(len(self.permutations), (rows,), device=x.device),
                            x.shape[0])  # [B]
        return shuffle_tiles(tiles, self.permutations[labels]), labels

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """uint8 ``[n, C, S, S]`` -> the augmented view ``[n, C, 3c, 3c]`` and its shuffled tiles
        (:meth:`transform`: jittered, normalised each on its own) laid out in their shuffled
        position order as a mosaic ``[n, C, 3T, 3T]`` (:func:`assemble_tiles`)."""
        x = self.augment(images)  # [n, C, 3c, 3c]
        tiles, _ = self.transform(x)  # [n, 9, C, T, T] in shuffled order
        return [("augmented", x), ("jigsaw tiles", assemble_tiles(tiles))]

    def embed(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        b = inputs.shape[0]
        h = self.encoder(inputs.flatten(0, 1))  # [B*9, D]: one forward over every tile
        h = h.view(b, NUM_TILES, -1)  # [B, 9, D] in shuffled position order
        return h.flatten(1), h.mean(1)  # [B, 9D] for the head, [B, D] pooled over the tiles
