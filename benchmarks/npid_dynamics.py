"""NPID's training dynamics, step by step: how its features relate to the memory bank.

Trains ``npid`` from ``configs/npid-fashion-mnist.yaml`` (plus overrides) in a plain loop
and every ``--every`` steps prints, for the current batch re-embedded with a fresh
augmentation against the bank as it was before the step:

- ``loss``, ``mi`` (the InfoNCE bound of the NCE scores) and ``logz`` (the frozen log Z);
- ``pos_cos``: mean cosine of each image's feature with its own bank row;
- ``noise_cos_mean``: mean cosine with every bank row; ``top1_other``: mean of each
  image's highest cosine with another image's row;
- ``bankmean`` / ``vmean``: norm of the mean bank row / of the batch's mean feature
  (1 = every row or feature identical, about 0 = spread over the sphere);
- ``knn``: the method's memory-bank kNN monitor (k=200), chance is 0.1.

This is a diagnostic, not a benchmark (no timing). Outputs quoted in the README and the
npid config are in ``benchmarks/results/npid_dynamics.md``.

    python benchmarks/npid_dynamics.py [--subset 5000] [--epochs 8] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from methods import training_loop  # noqa: E402
from selfsup.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", type=int, default=5000, help="training images (0: all 60,000)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--every", type=int, default=20, help="print every this many steps")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. optim.lr=0.003)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    extra = [f"data.subset={args.subset}"] if args.subset else []
    cfg = load_config(ROOT / "configs" / "npid-fashion-mnist.yaml", [*extra, "trainer.online_probe=false",
                                                                       *args.overrides])
    module, _, loop = training_loop(cfg)  # the benchmark's step loop, on the trainer's device
    method = module.method
    bank_before = method.bank.bank.clone()  # [n, F]
    for step in loop:
        if step.epoch >= args.epochs:
            break
        if (step.index + 1) % args.every == 0:
            images, _, idx = step.batch
            out = step.out
            with torch.no_grad():
                v = F.normalize(method.head(method.encoder(method.augment(images))), dim=1)  # [B, F]
                pos = (v * bank_before[idx]).sum(1)  # [B]
                sims = v @ bank_before.T  # [B, n]
                other = sims.scatter(1, idx[:, None], -2).max(1).values  # [B]
            knn = out.get("bank_knn_acc", torch.tensor(-1.0))
            print(f"ep {step.epoch} step {step.index + 1} loss {out['loss'].item():.2f} "
                  f"mi {out['mi_bound'].item():.2f} logz {out['log_z'].item():.2f} pos_cos {pos.mean():.3f} "
                  f"noise_cos_mean {sims.mean():.3f} top1_other {other.mean():.3f} "
                  f"bankmean {method.bank.bank.mean(0).norm():.3f} vmean {v.mean(0).norm():.3f} "
                  f"knn {knn.item():.3f}", flush=True)
        bank_before = method.bank.bank.clone()


if __name__ == "__main__":
    main()
