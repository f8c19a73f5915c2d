"""Detection transfer of frozen encoders: does self-supervised pretraining give features a
detector can use? A self-supervised encoder (given on the command line), a random-init encoder
of the same architecture and a supervised encoder (trained here on the Fashion-MNIST labels
unless given) are each frozen under a torchvision Faster R-CNN + FPN whose neck and heads are
trained on the same data with the same seed and schedule (``selfsup.detection``), then
scored with COCOeval on two sets:

- synthetic-fmnist: Fashion-MNIST test-split objects (unseen by the encoders, which were
  trained on the train split) pasted at random scale and position on 128x128 black canvases,
  10 classes;
- deepforest: 200x200 tiles of the aerial tree-crown images in the deepforest wheel
  (Weinstein et al. 2019, 2020), one class, seen in grayscale by 1-channel encoders.

Protocol: frozen encoder, BatchNorm frozen, 128x128 inputs, SGD (lr 0.02 at batch 16, momentum
0.9, weight decay 1e-4, warmup then cosine), a few epochs, seed fixed; the final weights are
scored, never a best epoch. This is a linear-evaluation-like probe of the features for
detection, not the full fine-tuning protocol of MoCo's detectron2 tables.

``--deformable on`` trains each detector with modulated deformable convolutions (DCNv2) as its
FPN output and RPN head convs (``detection.deformable``), ``--deformable both`` trains each one
plain and deformable (twice the detector trainings), a row each, marked ``+ DCNv2`` in the table.

Writes benchmarks/results/detection.{json,md}; prints one JSON line per result. The defaults
are sized to finish in under 12 minutes on 2 CPU cores (one supervised epoch, then six
detector trainings of about 150 steps each):

    python benchmarks/detection.py --ssl runs/quickstart-20261126-101500 [--supervised RUN_DIR] [--seed 0] \
        [--deformable off|on|both]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from selfsup.artifacts.load import load_encoder  # noqa: E402
from selfsup.config import RunConfig, load_config  # noqa: E402
from selfsup.detection.boxes import DetectionDataset  # noqa: E402
from selfsup.detection.evaluate import detection_data, detection_markdown, evaluate_detection  # noqa: E402
from selfsup.fileio import write_json, write_text  # noqa: E402
from selfsup.pipeline import saved_config  # noqa: E402
from selfsup.train.run import pretrain  # noqa: E402


def target_config(path: str, overrides: list[str]) -> RunConfig:
    """The config a run or export directory was trained with, plus ``overrides``."""
    cfg = saved_config(path, overrides)
    if cfg is None:
        raise SystemExit(f"--ssl/--supervised {path!r} is neither a selfsup run directory nor an export directory")
    return cfg


def train_supervised(args: argparse.Namespace) -> tuple[str, float]:
    """A supervised encoder on the Fashion-MNIST labels (configs/supervised-fashion-mnist.yaml),
    for ``--supervised-epochs`` epochs; returns its run directory and the minutes it took."""
    cfg = load_config(ROOT / "configs" / "supervised-fashion-mnist.yaml", [
        f"seed={args.seed}", f"trainer.max_epochs={args.supervised_epochs}", "trainer.online_probe=false",
        "trainer.progress_bar=false", f"out_dir={args.runs}", "name=bench-detection-supervised",
        *([f"data.subset={args.supervised_subset}"] if args.supervised_subset else [])])
    t0 = time.perf_counter()
    run = pretrain(cfg, log=lambda s: None)
    return str(run), (time.perf_counter() - t0) / 60


def dataset_overrides(name: str, args: argparse.Namespace) -> list[str]:
    common = [f"detection.dataset={name}", f"detection.image_size={args.image_size}", f"seed={args.seed}"]
    if name == "synthetic-fmnist":
        return common + [f"detection.epochs={args.synthetic_epochs}", f"detection.synthetic_train={args.synthetic_train}",
                         f"detection.synthetic_test={args.synthetic_test}"]
    return common + [f"detection.epochs={args.deepforest_epochs}"]


#: --deformable choice -> the detection.deformable settings run for each target, plain first
DEFORMABLE_SETTINGS = {"off": (False,), "on": (True,), "both": (False, True)}


def with_deformable(cfg: RunConfig, deformable: bool) -> RunConfig:
    """``cfg`` with ``detection.deformable`` set (a copy; ``cfg`` is left as it was)."""
    return dataclasses.replace(cfg, detection=dataclasses.replace(cfg.detection, deformable=deformable))


def limit(data: tuple[DetectionDataset, DetectionDataset], n: int) -> tuple[DetectionDataset, DetectionDataset]:
    """The first ``n`` training images (smoke tests); the test split is kept whole."""
    train, test = data
    if n <= 0 or n >= len(train):
        return data
    return DetectionDataset(train.name, train.samples[:n], train.class_names, train.report, train.meta), test


ROLES = ("self-supervised", "random-init", "supervised")  # the encoders a run can compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ssl", required=True, help="self-supervised run or export directory (e.g. the quickstart's)")
    ap.add_argument("--supervised", help="supervised run or export directory; default: trained here")
    ap.add_argument("--supervised-epochs", type=int, default=1)
    ap.add_argument("--supervised-subset", type=int, default=0, help="train it on this many images (0: all 60k)")
    ap.add_argument("--datasets", default="synthetic-fmnist,deepforest")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--synthetic-train", type=int, default=400)
    ap.add_argument("--synthetic-test", type=int, default=200)
    ap.add_argument("--synthetic-epochs", type=int, default=3)
    ap.add_argument("--deepforest-epochs", type=int, default=9)
    ap.add_argument("--deepforest-limit", type=int, default=0, help="use only this many training tiles (smoke tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deformable", choices=sorted(DEFORMABLE_SETTINGS),
                    help="FPN/RPN convs plain (off), modulated deformable (on) or each detector both ways (both); "
                         "default: as detection.deformable says (off unless an override sets it)")
    ap.add_argument("--roles", default=",".join(ROLES),
                    help="which encoders to run, of " + ", ".join(ROLES) + " (e.g. only the self-supervised one "
                         "with --deformable both)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs", default="/tmp/selfsup-detection")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every run (e.g. detection.lr=0.04)")
    args = ap.parse_args()
    roles = [r for r in args.roles.split(",") if r]
    if not roles or set(roles) - set(ROLES):
        ap.error(f"--roles: choose from {', '.join(ROLES)}, got {args.roles!r}")
    t_start = time.perf_counter()

    supervised, sup_minutes = args.supervised, None
    if supervised is None and "supervised" in roles:
        supervised, sup_minutes = train_supervised(args)
        print(json.dumps({"supervised_run": supervised, "train_minutes": round(sup_minutes, 2),
                          "epochs": args.supervised_epochs}), flush=True)

    rows: list[dict[str, Any]] = []
    for name in [d for d in args.datasets.split(",") if d]:
        cfg = target_config(args.ssl, [*dataset_overrides(name, args), *args.overrides])
        data = limit(detection_data(cfg), args.deepforest_limit if name == "deepforest" else 0)
        arch = cfg.encoder.name
        method = type(cfg.method).__name__.removesuffix("Config")
        sup_note = ""
        if args.supervised is None:
            sup_note = f", {args.supervised_epochs} epoch(s)" + (
                f" on {args.supervised_subset} images" if args.supervised_subset else "")
        targets = [t for t in [("self-supervised", args.ssl, f"{method} {arch} (self-supervised)"),
                               ("random init", f"random:{arch}", f"random-init {arch}"),
                               ("supervised", supervised, f"supervised {arch} (Fashion-MNIST labels{sup_note})")]
                   if t[0].replace(" ", "-") in roles]
        in_chans = None
        for role, spec, label in targets:
            for deformable in DEFORMABLE_SETTINGS[args.deformable] if args.deformable else (cfg.detection.deformable,):
                res = evaluate_detection(spec, with_deformable(cfg, deformable), in_chans=in_chans, data=data,
                                         log=lambda s: None, load=load_encoder)
                in_chans = in_chans or res["encoder"]["in_chans"]  # random init sees the images as the SSL encoder does
                res["role"], res["label"] = role, label
                rows.append(res)
                print(json.dumps({k: res[k] for k in ("role", "target", "dataset", "deformable", "map", "ap50", "ap75",
                                                      "train_images", "test_images", "steps", "seconds")}), flush=True)

    minutes = (time.perf_counter() - t_start) / 60
    settings = {"ssl": args.ssl, "supervised": supervised, "supervised_trained_here": args.supervised is None and supervised is not None, "roles": roles,
                "supervised_epochs": args.supervised_epochs if args.supervised is None else None,
                "supervised_subset": args.supervised_subset or None,
                "supervised_train_minutes": None if sup_minutes is None else round(sup_minutes, 2),
                "seed": args.seed, "image_size": args.image_size, "synthetic": {
                    "train": args.synthetic_train, "test": args.synthetic_test, "epochs": args.synthetic_epochs},
                "deepforest": {"epochs": args.deepforest_epochs, "train_limit": args.deepforest_limit},
                "deformable": args.deformable or "as configured", "overrides": args.overrides,
                "threads": torch.get_num_threads(), "total_minutes": round(minutes, 2)}
    out = Path(args.out)
    write_json({"settings": settings, "rows": rows}, out / "detection.json")
    header = (f"Detection transfer of frozen encoders (benchmarks/detection.py), seed {args.seed}, "
              f"{torch.get_num_threads()} CPU threads, {minutes:.1f} min in all. Self-supervised encoder: {args.ssl}; "
              f"supervised: {supervised}"
              + (f" (trained here, {args.supervised_epochs} epoch(s) on the Fashion-MNIST labels)"
                 if args.supervised is None and supervised else "") + f"; encoders run: {', '.join(roles)}.\n\n")
    write_text(header + detection_markdown(rows), out / "detection.md")
    print(json.dumps({"total_minutes": round(minutes, 2), "json": str(out / "detection.json")}), flush=True)


if __name__ == "__main__":
    main()
