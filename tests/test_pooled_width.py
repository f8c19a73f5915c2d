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

CATAVGMAX = ("resnet18", "{channels: [8, 16, 32, 64], global_pool: catavgmax}")
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


@pytest.mark.parametrize("config,extra,message", [
    ("mocov3-fashion-mnist.yaml", ["encoder.name=resnet18"],
     "method 'mocov3' on encoder 'resnet18': freeze_patch_embed keeps a ViT's patch projection fixed and this "
     "encoder has none; set method.freeze_patch_embed=false"),
    ("mae-fashion-mnist.yaml", ["encoder.name=resnet18"], "method 'mae' on encoder 'resnet18': method 'mae' needs a timm "
     "VisionTransformer encoder"),
    ("cpc-fashion-mnist.yaml", ["encoder.name=vit_tiny_patch16_224",
                                "encoder.kwargs={img_size: 16, patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}"],
     "method 'cpc' on encoder 'vit_tiny_patch16_224': cpc embeds small patches of any size; use a convolutional"),
])
def test_a_method_refusing_its_encoder_is_one_line_before_training(config, extra, message, tmp_path, capsys):
    """A shipped config on an encoder its method cannot use (a user swapping encoder.name) used to end in
    an 18-line traceback (rc 1); it is one `error:` line (rc 2) and no run directory holds a checkpoint."""
    from conftest import ROOT
    from selfsup.cli import main

    kwargs = [] if any(e.startswith("encoder.kwargs") for e in extra) else [
        "encoder.kwargs={channels: [8, 16, 32, 64]}"]
    code = main(["pretrain", str(ROOT / "configs" / config), "--run-dir", str(tmp_path / "run"), "data.name=digits",
                 "data.image_size=16", "trainer.max_steps=1", "--no-eval", *extra, *kwargs])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"selfsup pretrain: error: {message}"), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_encoder_kwargs_key_that_is_no_python_name_is_refused(tmp_path, capsys):
    """`{channels:[8,16,32,64],stem_width:8}` (no space after the colons): YAML makes keys
    'channels:[8' ... and 'stem_width:8' with null values; timm dropped them silently, and the
    export's timm call was invalid Python. Refused in one line naming the fix."""
    from conftest import ROOT
    from selfsup.cli import main
    from selfsup.encoders import EncoderError

    with pytest.raises(EncoderError, match=r"^encoder.kwargs key 'stem_width:8' is not a Python keyword name: YAML "
                                           r"reads `stem_width:8` as one key with no value; write `stem_width: 8`"):
        create_encoder("resnet18", 1, {"stem_width:8": None})
    with pytest.raises(EncoderError, match=r"key 'stem width' is not a Python keyword name; use timm's"):
        create_encoder("resnet18", 1, {"stem width": 8})
    code = main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(tmp_path / "run"),
                 "data.name=digits", "data.image_size=16", "trainer.max_steps=1", "--no-eval",
                 "encoder.kwargs={stem_width:8}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "stem_width: 8" in err, err
