"""trainer.logger: Lightning's CSV (always), TensorBoard, W&B (offline) and MLflow (file store) loggers
receive the same training metrics as logs/metrics.csv, a resume continues the same W&B / MLflow runs,
and a logger whose package is missing is refused before anything is written."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from selfsup.cli import main
from selfsup.config import ConfigError, load_config

from conftest import ROOT, one_line_error

TINY = ["data.name=digits", "data.image_size=8", "data.batch_size=128", "data.subset=512",
        "encoder.kwargs={channels: [8, 8, 16, 16]}", "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1", "trainer.monitor_every_n_steps=0", "trainer.online_probe=false"]


def _csv_losses(run) -> dict[int, float]:
    rows = csv.DictReader((run / "logs" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}


def test_every_logger_gets_the_csv_metrics_offline_and_a_resume_continues_their_runs(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    args = ["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "--no-eval", *TINY,
            "trainer.logger=[csv, tensorboard, wandb, mlflow]", "trainer.wandb_mode=offline"]
    assert main([*args, "trainer.max_epochs=1"]) == 0
    losses = _csv_losses(run)
    assert len(losses) == 4  # 512 images / batch 128, one row per step

    # TensorBoard: the same loss at the same steps
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train/loss_step")}
    assert tb.keys() == losses.keys() and all(abs(tb[s] - losses[s]) < 1e-6 for s in losses)

    # MLflow's file store in the run directory: the same values, read back through MLflow's own client
    ids = json.loads((run / "logs" / "logger_ids.json").read_text())
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    history = {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "train/loss_step")}
    assert history.keys() == losses.keys() and all(abs(history[s] - losses[s]) < 1e-6 for s in losses)
    assert client.get_run(ids["mlflow"]).info.run_name == "run"

    # W&B offline: one local run named by the saved id, holding the metric (its records are protobuf)
    offline = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(offline) == 1
    assert b"train/loss_step" in (offline[0] / f"run-{ids['wandb']}.wandb").read_bytes()

    # a resume to 2 epochs logs into the same MLflow and W&B runs
    assert main(["pretrain", "--resume", str(run), "--no-eval", "trainer.max_epochs=2"]) == 0
    assert json.loads((run / "logs" / "logger_ids.json").read_text()) == ids
    history = {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "train/loss_step")}
    assert history.keys() == _csv_losses(run).keys() and len(history) == 8
    assert len(client.search_runs([client.get_experiment_by_name("selfsup").experiment_id])) == 1
    assert len(list((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))) == 2  # W&B: one folder per session


@pytest.mark.parametrize("name,module,pip_name", [("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow-skinny"),
                                                  ("tensorboard", "tensorboard", "tensorboard")])
def test_a_logger_whose_package_is_missing_is_refused_before_the_run_starts(tmp_path, capsys, monkeypatch,
                                                                          name, module, pip_name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    run = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), *TINY,
                 f"trainer.logger=[csv, {name}]"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"trainer.logger lists {name!r}, but the {module} package is not installed: pip install {pip_name}" in line
    assert not run.exists()


def test_logger_names_are_checked_and_csv_is_the_default():
    assert load_config(ROOT / "configs" / "quickstart.yaml").trainer.logger == ["csv"]
    with pytest.raises(ConfigError, match=r"'trainer.logger' must be list\['csv' \| 'tensorboard' \| 'wandb' \| "
                                          r"'mlflow'\] \| 'csv'.*got \['csv', 'neptune'\]"):
        load_config(ROOT / "configs" / "quickstart.yaml", ["trainer.logger=[csv, neptune]"])
    # one logger without brackets is a list of one; a logger named twice is refused
    assert load_config(ROOT / "configs" / "quickstart.yaml", ["trainer.logger=wandb"]).trainer.logger == ["wandb"]
    with pytest.raises(ConfigError, match=r"logger lists a logger twice: \['csv', 'csv'\]"):
        load_config(ROOT / "configs" / "quickstart.yaml", ["trainer.logger=[csv, csv]"])
