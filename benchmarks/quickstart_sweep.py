"""The sweep behind configs/quickstart.yaml: SimCLR variants on Fashion-MNIST at a
short proxy budget, each scored by weighted kNN (k=20, T=0.07) on the 10k test split.

Each variant is the quickstart config plus overrides; every run uses the same seed and
reports its final-epoch kNN accuracy and wall time. Writes
benchmarks/results/quickstart_sweep.{json,md}.

    python benchmarks/quickstart_sweep.py --epochs 2 [--only A,B] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from selfsup.config import load_config  # noqa: E402
from selfsup.eval.evaluate import evaluate  # noqa: E402
from selfsup.train.run import pretrain  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "quickstart": [],
    "temperature-0.5": ["method.temperature=0.5"],
    "crop-0.08": ["method.augment.crop_scale=[0.08, 1.0]"],
    "crop-0.5": ["method.augment.crop_scale=[0.5, 1.0]"],
    "lars-lr-0.3": ["optim.lr=0.3"],
    "batch-128": ["data.batch_size=128"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs", default="/tmp/selfsup-sweep")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    rows = []
    for name in names:
        cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
            *VARIANTS[name], f"trainer.max_epochs={args.epochs}", f"seed={args.seed}", "trainer.progress_bar=false",
            "eval.linear=false", f"name={name}", f"out_dir={args.runs}"])
        t0 = time.perf_counter()
        run = pretrain(cfg, log=lambda s: None)
        minutes = (time.perf_counter() - t0) / 60
        res = evaluate(str(run), cfg, run / "features", log=lambda s: None)
        rows.append({"variant": name, "overrides": VARIANTS[name], "epochs": args.epochs, "seed": args.seed,
                     "pretrain_minutes": round(minutes, 2), "knn": res["knn"]})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quickstart_sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    keys = list(rows[0]["knn"])
    md = ["| variant | overrides | epochs | minutes | " + " | ".join(f"kNN {k}" for k in keys) + " |",
          "|---|---|---:|---:|" + "---:|" * len(keys)]
    for r in rows:
        md.append(f"| {r['variant']} | {' '.join(r['overrides']) or '(quickstart.yaml)'} | {r['epochs']} | "
                  f"{r['pretrain_minutes']} | " + " | ".join(f"{r['knn'][k]['top1']:.2f}" for k in keys) + " |")
    (out / "quickstart_sweep.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
