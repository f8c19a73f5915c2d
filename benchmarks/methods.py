"""Does each method learn something? Every registered method pretrains on Fashion-MNIST,
then its frozen encoder is scored by the same weighted kNN and linear probe, beside a
random-init encoder of the same architecture and raw pixels.

Two budgets:
- ``--epochs E --subset N`` (the README's table): each method trains ``E`` epochs on the same
  seeded ``N``-image subset of the 60k training images (``data.subset``, drawn with the run
  seed), its cosine schedule spanning exactly those epochs; ``--epochs-for cpc=8`` gives a
  slow method fewer (the table says so). Evaluation uses all 60k training and 10k test images;
- ``--budget-minutes M``: each method's training steps are timed on real batches, on the
  device and at the precision the trainer uses, a few warm-up steps then the median of
  ``--calibration-steps``; the run gets ``max_steps = budget x steps/s``, so every method
  finishes its schedule within about the same wall time.

Protocol (both budgets):
- each method starts from its ``configs/<method>-fashion-mnist.yaml`` (SimCLR: the
  quickstart), seed fixed, online probe off; ``denoise-vp`` and ``denoise-flow`` are denoise's
  config with ``method.corruption=vp`` / ``flow`` (the DDPM and rectified-flow corruptions);
- final-step weights are scored (never a best epoch): weighted kNN (k=20 at T=0.07,
  k=200 at T=0.1) and the linear-probe grid (lr x wd chosen on 10% of train, retrained on all
  of train, top-1 on the 10k test split);
- ``--layers all``: every stage of the encoder is probed (``eval.layers=all``, Goyal et al.
  2019), a convnet's maps grid-pooled to about 9k values as in VISSL, a ViT's blocks by their
  mean token (``eval.layer_pool=avg``, the layer-wise probes of BEiT and MAE); the best stage is the one whose probe scores highest on the probe's own held-out
  10% of train (``val_top1``), never chosen on the test split, and its test top-1 is reported;
- ``--skip-stages act1``: the README's table leaves out the ResNet stem (one convolution,
  grid-pooled to 4,608 values: its kNN search and probes cost more than the four residual
  stages together, about 20 minutes per target on 2 shared cores);
- the README's table probes every stage with a smaller probe grid than ``selfsup eval``'s
  default (20 epochs, lr in {0.03, 0.1, 0.3}, no weight decay, given as overrides): the
  default 4 x 3 grid at 60 epochs on a 4,608-d stage of 54k rows costs about a quarter of an
  hour per target on 2 cores, and the table probes 5 stages of 13 targets. Every row,
  baselines included, gets the same probe;
- random-init baselines use the same encoder config with timm's fair init, probed the same
  way; the pixel baseline is the centred 784-d image;
- contrastive methods report their mutual-information lower bound in nats (mean of the
  logged training values over the last 10% of steps).

Writes ``--out``/methods.{json,md,png} (and methods-layers.png with ``--layers all``) after
every method, so an interrupted run keeps what it measured; prints one JSON line per result.

    python benchmarks/methods.py --epochs 20 --subset 3000 --epochs-for cpc=8,mocov3=10 --layers all --skip-stages act1 \\
        eval.linear_epochs=20 "eval.linear_lrs=[0.03,0.1,0.3]" "eval.linear_wds=[0.0]"
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

from selfsup.artifacts.load import load_encoder  # noqa: E402
from selfsup.config import RunConfig, load_config  # noqa: E402
from selfsup.data import build_dataset, make_loader, subset  # noqa: E402
from selfsup.encoders import create_encoder  # noqa: E402
from selfsup.eval.layers import encoder_stages  # noqa: E402
from selfsup.eval.evaluate import default_device, evaluate, evaluate_layers  # noqa: E402
from selfsup.train.module import PretrainModule  # noqa: E402
from selfsup.train.optim import build_optimizer  # noqa: E402
from selfsup.train.precision import resolve_precision  # noqa: E402
from selfsup.train.run import pretrain  # noqa: E402

# every self-supervised method (``supervised`` is the labelled reference of the detection benchmark)
FAMILY = {"rotation": "pretext", "jigsaw": "pretext", "mae": "pretext (masked)", "simmim": "pretext (masked)",
          "denoise": "pretext (denoising)", "simclr": "contrastive", "moco": "contrastive",
          "mocov3": "contrastive", "npid": "contrastive (NCE)", "cpc": "contrastive",
          "dim": "mutual information (DIM)", "pirl": "contrastive (memory bank)",
          "denoise-vp": "pretext (denoising)", "denoise-flow": "pretext (denoising)"}
# rows that are one method's config with a different setting: name -> (method, overrides)
VARIANTS = {"denoise-vp": ("denoise", ["method.corruption=vp"]),
            "denoise-flow": ("denoise", ["method.corruption=flow"])}
CONFIG = {name: ROOT / "configs" / f"{VARIANTS.get(name, (name,))[0]}-fashion-mnist.yaml" for name in FAMILY}
CONFIG["simclr"] = ROOT / "configs" / "quickstart.yaml"


def method_config(name: str, args: argparse.Namespace, extra: list[str] = ()) -> RunConfig:
    """The method's Fashion-MNIST config; the table's probe protocol is one linear probe on
    all labels (seed ``args.seed``), so low-shot probes and extra probe seeds are off."""
    return load_config(CONFIG[name], [f"seed={args.seed}", "trainer.online_probe=false", "trainer.progress_bar=false",
                                      "eval.low_shot=[]", "eval.probe_seeds=1", f"name=bench-{name}",
                                      f"out_dir={args.runs}", *VARIANTS.get(name, (name, []))[1], *args.overrides,
                                      *extra])


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


def stage_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The final stage's scores, every stage's linear probe, and the best stage: the one whose
    probe did best on the probe's held-out 10% of train (``val_top1``; the first of equals,
    shallowest first), never picked on the test split."""
    final = scores(rows[-1])
    if len(rows) == 1:
        return final
    best = max(rows, key=lambda r: r["linear"]["val_top1"])
    return {**final, "best_layer": best["layer"], "best_linear": best["linear"]["top1"],
            "layers": [{"layer": r["layer"], "dims": r.get("feature_dim"), **scores(r),
                        "val_top1": r["linear"]["val_top1"]} for r in rows]}


def eval_config(name: str, args: argparse.Namespace) -> RunConfig:
    """The method's config for evaluation: all 60k training images (no ``data.subset``, which
    only limits pretraining) and every stage with ``--layers all``."""
    cfg = method_config(name, args)
    # ViTs: every block's mean token (the layer-wise probes of BEiT and MAE); convnets: VISSL's grid
    pool = "avg" if cfg.encoder.name.startswith("vit") else "grid"
    layers = args.layers
    if layers == "all" and args.skip_stages:
        encoder = create_encoder(cfg.encoder.name, 1, cfg.encoder.kwargs)
        kept = [s.name for s in encoder_stages(encoder, cfg.encoder.name) if s.name not in args.skip_stages]
        layers = "[" + ",".join(kept) + "]"
    return method_config(name, args, ["data.subset=null", f"eval.layers={layers}", f"eval.layer_pool={pool}"])


def bench_method(name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    cfg = method_config(name, args)
    if args.epochs:
        epochs = int(args.epochs_for.get(name, args.epochs))
        cfg = method_config(name, args, [f"data.subset={args.subset}", f"trainer.max_epochs={epochs}",
                                         "trainer.max_steps=-1"])
        images = min(args.subset or 10**9, len(build_dataset(cfg.data, "train")))
        per_epoch = images // cfg.data.batch_size
        steps, rate = epochs * per_epoch, None
    else:
        rate, images = run_steps(cfg, args.calibration_steps)[:2]
        steps = max(10, int(args.budget_minutes * 60 * rate))
        per_epoch = images // cfg.data.batch_size
        cfg = method_config(name, args, [f"trainer.max_steps={steps}", f"trainer.max_epochs={steps // per_epoch + 1}"])
    t0 = time.perf_counter()
    run = pretrain(cfg, log=lambda s: None)
    train_min = (time.perf_counter() - t0) / 60
    t0 = time.perf_counter()
    res = evaluate_layers(str(run), eval_config(name, args), cache, log=lambda s: None, load=load_encoder)
    eval_min = (time.perf_counter() - t0) / 60
    mi = late_mean(run / "logs" / "metrics.csv", "train/mi_bound_step")
    return {"method": name, "family": FAMILY[name], "encoder": encoder_key(cfg), "seed": args.seed,
            "batch_size": cfg.data.batch_size, "train_images": images, "steps": steps,
            "epochs": round(steps / per_epoch, 2), "steps_per_s": rate and round(rate, 3),
            "train_minutes": round(train_min, 2), "eval_minutes": round(eval_min, 2), "device": device_label(),
            **stage_scores(res), "mi_bound_nats": None if mi is None else round(mi, 3), "run_dir": str(run)}


def verdict(r: dict[str, Any], b: dict[str, Any]) -> str:
    """Whether a method beats its random-init encoder on the final kNN (k=20) and on the
    best-stage linear probe (the last stage's when only one was probed)."""
    lose = [what for what, key in (("kNN", "knn20"), ("best-stage linear", "best_linear"))
            if r.get(key, r["linear"] if key == "best_linear" else None) <= b.get(key, b["linear"] if key == "best_linear" else None)]
    return "yes" if not lose else "**no** (" + ", ".join(lose) + ")"


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]]) -> None:
    x = torch.arange(len(labels)).float()
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x.tolist(), labels, rotation=35, ha="right")


def plot(rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["method"] for r in rows] + [b["label"] for b in baselines.values()]
    both = rows + list(baselines.values())
    series = {"kNN k=20": [r["knn20"] for r in both], "linear (last stage)": [r["linear"] for r in both]}
    if any("best_linear" in r for r in both):
        series["linear (best stage)"] = [r.get("best_linear", r["linear"]) for r in both]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels)), 4.8))
    _bars(ax, labels, series)
    ax.axvline(len(rows) - 0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_ylim(min(v for vs in series.values() for v in vs) - 5, 100)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layers(rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], path: Path) -> None:
    """Linear top-1 per stage, one panel per method, its random-init encoder dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "layers" in r]
    if not rows:
        return
    cols = min(5, len(rows))
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.8 * ((len(rows) + cols - 1) // cols)),
                             squeeze=False, sharey=True)
    for ax, r in zip(axes.flat, rows):
        names = [s["layer"] for s in r["layers"]]
        ax.plot(names, [s["linear"] for s in r["layers"]], "o-", label=r["method"])
        b = baselines[r["encoder"]]
        if "layers" in b:
            ax.plot([s["layer"] for s in b["layers"]], [s["linear"] for s in b["layers"]], "s--", color="grey",
                    label="random init")
        ax.set_title(r["method"])
        ax.tick_params(axis="x", rotation=35)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes[0][0].set_ylabel("linear top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def budget_text(args: argparse.Namespace) -> str:
    if args.epochs:
        slow = "".join(f"; {m}: {e:g} epochs" for m, e in args.epochs_for.items())
        return (f"{args.epochs:g} epochs per method on a seeded {args.subset}-image subset of the 60k training "
                f"images (seed {args.seed}){slow}")
    return f"{args.budget_minutes:g} min of training per method"


# the bound each method's train/mi_bound reports, by its method.estimator (the others report InfoNCE's log N - L;
# PIRL mixes its two InfoNCE terms by lambda as its loss does)
BOUND_NAMES = {"infonce": "InfoNCE", "nwj": "NWJ", "js": "JS, read by NWJ", "dv": "DV/MINE", "smile": "SMILE"}


def bound_name(name: str, args: argparse.Namespace) -> str:
    """Which MI bound the method ``name`` reports (its config's ``method.estimator``, else InfoNCE)."""
    return BOUND_NAMES[getattr(method_config(name, args).method, "estimator", "infonce")]


def markdown(rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    devices = " and ".join(dict.fromkeys(r.get("device") or device_label() for r in rows))  # merged rows keep theirs
    staged = any("best_linear" in r for r in rows)
    ev = method_config(rows[0]["method"] if rows else "simclr", args).eval
    grid = f"lr in {ev.linear_lrs} x weight decay in {ev.linear_wds}, {ev.linear_epochs} epochs"
    lines = [f"Fashion-MNIST, {budget_text(args)}, on {devices}, seed {args.seed}, final-step weights. kNN: "
             "weighted, cosine, T=0.07 at k=20 and T=0.1 at k=200; linear: SGD probe on standardised features, "
             f"{grid}, the setting chosen on a held-out 10% of train, retrained on all 60k, top-1 on the 10k test "
             "images."
             + (" Best stage: the stage whose probe scored highest on that held-out 10% (never chosen on "
                "test); its test top-1." if staged else "")
             + (f" Stages left out: {', '.join(args.skip_stages)}." if staged and args.skip_stages else ""), ""]
    if staged:
        lines += ["| method | family | encoder | steps (epochs) | train min | kNN k=20 | kNN k=200 | linear (last) | "
                  "best stage: linear | random-init kNN / linear / best stage | MI bound (nats) | beats random-init |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    else:
        lines += ["| method | family | encoder | steps (epochs) | train min | kNN k=20 | kNN k=200 | linear | "
                  "random-init kNN / linear | MI bound (nats) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = baselines[r["encoder"]]
        mi = "" if r["mi_bound_nats"] is None else f"{r['mi_bound_nats']:.2f} ({bound_name(r['method'], args)})"
        head = (f"| {r['method']} | {r['family']} | {b['encoder_label']} | {r['steps']} ({r['epochs']:g}) | "
                f"{r['train_minutes']:.1f} | {r['knn20']:.2f} | {r['knn200']:.2f} | {r['linear']:.2f} | ")
        if staged:
            lines.append(head + f"{r['best_layer']}: {r['best_linear']:.2f} | {b['knn20']:.2f} / {b['linear']:.2f} / "
                         f"{b.get('best_layer')}: {b.get('best_linear', b['linear']):.2f} | {mi} | {verdict(r, b)} |")
        else:
            lines.append(head + f"{b['knn20']:.2f} / {b['linear']:.2f} | {mi} |")
    lines += ["", "| baseline | kNN k=20 | kNN k=200 | linear (last) |" + (" best stage: linear |" if staged else ""),
              "|---|---:|---:|---:|" + ("---:|" if staged else "")]
    for b in baselines.values():
        best = (f" {b['best_layer']}: {b['best_linear']:.2f} |" if "best_layer" in b else " |") if staged else ""
        lines.append(f"| {b['label']} | {b['knn20']:.2f} | {b['knn200']:.2f} | {b['linear']:.2f} |{best}")
    if staged:
        lines += ["", "Linear top-1 per stage (test; the held-out 10% picks the best):", "",
                  "| target | " + " | ".join(f"stage {i + 1}" for i in range(max(len(r.get("layers", [])) for r in [*rows, *baselines.values()]))) + " |"]
        lines.append("|---|" + "---:|" * (lines[-1].count("|") - 2))
        for r in [*rows, *[b for b in baselines.values() if "layers" in b]]:
            lines.append(f"| {r.get('method', r.get('label'))} | "
                         + " | ".join(f"{s['layer']}: {s['linear']:.2f}" for s in r["layers"]) + " |")
    return "\n".join(lines) + "\n"


def device_label() -> str:
    """Where training ran: the GPU's name, else the CPU thread count."""
    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()}"
    return f"{torch.get_num_threads()} CPU threads"


ENCODER_LABEL = {"resnet18": "resnet18 (slim)", "vit_tiny_patch16_224": "ViT (patch 4, 6 blocks, 128-d)"}


def parse_epochs_for(text: str) -> dict[str, float]:
    pairs = [t.split("=", 1) for t in text.split(",") if t]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"--epochs-for wants METHOD=EPOCHS[,...], got {text!r}")
    return {m: float(e) for m, e in pairs}


def baseline_row(name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """The random-init encoder of method ``name``'s config, probed as the methods are."""
    cfg = eval_config(name, args)
    label = ENCODER_LABEL.get(cfg.encoder.name, cfg.encoder.name)
    if "groupnorm" in encoder_key(cfg):
        label += ", GroupNorm"
    res = evaluate_layers(f"random:{cfg.encoder.name}", cfg, cache, log=lambda s: None)
    return {"label": f"random-init {label}", "encoder": encoder_key(cfg), "encoder_label": label,
            **stage_scores(res)}


def write(out: Path, rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """methods.{json,md,png} (methods-layers.png with stages) of the rows measured so far; a
    method whose baseline is not measured yet waits for it."""
    shown = [r for r in rows if r["encoder"] in baselines]
    order = {**{k: v for k, v in baselines.items() if k != "pixels"}, **({"pixels": baselines["pixels"]} if "pixels" in baselines else {})}
    settings = {"budget_minutes": None if args.epochs else args.budget_minutes, "epochs": args.epochs,
                "skip_stages": args.skip_stages,
                "epochs_for": args.epochs_for, "subset": args.subset, "layers": args.layers, "seed": args.seed,
                "threads": torch.get_num_threads(), "device": device_label(), "torch": torch.__version__,
                "dataset": "fashion-mnist"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "methods.json").write_text(json.dumps({"settings": settings, "methods": rows,
                                                  "baselines": list(order.values())}, indent=2) + "\n")
    (out / "methods.md").write_text(markdown(shown, order, args))
    title = ("Frozen encoders after the same epochs on the same images" if args.epochs
             else "Frozen encoders after the same wall-clock budget") + " (left) vs baselines (right)"
    plot(shown, order, out / "methods.png", title)
    if args.layers == "all":
        plot_layers(shown, order, out / "methods-layers.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=4.0, help="training wall time per method")
    ap.add_argument("--epochs", type=float, default=None, help="train this many epochs per method instead of a time budget")
    ap.add_argument("--subset", type=int, default=None, help="with --epochs: pretrain on a seeded subset of this many images")
    ap.add_argument("--epochs-for", type=parse_epochs_for, default={}, help="with --epochs: METHOD=EPOCHS,... for slow methods")
    ap.add_argument("--layers", choices=["last", "all"], default="last", help="probe the last stage or every stage")
    ap.add_argument("--skip-stages", type=lambda t: [n for n in t.split(",") if n], default=[],
                    help="with --layers all: stage names left out (e.g. act1, the stem)")
    ap.add_argument("--calibration-steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated method names (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs", default="/tmp/selfsup-methods")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other methods' rows and the baselines of an existing methods.json")
    ap.add_argument("--from-json", action="store_true",
                    help="only redraw methods.md and the plots from --out's methods.json (same arguments as the run)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every config (e.g. data.subset=2000)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(FAMILY)
    unknown = sorted(set(names) - set(FAMILY))
    if unknown:
        ap.error(f"--only: unknown method(s) {', '.join(unknown)}; choose from {', '.join(FAMILY)}")
    if (args.subset or args.epochs_for) and not args.epochs:
        ap.error("--subset and --epochs-for go with --epochs (the time budget trains on all images)")
    if args.epochs and args.epochs <= 0:
        ap.error(f"--epochs must be positive, got {args.epochs:g}")
    out = Path(args.out)
    if args.from_json:  # redraw the tables and plots of a finished (or interrupted) run
        saved = json.loads((out / "methods.json").read_text())
        write(out, saved["methods"], {b["encoder"]: b for b in saved["baselines"]}, args)
        return
    previous = json.loads((out / "methods.json").read_text()) if args.merge and (out / "methods.json").is_file() else {}
    cache = Path(args.runs) / "features"
    rows = [r for r in previous.get("methods", []) if r["method"] not in names]
    baselines = {b["encoder"]: b for b in previous.get("baselines", [])}
    if "pixels" not in baselines:
        res = evaluate("pixels", eval_config(names[0], args), cache, log=lambda s: None)
        baselines["pixels"] = {"label": "raw pixels (784-d)", "encoder": "pixels", **scores(res)}
        print(json.dumps(baselines["pixels"]), flush=True)
    for name in names:
        key = encoder_key(method_config(name, args))
        if key not in baselines:  # one random-init baseline per distinct encoder config, before its methods
            baselines[key] = baseline_row(name, args, cache)
            print(json.dumps(baselines[key]), flush=True)
        rows.append(bench_method(name, args, cache))
        rows.sort(key=lambda r: list(FAMILY).index(r["method"]))
        print(json.dumps(next(r for r in rows if r["method"] == name)), flush=True)
        write(out, rows, baselines, args)


if __name__ == "__main__":
    main()
