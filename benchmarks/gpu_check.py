"""Device check: does every method train on the accelerator, and do the trainer's GPU-only
settings run? Meant for a machine with a GPU (CPU CI covers the rest); on a CPU it runs
the same checks on the CPU.

1. Every registered method, from its Fashion-MNIST config (real data and encoders), takes
   ``--steps`` training steps on the device at the trainer's precision (bf16 autocast on
   Ampere and later), the loop ``benchmarks/methods.py`` times: each loss is finite, the
   encoder's gradients are finite and non-zero and its weights move, and every parameter
   and buffer lives on the expected device (the GPU when there is one).
2. Short Lightning runs (``trainer.max_steps``) of the trainer's GPU settings on one
   device: DDP with SyncBatchNorm and ``torch.compile`` (SimCLR, ResNet), FSDP with one
   shard unit per ViT block and activation checkpointing (MAE), and FSDP refused for a
   momentum teacher (MoCo). Each must log a finite loss at every step and leave a
   ``last.ckpt`` at the last step that rebuilds an encoder with finite weights.
   These need a GPU (Lightning and torch refuse both on a CPU) and are left out without one.
   On one GPU they build and step these paths only: with a single process SyncBatchNorm
   computes plain batch statistics and FSDP shards nothing; synchronisation and sharding
   need several GPUs, which this script does not drive (under torchrun each rank would
   repeat every check).

Prints one JSON line per check, writes ``--out``/gpu_check.json, exits 1 if any fails.

    python benchmarks/gpu_check.py [--steps 6] [--out DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from methods import FAMILY, method_config, run_steps  # noqa: E402
from selfsup.config import ConfigError  # noqa: E402
from selfsup.eval.evaluate import default_device  # noqa: E402
from selfsup.export import load_checkpoint  # noqa: E402
from selfsup.fileio import write_json  # noqa: E402
from selfsup.train.module import module_from_checkpoint  # noqa: E402
from selfsup.train.run import pretrain  # noqa: E402


def check_method(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = method_config(name, args)
    run = run_steps(cfg, args.steps)
    method = run.module.method
    expected = torch.device(default_device(cfg.trainer.accelerator))
    after = dict(method.encoder.named_parameters())
    moved = max(float((after[k].detach().float().cpu() - v.float()).abs().max()) for k, v in run.initial_encoder.items())
    grads = [p.grad for p in method.encoder.parameters() if p.grad is not None]  # of the last step
    grad_norm = float(torch.stack([g.float().norm() for g in grads]).norm()) if grads else 0.0
    elsewhere = [n for n, t in [*method.named_parameters(), *method.named_buffers()] if t.device.type != expected.type]
    ok = (all(math.isfinite(x) for x in run.losses) and moved > 0 and math.isfinite(grad_norm) and grad_norm > 0
          and not elsewhere)
    return {"check": f"steps:{name}", "ok": ok, "device": str(next(method.parameters()).device),
            "steps_per_s": round(run.rate, 2), "first_loss": round(run.losses[0], 4),
            "last_loss": round(run.losses[-1], 4), "encoder_max_change": moved, "encoder_grad_norm": grad_norm,
            "not_on_device": elsewhere[:5]}


def check_fit(label: str, name: str, args: argparse.Namespace, overrides: list[str],
              expect_error: str | None = None) -> dict[str, Any]:
    """A short Lightning run; its checkpoint must load and its logged losses be finite."""
    cfg = method_config(name, args, [f"trainer.max_steps={args.fit_steps}", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
                                     f"name=gpu-{label}", *overrides])
    try:
        run = pretrain(cfg, log=lambda s: None)
    except ConfigError as err:
        ok = expect_error is not None and expect_error in str(err)
        return {"check": f"fit:{label}", "ok": ok, "refused": str(err)[:200]}
    if expect_error is not None:
        return {"check": f"fit:{label}", "ok": False, "refused": None}
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    encoder = module_from_checkpoint(ckpt).method.encoder  # rebuilt from the checkpoint, as `selfsup eval` does
    finite = all(bool(torch.isfinite(p).all()) for p in encoder.parameters())
    ok = (len(losses) == args.fit_steps and all(math.isfinite(x) for x in losses)
          and ckpt.get("global_step") == args.fit_steps and finite)
    return {"check": f"fit:{label}", "ok": ok, "losses_logged": len(losses), "checkpoint_step": ckpt.get("global_step"),
            "last_loss": losses[-1] if losses else None, "run_dir": str(run)}


def guarded(fn: Callable[[], dict[str, Any]], label: str) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        row = fn()
    except Exception as err:  # report every failure, run the remaining checks
        row = {"check": label, "ok": False, "error": f"{type(err).__name__}: {err}"[:500],
               "where": traceback.format_exc(limit=-3)[-1500:]}
    row["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per method (after 3 warm-up steps)")
    ap.add_argument("--fit-steps", type=int, default=20, help="optimiser steps of each Lightning run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated method names (default: all)")
    ap.add_argument("--skip-fits", action="store_true", help="only the per-method steps")
    ap.add_argument("--runs", default="/tmp/selfsup-gpu-check")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"))
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every config (e.g. data.root=DIR)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(FAMILY)
    rows = [guarded(lambda n=n: check_method(n, args), f"steps:{n}") for n in names]
    if not args.skip_fits and not torch.cuda.is_available():
        print("no GPU: the Lightning runs (SyncBatchNorm, FSDP) need one and are left out", flush=True)
    elif not args.skip_fits:
        fits = [("ddp-syncbn-compile", "simclr", ["trainer.strategy=ddp", "trainer.sync_batchnorm=true",
                                                  "trainer.compile=true"], None),
                ("fsdp-vit-checkpointing", "mae", ["trainer.strategy=fsdp", "trainer.grad_checkpointing=true"], None),
                ("fsdp-refuses-teacher", "moco", ["trainer.strategy=fsdp"], "momentum teacher")]
        rows += [guarded(lambda f=f: check_fit(f[0], f[1], args, f[2], f[3]), f"fit:{f[0]}") for f in fits]
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"environment": env, "checks": rows}, out / "gpu_check.json")
    failed = [r["check"] for r in rows if not r["ok"]]
    print(json.dumps({"environment": env, "passed": len(rows) - len(failed), "failed": failed}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
