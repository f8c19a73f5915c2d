"""The layout of a run directory, and nothing else: every module asks :class:`RunDir` for a path.

A run directory (``selfsup pretrain`` writes one under ``runs/``) holds::

    config.yaml            the resolved run config (what built the model)
    data_info.json         what the method saw of the data (channels, size, mean/std, ...)
    data_fingerprint.json  an image folder's files as they were (a hash of their stats), so that a later
                           evaluation sees unchanged data without decoding it again
    bad_files.txt          images of an image folder that could not be decoded (when there were any)
    .lock                  held (flock) by the process writing the run; holds its pid
    checkpoints/last.ckpt  the last Lightning checkpoint (other *.ckpt beside it)
    logs/                  CSV (and TensorBoard) logs
    features/              cached frozen features of the evaluation
    results.json / .md     evaluation rows and their markdown table
    training_time.json     wall seconds and steps of each training session
    plots/                 PNG pictures of the run (selfsup plot RUN_DIR redraws them)
    export/                the export directory (see selfsup.artifacts.exportdir)
    eval-<data>[-<hash>]/  `selfsup eval RUN` on other data or eval settings than the run's
    detection/<dataset>-<hash>/  `selfsup eval RUN --task detection` (one folder per detection settings)

This module sits on the bottom layer (beside ``fileio``): it imports nothing from selfsup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
DATA_INFO_FILE = "data_info.json"
DATA_FINGERPRINT = "data_fingerprint.json"
BAD_FILES = "bad_files.txt"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOGS_DIR = "logs"
FEATURES_DIR = "features"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
TRAINING_TIME = "training_time.json"
LOGGER_IDS = "logger_ids.json"
PLOTS_DIR = "plots"
EXPORT_DIR = "export"
DETECTION_DIR = "detection"


@dataclass(frozen=True)
class RunDir:
    """The paths of run directory ``root`` (none of them needs to exist)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def data_info(self) -> Path:
        return self.root / DATA_INFO_FILE

    @property
    def data_fingerprint(self) -> Path:
        return self.root / DATA_FINGERPRINT

    @property
    def bad_files(self) -> Path:
        return self.root / BAD_FILES

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def logs_name(self) -> str:
        """The logs folder's name inside ``root`` (Lightning's loggers take the root and this name)."""
        return LOGS_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def metrics_csv(self) -> Path:
        """Lightning's CSV log of every logged value (the loss, learning rate, probe accuracy...)."""
        return self.logs / "metrics.csv"

    @property
    def features(self) -> Path:
        return self.root / FEATURES_DIR

    @property
    def results_json(self) -> Path:
        return self.root / RESULTS_JSON

    @property
    def results_md(self) -> Path:
        return self.root / RESULTS_MD

    @property
    def training_time(self) -> Path:
        """Wall seconds of each training session (``selfsup pretrain`` and every ``--resume``)."""
        return self.root / TRAINING_TIME

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files (``trainer.logger`` with tensorboard)."""
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        """W&B's local files (``trainer.logger`` with wandb; all of it in offline mode)."""
        return self.root / "wandb"

    @property
    def mlruns(self) -> Path:
        """MLflow's file store when ``trainer.mlflow_tracking_uri`` is empty."""
        return self.root / "mlruns"

    @property
    def logger_ids(self) -> Path:
        """The W&B / MLflow run ids of the run (``logs/logger_ids.json``): a resume continues those runs."""
        return self.logs / LOGGER_IDS

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def export(self) -> Path:
        return self.root / EXPORT_DIR

    @property
    def detection(self) -> Path:
        return self.root / DETECTION_DIR

    def eval_dir(self, tag: str) -> Path:
        """Where `selfsup eval RUN` writes for other data or eval settings: ``eval-<tag>/``."""
        return self.root / f"eval-{tag}"

    def evaluation_folders(self) -> list[Path]:
        """The run's evaluation folders that hold a results.json, sorted: ``eval-*/`` (other data or settings),
        ``transfer-*/`` and ``eval-*/transfer-*/`` (``--protocol``), ``detection/*/`` (``--task detection``)."""
        found = [*self.root.glob("eval-*/"), *self.root.glob("transfer-*/"), *self.root.glob("eval-*/transfer-*/"),
                 *self.detection.glob("*/")]
        return sorted(d for d in found if (d / RESULTS_JSON).is_file())

    def checkpoint_files(self) -> list[Path]:
        """The ``*.ckpt`` files in ``checkpoints/``, sorted by name (empty when there is none)."""
        return sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []

    def is_run(self) -> bool:
        """Whether ``root`` is a run directory (it has ``config.yaml``)."""
        return self.config.is_file()

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file()


# The export directory's own files (written by selfsup.artifacts.exportdir; interop files are named in
# selfsup.artifacts.interop). Named here so that the bottom layer can tell an export directory from a run.
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_README = "README.md"


def run_steps(path: str | Path) -> int | None:
    """The optimiser steps run directory ``path`` has trained (``training_time.json``'s ``steps``); None
    for anything else (an export, a checkpoint file, ``pixels``) or a run without the record."""
    import json

    run = RunDir(Path(path))  # "pixels" or "random:NAME" name no run directory
    try:
        steps = json.loads(run.training_time.read_text()).get("steps") if run.is_run() else None
    except (OSError, ValueError, AttributeError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def bad_file_count(path: str | Path) -> int:
    """How many image files run directory ``path`` left out as unreadable: the distinct files of its
    ``bad_files.txt`` (one ``file<TAB>reason`` line each, a file listed again by a later session counted
    once); 0 without the file."""
    try:
        lines = RunDir(Path(path)).bad_files.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    return len({line.split("\t")[0] for line in lines if line})


def steps_text(n: int) -> str:
    """"1 optimiser step", "4 optimiser steps"."""
    return f"{n} optimiser step{'s' * (n != 1)}"


def training_pid(path: str | Path) -> int | None:
    """The pid of another process that holds run directory ``path``'s lock (``selfsup pretrain`` training it
    now; 0 when it has not written its pid yet); None when no other process does, or ``path`` is no run."""
    import os

    from selfsup.fileio import lock_holder  # lazy: fileio imports torch, and this module stays light

    run = RunDir(Path(path))
    holder = lock_holder(run.lock) if run.is_run() else None
    return None if holder is None or holder == os.getpid() else holder


def weights_record(spec: str, kind: str) -> dict[str, Any]:
    """What a result row of target ``spec`` (its ``kind``) records of the weights it measured: for a run
    (``kind`` "pretrained" with a step record) ``trained_steps`` (:func:`run_steps`) and ``target_path`` (the
    run, resolved), so that a resume training on since is seen however the run was named; for a run another
    process is training now ``mid_training`` (True) instead of the steps (its step record is of an earlier
    training, not of the checkpoint read; :func:`training_warning` says so); ``{}`` for anything else."""
    if kind != "pretrained" or not RunDir(Path(spec)).is_run():
        return {}
    where = {"target_path": str(Path(spec).resolve())}
    if training_pid(spec) is not None:
        return {"mid_training": True, **where}
    steps = run_steps(spec)
    return {} if steps is None else {"trained_steps": steps, **where}


def training_warning(spec: str, kind: str) -> str | None:
    """The warning of a result of run ``spec`` measured while another process was training it: the numbers of
    the checkpoint it had written by then, not of the weights the run will end with; None otherwise."""
    pid = training_pid(spec) if kind == "pretrained" else None
    if pid is None:
        return None
    who = f"process {pid}" if pid else "another process"
    return (f"{spec} was being trained by {who} when evaluated: these are the numbers of its last checkpoint "
            f"then, not of its final weights; evaluate it again when its training has ended")


def results_behind(rows: list[dict[str, Any]], now: int | None) -> str | None:
    """How the run's own results among ``rows`` (a results.json: rows with ``trained_steps`` or
    ``mid_training``, see :func:`weights_record`) are not of the run's weights now, which have trained ``now``
    optimiser steps: "after N optimiser steps" (a resume trained on since, with ``--no-eval``) or "of a
    checkpoint read while it was still training"; None when they are of its weights now, or the counts are
    unknown."""
    for r in rows:
        if not isinstance(r, dict):
            continue
        if r.get("mid_training"):
            return "of a checkpoint read while it was still training"
        then = r.get("trained_steps")
        if isinstance(then, int) and not isinstance(then, bool) and now is not None and then != now:
            return f"after {steps_text(then)}"
    return None


def nearest_run(folder: str | Path, levels: int = 2) -> Path | None:
    """The run directory ``folder`` sits in, up to ``levels`` folders above it (``RUN/eval-x``,
    ``RUN/transfer-y``, ``RUN/eval-x/transfer-y``); None when there is none."""
    here = Path(folder).resolve()
    for parent in list(here.parents)[:levels]:
        if RunDir(parent).is_run():
            return parent
    return None


def target_key(spec: str) -> str:
    """One key per encoder target however it is spelled: ``pixels`` and ``random:NAME`` as written, a path
    resolved (``r1``, ``r1/``, ``./r1`` and ``~/x/r1`` are one run)."""
    if spec == "pixels" or spec.startswith("random:"):
        return spec
    return str(Path(spec).expanduser().resolve())


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an export directory's ``config.json`` and ``model.safetensors``."""
    path = Path(path)
    return (path / EXPORT_CONFIG).is_file() and (path / EXPORT_WEIGHTS).is_file()
