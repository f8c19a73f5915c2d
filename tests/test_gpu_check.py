"""benchmarks/gpu_check.py on the CPU: the per-method check passes for a method that trains
and fails for one whose encoder does not move or whose loss is NaN; the Lightning-run check
accepts the expected refusal and checks a run's logged losses and checkpoint (its GPU-only
settings are replaced by CPU ones here)."""

import argparse
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def args(*overrides: str) -> argparse.Namespace:
    return argparse.Namespace(seed=0, runs="/tmp/selfsup-test-gpu-check", steps=1,
                              overrides=["data.subset=64", "data.batch_size=16", "trainer.accelerator=cpu",
                                         *overrides])


def test_a_method_that_trains_passes_on_the_cpu():
    row = gpu_check.check_method("npid", args())
    assert row["ok"], row
    assert row["device"] == "cpu" and row["not_on_device"] == []
    assert row["encoder_max_change"] > 0 and row["encoder_grad_norm"] > 0 and row["steps_per_s"] > 0


def test_an_encoder_that_does_not_move_fails_the_check(monkeypatch):
    import methods
    import torch

    monkeypatch.setattr(methods, "build_optimizer", lambda cfg, method, batch: torch.optim.SGD(method.parameters(), lr=0.0))
    row = gpu_check.check_method("rotation", args())
    assert not row["ok"] and row["encoder_max_change"] == 0.0


def test_a_nan_loss_fails_the_check(monkeypatch):
    from selfsup.methods.rotation import Rotation

    real = Rotation.training_step

    def nan_loss(self, *a, **k):
        out = real(self, *a, **k)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(Rotation, "training_step", nan_loss)
    row = gpu_check.check_method("rotation", args())
    assert not row["ok"] and row["last_loss"] != row["last_loss"]  # NaN


def test_fsdp_is_refused_for_a_momentum_teacher_before_any_training():
    ns = args()
    ns.fit_steps = 2
    row = gpu_check.check_fit("fsdp-refuses-teacher", "moco", ns, ["trainer.strategy=fsdp"], "momentum teacher")
    assert row["ok"] and "momentum teacher" in row["refused"]


def test_a_lightning_run_is_checked_by_its_logged_losses_and_its_checkpoint():
    ns = args("trainer.accelerator=cpu")
    ns.fit_steps = 3
    row = gpu_check.check_fit("cpu-run", "rotation", ns, [])
    assert row["ok"] and row["losses_logged"] == 3 and row["checkpoint_step"] == 3
    ns.fit_steps = 2  # a run that logged fewer steps than asked fails
    assert gpu_check.check_fit("cpu-run", "rotation", ns, ["trainer.max_steps=1"])["ok"] is False
    unexpected = gpu_check.check_fit("cpu-run", "rotation", ns, [], expect_error="momentum teacher")
    assert unexpected == {"check": "fit:cpu-run", "ok": False, "refused": None}  # no refusal where one was expected
