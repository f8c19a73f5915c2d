"""Every registered method: one training step on tiny data trains the encoder and its heads.

Parametrised over the registry, so a new method file is covered without editing this test.
"""

import pytest
import torch

from selfsup.config import method_name
from selfsup.methods import METHODS
from selfsup.train.module import PretrainModule

from conftest import TINY_INFO as INFO  # noqa: E402


def train_step(method, images):
    """One step with labels and dataset indices at hand (the method takes what it declares)."""
    n = images.shape[0]
    return method.step(images, labels=torch.arange(n) % 10, indices=torch.arange(n))


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_reduces_nothing_to_nan_and_reaches_every_parameter(name, tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config(method=name)
    assert method_name(cfg) == name
    module = PretrainModule(cfg, INFO)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    out = train_step(module.method, images)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["features"].shape == (8, module.method.num_features) and not out["features"].requires_grad
    out["loss"].backward()
    no_grad = [n for n, p in module.method.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters untouched by the loss: {no_grad[:5]}"
    assert module.method.exported_encoder() is module.method.encoder


@pytest.mark.parametrize("name", [n for n in METHODS.names()
                                  if METHODS.get(n).needs_labels or METHODS.get(n).needs_indices])
def test_the_training_module_feeds_each_method_what_it_declares(name, tiny_config, monkeypatch):
    """PretrainModule.training_step passes the batch's own dataset indices and labels to methods that need them."""
    torch.manual_seed(0)
    module = PretrainModule(tiny_config("trainer.online_probe=false", method=name), INFO)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    labels, indices = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]), torch.tensor([7, 0, 6, 1, 5, 2, 4, 3])
    seen = {}
    real = module.method.training_step

    def spy(imgs, **kwargs):
        seen.update(kwargs)
        return real(imgs, **kwargs)

    monkeypatch.setattr(module.method, "training_step", spy)
    loss = module.training_step((images, labels, indices), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(seen["labels"], labels)
    if METHODS.get(name).needs_indices:
        assert torch.equal(seen["indices"], indices)
        with pytest.raises(ValueError, match="needs dataset indices"):
            module.training_step((images, labels), 0)
    else:
        assert "indices" not in seen


@pytest.mark.parametrize("name", METHODS.names())
def test_method_config_has_citation_and_defaults(name):
    cls = METHODS.get(name)
    import sys

    doc = sys.modules[cls.__module__].__doc__
    assert doc and any(ch.isdigit() for ch in doc), "the method's module docstring cites the paper (authors, year)"
    cls.Config()  # every hyper-parameter has a default


@pytest.mark.parametrize("name", METHODS.names())
def test_two_steps_move_the_encoder_and_a_checkpoint_restores_identical_features(name, tiny_config):
    from selfsup.train.module import module_from_checkpoint

    torch.manual_seed(0)
    module = PretrainModule(tiny_config(method=name), INFO)
    encoder = module.method.exported_encoder()
    before = {k: p.detach().clone() for k, p in encoder.named_parameters()}
    opt = torch.optim.SGD(module.method.parameters(), lr=0.05, momentum=0.9)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    for step in range(2):
        opt.zero_grad()
        loss = train_step(module.method, images)["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        module.method.on_train_step_end(step, 2)
    moved = [k for k, p in encoder.named_parameters() if not torch.equal(p, before[k])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} encoder tensors changed"

    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    restored = module_from_checkpoint(checkpoint)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(module.eval().method.exported_encoder()(x), restored.eval().method.exported_encoder()(x))
    for key, value in module.method.state_dict().items():  # heads, decoders, buffers such as jigsaw's permutations
        assert torch.equal(value, restored.method.state_dict()[key]), key


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_under_bf16_autocast_and_gradient_checkpointing(name, tiny_config):
    """What trainer.precision=bf16-mixed and trainer.grad_checkpointing do on a GPU, on the CPU:
    every method's step runs under autocast (queues, banks and losses keep their dtypes) and
    with timm's activation checkpointing, to the same loss and gradients as without it."""
    cfg = tiny_config("trainer.grad_checkpointing=true", method=name)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    torch.manual_seed(0)
    module = PretrainModule(cfg, INFO)
    assert module.method.encoder.grad_checkpointing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = train_step(module.method, images)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in module.method.parameters() if p.grad is not None)
    for buf in module.method.buffers():  # queues and banks were not turned into bf16
        assert buf.dtype in (torch.float32, torch.int64, torch.bool, torch.long), buf.dtype

    # checkpointing recomputes the same activations: same loss and gradients as without it
    ref_cfg = tiny_config(method=name)
    torch.manual_seed(0)
    ref = PretrainModule(ref_cfg, INFO)
    torch.manual_seed(1)
    a = train_step(ref.method, images)
    a["loss"].backward()
    torch.manual_seed(0)
    ckpt = PretrainModule(cfg, INFO)
    torch.manual_seed(1)
    b = train_step(ckpt.method, images)
    b["loss"].backward()
    torch.testing.assert_close(a["loss"], b["loss"])
    for (n, p), q in zip(ref.method.named_parameters(), ckpt.method.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_grad_checkpointing_on_an_encoder_without_it_is_a_config_error(tiny_config):
    from selfsup.config import ConfigError

    cfg = tiny_config("encoder.name=dla34", "encoder.kwargs={}", "trainer.grad_checkpointing=true")
    with pytest.raises(ConfigError, match="does not support gradient checkpointing; set it to false"):
        PretrainModule(cfg, INFO)
