"""The torchvision conversion: timm ResNets whose parameters have the same names and shapes in
``torchvision.models`` (checked against the timm encoder before the file is written)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from selfsup.artifacts.interop import CHECK_BATCH, compare_features
from selfsup.fileio import save_tensors
from selfsup.safeload import ExportError
from selfsup.statedict import compare_state, describe_mismatch

# timm and torchvision name these identically and build them alike (ResNet v1.5: stride on the 3x3
# conv; stem conv 7x7/2 + max pool): the parameters have the same names and shapes in both libraries.
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                       "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
_BASIC_BLOCK = ("resnet18", "resnet34")
_EVAL_NEUTRAL = ("drop_block_rate", "drop_path_rate", "drop_rate", "zero_init_last")  # change training only
_DILATION = {32: None, 16: [False, False, True], 8: [False, True, True]}  # output_stride -> torchvision's arg


def torchvision_problem(card: Mapping[str, Any]) -> str | None:
    """Why the card's encoder has no torchvision counterpart, or None when it has one."""
    arch = card["architecture"]
    if arch not in TORCHVISION_RESNETS:
        return (f"torchvision has no model matching timm's {arch!r}; the torchvision export covers timm's "
                f"{', '.join(TORCHVISION_RESNETS)}, whose parameters have the same names and shapes in both libraries")
    kwargs = card.get("kwargs") or {}
    other = sorted(k for k in kwargs if k not in (*_EVAL_NEUTRAL, "output_stride", "global_pool")
                   or (k == "global_pool" and kwargs[k] != "avg"))
    if other:
        return (f"the timm kwargs {', '.join(f'{k}={kwargs[k]!r}' for k in other)} change the network in ways "
                f"torchvision's ResNet cannot express (its stem, stage widths, normalisation, activation and "
                f"pooling are fixed); only output_stride and {', '.join(_EVAL_NEUTRAL)} carry over. The "
                f"torchscript and onnx exports keep the timm architecture")
    stride = kwargs.get("output_stride", 32)
    if stride not in _DILATION:
        return f"output_stride={stride!r}: timm and torchvision ResNets agree only on 8, 16 and 32"
    if stride != 32 and arch in _BASIC_BLOCK:
        return (f"output_stride={stride} dilates {arch}'s BasicBlocks, which torchvision's BasicBlock does not "
                f"support (its replace_stride_with_dilation is for Bottleneck ResNets: resnet50 and larger)")
    return None


def _dilation(card: Mapping[str, Any]) -> list[bool] | None:
    """torchvision's ``replace_stride_with_dilation`` for the card's ``output_stride``."""
    return _DILATION[(card.get("kwargs") or {}).get("output_stride", 32)]


def torchvision_call(card: Mapping[str, Any]) -> str:
    """The torchvision constructor call that builds the card's encoder (before fc and conv1 are adapted)."""
    dilation = _dilation(card)
    return f"torchvision.models.{card['architecture']}(" + (
        f"replace_stride_with_dilation={dilation})" if dilation else ")")


def torchvision_model(card: Mapping[str, Any]) -> nn.Module:
    """torchvision's counterpart of the card's encoder, untrained: ``fc`` is an Identity (the output is
    the pooled features ``[B, D]``) and ``conv1`` takes ``in_chans`` channels (torchvision's takes 3)."""
    build = getattr(torchvision.models, card["architecture"])
    model = build(weights=None, replace_stride_with_dilation=_dilation(card))
    model.fc = nn.Identity()
    if card["in_chans"] != model.conv1.in_channels:
        c = model.conv1
        model.conv1 = nn.Conv2d(card["in_chans"], c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    return model


def torchvision_from_encoder(encoder: nn.Module, card: Mapping[str, Any]) -> nn.Module:
    """The torchvision ResNet (eval mode) holding ``encoder``'s weights, loaded strictly."""
    problem = torchvision_problem(card)
    if problem:
        raise ExportError(f"cannot convert {card['architecture']!r} to torchvision: {problem}")
    with torch.device("meta"):  # no time spent initialising weights that are replaced
        model = torchvision_model(card)
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}  # the same names in both libraries
    mismatch = compare_state(model.state_dict(), state)
    if mismatch:
        raise ExportError(f"timm's and torchvision's {card['architecture']!r} do not line up with these library "
                          f"versions: {describe_mismatch(mismatch)}")
    model.load_state_dict(state, strict=True, assign=True)
    if hasattr(encoder, "selfsup_info"):
        model.selfsup_info = encoder.selfsup_info
    return model.eval()


def write_torchvision(encoder: nn.Module, card: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The torchvision-keyed state dict (no ``fc``) at ``path``; returns the card's record of it."""
    model = torchvision_from_encoder(encoder, card)
    record = compare_features("torchvision", encoder, model, card)
    call = torchvision_call(card)
    save_tensors(model.state_dict(), path, {"format": "pt", "torchvision_call": call,
                                            "in_chans": str(card["in_chans"])})
    return {"file": path.name, "load": call, "fc": "replace by torch.nn.Identity() (no classifier)",
            "conv1": "torchvision's (3 channels)" if card["in_chans"] == 3 else
            f"replace by torch.nn.Conv2d({card['in_chans']}, 64, 7, 2, 3, bias=False)",
            "checked_with": f"{call} on a batch of {CHECK_BATCH}", **record}
