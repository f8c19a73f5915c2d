"""Pictures of a run, drawn with matplotlib (Agg, PNG) from what is on disk.

Each function takes plain data (rows of ``results.json``, the path of ``logs/metrics.csv``,
arrays of features or images), writes one PNG and returns its path, or None when there is
nothing to draw (a run without a logged metric, an evaluation without stages). None of them
runs an encoder, so ``selfsup plot RUN_DIR`` redraws a run at no cost.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.rundir import RunDir

DPI = 110
# metrics.csv columns drawn as training curves, in panel order: (column pattern, panel title)
# (column pattern, title); "train/x_step" falls back to "train/x_epoch" when a run logged no step values
# (epochs shorter than trainer.log_every_n_steps)
CURVES = (("train/loss_step", "training loss"), (r"lr-.*", "learning rate"),
          ("probe/val_acc", "online probe accuracy (%)"), ("train/mi_bound_step", "MI estimate (nats)"),
          ("monitor/rankme", "RankMe (effective rank)"), ("monitor/alignment", "alignment (lower: invariant)"),
          ("monitor/uniformity", "uniformity (lower: spread)"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path, rect: tuple[float, float, float, float] | None = None,
          about: Mapping[str, str] | None = None) -> Path:
    """Write ``fig`` as a PNG whose text chunk ``panels`` counts its visible axes (colour bars
    excluded), so a reader can check the figure without parsing pixels; ``about``: more text chunks."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    panels = sum(1 for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>")
    fig.savefig(out, dpi=DPI, metadata={"panels": str(panels), "Software": "selfsup", **(about or {})})
    _pyplot().close(fig)
    return out


def _grid(n: int, cols: int, size: tuple[float, float]) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels in rows of at most ``cols``; the spare axes are hidden."""
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged column of a Lightning ``metrics.csv`` as (step, value) pairs, in file
    order; empty cells (a row logs only some columns) are skipped."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    series.setdefault(key, []).append((int(float(step)), float(value)))
                except ValueError:
                    continue
    return series


def training_curves(metrics_csv: str | Path, out: str | Path) -> Path | None:
    """One panel per curve of :data:`CURVES` found in ``metrics_csv`` (loss, learning rate,
    online-probe accuracy, MI bound, label-free monitors) against the optimiser step."""
    series = read_metrics(metrics_csv)
    for key in [k for k in series if k.endswith("_epoch")]:
        series.setdefault(key.removesuffix("_epoch") + "_step", series[key])  # epoch means when no step values
    if "probe/val_acc" in series:  # logged as a fraction; drawn in percent
        series["probe/val_acc"] = [(step, 100 * v) for step, v in series["probe/val_acc"]]
    panels = [(title, key) for pattern, title in CURVES for key in sorted(series) if re.fullmatch(pattern, key)]
    if not panels:
        return None
    fig, axes = _grid(len(panels), 3, (4.2, 3.0))
    for ax, (title, key) in zip(axes, panels):
        steps, values = zip(*series[key])
        ax.plot(steps, values, lw=1, marker="o" if len(steps) < 30 else None, ms=3)
        ax.set_title(title if title != "learning rate" else f"learning rate ({key})", fontsize=9)
        ax.set_xlabel("step")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return _save(fig, out)


def _knn_key(key: str) -> tuple[int, float] | None:
    m = re.fullmatch(r"k=(\d+),T=([0-9.eE+-]+)", key)
    return (int(m.group(1)), float(m.group(2))) if m else None


def knn_heatmap(rows: Sequence[Mapping[str, Any]], out: str | Path) -> Path | None:
    """kNN top-1 over the (k, T) grid, one heat-map panel per target (its final stage).
    Uses ``row["knn_grid"]`` (every (k, T) one search answers) when present, else the pairs
    of ``row["knn"]``; a pair not measured is left blank."""
    targets = [r for r in rows if r.get("layer") in (None, rows_last_layer(rows, r["label"]))]
    panels = []
    for r in targets:
        cells = {kt: v["top1"] for key, v in {**r.get("knn", {}), **r.get("knn_grid", {})}.items()
                 if (kt := _knn_key(key))}
        if cells:
            panels.append((r["label"], cells))
    if not panels:
        return None
    fig, axes = _grid(len(panels), 3, (4.2, 3.4))
    for ax, (label, cells) in zip(axes, panels):
        ks, ts = sorted({k for k, _ in cells}), sorted({t for _, t in cells})
        grid = np.full((len(ks), len(ts)), np.nan)
        for (k, t), v in cells.items():
            grid[ks.index(k), ts.index(t)] = v
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("temperature T")
        ax.set_ylabel("k")
        ax.set_title(label, fontsize=9)
        for i, j in zip(*np.where(np.isfinite(grid))):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white")
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label="top-1 (%)")
    return _save(fig, out)


def rows_last_layer(rows: Sequence[Mapping[str, Any]], label: str) -> str | None:
    """The final stage's name among a target's layer-wise rows (the ``encoder`` pooling row)."""
    return next((r.get("layer") for r in rows if r["label"] == label and r.get("pooling") == "encoder"), None)


def layer_probes(rows: Sequence[Mapping[str, Any]], out: str | Path) -> Path | None:
    """Linear top-1 (and kNN at the first (k, T)) per stage, one line per target (pretrained
    beside its random-init baseline). A stage whose row has warnings (features one vector dominates, a
    collapse, a diverged probe: results.md says which) is ringed in red, a legend entry says so, and the PNG's
    text chunk ``warned`` counts the ringed points. None without layer-wise rows."""
    from selfsup.eval.report import row_warnings

    staged: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("layer") is not None:
            staged.setdefault(r["label"], []).append(r)
    if not staged:
        return None
    fig, axes = _grid(2, 2, (5.0, 3.6))
    ringed = 0
    for ax, metric in zip(axes, ("linear", "knn")):
        flagged = False
        for label, stage_rows in staged.items():
            names = [r["layer"] for r in stage_rows]
            if metric == "linear":
                values = [r["linear"]["top1"] if "linear" in r else np.nan for r in stage_rows]
            else:
                values = [next(iter(r["knn"].values()))["top1"] if r.get("knn") else np.nan for r in stage_rows]
            ax.plot(names, values, marker="o", label=label, ls="--" if label.startswith("random") else "-")
            warned = [i for i, r in enumerate(stage_rows) if row_warnings(r) and math.isfinite(values[i])]
            if warned:  # a number its row warns about is not read as it stands
                ax.scatter([names[i] for i in warned], [values[i] for i in warned], s=110, facecolors="none",
                           edgecolors="tab:red", linewidths=1.4, zorder=3,
                           label=None if flagged else "warned (see results.md)")
                flagged, ringed = True, ringed + len(warned)
        first_knn = next((next(iter(r["knn"])) for rs in staged.values() for r in rs if r.get("knn")), "")
        ax.set_title("linear probe per stage" if metric == "linear" else f"kNN {first_knn} per stage", fontsize=9)
        ax.set_ylabel("test top-1 (%)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    return _save(fig, out, about={"warned": str(ringed)})


def balanced_sample(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``per_class`` rows of every class in ``labels`` [N], seeded."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def embed_2d(x: np.ndarray, seed: int = 0, method: str = "auto") -> tuple[np.ndarray, str]:
    """A 2-D embedding of ``x`` [N, D] and the name of the method used: UMAP when
    ``umap-learn`` is installed and ``method`` is ``auto`` or ``umap``, else scikit-learn's
    t-SNE (perplexity min(30, (N - 1) / 3), PCA initialisation)."""
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise ImportError("method='umap' needs umap-learn: pip install umap-learn") from None
        else:
            return umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    from sklearn.manifold import TSNE

    perplexity = max(1.0, min(30.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"


def dominated(x: np.ndarray) -> bool:
    """Whether the rows of ``x`` [N, D] are one vector up to float32 rounding: their relative spread
    (:func:`selfsup.monitors.relative_spread`) below :data:`selfsup.monitors.CONSTANT_SPREAD`."""
    import torch

    from selfsup.monitors import CONSTANT_SPREAD, relative_spread

    return len(x) >= 2 and bool(np.isfinite(x).all()) and relative_spread(torch.from_numpy(x)) < CONSTANT_SPREAD


def embedding_plot(samples: Mapping[str, tuple[np.ndarray, np.ndarray]], out: str | Path,
                   class_names: Sequence[str] | None = None, seed: int = 0, method: str = "auto") -> Path | None:
    """One panel per target: a 2-D embedding (:func:`embed_2d`) of its features [N, D],
    points coloured by their labels [N]. None when ``samples`` is empty."""
    if not samples:
        return None
    fig, axes = _grid(len(samples), 3, (4.2, 4.0))
    cmap = _pyplot().get_cmap("tab10" if len(set().union(*(np.unique(y).tolist() for _, y in samples.values()))) <= 10
                              else "tab20")
    classes: set[int] = set()
    for ax, (label, (x, y)) in zip(axes, samples.items()):
        y = np.asarray(y).astype(int)
        if dominated(np.asarray(x, dtype=np.float64)):  # t-SNE of one vector: noise, and numpy's divide warnings
            ax.text(0.5, 0.5, "one vector dominates every image's\nfeatures: t-SNE would draw rounding noise",
                    ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_title(label, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        xy, how = embed_2d(np.asarray(x, dtype=np.float32), seed, method)
        ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(c % cmap.N) for c in y], s=4)
        classes |= set(y.tolist())
        ax.set_title(f"{label} ({how})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=cmap(c % cmap.N)) for c in sorted(classes)]
    names = [class_names[c] if class_names is not None and c < len(class_names) else str(c) for c in sorted(classes)]
    if handles:  # none when every panel was a dominated target's note
        fig.legend(handles, names, loc="lower center", ncol=min(10, len(handles)), fontsize=7)
    return _save(fig, out, rect=(0, 0.08, 1, 1))


def feature_embedding(rows: Sequence[Mapping[str, Any]], out: str | Path, per_class: int = 100,
                      seed: int = 0) -> Path | None:
    """:func:`embedding_plot` of a class-balanced sample (``per_class`` test images of each class,
    seeded) of the cached test features of every evaluated encoder (the pretrained and the
    random-init rows, their final stage), read from the feature cache the rows name
    (``test_features``: cache directory, entry name and key). An entry that is gone or holds
    other features (its key differs: the cache was refilled since) is left out rather than drawn
    under the wrong label. None when nothing is left to draw."""
    from selfsup.eval.features import FeatureCache, FeatureFile

    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in rows:
        where = r.get("test_features")
        if r.get("kind") not in ("pretrained", "random") or r.get("pooling") not in (None, "encoder") or not where:
            continue
        cache = FeatureCache(where["directory"])
        if not cache.has(where["name"], where["key"]):
            continue
        feats = FeatureFile(cache.path(where["name"]))
        labels = feats.tensor("labels").numpy()
        idx = balanced_sample(labels, per_class, seed)  # [n]
        x = feats.load().numpy()[idx]  # [n, D]
        samples[str(r["label"])] = (x, labels[idx])
    return embedding_plot(samples, out, seed=seed) if samples else None


def _as_image(x: np.ndarray) -> np.ndarray:
    """``x`` [C, H, W] in [0, 1] as what imshow takes: [H, W] for one channel, else [H, W, 3]."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    return x[0] if x.shape[0] == 1 else np.transpose(x[:3], (1, 2, 0))


def augmentation_preview(originals: np.ndarray, views: Sequence[np.ndarray], out: str | Path,
                         view_names: Sequence[str] | None = None) -> Path:
    """A grid: one row per image, its original [C, H, W] (values in [0, 1]) then each view
    the method trains on (``views[v]`` [N, C, H, W], de-normalised to [0, 1])."""
    n, cols = len(originals), 1 + len(views)
    plt = _pyplot()
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    names = ["original", *(view_names or [f"view {i + 1}" for i in range(len(views))])]
    for i in range(n):
        for j, img in enumerate([originals[i], *(v[i] for v in views)]):
            ax = axes[i][j]
            ax.imshow(_as_image(img), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=8)
    return _save(fig, out)


def view_preview(run_dir: str | Path, out: str | Path, n: int = 6, seed: int = 0) -> Path | None:
    """:func:`augmentation_preview` of what a run's method trains on: the first ``n`` training
    images (in dataset order) beside what the method feeds its encoder / loss
    (``Method.preview_inputs``: its two views, its augmentation, or a pretext method's jigsaw
    tiles, rotations, masked images or noised inputs, one named column each), drawn with the run's resolved
    ``config.yaml`` and ``data_info.json`` (seeded; no training, no checkpoint). None when the run
    has no such files, its data cannot be read here, or its method trains on no augmented view."""
    import json

    import torch

    from selfsup.config import load_config, method_name
    from selfsup.data import DataError, DataInfo, build_dataset, make_loader
    from selfsup.encoders import create_encoder
    from selfsup.methods import METHODS

    run = RunDir(run_dir)
    if not (run.config.is_file() and run.data_info.is_file()):
        return None
    cfg = load_config(run.config)
    d = json.loads(run.data_info.read_text())
    info = DataInfo.from_json(d)
    try:
        ds = build_dataset(cfg.data, "train")
    except (DataError, OSError):
        return None  # the data is elsewhere (another machine): nothing to draw
    method = METHODS.get(method_name(cfg))(cfg.method, create_encoder(cfg.encoder.name, info.in_chans,
                                                                      cfg.encoder.kwargs), info)
    if len(ds) == 0:
        return None
    images = next(iter(make_loader(ds, min(n, len(ds)), train=False)))[0]  # uint8 [n, C, S, S]
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    torch.manual_seed(seed)
    with torch.no_grad():
        inputs = method.preview_inputs(images)  # [(name, normalised [n, C, S', S'])]
    if not inputs:
        return None
    shown = [(t.float() * std + mean).numpy() for _, t in inputs]  # de-normalised [n, C, S', S'] each
    return augmentation_preview(images.float().numpy() / 255, shown, out, [name for name, _ in inputs])


def detection_boxes(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                    scores: Sequence[np.ndarray], out: str | Path, min_score: float = 0.5) -> Path | None:
    """Test images [C, H, W] in [0, 1] with their ground-truth boxes (green) and the
    detector's boxes scoring at least ``min_score`` (red, with the score); boxes [M, 4] as
    (x1, y1, x2, y2) pixels. None without images."""
    if not len(images):
        return None
    fig, axes = _grid(len(images), 3, (4.0, 4.0))
    from matplotlib.patches import Rectangle

    for ax, img, gt, pred, sc in zip(axes, images, truths, predictions, scores):
        ax.imshow(_as_image(img), cmap="gray", vmin=0, vmax=1)
        for box, colour in [*((b, "lime") for b in gt), *((b, "red") for b, s in zip(pred, sc) if s >= min_score)]:
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, lw=1.2))
        for box, s in zip(pred, sc):
            if s >= min_score:
                ax.text(float(box[0]), float(box[1]), f"{s:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title(f"ground truth (green), predictions >= {min_score:g} (red)", fontsize=8)
    return _save(fig, out)


def bar_chart(labels: Sequence[str], columns: Mapping[str, Sequence[float | None]], out: str | Path,
              ylabel: str = "test top-1 (%)", errors: Mapping[str, Sequence[float | None]] | None = None) -> Path | None:
    """Grouped bars: one group per label, one bar per column (None: no bar), with error bars
    from ``errors`` where given and positive (None or 0: one seed, no spread measured, so no bar is drawn).
    The value axis starts at 0 (bars cut off above 0 would exaggerate the differences). A bar of
    height 0 (a detection mAP of 0.00) is marked "0" and a missing value "n/a" at the axis, so that
    neither reads as the other. None when no column has a value."""
    if not any(v is not None for vs in columns.values() for v in vs):
        return None
    plt = _pyplot()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) * max(1, len(columns)) / 2), 4.2))
    top, low = 0.0, 0.0
    for i, (name, values) in enumerate(columns.items()):
        v = np.array([np.nan if a is None else a for a in values], dtype=float)  # [labels]
        spread = np.array([np.nan if e is None else e for e in (errors or {}).get(name, [None] * len(v))],
                          dtype=float)  # [labels]
        xs = x + (i - (len(columns) - 1) / 2) * width
        ax.bar(xs, v, width, label=name)
        for xi, vi in zip(xs, v):  # a bar of height 0 draws nothing: say which it is
            if not np.isfinite(vi) or vi == 0:
                ax.annotate("0" if vi == 0 else "n/a", (xi, 0), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, rotation=90, color="dimgray")
        has = np.isfinite(v) & np.isfinite(spread) & (spread > 0)  # no error bar where no spread is measured
        if has.any():
            ax.errorbar(xs[has], v[has], yerr=spread[has], fmt="none", ecolor="black", capsize=2)
        if np.isfinite(v).any():
            top = max(top, float(np.nanmax(np.where(has, v + spread, v))))
            low = min(low, float(np.nanmin(np.where(has, v - spread, v))))
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_xlim(-0.5, len(labels) - 0.5)  # every group's full width: a missing last bar ("n/a") is not cut off
    ax.set_ylabel(ylabel)
    ax.set_ylim(low * 1.05, top * 1.05 if top > 0 else 1.0)  # from 0 (below it only for a negative value)
    # above the axes: inside, the legend covered the tops of bars near the scale's top (accuracies of 80-90 %)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(3, len(columns)), frameon=False)
    return _save(fig, out)


RESULTS_PICTURES = ("knn_grid.png", "layers.png", "embedding.png")  # what plot_run draws from results.json


def plot_run(run_dir: str | Path) -> list[Path]:
    """Redraw a run's (or an evaluation folder's) pictures from disk into ``RUN_DIR/plots/``:
    training curves (``logs/metrics.csv``), the method's training views (:func:`view_preview`), the
    kNN (k, T) heat map, the per-stage probes and the 2-D embedding of the cached test features
    (``results.json``). Returns the files written (none when nothing is there to draw)."""
    import json

    run = RunDir(run_dir)
    written = []
    if run.metrics_csv.is_file():
        written.append(training_curves(run.metrics_csv, run.plots / "training_curves.png"))
    if run.is_run():
        written.append(view_preview(run_dir, run.plots / "views.png"))
    if run.results_json.is_file():
        rows = json.loads(run.results_json.read_text())
        grid, layers, embedding = (run.plots / name for name in RESULTS_PICTURES)
        written += [knn_heatmap(rows, grid), layer_probes(rows, layers), feature_embedding(rows, embedding)]
    return [p for p in written if p is not None]
