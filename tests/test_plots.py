"""Pictures (selfsup.plots): each PNG is written, non-empty, readable by matplotlib, and has the
expected number of panels (the ``panels`` text chunk the writer stores, counted from the figure)."""

import sys

import numpy as np
import pytest
from matplotlib.image import imread
from PIL import Image

from selfsup import plots


def panels(path) -> int:
    with Image.open(path) as im:
        return int(im.text["panels"])


def drawn(path) -> np.ndarray:
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


def write_metrics(path, rows):
    keys = sorted({k for r in rows for k in r})
    path.write_text(",".join(keys) + "\n" + "\n".join(",".join(str(r.get(k, "")) for k in keys) for r in rows) + "\n")


def test_training_curves_one_panel_per_logged_curve(tmp_path):
    rows = [{"step": s, "epoch": 0, "train/loss_step": 5 - 0.1 * s, "lr-SGD": 0.1 * (1 - s / 20)} for s in range(20)]
    rows += [{"step": 19, "epoch": 0, "probe/val_acc": 42.0, "train/loss_epoch": 3.0}]
    write_metrics(tmp_path / "metrics.csv", rows)
    out = plots.training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    drawn(out)
    assert panels(out) == 3  # loss, learning rate, online probe; the epoch mean is not a curve here
    write_metrics(tmp_path / "empty.csv", [{"step": 0, "epoch": 0, "other": 1}])
    assert plots.training_curves(tmp_path / "empty.csv", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def result(label, knn, linear=None, layer=None, pooling=None):
    row = {"label": label, "knn": {key: {"top1": v} for key, v in knn.items()}}
    if linear is not None:
        row["linear"] = {"top1": linear}
    if layer is not None:
        row |= {"layer": layer, "pooling": pooling}
    return row


def test_knn_heatmap_per_target_and_blank_cells(tmp_path):
    rows = [result("run", {"k=20,T=0.07": 80.0, "k=200,T=0.1": 77.0, "k=20,T=0.1": 79.5}),
            result("random-init", {"k=20,T=0.07": 70.0})]
    out = plots.knn_heatmap(rows, tmp_path / "knn.png")
    drawn(out)
    assert panels(out) == 2
    assert plots.knn_heatmap([{"label": "x", "knn": {}}], tmp_path / "n.png") is None


def test_layer_probes_draw_stages_and_skip_single_stage_results(tmp_path):
    rows = [result("run", {"k=20,T=0.07": 60 + i}, 70 + i, name, "encoder" if name == "layer4" else "grid")
            for i, name in enumerate(["act1", "layer1", "layer4"])]
    rows += [result("random-init", {"k=20,T=0.07": 55 + i}, 65 + i, name, "encoder" if name == "layer4" else "grid")
             for i, name in enumerate(["act1", "layer1", "layer4"])]
    out = plots.layer_probes(rows, tmp_path / "layers.png")
    drawn(out)
    assert panels(out) == 2
    assert plots.layer_probes([result("run", {"k=20,T=0.07": 1.0}, 2.0)], tmp_path / "n.png") is None
    from PIL import Image

    assert Image.open(out).text["warned"] == "0"
    rows[3]["warnings"] = ["the features of act1 are dominated by one vector"]  # random-init act1: both panels
    rows[1]["linear"] = {"top1": float("nan")}  # a point not drawn is not ringed (run layer1: kNN panel only)
    rows[1]["warnings"] = ["the linear probe diverged"]
    assert Image.open(plots.layer_probes(rows, tmp_path / "warned.png")).text["warned"] == "3"
    # the heat map uses each target's final stage only
    assert panels(plots.knn_heatmap(rows, tmp_path / "knn.png")) == 2


def test_balanced_sample_takes_per_class_rows_seeded():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 30)
    idx = plots.balanced_sample(labels, 10, seed=3)
    assert np.bincount(labels[idx]).tolist() == [10, 5, 10]
    assert np.array_equal(idx, plots.balanced_sample(labels, 10, seed=3)) and np.all(np.diff(idx) > 0)


def test_embedding_plot_one_panel_per_target(tmp_path, monkeypatch):
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = g.normal(size=(60, 8)) + 4 * np.eye(8)[y]
    out = plots.embedding_plot({"run": (x, y), "random-init": (g.normal(size=(60, 8)), y)}, tmp_path / "emb.png",
                               class_names=["a", "b", "c"], method="tsne")
    drawn(out)
    assert panels(out) == 2
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn absent, whether or not it is installed here
    with pytest.raises(ImportError, match="pip install umap-learn"):
        plots.embed_2d(x, method="umap")
    assert plots.embed_2d(x, method="auto")[1] == "t-SNE"  # auto falls back to scikit-learn


def test_features_one_vector_dominates_get_a_panel_that_says_so_not_a_t_sne(tmp_path, monkeypatch):
    """helper-55's: random-init repvgg_b0's constant features went through t-SNE (numpy's divide warnings, a
    picture of rounding noise). Its panel says why it is empty; t-SNE runs only on the varying target."""
    import warnings

    g = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    one = np.tile(g.normal(size=(1, 8)) * 100, (60, 1)) + 1e-7 * g.normal(size=(60, 8))  # one vector, rounding jitter
    embedded = []
    real = plots.embed_2d
    monkeypatch.setattr(plots, "embed_2d", lambda x, *a, **k: embedded.append(len(x)) or real(x, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = plots.embedding_plot({"run": (g.normal(size=(60, 8)), y), "constant": (one, y)}, tmp_path / "e.png",
                                   method="tsne")
    drawn(out)
    assert panels(out) == 2 and embedded == [60]  # the constant target was not embedded
    assert plots.dominated(one) and not plots.dominated(g.normal(size=(60, 8)))
    # every panel a note: no legend to draw (matplotlib refused a legend of 0 columns with a traceback)
    drawn(plots.embedding_plot({"constant": (one, y)}, tmp_path / "only.png", method="tsne"))


def test_feature_embedding_draws_the_cached_test_features_of_each_encoder_and_skips_stale_entries(tmp_path,
                                                                                                   monkeypatch):
    import torch

    from selfsup.eval.features import FeatureCache

    cache = FeatureCache(tmp_path / "features")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    for name in ("run-test", "random-test", "old-test"):
        cache.store(name, f"key-{name}", torch.randn(90, 6, generator=g), labels)
    seen = {}
    real = plots.embedding_plot
    monkeypatch.setattr(plots, "embedding_plot", lambda samples, out, **kw: seen.update(samples) or real(samples, out,
                                                                                                          **kw))
    where = lambda name, key: {"directory": str(tmp_path / "features"), "name": name, "key": key}  # noqa: E731
    rows = [{"label": "run", "kind": "pretrained", "test_features": where("run-test", "key-run-test")},
            {"label": "random-init", "kind": "random", "test_features": where("random-test", "key-random-test")},
            {"label": "stale", "kind": "pretrained", "test_features": where("old-test", "another key")},
            {"label": "gone", "kind": "random", "test_features": where("missing", "k")},
            {"label": "raw pixels", "kind": "pixels", "test_features": where("run-test", "key-run-test")},
            {"label": "run layer1", "kind": "pretrained", "pooling": "grid",
             "test_features": where("run-test", "key-run-test")}]
    out = plots.feature_embedding(rows, tmp_path / "emb.png", per_class=10)
    drawn(out)
    assert panels(out) == 2 and sorted(seen) == ["random-init", "run"]
    x, y = seen["run"]
    assert x.shape == (30, 6) and np.bincount(y).tolist() == [10, 10, 10]  # class-balanced sample
    stored = cache.get("run-test", "key-run-test", lambda: None)[0].numpy()
    nearest = np.abs(x[:, None, :] - stored[None, :, :]).max(-1).min(1)  # [30]: distance to the closest cached row
    assert nearest.max() == 0  # every drawn row is a row of the cache
    assert plots.feature_embedding(rows[2:4], tmp_path / "none.png") is None


def test_training_curves_fall_back_to_epoch_means_and_draw_the_probe_in_percent(tmp_path):
    """Epochs shorter than log_every_n_steps leave only *_epoch columns: the loss and MI estimate are
    drawn from them; the online probe's fraction is drawn in percent."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,probe/train_acc,probe/val_acc,step,train/loss_epoch,train/mi_bound_epoch\n"
                       "0,,0.25,4,,\n0,0.11,,4,6.36,-0.12\n1,,0.5,9,,\n1,0.15,,9,6.15,0.08\n")
    seen = {}
    real = plots._save

    def spy(fig, out, rect=None):
        seen.update({ax.get_title(): ax.lines[0].get_ydata().tolist() for ax in fig.axes if ax.axison})
        return real(fig, out, rect)
    import pytest as _pytest
    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", spy)
        out = plots.training_curves(metrics, tmp_path / "curves.png")
    drawn(out)
    assert panels(out) == 3
    assert seen == {"training loss": [6.36, 6.15], "online probe accuracy (%)": [25.0, 50.0],
                    "MI estimate (nats)": [-0.12, 0.08]}


def test_augmentation_preview_and_detection_boxes(tmp_path):
    g = np.random.default_rng(0)
    originals = g.random((3, 1, 16, 16))
    out = plots.augmentation_preview(originals, [g.random((3, 1, 16, 16)), g.random((3, 1, 16, 16))],
                                     tmp_path / "views.png")
    drawn(out)
    assert panels(out) == 9  # 3 images x (original + 2 views)
    rgb = g.random((2, 3, 32, 32))
    boxes = [np.array([[2, 2, 20, 20]]), np.array([[5, 5, 30, 25], [1, 1, 4, 4]])]
    out = plots.detection_boxes(rgb, boxes, boxes, [np.array([0.9]), np.array([0.8, 0.1])], tmp_path / "det.png")
    drawn(out)
    assert panels(out) == 2
    assert plots.detection_boxes([], [], [], [], tmp_path / "n.png") is None


def test_bar_chart_with_missing_values_and_error_bars(tmp_path):
    out = plots.bar_chart(["a", "b"], {"kNN": [80.0, None], "linear": [82.0, 85.0]}, tmp_path / "bars.png",
                          errors={"linear": [0.5, None]})
    drawn(out)
    assert panels(out) == 1
    assert plots.bar_chart(["a"], {"kNN": [None]}, tmp_path / "n.png") is None
