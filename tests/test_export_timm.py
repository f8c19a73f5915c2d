"""An export directory is a timm / Hugging Face Hub model directory: timm.create_model("local-dir:DIR") builds
the encoder with its weights, timm.data.resolve_model_data_config returns the export's own input size and
normalisation; exports written before timm's schema (flat config.json) still load; written files follow
the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_model_data_config

import selfsup
from selfsup.config import load_config
from selfsup.data import DataInfo
from selfsup.encoders import create_encoder
from selfsup.export import LoadError, export_formats, make_card, write_export

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # tracing the ViT's shape checks

FIXTURES = Path(__file__).parent / "fixtures"
RESNET = ("resnet18", "simclr", {"channels": [8, 16, 32, 64], "output_stride": 16})
VIT = ("vit_tiny_patch16_224", "mae", {"img_size": 24, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2})
# not ImageNet's (3, 224, 224) and mean/std, and not equal across channels: a default or a swap shows
INFO = DataInfo(2, 24, 10, (0.1, 0.7), (0.3, 0.45), 64)


def _export(out: Path, spec: tuple, info: DataInfo = INFO) -> torch.nn.Module:
    arch, method, kwargs = spec
    torch.manual_seed(0)
    enc = create_encoder(arch, info.in_chans, kwargs, fair_random_init=True).eval()
    cfg = load_config(None, [f"method.name={method}", "data.name=digits", f"data.image_size={info.image_size}",
                             f"encoder.name={arch}", f"encoder.kwargs={json.dumps(kwargs)}"])
    write_export(enc, make_card(cfg, info, enc), out)
    return enc


V1_SPECS = {"resnet": ("resnet10t", {"channels": [4, 4, 4, 4], "stem_width": 4}),
            "vit": ("vit_tiny_patch16_224", {"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 1})}


def v1_export(tag: str, dest: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """An export in the format selfsup wrote before issue 15: the flat config.json and README.md that
    tests/fixtures/make_export_v1.py wrote then (text, tracked), with weights generated here from the same
    seeded encoder (binary files are not tracked) and the card's weights_sha256 set to them. Returns the
    directory and {"x": a fixed input, "features": what that encoder gives on it}."""
    import hashlib

    from safetensors.torch import save_file

    arch, kwargs = V1_SPECS[tag]
    out = Path(shutil.copytree(FIXTURES / f"export_v1_{tag}", dest))
    torch.manual_seed(0)
    enc = create_encoder(arch, 1, kwargs).eval()
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(out / "model.safetensors"))
    card = json.loads((out / "config.json").read_text())
    card["weights_sha256"] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    (out / "config.json").write_text(json.dumps(card, indent=2))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return out, {"x": x, "features": enc(x)}


@pytest.mark.parametrize("spec", [RESNET, VIT], ids=["convnet", "vit"])
def test_local_dir_gives_the_encoder_with_identical_features(tmp_path, spec):
    out = tmp_path / "export"
    enc = _export(out, spec)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert type(model) is type(enc) and model.num_classes == 0
    x = torch.randn(3, 2, 24, 24)
    with torch.no_grad():
        ref = enc(x)  # [3, D]
        assert torch.equal(model(x), ref)
        assert torch.equal(selfsup.load_encoder(out)(x), ref)
        fresh = timm.create_model(spec[0], num_classes=0, in_chans=2, **spec[2]).eval()
        assert not torch.allclose(fresh(x), ref, atol=1e-3)  # local-dir did load the weights
    for name, t in enc.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name


@pytest.mark.parametrize("spec", [RESNET, VIT], ids=["convnet", "vit"])
def test_resolve_model_data_config_returns_the_exports_settings(tmp_path, spec):
    out = tmp_path / "export"
    _export(out, spec)
    config = resolve_model_data_config(timm.create_model(f"local-dir:{out}", pretrained=True))
    assert config["input_size"] == (2, 24, 24)
    assert config["mean"] == pytest.approx(INFO.mean) and config["std"] == pytest.approx(INFO.std)
    assert config["crop_pct"] == 1.0 and config["interpolation"] == "bilinear"
    raw = json.loads((out / "config.json").read_text())
    assert raw["num_classes"] == 0 and raw["model_args"] == {"in_chans": 2, **spec[2]}
    assert raw["pretrained_cfg"]["license"] == "apache-2.0"
    assert raw["global_pool"] == ("avg" if spec is RESNET else "token")
    assert raw["selfsup"]["format_version"] == 2 and raw["selfsup"]["method"] == spec[1]
    assert raw["selfsup"]["load_with_timm"] == "timm.create_model('local-dir:export', pretrained=True)"


@pytest.mark.parametrize("tag", ["resnet", "vit"])
def test_exports_written_before_timms_schema_still_load(tag, tmp_path):
    """Exports in the format selfsup wrote before issue 15 (flat config.json: :func:`v1_export`) load with the
    features of the encoder they hold."""
    old, ref = v1_export(tag, tmp_path / "v1")
    raw = json.loads((old / "config.json").read_text())
    assert "pretrained_cfg" not in raw and "kwargs" in raw and "in_chans" in raw  # the old, flat format
    enc = selfsup.load_encoder(old)
    assert enc.selfsup_info == DataInfo(1, 8, 10, (0.5,), (0.25,))
    with torch.no_grad():
        assert torch.equal(enc(ref["x"]), ref["features"])
    # its card is still checked field by field, in its own spelling
    copy = Path(shutil.copytree(old, tmp_path / "old"))
    (copy / "config.json").write_text(json.dumps({**raw, "std": [0]}))
    with pytest.raises(LoadError, match=r"config\.json': \"std\" is \[0\], but it must be a list of finite numbers > 0"):
        selfsup.load_encoder(copy)
    # adding a format rewrites config.json in timm's schema; the encoder is unchanged and timm loads it
    (copy / "config.json").write_text(json.dumps(raw))
    export_formats(copy, ["torchscript"])
    assert "pretrained_cfg" in json.loads((copy / "config.json").read_text())
    with torch.no_grad():
        assert torch.equal(selfsup.load_encoder(copy)(ref["x"]), ref["features"])
        assert torch.equal(timm.create_model(f"local-dir:{copy}", pretrained=True).eval()(ref["x"]), ref["features"])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    """Every file of an export has the mode open(path, "w") gives under the umask (model.safetensors was 0600:
    unreadable to the other users of a shared disk)."""
    previous = os.umask(umask)
    try:
        out = tmp_path / "export"
        _export(out, RESNET, DataInfo(1, 16, 10, (0.5,), (0.25,), 64))
        export_formats(out, ["torchscript"])
        (tmp_path / "reference").write_text("")  # what the OS gives a plain new file under this umask
    finally:
        os.umask(previous)
    want = stat.S_IMODE((tmp_path / "reference").stat().st_mode)
    assert want == 0o666 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes) == {"model.safetensors", "config.json", "README.md", "model.torchscript.pt"}
    assert modes == dict.fromkeys(modes, want), {k: oct(v) for k, v in modes.items()}


@pytest.mark.parametrize("spec", [RESNET, VIT], ids=["convnet", "vit"])
def test_timm_fine_tunes_an_export_with_a_new_head_and_channel_count(tmp_path, spec):
    """pretrained_cfg names timm's classifier and first conv, so create_model(..., num_classes=N) gets a fresh
    head on the exported trunk and in_chans=C adapts the first conv (it failed on missing fc.weight before)."""
    out = tmp_path / "export"
    enc = _export(out, spec)
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert (cfg["classifier"], cfg["first_conv"]) == (("fc", "conv1") if spec is RESNET else ("head", "patch_embed.proj"))
    model = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=7).eval()
    assert model.num_classes == 7
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith(cfg["classifier"])}
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in trunk.items())  # the exported weights, a new head
    three = timm.create_model(f"local-dir:{out}", pretrained=True, in_chans=3)
    assert three.state_dict()[cfg["first_conv"] + ".weight"].shape[1] == 3


def test_hand_edited_model_args_that_keep_shapes_are_refused(tmp_path):
    """output_stride 16 -> 32 keeps every tensor's shape but changes the features: the card's training config
    says what the weights were trained with, so the edit is refused in one line; so are crop_pct and
    interpolation values timm would misuse."""
    out = tmp_path / "export"
    _export(out, RESNET)
    raw = json.loads((out / "config.json").read_text())
    for section, key, value, match in [("model_args", "output_stride", 32, "was trained with"),
                                       ("pretrained_cfg", "crop_pct", 0.5, "must be 1.0"),
                                       ("pretrained_cfg", "interpolation", "foo", "must be one of bilinear")]:
        edited = json.loads(json.dumps(raw))
        edited[section][key] = value
        (out / "config.json").write_text(json.dumps(edited))
        with pytest.raises(LoadError, match=match):
            selfsup.load_encoder(out)
    (out / "config.json").write_text(json.dumps(raw))
    selfsup.load_encoder(out)  # the file as written loads


def test_cli_adds_formats_to_an_export_in_place_or_to_a_copy(tmp_path, capsys):

    from selfsup.cli import main

    old, _ = v1_export("resnet", tmp_path / "v1")
    assert main(["export", str(old), str(old), "--format", "torchscript"]) == 0
    assert (old / "model.torchscript.pt").is_file()
    assert "pretrained_cfg" in json.loads((old / "config.json").read_text())  # rewritten in timm's schema
    assert main(["export", str(old), str(tmp_path / "copy"), "--format", "torchscript"]) == 0
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(p.name for p in old.iterdir())
    capsys.readouterr()
    assert main(["export", str(old), str(tmp_path / "copy")]) == 0  # replacing an export says what it held
    assert f"replacing the export in {tmp_path / 'copy'}" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nothere"), str(tmp_path / "x")]) == 2
    assert "nothere does not exist: give a run directory" in capsys.readouterr().err
