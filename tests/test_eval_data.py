"""Evaluation scores the data the user names: cached features belong to their data, unlabeled
images never vote, one class or no labels is said before any work, a run's results are never
replaced by an evaluation on other data, channels are checked before the first forward pass."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.artifacts.load import load_encoder
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data import DATASETS, DataError, DataInfo, TensorImages, build_dataset
from selfsup.eval.evaluate import NotScorable, evaluate
from selfsup.eval.report import markdown_table

KNN = "k=3,T=0.07"
TINY_ENCODER = "encoder.kwargs={channels: [8, 16, 32, 64]}"


def quiet(_: str) -> None:
    pass


def toy_images(per_class: int, classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N, 1, S, S]`` images of ``classes`` patterns (a bright quadrant per class on a dark
    ground, with noise) and their labels ``[N]``, classes interleaved."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(per_class * classes) % classes
    x = torch.full((len(labels), 1, size, size), 40.0)
    h = size // 2
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        x[i, :, r * h:(r + 1) * h, q * h:(q + 1) * h] = 200.0
    x += 15 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 255).round().to(torch.uint8), labels


def write_split(folder: Path, images: torch.Tensor, labels: torch.Tensor, rgb: bool = False) -> None:
    for i, (img, y) in enumerate(zip(images, labels.tolist())):
        d = folder / f"class{y}"
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img[0].numpy(), "L")
        (im.convert("RGB") if rgb else im).save(d / f"{i:03d}.png")


def toy_folder(root: Path, classes: int = 2, train: int = 8, test: int = 4, size: int = 8, rgb: bool = False,
               scramble: int | None = None) -> Path:
    """``root/train/classK/*.png`` and ``root/test/classK/*.png``. ``scramble``: the same images
    with their labels permuted by that seed (the same count in every class)."""
    for split, n, seed in (("train", train, 0), ("test", test, 1)):
        images, labels = toy_images(n, classes, size, seed)
        if scramble is not None:
            labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(scramble + seed))]
        write_split(root / split, images, labels, rgb)
    return root


def eval_cfg(root: Path | None, *extra: str):
    data = ["data.name=image-folder", f"data.root={root}"] if root else []
    return load_config(None, ["method.name=simclr", *data, "data.image_size=8", "data.in_chans=1",
                              "eval.knn=[[3, 0.07]]", "eval.linear=false", *extra])


def eval_args(root: Path) -> list[str]:
    return ["data.name=image-folder", f"data.root={root}", "data.image_size=8", "data.in_chans=1",
            "eval.knn=[[3, 0.07]]", "eval.linear=false"]


def top1(results_json: Path) -> float:
    return json.loads(results_json.read_text())[0]["knn"][KNN]["top1"]


def one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in err, err
    return err


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


# --------------------------------------------------------------------------- cached features belong to their data


def test_second_folder_with_the_same_counts_gets_its_own_score(tmp_path):
    clean = toy_folder(tmp_path / "clean", classes=4)
    scrambled = toy_folder(tmp_path / "scrambled", classes=4, scramble=7)  # same images, labels permuted
    out = tmp_path / "ev"  # one --out, so one feature cache for both
    assert main(["eval", "pixels", *eval_args(clean), "--out", str(out)]) == 0
    assert top1(out / "results.json") == 100.0  # four patterns, each its own class
    assert main(["eval", "pixels", *eval_args(scrambled), "--out", str(out)]) == 0
    got = top1(out / "results.json")
    alone = evaluate("pixels", eval_cfg(scrambled), tmp_path / "fresh-cache", log=quiet)["knn"][KNN]["top1"]
    assert got == alone  # its own number, not the clean folder's
    assert got <= 50.0  # labels unrelated to the images: about chance (25) for four classes
    # and back: the clean folder still scores its own
    assert main(["eval", "pixels", *eval_args(clean), "--out", str(out)]) == 0
    assert top1(out / "results.json") == 100.0


def test_a_cache_entry_holding_other_labels_is_recomputed_not_used(tmp_path):
    from selfsup.eval.prepare import prepare

    folder = toy_folder(tmp_path / "data")
    cfg = eval_cfg(folder)
    p = prepare("pixels", cfg, tmp_path / "cache")
    for split, ds in p.splits():  # stale entries under the right names and keys: other labels, junk features
        p.cache.store(p.names[split], p.keys[split], torch.full((len(ds), 64), 3.0), 1 - ds.labels)
    logs: list[str] = []
    got = evaluate("pixels", cfg, tmp_path / "cache", log=logs.append, prepared=p)
    assert sum("extracting features" in line for line in logs) == 2  # both splits recomputed
    assert got["knn"] == evaluate("pixels", cfg, tmp_path / "fresh", log=quiet)["knn"]
    assert got["knn"][KNN]["top1"] == 100.0


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 1-step run on a labelled 1-channel toy folder (evaluated after training), the folder,
    and a folder with the same counts and scrambled labels."""
    from conftest import ROOT

    base = tmp_path_factory.mktemp("labelled")
    folder = toy_folder(base / "data", size=16)
    other = toy_folder(base / "other", size=16, scramble=3)
    run = base / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run),
                 "data.name=image-folder", f"data.root={folder}", "data.image_size=16", "data.in_chans=1",
                 "data.batch_size=8", "trainer.max_steps=1", "trainer.precision=32-true", "trainer.progress_bar=false",
                 TINY_ENCODER, "eval.knn=[[3, 0.07]]", "eval.linear=false", "eval.baselines=[pixels]"]) == 0
    return run, folder, other


def test_a_low_shot_fraction_too_small_for_the_labels_fails_before_pretraining(tmp_path, capsys):
    """helper-70's: on a 2-class folder of 16 training images the default eval.low_shot (1%, 10%) leaves 1 image to
    fit; pretraining ran to the end, then the evaluation refused the fractions, leaving no results and no export.
    Refused before training now (no checkpoint written), naming the fractions to drop; without them it runs."""
    from conftest import ROOT

    folder = toy_folder(tmp_path / "data", size=16)
    args = ["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(tmp_path / "run"),
            "data.name=image-folder", f"data.root={folder}", "data.image_size=16", "data.in_chans=1",
            "data.batch_size=8", "trainer.max_steps=1", "trainer.precision=32-true", "trainer.progress_bar=false",
            TINY_ENCODER, "eval.knn=[[3, 0.07]]", "eval.plots=false", "eval.linear_epochs=1", "eval.probe_seeds=1"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the linear probe at 10% labels (also too few at 1%)" in err and "drop 0.1, 0.01 from eval.low_shot" in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    assert main([*args, "eval.low_shot=[]"]) == 0
    assert (tmp_path / "run" / "results.json").is_file() and (tmp_path / "run" / "export").is_dir()


def test_eval_of_a_run_on_other_data_keeps_the_runs_results(labelled_run, tmp_path, capsys):
    run, folder, other = labelled_run
    own = (run / "results.json").read_bytes()
    rows = json.loads(own)
    assert [r["kind"] for r in rows] == ["pretrained", "pixels"] and rows[1]["knn"][KNN]["top1"] == 100.0
    capsys.readouterr()
    assert main(["eval", str(run), f"data.root={other}"]) == 0
    printed = capsys.readouterr().out
    assert (run / "results.json").read_bytes() == own  # untouched
    written = sorted(run.glob("eval-image-folder-*/results.json"))
    assert len(written) == 1 and "data.root changed" in printed and str(written[0].parent) in printed
    cfg = load_config(run / "config.yaml", [f"data.root={other}"])
    alone = evaluate(str(run), cfg, tmp_path / "fresh", log=quiet, load=load_encoder)
    assert json.loads(written[0].read_text())[0]["knn"] == alone["knn"]  # the other folder's own number
    assert json.loads(written[0].read_text())[0]["data_root"] == str(other)
    # the run's own data and settings again: results.json is the run's, rewritten with the same numbers
    assert main(["eval", str(run), "--baseline", "pixels"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert [(r["kind"], r["knn"]) for r in again] == [(r["kind"], r["knn"]) for r in rows]
    assert len(sorted(run.glob("eval-*/results.json"))) == 1


def test_eval_of_a_run_never_replaces_its_results_with_fewer_rows_or_other_settings(labelled_run, capsys):
    """`selfsup eval RUN` on the run's own data writes over RUN/results.json only with the run's eval
    settings and every row it held: a one-stage check or a missing baseline goes to its own folder
    (the run's kNN, probes and baselines were lost, and the next export's card said "no results")."""
    run, folder, _ = labelled_run
    own = (run / "results.json").read_bytes()
    for extra, reason in [(["eval.layers=[layer2]"], "eval settings differ from the run's (eval.layers)"),
                          ([], "the run's results.json holds rows this evaluation lacks (raw pixels; add "
                                "--baseline pixels for them)")]:
        capsys.readouterr()
        assert main(["eval", str(run), *extra]) == 0
        printed = capsys.readouterr().out
        assert (run / "results.json").read_bytes() == own, extra
        assert reason in printed, printed
    written = [rows for f in sorted(run.glob("eval-image-folder-*-*/results.json"))
               if (rows := json.loads(f.read_text()))[0]["data_root"] == str(folder)]  # the run's own data
    assert sorted([(r["kind"], str(r.get("layer"))) for r in rows] for rows in written) == [
        [("pretrained", "None")], [("pretrained", "layer2")]]


def test_features_beyond_float16_range_score_as_they_should(tmp_path):
    """The float16 cache overflowed on large features (fair random resnet152: up to 1.4e5) and a
    two-class toy set scored 50 instead of 100. An encoder scaled by 1e6 scores as the unscaled one."""
    from selfsup.encoders import create_encoder
    from selfsup.export import make_card, write_export
    from safetensors import safe_open

    folder = toy_folder(tmp_path / "data")
    cfg = eval_cfg(folder, "encoder.name=resnet18", TINY_ENCODER)
    torch.manual_seed(0)
    encoder = create_encoder("resnet18", 1, cfg.encoder.kwargs, fair_random_init=True).eval()
    info = DataInfo(1, 8, 2, (0.35,), (0.3,), 16)
    write_export(encoder, make_card(cfg, info, encoder), tmp_path / "plain")
    with torch.no_grad():  # every layer after layer4.0 is positively homogeneous at init: features x 1e6
        block = encoder.layer4[0]
        for bn in (block.bn2, block.downsample[1]):
            bn.weight.mul_(1e6)
            bn.bias.mul_(1e6)
    write_export(encoder, make_card(cfg, info, encoder), tmp_path / "scaled")
    plain = evaluate(str(tmp_path / "plain"), cfg, tmp_path / "cache", log=quiet, load=load_encoder)
    scaled = evaluate(str(tmp_path / "scaled"), cfg, tmp_path / "cache", log=quiet, load=load_encoder)
    assert plain["knn"][KNN]["top1"] == scaled["knn"][KNN]["top1"] == 100.0
    assert scaled["feature_storage"] == {"train": "float32", "test": "float32"}
    biggest = 0.0
    for path in (tmp_path / "cache").glob("*-train-*.safetensors"):
        with safe_open(str(path), "pt") as f:
            biggest = max(biggest, f.get_tensor("features").float().abs().max().item())
    assert biggest > 65504  # the regime where float16 overflows


def test_features_one_vector_dominates_are_warned_with_what_each_column_can_read(tmp_path):
    """Random-init repvgg_a0 (timm, eval mode) maps every image to the same vector: its kNN and RankMe (1.0)
    were printed as chance with no word. Random-init efficientvit_b0 is dominated by one vector too (spread 1e-9),
    so the cosine kNN is chance, but some features vary and the standardised probe reads them (helper-55: 77%).
    The row says which columns are chance; a module that adds 0 x its input to a fixed vector is the first case,
    one adding a 1e-2 signal to a 1e4 vector the second; a varying encoder gets no warning."""
    folder = toy_folder(tmp_path / "data", size=16)
    cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={folder}",
                             "data.image_size=16", "data.in_chans=1", "eval.knn=[[3, 0.07]]", "eval.linear=false"])

    class Dominated(torch.nn.Module):
        def __init__(self, signal: float) -> None:
            super().__init__()
            self.v = torch.nn.Parameter(torch.linspace(1, 2, 12) * 1e4)
            self.register_buffer("signal", torch.tensor(signal))  # in the weights' fingerprint (the cache key)
            self.num_features = 12

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 12]: the vector, plus signal x the top-left
            return self.v.expand(len(x), -1) + self.signal * x[:, :, :8, :8].flatten(1).mean(1, keepdim=True)

    def loader(signal: float):
        def load(path: Path) -> torch.nn.Module:
            enc = Dominated(signal).eval()
            enc.selfsup_info = DataInfo(1, 16, 2, (0.35,), (0.3,), 16)
            return enc
        return load

    for name in ("constant", "faint"):
        (tmp_path / name).mkdir()
    kinds = [("random:repvgg_a0", None, "so are the probes: no feature varies by 1e-06 across images"),
             (str(tmp_path / "constant"), loader(0.0), "so are the probes: no feature varies by 1e-06 across images"),
             (str(tmp_path / "faint"), loader(1e-2), "the linear probe standardises each feature and reads the 12 "
                                                     "of 12 that vary")]
    for spec, load, probes in kinds:
        row = evaluate(spec, cfg, tmp_path / "cache", log=quiet, load=load)
        assert row["label_free"]["spread"] < 1e-8, spec
        said = [w for w in row["warnings"] if w.startswith("the features barely vary across test images")]
        assert len(said) == 1 and "so the kNN columns are unreliable, down to chance; " + probes in said[0], row["warnings"]
        assert said[0] in markdown_table([row])
    varying = evaluate("random:resnet18", cfg, tmp_path / "cache", log=quiet)
    assert varying["label_free"]["spread"] > 1e-4 and not varying["warnings"]


def test_a_collapsed_run_and_a_dominated_stage_are_named_in_the_rows_warnings():
    """helper-55's: a run trained at lr 5000 scored RankMe 1.01 of 64 with no word (the training monitors had not
    run in 5 steps); layer-wise rows repeated one warning without the stage it was about."""
    from selfsup.eval.evaluate import feature_warnings
    from selfsup.eval.layers import Stage
    from selfsup.monitors import rankme, relative_spread

    g = torch.Generator().manual_seed(0)
    line = torch.randn(200, 1, generator=g) @ torch.randn(1, 64, generator=g) + 1e-4 * torch.randn(200, 64, generator=g)
    signals = {"rankme": rankme(line), "spread": relative_spread(line)}
    assert signals["spread"] > 1e-6 and signals["rankme"] < 1.5
    (said,) = feature_warnings(line, signals, "pretrained")
    assert said.startswith("the test features: RankMe 1.") and "of 64 dimensions (below 1.5, hardly more than one " \
        "direction): the embeddings have collapsed" in said
    assert feature_warnings(line, signals, "random") == []  # a random init is what it is, not a run that collapsed
    stage = Stage("stages.1", 1, 32, 4, False)
    one = torch.ones(50, 8)
    (said,) = feature_warnings(one, {"rankme": 1.0, "spread": relative_spread(one)}, "random", stage)
    assert said.startswith("the features of stage stages.1 barely vary across test images (their spread is 0.0e+00")


# --------------------------------------------------------------------------- unlabeled images and classes


def _register(monkeypatch, name: str, train: TensorImages, test: TensorImages) -> None:
    monkeypatch.setitem(DATASETS._items, name, lambda cfg, split: train if split == "train" else test)


def test_unlabeled_training_rows_never_vote_nor_train_a_probe(monkeypatch, tmp_path):
    """STL-10's "train" is train+unlabeled (label -1); only the labelled rows are scored."""
    xtr, ytr = toy_images(8, 2, 8, 0)
    xte, yte = toy_images(4, 2, 8, 1)
    xun, _ = toy_images(10, 2, 8, 2)  # 20 unlabeled images, interleaved with the labelled ones
    mixed_x = torch.cat([xun[:10], xtr[:8], xun[10:], xtr[8:]])
    mixed_y = torch.cat([torch.full((10,), -1), ytr[:8], torch.full((10,), -1), ytr[8:]])
    test = TensorImages(xte, yte, 2)
    _register(monkeypatch, "toy-with-unlabeled", TensorImages(mixed_x, mixed_y, 2), test)
    _register(monkeypatch, "toy-labelled", TensorImages(xtr, ytr, 2), test)
    probe = ["eval.linear=true", "eval.linear_epochs=2", "eval.linear_lrs=[0.1]", "eval.linear_wds=[0.0]",
             "eval.low_shot=[]", "eval.probe_seeds=1"]
    logs: list[str] = []
    got = evaluate("pixels", eval_cfg(None, "data.name=toy-with-unlabeled", *probe), tmp_path, log=logs.append)
    ref = evaluate("pixels", eval_cfg(None, "data.name=toy-labelled", *probe), tmp_path / "ref", log=quiet)
    assert got["train_images"] == 16 and got["train_unlabeled_left_out"] == 20 and ref["train_unlabeled_left_out"] == 0
    assert got["knn"] == ref["knn"] and got["knn"][KNN]["top1"] == 100.0
    assert got["linear"]["top1"] == ref["linear"]["top1"] and got["linear"]["train_images"] == 16
    assert got["linear_sklearn"] == ref["linear_sklearn"]
    assert any("20 unlabeled training image(s)" in line for line in logs)
    left_out = "20 unlabeled training image(s) (label -1) left out of kNN and the probes"
    assert got["warnings"] == [left_out] and ref["warnings"] == []
    assert f"- **Warning** (raw pixels): {left_out}" in markdown_table([got]).splitlines()  # said in results.md too


def test_unlabeled_test_rows_are_an_error_before_any_work(monkeypatch, tmp_path):
    xtr, ytr = toy_images(8, 2, 8, 0)
    xte, yte = toy_images(4, 2, 8, 1)
    yte = yte.clone()
    yte[[1, 5, 6]] = -1
    _register(monkeypatch, "toy-test-unlabeled", TensorImages(xtr, ytr, 2), TensorImages(xte, yte, 2))
    with pytest.raises(DataError, match=r"test split of dataset 'toy-test-unlabeled' has 3 unlabeled image\(s\)"):
        evaluate("pixels", eval_cfg(None, "data.name=toy-test-unlabeled"), tmp_path / "cache", log=quiet)
    assert not files_under(tmp_path / "cache")


def test_one_class_needs_two_classes_before_any_work(tmp_path, capsys):
    folder = tmp_path / "one"
    images, labels = toy_images(6, 1, 8, 0)
    write_split(folder / "train", images, labels)
    write_split(folder / "test", images[:2], labels[:2])
    out = tmp_path / "ev"
    assert main(["eval", "pixels", *eval_args(folder), "--out", str(out)]) == 2
    one_line_error(capsys, "a linear probe / kNN evaluation needs at least two classes", "'class0'")
    assert not files_under(out)  # nothing extracted, nothing written
    # another member of the kind: a subset that keeps one class of a two-class folder
    two = toy_folder(tmp_path / "two")
    with pytest.raises(NotScorable, match="needs at least two classes"):
        evaluate("pixels", eval_cfg(two, "data.subset=1"), tmp_path / "cache", log=quiet)
    assert not files_under(tmp_path / "cache")


def test_a_low_shot_column_on_few_images_says_what_it_trained_on(tmp_path):
    """4 classes x 8 training images at 5%: one image per class makes 4 images (12.5%), and the
    2 x 2 grid is chosen on 1 held-out image, and 4 images are too few to standardise by; results.md carries
    the warnings, logged too."""
    logs = []
    cfg = eval_cfg(toy_folder(tmp_path / "four", classes=4), "eval.linear=true", "eval.low_shot=[0.05]",
                   "eval.linear_lrs=[0.1, 0.3]", "eval.linear_wds=[0.0, 0.0001]", "eval.probe_seeds=1",
                   "eval.linear_epochs=2", "eval.sklearn_max_images=0")
    row = evaluate("pixels", cfg, tmp_path / "cache", log=logs.append)
    assert row["linear_5pct"]["train_images"] == 4 and row["linear_5pct"]["val_images"] == 1
    assert row["warnings"] == [
        "the linear probe at 100% labels chose among 4 tried settings on 3 held-out image(s), fewer than the 4 classes, "
        "so the choice is close to arbitrary; use more labelled images or a single setting",
        "the linear probe at 5% labels trains on 4 of 32 images (12.5%): a class-balanced subset keeps at least one "
        "image per class",
        "the linear probe at 5% labels chose among 4 tried settings on 1 held-out image(s), fewer than the 4 classes, so "
        "the choice is close to arbitrary; use more labelled images or a single setting",
        "the linear probe at 5% labels trains on 4 images, fewer than 16: too few to measure each feature's spread "
        "(from a handful of images some features are near-constant by chance, and standardising multiplied them on "
        "other images by up to 1e4), so it is standardised with the whole training split's mean and std (no labels "
        "used)"]
    table = markdown_table([row])
    assert all(f"**Warning** (raw pixels): {w}" in table for w in row["warnings"])
    assert sum("warning (raw pixels)" in m for m in logs) == 4


# --------------------------------------------------------------------------- the README's own-folder workflow


@pytest.fixture(scope="module")
def unlabeled_run(tmp_path_factory) -> tuple[Path, str]:
    """The README's command on a flat folder of RGB PNGs (no labels), one step; what it printed."""
    import contextlib
    import io

    from conftest import ROOT

    base = tmp_path_factory.mktemp("unlabeled")
    flat = base / "photos"
    flat.mkdir()
    images, _ = toy_images(4, 2, 16, 5)
    for i, img in enumerate(images):
        Image.fromarray(np.repeat(img[0].numpy()[..., None], 3, 2), "RGB").save(flat / f"img{i}.png")
    run = base / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run),
                     "data.name=image-folder", f"data.root={flat}", "data.image_size=16", "data.batch_size=4",
                     "trainer.max_steps=1", "trainer.precision=32-true", "trainer.progress_bar=false", TINY_ENCODER])
    assert code == 0, buf.getvalue()[-2000:]
    return run, buf.getvalue()


def test_unlabeled_folder_trains_and_exports_and_says_why_not_evaluated(unlabeled_run, capsys):
    run, printed = unlabeled_run
    assert (run / "export" / "model.safetensors").is_file() and (run / "export" / "config.json").is_file()
    assert not (run / "results.json").exists() and not (run / "results.md").exists()
    assert not files_under(run / "features")
    skipped = [line for line in printed.splitlines() if "kNN and linear probes skipped" in line]
    assert len(skipped) == 1 and "has no labels" in skipped[0]
    assert f"selfsup eval {run} data.root=LABELLED_FOLDER" in skipped[0]
    assert f"run directory: {run}" in printed
    # evaluating the run on its own (unlabeled) data is an error that says how to evaluate it
    assert main(["eval", str(run)]) == 2
    one_line_error(capsys, "has no labels", "data.root=LABELLED_FOLDER")


# --------------------------------------------------------------------------- channels


def test_channel_mismatch_is_named_before_the_first_forward_pass(labelled_run, unlabeled_run, tmp_path, capsys):
    gray_run, _, _ = labelled_run
    rgb = toy_folder(tmp_path / "rgb", size=16, rgb=True)
    out = tmp_path / "ev"
    # an export trained on 1-channel images, evaluated on an RGB folder
    assert main(["eval", str(gray_run / "export"), f"data.root={rgb}", "data.in_chans=3", "--out", str(out)]) == 2
    one_line_error(capsys, "takes 1-channel images", "gives 3-channel images", "data.in_chans=1")
    assert not files_under(out)
    # and the other way round: an RGB encoder (run directory) on images read as grayscale
    rgb_run, _ = unlabeled_run
    assert main(["eval", str(rgb_run), "data.name=image-folder", f"data.root={rgb}", "data.in_chans=1",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "takes 3-channel images", "gives 1-channel images", "data.in_chans=3")
    assert not files_under(out)
    # with the channels the encoder takes, the same folder evaluates
    assert main(["eval", str(gray_run / "export"), f"data.root={rgb}", "data.in_chans=1", "eval.baselines=[]",
                 "--out", str(out)]) == 0
    assert 0 <= top1(out / "results.json") <= 100


def test_detection_results_of_another_deepforest_folder_get_their_own_folder(tmp_path):
    """detection.deepforest_root names other images: its results never land in (and overwrite)
    the default deepforest folder's, and one folder gives one name however it is spelled."""
    from selfsup.cli_eval import detection_tag

    def tag(*overrides):
        return detection_tag(load_config(None, ["method.name=simclr", "detection.dataset=deepforest", *overrides]))

    a, b = tmp_path / "a", tmp_path / "b"
    tags = [tag(), tag(f"detection.deepforest_root={a}"), tag(f"detection.deepforest_root={b}")]
    assert tags[0] == "deepforest" and all(t.startswith("deepforest-") for t in tags[1:])
    assert len(set(tags)) == 3
    assert tag(f"detection.deepforest_root={a}/../a") == tags[1]


def test_layer_wise_evaluation_through_pretrain_and_eval(tmp_path, capsys):
    """`eval.layers=all` reaches the user: pretraining ends with one row per stage of the
    pretrained and the random encoder (pixels: one), the final stage's row equal to the default
    `last` evaluation of `selfsup eval`; the export card keeps the final stage's numbers only; a
    stage the encoder lacks is refused before any training step, no checkpoint written."""
    from conftest import ROOT

    folder = toy_folder(tmp_path / "data", size=16)
    args = ["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "data.name=image-folder", f"data.root={folder}",
            "data.image_size=16", "data.in_chans=1", "data.batch_size=8", "trainer.max_steps=1",
            "trainer.precision=32-true", "trainer.progress_bar=false", TINY_ENCODER, "eval.knn=[[3, 0.07]]",
            "eval.linear=false", "eval.baselines=[random, pixels]"]
    bad = tmp_path / "bad"
    capsys.readouterr()
    code = main([*args[:2], "--run-dir", str(bad), *args[2:], "eval.layers=[layer2, layer9]"])
    err = capsys.readouterr().err
    assert code == 2 and "layer9" in err and "layer1" in err and err.count("\n") == 1, err
    assert not (bad / "checkpoints").exists()
    run = tmp_path / "run"
    assert main([*args[:2], "--run-dir", str(run), *args[2:], "eval.layers=all"]) == 0
    rows = json.loads((run / "results.json").read_text())
    stages = ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [(r["kind"], r["layer"]) for r in rows] == [("pretrained", s) for s in stages] + [
        ("random", s) for s in stages] + [("pixels", None)]
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--out", str(out), "--baseline", "pixels", "eval.layers=last"]) == 0
    last = json.loads((out / "results.json").read_text())
    assert last[0]["knn"] == rows[4]["knn"] and "layer" not in last[0]
    card = json.loads((run / "export" / "config.json").read_text())["selfsup"]
    pretrained = [lbl for lbl in card["results"] if "pretrained" in lbl]
    assert len(pretrained) == 1 and card["results"][pretrained[0]]["knn"] == rows[4]["knn"]


def test_an_evaluation_config_without_a_method_is_read(tmp_path, capsys):
    """`selfsup eval pixels --config FILE` where FILE holds only data and eval sections: evaluated (an
    evaluation uses no method; it used to be refused with 'method.name is required')."""
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"data:\n  name: image-folder\n  root: {toy_folder(tmp_path / 'two')}\n  image_size: 8\n"
                   f"  in_chans: 1\neval:\n  knn: [[3, 0.07]]\n  linear: false\n  plots: false\n")
    out = tmp_path / "out"
    assert main(["--quiet", "eval", "pixels", "--config", str(cfg), "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())[0]["kind"] == "pixels"


def test_a_run_evaluated_at_another_size_says_which_size_each_encoder_saw(labelled_run, tmp_path, capsys):
    """A run trained at 16 px, evaluated with data.image_size=20: the run's encoder sees 16 px (its
    training size) while the pixel baseline sees 20, which was silent; the table now warns. With
    eval.image_size=20 every target sees 20 px: the cached features are the encoder on the images
    resized to 20 and normalised by the run's statistics, computed here by hand. The two evaluations
    keep their own folders (the second replaced the first)."""
    import torch.nn.functional as F
    from selfsup.eval.features import FeatureFile

    import shutil

    run = tmp_path / "run"  # a copy: the other tests leave their evaluation folders in the shared one
    shutil.copytree(labelled_run[0], run, ignore=shutil.ignore_patterns("eval-*"))
    assert main(["eval", str(run), "data.image_size=20", "--baseline", "pixels"]) == 0
    capsys.readouterr()
    (mixed_dir,) = run.glob("eval-image-folder-*-*")
    mixed = json.loads((mixed_dir / "results.json").read_text())
    assert [(r["kind"], r["image_size"], r["data_image_size"]) for r in mixed] == [
        ("pretrained", 16, 20), ("pixels", 20, 20)]
    assert ("**Warning**: the encoders saw the images at different sizes (run run 16 px; raw pixels 20 px)"
            in (mixed_dir / "results.md").read_text())
    own = json.loads((run / "results.json").read_text())
    assert main(["eval", str(run), "eval.image_size=16", "--baseline", "pixels"]) == 0  # the run's size and data:
    again = json.loads((run / "results.json").read_text())  # its own evaluation (results.json), no new folder
    assert [(r["kind"], r["knn"]) for r in again] == [(r["kind"], r["knn"]) for r in own]
    assert "eval settings differ" not in capsys.readouterr().out and len(list(run.glob("eval-*/results.json"))) == 1
    assert main(["eval", str(run), "data.image_size=20", "eval.image_size=20", "--baseline", "pixels"]) == 0
    folders = sorted(run.glob("eval-image-folder-*-*"))
    assert len(folders) == 2 and json.loads((mixed_dir / "results.json").read_text()) == mixed  # kept
    same_dir = next(f for f in folders if f != mixed_dir)
    same = json.loads((same_dir / "results.json").read_text())
    assert [(r["kind"], r["image_size"]) for r in same] == [("pretrained", 20), ("pixels", 20)]
    assert "different sizes" not in (same_dir / "results.md").read_text()
    where = same[0]["test_features"]
    cached = FeatureFile(Path(where["directory"]) / f"{where['name']}.safetensors").load()  # [N, D]
    encoder = load_encoder(run)
    info = encoder.selfsup_info
    cfg = load_config(run / "config.yaml", ["data.image_size=20"])
    test = build_dataset(cfg.data, "test")
    x = torch.stack([test[i][0] for i in range(len(test))]).float() / 255  # [N, 1, 20, 20]: the folder at 20 px
    assert x.shape[-1] == 20
    mean, std = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)
    with torch.no_grad():
        want = encoder((x - mean) / std)  # [N, D]
    assert cached.shape == want.shape and torch.allclose(cached, want, atol=2e-3 * want.abs().max().item())
    with torch.no_grad():  # and not the encoder at its training size
        small = encoder((F.interpolate(x, size=16, mode="bilinear", antialias=True) - mean) / std)
    assert not torch.allclose(cached, small, atol=2e-3 * want.abs().max().item())


def test_a_baseline_that_is_the_target_under_another_name_is_refused(labelled_run, tmp_path, capsys):
    """`eval RUN --baseline RUN/export` printed two rows of the same numbers ("run run", "export export"), the
    second as a baseline; so did the run's checkpoint, and random: beside random:NAME of the config's encoder.
    Two targets with the same weights are refused in one line before any feature is extracted."""
    run = labelled_run[0]
    ckpt = run / "checkpoints" / "last.ckpt"
    cases = [([str(run), "--baseline", str(run / "export")], f"--baseline {run / 'export'} has the same weights as the "
              f"target {run}: it is the same encoder"),
             ([str(run / "export"), "--baseline", "pixels", "--baseline", str(ckpt)],
              f"--baseline {ckpt} has the same weights as the target {run / 'export'}"),
             (["random:", "--baseline", "pixels", "--baseline", "random:resnet18", *eval_args(labelled_run[1])[:4]],
              "--baseline random:resnet18 has the same weights as the target random:")]
    for argv, said in cases:
        out = tmp_path / "out"
        assert main(["eval", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err and err.rstrip().endswith("give each encoder once"), err
        assert not out.exists()
    assert main(["eval", str(run), "--baseline", "random:", "--out", str(tmp_path / "ok"), "eval.linear=false"]) == 0
    random_row = json.loads((tmp_path / "ok" / "results.json").read_text())[1]  # random: is the run's slim resnet18
    assert (random_row["kind"], random_row["encoder_kwargs"]) == ("random", {"channels": [8, 16, 32, 64]})
    assert "built with encoder.kwargs {'channels': [8, 16, 32, 64]}" in (tmp_path / "ok" / "results.md").read_text()


def test_a_run_evaluated_while_another_process_trains_it_is_warned_and_records_no_steps(labelled_run, tmp_path,
                                                                                        capsys):
    """`selfsup eval RUN` while `selfsup pretrain` was training RUN read whatever checkpoint was there and wrote
    its numbers as the run's, with the step count of an earlier training (so a later check took them for
    current). The row now says the run was being trained and by which process, and records no steps."""
    import shutil

    from conftest import lock_held_elsewhere
    from selfsup.rundir import training_warning, weights_record

    run = tmp_path / "run"
    shutil.copytree(labelled_run[0], run, ignore=shutil.ignore_patterns("eval-*"))
    assert weights_record(str(run), "pretrained")["trained_steps"] == 1 and training_warning(str(run), "pretrained") \
        is None
    with lock_held_elsewhere(run) as pid:
        assert weights_record(str(run), "pretrained") == {"mid_training": True, "target_path": str(run.resolve())}
        assert main(["eval", str(run), "--out", str(tmp_path / "while"), "eval.plots=false"]) == 0
        own = (run / "results.json").read_bytes()
        capsys.readouterr()
        assert main(["eval", str(run), "eval.plots=false", "--baseline", "pixels"]) == 0  # in place: not over it
        assert "[eval] the run is being trained by another process (these numbers are of a checkpoint on the " \
            "way): results go to" in capsys.readouterr().out
        assert (run / "results.json").read_bytes() == own
        capsys.readouterr()
        assert main(["export", str(run), str(tmp_path / "live")]) == 0  # helper-61's: the live checkpoint, no results
        assert f"note: {run} is being trained by process {pid}: this export holds its last checkpoint now, " \
            "without results" in capsys.readouterr().out
        from selfsup.artifacts.validate import read_card

        assert not read_card(tmp_path / "live").get("results")
        assert main(["eval", str(run), "--protocol", "bitfit", "--transfer", "epochs=1", "--transfer", "seeds=1",
                     "--transfer", "low_shot=[]", "--out", str(tmp_path / "adapted"), "eval.plots=false"]) == 0
    row = json.loads((tmp_path / "while" / "results.json").read_text())[0]
    from selfsup.rundir import results_behind

    assert row["mid_training"] and results_behind([row], 1) == "of a checkpoint read while it was still training"
    said = (f"{run} was being trained by process {pid} when evaluated: these are the numbers of its last "
            f"checkpoint then, not of its final weights")
    assert "trained_steps" not in row and any(w.startswith(said) for w in row["warnings"]), row["warnings"]
    assert said in (tmp_path / "while" / "results.md").read_text()
    assert "the weights of the last checkpoint (a run still training: its warning says so)" in \
        (tmp_path / "while" / "results.md").read_text()
    (adapted,) = json.loads((tmp_path / "adapted" / "results.json").read_text())  # a transfer: the same warning
    assert "trained_steps" not in adapted and any(w.startswith(said) for w in adapted["warnings"])
    assert said in (tmp_path / "adapted" / "results.md").read_text()
    assert training_warning(str(run), "pretrained") is None  # the holder is gone: the lock with it


def test_same_weights_pairs_each_repeat_with_the_first_target_holding_its_weights():
    """same_weights, which eval's refusal and pretrain's leaving-out both read: each later target whose
    fingerprint an earlier one has, paired with the first of them (not the previous repeat); distinct ones none."""
    from types import SimpleNamespace

    from selfsup.eval.prepare import same_weights

    keys = ["run", "export-of-other", "run", "export-of-other", "run", "pixels"]
    assert same_weights([SimpleNamespace(key=k) for k in keys]) == [(2, 0), (3, 1), (4, 0)]
    assert same_weights([SimpleNamespace(key=k) for k in ("a", "b", "c")]) == []
    assert same_weights([]) == []


def test_pretrains_baseline_with_the_runs_own_weights_is_left_out_with_a_line(labelled_run, tmp_path, capsys):
    """helper-56's: `pretrain ... eval.baselines=[RUN_A]`, RUN_A trained the same way (same seed, bitwise the same
    weights), printed RUN_A's row as a baseline beside the run's own, the same numbers twice (`selfsup eval`
    refuses this; pretraining has already trained, so the row is left out and said so)."""
    from conftest import ROOT

    run_a, folder, _ = labelled_run
    run = tmp_path / "again"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run),
                 "data.name=image-folder", f"data.root={folder}", "data.image_size=16", "data.in_chans=1",
                 "data.batch_size=8", "trainer.max_steps=1", "trainer.precision=32-true", "trainer.progress_bar=false",
                 TINY_ENCODER, "eval.knn=[[3, 0.07]]", "eval.linear=false", "eval.plots=false",
                 f"eval.baselines=[pixels, {run_a}]"]) == 0
    out = capsys.readouterr().out
    said = f"Baseline {run_a} (eval.baselines) has this run's own weights: left out (its row would repeat the run's)."
    assert f"[eval] {said}" in out
    assert f"\n- {said}\n" in (run / "results.md").read_text()  # the table says so too, not only the console
    rows = json.loads((run / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["pretrained", "pixels"]
    assert rows[0]["knn"] == json.loads((run_a / "results.json").read_text())[0]["knn"]  # the same encoder indeed


def test_compare_marks_results_of_a_runs_older_weights_after_a_resume(labelled_run, tmp_path, capsys):
    """helper-56's: after `pretrain --resume RUN trainer.max_steps=...` (with --no-eval, or for RUN's evaluation
    folders in any case) compare showed the numbers of the weights before the resume beside the run's new epochs,
    with nothing to say so. Rows record the run's steps when evaluated; compare warns where the run trained on."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(labelled_run[0], run, ignore=shutil.ignore_patterns("eval-*"))
    assert main(["eval", str(run), "data.image_size=20"]) == 0
    (folder,) = [p.parent for p in run.glob("eval-*/results.json")]
    assert json.loads((folder / "results.json").read_text())[0]["trained_steps"] == 1
    capsys.readouterr()
    assert main(["compare", str(run), str(folder)]) == 0
    assert "optimiser steps; the run has trained" not in capsys.readouterr().out  # fresh: no warning
    assert main(["pretrain", "--resume", str(run), "trainer.max_steps=2", "--no-eval"]) == 0
    assert (f"[pretrain] 1 evaluation folder of this run holds numbers of older weights (selfsup compare warns on "
            f"them; evaluate again for the weights now): {folder}") in capsys.readouterr().out
    assert main(["compare", str(run), str(folder)]) == 0
    out = capsys.readouterr().out
    said = "'s weights after 1 optimiser step; the run has trained to 2 since (a resume)"
    assert out.count(said) == 2, out  # the run's own results.json (--no-eval kept it) and its evaluation folder
    assert main(["pretrain", "--resume", str(run), "trainer.max_steps=3", "eval.plots=false"]) == 0  # evaluated
    out = capsys.readouterr().out  # helper-61's: a resume with its evaluation named no folder of older weights
    assert "[pretrain] 1 evaluation folder of this run holds numbers of older weights" in out and \
        "results.json holds the numbers" not in out and "export holds the encoder" not in out, out


def test_a_resume_without_evaluation_names_the_outputs_it_left_behind_and_exports_no_older_numbers(
        labelled_run, tmp_path, capsys):
    """After `pretrain --resume RUN ... --no-eval` trained on, RUN/results.json and RUN/export were of the older
    weights with nothing to say so; `selfsup export RUN DIR` then wrote the older weights' kNN into the card of
    the new weights (a silent wrong number), and compare showed RUN/export without a word. The resume names
    both with their commands, the export leaves the older numbers out, compare warns on the old export; after
    the commands nothing is left to warn about."""
    import shutil

    from selfsup.artifacts.validate import read_card

    run = tmp_path / "run"
    shutil.copytree(labelled_run[0], run, ignore=shutil.ignore_patterns("eval-*"))
    assert read_card(run / "export")["trained_steps"] == 1 and read_card(run / "export")["results"]
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "trainer.max_steps=2", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert (f"[pretrain] {run / 'results.json'} holds the numbers of the weights after 1 optimiser step, not of "
            f"the 2 steps now: selfsup eval {run} --baseline pixels for them") in out
    assert (f"[pretrain] {run / 'export'} holds the encoder after 1 optimiser step, not the 2 now: selfsup export "
            f"{run} {run / 'export'} for it") in out
    assert main(["export", str(run), str(tmp_path / "new")]) == 0
    assert (f"note: {run / 'results.json'} holds the numbers of {run}'s weights after 1 optimiser step, not of its "
            f"weights now (2 optimiser steps): the export carries no results") in capsys.readouterr().out
    card = read_card(tmp_path / "new")
    assert card["trained_steps"] == 2 and not card.get("results")
    assert main(["compare", str(run / "export")]) == 0
    assert (f"an export of {run}'s weights after 1 optimiser step; the run has trained to 2 since (a resume): "
            f"selfsup export {run} {run / 'export'} for its weights now") in capsys.readouterr().out
    # helper-62's: a transfer's table called the left-out results.json "no frozen-feature evaluation beside it"
    assert main(["eval", str(run), "--protocol", "bitfit", "--transfer", "epochs=1", "--transfer", "seeds=1",
                 "--transfer", "low_shot=[]", "--out", str(tmp_path / "adapted"), "eval.plots=false"]) == 0
    assert (f"- Frozen linear / kNN top-1 are blank: {run}'s results.json holds frozen numbers after 1 optimiser step, "
            f"not of the weights this transfer adapted (a resume trained on since, or a checkpoint read "
            f"mid-training); `selfsup eval {run}` with the same data options evaluates its weights now."
            ) in (tmp_path / "adapted" / "results.md").read_text()
    assert main(["eval", str(run), "--baseline", "pixels"]) == 0  # the command the resume gave: results.json
    assert main(["export", str(run), str(run / "export")]) == 0
    assert read_card(run / "export")["results"]  # the numbers of the weights now
    capsys.readouterr()
    assert main(["compare", str(run), str(run / "export")]) == 0
    assert "since (a resume)" not in capsys.readouterr().out
    from selfsup.pipeline import left_behind

    assert left_behind(run) == []


def test_out_naming_the_run_itself_is_the_runs_default_place(labelled_run, tmp_path, capsys):
    """`eval RUN --out RUN` was refused as "--out is a run directory", although RUN is where `eval RUN` writes;
    it is now that default (the run's own results kept by the same rules), and another run as --out is still
    refused."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(labelled_run[0], run, ignore=shutil.ignore_patterns("eval-*"))
    before = json.loads((run / "results.json").read_text())
    assert main(["eval", str(run), "--out", f"{run}/", "--baseline", "pixels"]) == 0
    after = json.loads((run / "results.json").read_text())
    assert [(r["kind"], r["knn"]) for r in after] == [(r["kind"], r["knn"]) for r in before]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(other)]) == 2
    assert "is a run directory" in capsys.readouterr().err


def test_an_out_folder_outside_the_run_is_marked_too(labelled_run, tmp_path, capsys, monkeypatch):
    """helper-57's: `selfsup eval RUN --out DIR` (DIR outside the run), then a resume that trained on: compare
    warned the run's own folders but not DIR, whose row named the run by the path as typed (relative)."""
    import shutil

    from conftest import one_line_error
    from test_compare_transfer import table

    run = tmp_path / "run"
    shutil.copytree(labelled_run[0], run, ignore=shutil.ignore_patterns("eval-*"))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "run", "--out", "outside"]) == 0
    capsys.readouterr()
    assert main(["compare", "outside"]) == 0  # helper-62's: method and encoder were blank for a folder outside
    _, by_target = table(capsys.readouterr().out)
    epochs = json.loads((run / "training_time.json").read_text())["epochs"]
    assert [by_target["outside"][k] for k in ("method", "encoder", "epochs")] == ["simclr", "resnet18", f"{epochs:g}"]
    assert main(["pretrain", "--resume", "run", "trainer.max_steps=2", "--no-eval"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "outside")  # another working directory: the relative "run" names nothing here
    assert main(["compare", str(tmp_path / "outside")]) == 0
    out = capsys.readouterr().out
    assert "'s weights after 1 optimiser step; the run has trained to 2 since (a resume)" in out, out
    assert table(out)[1][str(tmp_path / "outside")]["epochs"] == ""  # the run's epochs now are not its weights'
    assert main(["compare", str(tmp_path / "run" / "features")]) == 2  # the run's cache: its evaluations named
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {tmp_path / 'run' / 'features'} is the feature cache of run {tmp_path / 'run'}, "
        f"not an evaluation: compare the run or its evaluation folders: {tmp_path / 'run'}")


def test_a_random_baseline_that_cannot_take_the_images_is_refused_before_pretraining(labelled_run, tmp_path, capsys):
    """helper-57's: `eval.baselines=[random:vit_tiny_patch16_224]` on 16 px images trained, then failed on the
    ViT's first forward pass (fixed 224 px), leaving the run without results or export. Built and run once
    before training now."""
    from conftest import ROOT

    run = tmp_path / "r"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "data.name=digits",
                 "data.image_size=16", TINY_ENCODER, "trainer.max_steps=1",
                 "eval.baselines=[pixels, random:vit_tiny_patch16_224]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.baselines: 'random:vit_tiny_patch16_224' cannot be evaluated on these " \
        "images: random-init vit_tiny_patch16_224 fails on a forward pass of a 1x16x16 image" in err, err
    assert not run.exists()


def test_an_export_of_the_runs_last_checkpoint_keeps_its_results_and_an_earlier_one_carries_none(
        labelled_run, tmp_path, capsys):
    """helper-66's: `selfsup export RUN/checkpoints/last.ckpt RUN/export` replaced an export holding the run's
    results with one holding none ("No evaluation results were recorded"): the results were looked up beside
    the checkpoint file. The run's last checkpoint is the run's weights (its results go with it); another
    checkpoint of the run is not (none go, and the note says why)."""
    import shutil

    from selfsup.artifacts.validate import read_card

    run = tmp_path / "run"
    shutil.copytree(labelled_run[0], run, ignore=shutil.ignore_patterns("eval-*"))
    assert main(["export", str(run), str(run / "export")]) == 0  # the run's results, as the run gives them
    kept = read_card(run / "export")["results"]
    assert kept
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), str(run / "export")]) == 0
    assert read_card(run / "export")["results"] == kept
    shutil.copy(run / "checkpoints" / "last.ckpt", run / "checkpoints" / "epoch=0.ckpt")
    capsys.readouterr()
    assert main(["export", str(run / "checkpoints" / "epoch=0.ckpt"), str(tmp_path / "early")]) == 0
    assert (f"note: {run / 'results.json'} holds the numbers of {run}'s last checkpoint, and "
            f"{run / 'checkpoints' / 'epoch=0.ckpt'} is another checkpoint file, never evaluated itself: the export "
            f"carries no results (for them: selfsup eval {tmp_path / 'early'})") in capsys.readouterr().out
    assert not read_card(tmp_path / "early").get("results")
