"""README claims that no other test checks, each against an independent computation.

- "selfsup's `random:` baseline disables [timm's zero_init_last]"
- "Raw pixels are normalised and centred on the training mean image."
- the linear probe's "learning rate and weight decay are chosen on 10% of the training set
  held out, then it is retrained on the whole training set"
- "Features are extracted once per split and cached [...], keyed by a hash of the encoder's weights."
- "A target is a run directory, an export directory, a checkpoint, ..." (`selfsup eval`)
- "an online linear probe on detached features [...] reports `probe/val_acc` every epoch"
- "`compile`: `torch.compile` of the encoder, in place (checkpoint and export names unchanged)"

One tiny SimCLR run on sklearn's digits (16 px, one epoch, float32) serves the tests that need a run.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from selfsup.cli import main
from selfsup.config import load_config

from conftest import ROOT  # noqa: E402

DATA = ["data.name=digits", "data.image_size=16"]
EVAL = ["eval.linear_epochs=5", "eval.linear_lrs=[0.1]", "eval.linear_wds=[0.0]", "eval.low_shot=[]",
        "eval.probe_seeds=1", "eval.baselines=[]"]
RUN = [*DATA, "data.batch_size=64", "encoder.kwargs={channels: [8, 16, 32, 64]}",
       "method.proj_hidden_dim=64", "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.precision=32-true",
       *EVAL]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished pretraining run (no evaluation): config.yaml, checkpoints/last.ckpt, logs/metrics.csv."""
    run = tmp_path_factory.mktemp("readme") / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "--no-eval", *RUN]) == 0
    return run


def eval_rows(target: str | Path, out: Path, *overrides: str) -> list[dict]:
    """``selfsup eval TARGET --out OUT OVERRIDES``: the rows of its results.json."""
    assert main(["eval", str(target), "--out", str(out), *overrides]) == 0
    return json.loads((out / "results.json").read_text())


# --------------------------------------------------------------------------- the fair random baseline


def gates_of_residual_blocks(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that timm's ``zero_init_last`` zeroes (the last norm's gamma of
    every residual block), found by calling each block's ``zero_init_last()`` on a copy and
    seeing what changed from a marker value."""
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(7.0)
    blocks = [m for m in probe.modules() if m is not probe and callable(getattr(m, "zero_init_last", None))]
    for block in blocks:
        block.zero_init_last()
    gates = [n for n, p in probe.named_parameters() if bool((p == 0).all())]
    assert len(gates) == len(blocks) > 0
    return gates


@pytest.mark.parametrize("name, kwargs", [("resnet18", {"channels": [8, 16, 32, 64]}),
                                          ("resnet26", {"channels": [8, 16, 32, 64]})],
                         ids=["basic-blocks", "bottlenecks"])
def test_random_baseline_disables_zero_init_last(name, kwargs):
    from selfsup.data import DataInfo
    from selfsup.eval.target import resolve_target

    cfg = load_config(None, ["method.name=simclr", *DATA, f"encoder.name={name}",
                             f"encoder.kwargs={json.dumps(kwargs)}"])
    info = DataInfo(in_chans=1, image_size=16, num_classes=10, mean=(0.3,), std=(0.3,))
    target = resolve_target(f"random:{name}", cfg, lambda: info)
    assert target.kind == "random"
    torch.manual_seed(cfg.seed)
    timm_default = timm.create_model(name, num_classes=0, in_chans=1, **kwargs)
    gates = gates_of_residual_blocks(timm_default)
    fair, default = dict(target.encoder.named_parameters()), dict(timm_default.named_parameters())
    assert set(fair) == set(default)
    for gate in gates:
        assert bool((default[gate] == 0).all()), f"timm's default zero-initialises {gate}"
        assert bool((fair[gate] != 0).all()), f"the random: baseline left {gate} at zero"
    # that gate is all that makes the default's blocks identities: the features differ
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(target.encoder.eval()(x), timm_default.eval()(x))


# --------------------------------------------------------------------------- raw pixels


def weighted_knn_top1(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                      k: int, t: float, classes: int) -> float:
    """Cosine similarity, the k most similar training rows, votes exp(sim / t) per class (percent)."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = b @ a.T  # [Q, N]
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # [Q, k]
    votes = np.zeros((len(b), classes))  # [Q, classes]
    rows = np.repeat(np.arange(len(b)), k)
    np.add.at(votes, (rows, train_labels[top].ravel()), np.exp(np.take_along_axis(sims, top, 1) / t).ravel())
    return 100.0 * float((votes.argmax(1) == test_labels).mean())


def test_pixels_are_normalised_and_centred_on_the_training_mean(tmp_path):
    """The pixel baseline's normalisation is the training images' own mean and std, and its kNN
    scores the pixels centred on the training mean image: the result equals a numpy kNN on
    centred pixels, and differs from one on uncentred pixels."""
    from selfsup.data import build_dataset

    settings = [(200, 0.1), (500, 1.0)]  # where centring moves digits' kNN by 6 and 21 test images
    knn = f"eval.knn={[list(kt) for kt in settings]}"
    cfg = load_config(None, ["method.name=simclr", *DATA])
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")

    def pixels(ds):
        images = torch.stack([ds[i][0] for i in range(len(ds))]).double() / 255  # [N, 1, 16, 16]
        return images.flatten(1).numpy(), np.array([int(ds[i][1]) for i in range(len(ds))])

    (xtr, ytr), (xte, yte) = pixels(train), pixels(test)
    info = train.info()
    assert abs(info.mean[0] - xtr.mean()) < 1e-3 and abs(info.std[0] - xtr.std()) < 1e-3
    ntr, nte = (xtr - info.mean[0]) / info.std[0], (xte - info.mean[0]) / info.std[0]
    centre = ntr.mean(0)  # the training mean image [256]
    row = eval_rows("pixels", tmp_path / "ev", *DATA, *EVAL, knn, "eval.linear=false")[0]
    one_query = 100.0 / len(yte)
    for k, t in settings:
        centred = weighted_knn_top1(ntr - centre, ytr, nte - centre, yte, k, t, 10)
        for other in (ntr, nte), (xtr, xte):  # normalised only; raw [0, 1] pixels
            assert abs(centred - weighted_knn_top1(other[0], ytr, other[1], yte, k, t, 10)) > 3 * one_query
        got = row["knn"][f"k={k},T={t:g}"]["top1"]
        assert abs(got - centred) <= one_query + 1e-9, (k, t, got, centred)  # float16 cache: one near-tie at most


# --------------------------------------------------------------------------- the linear probe


@pytest.fixture
def one_thread():
    """A thousand tiny SGD steps: one thread avoids thread hand-offs (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_probe_is_retrained_on_the_whole_training_set_after_selection(one_thread):
    """Random labels on 100 points in 400 dimensions: a linear probe fits any labelling of the rows
    it trains on but learns nothing about the others (a probe fit on 90 rows scores chance on the
    other 10, checked here with scikit-learn). Scored on the training rows themselves, only a probe
    retrained on all 100 rows after the lr/wd selection on a held-out 10% gets every row right."""
    from sklearn.linear_model import LogisticRegression

    from selfsup.eval.linear import probe_protocol

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 400, generator=g)  # [N, D]
    y = torch.randint(0, 4, (100,), generator=g)  # [N], no structure at all
    seen_90 = LogisticRegression(max_iter=2000).fit(x[:90].numpy(), y[:90].numpy())
    assert (seen_90.predict(x[:90].numpy()) == y[:90].numpy()).all()
    assert (seen_90.predict(x[90:].numpy()) == y[90:].numpy()).mean() <= 0.5  # unseen rows: chance

    out = probe_protocol(x, y, x, y, 4, [0.1, 1.0], [0.0], fractions=(1.0,), seeds=1, epochs=5,
                         batch_size=1024, val_fraction=0.1, seed=0)["linear"]
    assert out["top1_per_seed"] == [100.0]
    assert out["train_images"] == 100


# --------------------------------------------------------------------------- evaluation targets and the cache


def test_eval_of_a_run_directory_and_of_its_checkpoint_agree(run_dir, tmp_path):
    """`selfsup eval RUN` (the run's own data config) and `selfsup eval RUN/checkpoints/last.ckpt`
    (the config stored in the checkpoint, no data overrides: not the defaults' Fashion-MNIST)
    score the same encoder on the same data: identical kNN results (kNN alone keeps it short)."""
    from_run = eval_rows(run_dir, tmp_path / "run", "eval.linear=false")[0]
    from_ckpt = eval_rows(run_dir / "checkpoints" / "last.ckpt", tmp_path / "ckpt", "eval.linear=false")[0]
    assert from_run["dataset"] == from_ckpt["dataset"] == "digits"
    assert from_run["kind"] == from_ckpt["kind"] == "pretrained"
    assert from_run["train_images"] == from_ckpt["train_images"] == 1437  # digits' 80% split
    assert from_run["test_images"] == from_ckpt["test_images"] == 360
    assert from_run["knn"] == from_ckpt["knn"]
    assert from_run["knn"]["k=20,T=0.07"]["top1"] > 50  # a real encoder on digits, not chance (10)


def cached_features(out: Path) -> dict[str, tuple[int, str]]:
    """Every safetensors file under ``out``: (modification time, content hash)."""
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(out.rglob("*.safetensors"))}


def test_feature_cache_is_keyed_by_the_weights(run_dir, tmp_path):
    """Same weights (again, or a copy of the checkpoint under another name): the cached features
    are reused, no file is written. One weight changed: the features are extracted again."""
    from selfsup.export import load_checkpoint

    out = tmp_path / "ev"
    args = [*DATA, *EVAL, "eval.linear=false"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    first = eval_rows(ckpt, out, *args)[0]
    cache = cached_features(out)
    assert len(cache) >= 2  # train and test features

    assert eval_rows(ckpt, out, *args)[0]["knn"] == first["knn"]
    assert cached_features(out) == cache  # nothing recomputed
    twin = tmp_path / "twin.ckpt"
    shutil.copy(ckpt, twin)
    assert eval_rows(twin, out, *args)[0]["knn"] == first["knn"]
    assert cached_features(out) == cache  # keyed by the weights, not by the file

    state = load_checkpoint(ckpt)
    weight = state["state_dict"]["method.encoder.conv1.weight"]
    weight[0, 0, 0, 0] += 0.5  # one number of one tensor
    changed = tmp_path / "changed.ckpt"
    torch.save(state, changed)
    eval_rows(changed, out, *args)
    after = cached_features(out)
    assert {k: v for k, v in after.items() if k in cache} == cache  # the first encoder's entries kept
    new = {k: v for k, v in after.items() if k not in cache}
    assert len(new) == len(cache)  # one new entry per split
    assert {v[1] for v in new.values()}.isdisjoint({v[1] for v in cache.values()})  # other features


# --------------------------------------------------------------------------- the online probe


def test_online_probe_logs_the_real_accuracy_of_its_weights(run_dir):
    """probe/val_acc in metrics.csv is the accuracy, on the clean test split, of the probe and
    encoder saved in the checkpoint, recomputed here from the raw images."""
    from selfsup import load_encoder
    from selfsup.data import build_dataset

    with (run_dir / "logs" / "metrics.csv").open() as f:
        logged = [float(r["probe/val_acc"]) for r in csv.DictReader(f) if r.get("probe/val_acc")]
    assert len(logged) == 1  # one epoch, one validation

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    w, b = ckpt["state_dict"]["probe.weight"], ckpt["state_dict"]["probe.bias"]  # [10, D], [10]
    info = ckpt["selfsup"]["data_info"]
    cfg = load_config(None, ["method.name=simclr", *DATA])
    test = build_dataset(cfg.data, "test")
    images = torch.stack([test[i][0] for i in range(len(test))]).float() / 255  # [360, 1, 16, 16]
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    assert images.shape[-1] == info["image_size"] == 16
    x = (images - info["mean"][0]) / info["std"][0]
    encoder = load_encoder(run_dir / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        predicted = (encoder.eval()(x) @ w.T + b).argmax(1)  # [360]
    accuracy = float((predicted == labels).double().mean())
    assert abs(logged[0] - accuracy) < 1e-6, (logged[0], accuracy)
    # above chance (0.1) by more than 3 standard deviations of a guess on 360 images (0.047); one epoch
    # of 22 steps, with BatchNorm's running statistics still far from settled, measured 0.178 here
    assert accuracy > 0.15


# --------------------------------------------------------------------------- trainer.compile


def test_trainer_compile_compiles_the_encoder_and_trains_like_eager(tmp_path, monkeypatch):
    """`trainer.compile=true`: the encoder goes through torch.compile (dynamo captures a graph and
    AOT autograd compiles its backward), and two training steps end at the eager run's weights,
    with unchanged checkpoint names. The backend is aot_eager: inductor's C++ code generation
    takes about 5 minutes for this tiny run on the 2-core CPU, too long for the suite; what the
    config switch does (compile in place, train through the compiled graph) is the same."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from selfsup.export import load_checkpoint

    real_compile = torch.nn.Module.compile
    compiled = []

    def compile_with_aot_eager(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return real_compile(self, *args, **{**kwargs, "backend": "aot_eager"})

    run = [*RUN, "data.subset=128", "trainer.online_probe=false"]  # 2 steps of 64
    quickstart = str(ROOT / "configs" / "quickstart.yaml")
    assert main(["pretrain", quickstart, "--run-dir", str(tmp_path / "eager"), "--no-eval", *run]) == 0
    assert not compiled
    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_aot_eager)
    torch._dynamo.reset()
    counters.clear()
    try:
        assert main(["pretrain", quickstart, "--run-dir", str(tmp_path / "compiled"), "--no-eval",
                     "trainer.compile=true", *run]) == 0
        assert compiled == ["ResNet"]  # the encoder, nothing else
        assert counters["stats"]["unique_graphs"] >= 1  # dynamo traced the encoder's forward
        assert counters["aot_autograd"]["ok"] >= 1  # and compiled forward + backward
    finally:
        torch._dynamo.reset()
    eager = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.ckpt")
    comp = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.ckpt")
    assert comp["global_step"] == eager["global_step"] == 2
    assert set(comp["state_dict"]) == set(eager["state_dict"])  # no _orig_mod. prefixes
    for key, value in eager["state_dict"].items():
        torch.testing.assert_close(comp["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
