"""Training wrapper: online probe isolation, config in checkpoints, resume, non-finite losses."""

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


def test_checkpoint_holds_config_and_resume_continues(tiny_config, tmp_path):
    cfg = tiny_config("trainer.max_epochs=1", "data.subset=256")
    run = pretrain(cfg, run_dir=tmp_path / "run", log=lambda s: None)
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["selfsup"]["config"]["method"]["name"] == "simclr"
    assert ckpt["global_step"] == 4  # 256 images / batch 64
    assert (run / "config.yaml").is_file() and (run / "logs" / "metrics.csv").is_file()
    longer = tiny_config("trainer.max_epochs=2", "data.subset=256")
    pretrain(longer, run_dir=run, resume=True, log=lambda s: None)
    ckpt2 = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt2["global_step"] == 8  # continued from step 4, not restarted
    assert ckpt2["selfsup"]["config"]["trainer"]["max_epochs"] == 2


def test_non_finite_loss_stops_with_step_and_terms(tiny_config):
    module = PretrainModule(tiny_config(), INFO)
    images = torch.full((8, 1, 16, 16), 0, dtype=torch.uint8)
    with torch.no_grad():
        for p in module.method.projector.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 0 .*terms"):
        module.training_step((images, torch.zeros(8, dtype=torch.long)), 0)


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
