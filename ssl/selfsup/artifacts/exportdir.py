"""The export directory: where ``config.json`` (timm's schema), ``model.safetensors`` and ``README.md`` are
written (:func:`write_export`, :func:`export_formats` adds interop files), and where an export is read back
with every field and tensor checked (:func:`load_export`). Loading an export never imports ``selfsup.train``.

An export directory holds

- ``model.safetensors``: the timm model's own state dict, so timm loads it as a pretrained file;
- ``config.json``: the card in timm's schema (``timm.create_model("local-dir:DIR", pretrained=True)`` builds
  the encoder; :mod:`selfsup.artifacts.card`), selfsup's metadata under ``selfsup`` (how it was trained and
  scored, which interop files were written and how closely they match, ``weights_sha256``);
- ``README.md``: a Hugging Face model card rendered from the card (:mod:`selfsup.artifacts.modelcard`);
- on request: ``model.torchscript.pt``, ``model.onnx`` (:mod:`selfsup.artifacts.interop`) and
  ``model.torchvision.safetensors`` (:mod:`selfsup.artifacts.torchvision`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from selfsup.artifacts.card import (CARD, MODEL_CARD, WEIGHTS, card_info, field_path, global_pool, timm_call,
                                    to_config_json)
from selfsup.artifacts.interop import FORMAT_FILES, FORMATS, onnx_installed, write_onnx, write_torchscript
from selfsup.artifacts.modelcard import model_card_markdown
from selfsup.artifacts.torchvision import torchvision_problem, write_torchvision
from selfsup.artifacts.validate import card_error, read_card, training_config_problem
from selfsup.encoders import EncoderError, create_encoder, pooled_width
from selfsup.fileio import save_tensors, write_json, write_text
from selfsup.rundir import is_export_dir
from selfsup.safeload import (ExportError, LoadError, describe_directory, file_sha256, first_line, first_names,
                              read_weights)
from selfsup.statedict import StateMismatch, compare_state, describe_mismatch, file_in_chans, tensor_faults

def _weights_mismatch(weights: Path, card: dict[str, Any], encoder: nn.Module, m: StateMismatch) -> str:
    """The message for weights that do not fit the encoder their card describes."""
    first_conv = getattr(encoder, "pretrained_cfg", {}).get("first_conv")
    chans = file_in_chans(m, first_conv)
    if chans is not None:
        name, found, _ = m.shapes[0]
        f = {k: field_path(card, k) for k in ("in_chans", "input_size", "mean", "std")}
        return (f"the weights in {str(weights)!r} are for {chans}-channel images ({name} has shape {list(found)}) "
                f"but {CARD} says in_chans={card['in_chans']}: set \"{f['in_chans']}\": {chans}, "
                f"\"{f['input_size']}\": [{chans}, H, W] and one \"{f['mean']}\" and \"{f['std']}\" value per channel in "
                f"{str(weights.parent / CARD)!r}, or export the run again with `selfsup export RUN_DIR DIR`")
    kwargs = card.get("kwargs") or {}
    arch = repr(card["architecture"]) + (f" with kwargs {kwargs}" if kwargs else "")
    return (f"the weights in {str(weights)!r} do not fit {arch} as {CARD} describes it: "
            f"{describe_mismatch(m)}. {CARD}'s \"architecture\" and \"{field_path(card, 'kwargs')}\" must be the "
            f"ones the weights were trained with; export the run again with `selfsup export RUN_DIR DIR`")


def _check_checksum(weights: Path, card: Mapping[str, Any]) -> None:
    """A LoadError when the card records a checksum of ``weights`` and the file no longer has it."""
    want, field = card.get("weights_sha256"), field_path(card, "weights_sha256")
    if want is None:  # exports written before selfsup recorded it
        return
    got = file_sha256(weights)
    if got != want:
        raise LoadError(f"{str(weights)!r} is not the file this export wrote: its SHA-256 starts {got[:12]}, "
                        f"\"{field}\" in {CARD} says {want[:12]}; the file was damaged or replaced. Export "
                        f"the run again with `selfsup export RUN_DIR {weights.parent}` (if you replaced the weights "
                        f"on purpose, delete \"{field}\" from {CARD})")


def _build_from_card(card: Mapping[str, Any], card_path: Path) -> nn.Module:
    """The untrained timm encoder a validated card describes; a LoadError naming "kwargs" if timm fails."""
    kwargs = card.get("kwargs") or {}
    try:
        return create_encoder(card["architecture"], card["in_chans"], kwargs)
    except Exception as err:  # timm raises TypeError, ValueError, AssertionError, ... for bad kwargs
        cause = err.__context__ if isinstance(err, EncoderError) and err.__context__ else err  # timm's own error
        raise card_error(card_path, field_path(card, "kwargs"), kwargs,
                         f"timm cannot build {card['architecture']!r} with them "
                         f"({first_line(cause)})") from None


def _encoder_card_problem(encoder: nn.Module, card: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(field, problem, fix) for the first field of a validated card that the encoder it builds (whose
    tensors the weights fit) contradicts: ``num_features``, or an ``input_size`` that a model with a fixed
    image size (a timm ViT's strict patch embedding) cannot take; None when they agree."""
    width, pool = pooled_width(encoder), global_pool(encoder)
    if "num_features" in card and card["num_features"] != width:
        return ("num_features", f"the encoder it describes (whose tensors the weights fit) gives "
                f"{width} features", f"set \"num_features\": {width} in that file")
    if "global_pool" in card and card["global_pool"] != pool:
        return ("global_pool", f"the encoder it describes pools with {pool!r} (timm builds it from "
                f"\"{field_path(card, 'kwargs')}\")", f"set \"global_pool\": {pool!r} in that file")
    embed = getattr(encoder, "patch_embed", None)
    fixed = getattr(embed, "img_size", None) if getattr(embed, "strict_img_size", False) else None
    if fixed is not None and tuple(fixed) != tuple(card["input_size"][1:]):
        h, w = fixed
        return ("input_size", f"the encoder it describes takes {h}x{w} images only (its patch embedding's "
                f"img_size)", f"set \"{field_path(card, 'input_size')}\": [{card['in_chans']}, {h}, {w}] in that file")
    return None


def load_export(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder (eval mode, ``selfsup_info`` attached) of export directory ``path`` and its flat card, every
    field and tensor checked before the weights are loaded.

    Raises:
        LoadError: one line naming the faulty field or tensors and the fix.
    """
    card = read_card(path)
    encoder = _build_from_card(card, path / CARD)
    weights = path / WEIGHTS
    state = read_weights(weights)
    expected = encoder.state_dict()
    mismatch = compare_state(expected, state)
    if mismatch:  # said before the checksum: which tensors differ tells more than that the file changed
        raise LoadError(_weights_mismatch(weights, card, encoder, mismatch))
    _check_checksum(weights, card)
    fault = tensor_faults(expected, state)
    if fault:
        raise LoadError(f"the weights in {str(weights)!r} are damaged: {fault}; export the run again with "
                        f"`selfsup export RUN_DIR {path}`")
    disagreement = _encoder_card_problem(encoder, card)
    if disagreement:
        field, problem, fix = disagreement
        raise card_error(path / CARD, field_path(card, field), card[field], problem, fix)
    trained = training_config_problem(card)
    if trained:
        field, problem = trained
        raise card_error(path / CARD, field_path(card, field), card[field], problem)
    encoder.load_state_dict(state)
    encoder.selfsup_info = card_info(card)
    return encoder.eval(), {**card, "num_features": pooled_width(encoder)}


def loose_safetensors(path: Path) -> str:
    """The message for a safetensors file passed without its export directory."""
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
        held = f" of {len(keys)} tensors (e.g. {first_names(keys)})"
    except (SafetensorError, OSError):  # damaged header: say what we can
        held = ""
    beside = (f"; it sits in the export directory {str(path.parent)!r}: pass that directory"
              if is_export_dir(path.parent)
              else f"; pass the export directory that holds it with its {CARD} (written by `selfsup export`), or load "
                   f"timm weights with timm.create_model(NAME, pretrained=True, "
                   f"pretrained_cfg_overlay=dict(file={str(path)!r}))")
    return (f"{str(path)!r} is a safetensors file{held} with no {CARD} card to say which encoder its tensors "
            f"belong to{beside}")


def parse_formats(values: Iterable[str] | None) -> tuple[str, ...]:
    """Export formats from ``--format`` values (repeated and/or comma-separated); safetensors comes first
    and always: the other formats are derived from it."""
    chosen = ["safetensors"]
    for value in values or ():
        for name in (v.strip().lower() for v in value.split(",")):
            if not name:
                continue
            if name not in FORMATS:
                near = difflib.get_close_matches(name, FORMATS, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ExportError(f"unknown export format {name!r}: {hint}choose from {', '.join(FORMATS)}")
            if name not in chosen:
                chosen.append(name)
    return tuple(chosen)


def check_formats(card: Mapping[str, Any], formats: Iterable[str]) -> None:
    """Raise an ExportError, before anything is written, when a format cannot be produced for ``card``."""
    formats = set(formats)
    if "torchvision" in formats and (problem := torchvision_problem(card)):
        raise ExportError(f"cannot export {card['architecture']!r} for torchvision: {problem}")
    if "onnx" in formats and not onnx_installed():
        raise ExportError("the onnx export needs the onnx package: pip install 'selfsup[onnx]' (onnx and "
                          "onnxruntime, which also checks the exported model's outputs)")


def write_export(encoder: nn.Module, card: dict[str, Any], out_dir: str | Path,
                 formats: Iterable[str] = ("safetensors",)) -> Path:
    """Write ``encoder`` with its ``card`` (:func:`make_card`) as the export directory ``out_dir``.

    Every format is checked to be possible before anything is written; interop files that an
    earlier export left in ``out_dir`` are removed (they hold the earlier weights).
    """
    wanted = parse_formats(formats)
    check_formats(card, wanted)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{str(out)!r} exists and is not a directory; choose a directory to export into")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_tensors(state, out / WEIGHTS, {"format": "pt"})
    # export_formats records the files it writes; the checksum lets a load tell a damaged file
    card = {**card, "exports": {}, "weights_sha256": file_sha256(out / WEIGHTS)}
    write_card(card, encoder, out)  # complete even if a format fails below
    for name in FORMAT_FILES.values():
        (out / name).unlink(missing_ok=True)
    if len(wanted) > 1:
        export_formats(out, wanted)
    return out


def export_formats(export_dir: str | Path, formats: Iterable[str]) -> dict[str, Path]:
    """Add interop files to an export directory; returns the file of each format.

    Each file is derived from ``model.safetensors``, checked against the timm encoder before it is
    written, and its check is recorded in the card under ``exports``; ``README.md`` is rewritten.
    """
    out = Path(export_dir)
    if not is_export_dir(out):
        if out.is_dir():
            raise LoadError(describe_directory(out))
        found = "it is a file" if out.exists() else "it does not exist"
        raise LoadError(f"{str(out)!r} is not an export directory ({found}); write one with "
                        f"`selfsup export RUN_DIR {out}`")
    wanted = parse_formats(formats)
    encoder, card = load_export(out)
    if "method" not in card:  # the README model card says how the encoder was trained
        raise LoadError(f"{str(out / CARD)!r} lacks \"method\", which the README model card needs; export the run "
                        f"again with `selfsup export RUN_DIR {out} --format ...`")
    check_formats(card, wanted)
    writers = {"torchscript": write_torchscript, "onnx": write_onnx, "torchvision": write_torchvision}
    exports = dict(card.get("exports") or {})
    written = {"safetensors": out / WEIGHTS}
    for fmt in wanted[1:]:
        written[fmt] = out / FORMAT_FILES[fmt]
        exports[fmt] = writers[fmt](encoder, card, written[fmt])
    card["exports"] = exports
    write_card(card, encoder, out)
    return written


def write_card(card: Mapping[str, Any], encoder: nn.Module, out: Path) -> None:
    """``config.json`` (timm's schema, :func:`~selfsup.artifacts.card.to_config_json`) and ``README.md`` of
    export directory ``out``; the card's pooling and timm call are the encoder's and ``out``'s."""
    card = {**card, "global_pool": global_pool(encoder), "load_with_timm": timm_call(out.name)}
    write_json(to_config_json(card), out / CARD)
    write_text(model_card_markdown(card, out.name), out / MODEL_CARD)
