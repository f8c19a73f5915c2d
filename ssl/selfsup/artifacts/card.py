"""The export card: what selfsup knows about an exported encoder, and its ``config.json`` in timm's schema.

In memory a card is one flat dict (:func:`make_card`): ``architecture``, ``kwargs``, ``in_chans``,
``input_size``, ``mean``, ``std``, ... . On disk, ``config.json`` is a timm / Hugging Face Hub model config
(:func:`to_config_json`), so that ``timm.create_model("local-dir:DIR", pretrained=True)`` (and ``hf-hub:``
after an upload) builds the encoder and ``timm.data.resolve_model_data_config`` returns its input size and
normalisation::

    {"architecture": "resnet18", "num_classes": 0, "num_features": 512, "global_pool": "avg",
     "model_args": {"in_chans": 1, ...every timm kwarg...},
     "pretrained_cfg": {"input_size": [1, 28, 28], "mean": [...], "std": [...], "crop_pct": 1.0,
                        "interpolation": "bilinear", "license": "apache-2.0"},
     "selfsup": {"format_version": 2, "method": ..., "training_config": ..., "results": ..., "exports": ...}}

selfsup's own metadata sits under the one ``selfsup`` key (timm ignores top-level keys it does not know), so
that one file describes the export and a hub upload cannot separate them. Exports written before this schema
(``format_version`` 1: the flat card itself) still load: :func:`from_config_json` reads both, and
:func:`field_path` names a field as it is spelled in the file, for error messages.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from selfsup.version import __version__
from selfsup.config import to_dict
from selfsup.data import DataInfo
from selfsup.encoders import pooled_width
from selfsup.methods import METHODS
from selfsup.rundir import EXPORT_CONFIG as CARD
from selfsup.rundir import EXPORT_README as MODEL_CARD
from selfsup.rundir import EXPORT_WEIGHTS as WEIGHTS

__all__ = ["CARD", "MODEL_CARD", "WEIGHTS", "make_card", "to_config_json", "from_config_json", "field_path"]

FORMAT_VERSION = 2  # 1: the flat card as config.json (before timm's schema); 2: timm's schema + "selfsup"
FORMAT_KEY = "format_version"
CROP_PCT = 1.0  # selfsup resizes whole images to squares, it does not crop
INTERPOLATION = "bilinear"  # torchvision's resize (antialiased), as selfsup's data pipeline uses
# selfsup's own licence; the weights' owner may change it in config.json (and the README's front matter)
LICENSE = "apache-2.0"
TOP_FIELDS = ("architecture", "num_features", "global_pool")  # timm's top-level keys that the flat card keeps
PRETRAINED_FIELDS = ("input_size", "mean", "std", "crop_pct", "interpolation", "license", "classifier", "first_conv")
SECTIONS = ("model_args", "pretrained_cfg", "selfsup")  # the JSON objects of timm's schema


def global_pool(encoder: nn.Module) -> str:
    """timm's name of the encoder's pooling ("avg", "token", "catavgmax", ...; "" for none)."""
    pool = getattr(encoder, "global_pool", "")
    pool = getattr(pool, "pool_type", pool)  # a ResNet's is a SelectAdaptivePool2d module
    return pool if isinstance(pool, str) else ""


def timm_call(dir_name: str) -> str:
    """The timm call that loads the export directory ``dir_name``."""
    return f"timm.create_model('local-dir:{dir_name}', pretrained=True)"


def _first_group(text: str) -> str:
    """``text`` up to the parenthesis closing its first one: "SimCLR (Chen et al. 2020, "...")"."""
    start, depth = text.find("("), 0
    for i in range(max(start, 0), len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if start >= 0 and depth == 0:
            return text[:i + 1]
    return text.split(". ")[0]


def method_reference(name: str) -> str:
    """A method's name and citation, from the first sentence of its module's docstring."""
    if name not in METHODS:
        return name
    doc = " ".join((sys.modules[METHODS.get(name).__module__].__doc__ or "").split())
    return _first_group(doc) if doc else name


def make_card(cfg: Any, info: DataInfo, encoder: nn.Module, results: dict[str, Any] | None = None,
              trained_steps: int | None = None, training_time: Mapping[str, Any] | None = None,
              unreadable: int = 0) -> dict[str, Any]:
    """The card of ``encoder``, trained by run config ``cfg`` on data ``info`` (flat; :func:`to_config_json`
    writes it in timm's schema). ``training_time``: the run's ``training_time.json`` record of these very
    weights (``seconds``, ``epochs``), kept as ``training_minutes`` and ``trained_epochs`` (null without it).
    ``unreadable``: how many of the ``train_images`` files (``info.num_samples``) the run left out as
    unreadable (its ``bad_files.txt``), kept as ``unreadable_images`` when any were."""
    training_time = training_time or {}
    cfg_d = to_dict(cfg)
    kwargs = dict(cfg.encoder.kwargs)
    return {
        "architecture": cfg.encoder.name,
        "kwargs": kwargs,
        "in_chans": info.in_chans,
        "num_features": pooled_width(encoder),
        "global_pool": global_pool(encoder),
        "num_params": sum(p.numel() for p in encoder.parameters()),
        "input_size": [info.in_chans, info.image_size, info.image_size],
        "mean": list(info.mean),
        "std": list(info.std),
        "crop_pct": CROP_PCT,
        "interpolation": INTERPOLATION,
        "license": LICENSE,
        # timm's names of the head and first conv: create_model(..., num_classes=N / in_chans=C) adapts them
        **{k: v for k in ("classifier", "first_conv")
           if isinstance(v := (getattr(encoder, "pretrained_cfg", None) or {}).get(k), str)},
        "num_classes_seen": info.num_classes,
        "train_images": info.num_samples,
        **({"unreadable_images": unreadable} if unreadable else {}),  # of train_images, left out (bad_files.txt)
        "trained_steps": trained_steps,
        "trained_epochs": training_time.get("epochs"),
        "training_minutes": (round(training_time["seconds"] / 60, 4) if "seconds" in training_time else None),
        "method": cfg_d["method"]["name"],
        "method_reference": method_reference(cfg_d["method"]["name"]),
        "method_config": cfg_d["method"],
        "training_config": cfg_d,
        "selfsup_version": __version__,
        "versions": {"selfsup": __version__, "torch": torch.__version__, "timm": timm.__version__},
        "results": results or {},
        "load_with_timm": timm_call("DIR"),
        "exports": {},
    }


def results_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the export card keeps of evaluation rows: kNN and every linear-probe result per target, of
    the features the exported encoder gives (its pooled output: the rows of other stages of a
    layer-wise evaluation, ``pooling`` ``grid`` or ``avg``, are left out), the side length each saw
    (``image_size``, px), and the warnings each row was
    written with (:func:`selfsup.eval.report.row_warnings`: a subset too small to read as asked, ...)."""
    from selfsup.eval.report import row_warnings

    return {r["label"]: {**{k: v for k, v in r.items() if k in ("knn", "image_size") or k.startswith("linear")},
                         **({"warnings": row_warnings(r)} if row_warnings(r) else {})}
            for r in rows if r.get("pooling") in (None, "encoder")}


def to_config_json(card: Mapping[str, Any]) -> dict[str, Any]:
    """``config.json`` of flat ``card`` in timm's schema (module docstring); selfsup's fields under "selfsup"."""
    kwargs = dict(card.get("kwargs") or {})
    timm_keys = {*TOP_FIELDS, *PRETRAINED_FIELDS, "in_chans", "kwargs", FORMAT_KEY}
    out: dict[str, Any] = {"architecture": card["architecture"], "num_classes": 0}
    out.update({k: card[k] for k in TOP_FIELDS[1:] if k in card})
    out["model_args"] = {"in_chans": card["in_chans"], **kwargs}
    out["pretrained_cfg"] = {"input_size": list(card["input_size"]), "mean": list(card["mean"]),
                             "std": list(card["std"]), "crop_pct": card.get("crop_pct", CROP_PCT),
                             "interpolation": card.get("interpolation", INTERPOLATION),
                             "license": card.get("license", LICENSE),
                             **{k: card[k] for k in ("classifier", "first_conv") if k in card}}
    out["selfsup"] = {FORMAT_KEY: FORMAT_VERSION, **{k: v for k, v in card.items() if k not in timm_keys}}
    return out


def is_timm_schema(raw: Mapping[str, Any]) -> bool:
    """Whether the JSON object of a ``config.json`` is in timm's schema (else the flat card of format 1)."""
    return any(k in raw for k in SECTIONS)


def from_config_json(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The flat card of a ``config.json`` object in either format, its fields as they are (unvalidated).

    timm's schema: the top-level fields, ``model_args`` split into ``in_chans`` and ``kwargs``, the
    ``pretrained_cfg`` fields and those under ``selfsup``; ``format_version`` records which. The sections
    must be JSON objects (checked by the caller, :func:`selfsup.artifacts.validate.read_card`)."""
    if not is_timm_schema(raw):
        return dict(raw)
    args = dict(raw.get("model_args") or {})
    card: dict[str, Any] = {**{k: v for k, v in (raw.get("selfsup") or {}).items()}, FORMAT_KEY: FORMAT_VERSION}
    card.update({k: raw[k] for k in TOP_FIELDS if k in raw})
    if "in_chans" in args:
        card["in_chans"] = args.pop("in_chans")
    if "model_args" in raw:
        card["kwargs"] = args
    card.update({k: v for k, v in (raw.get("pretrained_cfg") or {}).items() if k in PRETRAINED_FIELDS})
    return card


def field_path(card: Mapping[str, Any], field: str) -> str:
    """Where flat ``field`` is spelled in the card's ``config.json``: "std" -> "pretrained_cfg.std" in timm's
    schema, "std" in a format-1 card."""
    if card.get(FORMAT_KEY, 1) < 2 or field in TOP_FIELDS or field == "num_classes":
        return field
    if field == "in_chans":
        return "model_args.in_chans"
    if field == "kwargs":
        return "model_args"
    return f"pretrained_cfg.{field}" if field in PRETRAINED_FIELDS else f"selfsup.{field}"


def card_info(card: Mapping[str, Any]) -> DataInfo:
    """The DataInfo of a validated card (square images: ``input_size`` is ``[C, S, S]``)."""
    return DataInfo(card["in_chans"], card["input_size"][-1], card.get("num_classes_seen", 0),
                    tuple(card["mean"]), tuple(card["std"]))


def export_behind(export_dir: str | Path) -> tuple[Path, int, int] | None:
    """``(run, then, now)`` when export ``export_dir`` sits in run directory ``run`` (``RUN/export``) and holds
    its weights after ``then`` optimiser steps (the card's ``trained_steps``) while the run has trained ``now``
    since (a resume with ``--no-eval``); None otherwise (an export elsewhere, current, or steps unknown)."""
    from selfsup.fileio import read_json_or_none
    from selfsup.rundir import nearest_run, run_steps

    run = nearest_run(export_dir, levels=1)
    raw = read_json_or_none(Path(export_dir) / CARD) if run is not None else None
    then = from_config_json(raw).get("trained_steps") if isinstance(raw, dict) else None
    now = run_steps(run) if run is not None else None
    known = isinstance(then, int) and not isinstance(then, bool) and now is not None
    return (run, then, now) if known and then != now else None
