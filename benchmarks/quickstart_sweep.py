"""The sweep behind configs/quickstart.yaml: methods, encoders and schedules on
Fashion-MNIST at one fixed compute budget, each scored on the 10k test images by weighted
kNN (k=20, T=0.07; k=200, T=0.1) and a linear probe on the final-step weights.

The budget is counted in images, not in wall minutes (the development machine's 2 cores
are shared, so minutes are noisy): issue 14's quickstart trains 5 epochs (300,000 images)
with its encoder in about 10 minutes on 2 uncontended cores. A variant whose full training
step (batched augmentation, forward, loss, backward, optimiser step) runs ``r`` times as
many images per second as that step, both timed alternately in one process at one thread
(``--rates``), gets ``r x 300,000`` images: the same minutes on the same machine.

Variants are whole configs (selfsup defaults plus overrides), not overrides of
configs/quickstart.yaml, so the sweep stays reproducible after the quickstart changes.

    python benchmarks/quickstart_sweep.py --rates today,fast                # step-rate ratios
    python benchmarks/quickstart_sweep.py --run simclr-fast --ratio 2.6     # variant at its budget + kNN/linear
    python benchmarks/quickstart_sweep.py --train CONFIG.yaml --run-dir DIR [--extra trainer.max_epochs=3]
    python benchmarks/quickstart_sweep.py --curve DIR [--epochs 1 2] [--random]   # epoch checkpoints, random init

``--train`` trains a config file as ``selfsup pretrain`` would (no evaluation) and also
keeps every epoch's checkpoint in DIR/every_epoch; ``--curve`` scores those with kNN and a
one-seed linear probe (``--random``: also the same encoder at fair random init). Every
result is one JSON line appended to ``--log``; benchmarks/results/quickstart_sweep.{md,json}
are made from those lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from selfsup.artifacts.load import load_encoder  # noqa: E402
from selfsup.config import RunConfig, load_config  # noqa: E402
from selfsup.data import build_dataset  # noqa: E402
from selfsup.eval.evaluate import evaluate  # noqa: E402
from selfsup.train import run as run_module  # noqa: E402
from selfsup.train.module import PretrainModule  # noqa: E402
from selfsup.train.optim import build_optimizer  # noqa: E402

REFERENCE_IMAGES = 5 * 60_000  # issue 14's quickstart: 5 epochs in about 10 minutes on 2 cores

SLIM = {"channels": [32, 64, 128, 256]}  # half-width resnet18
ENCODERS: dict[str, dict[str, Any]] = {
    "slim-os16": {**SLIM, "output_stride": 16},  # issue 14's quickstart encoder
    "slim-os32": SLIM,
    "slim-b1": {**SLIM, "layers": [1, 1, 1, 1]},  # one BasicBlock per stage (a resnet10)
    "slim-b1-os16": {**SLIM, "layers": [1, 1, 1, 1], "output_stride": 16},
    "slim-os8": {**SLIM, "output_stride": 8},
    "slim-wide4-os16": {"channels": [32, 64, 128, 512], "output_stride": 16},  # 512-d features
    "quarter-os16": {"channels": [16, 32, 64, 128], "output_stride": 16},  # 128-d features
}
COMMON = ["data.name=fashion-mnist", "encoder.name=resnet18"]
SIMCLR = ["method.name=simclr", "method.temperature=0.2", "method.proj_hidden_dim=2048",
          "method.augment.crop_scale=[0.3,1.0]", "optim.name=lars", "optim.lr=1.0", "optim.weight_decay=1e-6",
          "optim.warmup_epochs=0.5", "data.batch_size=256"]
ROTATION = ["method.name=rotation", "method.head_hidden_dim=512", "method.head_layers=2", "optim.name=sgd",
            "optim.lr=0.1", "optim.weight_decay=5e-4", "optim.warmup_epochs=0.5", "data.batch_size=128"]


def encoder(name: str) -> list[str]:
    return [f"encoder.kwargs={json.dumps(ENCODERS[name])}"]


VARIANTS: dict[str, list[str]] = {
    "today": [*COMMON, *SIMCLR, *encoder("slim-os16")],  # issue 14's quickstart
    "simclr-fast": [*COMMON, *SIMCLR, *encoder("slim-b1")],
    "rotation-today": [*COMMON, *ROTATION, *encoder("slim-os16")],
    "rotation-fast": [*COMMON, *ROTATION, *encoder("slim-b1")],
    "rotation-b1-os16": [*COMMON, *ROTATION, *encoder("slim-b1-os16")],
    "simclr-os32": [*COMMON, *SIMCLR, *encoder("slim-os32")],
    "simclr-b1-os16": [*COMMON, *SIMCLR, *encoder("slim-b1-os16")],
    "simclr-os8": [*COMMON, *SIMCLR, *encoder("slim-os8")],
    "simclr-wide4": [*COMMON, *SIMCLR, *encoder("slim-wide4-os16")],
    "simclr-quarter": [*COMMON, *SIMCLR, *encoder("quarter-os16")],
}
EVAL_LIGHT = ["eval.low_shot=[]", "eval.probe_seeds=1", "eval.baselines=[]", "eval.sklearn_max_images=0"]


def variant_config(name: str, extra: list[str] = ()) -> RunConfig:
    """Selfsup defaults plus the variant's overrides plus ``extra``."""
    return load_config(None, [*VARIANTS[name], "trainer.progress_bar=false", *extra])


def step_rates(names: list[str], rounds: int) -> dict[str, float]:
    """Images/s of each variant's full training step on one real batch, the variants timed
    in turn ``rounds`` times in this process (medians): ratios between them are fair even
    when other work shares the CPU."""
    steps: dict[str, tuple[Callable[[], None], int]] = {}
    for name in names:
        cfg = variant_config(name, ["trainer.online_probe=false"])
        ds = build_dataset(cfg.data, "train")
        torch.manual_seed(0)
        method = PretrainModule(cfg, ds.info()).method
        opt = build_optimizer(cfg.optim, method, cfg.data.batch_size)
        images = torch.stack([ds[i][0] for i in range(cfg.data.batch_size)])  # [B, 1, 28, 28] uint8

        def step(method=method, opt=opt, images=images) -> None:
            opt.zero_grad(set_to_none=True)
            method.step(images)["loss"].backward()
            opt.step()

        step(), step()  # warm-up
        steps[name] = (step, cfg.data.batch_size)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name, (step, batch) in steps.items():
            t = time.perf_counter()
            step()
            rates[name].append(batch / (time.perf_counter() - t))
    return {n: statistics.median(r) for n, r in rates.items()}


def keep_every_epoch(folder: Path) -> None:
    """Make the trainer also keep every epoch's checkpoint in ``folder`` (for the curve)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    build = run_module.build_trainer

    def build_keeping(cfg, module, run_dir, log=print, resume=False):
        trainer = build(cfg, module, run_dir, log, resume)
        trainer.callbacks.append(ModelCheckpoint(dirpath=folder, filename="epoch{epoch:03d}", save_top_k=-1,
                                                 every_n_epochs=1, auto_insert_metric_name=False))
        return trainer

    run_module.build_trainer = build_keeping


def scores(res: dict[str, Any]) -> dict[str, Any]:
    """The numbers a sweep row keeps from an ``evaluate`` result."""
    out = {f"knn{k}": round(v["top1"], 2) for k, v in ((key.split(",")[0].removeprefix("k="), v)
                                                        for key, v in res["knn"].items())}
    if "linear" in res:
        out["linear"] = res["linear"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="", help="comma-separated variants: step-rate ratios to the first")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--run", default="", help="a variant to train and evaluate")
    ap.add_argument("--ratio", type=float, default=1.0, help="its step-rate ratio to 'today' (from --rates)")
    ap.add_argument("--train", default="", help="a config file to train as it is (no evaluation), keeping "
                                               "every epoch's checkpoint; evaluate with `selfsup eval RUN_DIR`")
    ap.add_argument("--run-dir", default="")
    ap.add_argument("--curve", default="", help="a run directory whose every-epoch checkpoints to evaluate")
    ap.add_argument("--epochs", type=int, nargs="*", default=[], help="--curve: only these epochs (1-based)")
    ap.add_argument("--random", action="store_true", help="--curve: also the run's encoder at fair random init")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides (--run, --train, --curve)")
    ap.add_argument("--runs", default="/tmp/selfsup-sweep")
    ap.add_argument("--log", default="/tmp/selfsup-sweep/quickstart_sweep.jsonl", help="JSON lines appended")
    args = ap.parse_args()
    torch.set_num_threads(1)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    quiet = lambda s: None  # noqa: E731
    if args.rates:
        names = args.rates.split(",")
        rates = step_rates(names, args.rounds)
        for n in names:
            print(json.dumps({"variant": n, "images_per_s": round(rates[n], 1),
                              "ratio": round(rates[n] / rates[names[0]], 3)}), flush=True)
    if args.run:
        name = args.run
        cfg0 = variant_config(name)
        steps = int(REFERENCE_IMAGES * args.ratio) // cfg0.data.batch_size
        tag = f"{name}-s{args.seed}{'-' + '-'.join(args.extra) if args.extra else ''}".replace("/", "_")
        run_dir = Path(args.runs) / tag
        keep_every_epoch(run_dir / "every_epoch")
        cfg = variant_config(name, [f"seed={args.seed}", f"trainer.max_steps={steps}", "trainer.max_epochs=1000",
                                    *EVAL_LIGHT, *args.extra])
        t0 = time.perf_counter()
        run_module.pretrain(cfg, run_dir, log=quiet)
        minutes = (time.perf_counter() - t0) / 60
        row = {"variant": name, "overrides": [*VARIANTS[name], *args.extra], "seed": args.seed, "ratio": args.ratio,
               "steps": steps, "images": steps * cfg.data.batch_size,
               "epochs": round(steps * cfg.data.batch_size / 60_000, 2), "wall_minutes_1_thread": round(minutes, 1),
               "run_dir": str(run_dir), **scores(evaluate(str(run_dir), cfg, run_dir / "features", log=quiet,
                                                                   load=load_encoder))}
        print(json.dumps(row), flush=True)
        with open(args.log, "a") as f:
            f.write(json.dumps(row) + "\n")
    if args.train:
        run_dir = Path(args.run_dir)
        keep_every_epoch(run_dir / "every_epoch")
        cfg = load_config(args.train, [f"seed={args.seed}", "trainer.progress_bar=false", *args.extra])
        t0 = time.perf_counter()
        run_module.pretrain(cfg, run_dir, log=print)
        print(json.dumps({"train": args.train, "seed": args.seed, "run_dir": str(run_dir),
                          "wall_minutes_1_thread": round((time.perf_counter() - t0) / 60, 1)}), flush=True)
    if args.curve:
        run_dir = Path(args.curve)
        cfg = load_config(run_dir / "config.yaml", [*EVAL_LIGHT, *args.extra])
        targets = [str(c) for c in sorted((run_dir / "every_epoch").glob("epoch*.ckpt"))
                   if not args.epochs or int(c.stem[5:]) + 1 in args.epochs]
        for target in targets + ([f"random:{cfg.encoder.name}"] if args.random else []):
            res = evaluate(target, cfg, run_dir / "features", log=quiet, load=load_encoder)
            epoch = int(Path(target).stem[5:]) + 1 if target.endswith(".ckpt") else 0
            row = {"run_dir": str(run_dir), "target": Path(target).name, "epoch": epoch,
                   "images": epoch * (60_000 // cfg.data.batch_size) * cfg.data.batch_size, **scores(res)}
            print(json.dumps(row), flush=True)
            with open(args.log, "a") as f:
                f.write(json.dumps({"curve": row}) + "\n")


if __name__ == "__main__":
    main()
