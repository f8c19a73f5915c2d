"""Layer-wise features: every stage of a timm encoder from one forward pass, each pooled to a vector.

The field judges pretext tasks (jigsaw, rotation, ...) by linear probes on every stage of the
encoder, because their best features lie before the last stage (Goyal et al. 2019, "Scaling and
Benchmarking Self-Supervised Visual Representation Learning", sec. 4; VISSL's per-layer
benchmarks). This module holds the building blocks :mod:`selfsup.eval.features` and
:mod:`selfsup.eval.evaluate` use for ``eval.layers``:

- **Stages** come from timm's own feature API, with no per-model code: the names are the
  ``module`` entries of the model's ``feature_info`` (``act1``, ``layer1`` ... ``layer4`` for a
  ResNet; ``stages.0`` ... for a ConvNeXt; ``blocks.0`` ... for a ViT), and one call of
  ``forward_intermediates`` gives every requested stage's map in one forward pass (its ``indices``
  are positions in ``feature_info``).
- **The final stage** is always read through the encoder's own head (``forward_head`` on the
  final output of ``forward_intermediates``: global pooling, and the final norm or ``conv_head``
  where the model has them), so its vector is exactly the pooled feature every other evaluator
  uses (``encoder(x)``; VISSL's ``res5avg``) and its row equals ``eval.layers=last``'s.
- **Earlier stages** are pooled by ``eval.layer_pool``:

  - ``grid`` (default, the field's protocol): adaptive average pooling of the ``[C, H, W]`` map
    (the bins of ``F.adaptive_avg_pool2d``, computed as two small matmuls) to a ``g x g`` grid with ``g = round(sqrt(9216 / C))``, capped at the map's own height and width
    (a finer grid would only repeat values), flattened position-major to ``g * g * C`` values (the
    order a ``channels_last`` map has in memory; see :func:`pool_map`).
    Goyal et al. 2019 resize every stage "via average pooling" to about 9k dims so that probes on
    different stages have comparable capacity; VISSL's ResNet-50 settings
    (``LINEAR_EVAL_FEAT_POOL_OPS_MAP``: conv1 9216, res2 9216, res3 8192, res4 9216, res5 8192
    dims) are exactly what this rule gives for 64, 256, 512, 1024 and 2048 channels at 224 px.
    On small images the cap makes early stages smaller (a 7x7 map gives at most 49 C values).
  - ``avg``: global average pooling to ``C`` values: kept as an option because it is far
    cheaper (C instead of ~9k dims: less cache, faster kNN and probes on large data), at the
    cost of the spatial layout that early stages' features rely on.

- **ViTs**: the maps are the patch tokens of each block as ``forward_intermediates`` gives them
  (``[B, D, H/p, W/p]``, class and register tokens left out, no final norm), pooled like a
  convnet's map; the final stage is the encoder's own output (class token or token average,
  after the final norm, as the model is configured).

Errors are :class:`selfsup.config.ConfigError` on one line: a model without timm's feature API,
an unknown stage name (listing the valid ones), a model whose intermediates disagree with its
``feature_info``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError

TARGET_DIM = 9216  # Goyal et al. 2019 / VISSL: about 9k values per stage (96 x 96)
POOLS = ("grid", "avg")
# cache tag of grid-pooled rows: "hwc" names the position-major order (rows cached before it, tagged
# "grid9216", held the same values channel-major and are never mixed with these)
GRID_TAG = "gridhwc%d" % TARGET_DIM


@dataclass(frozen=True)
class Stage:
    """One stage of an encoder, as timm's ``feature_info`` describes it."""

    name: str  # feature_info module name, e.g. "layer3", "stages.1", "blocks.5"
    index: int  # position in feature_info (= forward_intermediates index)
    channels: int  # feature_info num_chs
    reduction: int  # feature_info reduction (input side / map side)
    last: bool  # the final stage: read through the encoder's own head


def encoder_stages(encoder: nn.Module, label: str) -> list[Stage]:
    """The stages of a timm encoder, shallowest first, from its ``feature_info``.

    Raises ConfigError (one line, naming ``label``) when the model lacks timm's feature API
    (``feature_info`` and ``forward_intermediates``)."""
    info = getattr(encoder, "feature_info", None)
    ok = isinstance(info, (list, tuple)) and len(info) > 0 and all(
        isinstance(f, dict) and {"module", "num_chs", "reduction"} <= f.keys() for f in info)
    if not ok or not callable(getattr(encoder, "forward_intermediates", None)):
        raise ConfigError(f"eval.layers: {label} ({type(encoder).__name__}) has no timm feature API "
                          f"(feature_info and forward_intermediates), so its stages cannot be read; "
                          f"set eval.layers=last or evaluate a timm model that has them")
    n = len(info)
    return [Stage(str(f["module"]), i, int(f["num_chs"]), int(f["reduction"]), i == n - 1)
            for i, f in enumerate(info)]


def select_stages(layers: str | Sequence[str], stages: list[Stage], label: str) -> list[Stage]:
    """The stages ``eval.layers`` asks for, shallowest first: ``last`` (the final stage),
    ``all``, a stage name or a list of them. Raises ConfigError (one line, listing the valid
    names) for a name the encoder does not have."""
    if layers == "last":
        return [stages[-1]]
    if layers == "all":
        return list(stages)
    wanted = [layers] if isinstance(layers, str) else list(layers)
    by_name = {s.name: s for s in stages}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise ConfigError(f"eval.layers: {label} has no stage named {', '.join(map(repr, unknown))}; its stages "
                          f"(timm feature_info) are {', '.join(by_name)} (or use 'all' or 'last')")
    return [s for s in stages if s.name in set(wanted)]


def grid_side(channels: int, height: int, width: int, target: int = TARGET_DIM) -> tuple[int, int]:
    """The ``grid`` pooling's output grid for a ``[channels, height, width]`` map:
    ``g = round(sqrt(target / channels))`` (at least 1), capped at ``height`` and ``width``."""
    g = max(1, math.floor(math.sqrt(target / channels) + 0.5))
    return min(g, height), min(g, width)


def pool_map(fmap: Tensor, pool: str, out: Tensor | None = None) -> Tensor:
    """A stage's map ``[B, C, H, W]`` pooled to vectors ``[B, D]``: ``grid`` -> ``D = gh * gw * C``
    (:func:`grid_side`), flattened position-major (``[B, gh, gw, C]`` order: a grid cell's C channels
    side by side); ``avg`` -> ``D = C``. ``out``: a ``[B, D]`` tensor (a slice of the rows being
    filled) that receives the vectors and is returned; a channels_last map on its device and dtype is
    pooled straight into it, with no intermediate grid (one fresh 19 MB allocation and copy less per
    512-image batch of a 9k-dim stage).

    Position-major, not the channel-major order of ``reshape`` on ``[B, C, gh, gw]``: the vector holds
    the same values in another fixed order, which no probe or kNN can tell apart (standardisation,
    dot products and distances do not depend on the order of dimensions), and it is the order a
    ``channels_last`` map (a convnet extracted in that layout, a ViT's patch tokens) already has in
    memory, so the pooled grid is handed on without a copy. A ``channels_last`` map is pooled by
    adaptive average pooling, which oneDNN vectorises over channels in that layout; a contiguous one
    by two small matmuls with the same bins (:func:`bin_matrix`; adaptive pooling of a channel-major
    map is several times slower on CPUs)."""
    if pool == "avg":
        vectors = fmap.mean((2, 3))  # [B, C]
        return vectors if out is None else out.copy_(vectors)
    if pool != "grid":
        raise ConfigError(f"eval.layer_pool must be one of {', '.join(POOLS)}, got {pool!r}")
    b, c, h, w = fmap.shape
    gh, gw = grid_side(c, h, w)
    channels_last = fmap.is_contiguous(memory_format=torch.channels_last) and not fmap.is_contiguous()
    if (gh, gw) == (h, w):
        grid = fmap  # [B, C, H, W]: the grid is the map itself
    elif channels_last:
        if out is not None and out.device == fmap.device and out.dtype == fmap.dtype and out.is_contiguous():
            torch.ops.aten.adaptive_avg_pool2d.out(fmap, [gh, gw], out=out.view(b, gh, gw, c).permute(0, 3, 1, 2))
            return out  # [B, gh * gw * C], written in place
        grid = F.adaptive_avg_pool2d(fmap, (gh, gw))  # [B, C, gh, gw], stored [B, gh, gw, C]
    else:
        ph, pw = (bin_matrix(h, gh).to(fmap), bin_matrix(w, gw).to(fmap))  # [gh, H], [gw, W]
        grid = ph @ fmap @ pw.T  # [B, C, gh, gw]
    vectors = grid.permute(0, 2, 3, 1).reshape(b, -1)  # [B, gh * gw * C]; a view when stored [B, gh, gw, C]
    return vectors if out is None else out.copy_(vectors)


@functools.lru_cache(maxsize=64)
def bin_matrix(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]`` averaging weights of adaptive average pooling along one axis (bin ``i``
    covers ``floor(i * n_in / n_out)`` to ``ceil((i + 1) * n_in / n_out)``, as
    ``F.adaptive_avg_pool2d``): pooling as two small matmuls, several times faster on CPUs than
    adaptive pooling's overlapping windows."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def stage_tag(stage: Stage, pool: str) -> str:
    """The cache-entry suffix of a stage's features: the stage and how it was pooled
    (``layer3-gridhwc9216``, ``layer3-avg``; the final stage is the encoder's output: ``head``)."""
    how = "head" if stage.last else (GRID_TAG if pool == "grid" else pool)
    return f"{stage.name}-{how}"


def check_maps(maps: Sequence[Tensor], stages: Sequence[Stage], label: str) -> None:
    """ConfigError when ``forward_intermediates`` returned other maps than ``feature_info`` describes
    (count or channels): the stages would be mislabelled."""
    if len(maps) != len(stages) or any(m.ndim != 4 or m.shape[1] != s.channels for m, s in zip(maps, stages)):
        got = [list(m.shape) for m in maps]
        want = [f"{s.name}: {s.channels} channels" for s in stages]
        raise ConfigError(f"eval.layers: {label}'s forward_intermediates gave maps {got}, but its feature_info "
                          f"describes {want}; set eval.layers=last for this model")


def stage_vectors(encoder: nn.Module, x: Tensor, stages: Sequence[Stage], pool: str,
                  label: str = "the encoder", into: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Pooled vectors ``{stage name: [B, D_stage]}`` of the images ``x`` ``[B, C, H, W]`` for
    ``stages`` (from :func:`encoder_stages`), from ONE forward pass (``forward_intermediates``):
    the final stage through the encoder's head (equal to ``encoder(x)``), the others by
    :func:`pool_map`. Stops after the deepest stage asked for when the final one is not asked.
    ``into``: ``{stage name: [B, D_stage]}`` tensors the earlier stages' vectors are pooled into
    (:meth:`selfsup.eval.features.StageRows.slots`); the returned vectors are then those tensors."""
    inner = [s for s in stages if not s.last]
    last = next((s for s in stages if s.last), None)
    if not inner and last is not None:
        return {last.name: encoder(x)}  # [B, num_features]: nothing but the encoder's own output
    want_last = last is not None
    kwargs: dict[str, Any] = {"indices": [s.index for s in inner]}
    if not want_last:
        kwargs.update(intermediates_only=True, stop_early=True)
    out = encoder.forward_intermediates(x, **kwargs)
    final, maps = (out if want_last else (None, out))
    check_maps(maps, inner, label)
    vectors = {s.name: pool_map(m, pool, (into or {}).get(s.name)) for s, m in zip(inner, maps)}  # each [B, D_s]
    if last is not None:
        vectors[last.name] = encoder.forward_head(final)  # [B, num_features], as encoder(x)
    return vectors
