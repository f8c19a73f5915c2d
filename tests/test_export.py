"""Export round trip: selfsup.load_encoder and plain timm give the trained encoder's features."""

import json

import pytest
import timm
import torch

import selfsup
from selfsup.export import LoadError, export_encoder, load_run
from selfsup.train.run import pretrain


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from selfsup.config import load_config

    cfg = load_config(None, ["method.name=simclr", "data.name=digits", "data.image_size=16", "data.batch_size=64",
                             "data.subset=256", "encoder.kwargs={channels: [8, 16, 32, 64], stem_width: 8}",
                             "trainer.max_epochs=1", "trainer.progress_bar=false"])
    return pretrain(cfg, run_dir=tmp_path_factory.mktemp("run"), log=lambda s: None)


def test_export_round_trip_identical_features_in_selfsup_and_timm(trained_run, tmp_path):
    out = export_encoder(trained_run, tmp_path / "export", results={"note": 1})
    card = json.loads((out / "config.json").read_text())
    assert card["architecture"] == "resnet18" and card["in_chans"] == 1 and card["input_size"] == [1, 16, 16]
    assert card["method"] == "simclr" and card["training_config"]["trainer"]["max_epochs"] == 1
    trained = load_run(trained_run).method.exported_encoder().eval()
    trained = trained.to(memory_format=torch.contiguous_format)  # training used channels_last
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        ref = trained(x)
        loaded = selfsup.load_encoder(out)
        for name, t in trained.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], t), name
        assert torch.equal(loaded(x), ref)
        plain = timm.create_model("resnet18", pretrained=True, num_classes=0, in_chans=1,
                                  pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
                                  **card["kwargs"]).eval()
        assert torch.equal(plain(x), ref)
    # the trained weights differ from a fresh model's, so equality above is meaningful
    fresh = timm.create_model("resnet18", num_classes=0, in_chans=1, **card["kwargs"]).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), ref)


def test_load_encoder_from_run_dir(trained_run):
    enc = selfsup.load_encoder(trained_run)
    assert enc.num_features == 64 and enc.selfsup_info.image_size == 16


def test_load_errors_are_explained(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        selfsup.load_encoder(tmp_path / "nope")
    with pytest.raises(LoadError, match="not a selfsup run directory"):
        selfsup.load_encoder(tmp_path)
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LoadError, match="cannot read"):
        selfsup.load_encoder(bad)
