"""Interop exports (torchvision, TorchScript, ONNX), the README model card, and load errors that
say what was found. Export directories are written from in-memory encoders (no training), with
randomised BatchNorm statistics so that buffers must be carried over too."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import selfsup
from selfsup.cli import main
from selfsup.config import load_config, to_dict
from selfsup.data import DataInfo
from selfsup.encoders import create_encoder
from selfsup.export import (CARD, FEATURE_RTOL, FORMAT_FILES, MODEL_CARD, ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUT,
                            WEIGHTS, ExportError, LoadError, check_features, export_formats, make_card,
                            parse_formats, to_torchvision, torchvision_from_encoder, torchvision_problem,
                            write_export)

# torch >= 2.9 deprecates TorchScript; these tests load TorchScript files on purpose
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")

TINY = {"channels": [8, 16, 32, 64]}
RESULTS = {"SimCLR resnet18 (pretrained)": {"knn": {"k=20,T=0.07": {"top1": 91.25}},
                                            "linear": {"top1": 93.5, "top1_std": 0.42, "seeds": 3},
                                            "linear_10pct": {"top1": 80.0, "top1_std": 1.5, "seeds": 3,
                                                             "fraction": 0.1}},
           "raw pixels": {"knn": {"k=20,T=0.07": {"top1": 88.0}}, "linear": {"top1": 90.0}}}


def _encoder(name: str = "resnet18", kwargs: dict | None = None, in_chans: int = 1) -> torch.nn.Module:
    """A timm encoder with random weights and random BatchNorm statistics (eval mode)."""
    torch.manual_seed(0)
    enc = create_encoder(name, in_chans, TINY if kwargs is None else kwargs, fair_random_init=True)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.2)
    return enc.eval()


def _card(enc: torch.nn.Module, name: str = "resnet18", kwargs: dict | None = None, in_chans: int = 1,
          size: int = 16) -> dict:
    kwargs = TINY if kwargs is None else kwargs
    cfg = load_config(None, ["method.name=simclr", "data.name=digits", f"data.image_size={size}",
                             f"encoder.name={name}", f"encoder.kwargs={json.dumps(kwargs)}", "seed=7",
                             "trainer.max_epochs=3"])
    info = DataInfo(in_chans, size, 10, (0.5,) * in_chans, (0.25,) * in_chans, 256)
    return make_card(cfg, info, enc, RESULTS, trained_steps=12)


def _export(out: Path, name: str = "resnet18", kwargs: dict | None = None, in_chans: int = 1, size: int = 16,
            formats: tuple[str, ...] = ()) -> torch.nn.Module:
    enc = _encoder(name, kwargs, in_chans)
    write_export(enc, _card(enc, name, kwargs, in_chans, size), out, formats)
    return enc


def _run_snippets(readme: str, cwd: Path, libraries: list[str], **scope) -> dict:
    """Run the README's code block for each library in turn (from ``cwd``, sharing one namespace)."""
    import os

    here = os.getcwd()
    os.chdir(cwd)
    try:
        for lib in libraries:
            block = readme.split(f"**{lib}**\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
            with torch.no_grad():
                exec(block, scope)  # noqa: S102 - the snippet is the behaviour under test
    finally:
        os.chdir(here)
    return scope


def _assert_same_features(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Bit for bit: TorchScript, torchvision and timm run the same PyTorch kernels on the same weights, in the
    same order, so any difference is a fault (not selfsup's own FEATURE_RTOL, which bounds ONNX)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out, ref), f"max abs diff {(out - ref).abs().max().item():.3g}"


# ONNX Runtime runs its own float32 kernels (its conv algorithms and fused conv+BN sum in another order):
# about 1e-6 of the features' scale here; a wrong weight, layer or normalisation moves them by O(0.1).
ONNX_RTOL = 2e-5


def _assert_onnx_features(out: torch.Tensor, ref: torch.Tensor) -> None:
    """ONNX Runtime's features within ONNX_RTOL of the largest feature (at least 1) of PyTorch's."""
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= ONNX_RTOL * max(1.0, ref.abs().max().item())


# --- torchvision ------------------------------------------------------------------------------


def test_torchvision_resnet18_gives_the_timm_features(tmp_path):
    import torchvision

    out = tmp_path / "export"
    enc = _export(out, "resnet18", {}, in_chans=3, size=32, formats=("torchvision",))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = enc(x)  # [4, 512]
        _assert_same_features(to_torchvision(out)(x), ref)
        # torchvision's own constructor loads the file strictly apart from the classifier
        tv = torchvision.models.resnet18().eval()
        fc, tv.fc = tv.fc, torch.nn.Identity()
        untrained = tv(x)  # [4, 512], torchvision's own initialisation
        tv.fc = fc
        missing, unexpected = tv.load_state_dict(load_file(str(out / FORMAT_FILES["torchvision"])), strict=False)
        assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
        tv.fc = torch.nn.Identity()
        _assert_same_features(tv(x), ref)
        assert not torch.allclose(untrained, ref, atol=1e-2)  # the comparison above is not vacuous
    rec = json.loads((out / CARD).read_text())["selfsup"]["exports"]["torchvision"]
    assert rec["max_abs_diff"] == 0.0 and rec["file"] == FORMAT_FILES["torchvision"]  # the card's own check: exact
    scope = _run_snippets((out / MODEL_CARD).read_text(), tmp_path, ["torchvision"])  # the README's snippet
    with torch.no_grad():
        _assert_same_features(scope["model"](x), ref)


def test_torchvision_dilated_bottleneck_resnet_with_one_channel():
    """timm's output_stride=16 is torchvision's replace_stride_with_dilation=[False, False, True]; conv1 is
    rebuilt for 1 channel."""
    enc = _encoder("resnet50", {"output_stride": 16}, in_chans=1)
    tv = torchvision_from_encoder(enc, _card(enc, "resnet50", {"output_stride": 16}, in_chans=1, size=32))
    assert tv.conv1.in_channels == 1
    assert tv.layer4[0].conv2.stride == (1, 1) and tv.layer4[1].conv2.dilation == (2, 2)  # stride 16, dilated
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        _assert_same_features(tv(x), enc(x))  # [2, 2048]


@pytest.mark.parametrize("name,kwargs,problem", [
    ("resnet18", {}, None),
    ("resnet50", {"output_stride": 8, "drop_path_rate": 0.1, "zero_init_last": False}, None),
    ("resnet18", TINY, "the timm kwargs channels=[8, 16, 32, 64] change the network"),
    ("resnet18", {"output_stride": 16}, "torchvision's BasicBlock does not support"),
    ("resnet50", {"stem_type": "deep"}, "stem_type='deep'"),
    ("resnet50", {"output_stride": 4}, "agree only on 8, 16 and 32"),
    ("vit_tiny_patch16_224", {}, "torchvision has no model matching timm's 'vit_tiny_patch16_224'"),
])
def test_torchvision_says_what_cannot_map(name, kwargs, problem):
    found = torchvision_problem({"architecture": name, "kwargs": kwargs, "in_chans": 1})
    assert found is None if problem is None else problem in found


def test_torchvision_refused_before_anything_is_written(tmp_path):
    enc = _encoder()
    with pytest.raises(ExportError, match=r"cannot export 'resnet18' for torchvision: the timm kwargs channels"):
        write_export(enc, _card(enc), tmp_path / "export", ["torchvision"])
    assert not (tmp_path / "export").exists()


# --- TorchScript and ONNX ---------------------------------------------------------------------


def test_torchscript_export_gives_the_timm_features(tmp_path):
    out = tmp_path / "export"
    enc = _export(out, formats=("torchscript",))
    scripted = torch.jit.load(str(out / FORMAT_FILES["torchscript"]))
    x = torch.randn(5, 1, 16, 16)  # traced at batch 2: the batch axis is free
    with torch.no_grad():
        _assert_same_features(scripted(x), enc(x))
    card = json.loads((out / CARD).read_text())["selfsup"]
    assert card["exports"]["torchscript"]["max_abs_diff"] == 0.0  # the card's own check: exact
    x = torch.randn(4, 1, 16, 16)
    scope = _run_snippets((out / MODEL_CARD).read_text(), tmp_path, ["TorchScript"], x=x)
    with torch.no_grad():
        _assert_same_features(scope["features"], enc(x))


def test_onnx_export_matches_pytorch(tmp_path):
    import onnx  # both are in the [test] extra
    import onnxruntime as ort

    out = tmp_path / "export"
    enc = _export(out, formats=("onnx",))
    model = onnx.load(str(out / FORMAT_FILES["onnx"]))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {ONNX_OPSET}
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # a named, dynamic batch axis
    session = ort.InferenceSession(str(out / FORMAT_FILES["onnx"]), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 1, 16, 16)
        with torch.no_grad():
            _assert_onnx_features(torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0]), enc(x))
    rec = json.loads((out / CARD).read_text())["selfsup"]["exports"]["onnx"]
    assert rec["opset"] == ONNX_OPSET and rec["checked_with"].startswith("onnxruntime")
    assert rec["max_abs_diff"] <= 1e-5  # the card's own check (features of scale ~1; README: about 1e-6)
    scope = _run_snippets((out / MODEL_CARD).read_text(), tmp_path, ["ONNX"], x=x)
    with torch.no_grad():
        _assert_onnx_features(torch.from_numpy(scope["features"]), enc(x))


def test_onnx_without_the_onnx_package_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr("selfsup.artifacts.exportdir.onnx_installed", lambda: False)
    enc = _encoder()
    with pytest.raises(ExportError, match=r"needs the onnx package: pip install 'selfsup\[onnx\]'"):
        write_export(enc, _card(enc), tmp_path / "export", ["onnx"])
    assert not (tmp_path / "export").exists()


def test_onnx_without_onnxruntime_is_written_and_marked_unchecked(tmp_path, monkeypatch):
    monkeypatch.setattr("selfsup.artifacts.interop._onnxruntime_runner", lambda data: None)  # as if not installed
    out = tmp_path / "export"
    _export(out, formats=("onnx",))
    rec = json.loads((out / CARD).read_text())["selfsup"]["exports"]["onnx"]
    assert rec["checked_with"] is None and "max_abs_diff" not in rec
    assert "not checked: onnxruntime is not installed" in rec["note"]
    readme = (out / MODEL_CARD).read_text()
    assert "| `model.onnx` | ONNX, opset 17, dynamic batch axis | not checked: onnxruntime" in readme


def test_check_features_bounds_the_difference():
    ref = torch.randn(3, 64) * 10  # [3, 64]
    bound = FEATURE_RTOL * ref.abs().max().item()
    assert check_features("onnx", ref, ref + 0.5 * bound)["max_abs_diff"] == pytest.approx(0.5 * bound, rel=1e-3)
    with pytest.raises(ExportError, match="differ from the timm encoder's by up to .* nothing was written"):
        check_features("onnx", ref, ref + 2 * bound)
    with pytest.raises(ExportError, match=r"features of shape \[3, 32\], the timm encoder \[3, 64\]"):
        check_features("onnx", ref, ref[:, :32])
    with pytest.raises(ExportError, match="differ"):
        check_features("onnx", ref, torch.full_like(ref, float("nan")))


def test_parse_formats():
    assert parse_formats(None) == ("safetensors",)
    assert parse_formats(["onnx,torchscript", "ONNX", "safetensors"]) == ("safetensors", "onnx", "torchscript")
    with pytest.raises(ExportError, match="unknown export format 'onxx': did you mean 'onnx'"):
        parse_formats(["onxx"])


def test_cli_export_format_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), str(tmp_path / "out"), "--format", "torchscript,onxx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("selfsup export: error: unknown export format 'onxx': did you mean 'onnx'? choose from "
                   "safetensors, torchscript, onnx, torchvision")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    helptext = capsys.readouterr().out
    for text in ("--format FORMAT", "torchscript", f"opset {ONNX_OPSET}", "torchvision.models.resnet18"):
        assert text in " ".join(helptext.split())


# --- README.md --------------------------------------------------------------------------------


def test_model_card_readme(tmp_path):
    out = tmp_path / "my_encoder"
    enc = _export(out)
    text = (out / MODEL_CARD).read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "timm" and meta["datasets"] == ["digits"] and meta["license"] == "apache-2.0"
    assert {"simclr", "resnet18", "self-supervised-learning"} <= set(meta["tags"])
    for expected in ('SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework',  # method + citation
                     "timm `resnet18`, kwargs `{\"channels\": [8, 16, 32, 64]}`",
                     "`digits`, 256 training images", "3 epochs", "after 12 optimiser steps", "| seed | 7 |",
                     "| SimCLR resnet18 (pretrained) | 91.25 | 93.50 ± 0.42 | 80.00 ± 1.50 |",  # results
                     "| raw pixels | 88.00 | 90.00 |  |", "± is the standard deviation over 3 probe seeds",
                     "model = timm.create_model('local-dir:my_encoder', pretrained=True).eval()",
                     'pretrained_cfg_overlay=dict(file="my_encoder/model.safetensors", input_size=(1, 16, 16),',
                     'selfsup.load_encoder("my_encoder")', "--format torchscript` writes `model.torchscript.pt`",
                     "Not available for this encoder: the timm kwargs channels",  # torchvision
                     "--format onnx` writes `model.onnx`"):
        assert expected in body, expected
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    # the README's timm (local-dir:) and selfsup snippets run as written and give the encoder's features
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    scope = _run_snippets(text, tmp_path, ["timm", "selfsup"], images=images)
    with torch.no_grad():
        ref = enc((images.float() / 255 - 0.5) / 0.25)  # the card's mean and std
        _assert_same_features(scope["features"], ref)
        _assert_same_features(scope["model"](scope["x"]), ref)  # selfsup.load_encoder's model
    # the second timm snippet (the architecture spelled out, the data settings as an overlay) builds the same model,
    # and timm resolves the export's own input size and normalisation from it
    overlay = text.split("spell the architecture out:\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope = {"timm": __import__("timm")}
    import os
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(overlay, scope)  # noqa: S102 - the snippet is the behaviour under test
    finally:
        os.chdir(here)
    from timm.data import resolve_model_data_config
    config = resolve_model_data_config(scope["model"])
    assert (config["input_size"], config["mean"], config["std"]) == ((1, 16, 16), (0.5,), (0.25,))
    with torch.no_grad():
        _assert_same_features(scope["model"]((images.float() / 255 - 0.5) / 0.25), ref)


def test_model_card_model_index_is_the_hubs_format(tmp_path):
    """The front matter's model-index holds the card's own encoder's results (not the baselines') in the Hub's
    format: huggingface_hub's own parser reads them back as the numbers of RESULTS."""
    from huggingface_hub import ModelCard

    out = tmp_path / "my_encoder"
    _export(out)
    card = ModelCard((out / MODEL_CARD).read_text())
    got = {(r.dataset_type, r.dataset_split, r.metric_type, r.metric_name): r.metric_value
           for r in card.data.eval_results}
    assert card.data.model_name == "my_encoder" and card.data.license == "apache-2.0"
    assert got == {("digits", "test", "accuracy", "kNN k=20,T=0.07 top-1"): 91.25,
                   ("digits", "test", "accuracy", "linear top-1"): 93.5,
                   ("digits", "test", "accuracy", "linear top-1, 10% labels"): 80.0}
    # a run's own export folder is named "export": the model is named by its run, method and architecture
    _export(tmp_path / "run" / "export")
    named = ModelCard((tmp_path / "run" / "export" / MODEL_CARD).read_text()).data.model_name
    card_json = json.loads((tmp_path / "run" / "export" / "config.json").read_text())["selfsup"]
    run_name = card_json.get("training_config", {}).get("name")
    assert named == "-".join(p for p in (run_name, card_json["method"], "resnet18") if p) and named != "export"
    enc = _encoder()  # no results: no model-index (the Hub refuses an empty one)
    write_export(enc, {**_card(enc), "results": {}}, tmp_path / "bare")
    assert "model-index" not in yaml.safe_load((tmp_path / "bare" / MODEL_CARD).read_text().split("---\n")[1])


def test_reexport_removes_interop_files_of_earlier_weights(tmp_path):
    out = tmp_path / "export"
    _export(out)
    export_formats(out, ["torchscript"])  # interop files can be added to an existing export
    assert (out / FORMAT_FILES["torchscript"]).is_file()
    assert "torchscript" in json.loads((out / CARD).read_text())["selfsup"]["exports"]
    _export(out)
    assert not (out / FORMAT_FILES["torchscript"]).exists()
    assert json.loads((out / CARD).read_text())["selfsup"]["exports"] == {}


def test_export_formats_needs_an_export_directory(tmp_path):
    with pytest.raises(LoadError, match=r"'.*nope' is not an export directory \(it does not exist\); write one with "
                                        r"`selfsup export RUN_DIR "):
        export_formats(tmp_path / "nope", ["onnx"])
    with pytest.raises(LoadError, match="not a selfsup run directory .* nor an export directory"):
        export_formats(tmp_path, ["torchscript"])


# --- load errors ------------------------------------------------------------------------------


def _edit_card(out: Path, architecture: str | None = None, kwargs: dict | None = None, in_chans: int | None = None,
               **data) -> None:
    """A hand edit of config.json (timm's schema): the architecture, the timm kwargs beside in_chans, in_chans,
    or the data settings of pretrained_cfg (input_size, mean, std)."""
    card = json.loads((out / CARD).read_text())
    if architecture is not None:
        card["architecture"] = architecture
    if kwargs is not None:
        card["model_args"] = {"in_chans": card["model_args"]["in_chans"], **kwargs}
    if in_chans is not None:
        card["model_args"]["in_chans"] = in_chans
    card["pretrained_cfg"].update(data)
    (out / CARD).write_text(json.dumps(card))


def test_load_error_other_architecture(tmp_path):
    out = tmp_path / "export"
    _export(out)
    _edit_card(out, architecture="resnet34")  # resnet34 has more blocks per stage
    with pytest.raises(LoadError) as err:
        selfsup.load_encoder(out)
    msg = str(err.value)
    assert "do not fit 'resnet34' with kwargs {'channels': [8, 16, 32, 64]} as config.json" in msg
    assert re.search(r"\d+ of the model's \d+ tensors are missing from the file "
                     r"\(e\.g\. 'layer1\.2\.conv1\.weight'", msg)
    assert "export the run again with `selfsup export RUN_DIR DIR`" in msg


def test_load_error_other_shapes(tmp_path):
    out = tmp_path / "export"
    _export(out)
    _edit_card(out, kwargs={"channels": [16, 32, 64, 128]})
    with pytest.raises(LoadError, match=r"have another shape \(e\.g\. 'layer1\.0\.conv1\.weight': file \[8, 64, 3, 3\] "
                                        r"vs model \[16, 64, 3, 3\]"):
        selfsup.load_encoder(out)


def test_load_error_in_chans(tmp_path):
    out = tmp_path / "export"
    _export(out)
    # a consistent card for 3 channels: only the weights tell that they are for 1
    _edit_card(out, in_chans=3, input_size=[3, 16, 16], mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(LoadError, match=r"are for 1-channel images \(conv1\.weight has shape \[64, 1, 7, 7\]\) but "
                                        r"config\.json says in_chans=3: set \"model_args\.in_chans\": 1, "
                                        r"\"pretrained_cfg\.input_size\": \[1, H, W\] and one \"pretrained_cfg\.mean\" "
                                        r"and \"pretrained_cfg\.std\" value per channel"):
        selfsup.load_encoder(out)


def test_load_error_prefixed_and_foreign_tensors(tmp_path):
    out = tmp_path / "export"
    enc = _export(out)
    save_file({f"encoder.{k}": v.contiguous() for k, v in enc.state_dict().items()}, str(out / WEIGHTS))
    with pytest.raises(LoadError, match=r"names carry a 'encoder\.' prefix: it is the state of a model that contains "
                                        r"the encoder"):
        selfsup.load_encoder(out)
    save_file({"features": torch.zeros(4, 64), "labels": torch.zeros(4)}, str(out / WEIGHTS))
    with pytest.raises(LoadError, match=r"(\d+) of the model's \1 tensors are missing .* 2 of the file's 2 tensors "
                                        r"are not in the model \(e\.g\. 'features', 'labels'\)"):
        selfsup.load_encoder(out)
    loose = tmp_path / "feats.safetensors"
    save_file({"features": torch.zeros(4, 64), "labels": torch.zeros(4)}, str(loose))
    with pytest.raises(LoadError, match=r"is a safetensors file of 2 tensors \(e\.g\. 'features', 'labels'\) with no "
                                        r"config\.json card"):
        selfsup.load_encoder(loose)


def test_load_error_wrong_file_types(tmp_path):
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(LoadError, match=r"cannot read '.*cat\.png' as a selfsup checkpoint: it is a PNG image; pass "
                                        r"an export directory"):
        selfsup.load_encoder(png)
    text = tmp_path / "run.ckpt"
    text.write_text("name: quickstart\nseed: 0\n")
    with pytest.raises(LoadError, match=r"it is a text file \(it starts with 'name: quickstart'\)"):
        selfsup.load_encoder(text)
    plain = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(2), "bn1.bias": torch.zeros(2)}, plain)
    with pytest.raises(LoadError, match=r"is a plain state dict of 2 tensors \(e\.g\. 'conv1\.weight', 'bn1\.bias'\), "
                                        r"not a selfsup checkpoint"):
        selfsup.load_encoder(plain)
    scripted = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(scripted))
    with pytest.raises(LoadError, match=r"it is a TorchScript archive; load it with torch\.jit\.load"):
        selfsup.load_encoder(scripted)
    out = tmp_path / "export"
    _export(out)
    assert selfsup.load_encoder(out / WEIGHTS).num_features == 64  # a file of an export directory: its directory
    (out / WEIGHTS).write_bytes(png.read_bytes())
    with pytest.raises(LoadError, match=r"should hold the encoder's weights as safetensors but is a PNG image"):
        selfsup.load_encoder(out)


def test_load_error_directories(tmp_path):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "a.png").write_bytes(b"x")
    (stray / "notes.txt").write_text("x")
    with pytest.raises(LoadError, match=r"not a selfsup run directory .* it holds a\.png, notes\.txt\. Pass an "
                                        r"export directory"):
        selfsup.load_encoder(stray)
    (stray / CARD).write_text("{}")
    with pytest.raises(LoadError, match="incomplete export directory: it has config.json but no model.safetensors"):
        selfsup.load_encoder(stray)
    (stray / CARD).unlink()
    save_file({"w": torch.zeros(1)}, str(stray / WEIGHTS))
    with pytest.raises(LoadError, match="has model.safetensors but no config.json card"):
        selfsup.load_encoder(stray)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: run\n")
    with pytest.raises(LoadError) as info:  # it said `pretrain --resume`, which refuses such a run
        selfsup.load_encoder(run)
    said = str(info.value)
    assert "run directory without a checkpoint" in said and "--resume" not in said
    assert said.endswith(f"start it again with `selfsup pretrain {run / 'config.yaml'} --run-dir {run}`")
    from selfsup.train.workdir import check_run_dir

    with pytest.raises(FileNotFoundError, match="nothing to continue"):  # the advice the resume path gives too
        check_run_dir(run, resume=True)
    check_run_dir(run, resume=False)  # and the advised command may start there (the attempt is set aside)
    (run / "results.json").write_text("[]")  # a finished run whose checkpoints and export were deleted
    with pytest.raises(LoadError) as info:  # it said "stopped before the first one", and the command was refused
        selfsup.load_encoder(run)
    said = str(info.value)
    assert "checkpoints are gone" in said and "no file holds its trained weights" in said, said
    assert said.endswith(f"`selfsup pretrain {run / 'config.yaml'} --run-dir NEW_DIR`")
    from selfsup.train.workdir import RunDirError

    with pytest.raises(RunDirError, match="fresh --run-dir"):  # why the same directory is not advised
        check_run_dir(run, resume=False)
    (run / "export").mkdir()  # with its export: that
    (run / "export" / CARD).write_text("{}")
    save_file({"w": torch.zeros(1)}, str(run / "export" / WEIGHTS))
    with pytest.raises(LoadError, match=r"checkpoints are gone .* its export holds the trained encoder: pass "
                                        + re.escape(repr(str(run / "export")))):
        selfsup.load_encoder(run)


def test_load_error_checkpoint_for_another_model(tmp_path, tiny_config):
    from conftest import TINY_INFO
    from selfsup.train.module import CHECKPOINT_KEY, PretrainModule

    cfg = tiny_config()
    state = PretrainModule(cfg, TINY_INFO).state_dict()
    state.pop("method.encoder.conv1.weight")
    state["method.encoder.extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "old.ckpt"
    torch.save({CHECKPOINT_KEY: {"config": to_dict(cfg), "data_info": dataclasses.asdict(TINY_INFO),
                                 "version": "0.0.1"}, "state_dict": state}, ckpt)
    with pytest.raises(LoadError) as err:
        selfsup.load_encoder(ckpt)
    msg = str(err.value)
    assert "do not fit the model its own config builds: 1 of the model's" in msg
    assert "(e.g. 'method.encoder.conv1.weight')" in msg and "(e.g. 'method.encoder.extra.weight')" in msg
    assert "written by selfsup 0.0.1" in msg
