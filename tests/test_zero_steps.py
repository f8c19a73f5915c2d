"""No step that trains nothing: settings that would take no optimiser step are refused
before anything is written, the step count is computed as the loader and Lightning will
batch the run (checked against the real loader), a run that ends without a step is an
error with nothing exported, and a config that silently trains on other data (a YAML
key given twice) is refused."""

import math

import pytest
import torch

from selfsup import distributed
from selfsup.cli import main
from selfsup.config import ConfigError, load_config, parse_yaml
from selfsup.data import TensorImages, make_loader
from selfsup.export import load_checkpoint
from selfsup.train import run as run_mod
from selfsup.train import steps as steps_mod
from selfsup.train.run import pretrain
from selfsup.train.steps import NoStepsError, plan_steps

from conftest import ROOT, one_line_error, with_overrides

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["data.name=digits", "data.image_size=16", "encoder.kwargs={channels: [8, 16, 32, 64]}",
        "trainer.progress_bar=false", "trainer.precision=32-true", "trainer.max_epochs=1"]


# --------------------------------------------------------------------------- refused before anything is written


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=1", "data.batch_size=1: a training batch needs at least 2 images"),  # the case
    ("trainer.max_steps=0", "trainer.max_steps=0 takes no optimiser step"),  # used to be accepted
    ("trainer.max_epochs=0", "config key 'trainer.max_epochs' must be > 0, got 0"),
    ("trainer.limit_train_batches=0.1", "trainer.limit_train_batches=0.1 of 2 batch(es) per epoch is 0 batches"),
    ("data.subset=1", "1 training image: a training batch needs at least 2 images"),
])
def test_a_run_that_would_take_no_step_is_refused(tmp_path, capsys, override, message):
    run = tmp_path / "run"
    args = ["pretrain", QUICKSTART, "--run-dir", str(run),
            *with_overrides([*TINY, "data.batch_size=64", "data.subset=128"], override)]
    assert main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert message in line
    assert not run.exists()  # nothing written: no directory, no config, no checkpoint, no export


# --------------------------------------------------------------------------- the step count


def _simulate(n: int, batch: int, limit, accumulate: int, epochs: int, max_steps: int, world: int = 1):
    """Steps, batches and dropped images by iterating the real loader (rank 0 of ``world``)
    and stepping as Lightning does: after ``accumulate`` batches or at an epoch's last one."""
    ds = TensorImages(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), 1)
    sizes = [len(b[0]) for b in make_loader(ds, batch, train=True)]  # one epoch, every batch
    used = len(sizes) if limit == 1.0 else (min(len(sizes), limit) if isinstance(limit, int)
                                            else int(len(sizes) * limit))
    steps = 0
    for _ in range(epochs):
        pending = 0
        for i in range(used):
            pending += 1
            if pending == accumulate or i == used - 1:
                steps, pending = steps + 1, 0
                if steps == max_steps:
                    return steps, used, n - sum(sizes) * world
    return steps, used, n - sum(sizes) * world


@pytest.mark.parametrize("n,batch,limit,accumulate,epochs,max_steps", [
    (1797, 64, 1.0, 1, 3, -1),  # digits: 28 batches, 5 images dropped per epoch
    (150, 64, 1.0, 1, 1, -1),
    (150, 16, 5, 3, 2, -1),  # two steps of 3 + 2 batches per epoch
    (150, 16, 0.5, 2, 3, 5),  # max_steps cuts the third epoch
    (40, 64, 1.0, 1, 2, -1),  # fewer images than a batch: one short batch, nothing dropped
    (128, 64, 1.0, 4, 5, -1),
])
def test_step_plan_matches_the_loader_and_lightnings_stepping(n, batch, limit, accumulate, epochs, max_steps):
    plan = plan_steps(n, batch, 1, limit, accumulate, epochs, max_steps)
    steps, batches, dropped = _simulate(n, batch, limit, accumulate, epochs, max_steps)
    assert (plan.total_steps, plan.batches_per_epoch, plan.dropped_per_epoch) == (steps, batches, dropped)


@pytest.mark.parametrize("n,batch,world", [(50, 4, 2), (1797, 64, 4), (256, 32, 8)])
def test_step_plan_of_several_processes_matches_the_sharded_sampler(monkeypatch, n, batch, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    plan = plan_steps(n, batch, world, 1.0, 1, 2, -1)
    steps, batches, dropped = _simulate(n, batch, 1.0, 1, 2, -1, world=world)
    assert (plan.total_steps, plan.batches_per_epoch, plan.dropped_per_epoch) == (steps, batches, dropped)
    assert dropped == n % (batch * world)
    with pytest.raises(ConfigError, match=rf"{batch * world - 1} training images are fewer than one global batch"):
        plan_steps(batch * world - 1, batch, world, 1.0, 1, 1, -1)


def test_the_run_reports_images_dropped_by_batching_and_takes_the_planned_steps(tiny_config, tmp_path):
    logs = []
    cfg = tiny_config("data.subset=150", "data.batch_size=16", "trainer.accumulate_grad_batches=3",
                      "trainer.limit_train_batches=5", "trainer.max_epochs=2", "trainer.precision=32-true")
    run = pretrain(cfg, run_dir=tmp_path / "run", log=logs.append)
    line = next(s for s in logs if s.startswith("[pretrain]"))
    # 150 = 9 x 16 + 6: 6 dropped; 5 of the 9 batches used (4 x 16 = 64 images left out); ceil(5 / 3) x 2 steps
    assert "5 batches of 16 per epoch, 6 image(s) of each epoch dropped by batching (drop_last)" in line
    assert "64 left out by trainer.limit_train_batches; 4 optimiser steps" in line
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4 == 2 * math.ceil(5 / 3)


# --------------------------------------------------------------------------- a run that took no step


def test_a_run_whose_every_batch_was_skipped_is_an_error_and_exports_nothing(tmp_path, monkeypatch, capsys):
    """The issue's data.batch_size=1, with the check before training switched off, as the
    state a run reaches when unreadable files leave every batch with fewer than 2 images:
    it used to log no loss and export the random initial weights with exit 0."""
    for module in (run_mod, steps_mod):  # pretrain's own check and plan_steps'
        monkeypatch.setattr(module, "check_trainable", lambda batch_size, max_steps: None)
    run = tmp_path / "run"
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run), *TINY, "data.batch_size=1", "data.subset=5"]) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert "the run trained nothing: all 5 batch(es) had fewer than 2 images" in line
    assert "[pretrain] 5 batch(es) of fewer than 2 images were skipped" in captured.out
    assert not (run / "export").exists() and not (run / "checkpoints").exists()
    assert not (run / "results.json").exists()
    with pytest.raises(NoStepsError):
        pretrain(load_config(QUICKSTART, [*TINY, "data.batch_size=1", "data.subset=3"]), run_dir=tmp_path / "api",
                 log=lambda s: None)


# --------------------------------------------------------------------------- YAML keys given twice


def _line_of(text: str, prefix: str, nth: int) -> int:
    return [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(prefix)][nth]


TWO_DATA_SECTIONS = """\
name: digits-run
method:
  name: simclr
data:
  name: digits
  image_size: 16
trainer:
  max_epochs: 1
data:
  name: fashion-mnist
"""


def test_two_data_sections_are_refused_naming_the_key_and_both_lines(tmp_path, capsys):
    """The issue's case: the second data: section replaced the first wholesale, and a
    "digits" config trained on 60,000 Fashion-MNIST images."""
    path = tmp_path / "digits.yaml"
    path.write_text(TWO_DATA_SECTIONS)
    first, second = _line_of(TWO_DATA_SECTIONS, "data:", 0), _line_of(TWO_DATA_SECTIONS, "data:", 1)
    assert (first, second) == (4, 9)
    with pytest.raises(ConfigError, match=rf"key 'data' is given twice \(lines {first} and {second}\)"):
        load_config(path)
    assert main(["pretrain", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"config file {str(path)!r}: key 'data' is given twice (lines 4 and 9)" in line and "merge them" in line
    assert not (tmp_path / "run").exists()


def test_nested_and_inline_duplicates_are_refused_and_merges_are_not():
    nested = "method:\n  name: simclr\n  augment:\n    crop_scale: [0.2, 1.0]\n    crop_scale: [0.5, 1.0]\n"
    with pytest.raises(ConfigError, match=r"key 'method.augment.crop_scale' is given twice \(lines 4 and 5\)"):
        parse_yaml(nested, "config file 'x.yaml'")
    with pytest.raises(ConfigError, match=r"key 'eval.knn\[0\].k' is given twice"):
        parse_yaml("eval:\n  knn:\n    - {k: 1, k: 2}\n", "x")
    with pytest.raises(ConfigError, match=r"override 'encoder.kwargs=\{a: 1, a: 2\}': key 'a' is given twice"):
        load_config(None, ["method.name=simclr", "encoder.kwargs={a: 1, a: 2}"])
    # a key repeated in two different mappings, and a key overriding one merged in with <<, are fine
    assert parse_yaml("a: {x: 1}\nb: {x: 2}\n", "x") == {"a": {"x": 1}, "b": {"x": 2}}
    assert parse_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n", "x")["run"] == {"x": 3, "y": 2}
