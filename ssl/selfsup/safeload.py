"""What a file is, and reading it without running code: the one place that opens checkpoints and weights.

- :func:`describe_file` / :func:`describe_bytes` / :func:`describe_directory`: what a path holds (a PNG, a
  safetensors file, a TorchScript archive, an incomplete export directory, a run without a checkpoint, ...), for
  one-line errors that say what was found and what to pass instead;
- :func:`load_checkpoint`: a Lightning checkpoint read with ``torch.load(weights_only=True)``: nothing is
  unpickled that would import or call code;
- :func:`read_weights`: the tensors of a safetensors file; :func:`file_sha256`.

A path that cannot be loaded raises :class:`LoadError`. Bottom layer: imports only ``selfsup.rundir``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from selfsup.rundir import EXPORT_CONFIG as CARD
from selfsup.rundir import EXPORT_WEIGHTS as WEIGHTS
from selfsup.rundir import RunDir

WHAT_LOADS = ("an export directory (config.json + model.safetensors, written by `selfsup export`), a run "
              "directory (with checkpoints/last.ckpt) or a selfsup checkpoint (.ckpt)")


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


def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, for one-line errors."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def first_names(keys: Iterable[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in list(keys)[:n])


def list_directory(path: Path, n: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "nothing (it is empty)"
    return ", ".join(names[:n]) + (f", ... ({len(names)} entries)" if len(names) > n else "")


def describe_directory(path: str | Path) -> str:
    """Why directory ``path`` is neither an export directory nor a run directory, and what to pass instead."""
    path = Path(path)
    run = RunDir(path)
    where = repr(str(path))
    if (path / CARD).is_file() and not (path / WEIGHTS).is_file():
        return (f"{where} is an incomplete export directory: it has {CARD} but no {WEIGHTS}; export again with "
                f"`selfsup export RUN_DIR {path}`")
    if (path / WEIGHTS).is_file():
        return (f"{where} has {WEIGHTS} but no {CARD} card saying which architecture the weights are for; export "
                f"with `selfsup export RUN_DIR DIR`, or load plain timm weights with timm.create_model(NAME, "
                f"pretrained=True, pretrained_cfg_overlay=dict(file={str(path / WEIGHTS)!r}))")
    ckpts = run.checkpoint_files()
    if ckpts:
        return (f"{where} has no checkpoints/last.ckpt; pass one of its checkpoints instead: "
                f"{', '.join(str(c) for c in ckpts[:3])}")
    if run.is_run() and (run.export / CARD).is_file() and (run.export / WEIGHTS).is_file():
        return (f"{where} is a selfsup run directory whose checkpoints are gone (no checkpoints/last.ckpt); its "
                f"export holds the trained encoder: pass {str(run.export)!r}")
    if run.is_run() and (run.results_json.exists() or run.export.exists()):  # it trained, then lost its weights
        return (f"{where} is a selfsup run directory whose checkpoints are gone (no checkpoints/last.ckpt) and whose "
                f"export is missing or incomplete, so no file holds its trained weights; train it again in a new "
                f"directory: `selfsup pretrain {run.config} --run-dir NEW_DIR`")
    if run.is_run():  # nothing to resume: `pretrain --resume` refuses it too (selfsup.train.workdir.check_run_dir),
        # while a new run in the same directory sets this stopped attempt aside (stopped-attempt-N/)
        return (f"{where} is a selfsup run directory without a checkpoint (no checkpoints/last.ckpt): its "
                f"training stopped before the first one was saved, so it has no weights to load; start it again "
                f"with `selfsup pretrain {run.config} --run-dir {path}`")
    return (f"{where} is not a selfsup run directory (no checkpoints/last.ckpt) nor an export directory (no {CARD} "
            f"and {WEIGHTS}); it holds {list_directory(path)}. Pass {WHAT_LOADS}")


def find_checkpoint(path: str | Path) -> Path:
    """A run directory's last checkpoint, or the checkpoint file itself."""
    path = Path(path)
    if path.is_file():
        return path
    last = RunDir(path).last_checkpoint
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
        raise LoadError(f"cannot read {str(path)!r} as a selfsup checkpoint: {first_line(err)}; the file looks "
                        f"truncated or damaged") from None


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


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
