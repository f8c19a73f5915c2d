"""Does each method learn something? Every registered method pretrains on Fashion-MNIST for
the same wall-clock budget on this machine, then its frozen encoder is scored by the
same weighted kNN and linear probe, beside a random-init encoder of the same
architecture and raw pixels.

Protocol:
- each method starts from its ``configs/<method>-fashion-mnist.yaml`` (SimCLR: the
  quickstart), seed fixed, online probe off;
- budget: its training steps are timed on real batches, on the device and at the
  precision the trainer uses (a GPU when there is one: bf16 autocast), a few warm-up
  steps then the median of ``--calibration-steps``; the run gets ``max_steps = budget x steps/s``
  with its cosine schedule spanning exactly those steps, so every method finishes its
  schedule within about the same wall time;
- final-step weights are scored (never a best epoch): weighted kNN (k=20 at T=0.07,
  k=200 at T=0.1) and the linear-probe grid (lr x wd chosen on 10% of train, retrained on all
  of train, top-1 on the 10k test split);
- random-init baselines use the same encoder config with timm's fair init; the pixel
  baseline is the centred 784-d image;
- contrastive methods report their InfoNCE mutual-information lower bound in nats
  (mean of the logged training values over the last 10% of steps).

Writes benchmarks/results/methods.{json,md,png}; prints one JSON line per result.

    python benchmarks/methods.py [--budget-minutes 4] [--only simclr,npid] [--seed 0] [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from selfsup.config import RunConfig, load_config  # noqa: E402
from selfsup.data import build_dataset, make_loader, subset  # noqa: E402
from selfsup.eval.evaluate import default_device, evaluate  # noqa: E402
from selfsup.train.module import PretrainModule  # noqa: E402
from selfsup.train.optim import build_optimizer  # noqa: E402
from selfsup.train.run import pretrain, resolve_precision  # noqa: E402

# every self-supervised method (``supervised`` is the labelled reference of the detection benchmark)
FAMILY = {"rotation": "pretext", "jigsaw": "pretext", "mae": "pretext (masked)", "simmim": "pretext (masked)",
          "denoise": "pretext (denoising)", "simclr": "contrastive", "moco": "contrastive",
          "mocov3": "contrastive", "npid": "contrastive (NCE)", "cpc": "contrastive"}
CONFIG = {name: ROOT / "configs" / f"{name}-fashion-mnist.yaml" for name in FAMILY}
CONFIG["simclr"] = ROOT / "configs" / "quickstart.yaml"


def method_config(name: str, args: argparse.Namespace, extra: list[str] = ()) -> RunConfig:
    """The method's Fashion-MNIST config; the table's probe protocol is one linear probe on
    all labels (seed ``args.seed``), so low-shot probes and extra probe seeds are off."""
    return load_config(CONFIG[name], [f"seed={args.seed}", "trainer.online_probe=false", "trainer.progress_bar=false",
                                      "eval.low_shot=[]", "eval.probe_seeds=1", f"name=bench-{name}",
                                      f"out_dir={args.runs}", *args.overrides, *extra])


class Step(NamedTuple):
    index: int  # 0, 1, ... over the whole loop
    epoch: int
    batch: list[torch.Tensor]  # on the device: images, labels (and dataset indices)
    out: dict[str, torch.Tensor]  # the method's step output (loss, monitors)


MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def training_loop(cfg: RunConfig) -> tuple[PretrainModule, int, Iterator[Step]]:
    """The module, the number of training images, and an endless iterator of training
    steps on real batches (augmentation, forward, loss, backward, optimiser step and the
    method's per-step hook) on the device, at the precision (autocast; fp16 with loss
    scaling) and with the ``torch.compile`` setting the trainer would use. Each step has
    finished on the device when it is yielded."""
    torch.manual_seed(cfg.seed)
    ds = subset(build_dataset(cfg.data, "train"), cfg.data.subset, cfg.seed)
    device = torch.device(default_device(cfg.trainer.accelerator))
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if precision not in ("32-true", *MIXED):
        raise ValueError(f"the benchmark loop supports trainer.precision 32-true, bf16-mixed and 16-mixed, "
                         f"got {precision!r}")
    autocast = torch.autocast(device.type, MIXED.get(precision, torch.float32), enabled=precision in MIXED)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    module = PretrainModule(cfg, ds.info()).to(device)
    method = module.method
    if cfg.trainer.compile:
        method.encoder.compile()
    opt = build_optimizer(cfg.optim, method, cfg.data.batch_size)
    loader = make_loader(ds, cfg.data.batch_size, train=True, seed=cfg.seed, with_indices=method.needs_indices)

    def steps() -> Iterator[Step]:
        i = 0
        for epoch in itertools.count():
            for raw in loader:
                batch = [x.to(device, non_blocking=True) for x in raw]
                opt.zero_grad(set_to_none=True)
                with autocast:
                    out = method.step(batch[0], batch[1], batch[2] if len(batch) > 2 else None)
                scaler.scale(out["loss"]).backward()
                scaler.step(opt)
                scaler.update()
                method.on_train_step_end(i, 10_000)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                yield Step(i, epoch, batch, out)
                i += 1

    return module, len(ds), steps()


class StepRun(NamedTuple):
    rate: float  # median optimiser steps per second
    images: int  # training images
    losses: list[float]
    module: PretrainModule
    initial_encoder: dict[str, torch.Tensor]  # the encoder's parameters before the first step (CPU copies)


def run_steps(cfg: RunConfig, steps: int) -> StepRun:
    """``steps`` + 3 steps of :func:`training_loop`, timed from fetching the batch to the
    finished step. The rate is the median over the timed steps (the first 3 warm up
    allocators, cuDNN and oneDNN kernels, and compile), divided by
    ``trainer.accumulate_grad_batches`` (batches per optimiser step)."""
    module, images, loop = training_loop(cfg)
    initial = {k: v.detach().cpu().clone() for k, v in module.method.encoder.named_parameters()}
    times, losses = [], []
    for _ in range(steps + 3):
        t = time.perf_counter()
        step = next(loop)
        if step.index >= 3:
            times.append(time.perf_counter() - t)
        losses.append(float(step.out["loss"].detach()))
    rate = 1.0 / statistics.median(times) / cfg.trainer.accumulate_grad_batches
    return StepRun(rate, images, losses, module, initial)


def late_mean(metrics: Path, key: str, fraction: float = 0.1) -> float | None:
    """Mean of the logged per-step ``key`` over the last ``fraction`` of the steps."""
    rows = [(int(r["step"]), float(r[key])) for r in csv.DictReader(metrics.open()) if r.get(key)]
    if not rows:
        return None
    last = max(s for s, _ in rows)
    tail = [v for s, v in rows if s >= (1 - fraction) * last] or [rows[-1][1]]
    return sum(tail) / len(tail)


def encoder_key(cfg: RunConfig) -> str:
    return f"{cfg.encoder.name} {json.dumps(cfg.encoder.kwargs, sort_keys=True)}"


def scores(res: dict[str, Any]) -> dict[str, float]:
    knn = res["knn"]
    return {"knn20": knn["k=20,T=0.07"]["top1"], "knn200": knn["k=200,T=0.1"]["top1"],
            "linear": res["linear"]["top1"]}


def bench_method(name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    cfg = method_config(name, args)
    rate, images = run_steps(cfg, args.calibration_steps)[:2]
    steps = max(10, int(args.budget_minutes * 60 * rate))
    per_epoch = images // cfg.data.batch_size
    cfg = method_config(name, args, [f"trainer.max_steps={steps}", f"trainer.max_epochs={steps // per_epoch + 1}"])
    t0 = time.perf_counter()
    run = pretrain(cfg, log=lambda s: None)
    train_min = (time.perf_counter() - t0) / 60
    res = evaluate(str(run), cfg, cache, log=lambda s: None)
    mi = late_mean(run / "logs" / "metrics.csv", "train/mi_bound_step")
    return {"method": name, "family": FAMILY[name], "encoder": encoder_key(cfg), "seed": args.seed,
            "batch_size": cfg.data.batch_size, "steps": steps, "epochs": round(steps / per_epoch, 2),
            "steps_per_s": round(rate, 3), "train_minutes": round(train_min, 2), "device": device_label(), **scores(res),
            "mi_bound_nats": None if mi is None else round(mi, 3), "run_dir": str(run)}


def plot(rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["method"] for r in rows] + [b["label"] for b in baselines.values()]
    knn = [r["knn20"] for r in rows] + [b["knn20"] for b in baselines.values()]
    lin = [r["linear"] for r in rows] + [b["linear"] for b in baselines.values()]
    x = torch.arange(len(labels)).float()
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(labels)), 4.5))
    ax.bar(x - 0.2, knn, 0.4, label="kNN k=20")
    ax.bar(x + 0.2, lin, 0.4, label="linear probe")
    ax.axvline(len(rows) - 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x.tolist(), labels, rotation=35, ha="right")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_ylim(min(knn + lin) - 5, 100)
    ax.set_title("Frozen encoders after the same wall-clock budget (left) vs baselines (right)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    devices = " and ".join(dict.fromkeys(r.get("device") or device_label() for r in rows))  # merged rows keep theirs
    lines = [f"Fashion-MNIST, {args.budget_minutes:g} min of training per method on "
             f"{devices}, seed {args.seed}, final-step weights. kNN: weighted, "
             "cosine, T=0.07 at k=20 and T=0.1 at k=200; linear: grid-searched on 10% of train, top-1 on the 10k test images.", "",
             "| method | family | encoder | steps (epochs) | train min | kNN k=20 | kNN k=200 | linear | "
             "random-init kNN / linear | MI bound (nats) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = baselines[r["encoder"]]
        mi = "" if r["mi_bound_nats"] is None else f"{r['mi_bound_nats']:.2f}"
        lines.append(f"| {r['method']} | {r['family']} | {b['encoder_label']} | {r['steps']} ({r['epochs']:g}) | "
                     f"{r['train_minutes']:.1f} | {r['knn20']:.2f} | {r['knn200']:.2f} | {r['linear']:.2f} | "
                     f"{b['knn20']:.2f} / {b['linear']:.2f} | {mi} |")
    lines += ["", "| baseline | kNN k=20 | kNN k=200 | linear |", "|---|---:|---:|---:|"]
    lines += [f"| {b['label']} | {b['knn20']:.2f} | {b['knn200']:.2f} | {b['linear']:.2f} |"
              for b in baselines.values()]
    return "\n".join(lines) + "\n"


def device_label() -> str:
    """Where training ran: the GPU's name, else the CPU thread count."""
    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()}"
    return f"{torch.get_num_threads()} CPU threads"


ENCODER_LABEL = {"resnet18": "resnet18 (slim)", "vit_tiny_patch16_224": "ViT (patch 4, 6 blocks, 128-d)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=4.0, help="training wall time per method")
    ap.add_argument("--calibration-steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated method names (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs", default="/tmp/selfsup-methods")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other methods' rows and the baselines of an existing methods.json")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every config (e.g. data.subset=2000)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(FAMILY)
    unknown = sorted(set(names) - set(FAMILY))
    if unknown:
        ap.error(f"--only: unknown method(s) {', '.join(unknown)}; choose from {', '.join(FAMILY)}")
    out = Path(args.out)
    previous = json.loads((out / "methods.json").read_text()) if args.merge and (out / "methods.json").is_file() else {}
    cache = Path(args.runs) / "features"
    rows = [r for r in previous.get("methods", []) if r["method"] not in names]
    for name in names:
        rows.append(bench_method(name, args, cache))
        print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: list(FAMILY).index(r["method"]))
    baselines = {b["encoder"]: b for b in previous.get("baselines", [])}
    for r in rows:  # one random-init baseline per distinct encoder config
        cfg = method_config(r["method"], args)
        key = encoder_key(cfg)
        if key not in baselines:
            label = ENCODER_LABEL.get(cfg.encoder.name, cfg.encoder.name)
            if "groupnorm" in key:
                label += ", GroupNorm"
            res = evaluate(f"random:{cfg.encoder.name}", cfg, cache, log=lambda s: None)
            baselines[key] = {"label": f"random-init {label}", "encoder": key, "encoder_label": label, **scores(res)}
            print(json.dumps(baselines[key]), flush=True)
    if "pixels" not in baselines:
        res = evaluate("pixels", method_config(names[0], args), cache, log=lambda s: None)
        baselines["pixels"] = {"label": "raw pixels (784-d)", "encoder": "pixels", **scores(res)}
        print(json.dumps(baselines["pixels"]), flush=True)
    baselines["pixels"] = baselines.pop("pixels")  # last in the tables
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"budget_minutes": args.budget_minutes, "seed": args.seed, "threads": torch.get_num_threads(),
                "device": device_label(),
                "torch": torch.__version__, "dataset": "fashion-mnist"}
    (out / "methods.json").write_text(json.dumps({"settings": settings, "methods": rows,
                                                  "baselines": list(baselines.values())}, indent=2) + "\n")
    (out / "methods.md").write_text(markdown(rows, baselines, args))
    plot(rows, baselines, out / "methods.png")


if __name__ == "__main__":
    main()
