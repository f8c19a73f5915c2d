"""Encoders whose pooled output is wider or narrower than timm's ``num_features`` (the channel count
of the last feature map): MobileNetV3's conv_head, a resnet with ``global_pool='catavgmax'``. Every
method's heads, the online probe and the export card take the width ``encoder(x)`` really has."""

import pytest
import torch

import selfsup
from selfsup.encoders import create_encoder, pooled_width
from selfsup.methods import METHODS
from selfsup.train.module import PretrainModule

from conftest import TINY_INFO as INFO  # noqa: E402

CATAVGMAX = ("resnet18", "{channels: [8, 16, 32, 64], stem_width: 8, global_pool: catavgmax}")
MOBILENET = ("mobilenetv3_small_050", "{}")


@pytest.mark.parametrize("name,kwargs", [CATAVGMAX, MOBILENET])
def test_pooled_width_is_what_the_encoder_returns(name, kwargs):
    import yaml

    enc = create_encoder(name, 1, yaml.safe_load(kwargs)).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 1, 32, 32))  # [2, D]
    assert out.shape[1] == pooled_width(enc) and pooled_width(enc) != enc.num_features  # 128 vs 64; 1024 vs 288


@pytest.mark.parametrize("method", [m for m in METHODS.names() if not METHODS.get(m).requires_vit])
@pytest.mark.parametrize("name,kwargs", [CATAVGMAX, MOBILENET])
def test_every_convnet_method_trains_a_step_on_such_an_encoder(method, name, kwargs, tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config(f"encoder.name={name}", f"encoder.kwargs={kwargs}", method=method)
    module = PretrainModule(cfg, INFO)
    n = 8
    images = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8)
    out = module.method.step(images, labels=torch.arange(n) % 10, indices=torch.arange(n))
    assert torch.isfinite(out["loss"]) and out["features"].shape == (n, pooled_width(module.method.encoder))
    out["loss"].backward()


def test_export_card_states_the_pooled_width_and_loads(tmp_path, tiny_config):
    from selfsup.export import make_card, write_export

    name, kwargs = CATAVGMAX
    cfg = tiny_config(f"encoder.name={name}", f"encoder.kwargs={kwargs}")
    torch.manual_seed(0)
    enc = create_encoder(name, 1, cfg.encoder.kwargs).eval()
    out = write_export(enc, make_card(cfg, INFO, enc), tmp_path / "export")
    loaded = selfsup.load_encoder(out)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert loaded(x).shape == (3, 128) and torch.equal(loaded(x), enc(x))
    import json

    assert json.loads((out / "config.json").read_text())["num_features"] == 128
