"""Every registered method: one training step on tiny data trains the encoder and its heads.

Parametrised over the registry, so a new method file is covered without editing this test.
"""

import pytest
import torch

from selfsup.config import method_name
from selfsup.data import DataInfo
from selfsup.methods import METHODS
from selfsup.train.module import PretrainModule

INFO = DataInfo(in_chans=1, image_size=16, num_classes=10, mean=(0.3,), std=(0.3,))


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_reduces_nothing_to_nan_and_reaches_every_parameter(name, tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config(method=name)
    assert method_name(cfg) == name
    module = PretrainModule(cfg, INFO)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    out = module.method.training_step(images)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["features"].shape == (8, module.method.num_features) and not out["features"].requires_grad
    out["loss"].backward()
    no_grad = [n for n, p in module.method.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters untouched by the loss: {no_grad[:5]}"
    assert module.method.exported_encoder() is module.method.encoder or name in ()


@pytest.mark.parametrize("name", METHODS.names())
def test_method_config_has_citation_and_defaults(name):
    cls = METHODS.get(name)
    import sys

    doc = sys.modules[cls.__module__].__doc__
    assert doc and any(ch.isdigit() for ch in doc), "the method's module docstring cites the paper (authors, year)"
    cls.Config()  # every hyper-parameter has a default
