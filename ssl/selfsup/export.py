"""Export a trained encoder as safetensors + a JSON card, and load encoders back.

The export directory holds ``model.safetensors`` (the timm model's own state dict,
so timm loads it as a pretrained file) and ``config.json`` (architecture, kwargs,
input size, normalisation, how it was trained and how it scored). Nothing is ever
unpickled: weights come from safetensors, Lightning checkpoints are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from selfsup.data import DataInfo
from selfsup.encoders import create_encoder
from selfsup.fileio import save_tensors, write_json

WEIGHTS = "model.safetensors"
CARD = "config.json"


class LoadError(ValueError):
    """The path holds nothing selfsup can load; the message says what was found."""


def find_checkpoint(path: str | Path) -> Path:
    """A run directory's last checkpoint, or the checkpoint file itself."""
    path = Path(path)
    if path.is_file():
        return path
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise LoadError(f"{str(path)!r} is not a selfsup run directory (no checkpoints/last.ckpt) "
                    f"nor an export directory (no {CARD} and {WEIGHTS})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint without unpickling code (``weights_only=True``)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError for non-zip files, ...
        raise LoadError(f"cannot read {str(path)!r} as a selfsup checkpoint: {type(err).__name__}: "
                        f"{str(err).splitlines()[0]}. selfsup only loads checkpoints that need no "
                        f"code to unpickle.") from None


def load_run(path: str | Path):
    """The PretrainModule of a run directory or checkpoint, in eval mode."""
    from selfsup.train.module import module_from_checkpoint

    ckpt_path = find_checkpoint(path)
    try:
        module = module_from_checkpoint(load_checkpoint(ckpt_path))
    except (KeyError, ValueError, RuntimeError) as err:
        if isinstance(err, LoadError):
            raise
        raise LoadError(f"cannot rebuild the run from {str(ckpt_path)!r}: {err}") from None
    return module.eval()


def is_export_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CARD).is_file() and (path / WEIGHTS).is_file()


def export_encoder(source: str | Path, out_dir: str | Path, results: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` for the encoder of run ``source``."""
    from selfsup import __version__
    from selfsup.config import to_dict

    module = load_run(source)
    cfg, info = module.cfg, module.info
    encoder = module.method.exported_encoder()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_tensors(state, out / WEIGHTS, {"format": "pt"})
    cfg_d = to_dict(cfg)
    kwargs = dict(cfg.encoder.kwargs)
    card = {
        "architecture": cfg.encoder.name,
        "kwargs": kwargs,
        "in_chans": info.in_chans,
        "num_features": encoder.num_features,
        "input_size": [info.in_chans, info.image_size, info.image_size],
        "mean": list(info.mean),
        "std": list(info.std),
        "num_classes_seen": info.num_classes,
        "method": cfg_d["method"]["name"],
        "method_config": cfg_d["method"],
        "training_config": cfg_d,
        "selfsup_version": __version__,
        "results": results or {},
        "load_with_timm": (
            f"timm.create_model({cfg.encoder.name!r}, pretrained=True, num_classes=0, "
            f"in_chans={info.in_chans}, pretrained_cfg_overlay=dict(file='{WEIGHTS}')"
            + "".join(f", {k}={v!r}" for k, v in kwargs.items()) + ")"
        ),
    }
    write_json(card, out / CARD)
    return out


def results_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the export card keeps of evaluation rows: kNN and linear results per target."""
    return {r["label"]: {k: r[k] for k in ("knn", "linear") if k in r} for r in rows}


def read_card(path: str | Path) -> dict[str, Any]:
    card_path = Path(path) / CARD
    try:
        return json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LoadError(f"cannot read the export card {str(card_path)!r}: {err}") from None


def card_info(card: dict[str, Any]) -> DataInfo:
    return DataInfo(card["in_chans"], card["input_size"][-1], card.get("num_classes_seen", 0),
                    tuple(card["mean"]), tuple(card["std"]))


def load_encoder(path: str | Path) -> nn.Module:
    """An encoder in eval mode from an export directory, a run directory or a checkpoint.

    The result is the timm model itself; ``selfsup_info`` (a DataInfo with input size and
    normalisation) is attached to it.
    """
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{str(path)!r} does not exist")
    if is_export_dir(path):
        card = read_card(path)
        encoder = create_encoder(card["architecture"], card["in_chans"], card.get("kwargs", {}))
        state = load_file(str(path / WEIGHTS))
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise LoadError(
                f"the weights in {str(path / WEIGHTS)!r} do not fit {card['architecture']!r}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]})")
        encoder.selfsup_info = card_info(card)
        return encoder.eval()
    module = load_run(path)
    encoder = module.method.exported_encoder()
    encoder.selfsup_info = module.info
    return encoder.eval()
