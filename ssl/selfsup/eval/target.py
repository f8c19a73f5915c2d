"""What is evaluated: a frozen encoder (a run, an export, ``random:<timm-name>`` or
``pixels``) with the input size and normalisation it expects, and the device it runs on.

A target that is a path (run, export, checkpoint) is read by the ``load`` function the caller
passes (:data:`EncoderLoader`; the CLI and :mod:`selfsup.pipeline` pass
:func:`selfsup.artifacts.load.load_encoder`): reading a run needs the training code, which
evaluation never imports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from selfsup.config import RunConfig
from selfsup.data import DataInfo
from selfsup.encoders import create_encoder
from selfsup.rundir import RunDir, is_export_dir
from selfsup.safeload import LoadError


@dataclass
class Target:
    """What is evaluated: an encoder (raw pixels: a flatten), with a label for tables."""

    label: str
    kind: str  # "pretrained" | "random" | "pixels"
    info: DataInfo  # input size and normalisation the encoder expects
    encoder: nn.Module


def at_size(target: Target, size: int | None) -> Target:
    """``target`` seeing the images at ``size`` px a side (``eval.image_size``); ``target`` itself for
    None. A trained encoder otherwise sees its training size (its card's ``input_size``) whatever
    ``data.image_size`` is, the random-init and pixel baselines the data's size."""
    if size is None or size == target.info.image_size:
        return target
    return replace(target, info=replace(target.info, image_size=size))


def random_encoder(spec: str, cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """The timm name and kwargs of the ``random:<timm-name>`` target ``spec``: ``random:`` alone is the
    config's encoder; the config's ``encoder.kwargs`` apply when the name is the config's encoder, no
    kwargs otherwise. The one reading of such a spec (the encoder built, its default folder, a transfer
    export's card)."""
    name = spec.removeprefix("random:") or cfg.encoder.name
    return name, dict(cfg.encoder.kwargs) if name == cfg.encoder.name else {}


# path of a run, export or checkpoint -> its encoder in eval mode, with ``selfsup_info`` (a DataInfo) attached
EncoderLoader = Callable[[Path], nn.Module]


def resolve_target(spec: str, cfg: RunConfig, data_info: Callable[[], DataInfo],
                   load: EncoderLoader | None = None) -> Target:
    """Turn a CLI target string into a Target; ``data_info()`` describes the evaluation data
    (called only for pixels and random encoders, which carry no input metadata); ``load`` reads a
    path target (selfsup.artifacts.load.load_encoder).

    Raises:
        LoadError: ``spec`` is neither an existing path, ``pixels`` nor ``random:<timm-name>``, or a
            path given without ``load``.
    """
    if spec == "pixels":
        return Target("raw pixels", "pixels", data_info(), nn.Flatten())
    if spec.startswith("random:"):
        name, kwargs = random_encoder(spec, cfg)
        torch.manual_seed(cfg.seed)
        info = data_info()
        encoder = create_encoder(name, info.in_chans, kwargs, fair_random_init=True)
        return Target(f"random-init {name}", "random", info, encoder)
    path = Path(spec)
    if not path.exists():
        raise LoadError(f"evaluation target {spec!r} is neither a path, 'pixels', nor 'random:<timm-name>'")
    if load is None:
        raise LoadError(f"evaluation target {spec!r} is a path: pass load=selfsup.artifacts.load.load_encoder "
                        f"(selfsup.eval reads no run or export itself)")
    encoder = load(path)
    label = target_label(path, spec)
    return Target(label, "pretrained", encoder.selfsup_info, encoder)


def target_label(path: Path, spec: str) -> str:
    """The table label of a path target: ``run NAME``, ``export NAME``, and for a run's own export
    (``RUN/export``, every export's folder name) ``export of run NAME`` ("export export" said nothing)."""
    if not is_export_dir(path):
        return f"run {path.name or spec}"
    parent = path.resolve().parent
    if path.name == "export" and RunDir(parent).is_run():
        return f"export of run {parent.name}"
    return f"export {path.name or spec}"


def default_device(accelerator: str = "auto") -> str:
    """"cuda" when a GPU is present and the config allows it, else "cpu"."""
    return "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"
