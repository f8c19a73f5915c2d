"""The run's metric loggers (``trainer.logger``): Lightning's own CSV, TensorBoard, W&B and MLflow loggers.

``csv`` is always on (``logs/metrics.csv``: ``selfsup plot`` and ``selfsup compare`` read it); the
others are added when listed. Each writes inside the run directory by default, so a machine with no
network works: TensorBoard's event files in ``tensorboard/``, W&B in ``wandb/`` (``trainer.wandb_mode=
offline``; ``wandb sync`` uploads it later), MLflow in a file store ``mlruns/`` unless
``trainer.mlflow_tracking_uri`` names a server. The W&B and MLflow run ids are kept in
``logs/logger_ids.json`` so that ``--resume`` continues the same runs instead of starting new ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger

from selfsup.config import ConfigError, TrainerConfig
from selfsup.fileio import write_json
from selfsup.rundir import RunDir
from selfsup.train.state import ResumableCSVLogger

# logger name -> (the module it imports, the pip requirement that provides it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}


def check_logger_packages(names: list[str]) -> None:
    """Refuse, before anything is written, a logger whose package is not installed.

    Raises:
        ConfigError: (one line) naming the logger and the pip install that provides it.
    """
    for name in names:
        module, pip_name = PACKAGES.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"trainer.logger lists {name!r}, but the {module} package is not installed: "
                              f"pip install {pip_name} (or remove {name} from trainer.logger)")


def read_logger_ids(run_dir: Path) -> dict[str, str]:
    """The W&B / MLflow run ids a resumed run continues ({} for a new run or an unreadable file)."""
    path = RunDir(run_dir).logger_ids
    try:
        ids = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in ids.items() if isinstance(v, str)} if isinstance(ids, dict) else {}


def build_loggers(t: TrainerConfig, run_dir: Path, resume: bool) -> list[Logger]:
    """The Lightning loggers of ``t.logger`` (CSV first, always). Nothing is written until training starts.

    Raises:
        ConfigError: a listed logger's package is missing (:func:`check_logger_packages`).
    """
    check_logger_packages(t.logger)
    run = RunDir(run_dir)
    ids = read_logger_ids(run_dir) if resume else {}
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=str(run_dir), name="", version=run.logs_name)]
    if "tensorboard" in t.logger:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version=run.tensorboard.name))
    if "wandb" in t.logger:
        from lightning.pytorch.loggers import WandbLogger

        # wandb places its files in save_dir/wandb; the id is ours so that a resume continues the run
        loggers.append(WandbLogger(name=Path(run_dir).resolve().name, project=t.logger_project,
                                   save_dir=str(run_dir), offline=t.wandb_mode == "offline",
                                   id=ids.get("wandb") or uuid.uuid4().hex[:12], resume="allow"))
    if "mlflow" in t.logger:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = t.mlflow_tracking_uri or run.mlruns.resolve().as_uri()
        if not t.mlflow_tracking_uri:
            # MLflow 3 keeps its file store (the one store that needs no server) behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        loggers.append(MLFlowLogger(experiment_name=t.logger_project, run_name=Path(run_dir).resolve().name,
                                    tracking_uri=uri, run_id=ids.get("mlflow")))
    return loggers


# what to do when a logger cannot start its run, by the trainer.logger name
START_FIX = {"wandb": "log in with `wandb login` (or set WANDB_API_KEY), or set trainer.wandb_mode=offline and "
                      "upload later with `wandb sync`",
             "mlflow": "check trainer.mlflow_tracking_uri (its server must be reachable), or leave it empty to log "
                       "to mlruns/ in the run directory",
             "tensorboard": "check that the run directory is writable"}
LOGGER_NAMES = {"WandbLogger": "wandb", "MLFlowLogger": "mlflow", "TensorBoardLogger": "tensorboard"}


class LoggerStartError(RuntimeError):
    """A logger of ``trainer.logger`` could not start its run (no login, no server); nothing was trained."""


def start_loggers(loggers: list[Logger]) -> None:
    """Start every non-CSV logger's run now, before training, so that a logger that cannot
    start (W&B online without a login, an unreachable MLflow server) stops the run with one
    line rather than a traceback from inside the first training step. Call on rank 0 only.

    Raises:
        LoggerStartError: (one line) naming the logger, its own error's first line and the fix.
    """
    for logger in loggers:
        name = LOGGER_NAMES.get(type(logger).__name__)
        if name is None:
            continue
        try:
            logger.experiment  # noqa: B018 (Lightning's loggers start their run on first access)
        except Exception as err:  # any failure of the logger's package: its own message, one line
            lines = str(err).strip().splitlines()
            raise LoggerStartError(
                f"trainer.logger {name} could not start its run ({type(err).__name__}: "
                f"{lines[0] if lines else 'no message'}); {START_FIX[name]}. Nothing was trained: the same command "
                f"starts again in this run directory") from None


class LoggerSessions(L.Callback):
    """Writes ``logs/logger_ids.json`` (W&B and MLflow run ids) when training starts, on rank 0, and
    closes the W&B run when training ends, however it ends (W&B writes its records on close)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunDir(run_dir).logger_ids

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ids: dict[str, Any] = {}
        for logger in trainer.loggers:
            kind = type(logger).__name__
            if kind == "WandbLogger":
                ids["wandb"] = logger.version
            elif kind == "MLFlowLogger":
                ids["mlflow"] = logger.run_id
        if ids:
            write_json(ids, self.path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
                logger.experiment.finish()
