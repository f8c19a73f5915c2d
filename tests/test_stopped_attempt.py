"""A run that stops before its first checkpoint (a logger that cannot start, a killed first epoch,
a run that trained nothing) leaves a run directory with nothing to resume. It used to be a trap: the
same command was refused ("already holds a run: continue it with --resume") and --resume was refused
("last.ckpt does not exist"). Now the same command starts again there, setting the stopped
attempt's files aside, and --resume says so; a directory that keeps a checkpoint, results or an
export is still refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, one_line_error, with_overrides
from selfsup.cli import main
from selfsup.rundir import RunDir
from selfsup.train.workdir import RunDirError, check_run_dir, set_aside_stopped_attempt, stopped_attempt

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
CLI = [sys.executable, "-c", "import sys; from selfsup.cli import main; sys.exit(main(sys.argv[1:]))"]
TINY = ["data.name=digits", "data.image_size=16", "data.batch_size=64", "data.subset=128",
        "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.progress_bar=false",
        "trainer.precision=32-true", "trainer.max_epochs=1", "trainer.online_probe=false",
        "trainer.monitor_every_n_steps=0"]


def _error_line(err: str) -> str:
    """The CLI's one error line; Lightning's INFO lines about the devices may come before it (the failure is
    inside the run), but no traceback and no second error line."""
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _config_loggers(path) -> list[str]:
    return yaml.safe_load(path.read_text())["trainer"]["logger"]


def test_a_logger_that_cannot_start_is_one_line_and_the_same_command_then_starts_again(tmp_path, capsys):
    """The tour's case: W&B online without a login printed wandb's traceback and left the trap. The W&B run
    is a separate process: wandb patches the process's console streams, which later tests would inherit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # wandb sets some in-process
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "home" / "wandb"), WANDB_SILENT="true",
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "ssl"))  # no ~/.netrc, no wandb settings here
    run = tmp_path / "run"
    args = ["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval", *TINY]
    done = subprocess.run([*CLI, *args, "trainer.logger=[wandb]", "trainer.wandb_mode=online"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    line = _error_line(done.stderr)
    assert line.startswith("selfsup pretrain: error: trainer.logger wandb could not start its run (")
    assert "wandb login" in line and "trainer.wandb_mode=offline" in line
    assert RunDir(run).config.is_file() and not RunDir(run).checkpoint_files()
    assert stopped_attempt(run)

    # --resume has nothing to continue, and says how to start again
    assert main(["pretrain", "--resume", str(run), "--no-eval"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "stopped before its first checkpoint" in line
    assert f"selfsup pretrain {run / 'config.yaml'} --run-dir {run}" in line

    # the same command (the logger fixed) trains there; the stopped attempt's files are kept, not deleted
    assert main([*args, "trainer.logger=[csv]"]) == 0
    out = capsys.readouterr().out
    kept = run / "stopped-attempt-1"
    assert f"its files are kept in {kept}" in out
    assert _config_loggers(kept / "config.yaml") == ["wandb"] and _config_loggers(run / "config.yaml") == ["csv"]
    assert RunDir(run).last_checkpoint.is_file() and not stopped_attempt(run)
    # the trained run is refused again, as any run with a checkpoint
    assert main([*args]) == 2
    assert "already holds a run" in one_line_error(capsys.readouterr().err)


def _stopped_run(run, *files: str) -> None:
    for name in ("config.yaml", *files):
        path = run / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_text(name)


@pytest.mark.parametrize("files", [(), ("checkpoints/", "training_time.json"), ("logs/metrics.csv", "data_info.json")],
                         ids=["killed-before-writing-logs", "trained-nothing", "killed-in-first-epoch"])
def test_every_run_without_a_checkpoint_may_be_started_again_and_keeps_its_files(tmp_path, files):
    run = tmp_path / "run"
    _stopped_run(run, *files)
    before = {p.relative_to(run): p.read_text() for p in run.rglob("*") if p.is_file()}
    check_run_dir(run, resume=False)  # no error: nothing there to keep or continue
    with pytest.raises(FileNotFoundError, match="stopped before its first checkpoint"):
        check_run_dir(run, resume=True)
    kept = set_aside_stopped_attempt(run)
    assert kept == run / "stopped-attempt-1"
    assert sorted(p.name for p in run.iterdir()) == ["stopped-attempt-1"]
    assert {p.relative_to(kept): p.read_text() for p in kept.rglob("*") if p.is_file()} == before
    # a second stopped attempt goes beside the first
    _stopped_run(run)
    assert set_aside_stopped_attempt(run) == run / "stopped-attempt-2"
    assert (run / "stopped-attempt-1" / "config.yaml").is_file() and set_aside_stopped_attempt(run) is None


@pytest.mark.parametrize("kept,advice", [("checkpoints/epoch000.ckpt", "selfsup pretrain --resume"),
                                         ("results.json", "no checkpoint left to resume"),
                                         ("export/model.safetensors", "no checkpoint left to resume")])
def test_a_run_that_kept_a_checkpoint_results_or_an_export_is_never_set_aside(tmp_path, kept, advice):
    run = tmp_path / "run"
    _stopped_run(run, kept)
    assert not stopped_attempt(run)
    with pytest.raises(RunDirError, match="already holds a run") as err:
        check_run_dir(run, resume=False)
    assert advice in str(err.value) and "fresh --run-dir" in str(err.value)
    assert set_aside_stopped_attempt(run) is None and (run / kept).is_file()


def test_a_run_that_trained_nothing_can_be_started_again_with_the_same_command(tmp_path, monkeypatch, capsys):
    """NoStepsError removes the run's checkpoints (its untrained weights): its directory is a stopped attempt."""
    from selfsup.train import run as run_mod
    from selfsup.train import steps as steps_mod

    run = tmp_path / "run"
    head = ["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval"]
    args = [*head, *TINY]
    with monkeypatch.context() as patch:
        for module in (run_mod, steps_mod):  # let batches of 1 image reach training: every one is skipped
            patch.setattr(module, "check_trainable", lambda batch_size, max_steps: None)
        assert main([*head, *with_overrides(TINY, "data.batch_size=1", "data.subset=3")]) == 2
    # (its one-line form is tests/test_zero_steps.py's; stderr here may also hold Lightning's log lines)
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("selfsup pretrain: error: ")]
    assert len(errors) == 1 and "the run trained nothing" in errors[0] and "run the same command again" in errors[0]
    assert stopped_attempt(run)
    assert main(args) == 0
    assert json.loads(RunDir(run).training_time.read_text())["steps"] == 2  # 128 images / 64
    assert (run / "stopped-attempt-1" / "config.yaml").is_file()
