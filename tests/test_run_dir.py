"""A run directory is never damaged: a resume that would change what the checkpoint was
trained as is refused before anything is written, a new run never goes into a directory
that holds a run, a second process is locked out of a directory being written, and a
read-only place is named with how to choose another."""

import json
import csv
import errno
import os
import pathlib
import shutil
import signal
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from selfsup.cli import main
from selfsup.config import ConfigError
from selfsup.fileio import UnwritableError, lock_holder, write_json
from selfsup.train import workdir as run_mod
from selfsup.train.resume import resume_changes
from selfsup.train.run import pretrain
from selfsup.train.workdir import RUN_DIR_ENV, RunDirError, hold_run_dir

from conftest import ROOT, one_line_error, with_overrides

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
ENV.pop(RUN_DIR_ENV, None)
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
KWARGS = {"channels": [8, 16, 32, 64]}
TINY = ["data.name=digits", "data.image_size=16", "data.batch_size=64", "data.subset=128",
        "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.progress_bar=false",
        "trainer.precision=32-true", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
CLI = [sys.executable, "-c", "import sys; from selfsup.cli import main; sys.exit(main(sys.argv[1:]))"]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch run (128 images, batch 64: 2 steps) made by the CLI."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval", *TINY]) == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


# --------------------------------------------------------------------------- resume


def test_resume_with_another_architecture_is_refused_before_anything_is_written(run_copy, capsys):
    """The issue's case: --resume RUN encoder.kwargs={} used to crash inside the checkpoint
    load after rewriting config.yaml, so that a plain --resume failed too."""
    before = _files(run_copy)
    assert main(["pretrain", "--resume", str(run_copy), "encoder.kwargs={}", "--no-eval"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"encoder.kwargs {KWARGS!r} -> {{}}" in line
    assert "fresh --run-dir" in line and "trainer.max_epochs" in line
    assert _files(run_copy) == before  # config.yaml byte-identical, nothing added
    # a plain --resume still works: the run had finished, so it takes no further step, and says so (its
    # banner's "2 optimiser steps" are the schedule's, all taken before)
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run_copy), "--no-eval"]) == 0
    assert _step(run_copy) == 2
    assert ("[pretrain] nothing left to train: the checkpoint already holds all 2 optimiser steps of this schedule, "
            "so this resume took none; raise trainer.max_steps or trainer.max_epochs to train on"
            in capsys.readouterr().out)
    assert (run_copy / "config.yaml").read_bytes() == before["config.yaml"]  # unchanged config: not rewritten


@pytest.mark.parametrize("change", ["added", "changed"])
def test_a_resume_on_a_folder_whose_images_changed_is_refused_before_anything_is_written(tmp_path, capsys, change):
    """helper-63's: after images were added to (or changed in) the run's image folder, a resume trained on the
    new data with a new channel mean and std (written over data_info.json, read by the export) and said only
    "trainer.max_steps" changed; NPID failed in its memory bank's load. The data is checked against the run's
    data_info.json and a change is refused in one line, the run left as it was."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls in "ab":
        for i in range(8):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 120, (12, 12), dtype=np.uint8)).save(root / cls / f"{i}.png")
    run = tmp_path / "run"
    folder = ["data.name=image-folder", f"data.root={root}", "data.in_chans=1", "data.image_size=12",
              "data.batch_size=8", "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.progress_bar=false",
              "trainer.precision=32-true", "trainer.max_steps=1", "trainer.online_probe=false"]
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval", *folder]) == 0
    saved = json.loads((run / "data_info.json").read_text())
    if change == "added":
        for i in range(4):
            Image.new("L", (12, 12), 255).save(root / "a" / f"new{i}.png")
    else:  # as many files, other pixels
        Image.new("L", (12, 12), 255).save(root / "b" / "0.png")
    before = _files(run)
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "trainer.max_steps=2", "--no-eval"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("selfsup pretrain: error: cannot resume: the training data is not what this run trained "
                           "on (") and line.endswith("its files changed since, or it is other data); restore the "
                                                     "data the run started with, or start a new run with a fresh "
                                                     "--run-dir"), line
    assert (f"training images {saved['num_samples']} then, {saved['num_samples'] + 4} now" in line) == \
        (change == "added")
    assert f"channel mean {saved['mean']} then" in line
    assert _files(run) == before
    # helper-64's and -65's: `eval RUN` on the changed folder wrote its numbers as the run's own results; they
    # go to a folder of their own, saying why
    assert main(["eval", str(run), "eval.plots=false", "eval.probe_seeds=1", "eval.low_shot=[]"]) == 0
    out = capsys.readouterr().out
    assert f"[eval] the run's image folder {root} is not what it trained on (" in out and \
        f"channel mean {saved['mean']} then" in out, out
    assert not (run / "results.json").exists() and len(list(run.glob("eval-*/results.json"))) == 1


@pytest.mark.parametrize("override,key,old,new", [
    ("method.temperature=0.5", "method.temperature", 0.2, 0.5),
    ("encoder.name=resnet34", "encoder.name", "resnet18", "resnet34"),
    ("trainer.online_probe=false", "trainer.online_probe", True, False),  # the probe's weights are in the checkpoint
    ("data.name=fashion-mnist", "data.name", "digits", "fashion-mnist"),
    ("data.image_size=24", "data.image_size", 16, 24),
    ("seed=1", "seed", 0, 1),
    ("optim.lr=0.1", "optim.lr", 1.0, 0.1),
    ("trainer.max_steps=1", "trainer.max_steps", -1, 1),  # shorter than the epochs it had
    ("data.batch_size=32", "data.batch_size", 64, 32),  # the global batch the lr was scaled for
])
def test_resume_refuses_changes_to_what_was_trained(run_copy, capsys, override, key, old, new):
    before = _files(run_copy)
    assert main(["pretrain", "--resume", str(run_copy), override, "--no-eval"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"{key} {old!r} -> {new!r}" in line
    assert _files(run_copy) == before


def test_allowed_resume_changes_are_logged_and_the_previous_config_kept(run_copy, capsys):
    original = (run_copy / "config.yaml").read_bytes()
    assert main(["pretrain", "--resume", str(run_copy), "trainer.max_epochs=2", "eval.knn=[[5, 0.1]]",
                 "data.num_workers=1", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "[resume] config changes:" in out
    for change in ("trainer.max_epochs 1 -> 2", "eval.knn [[20, 0.07], [200, 0.1]] -> [[5, 0.1]]",
                   "data.num_workers 0 -> 1"):
        assert change in out
    assert (run_copy / "config.before-resume-1.yaml").read_bytes() == original
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["eval"]["knn"] == [[5, 0.1]]
    # two more steps from the checkpoint's 2, written to last.ckpt although the run directory was copied
    assert _step(run_copy) == 4 and not list(run_copy.glob("checkpoints/last-v*"))
    assert "nothing left to train" not in out


def test_resume_may_move_the_global_batch_between_devices_but_not_change_it(tiny_config):
    saved = tiny_config("data.batch_size=32", "trainer.devices=1")
    # 32 x 1 device = 16 x 2 devices = 8 x 2 devices x 2 accumulated batches
    assert resume_changes(saved, tiny_config("data.batch_size=16", "trainer.devices=2")) == [
        "data.batch_size 32 -> 16", "trainer.devices 1 -> 2"]
    assert len(resume_changes(saved, tiny_config("data.batch_size=8", "trainer.devices='0,1'",
                                                 "trainer.accumulate_grad_batches=2"))) == 3
    with pytest.raises(ConfigError, match=r"trainer.devices 1 -> 2 \(global batch 32 -> 64\)"):
        resume_changes(saved, tiny_config("data.batch_size=32", "trainer.devices=2"))
    with pytest.raises(ConfigError, match="devices=auto hides the device count"):
        resume_changes(saved, tiny_config("data.batch_size=16", "trainer.devices=auto"))


def test_a_resumed_run_can_only_get_longer(tiny_config):
    saved = tiny_config("trainer.max_epochs=4", "trainer.max_steps=40")
    assert resume_changes(saved, tiny_config("trainer.max_epochs=6", "trainer.max_steps=-1")) == [
        "trainer.max_epochs 4 -> 6", "trainer.max_steps 40 -> -1"]
    for shorter in ("trainer.max_epochs=3", "trainer.max_steps=39"):
        with pytest.raises(ConfigError, match="can only get longer"):
            resume_changes(saved, tiny_config("trainer.max_epochs=4", "trainer.max_steps=40", shorter))


# --------------------------------------------------------------------------- one run per directory


def test_new_run_into_a_directory_holding_a_run_is_refused(run_copy, tiny_config, capsys):
    before = _files(run_copy)
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run_copy), "--no-eval", *TINY]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "already holds a run" in line and f"--resume {run_copy}" in line and "fresh --run-dir" in line
    with pytest.raises(RunDirError, match="already holds a run"):
        pretrain(tiny_config("data.subset=128"), run_dir=run_copy, log=lambda s: None)
    assert _files(run_copy) == before
    # a directory that held only checkpoints (its config.yaml lost) is a run too
    (run_copy / "config.yaml").unlink()
    with pytest.raises(RunDirError, match=r"already holds a run \(checkpoints\)"):
        pretrain(tiny_config("data.subset=128"), run_dir=run_copy, log=lambda s: None)


def _start(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval",
                             *with_overrides(TINY, *extra)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_second_process_is_refused_while_the_first_writes_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    first = _start(run, "trainer.max_epochs=200")
    try:
        deadline = time.time() + 300
        # the first run's lock and its first checkpoint (a run killed before that one could be started again)
        while lock_holder(run / ".lock") != first.pid or not (run / "checkpoints" / "last.ckpt").is_file():
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline
            time.sleep(0.1)
        for args in (["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval", *TINY],
                     ["pretrain", "--resume", str(run), "--no-eval"]):
            assert main(args) == 2
            line = one_line_error(capsys.readouterr().err)
            assert f"in use: process {first.pid} is writing a run there" in line and "fresh --run-dir" in line
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock_holder(run / ".lock") is None  # a killed holder releases the lock
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval", *TINY]) == 2
    assert "already holds a run" in one_line_error(capsys.readouterr().err)


def test_two_runs_started_with_the_same_run_dir(tmp_path):
    """The issue's case: both used to exit 0, with metrics.csv mixing their rows."""
    run = tmp_path / "run"
    procs = [_start(run), _start(run)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    # Lightning may have logged its device lines before the lock was tried: one error line, no traceback
    errors = [line for line in refused.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in refused, refused
    assert errors[0].startswith("selfsup pretrain: error: run directory")
    assert "in use: process" in errors[0] or "already holds a run" in errors[0]
    assert _step(run) == 2  # one epoch of one run: 128 images / 64
    rows = [r for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("train/loss_step")]
    assert sorted(int(float(r["step"])) for r in rows) == [0, 1]  # one run's two steps, logged once


def test_processes_that_follow_rank_0_are_not_refused_by_its_lock(run_copy, monkeypatch):
    """Lightning's DDP launcher starts the other ranks after rank 0 locked the directory and
    wrote its config; they (SELFSUP_RUN_DIR set) and ranks > 0 of torchrun must go on."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from selfsup.fileio import file_lock\n"
                               "with file_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(120)",
                               str(run_copy / ".lock")], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"process {holder.pid}"):
            with hold_run_dir(run_copy, resume=True):
                pass
        monkeypatch.setenv(RUN_DIR_ENV, str(run_copy))
        with hold_run_dir(run_copy):  # a run directory in use and holding a run: no check, no lock
            pass
        monkeypatch.delenv(RUN_DIR_ENV)
        monkeypatch.setenv("RANK", "1")
        with hold_run_dir(run_copy):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunDirError, match=f"process {holder.pid}"):
            with hold_run_dir(run_copy):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_hold_is_reentrant_within_one_process(tmp_path):
    run = tmp_path / "run"
    with hold_run_dir(run):
        assert lock_holder(run / ".lock") == os.getpid()
        with hold_run_dir(run):  # the CLI holds the directory while pretrain holds it again
            pass
        assert run.resolve() in run_mod._HELD
    assert lock_holder(run / ".lock") is None and run.resolve() not in run_mod._HELD


# --------------------------------------------------------------------------- a read-only place


def _read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail as on a read-only disk (tests run as root, where chmod
    does not deny writes)."""
    real_mkdir, real_open, real_replace = pathlib.Path.mkdir, os.open, os.replace

    def under(p) -> bool:
        return Path(p).resolve().is_relative_to(root.resolve())

    def mkdir(self, *a, **k):
        if under(self) and not self.exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    def open_(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    def replace(src, dst, *a, **k):
        if under(dst):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "replace", replace)


WHERE = "choose a writable place: selfsup pretrain --run-dir DIR (or out_dir=DIR), selfsup eval --out DIR"


def test_read_only_run_directory_names_the_place_and_the_way_out(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "existing").mkdir()
    _read_only(monkeypatch, ro)
    # a new directory (--run-dir), the default one under out_dir, and an existing directory
    for args, where in [(["--run-dir", str(ro / "run")], ro / "run"),
                        ([f"out_dir={ro}"], None),
                        (["--run-dir", str(ro / "existing")], ro / "existing")]:
        assert main(["pretrain", QUICKSTART, "--no-eval", *TINY, *args]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith(f"selfsup pretrain: error: cannot write {where or ro}")
        assert "(Read-only file system)" in line and line.endswith(WHERE)
    assert sorted(p.name for p in ro.iterdir()) == ["existing"]


def test_every_atomic_write_names_a_forbidden_place(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "results.json").write_text("[]\n")
    _read_only(monkeypatch, ro)
    with pytest.raises(UnwritableError) as err:
        write_json([1], ro / "results.json")
    assert str(err.value) == f"cannot write {ro / 'results.json'} (Permission denied); {WHERE}"
    assert (ro / "results.json").read_text() == "[]\n" and sorted(p.name for p in ro.iterdir()) == ["results.json"]
    # selfsup eval --out on a read-only disk: one line, exit 2
    assert main(["eval", "pixels", "--out", str(ro / "eval"), "data.name=digits", "data.image_size=8",
                 "eval.linear=false"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"selfsup eval: error: cannot write {ro / 'eval'}") and line.endswith(WHERE)


def test_training_time_adds_each_resumed_session_and_a_new_run_starts_over(tmp_path):
    from selfsup.train.run import record_training_time

    path = tmp_path / "training_time.json"
    assert record_training_time(path, 12.5, 100, resumed=False) == {
        "seconds": 12.5, "steps": 100, "sessions": [{"seconds": 12.5, "steps": 100, "resumed": False}]}
    second = record_training_time(path, 7.25, 160, resumed=True)  # the resume went from step 100 to 160
    assert second["seconds"] == 19.75 and second["steps"] == 160
    assert [s["steps"] for s in second["sessions"]] == [100, 60]
    assert json.loads(path.read_text()) == second
    assert record_training_time(path, 3.0, 10, resumed=False)["sessions"] == [
        {"seconds": 3.0, "steps": 10, "resumed": False}]


@pytest.mark.parametrize("steps, batches, accumulate, said", [
    (1, 4, 1, 0.25),  # helper-52's: trainer.max_steps=1 of a 4-step epoch was recorded as "1 epoch completed"
    (8, 4, 1, 2), (4, 4, 1, 1), (0, 4, 1, 0),
    (3, 8, 2, 0.75),  # 8 batches, 2 per step: 4 steps an epoch
    (5, 7, 2, 1.25),  # 7 batches, 2 per step: the last step takes one batch, 4 steps an epoch
    (10, 3, 1, 3.33),
])
def test_epochs_trained_counts_a_cut_short_epoch_as_its_share(steps, batches, accumulate, said):
    from selfsup.train.run import epochs_trained

    got = epochs_trained(steps, batches, accumulate, lightning_epochs=99)
    assert got == said and isinstance(got, int) == isinstance(said, int)
    assert epochs_trained(steps, float("inf"), accumulate, lightning_epochs=7) == 7  # no epoch length: Lightning's


def test_a_resume_lightning_counts_as_finished_says_so_and_what_trains_on(tmp_path, capsys):
    """helper-57's: a run stopped by trainer.max_steps at an epoch's end (1 batch an epoch, 4 of max_epochs 5),
    resumed with max_steps 6: the banner planned 5 steps, Lightning took none (it counts the checkpoint's last
    epoch as finished) and the log said "the checkpoint already holds all 4 optimiser steps of this schedule".
    It now says what happened and the key that trains on."""
    run = tmp_path / "run"
    small = ["data.name=digits", "data.subset=64", "data.image_size=16", "data.batch_size=64",
             "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.progress_bar=false"]
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval", "trainer.max_epochs=5",
                 "trainer.max_steps=4", *small]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--no-eval", "trainer.max_steps=6"]) == 0
    out = capsys.readouterr().out
    assert _step(run) == 4 and "nothing left to train" not in out
    assert ("[pretrain] warning: this resume took no step although the schedule plans 5 and the checkpoint holds 4: "
            "Lightning counts the checkpoint's last epoch as finished" in out), out
    assert main(["pretrain", "--resume", str(run), "--no-eval", "trainer.max_steps=8", "trainer.max_epochs=7"]) == 0
    out = capsys.readouterr().out  # helper-60's: the same, after some steps, was said nowhere (298 of 300 planned)
    # (each resume here counts one more epoch as done: 5 steps in "7 epochs" of one batch, 2 short of the plan)
    assert _step(run) == 5 and ("[pretrain] warning: this resume stopped at optimiser step 5 of the 7 the schedule "
                                "plans: Lightning counts the checkpoint's last epoch as finished" in out), out
    advised = re.search(r"resume with trainer\.max_epochs=(\d+) to train on to trainer\.max_steps=8\n", out)
    assert advised and int(advised[1]) > 7, out
    assert main(["pretrain", "--resume", str(run), "--no-eval", f"trainer.max_epochs={advised[1]}"]) == 0
    out = capsys.readouterr().out
    assert _step(run) == 8 and "stopped at optimiser step" not in out, out  # the advised key reaches max_steps
    from selfsup.train.run import short_resume_warning

    assert short_resume_warning(16, 18, 6, 3, 6, -1).endswith(  # helper-61's run: -1 -> N is refused on resume
        "; with trainer.max_steps=-1 the plan grows with trainer.max_epochs, and a resume of such a checkpoint trains "
        "one epoch fewer than it plans: trainer.max_epochs=8 trains at least the 2 steps this one did not take (and "
        "is itself short of its plan)")
