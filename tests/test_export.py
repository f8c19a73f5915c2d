"""Export round trip: selfsup.load_encoder and plain timm give the trained encoder's features."""

import json

import pytest
import timm
import torch

import selfsup
from selfsup.export import FEATURE_RTOL, LoadError, export_encoder, load_run
from selfsup.train.run import pretrain


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from selfsup.config import load_config

    cfg = load_config(None, ["method.name=simclr", "data.name=digits", "data.image_size=16", "data.batch_size=64",
                             "data.subset=256", "encoder.kwargs={channels: [8, 16, 32, 64], stem_width: 8}",
                             "trainer.max_epochs=1", "trainer.progress_bar=false"])
    return pretrain(cfg, run_dir=tmp_path_factory.mktemp("run"), log=lambda s: None)


@pytest.fixture(scope="module")
def trained_encoder(trained_run):
    """The run's encoder as training left it (eval mode), loaded once for the module's tests."""
    enc = load_run(trained_run).method.exported_encoder().eval()
    return enc.to(memory_format=torch.contiguous_format)  # training used channels_last


def _assert_same_features(out, ref):
    """Within the bound every interop export is checked against (shapes equal: no broadcasting)."""
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= FEATURE_RTOL * max(1.0, ref.abs().max().item())


def test_export_round_trip_identical_features_in_selfsup_and_timm(trained_run, trained_encoder, tmp_path):
    out = export_encoder(trained_run, tmp_path / "export", results={"note": 1})
    card = json.loads((out / "config.json").read_text())
    assert card["architecture"] == "resnet18" and card["in_chans"] == 1 and card["input_size"] == [1, 16, 16]
    assert card["method"] == "simclr" and card["training_config"]["trainer"]["max_epochs"] == 1
    trained = trained_encoder
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


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
def test_cli_export_torchscript_and_refused_torchvision(trained_run, trained_encoder, tmp_path, capsys):
    from selfsup.cli import main

    out = tmp_path / "exp"
    assert main(["export", str(trained_run), str(out), "--format", "torchscript"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'model.torchscript.pt'} (torchscript): features vs the timm encoder: max abs diff" in printed
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        ref = trained_encoder(x)  # [4, 64]
        got = torch.jit.load(str(out / "model.torchscript.pt"))(x)
    _assert_same_features(got, ref)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: timm\n") and "| seed | 0 |" in readme
    card = json.loads((out / "config.json").read_text())
    assert f"the exported checkpoint was written after {card['trained_steps']} optimiser steps" in readme
    assert card["trained_steps"] > 0
    # the tiny encoder's stage widths have no torchvision counterpart: one line, nothing written
    assert main(["export", str(trained_run), str(tmp_path / "tv"), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "selfsup export: error: cannot export 'resnet18' for torchvision: the timm kwargs channels=[8, 16, 32, 64], "
        "stem_width=8 change the network")
    assert not (tmp_path / "tv").exists()


def test_cli_export_onnx(trained_run, trained_encoder, tmp_path, capsys):
    from selfsup.cli import main

    pytest.importorskip("onnx", reason="onnx is not installed: pip install -e '.[onnx]' to test the ONNX export")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e '.[onnx]' to "
                                                    "check the ONNX export's outputs")
    out = tmp_path / "exp"
    assert main(["export", str(trained_run), str(out), "--format", "onnx,safetensors"]) == 0
    assert "(onnx): features vs the timm encoder: max abs diff" in capsys.readouterr().out
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        ref = trained_encoder(x)  # [6, 64]
    got = torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
    _assert_same_features(got, ref)
