"""One entry point for every kind of path: :func:`load_encoder` (export directory, run directory or
checkpoint), :func:`export_encoder` (a run -> an export directory), :func:`to_torchvision`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from selfsup.artifacts.card import CARD, WEIGHTS, make_card
from selfsup.artifacts.exportdir import load_export, loose_safetensors, parse_formats, write_export
from selfsup.artifacts.torchvision import torchvision_from_encoder
from selfsup.rundir import CHECKPOINT_DIR, RunDir, bad_file_count, is_export_dir
from selfsup.safeload import WHAT_LOADS, LoadError, describe_directory, describe_file


def run_encoder_and_card(path: str | Path, results: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder (eval mode, ``selfsup_info`` attached) of a run directory or checkpoint, and the card its
    export gets.

    Raises:
        LoadError: see :func:`selfsup.train.checkpoint.read_run`.
    """
    # lazy: only a run or checkpoint needs train/ (and Lightning); loading an export never imports it
    from selfsup.train.checkpoint import run_encoder

    encoder, module, ckpt = run_encoder(path)
    root = run_root(path)
    return encoder, make_card(module.cfg, module.info, encoder, results, ckpt.get("global_step"),
                              run_training_time(path, ckpt.get("global_step")),
                              bad_file_count(root) if root is not None else 0)


def run_root(path: str | Path) -> Path | None:
    """The run directory ``path`` is (a directory) or whose ``checkpoints/`` holds it (a checkpoint file);
    None for a checkpoint elsewhere."""
    path = Path(path)
    return path if path.is_dir() else path.parent.parent if path.parent.name == CHECKPOINT_DIR else None


def run_training_time(path: str | Path, global_step: int | None) -> dict[str, Any] | None:
    """The ``training_time.json`` record of the run that ``path`` (a run directory, or a checkpoint in its
    ``checkpoints/``) belongs to, when it describes these weights: its step count equals the checkpoint's
    ``global_step`` (an earlier checkpoint of the run did not take the run's whole time). None otherwise."""
    root = run_root(path)
    record = RunDir(root).training_time if root is not None else None
    if record is None or not record.is_file():
        return None
    try:
        timing = json.loads(record.read_text())
    except (OSError, ValueError):
        return None  # the card is written without it; the weights are what matters
    return timing if isinstance(timing, dict) and timing.get("steps") == global_step else None


def load_encoder_and_card(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_encoder`, plus the encoder's card (for a run, the card an export would write)."""
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{str(path)!r} does not exist; pass {WHAT_LOADS}")
    if path.is_file() and path.name in (WEIGHTS, CARD) and is_export_dir(path.parent):
        path = path.parent  # a file of an export directory stands for the directory
    elif path.is_file() and path.name == CARD:
        raise LoadError(describe_directory(path.parent))  # a card without its weights
    if is_export_dir(path):
        return load_export(path)
    if path.is_file() and describe_file(path) == "a safetensors file":
        raise LoadError(loose_safetensors(path))
    return run_encoder_and_card(path)


def load_encoder(path: str | Path) -> nn.Module:
    """An encoder in eval mode from an export directory, a run directory or a checkpoint.

    The result is the timm model itself; ``selfsup_info`` (a DataInfo with input size and
    normalisation) is attached to it. Anything else raises a :class:`LoadError` that says what
    was found (a PNG, a text file, weights for another architecture or channel count, ...) and
    what to pass instead.
    """
    return load_encoder_and_card(path)[0]


def export_encoder(source: str | Path, out_dir: str | Path, results: dict[str, Any] | None = None,
                   formats: Iterable[str] = ("safetensors",)) -> Path:
    """Write the export directory of run ``source`` (a run directory or checkpoint).

    Always ``model.safetensors``, ``config.json`` and ``README.md``; ``formats`` adds interop files
    (see :func:`export_formats` and :func:`write_export`).
    """
    wanted = parse_formats(formats)  # an unknown format fails before the run is loaded
    encoder, card = run_encoder_and_card(source, results)
    return write_export(encoder, card, out_dir, wanted)


def to_torchvision(path: str | Path) -> nn.Module:
    """A ``torchvision.models`` ResNet holding the encoder at ``path`` (export directory, run directory or
    checkpoint), in eval mode: ``fc`` is an Identity, so it returns the same features ``[B, D]`` as the timm
    encoder; for ``in_chans != 3``, ``conv1`` is rebuilt for that many channels. Only timm ResNets with
    torchvision's layout convert (see :func:`torchvision_problem`); others raise an ExportError saying why."""
    encoder, card = load_encoder_and_card(path)
    return torchvision_from_encoder(encoder, card)
