"""Cost and accuracy of selfsup's linear-probe grid against one scikit-learn fit, in one process.

On the same cached features (Fashion-MNIST through a random-init timm ``resnet18``: 512-d,
and ``resnet50``: 2048-d, 28 px, one channel, output stride 8, timm's fair init), for training sets of 1k, 10k and 60k rows
(seeded, class-balanced) and the 10k test images:

- ``selfsup``: the whole probe as ``selfsup eval`` runs it (``linear_probe``: the default
  4 lr x 3 wd grid on a held-out 10%, then the chosen setting refit on all rows, 60 epochs),
  with this version's schedule (:func:`selfsup.eval.linear.probe_schedule`);
- ``old schedule``: the same code with the earlier schedule, every probe forced to at least
  1,000 full-size batches (``--old``; what small sets cost before);
- ``sklearn``: one ``LogisticRegression`` (L-BFGS, C = 1, max_iter 1000) fit on the same
  standardised features (:func:`selfsup.eval.linear.sklearn_probe`).

Target (issue 16): the whole selfsup grid at most 0.5x the time of ONE scikit-learn fit at
equal accuracy, from 1k to 60k rows at 512 and 2048 dims. Sides alternate; times are medians
over ``--repeats`` (1 for the largest cells unless asked). Prints JSON lines; writes
benchmarks/results/probe.{json,md}.

    python benchmarks/probe.py [--sizes 1000,10000,60000] [--repeats 3] [--old]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ssl"), str(ROOT / "benchmarks")]  # selfsup; machine.py

import timm  # noqa: E402

from machine import cpu_name  # noqa: E402
from selfsup.config import load_config  # noqa: E402
from selfsup.data import build_dataset  # noqa: E402
from selfsup.eval import linear  # noqa: E402
from selfsup.eval.features import extract_features  # noqa: E402
from selfsup.eval.linear import class_balanced_subset, linear_probe, sklearn_probe  # noqa: E402

ENCODERS = {512: "resnet18", 2048: "resnet50"}


def features(dim: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test features [N, dim] with labels, extracted once and kept in ``cache``."""
    path = cache / f"{ENCODERS[dim]}-fashion-mnist.pt"
    if path.is_file():
        return torch.load(path)
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [])
    torch.manual_seed(0)
    # fair init (no block starts as identity) and output stride 8, so 28 px images keep a 4x4 map
    encoder = timm.create_model(ENCODERS[dim], num_classes=0, in_chans=1, zero_init_last=False, output_stride=8)
    out = []
    for split in ("train", "test"):
        ds = build_dataset(cfg.data, split)
        out += list(extract_features(encoder, ds, ds.info(), batch_size=512))
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(tuple(out), path)
    return tuple(out)


def old_schedule(n: int, epochs: int, batch_size: int) -> tuple[int, int]:
    """The schedule before this change: full batches, at least 1,000 steps."""
    return batch_size, max(epochs, math.ceil(1000 / math.ceil(n / batch_size)))


def timed(fn: Any) -> tuple[float, dict[str, Any]]:
    t = time.perf_counter()
    res = fn()
    return time.perf_counter() - t, res


def cell(dim: int, n: int, data: tuple, args: argparse.Namespace) -> dict[str, Any]:
    xtr, ytr, xte, yte = data
    idx = class_balanced_subset(ytr, n / len(ytr), seed=0) if n < len(ytr) else torch.arange(len(ytr))
    x, y = xtr[idx], ytr[idx]
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", []).eval
    sides = {"selfsup": lambda: linear_probe(x, y, xte, yte, 10, cfg.linear_lrs, cfg.linear_wds, cfg.linear_epochs),
             "sklearn": lambda: sklearn_probe(x, y, xte, yte, 10)}
    if args.old:
        def old() -> dict[str, Any]:
            new = linear.probe_schedule
            linear.probe_schedule = old_schedule
            try:
                return sides["selfsup"]()
            finally:
                linear.probe_schedule = new
        sides["old schedule"] = old
    repeats = args.repeats if n * dim <= args.big else 1
    times: dict[str, list[float]] = {k: [] for k in sides}
    top1: dict[str, float] = {}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            s, res = timed(sides[name])
            times[name].append(s)
            top1[name] = res["top1"]
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"dim": dim, "rows": len(idx), "repeats": repeats,
           **{f"{k}_s": round(v, 2) for k, v in med.items()}, **{f"{k}_top1": round(v, 2) for k, v in top1.items()},
           "ratio": round(med["selfsup"] / med["sklearn"], 3),
           "top1_gap": round(top1["selfsup"] - top1["sklearn"], 2)}
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    old = any("old schedule_s" in r for r in rows)
    lines = ["# Linear-probe grid against scikit-learn", "",
             f"Measured {settings['date']} on {settings['cpu']}, {settings['threads']} torch threads, torch "
             f"{settings['torch']}. Features: Fashion-MNIST through random-init timm resnet18 (512-d) and resnet50 "
             "(2048-d), 28 px, output stride 8, fair init (zero_init_last off); class-balanced training subsets (seed 0), the 10k test images. selfsup: the default "
             "probe (4 lr x 3 wd grid on a held-out 10%, refit on all rows, 60 epochs). sklearn: one "
             "LogisticRegression (L-BFGS, C=1) fit. Times are medians over the repeats, sides alternated. "
             "Target: ratio (selfsup / sklearn time) <= 0.5 at equal accuracy.", "",
             "| dim | rows | selfsup s | sklearn s | ratio | selfsup top-1 | sklearn top-1 | gap |"
             + (" old schedule s | old schedule top-1 |" if old else ""),
             "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if old else "")]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['rows']} | {r['selfsup_s']} | {r['sklearn_s']} | {r['ratio']} | "
                     f"{r['selfsup_top1']} | {r['sklearn_top1']} | {r['top1_gap']:+.2f} |"
                     + (f" {r['old schedule_s']} | {r['old schedule_top1']} |" if old else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,60000")
    ap.add_argument("--dims", default="512,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", type=int, default=10000 * 512, help="cells above rows x dim get one repeat")
    ap.add_argument("--old", action="store_true", help="also time the earlier schedule (at least 1,000 steps)")
    ap.add_argument("--cache", default="/tmp/selfsup-probe-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        if dim not in ENCODERS:
            ap.error(f"--dims: choose from {sorted(ENCODERS)}")
        data = features(dim, Path(args.cache))
        rows += [cell(dim, int(n), data, args) for n in args.sizes.split(",")]
    settings = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "threads": torch.get_num_threads(),
                "torch": torch.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    (out / "probe.md").write_text(markdown(rows, settings))


if __name__ == "__main__":
    main()
