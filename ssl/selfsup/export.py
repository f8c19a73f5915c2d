"""Export a trained encoder, load it back, and convert it for other runtimes.

An export directory holds

- ``model.safetensors``: the timm model's own state dict, so timm loads it as a pretrained file;
- ``config.json``: the card (architecture, kwargs, input size, normalisation, how the encoder was
  trained and how it scored, which interop files were written and how closely they match, and
  ``weights_sha256``, the checksum of ``model.safetensors``);
- ``README.md``: a Hugging Face-style model card rendered from the card;
- on request (:func:`export_formats`, ``selfsup export --format``): ``model.torchscript.pt``
  (TorchScript, traced), ``model.onnx`` (ONNX opset :data:`ONNX_OPSET`, dynamic batch axis) and
  ``model.torchvision.safetensors`` (the same weights for ``torchvision.models.resnet*``).

Every interop file maps normalised images ``[B, C, H, W]`` (the card's ``input_size``) to the
pooled features ``[B, num_features]`` of the timm encoder. Before it is written, each one is run on
a batch of another size than the one it was traced with and compared with the timm encoder:
``max |exported - timm| <= FEATURE_RTOL * max(1, max |timm|)``, else nothing is written.

TorchScript and the TorchScript-based ONNX exporter are deprecated upstream (torch >= 2.9 warns).
selfsup uses them on purpose: they need no extra compiler stack (the ``torch.export``-based ONNX
exporter needs onnxscript and takes ~30x longer on a ResNet), and every output is checked
numerically. Their deprecation warnings are silenced inside these calls only.

A card may have been edited by hand: on load every field the loader uses is checked for type, range
and agreement with the others (:func:`validate_card`) and with the model they build (its feature width,
a ViT's fixed image size), and the weights for their checksum, names, shapes and finite values, all before
the weights are loaded and before any forward pass.

Nothing is ever unpickled: weights come from safetensors, Lightning checkpoints are read with
``torch.load(weights_only=True)``. A path that cannot be loaded raises :class:`LoadError` saying
what was found there and what to pass instead.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import io
import json
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from selfsup.data import DataInfo
from selfsup.encoders import EncoderError, check_timm_name, create_encoder, pooled_width
from selfsup.fileio import save_tensors, write_bytes, write_json, write_text

WEIGHTS = "model.safetensors"
CARD = "config.json"
MODEL_CARD = "README.md"
FORMATS = ("safetensors", "torchscript", "onnx", "torchvision")
FORMAT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx",
                "torchvision": "model.torchvision.safetensors"}
ONNX_OPSET = 17  # run by onnxruntime >= 1.11 and most other ONNX runtimes
ONNX_INPUT, ONNX_OUTPUT = "images", "features"
# float32 reassociation (fused conv + BN, other kernels) moves features by ~1e-6 relative; a wrong
# mapping moves them by O(1). The bound sits between, relative to the features' scale.
FEATURE_RTOL = 1e-4
TRACE_BATCH, CHECK_BATCH = 2, 3  # checked on another batch size than traced: the batch axis is dynamic
WHAT_LOADS = ("an export directory (config.json + model.safetensors, written by `selfsup export`), a run "
              "directory (with checkpoints/last.ckpt) or a selfsup checkpoint (.ckpt)")

Shape = tuple[int, ...]


class LoadError(ValueError):
    """The path holds nothing selfsup can load; the message says what was found."""


class ExportError(LoadError):
    """An export cannot be written as asked; the message says why and what to do instead.

    A LoadError, so that everything that reports load problems (the CLI) reports it in one line."""


# ---------------------------------------------------------------------------------------------
# What a path holds


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip file"), (b"PK\x03\x04", "a zip archive"))


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            head[:len(head) - cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def describe_bytes(head: bytes) -> str:
    """What a file is, judged from its first bytes: "a PNG image", "a safetensors file", ..."""
    if not head:
        return "an empty file"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30:
        return "a safetensors file"  # 8-byte little-endian header length, then the JSON header
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    if _is_text(head):
        first = head.decode("utf-8", errors="ignore").strip().splitlines()[0][:60] if head.strip() else ""
        return f"a text file (it starts with {first!r})"
    return "binary data of an unknown kind"


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return "a damaged zip archive"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "a TorchScript archive"
    if any(n.endswith("data.pkl") for n in names):
        return "a PyTorch checkpoint"
    return "a zip archive"


def describe_file(path: str | Path) -> str:
    """What the file at ``path`` is, for error messages (see :func:`describe_bytes`)."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(64)
    kind = describe_bytes(head)
    if kind == "a zip archive":
        return _zip_kind(path)
    if kind == "binary data of an unknown kind" and path.suffix == ".onnx":
        return "an ONNX model"
    return kind


def _what_to_do(kind: str) -> str:
    if kind == "a TorchScript archive":
        return "load it with torch.jit.load(path)"
    if kind == "an ONNX model":
        return "run it with onnxruntime.InferenceSession(path)"
    return f"pass {WHAT_LOADS}"


def _refused_objects(err: BaseException) -> str:
    """What torch's weights_only unpickler refused, without its advice to disable the check."""
    lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
    found = re.findall(r"GLOBAL ([\w.]+)", " ".join(lines))
    if found:
        return f"its pickle would import and call {', '.join(dict.fromkeys(found))}"
    return f"its pickle holds objects other than tensors and plain values ({lines[0] if lines else type(err).__name__})"


def _first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, for one-line errors."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _names(keys: Iterable[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in list(keys)[:n])


def _listing(path: Path, n: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "nothing (it is empty)"
    return ", ".join(names[:n]) + (f", ... ({len(names)} entries)" if len(names) > n else "")


def describe_directory(path: str | Path) -> str:
    """Why directory ``path`` is neither an export directory nor a run directory, and what to pass instead."""
    from selfsup.train.run import CONFIG_FILE

    path = Path(path)
    where = repr(str(path))
    if (path / CARD).is_file() and not (path / WEIGHTS).is_file():
        return (f"{where} is an incomplete export directory: it has {CARD} but no {WEIGHTS}; export again with "
                f"`selfsup export RUN_DIR {path}`")
    if (path / WEIGHTS).is_file():
        return (f"{where} has {WEIGHTS} but no {CARD} card saying which architecture the weights are for; export "
                f"with `selfsup export RUN_DIR DIR`, or load plain timm weights with timm.create_model(NAME, "
                f"pretrained=True, pretrained_cfg_overlay=dict(file={str(path / WEIGHTS)!r}))")
    ckpts = sorted((path / "checkpoints").glob("*.ckpt")) if (path / "checkpoints").is_dir() else []
    if ckpts:
        return (f"{where} has no checkpoints/last.ckpt; pass one of its checkpoints instead: "
                f"{', '.join(str(c) for c in ckpts[:3])}")
    if (path / CONFIG_FILE).is_file():
        return (f"{where} is a selfsup run directory without a checkpoint (no checkpoints/last.ckpt): its "
                f"training stopped before the first one was saved; resume it with `selfsup pretrain --resume {path}`")
    return (f"{where} is not a selfsup run directory (no checkpoints/last.ckpt) nor an export directory (no {CARD} "
            f"and {WEIGHTS}); it holds {_listing(path)}. Pass {WHAT_LOADS}")


# ---------------------------------------------------------------------------------------------
# Comparing a state dict with the one a model expects


@dataclass(frozen=True)
class StateMismatch:
    """How a state dict differs from the one a model expects."""

    missing: list[str]  # the model's tensors that the file lacks
    unexpected: list[str]  # the file's tensors that the model does not have
    shapes: list[tuple[str, Shape, Shape]]  # (name, shape in the file, shape in the model)
    n_expected: int = 0  # how many tensors the model has
    n_found: int = 0  # how many tensors the file has

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def tensor_shapes(state: Mapping[str, Tensor]) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in state.items()}


def compare_state(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> StateMismatch:
    """Names and shapes of state dict ``found`` (a file) against ``expected`` (a model's)."""
    want, got = tensor_shapes(expected), tensor_shapes(found)
    return StateMismatch(missing=[k for k in want if k not in got],
                         unexpected=[k for k in got if k not in want],
                         shapes=[(k, got[k], s) for k, s in want.items() if k in got and got[k] != s],
                         n_expected=len(want), n_found=len(got))


def _prefix_hint(m: StateMismatch) -> str:
    """Names a prefix that the file's keys carry where the model's have none (e.g. 'encoder.')."""
    missing = set(m.missing)
    for head in sorted({k.split(".", 1)[0] for k in m.unexpected if "." in k}):
        hits = sum(k.split(".", 1)[1] in missing for k in m.unexpected if k.startswith(head + "."))
        if missing and hits >= len(missing) / 2:
            return (f"; the file's names carry a {head + '.'!r} prefix: it is the state of a model that contains the "
                    f"encoder, not the encoder's own")
    return ""


def describe_mismatch(m: StateMismatch) -> str:
    """Counts and a few names of each kind of difference."""
    parts = []
    if m.missing:
        parts.append(f"{len(m.missing)} of the model's {m.n_expected} tensors are missing from the file "
                     f"(e.g. {_names(m.missing)})")
    if m.unexpected:
        parts.append(f"{len(m.unexpected)} of the file's {m.n_found} tensors are not in the model "
                     f"(e.g. {_names(m.unexpected)})")
    if m.shapes:
        shown = ", ".join(f"{k!r}: file {list(f)} vs model {list(e)}" for k, f, e in m.shapes[:2])
        parts.append(f"{len(m.shapes)} have another shape (e.g. {shown})")
    return "; ".join(parts) + _prefix_hint(m)


def file_in_chans(m: StateMismatch, first_conv: str | None) -> int | None:
    """The file's input channels when the stem conv's input channels are the only difference."""
    if m.missing or m.unexpected or len(m.shapes) != 1 or not isinstance(first_conv, str):
        return None
    name, found, expected = m.shapes[0]
    if name != f"{first_conv}.weight" or len(found) != len(expected) or len(found) < 2:
        return None
    return found[1] if found[:1] + found[2:] == expected[:1] + expected[2:] else None


# ---------------------------------------------------------------------------------------------
# Runs and checkpoints


def find_checkpoint(path: str | Path) -> Path:
    """A run directory's last checkpoint, or the checkpoint file itself."""
    path = Path(path)
    if path.is_file():
        return path
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise LoadError(describe_directory(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint without unpickling code (``weights_only=True``)."""
    path = Path(path)
    kind = describe_file(path)
    if kind not in ("a PyTorch checkpoint", "a pickle"):
        raise LoadError(f"cannot read {str(path)!r} as a selfsup checkpoint: it is {kind}; {_what_to_do(kind)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only raises for a pickle that would run code
        raise LoadError(f"refusing to load {str(path)!r}: {_refused_objects(err)}. selfsup only loads checkpoints "
                        f"that need no code to unpickle (tensors, numbers, strings, containers); a checkpoint "
                        f"written by selfsup never needs any") from None
    except Exception as err:  # RuntimeError for a truncated zip, EOFError, ...
        raise LoadError(f"cannot read {str(path)!r} as a selfsup checkpoint: {_first_line(err)}; the file looks "
                        f"truncated or damaged") from None


def check_selfsup_checkpoint(ckpt: Any, path: Path) -> None:
    """Raise a LoadError naming what ``ckpt`` is when selfsup did not write it."""
    from selfsup.train.module import CHECKPOINT_KEY

    where = repr(str(path))
    if not isinstance(ckpt, dict):
        raise LoadError(f"{where} holds a {type(ckpt).__name__}, not a checkpoint; pass {WHAT_LOADS}")
    if CHECKPOINT_KEY in ckpt:
        return
    if ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        raise LoadError(f"{where} is a plain state dict of {len(ckpt)} tensors (e.g. {_names(ckpt)}), not a selfsup "
                        f"checkpoint: nothing in it says which architecture the weights belong to. Load it into "
                        f"its model with model.load_state_dict(torch.load(path, weights_only=True)), or pass "
                        f"{WHAT_LOADS}")
    what = "a Lightning checkpoint" if "state_dict" in ckpt else f"a dict with keys {_names(ckpt, 5)}"
    raise LoadError(f"{where} is {what} not written by selfsup (it has no {CHECKPOINT_KEY!r} entry with the config "
                    f"that built the model); pass {WHAT_LOADS}")


def _checkpoint_mismatch(ckpt: dict[str, Any], path: Path, err: RuntimeError) -> str:
    """Why a selfsup checkpoint's weights do not fit the model its own config builds (code or timm drift)."""
    import timm

    from selfsup import __version__
    from selfsup.config import build_config
    from selfsup.train.module import CHECKPOINT_KEY, PretrainModule

    meta = ckpt[CHECKPOINT_KEY]
    head = f"the weights in {str(path)!r} do not fit the model its own config builds"
    try:
        d = dict(meta["data_info"])
        info = DataInfo(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})
        detail = describe_mismatch(compare_state(PretrainModule(build_config(meta["config"]), info).state_dict(),
                                                 ckpt["state_dict"]))
    except Exception:  # the summary is a courtesy; fall back to torch's first line
        detail = str(err).splitlines()[0]
    return (f"{head}: {detail}. It was written by selfsup {meta.get('version', '?')}, and this selfsup "
            f"{__version__} with timm {timm.__version__} builds a different model: load it with the versions "
            f"it was trained with")


def _read_run(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The PretrainModule (eval mode) of a run directory or checkpoint, and the checkpoint dict."""
    from selfsup.train.module import module_from_checkpoint

    ckpt_path = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    check_selfsup_checkpoint(ckpt, ckpt_path)
    try:
        module = module_from_checkpoint(ckpt)
    except LoadError:
        raise
    except RuntimeError as err:
        if "Error(s) in loading state_dict" in str(err):
            raise LoadError(_checkpoint_mismatch(ckpt, ckpt_path, err)) from None
        raise LoadError(f"cannot rebuild the run from {str(ckpt_path)!r}: {err}") from None
    except (KeyError, ValueError) as err:
        raise LoadError(f"cannot rebuild the run from {str(ckpt_path)!r}: {err}") from None
    return module.eval(), ckpt


def load_run(path: str | Path):
    """The PretrainModule of a run directory or checkpoint, in eval mode."""
    return _read_run(path)[0]


def _run_encoder_and_card(path: str | Path, results: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder (eval mode, ``selfsup_info`` attached) of a run directory or checkpoint, and its export card."""
    module, ckpt = _read_run(path)
    encoder = module.method.exported_encoder().eval()
    state = encoder.state_dict()
    fault = tensor_faults(state, state)
    if fault:
        raise LoadError(f"the encoder in {str(find_checkpoint(path))!r} is damaged: {fault}; load or resume from an "
                        f"earlier checkpoint of the run, or train it again")
    encoder.selfsup_info = module.info
    return encoder, make_card(module.cfg, module.info, encoder, results, ckpt.get("global_step"))


# ---------------------------------------------------------------------------------------------
# The card and export directories


def is_export_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CARD).is_file() and (path / WEIGHTS).is_file()


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
    import sys

    from selfsup.methods import METHODS

    if name not in METHODS:
        return name
    doc = " ".join((sys.modules[METHODS.get(name).__module__].__doc__ or "").split())
    return _first_group(doc) if doc else name


def make_card(cfg: Any, info: DataInfo, encoder: nn.Module, results: dict[str, Any] | None = None,
              trained_steps: int | None = None) -> dict[str, Any]:
    """The ``config.json`` card of ``encoder``, trained by run config ``cfg`` on data ``info``."""
    import timm

    from selfsup import __version__
    from selfsup.config import to_dict

    cfg_d = to_dict(cfg)
    kwargs = dict(cfg.encoder.kwargs)
    return {
        "architecture": cfg.encoder.name,
        "kwargs": kwargs,
        "in_chans": info.in_chans,
        "num_features": pooled_width(encoder),
        "num_params": sum(p.numel() for p in encoder.parameters()),
        "input_size": [info.in_chans, info.image_size, info.image_size],
        "mean": list(info.mean),
        "std": list(info.std),
        "num_classes_seen": info.num_classes,
        "train_images": info.num_samples,
        "trained_steps": trained_steps,
        "method": cfg_d["method"]["name"],
        "method_reference": method_reference(cfg_d["method"]["name"]),
        "method_config": cfg_d["method"],
        "training_config": cfg_d,
        "selfsup_version": __version__,
        "versions": {"selfsup": __version__, "torch": torch.__version__, "timm": timm.__version__},
        "results": results or {},
        "load_with_timm": (
            f"timm.create_model({cfg.encoder.name!r}, pretrained=True, num_classes=0, "
            f"in_chans={info.in_chans}, pretrained_cfg_overlay=dict(file='{WEIGHTS}')"
            + "".join(f", {k}={v!r}" for k, v in kwargs.items()) + ")"
        ),
        "exports": {},
    }


def results_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the export card keeps of evaluation rows: kNN and every linear-probe result per target, of
    the features the exported encoder gives (its pooled output: the rows of other stages of a
    layer-wise evaluation, ``pooling`` ``grid`` or ``avg``, are left out)."""
    return {r["label"]: {k: v for k, v in r.items() if k == "knn" or k.startswith("linear")} for r in rows
            if r.get("pooling") in (None, "encoder")}


# ---------------------------------------------------------------------------------------------
# Validating a card: config.json may have been edited by hand


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
    "trained_steps": (False, _count_or_null, "it must be an integer >= 0 or null"),
    "weights_sha256": (False, lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
                       f"it must be the SHA-256 of {WEIGHTS} (64 lowercase hex digits)"),
    **{k: (False, lambda v: isinstance(v, dict), "it must be a JSON object")
       for k in ("training_config", "method_config", "versions", "results", "exports")},
    **{k: (False, lambda v: isinstance(v, str), "it must be a string")
       for k in ("method", "method_reference", "selfsup_version", "load_with_timm")},
}
REQUIRED_FIELDS = tuple(k for k, (required, _, _) in CARD_FIELDS.items() if required)


def _json_value(value: Any, limit: int = 80) -> str:
    """``value`` as it reads in the JSON file, on one line, shortened to about ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def card_error(card_path: Path, field: str, value: Any, problem: str, fix: str | None = None) -> LoadError:
    """One line: the card file, the field, its bad value, what is wrong and how to fix it."""
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
    c = card["in_chans"]
    if card["input_size"][0] != c:
        return "input_size", f"its channel count C must equal \"in_chans\" ({c})"
    if card["input_size"][1] != card["input_size"][2]:
        return "input_size", "H and W must be equal (selfsup resizes images to squares)"
    for field in ("mean", "std"):
        if len(card[field]) != c:
            return field, f"it must hold one value per input channel: \"in_chans\" is {c}"
    reserved = [k for k in RESERVED_KWARGS if k in (card.get("kwargs") or {})]
    if reserved:
        return "kwargs", (f"it sets {', '.join(reserved)}, which selfsup passes to timm itself (from \"in_chans\"; "
                          f"the encoder has no classifier): remove {'them' if len(reserved) > 1 else 'it'}")
    return None


def validate_card(card: Any, card_path: Path) -> dict[str, Any]:
    """``card`` when every field the loader uses has the right type, range and agreement with the others.

    Raises:
        LoadError: one line naming ``card_path``, the field, its value and the fix.
    """
    if not isinstance(card, dict):
        raise LoadError(f"{str(card_path)!r} holds a JSON {type(card).__name__}, not the object of fields an export "
                        f"card is; export again with `selfsup export RUN_DIR {card_path.parent}`")
    lacking = [k for k in REQUIRED_FIELDS if k not in card]
    if lacking:
        raise LoadError(f"{str(card_path)!r} is not a selfsup export card: it lacks {', '.join(lacking)}; "
                        f"export again with `selfsup export RUN_DIR {card_path.parent}`")
    for field, (_, ok, rule) in CARD_FIELDS.items():
        if field in card and not ok(card[field]):
            raise card_error(card_path, field, card[field], rule)
    problem = _timm_name_problem(card["architecture"])
    if problem:
        raise card_error(card_path, "architecture", card["architecture"], problem)
    cross = _cross_field_problem(card)
    if cross:
        raise card_error(card_path, cross[0], card[cross[0]], cross[1])
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of export directory ``path`` (see :func:`validate_card`).

    Raises:
        LoadError: the file is missing or unreadable, or a field is wrong (one line each).
    """
    card_path = Path(path) / CARD
    try:
        card = json.loads(card_path.read_text(), object_pairs_hook=_unique_keys)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"cannot read the export card {str(card_path)!r}: {_first_line(err)}; export again with "
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


def card_info(card: dict[str, Any]) -> DataInfo:
    """The DataInfo of a validated card (square images: ``input_size`` is ``[C, S, S]``)."""
    return DataInfo(card["in_chans"], card["input_size"][-1], card.get("num_classes_seen", 0),
                    tuple(card["mean"]), tuple(card["std"]))


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; a LoadError names what the file is otherwise."""
    kind = describe_file(path)
    if kind != "a safetensors file":
        raise LoadError(f"{str(path)!r} should hold the encoder's weights as safetensors but is {kind}; export "
                        f"again with `selfsup export RUN_DIR {path.parent}`")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:  # a truncated or corrupt file
        raise LoadError(f"cannot read {str(path)!r}: {err}; the file looks truncated or damaged, export "
                        f"again with `selfsup export RUN_DIR {path.parent}`") from None


def _weights_mismatch(weights: Path, card: dict[str, Any], encoder: nn.Module, m: StateMismatch) -> str:
    """The message for weights that do not fit the encoder their card describes."""
    first_conv = getattr(encoder, "pretrained_cfg", {}).get("first_conv")
    chans = file_in_chans(m, first_conv)
    if chans is not None:
        name, found, _ = m.shapes[0]
        return (f"the weights in {str(weights)!r} are for {chans}-channel images ({name} has shape {list(found)}) "
                f"but {CARD} says in_chans={card['in_chans']}: set \"in_chans\": {chans}, \"input_size\": "
                f"[{chans}, H, W] and one \"mean\" and \"std\" value per channel in {str(weights.parent / CARD)!r}, or "
                f"export the run again with `selfsup export RUN_DIR DIR`")
    kwargs = card.get("kwargs") or {}
    arch = repr(card["architecture"]) + (f" with kwargs {kwargs}" if kwargs else "")
    return (f"the weights in {str(weights)!r} do not fit {arch} as {CARD} describes it: "
            f"{describe_mismatch(m)}. {CARD}'s \"architecture\" and \"kwargs\" must be the "
            f"ones the weights were trained with; export the run again with `selfsup export RUN_DIR DIR`")


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_checksum(weights: Path, card: Mapping[str, Any]) -> None:
    """A LoadError when the card records a checksum of ``weights`` and the file no longer has it."""
    want = card.get("weights_sha256")
    if want is None:  # exports written before selfsup recorded it
        return
    got = file_sha256(weights)
    if got != want:
        raise LoadError(f"{str(weights)!r} is not the file this export wrote: its SHA-256 starts {got[:12]}, "
                        f"\"weights_sha256\" in {CARD} says {want[:12]}; the file was damaged or replaced. Export "
                        f"the run again with `selfsup export RUN_DIR {weights.parent}` (if you replaced the weights "
                        f"on purpose, delete \"weights_sha256\" from {CARD})")


def tensor_faults(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str | None:
    """What is wrong with the values of ``found`` (whose names and shapes fit ``expected``): a float
    tensor where the model has an integer one or the reverse, or NaN / infinite values; None if nothing."""
    kinds = [k for k, v in found.items() if k in expected and v.is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        k = kinds[0]
        return (f"{len(kinds)} tensors hold another kind of number than the model's (e.g. {k!r}: file "
                f"{found[k].dtype} vs model {expected[k].dtype})")
    bad = [k for k, v in found.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        return f"{len(bad)} of its {len(found)} tensors hold NaN or infinite values (e.g. {_names(bad)})"
    return None


def _build_from_card(card: Mapping[str, Any], card_path: Path) -> nn.Module:
    """The untrained timm encoder a validated card describes; a LoadError naming "kwargs" if timm fails."""
    kwargs = card.get("kwargs") or {}
    try:
        return create_encoder(card["architecture"], card["in_chans"], kwargs)
    except Exception as err:  # timm raises TypeError, ValueError, AssertionError, ... for bad kwargs
        cause = err.__context__ if isinstance(err, EncoderError) and err.__context__ else err  # timm's own error
        raise card_error(card_path, "kwargs", kwargs, f"timm cannot build {card['architecture']!r} with them "
                         f"({_first_line(cause)})") from None


def _encoder_card_problem(encoder: nn.Module, card: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(field, problem, fix) for the first field of a validated card that the encoder it builds (whose
    tensors the weights fit) contradicts: ``num_features``, or an ``input_size`` that a model with a fixed
    image size (a timm ViT's strict patch embedding) cannot take; None when they agree."""
    width = pooled_width(encoder)
    if "num_features" in card and card["num_features"] != width:
        return ("num_features", f"the encoder it describes (whose tensors the weights fit) gives "
                f"{width} features", f"set \"num_features\": {width} in that file")
    embed = getattr(encoder, "patch_embed", None)
    fixed = getattr(embed, "img_size", None) if getattr(embed, "strict_img_size", False) else None
    if fixed is not None and tuple(fixed) != tuple(card["input_size"][1:]):
        h, w = fixed
        return ("input_size", f"the encoder it describes takes {h}x{w} images only (its patch embedding's "
                f"img_size)", f"set \"input_size\": [{card['in_chans']}, {h}, {w}] in that file")
    return None


def _load_export(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder (eval mode) of export directory ``path`` and its card, every field and tensor checked."""
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
        raise card_error(path / CARD, field, card[field], problem, fix)
    encoder.load_state_dict(state)
    encoder.selfsup_info = card_info(card)
    return encoder.eval(), {**card, "num_features": pooled_width(encoder)}


def _loose_safetensors(path: Path) -> str:
    """The message for a safetensors file passed without its export directory."""
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
        held = f" of {len(keys)} tensors (e.g. {_names(keys)})"
    except (SafetensorError, OSError):  # damaged header: say what we can
        held = ""
    beside = (f"; it sits in the export directory {str(path.parent)!r}: pass that directory"
              if is_export_dir(path.parent)
              else f"; pass the export directory that holds it with its {CARD} (written by `selfsup export`), or load "
                   f"timm weights with timm.create_model(NAME, pretrained=True, "
                   f"pretrained_cfg_overlay=dict(file={str(path)!r}))")
    return (f"{str(path)!r} is a safetensors file{held} with no {CARD} card to say which encoder its tensors "
            f"belong to{beside}")


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
        return _load_export(path)
    if path.is_file() and describe_file(path) == "a safetensors file":
        raise LoadError(_loose_safetensors(path))
    return _run_encoder_and_card(path)


def load_encoder(path: str | Path) -> nn.Module:
    """An encoder in eval mode from an export directory, a run directory or a checkpoint.

    The result is the timm model itself; ``selfsup_info`` (a DataInfo with input size and
    normalisation) is attached to it. Anything else raises a :class:`LoadError` that says what
    was found (a PNG, a text file, weights for another architecture or channel count, ...) and
    what to pass instead.
    """
    return load_encoder_and_card(path)[0]


# ---------------------------------------------------------------------------------------------
# Export formats


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


def onnx_installed() -> bool:
    return importlib.util.find_spec("onnx") is not None


def check_formats(card: Mapping[str, Any], formats: Iterable[str]) -> None:
    """Raise an ExportError, before anything is written, when a format cannot be produced for ``card``."""
    formats = set(formats)
    if "torchvision" in formats and (problem := torchvision_problem(card)):
        raise ExportError(f"cannot export {card['architecture']!r} for torchvision: {problem}")
    if "onnx" in formats and not onnx_installed():
        raise ExportError("the onnx export needs the onnx package: pip install 'selfsup[onnx]' (onnx and "
                          "onnxruntime, which also checks the exported model's outputs)")


def export_encoder(source: str | Path, out_dir: str | Path, results: dict[str, Any] | None = None,
                   formats: Iterable[str] = ("safetensors",)) -> Path:
    """Write the export directory of run ``source`` (a run directory or checkpoint).

    Always ``model.safetensors``, ``config.json`` and ``README.md``; ``formats`` adds interop files
    (see :func:`export_formats` and :func:`write_export`).
    """
    wanted = parse_formats(formats)  # an unknown format fails before the run is loaded
    encoder, card = _run_encoder_and_card(source, results)
    return write_export(encoder, card, out_dir, wanted)


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
    write_json(card, out / CARD)
    write_text(model_card_markdown(card, out.name), out / MODEL_CARD)  # complete even if a format fails below
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
    encoder, card = _load_export(out)
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
    write_json(card, out / CARD)
    write_text(model_card_markdown(card, out.name), out / MODEL_CARD)
    return written


def example_input(card: Mapping[str, Any], batch: int, seed: int = 0) -> Tensor:
    """Normal noise shaped like a batch of normalised images: ``[batch, C, H, W]``."""
    return torch.randn(batch, *card["input_size"], generator=torch.Generator().manual_seed(seed))


def check_features(fmt: str, ref: Tensor, out: Tensor) -> dict[str, float]:
    """``max |out - ref|`` and its bound ``FEATURE_RTOL * max(1, max |ref|)``; an ExportError beyond it."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ExportError(f"the {fmt} export gives features of shape {list(out.shape)}, the timm encoder "
                          f"{list(ref.shape)}; nothing was written")
    diff = (out.float() - ref.float()).abs().max().item()  # [B, D] -> scalar
    tol = FEATURE_RTOL * max(1.0, ref.abs().max().item())
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"the {fmt} export's features differ from the timm encoder's by up to {diff:.3g} "
                          f"(allowed {tol:.3g}); nothing was written")
    return {"max_abs_diff": diff, "tolerance": tol}


def _compare(fmt: str, encoder: nn.Module, run: Callable[[Tensor], Tensor],
             card: Mapping[str, Any]) -> dict[str, float]:
    x = example_input(card, CHECK_BATCH, seed=1)  # [CHECK_BATCH, C, H, W]
    with torch.no_grad():
        return check_features(fmt, encoder(x), run(x))  # [CHECK_BATCH, D] each


@contextmanager
def _upstream_deprecations_silenced() -> Iterator[None]:
    """torch >= 2.9 deprecates TorchScript and the TorchScript-based ONNX exporter (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        yield


def write_torchscript(encoder: nn.Module, card: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``torch.jit.trace`` of the encoder (eval mode) at ``path``; returns the card's record of it."""
    try:
        with _upstream_deprecations_silenced(), torch.no_grad():
            traced = torch.jit.trace(encoder, example_input(card, TRACE_BATCH), check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            data = buf.getvalue()
            reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as err:  # a model that cannot be traced: say so in one line
        raise ExportError(f"cannot trace {card['architecture']!r} to TorchScript: {_first_line(err)}") from None
    record = _compare("torchscript", encoder, reloaded, card)
    write_bytes(data, path)
    return {"file": path.name, "how": f"torch.jit.trace in eval mode on a batch of {TRACE_BATCH}",
            "checked_with": f"torch.jit.load (torch {torch.__version__}) on a batch of {CHECK_BATCH}", **record}


def _onnxruntime_runner(data: bytes) -> tuple[Callable[[Tensor], Tensor], str] | None:
    """Features from the ONNX model ``data`` run by onnxruntime, or None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, D]
        return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])

    return run, f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"


def write_onnx(encoder: nn.Module, card: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The encoder as ONNX (opset ONNX_OPSET, batch axis dynamic) at ``path``; checked with onnxruntime
    when it is installed. Returns the card's record of it."""
    buf = io.BytesIO()
    try:
        with _upstream_deprecations_silenced(), torch.no_grad():
            torch.onnx.export(encoder, (example_input(card, TRACE_BATCH),), buf, dynamo=False,
                              opset_version=ONNX_OPSET, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}})
    except Exception as err:
        raise ExportError(f"cannot export {card['architecture']!r} to ONNX: {_first_line(err)}") from None
    data = buf.getvalue()
    c, h, w = card["input_size"]
    record: dict[str, Any] = {
        "file": path.name, "opset": ONNX_OPSET, "exporter": "torch.onnx.export(dynamo=False), TorchScript-based",
        "input": f"{ONNX_INPUT}: float32 [batch, {c}, {h}, {w}], normalised",
        "output": f"{ONNX_OUTPUT}: float32 [batch, {card['num_features']}]"}
    runner = _onnxruntime_runner(data)
    if runner is None:
        record.update(checked_with=None, note="not checked: onnxruntime is not installed (pip install 'selfsup[onnx]')")
    else:
        run, engine = runner
        record.update(_compare("onnx", encoder, run, card), checked_with=f"{engine} on a batch of {CHECK_BATCH}")
    write_bytes(data, path)
    return record


# ---------------------------------------------------------------------------------------------
# torchvision


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
    import torchvision

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


def to_torchvision(path: str | Path) -> nn.Module:
    """A ``torchvision.models`` ResNet holding the encoder at ``path`` (export directory, run directory or
    checkpoint), in eval mode: ``fc`` is an Identity, so it returns the same features ``[B, D]`` as the timm
    encoder; for ``in_chans != 3``, ``conv1`` is rebuilt for that many channels. Only timm ResNets with
    torchvision's layout convert (see :func:`torchvision_problem`); others raise an ExportError saying why."""
    encoder, card = load_encoder_and_card(path)
    return torchvision_from_encoder(encoder, card)


def write_torchvision(encoder: nn.Module, card: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The torchvision-keyed state dict (no ``fc``) at ``path``; returns the card's record of it."""
    model = torchvision_from_encoder(encoder, card)
    record = _compare("torchvision", encoder, model, card)
    call = torchvision_call(card)
    save_tensors(model.state_dict(), path, {"format": "pt", "torchvision_call": call,
                                            "in_chans": str(card["in_chans"])})
    return {"file": path.name, "load": call, "fc": "replace by torch.nn.Identity() (no classifier)",
            "conv1": "torchvision's (3 channels)" if card["in_chans"] == 3 else
            f"replace by torch.nn.Conv2d({card['in_chans']}, 64, 7, 2, 3, bias=False)",
            "checked_with": f"{call} on a batch of {CHECK_BATCH}", **record}


# ---------------------------------------------------------------------------------------------
# README.md: the model card


def _front_matter(card: Mapping[str, Any]) -> str:
    import yaml

    data = card.get("training_config", {}).get("data", {}).get("name")
    kind = "supervised" if card["method"] == "supervised" else "self-supervised-learning"
    meta: dict[str, Any] = {"library_name": "timm", "pipeline_tag": "image-feature-extraction",
                            "tags": ["image-feature-extraction", "timm", "selfsup", kind, card["method"],
                                     card["architecture"]]}
    if data and data != "image-folder":  # an image folder is no named dataset
        meta["datasets"] = [data]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _training_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    tc = card.get("training_config", {})
    data, trainer, optim = tc.get("data", {}), tc.get("trainer", {}), tc.get("optim", {})
    c, h, w = card["input_size"]
    hyper = ", ".join(f"{k}={v}" for k, v in card.get("method_config", {}).items()
                      if k != "name" and isinstance(v, (int, float, str, bool)))
    method = f"`{card['method']}`: {card.get('method_reference', card['method'])}" + (
        f"; hyper-parameters {hyper}" if hyper else "")
    kwargs = card.get("kwargs") or {}
    encoder = (f"timm `{card['architecture']}`" + (f", kwargs `{json.dumps(kwargs)}`" if kwargs else "")
               + f"; {c} input channel{'s' * (c != 1)}; {card['num_features']}-d features"
               + (f"; {card['num_params']:,} parameters" if card.get("num_params") else ""))
    name = data.get("name", "?")
    images = f", {card['train_images']:,} training images" if card.get("train_images") else ""
    subset = f" (a seeded subset of {data['subset']:,})" if data.get("subset") else ""
    data_row = (("a folder of images (`image-folder`)" if name == "image-folder" else f"`{name}`") + images + subset
                + f"; {h}x{w} pixels, normalised with mean {card['mean']} and std {card['std']}")
    steps = trainer.get("max_steps", -1)
    length = f"{steps:,} optimiser steps" if steps and steps > 0 else f"{trainer.get('max_epochs', '?')} epochs"
    done = (f"; the exported checkpoint was written after {card['trained_steps']:,} optimiser steps"
            if card.get("trained_steps") is not None else "")
    schedule = (f"{length}{done}; batch {data.get('batch_size', '?')}; {optim.get('name', '?')}, peak lr "
                f"{optim.get('lr', '?')} at batch 256 ({optim.get('lr_scaling', '?')} scaling), weight decay "
                f"{optim.get('weight_decay', '?')}, {optim.get('warmup_epochs', '?')} warmup epochs; precision "
                f"{trainer.get('precision', '?')}")
    versions = card.get("versions") or {"selfsup": card.get("selfsup_version", "?")}
    return [("method", method), ("encoder", encoder), ("data", data_row), ("schedule", schedule),
            ("seed", str(tc.get("seed", "?"))), ("software", ", ".join(f"{k} {v}" for k, v in versions.items()))]


def _probe_order(key: str, value: Mapping[str, Any]) -> tuple[int, float]:
    rank = 0 if key == "linear" else 2 if key == "linear_sklearn" else 1
    return rank, -float(value.get("fraction", 0.0))


def _probe_header(key: str) -> str:
    if key == "linear":
        return "linear top-1"
    if key == "linear_sklearn":
        return "sklearn logistic top-1"
    return f"linear top-1, {key.removeprefix('linear_').replace('pct', '%')} labels"


def _pm(result: Mapping[str, Any]) -> str:
    std = result.get("top1_std")
    return f"{result['top1']:.2f}" if std is None else f"{result['top1']:.2f} ± {std:.2f}"


def results_markdown(results: Mapping[str, Any], dataset: str) -> str:
    """The card's evaluation results as a markdown table (top-1 %, one row per evaluated encoder)."""
    rows = {label: r for label, r in results.items() if isinstance(r, Mapping)}
    if not rows:
        return ("No evaluation results were recorded with this export; `selfsup eval DIR` scores it with a kNN "
                "classifier and a linear probe.\n")
    knn = list(dict.fromkeys(k for r in rows.values() for k in r.get("knn", {})))
    probes = {k: v for r in rows.values() for k, v in r.items() if k.startswith("linear") and isinstance(v, Mapping)}
    probe_keys = sorted(probes, key=lambda k: _probe_order(k, probes[k]))
    header = ["encoder"] + [f"kNN {k} top-1" for k in knn] + [_probe_header(k) for k in probe_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for label, r in rows.items():
        cells = [label] + [f"{r['knn'][k]['top1']:.2f}" if k in r.get("knn", {}) else "" for k in knn]
        cells += [_pm(r[k]) if isinstance(r.get(k), Mapping) and "top1" in r[k] else "" for k in probe_keys]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = next((v["seeds"] for v in probes.values() if "seeds" in v), None)
    note = (f"\nTop-1 accuracy (%) of the frozen features on the test split of `{dataset}` (`selfsup eval`): "
            f"weighted kNN (cosine similarity, votes weighted by exp(sim/T)) and a linear probe whose learning rate "
            f"and weight decay were chosen on held-out training images"
            + (f"; ± is the standard deviation over {seeds} probe seeds" if seeds else "")
            + ". Rows other than the pretrained encoder are baselines scored the same way.\n")
    return "\n".join(lines) + "\n" + note


def _code(text: str) -> str:
    return f"```python\n{text}\n```\n"


def _exported(card: Mapping[str, Any], fmt: str) -> bool:
    """Whether the export directory holds ``fmt``'s interop file."""
    return fmt in (card.get("exports") or {})


def _how_to_write(fmt: str, dir_name: str) -> str:
    """The command that adds ``fmt``'s interop file to the export directory."""
    return f"`selfsup export RUN_DIR {dir_name} --format {fmt}` writes `{FORMAT_FILES[fmt]}`"


def _timm_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    c, h, w = card["input_size"]
    kwargs = "".join(f", {k}={v!r}" for k, v in (card.get("kwargs") or {}).items())
    return _code(
        f"import timm, torch\n"
        f"model = timm.create_model({card['architecture']!r}, pretrained=True, num_classes=0, in_chans={c},\n"
        f"                          pretrained_cfg_overlay=dict(file=\"{dir_name}/{WEIGHTS}\")"
        + (f",\n                          {kwargs[2:]}" if kwargs else "") + ").eval()\n"
        f"mean = torch.tensor({list(card['mean'])}).view(1, -1, 1, 1)\n"
        f"std = torch.tensor({list(card['std'])}).view(1, -1, 1, 1)\n"
        f"x = (images.float() / 255 - mean) / std  # images: uint8 [B, {c}, {h}, {w}]\n"
        f"features = model(x)  # [B, {card['num_features']}]")


def _torchvision_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    c = card["in_chans"]
    if _exported(card, "torchvision"):
        conv1 = "" if c == 3 else (f"model.conv1 = torch.nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, "
                                   f"bias=False)  # {c}-channel images\n")
        return _code(f"import torch, torchvision\nfrom safetensors.torch import load_file\n"
                     f"model = {torchvision_call(card)}\n"
                     f"model.fc = torch.nn.Identity()  # features, as the timm encoder\n{conv1}"
                     f"model.load_state_dict(load_file(\"{dir_name}/{FORMAT_FILES['torchvision']}\"))\n"
                     f"model.eval()")
    problem = torchvision_problem(card)
    if problem:
        return f"Not available for this encoder: {problem}.\n"
    return (f"`selfsup.export.to_torchvision(\"{dir_name}\")` returns it as a torchvision model; "
            f"{_how_to_write('torchvision', dir_name)}.\n")


def _torchscript_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    if not _exported(card, "torchscript"):
        return f"{_how_to_write('torchscript', dir_name)}.\n"
    return _code(f"import torch\nmodel = torch.jit.load(\"{dir_name}/{FORMAT_FILES['torchscript']}\")\n"
                 f"features = model(x)  # [B, {card['num_features']}]")


def _onnx_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    if not _exported(card, "onnx"):
        return (f"{_how_to_write('onnx', dir_name)} (ONNX opset {ONNX_OPSET}, dynamic batch axis; needs "
                f"`pip install 'selfsup[onnx]'`).\n")
    return _code(f"import onnxruntime\n"
                 f"session = onnxruntime.InferenceSession(\"{dir_name}/{FORMAT_FILES['onnx']}\")\n"
                 f"features = session.run([\"{ONNX_OUTPUT}\"], {{\"{ONNX_INPUT}\": x.numpy()}})[0]  "
                 f"# [B, {card['num_features']}], any batch size")


def _usage(card: Mapping[str, Any], dir_name: str) -> str:
    c, h, w = card["input_size"]
    intro = (f"Inputs are images resized to {h}x{w} with {c} channel{'s' * (c != 1)}, scaled to [0, 1] and "
             f"normalised per channel; the output is the pooled feature vector `[B, {card['num_features']}]` "
             f"(no classifier).\n")
    selfsup_snippet = _code(f"import selfsup\nmodel = selfsup.load_encoder(\"{dir_name}\")  "
                            f"# eval mode; model.selfsup_info has the input size, mean and std")
    parts = [intro, "**timm**\n", _timm_snippet(card, dir_name), "**selfsup**\n", selfsup_snippet,
             "**torchvision**\n", _torchvision_snippet(card, dir_name),
             "**TorchScript**\n", _torchscript_snippet(card, dir_name), "**ONNX**\n", _onnx_snippet(card, dir_name)]
    return "\n".join(parts)


def _files(card: Mapping[str, Any]) -> str:
    lines = ["| file | what | checked against the timm encoder |", "|---|---|---|",
             f"| `{WEIGHTS}` | the timm model's state dict | the reference |",
             f"| `{CARD}` | architecture, kwargs, input size, normalisation, training config, results | |"]
    what = {"torchscript": "TorchScript (traced)", "onnx": f"ONNX, opset {ONNX_OPSET}, dynamic batch axis",
            "torchvision": "state dict keyed for torchvision (no `fc`)"}
    for fmt, rec in (card.get("exports") or {}).items():
        check = (f"max abs diff {rec['max_abs_diff']:.2g} (bound {rec['tolerance']:.2g}), {rec['checked_with']}"
                 if rec.get("checked_with") else rec.get("note", "not checked"))
        lines.append(f"| `{rec['file']}` | {what.get(fmt, fmt)} | {check} |")
    return "\n".join(lines) + "\n"


def model_card_markdown(card: Mapping[str, Any], dir_name: str) -> str:
    """``README.md`` of an export directory: YAML front matter for the Hugging Face Hub, how the encoder
    was trained and how it scored (from the card), and how to load it with each library."""
    data = card.get("training_config", {}).get("data", {}).get("name", "?")
    intro = (f"# {card['architecture']} pretrained with {card['method']} (selfsup)\n\n"
             f"A timm `{card['architecture']}` encoder without classifier (`num_classes=0`), pretrained with "
             f"selfsup: {card.get('method_reference', card['method'])}.\n")
    training = ("## Training\n\n| | |\n|---|---|\n"
                + "".join(f"| {k} | {v} |\n" for k, v in _training_rows(card))
                + f"\nThe whole training config is `training_config` in `{CARD}`.\n")
    return "\n".join([_front_matter(card), intro, training, "## Evaluation\n",
                      results_markdown(card.get("results") or {}, data), "## Use\n", _usage(card, dir_name),
                      "## Files\n", _files(card)])
