"""Crash safety: a checkpoint being written when the process is SIGKILLed never replaces
the previous one with a torn file; a full disk leaves the previous file intact; a run
killed mid-training and resumed with --resume ends with the same weights, optimiser
state and queues as a run that never stopped."""

import csv
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup.fileio import DiskFullError, save_torch

from spy_pretrain import SCRIPT as SPY, SPY_ENV, assert_resumed_from

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}

SAVER = """
import sys, torch
from selfsup.fileio import save_torch
path = sys.argv[1]
i = 1
while True:  # each version is a 16 MB tensor filled with its number
    save_torch({"version": i, "data": torch.full((4_000_000,), float(i))}, path)
    print(i, flush=True)
    i += 1
"""


def test_sigkill_while_saving_never_tears_the_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_torch({"version": 0, "data": torch.full((4_000_000,), 0.0)}, path)
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env=ENV, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one save has completed; kill at a random moment of a later one
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["version"] >= 1
        assert torch.equal(ckpt["data"], torch.full((4_000_000,), float(ckpt["version"])))  # one whole version
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert all(name.endswith(".tmp") for name in leftovers)  # at most a dead writer's temporary file


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_torch({"version": 1}, path)

    def no_space(obj, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DiskFullError, match="previous last.ckpt is intact"):
        save_torch({"version": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial temporary file is gone


TINY = ["data.name=digits", "data.image_size=16", "data.batch_size=64", "encoder.name=resnet18",
        "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.progress_bar=false",
        "trainer.max_epochs=6", "trainer.log_every_n_steps=5", "trainer.precision=32-true"]


def _pretrain(config: str, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = ["pretrain", config, "--run-dir", str(run_dir), "--no-eval", *TINY, *extra]
    return subprocess.Popen([sys.executable, "-c", "import sys; from selfsup.cli import main; sys.exit(main(sys.argv[1:]))",
                             *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _final_state(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {"weights": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"], "step": ckpt["global_step"]}


def _assert_identical(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


@pytest.mark.parametrize("config,extra", [
    ("configs/quickstart.yaml", []),  # SimCLR: no state beyond weights and optimiser
    ("configs/moco-fashion-mnist.yaml", ["method.queue_size=256", "method.bn_splits=1"]),  # a queue of keys
])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, config, extra):
    config = str(ROOT / config)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _pretrain(config, straight, *extra)
    assert proc.wait() == 0, proc.stderr.read()

    proc = _pretrain(config, killed, *extra)
    last = killed / "checkpoints" / "last.ckpt"
    while not last.exists():  # kill during the second epoch, after the first checkpoint
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    assert proc.poll() is None  # still training when killed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = torch.load(last, weights_only=True)
    assert cut["epoch"] < 5  # it really was cut short of the six epochs

    spy = tmp_path / "spy"
    spy.mkdir()
    resumed = subprocess.run([sys.executable, str(SPY), "pretrain", "--resume", str(killed), "--no-eval"],
                             env={**ENV, SPY_ENV: str(spy)}, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _final_state(straight), _final_state(killed)
    assert a["step"] == b["step"] > 0
    # the resumed process trained only the steps after the checkpoint, from its state: a restart
    # from step 0 (same seed, same data order) would end with the same step count and weights
    assert_resumed_from(spy, cut, final_step=b["step"])
    _assert_identical(a, b, "final state")  # bitwise: same data order, same random streams
    rows = list(csv.DictReader((killed / "logs" / "metrics.csv").open()))
    assert min(int(float(r["step"])) for r in rows) < 10  # the metrics from before the crash survive the resume
