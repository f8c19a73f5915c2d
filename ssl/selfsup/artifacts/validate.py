"""Checking a card: ``config.json`` may have been edited by hand, so every field the loader uses is checked
for type, range and agreement with the others before anything is built; each fault is one line naming the
file, the field as it is spelled there, its value and the fix. :func:`read_card` reads and checks one."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from selfsup.artifacts.card import (CARD, FORMAT_KEY, SECTIONS, WEIGHTS, field_path, from_config_json,
                                    is_timm_schema)
from selfsup.encoders import EncoderError, check_timm_name
from selfsup.safeload import LoadError, first_line

RESERVED_KWARGS = ("num_classes", "in_chans", "pretrained")  # selfsup passes these to timm itself


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _count_or_null(v: Any) -> bool:
    return v is None or (_is_int(v) and v >= 0)


def _finite_numbers(v: Any) -> bool:
    """A non-empty list of finite real numbers (JSON's NaN and Infinity are not)."""
    return (isinstance(v, list) and len(v) > 0
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))


# field -> (whether the loader needs it, its check, what it must be); the other fields are free-form
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")  # timm.data.str_to_interp_mode
CARD_FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "architecture": (True, lambda v: isinstance(v, str) and bool(v.strip()),
                     "it must be the name of the timm model the weights were trained with (a string)"),
    "in_chans": (True, _positive_int, "it must be a positive integer: the images' channel count"),
    "input_size": (True, lambda v: isinstance(v, list) and len(v) == 3 and all(_positive_int(x) for x in v),
                   "it must be [C, H, W], three positive integers"),
    "mean": (True, _finite_numbers, "it must be a list of finite numbers, one per input channel"),
    "std": (True, lambda v: _finite_numbers(v) and all(x > 0 for x in v),
            "it must be a list of finite numbers > 0, one per input channel (the images are divided by it)"),
    "kwargs": (False, lambda v: v is None or isinstance(v, dict),
               "it must be a JSON object of timm.create_model keyword arguments ({} for none)"),
    "num_features": (False, _positive_int, "it must be a positive integer: the width of the encoder's features"),
    "num_classes_seen": (False, lambda v: _is_int(v) and v >= 0,
                         "it must be an integer >= 0: the classes of the training data (0 when unlabeled)"),
    "num_params": (False, _count_or_null, "it must be an integer >= 0 or null"),
    "train_images": (False, _count_or_null, "it must be an integer >= 0 or null"),
    "unreadable_images": (False, _count_or_null, "it must be an integer >= 0 or null"),
    "trained_steps": (False, _count_or_null, "it must be an integer >= 0 or null"),
    "trained_epochs": (False, lambda v: v is None or (_finite_numbers([v]) and v >= 0),
                       "it must be a number >= 0 (epochs trained; a cut-short epoch as its share) or null"),
    "training_minutes": (False, lambda v: v is None or (_finite_numbers([v]) and v >= 0),
                         "it must be a number >= 0 (wall minutes of training) or null"),
    "weights_sha256": (False, lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
                       f"it must be the SHA-256 of {WEIGHTS} (64 lowercase hex digits)"),
    **{k: (False, lambda v: isinstance(v, dict), "it must be a JSON object")
       for k in ("training_config", "method_config", "versions", "results", "exports")},
    **{k: (False, lambda v: isinstance(v, str), "it must be a string")
       for k in ("method", "method_reference", "selfsup_version", "load_with_timm", "global_pool", "classifier",
                 "first_conv")},
    "interpolation": (False, lambda v: v in INTERPOLATIONS, f"it must be one of {', '.join(INTERPOLATIONS)} "
                      f"(timm's names)"),
    "license": (False, lambda v: isinstance(v, str) and bool(v.strip()),
                "it must be the licence's identifier, e.g. \"apache-2.0\" (a non-empty string)"),
    "crop_pct": (False, lambda v: _finite_numbers([v]) and v == 1,
                 "it must be 1.0: the encoder was trained and evaluated on whole images, and timm would crop them "
                 "to that fraction"),
    FORMAT_KEY: (False, _positive_int, "it must be a positive integer"),
}
REQUIRED_FIELDS = tuple(k for k, (required, _, _) in CARD_FIELDS.items() if required)


def _json_value(value: Any, limit: int = 80) -> str:
    """``value`` as it reads in the JSON file, on one line, shortened to about ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def card_error(card_path: Path, field: str, value: Any, problem: str, fix: str | None = None) -> LoadError:
    """One line: the card file, the field (as spelled in the file: :func:`field_path`), its bad value, what is
    wrong and how to fix it."""
    fix = fix or (f"correct \"{field}\" in that file, or export the run again with "
                  f"`selfsup export RUN_DIR {card_path.parent}`")
    return LoadError(f"{str(card_path)!r}: \"{field}\" is {_json_value(value)}, but {problem}; {fix}")


def _timm_name_problem(name: str) -> str | None:
    """Why timm cannot build ``name`` (with its close names), or None when it can."""
    try:
        check_timm_name(name)
    except EncoderError as err:
        near = re.search(r"Close timm names: ([^.]*)\.", str(err))
        return "timm has no model of that name" + (f" (close names: {near.group(1)})" if near else "")
    return None


def _cross_field_problem(card: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, problem) for the first disagreement between fields that each have the right type."""
    c, chans = card["in_chans"], field_path(card, "in_chans")
    if card["input_size"][0] != c:
        return "input_size", f"its channel count C must equal \"{chans}\" ({c})"
    if card["input_size"][1] != card["input_size"][2]:
        return "input_size", "H and W must be equal (selfsup resizes images to squares)"
    for field in ("mean", "std"):
        if len(card[field]) != c:
            return field, f"it must hold one value per input channel: \"{chans}\" is {c}"
    reserved = [k for k in RESERVED_KWARGS if k in (card.get("kwargs") or {})]
    if reserved:
        return "kwargs", (f"it sets {', '.join(reserved)}, which selfsup passes to timm itself (from \"{chans}\"; "
                          f"the encoder has no classifier): remove {'them' if len(reserved) > 1 else 'it'}")
    return None


def _check_timm_sections(raw: Mapping[str, Any], card_path: Path) -> None:
    """A LoadError when a section of timm's schema is no JSON object, or ``num_classes`` is not 0."""
    for section in SECTIONS:
        if section in raw and not isinstance(raw[section], dict):
            rule = CARD_FIELDS["kwargs"][2] if section == "model_args" else "it must be a JSON object"
            raise card_error(card_path, section, raw[section], rule)
    if "num_classes" in raw and raw["num_classes"] != 0:
        raise card_error(card_path, "num_classes", raw["num_classes"], "the exported encoder has no classifier: "
                         "it must be 0 (timm would add a classifier the weights do not have)")


def validate_card(card: Any, card_path: Path) -> dict[str, Any]:
    """The flat card of ``config.json`` object ``card`` (timm's schema or the flat format 1, see
    :mod:`selfsup.artifacts.card`) when every field the loader uses has the right type, range and agreement
    with the others.

    Raises:
        LoadError: one line naming ``card_path``, the field as spelled in the file, its value and the fix.
    """
    if not isinstance(card, dict):
        raise LoadError(f"{str(card_path)!r} holds a JSON {type(card).__name__}, not the object of fields an export "
                        f"card is; export again with `selfsup export RUN_DIR {card_path.parent}`")
    if is_timm_schema(card):
        _check_timm_sections(card, card_path)
    card = from_config_json(card)
    lacking = [field_path(card, k) for k in REQUIRED_FIELDS if k not in card]
    if lacking:
        raise LoadError(f"{str(card_path)!r} is not a selfsup export card: it lacks {', '.join(lacking)}; "
                        f"export again with `selfsup export RUN_DIR {card_path.parent}`")
    for field, (_, ok, rule) in CARD_FIELDS.items():
        if field in card and not ok(card[field]):
            raise card_error(card_path, field_path(card, field), card[field], rule)
    problem = _timm_name_problem(card["architecture"])
    if problem:
        raise card_error(card_path, "architecture", card["architecture"], problem)
    cross = _cross_field_problem(card)
    if cross:
        raise card_error(card_path, field_path(card, cross[0]), card[cross[0]], cross[1])
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    """The validated flat card of export directory ``path``'s ``config.json`` (see :func:`validate_card`).

    Raises:
        LoadError: the file is missing or unreadable, or a field is wrong (one line each).
    """
    card_path = Path(path) / CARD
    try:
        card = json.loads(card_path.read_text(), object_pairs_hook=_unique_keys)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"cannot read the export card {str(card_path)!r}: {first_line(err)}; export again with "
                        f"`selfsup export RUN_DIR {card_path.parent}`") from None
    except _DuplicateKey as dup:  # json keeps the last silently: which one the editor meant is unknown
        raise LoadError(f"{str(card_path)!r} gives {str(dup)!r} twice; keep one of them in that file") from None
    return validate_card(card, card_path)


class _DuplicateKey(Exception):
    """A key given twice in one JSON object (its args[0] is the key)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: the object as a dict; _DuplicateKey on a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def training_config_problem(card: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, problem) when the architecture or kwargs disagree with the training config the card keeps
    (``selfsup.training_config.encoder``): kwargs that keep every tensor's shape (e.g. ``output_stride``)
    load the weights but give other features. Checked after the model is built, so a kwarg timm rejects
    gets timm's message first."""
    trained = (card.get("training_config") or {}).get("encoder")
    if isinstance(trained, dict):  # the weights were trained with these; other kwargs give other features
        if trained.get("name") not in (None, card["architecture"]):
            return "architecture", f"the encoder was trained as {trained['name']!r} (selfsup.training_config.encoder.name)"
        if isinstance(trained.get("kwargs"), dict) and trained["kwargs"] != (card.get("kwargs") or {}):
            return "kwargs", (f"the encoder was trained with {_json_value(trained['kwargs'])} "
                              f"(selfsup.training_config.encoder.kwargs); other kwargs that keep the tensor shapes "
                              f"give other features")
    return None
