"""Atomic writes: every file selfsup writes goes to a temporary name, then is renamed into place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (tensors made contiguous)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(obj: Any, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2) + "\n", path)


class DiskFullError(OSError):
    """The disk filled up while writing; the file that was being replaced is intact."""


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, flushed to disk, then
    renamed over ``path``: a crash (even SIGKILL) at any moment leaves either the old
    file or the new one, never a torn file. A full disk removes the temporary file and
    raises :class:`DiskFullError` naming the intact previous file."""
    import errno

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
            raise DiskFullError(err.errno, f"disk full while writing {path}: nothing was overwritten ({kept}); "
                                           f"free some space and resume the run with --resume") from None
        raise


def write_bytes(data: bytes, path: str | Path) -> None:
    """Binary file (a TorchScript archive, an ONNX model) written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written temporary file is left behind
        raise
