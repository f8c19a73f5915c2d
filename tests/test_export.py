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
                             "data.subset=256", "encoder.kwargs={channels: [8, 16, 32, 64]}",
                             "trainer.max_epochs=1", "trainer.progress_bar=false"])
    return pretrain(cfg, run_dir=tmp_path_factory.mktemp("run"), log=lambda s: None)


@pytest.fixture(scope="module")
def trained_encoder(trained_run):
    """The run's encoder as training left it (eval mode), loaded once for the module's tests."""
    enc = load_run(trained_run).method.exported_encoder().eval()
    return enc.to(memory_format=torch.contiguous_format)  # training used channels_last


def _assert_same_features(out, ref):
    """Bit for bit (TorchScript runs the same PyTorch kernels on the same weights; shapes equal: no broadcasting)."""
    assert out.shape == ref.shape and torch.equal(out, ref), f"max abs diff {(out - ref).abs().max().item():.3g}"


# ONNX Runtime runs its own float32 kernels, which sum in another order: ~1e-6 of the features' scale; a wrong
# weight or layer moves them by O(0.1). Written here, not taken from selfsup.export.FEATURE_RTOL.
ONNX_RTOL = 2e-5


def _assert_onnx_features(out, ref):
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= ONNX_RTOL * max(1.0, ref.abs().max().item())


def test_export_round_trip_identical_features_in_selfsup_and_timm(trained_run, trained_encoder, tmp_path):
    out = export_encoder(trained_run, tmp_path / "export", results={"note": 1})
    raw = json.loads((out / "config.json").read_text())  # timm's schema, selfsup's metadata under "selfsup"
    kwargs = {k: v for k, v in raw["model_args"].items() if k != "in_chans"}
    assert raw["architecture"] == "resnet18" and raw["model_args"]["in_chans"] == 1
    assert raw["pretrained_cfg"]["input_size"] == [1, 16, 16]
    card = raw["selfsup"]
    assert card["method"] == "simclr" and card["training_config"]["trainer"]["max_epochs"] == 1
    assert kwargs == card["training_config"]["encoder"]["kwargs"] and card["results"] == {"note": 1}
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
                                  **kwargs).eval()
        assert torch.equal(plain(x), ref)
    # the trained weights differ from a fresh model's, so equality above is meaningful
    fresh = timm.create_model("resnet18", num_classes=0, in_chans=1, **kwargs).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), ref)


def test_load_encoder_from_run_dir(trained_run):
    """Every tensor is the checkpoint's, and the features are those of plain timm holding the checkpoint's tensors."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    prefix = "method.encoder."  # SimCLR exports its (only) encoder
    saved = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    reference = timm.create_model("resnet18", num_classes=0, in_chans=1, channels=[8, 16, 32, 64])
    reference.load_state_dict(saved)  # strict: the checkpoint holds the whole encoder
    reference.eval()
    x = torch.randn(5, 1, 16, 16)
    for source in (trained_run, trained_run / "checkpoints" / "last.ckpt"):  # a run directory and its checkpoint
        enc = selfsup.load_encoder(source)
        assert not enc.training and enc.state_dict().keys() == saved.keys()
        for name, t in enc.state_dict().items():
            assert torch.equal(t, saved[name]), name
        with torch.no_grad():
            got, ref = enc(x), reference(x)  # [5, 64]
        # training left the encoder channels_last and the reference is contiguous: oneDNN's convolutions for the
        # two layouts may sum in another order, a float32 rounding difference (~1e-7 of the features' scale)
        assert got.shape == (5, 64) and torch.allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()))
        assert enc.num_features == 64 and enc.selfsup_info.image_size == 16 and enc.selfsup_info.in_chans == 1
    fresh = timm.create_model("resnet18", num_classes=0, in_chans=1, channels=[8, 16, 32, 64]).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), ref, atol=1e-2)  # trained weights: the comparisons above are not vacuous


README_TIMM_CALL = """enc = timm.create_model("local-dir:my_encoder", pretrained=True)   # "hf-hub:USER/REPO" once uploaded
cfg = timm.data.resolve_model_data_config(enc)  # the export's input_size (1, 28, 28), mean and std
enc = selfsup.load_encoder("my_encoder")        # eval mode; enc.selfsup_info has size and mean/std
enc = timm.create_model("resnet18", pretrained=True, num_classes=0, in_chans=1,
                        pretrained_cfg_overlay=dict(file="my_encoder/model.safetensors", input_size=(1, 28, 28),
                                                    mean=(0.286,), std=(0.353,)),  # from my_encoder/config.json
                        output_stride=16, channels=[32, 64, 128, 256])"""


def test_readme_load_snippet_loads_a_quickstart_export(tmp_path, monkeypatch):
    """README: "trained encoders are exported so that plain timm loads them". Its snippet's two calls, as written,
    on an export of the quickstart config's encoder, give the exported weights and features."""
    from conftest import ROOT
    from selfsup.config import load_config
    from selfsup.data import DataInfo
    from selfsup.encoders import create_encoder
    from selfsup.export import make_card, write_export

    readme = (ROOT / "README.md").read_text()
    assert README_TIMM_CALL in readme  # the calls below are the README's
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert (cfg.encoder.name, cfg.encoder.kwargs) == (  # the kwargs the snippet passes are the quickstart's
        "resnet18", {"output_stride": 16, "channels": [32, 64, 128, 256]})
    torch.manual_seed(0)
    exported = create_encoder(cfg.encoder.name, 1, cfg.encoder.kwargs, fair_random_init=True).eval()
    write_export(exported, make_card(cfg, DataInfo(1, 28, 10, (0.286,), (0.353,)), exported), tmp_path / "my_encoder")
    monkeypatch.chdir(tmp_path)  # the snippet's relative paths
    expected_data = ((1, 28, 28), (0.286,), (0.353,))
    enc = timm.create_model("local-dir:my_encoder", pretrained=True)   # "hf-hub:USER/REPO" once uploaded
    cfg_timm = timm.data.resolve_model_data_config(enc)  # the export's input_size (1, 28, 28), mean and std
    assert (tuple(cfg_timm["input_size"]), tuple(cfg_timm["mean"]), tuple(cfg_timm["std"])) == expected_data
    local = enc.eval()
    enc = selfsup.load_encoder("my_encoder")        # eval mode; enc.selfsup_info has size and mean/std
    assert not enc.training and enc.selfsup_info.image_size == 28
    loaded = enc
    enc = timm.create_model("resnet18", pretrained=True, num_classes=0, in_chans=1,
                            pretrained_cfg_overlay=dict(file="my_encoder/model.safetensors", input_size=(1, 28, 28),
                                                        mean=(0.286,), std=(0.353,)),  # from my_encoder/config.json
                            output_stride=16, channels=[32, 64, 128, 256])
    cfg_overlay = timm.data.resolve_model_data_config(enc)
    assert (tuple(cfg_overlay["input_size"]), tuple(cfg_overlay["mean"]), tuple(cfg_overlay["std"])) == expected_data
    enc.eval()
    for name, t in exported.state_dict().items():
        assert torch.equal(enc.state_dict()[name], t) and torch.equal(loaded.state_dict()[name], t), name
        assert torch.equal(local.state_dict()[name], t), name
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = exported(x)  # [3, 256]
        assert ref.shape == (3, 256) and torch.equal(enc(x), ref) and torch.equal(loaded(x), ref)
        assert torch.equal(local(x), ref)
        unloaded = timm.create_model("resnet18", num_classes=0, in_chans=1, **cfg.encoder.kwargs).eval()
        assert not torch.allclose(unloaded(x), ref, atol=1e-2)  # pretrained=True did load the file


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
    assert readme.startswith("---\nlicense: apache-2.0\nlibrary_name: timm\n") and "| seed | 0 |" in readme
    card = json.loads((out / "config.json").read_text())["selfsup"]
    steps = card["trained_steps"]
    assert f"the exported checkpoint was written after {steps:,} optimiser step{'' if steps == 1 else 's'}" in readme
    assert card["trained_steps"] > 0
    # the tiny encoder's stage widths have no torchvision counterpart: one line, nothing written
    assert main(["export", str(trained_run), str(tmp_path / "tv"), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "selfsup export: error: cannot export 'resnet18' for torchvision: the timm kwargs channels=[8, 16, 32, 64] "
        "change the network")
    assert not (tmp_path / "tv").exists()


def test_cli_export_onnx(trained_run, trained_encoder, tmp_path, capsys):
    from selfsup.cli import main

    import onnxruntime as ort  # onnx and onnxruntime are in the [test] extra

    out = tmp_path / "exp"
    assert main(["export", str(trained_run), str(out), "--format", "onnx,safetensors"]) == 0
    assert "(onnx): features vs the timm encoder: max abs diff" in capsys.readouterr().out
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        ref = trained_encoder(x)  # [6, 64]
    got = torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
    _assert_onnx_features(got, ref)


def test_run_dir_names_the_files_pretrain_writes(trained_run):
    """RunDir's paths are the files a run directory holds after pretraining (and nothing names them twice)."""
    from selfsup.rundir import RunDir

    run = RunDir(trained_run)
    assert run.is_run() and run.has_checkpoint() and run.checkpoint_files()[-1].suffix == ".ckpt"
    assert run.last_checkpoint in run.checkpoint_files()
    assert run.data_info.is_file() and json.loads(run.data_info.read_text())["in_chans"] == 1
    assert (run.logs / "metrics.csv").is_file() and run.lock.is_file()
    written = {p.name for p in trained_run.iterdir()}
    assert {run.config.name, run.data_info.name, run.checkpoints.name, run.logs.name, run.lock.name} <= written
    assert not RunDir(trained_run / "checkpoints").is_run()


def test_an_export_checks_the_runs_results_before_writing_anything(trained_run, tmp_path, capsys):
    """helper-71's: a hand-edited or cut-short results.json gave `selfsup export RUN` a traceback (top1 null, text)
    after it had written the weights, or put -5 % in the model card; compare refused the same file. The export
    reads results.json through compare's check first: one line naming the file, the key and the value, and
    nothing written."""
    import json
    import shutil

    from conftest import one_line_error
    from selfsup.cli import main

    run = tmp_path / "edited"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "eval-*"))
    good = [{"label": "SimCLR resnet18 (pretrained)", "kind": "pretrained", "warnings": [],
             "knn": {"k=20,T=0.07": {"top1": 81.5, "top5": 97.0}}}]  # a results.json as selfsup writes it
    key, cell = "knn", "k=20,T=0.07"
    for value, said in ((None, "null"), (-5, "-5"), ("abc", "\"abc\"")):
        rows = json.loads(json.dumps(good))
        rows[0][key][cell]["top1"] = value
        (run / "results.json").write_text(json.dumps(rows))
        assert main(["export", str(run), str(tmp_path / "out")]) == 2
        err = one_line_error(capsys.readouterr().err)
        assert str(run / "results.json") in err and f"top1 = {said}" in err, err
        assert not (tmp_path / "out").exists()
    (run / "results.json").write_text('[{"label": 1')
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup export: error: {run / 'results.json'} is not readable JSON (edited or cut short?): evaluate the run "
        f"again (selfsup eval {run}), or restore the file")
    assert not (tmp_path / "out").exists()
    (run / "results.json").write_text(json.dumps(good))
    assert main(["export", str(run), str(tmp_path / "out")]) == 0 and (tmp_path / "out" / "README.md").is_file()


def test_an_export_into_another_runs_export_folder_is_refused(trained_run, tmp_path, capsys):
    """helper-63's: `selfsup export RUN_B RUN_A/export` replaced RUN_A's export with RUN_B's weights ("replacing
    the export in ..."), and compare then listed them as RUN_A's. Refused in one line, RUN_A's files untouched;
    a run's own export folder (and a folder outside any run) is written as before."""
    import shutil

    from conftest import one_line_error
    from selfsup.cli import main

    other = tmp_path / "other"
    shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns("export", "eval-*"))
    assert main(["export", str(other), str(other / "export")]) == 0  # its own
    before = {p.name: p.read_bytes() for p in (other / "export").iterdir()}
    capsys.readouterr()
    for source in (trained_run, trained_run / "checkpoints" / "last.ckpt"):
        assert main(["export", str(source), str(other / "export")]) == 2
        assert one_line_error(capsys.readouterr().err) == (
            f"selfsup export: error: {other / 'export'} is inside run {other.resolve()}, whose folders compare and its "
            f"resume read as that run's: give {source}'s export a folder of its own, e.g. "
            f"{source.resolve().parent / (source.resolve().name + '-export')}")
    assert main(["export", str(trained_run), str(other / "export-b")]) == 2  # any folder of another run (helper-66)
    assert f"{other / 'export-b'} is inside run {other.resolve()}" in one_line_error(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in (other / "export").iterdir()} == before
    for inside in ("export/sub", "checkpoints/x", "plots/x"):  # the run's own files, for its own export too
        assert main(["export", str(other), str(other / inside)]) == 2
        top = inside.split("/")[0]
        assert one_line_error(capsys.readouterr().err) == (
            f"selfsup export: error: {other / inside} is inside {other.resolve() / top}, the run's own {top}/ folder "
            f"(selfsup keeps the run's files there): export to {other.resolve() / 'export'} or a folder of its own, "
            f"e.g. {other.resolve().parent / 'other-export'}")
    assert main(["export", str(other / "checkpoints" / "last.ckpt"), str(other / "export")]) == 0  # its own ckpt
    assert main(["export", str(other), str(other / "export-v2")]) == 0  # a folder of its own in its own run
    assert main(["export", str(trained_run), str(tmp_path / "elsewhere" / "export")]) == 0  # no run there
