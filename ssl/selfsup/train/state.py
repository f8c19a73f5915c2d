"""What makes a killed run resumable to the same weights: atomic checkpoint files, the
random-number state inside every checkpoint, and logs that survive the restart.

With these, a run killed at any moment (SIGKILL included) and restarted with
``--resume`` continues from the last epoch-end checkpoint and replays exactly what the
uninterrupted run did: the batch order is a function of (seed, epoch)
(:class:`selfsup.data.EpochShuffle`), and the generators that draw augmentations,
masks and noise samples are restored from the checkpoint.
"""

from __future__ import annotations

import csv
import io
import random
from typing import Any

import numpy as np
import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from selfsup.fileio import save_torch, write_text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written by :func:`selfsup.fileio.save_torch`: temporary
    file, fsync, rename; a full disk leaves the previous checkpoint intact and says so."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("selfsup's checkpoint writer takes no storage_options")
        save_torch(checkpoint, path)


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, in types that load with
    ``torch.load(weights_only=True)`` (numpy's state as a tensor, Python's as a tuple)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        # this process's device only: every rank draws the same stream on its own device
        # (selfsup.distributed.draw_local), and rank 0's saved state restores them all
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, (list, tuple)) else cuda)  # lists: older checkpoints


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts (on a
    resumed run that would lose the metrics of everything before the crash) and rewrites
    the file in place, truncating it first, whenever a new metric name appears (a kill
    at that moment loses every row). This one keeps the file, appends (steps replayed
    after a crash appear twice), and rewrites it atomically."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        write_text(out.getvalue(), self.metrics_file_path)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose ``metrics.csv`` survives a resume (the module flushes the loggers
    before each checkpoint is written, so the file covers whatever a checkpoint holds)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _FabricWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
