"""Training wrapper: online probe isolation, config in checkpoints, resume, non-finite losses
and gradients."""

from pathlib import Path

import pytest
import torch

from selfsup.export import load_checkpoint
from selfsup.train.module import NonFiniteLossError, PretrainModule
from selfsup.train.optim import build_optimizer, cosine_factors
from selfsup.train.run import pretrain

from conftest import TINY_INFO as INFO  # noqa: E402


def test_online_probe_never_changes_encoder_gradients(tiny_config):
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    labels = torch.arange(8)
    grads = []
    for probe in (True, False):
        torch.manual_seed(0)
        module = PretrainModule(tiny_config(f"trainer.online_probe={str(probe).lower()}"), INFO)
        assert (module.probe is not None) == probe
        torch.manual_seed(1)
        loss = module.training_step((images, labels), 0)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in module.method.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_no_weight_decay_on_norms_and_biases(tiny_config):
    module = PretrainModule(tiny_config("optim.weight_decay=0.1"), INFO)
    opt = build_optimizer(module.cfg.optim, module.method, 64)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in module.method.named_parameters():
        expected = 0.0 if p.ndim <= 1 else 0.1
        assert decay[id(p)] == expected, name


def test_cosine_schedule_shape():
    f = cosine_factors(100, 10, 0.1)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[100] == pytest.approx(0.1)
    assert torch.all(f[10:].diff() <= 1e-12)  # decays monotonically after warmup


def spy_training_steps(monkeypatch) -> list[tuple[int, dict[str, torch.Tensor] | None]]:
    """Records ``(global_step, state)`` at every ``PretrainModule.training_step`` call from now
    on; ``state`` (a copy of the module's state_dict) only for the first call."""
    calls: list[tuple[int, dict[str, torch.Tensor] | None]] = []
    real = PretrainModule.training_step

    def spy(self, batch, batch_idx):
        state = None if calls else {k: v.detach().clone() for k, v in self.state_dict().items()}
        calls.append((self.global_step, state))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(PretrainModule, "training_step", spy)
    return calls


def test_checkpoint_holds_config_and_resume_continues(tiny_config, tmp_path, monkeypatch):
    """The resumed run trains only the steps left (a restart from step 0 reaches the same
    global_step, so the step count alone proves nothing), starting from the checkpoint's
    weights, buffers and step number."""
    cfg = tiny_config("trainer.max_epochs=1", "data.subset=256", "trainer.precision=32-true")
    run = pretrain(cfg, run_dir=tmp_path / "run", log=lambda s: None)
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["selfsup"]["config"]["method"]["name"] == "simclr"
    assert ckpt["global_step"] == 4  # 256 images / batch 64
    assert (run / "config.yaml").is_file() and (run / "logs" / "metrics.csv").is_file()
    calls = spy_training_steps(monkeypatch)
    longer = tiny_config("trainer.max_epochs=2", "data.subset=256", "trainer.precision=32-true")
    pretrain(longer, run_dir=run, resume=True, log=lambda s: None)
    assert [step for step, _ in calls] == [4, 5, 6, 7]  # the second epoch only, numbered on from the checkpoint
    first = calls[0][1]
    assert first.keys() == ckpt["state_dict"].keys()
    for key, value in ckpt["state_dict"].items():  # the first resumed step starts from the checkpoint's state
        assert torch.equal(first[key], value), key
    ckpt2 = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt2["global_step"] == 8
    assert ckpt2["selfsup"]["config"]["trainer"]["max_epochs"] == 2
    assert not torch.equal(ckpt2["state_dict"]["method.encoder.conv1.weight"], first["method.encoder.conv1.weight"])


def test_non_finite_loss_stops_with_step_and_terms(tiny_config):
    module = PretrainModule(tiny_config(), INFO)
    images = torch.full((8, 1, 16, 16), 0, dtype=torch.uint8)
    with torch.no_grad():
        for p in module.method.projector.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 0 .*terms"):
        module.training_step((images, torch.zeros(8, dtype=torch.long)), 0)


@pytest.mark.parametrize("temperature, named", [(1e-30, True), (5e-4, True), (0.1, False), (1e-3, False)])
def test_a_non_finite_loss_with_a_tiny_temperature_names_it(tiny_config, temperature, named):
    """helper-52's: method.temperature=1e-30 ended in "the loss is not finite ... Lower optim.lr", naming neither
    the temperature nor the way out; one below every temperature in use (1e-3) is named."""
    module = PretrainModule(tiny_config(f"method.temperature={temperature}"), INFO)
    with torch.no_grad():
        for p in module.method.projector.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError) as err:
        module.training_step((torch.zeros(8, 1, 16, 16, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)), 0)
    said = f"or raise method.temperature ({temperature:g}: the similarities divided by it reach {1 / temperature:.1e}"
    assert (said in str(err.value)) == named, str(err.value)


def test_first_non_finite_grad_matches_a_naive_scan():
    """The fused check names the same parameter as a plain loop over every gradient, for NaN,
    +inf and -inf anywhere, and passes huge finite gradients (a 2-norm of them would overflow)."""
    from selfsup.train.module import first_non_finite_grad

    def naive(named):
        return next((n for n, p in named if p.grad is not None and not bool(torch.isfinite(p.grad).all())), None)

    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 3), (1,), (7, 2)]
    assert first_non_finite_grad([]) is None
    for trial in range(30):
        named = [(f"p{i}", torch.nn.Parameter(torch.randn(s, generator=gen))) for i, s in enumerate(shapes)]
        for i, (_, p) in enumerate(named):
            if i != trial % len(shapes):  # one parameter without a gradient
                p.grad = torch.randn(p.shape, generator=gen) * 3e38  # finite, near float32's max
        for _ in range(trial % 3):  # 0, 1 or 2 non-finite entries
            i = int(torch.randint(len(shapes), (1,), generator=gen))
            if named[i][1].grad is not None:
                g = named[i][1].grad.view(-1)
                where = int(torch.randint(g.numel(), (1,), generator=gen))
                g[where] = [float("nan"), float("inf"), -float("inf")][trial % 3]
        assert first_non_finite_grad(named) == naive(named), trial


def test_non_finite_gradient_stops_naming_the_parameter(tiny_config, tmp_path, monkeypatch, capsys):
    """A NaN gradient (injected by a hook at step 2) under a finite loss stops the run before
    the optimiser steps, naming the parameter, the step and the precision; the CLI prints it as
    its one-line error."""
    from selfsup.cli import main
    from selfsup.train.module import NonFiniteGradientError

    target = "method.encoder.layer2.0.conv1.weight"
    real_start = PretrainModule.on_train_start

    def inject(self):
        real_start(self)
        param = dict(self.named_parameters())[target]
        param.register_hook(lambda g: torch.full_like(g, float("nan")) if self.global_step == 2 else g)

    monkeypatch.setattr(PretrainModule, "on_train_start", inject)
    cfg = tiny_config("trainer.max_epochs=1", "data.subset=256", "trainer.precision=32-true")
    with pytest.raises(NonFiniteGradientError) as err:
        pretrain(cfg, run_dir=tmp_path / "run", log=lambda s: None)
    message = str(err.value)
    assert message.startswith(f"the gradient of {target} is not finite at epoch 0, step 2 "
                              f"(trainer.precision=32-true; the loss was finite). No optimiser step was taken")
    assert message.endswith("Lower optim.lr.") and "\n" not in message

    quickstart = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    code = main(["pretrain", quickstart, "--run-dir", str(tmp_path / "cli"), "--no-eval",
                 "data.name=digits", "data.image_size=16", "data.batch_size=64", "data.subset=256",
                 "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.max_epochs=1",
                 "trainer.progress_bar=false", "trainer.precision=32-true"])
    assert code == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines[-1].startswith(f"selfsup pretrain: error: the gradient of {target} is not finite at epoch 0, "
                                    f"step 2")
    assert "Traceback" not in "\n".join(err_lines)


@pytest.mark.parametrize("precision,scaler,fix", [
    ("32-true", None, "Lower optim.lr."),
    ("bf16-mixed", None, "Set trainer.precision=32-true (half precision is the usual cause), or lower optim.lr."),
    ("16-mixed", torch.amp.GradScaler("cpu"), None),  # the GradScaler skips steps with inf gradients itself
])
def test_non_finite_gradient_check_by_precision(tiny_config, precision, scaler, fix):
    from types import SimpleNamespace

    from selfsup.train.module import NonFiniteGradientError

    module = PretrainModule(tiny_config(), INFO)
    module._trainer = SimpleNamespace(precision=precision, precision_plugin=SimpleNamespace(scaler=scaler),
                                      current_epoch=1, global_step=7, checkpoint_callback=None)
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    module.on_before_optimizer_step(None)  # all finite: nothing to say
    module.method.projector[0].weight.grad[0, 0] = float("inf")
    if fix is None:
        module.on_before_optimizer_step(None)
        return
    with pytest.raises(NonFiniteGradientError, match=rf"^the gradient of method\.projector\.0\.weight is not finite "
                                                     rf"at epoch 1, step 7 \(trainer\.precision={precision};"):
        module.on_before_optimizer_step(None)
    with pytest.raises(NonFiniteGradientError) as err:
        module.on_before_optimizer_step(None)
    assert str(err.value).endswith(f"the last good checkpoint is none yet. {fix}")


def test_methods_with_per_image_state_get_dataset_indices(tiny_config, tmp_path):
    """npid's memory bank is sized from the data and every training image's row is written."""
    cfg = tiny_config("data.subset=128", "method.num_noise=16", "trainer.max_epochs=1", method="npid")
    run = pretrain(cfg, run_dir=tmp_path / "run", log=lambda s: None)
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    bank_labels = state["method.bank_labels"]
    assert bank_labels.shape == (128,)
    assert (bank_labels >= 0).all()  # one epoch over 128 images (2 batches of 64) filled every row


def test_gradient_accumulation_steps_the_momentum_teacher_once_per_optimiser_step(tiny_config, tmp_path, monkeypatch):
    """With trainer.accumulate_grad_batches=3 the method's per-step hook (MoCo's EMA update)
    runs once per optimiser step, not per batch, and the lr is scaled for the batch of
    batch_size x 3 that each step sees."""
    from selfsup.methods.moco import MoCo

    calls = []
    original = MoCo.on_train_step_end
    monkeypatch.setattr(MoCo, "on_train_step_end", lambda self, step, total: (calls.append(step), original(self, step, total)))
    cfg = tiny_config("method.name=moco", "method.queue_size=128", "method.bn_splits=1", "data.batch_size=16",
                      "trainer.accumulate_grad_batches=3", "trainer.limit_train_batches=9", "trainer.max_epochs=2",
                      "optim.lr_scaling=linear", "optim.warmup_epochs=0")
    run = pretrain(cfg, run_dir=tmp_path / "run", log=lambda s: None)
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6  # 2 epochs x 9 batches / 3
    assert calls == [1, 2, 3, 4, 5, 6]
    peak = ckpt["lr_schedulers"][0]["base_lrs"][0]
    assert peak == pytest.approx(cfg.optim.lr * 16 * 3 / 256)


@pytest.mark.parametrize("requested,total,expected", [(10, 100, 10), (60, 100, 50), (5, 5, 2), (3, 1, 0), (0, 7, 0)])
def test_warmup_never_takes_more_than_half_the_run(requested, total, expected):
    """The tour's case: epochs=1 with warmup_epochs=1 was all warmup, ending at the peak lr."""
    from selfsup.schedules import warmup_steps

    assert warmup_steps(requested, total) == expected
    f = cosine_factors(total, warmup_steps(requested, total), 0.0)
    assert f[-1] == pytest.approx(0.0)  # the cosine decay ran to its end whatever the warmup asked


def test_a_one_epoch_run_with_a_one_epoch_warmup_still_decays(tiny_config):
    """Every user of the schedule (pretraining here) applies the rule: the lr peaks at half the run."""
    from selfsup.train.optim import build_scheduler

    module = PretrainModule(tiny_config("optim.warmup_epochs=1"), INFO)
    opt = build_optimizer(module.cfg.optim, module.method, 64)
    sched = build_scheduler(opt, module.cfg.optim, total_steps=10, steps_per_epoch=10)
    peak = opt.param_groups[0]["lr"] / sched.lr_lambdas[0](0)
    lrs = [sched.lr_lambdas[0](s) * peak for s in range(11)]
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 4 and lrs[10] == pytest.approx(0.0)
