"""Encoders are timm models created with ``num_classes=0``: ``encoder(x)`` -> pooled ``[B, num_features]``."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn



class EncoderError(ValueError):
    """The encoder cannot be built; the message names the problem."""


def check_timm_name(name: str) -> None:
    if name not in timm.list_models():
        import difflib

        near = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close timm names: {', '.join(near)}." if near else ""
        raise EncoderError(f"encoder.name {name!r} is not a timm model.{hint} "
                           f"List them with: python -c \"import timm; print(timm.list_models('*resnet*'))\"")


def create_encoder(name: str, in_chans: int, kwargs: dict[str, Any] | None = None,
                   fair_random_init: bool = False) -> nn.Module:
    """A timm model ``name`` with ``num_classes=0`` and ``in_chans`` input channels.

    ``fair_random_init`` disables timm's zero-initialisation of the last norm layer in
    each residual block (``zero_init_last``), which otherwise makes every block an
    identity at init and a random encoder a very weak, unfair baseline.
    """
    check_timm_name(name)
    kwargs = dict(kwargs or {})
    for key in kwargs:  # each key becomes a timm keyword argument, and one in the export's timm call
        if not (isinstance(key, str) and key.isidentifier()):
            name, sep, value = str(key).partition(":")
            hint = (f": YAML reads `{key}` as one key with no value; write `{name}: {value}` (a space after the "
                    f"colon)") if sep else "; use timm's keyword names"
            raise EncoderError(f"encoder.kwargs key {key!r} is not a Python keyword name{hint}")
    for bad in ("num_classes", "in_chans", "pretrained"):
        if bad in kwargs:
            raise EncoderError(f"encoder.kwargs.{bad} is set by selfsup; remove it from the config")
    if fair_random_init and "zero_init_last" not in kwargs:
        try:
            return timm.create_model(name, num_classes=0, in_chans=in_chans, zero_init_last=False, **kwargs)
        except TypeError:  # this architecture has no zero_init_last
            pass
    try:
        return timm.create_model(name, num_classes=0, in_chans=in_chans, **kwargs)
    except TypeError as err:
        raise EncoderError(f"timm could not build {name!r} with encoder.kwargs={kwargs}: {err}") from None


def pooled_width(encoder: nn.Module) -> int:
    """Width D of ``encoder(x)`` -> ``[B, D]``: timm's ``head_hidden_size`` where the model has one,
    else ``num_features``. They differ when pooling or a pre-logits layer changes the width:
    ``global_pool='catavgmax'`` doubles it (a resnet18 gives 1024 from a 512-channel map), a
    MobileNetV3's ``conv_head`` gives 1024 from 576 channels; ``num_features`` is the channel
    count of the last feature map (timm's convention), not what the pooled encoder returns."""
    width = getattr(encoder, "head_hidden_size", None) or encoder.num_features
    return int(width)


def is_convnet(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "Attention"
                   for m in model.modules())
