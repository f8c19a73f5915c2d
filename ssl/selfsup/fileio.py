"""Atomic writes: every file selfsup writes goes to a temporary name in the same
directory, is flushed to disk, then renamed into place. A crash (even SIGKILL) at any
moment leaves either the old file or the new one, never a torn file; a failed write
removes its temporary file, and a full disk says that the previous file is intact."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor


class DiskFullError(OSError):
    """The disk filled up while writing; the file that was being replaced is intact."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block finishes, the file written
    there is fsynced and renamed over ``path``. On any failure the temporary file is
    removed and ``path`` is untouched (a full disk raises :class:`DiskFullError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
            raise DiskFullError(err.errno, f"disk full while writing {path}: nothing was overwritten ({kept}); "
                                           f"free some space (a training run then continues with --resume)") from None
        raise


def save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (tensors made contiguous)."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def write_bytes(data: bytes, path: str | Path) -> None:
    """Binary file (a TorchScript archive, an ONNX model) written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2) + "\n", path)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` written atomically (checkpoints go through this)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
