"""Projection and prediction heads: small MLP builders."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, *, last_bn: bool = False,
        batch_norm: bool = True, last_bias: bool | None = None) -> nn.Sequential:
    """``num_layers`` linear layers with BatchNorm + ReLU between them: ``[B, in_dim]`` ->
    ``[B, out_dim]``.

    SimCLR's projection head is ``mlp(d, 2048, 128, 2)`` (Chen et al. 2020); SimCLR v2
    and MoCo v3 end in a BatchNorm without affine parameters (``last_bn``). MoCo v2's head
    has no BatchNorm (``batch_norm=False``: linear, ReLU, linear). The last linear layer
    has a bias unless a BatchNorm follows it; ``last_bias`` sets it explicitly (MoCo v3's
    reference code has no bias in any layer, ``last_bias=False``). A hidden linear layer
    has a bias only without BatchNorm.

    Raises:
        ValueError: when ``num_layers`` < 1.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        if batch_norm:
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim)]
        else:
            layers.append(nn.Linear(dim, hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=(not last_bn) if last_bias is None else last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
