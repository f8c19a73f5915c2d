"""Atomic writes: every file selfsup writes goes to a temporary name in the same
directory, is flushed to disk, then renamed into place. A crash (even SIGKILL) at any
moment leaves either the old file or the new one, never a torn file; a failed write
removes its temporary file, a full disk says that the previous file is intact, and a
read-only or forbidden place says where selfsup tried to write and how to choose another.

Also here: :func:`file_lock`, the advisory lock (``flock``) that guards a run directory
against a second process and lets one process build a decoded data cache while the
others wait."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor


class WriteError(OSError):
    """A file selfsup writes could not be written; the message says where and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(WriteError):
    """The disk filled up while writing; the file that was being replaced is intact."""


class UnwritableError(WriteError):
    """The place selfsup writes to is read-only or forbidden."""


class LockedError(OSError):
    """Another process holds the lock; ``holder`` is its pid when it wrote one."""

    def __init__(self, path: Path, holder: int | None) -> None:
        super().__init__(errno.EWOULDBLOCK, f"{path} is locked by process {holder if holder else '(unknown)'}")
        self.path, self.holder = path, holder


UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
WHERE_INSTEAD = ("choose a writable place: selfsup pretrain --run-dir DIR (or out_dir=DIR), "
                 "selfsup eval --out DIR")


def unwritable(path: str | Path, err: OSError) -> UnwritableError:
    """The one-line error for a write to ``path`` refused by the file system (``err``)."""
    reason = err.strerror or os.strerror(err.errno or 0)
    return UnwritableError(err.errno, f"cannot write {path} ({reason}); {WHERE_INSTEAD}")


def ensure_dir(path: str | Path) -> Path:
    """``path`` created with its parents; :class:`UnwritableError` when the file system refuses."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno in UNWRITABLE:
            raise unwritable(path, err) from None
        raise
    return path


def current_umask() -> int:
    """The process's umask (from /proc on Linux, which reads it without changing it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block finishes, the file written
    there is fsynced and renamed over ``path``. On any failure the temporary file is
    removed and ``path`` is untouched (a full disk raises :class:`DiskFullError`)."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = _tmp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only place: nothing was written there either
            pass
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
            raise DiskFullError(err.errno, f"disk full while writing {path}: nothing was overwritten ({kept}); "
                                           f"free some space (a training run then continues with --resume)") from None
        if isinstance(err, OSError) and not isinstance(err, WriteError) and err.errno in UNWRITABLE:
            raise unwritable(path, err) from None
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


def read_json_or_none(path: str | Path) -> Any:
    """The JSON value in ``path``; None when the file is missing or not readable JSON (the caller says what
    that means where it matters)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` written atomically (checkpoints go through this)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def _read_holder(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


@contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing; this process's pid is
    written in it) for the block. ``wait=False`` raises :class:`LockedError` naming the
    holder's pid instead of waiting. The lock goes with the process: a killed holder
    releases it. Raises :class:`UnwritableError` when the lock file cannot be created."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if err.errno in UNWRITABLE:
            raise unwritable(path.parent, err) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(path, _read_holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(path: str | Path) -> int | None:
    """The pid written in lock file ``path`` while another process holds it (0 if it has
    not written it yet); None when nobody holds it or it does not exist. Reads only."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or 0
        return None
    finally:
        os.close(fd)
