"""Transfer beyond the frozen probe (issue 17): linear probe, partial, BitFit, LoRA, prompt (ViT) and full
fine-tuning of pretrained encoders and their random-init twins, at several labelled fractions.

For every target (an export or run directory: the quickstart's SimCLR resnet, an MAE-pretrained ViT) and its
random-init twin (the same timm architecture and kwargs, timm's fair init, the target's normalisation), on
Fashion-MNIST (or ``--data``):

- ``linear``: selfsup's linear probe on frozen features (:func:`selfsup.eval.linear.probe_protocol`, its
  default grid), the reference every protocol is read against;
- each ``--protocols`` entry through :func:`selfsup.transfer.run_protocol` with ``--epochs``, ``--lrs``,
  ``--seeds`` and LoRA rank ``--lora-rank``.

Each cell reports top-1 mean +- sd over seeds, the trainable share of the encoder, and training minutes per
seed; the budget of a cell is ``epochs x train images`` (``--train-images`` caps the training set, a seeded
class-balanced subset, so that a cell fits a CPU budget). Writes benchmarks/results/transfer.{json,md}.

    python benchmarks/transfer.py RUN_OR_EXPORT [...] [--protocols finetune,partial,bitfit,lora,prompt]
        [--fractions 0.01,0.1,1] [--epochs 5] [--seeds 3] [--train-images 10000] [--no-random]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from selfsup.artifacts.card import card_info  # noqa: E402
from selfsup.artifacts.load import load_encoder_and_card  # noqa: E402
from selfsup.config import DataConfig  # noqa: E402
from selfsup.data import build_dataset  # noqa: E402
from selfsup.data.datasets import Subset  # noqa: E402
from selfsup.encoders import create_encoder  # noqa: E402
from selfsup.eval.features import extract_features  # noqa: E402
from selfsup.eval.linear import class_balanced_subset, probe_protocol  # noqa: E402
from selfsup.transfer import TransferOptions, run_protocol  # noqa: E402
from selfsup.transfer.protocols import is_vit  # noqa: E402


def random_twin(card: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The target's architecture at timm's fair random init (no block starts as an identity)."""
    torch.manual_seed(seed)
    return create_encoder(card["architecture"], card["in_chans"], card.get("kwargs") or {}, fair_random_init=True)


def linear_rows(encoder: torch.nn.Module, card: dict[str, Any], train, test, fractions: list[float],
                seeds: int) -> list[dict[str, Any]]:
    """The linear probe of every fraction, in run_protocol's row layout (trainable: 0% of the encoder)."""
    info = card_info(card)
    start = time.perf_counter()
    xtr, ytr = extract_features(encoder, train, info)
    xte, yte = extract_features(encoder, test, info)
    probes = probe_protocol(xtr, ytr, xte, yte, train.num_classes, [0.01, 0.03, 0.1, 0.3], [0.0, 1e-5, 1e-4],
                            tuple(fractions), seeds)
    minutes = (time.perf_counter() - start) / 60 / max(1, seeds)
    return [{**r, "key": key, "protocol": "linear", "trainable_params": 0, "trainable_pct": 0.0,
             "minutes": minutes} for key, r in probes.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", help="export or run directories")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--protocols", default="finetune,partial,bitfit,lora,prompt")
    ap.add_argument("--fractions", default="0.01,0.1,1")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lrs", default="0.001")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--train-images", type=int, default=0, help="cap on training images (0: all)")
    ap.add_argument("--no-random", action="store_true", help="skip the random-init twins")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transfer"))
    args = ap.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    rows: list[dict[str, Any]] = []
    for path in args.targets:
        encoder, card = load_encoder_and_card(path)
        data = DataConfig(name=args.data, image_size=card["input_size"][-1])
        train, test = build_dataset(data, "train"), build_dataset(data, "test")
        if args.train_images and args.train_images < len(train):
            idx = class_balanced_subset(train.labels, args.train_images / len(train), 0)
            train = Subset(train, idx.tolist())
        twins = [("pretrained", encoder)] + ([] if args.no_random else [("random-init", random_twin(card))])
        for kind, enc in twins:
            label = f"{Path(path).name} ({kind})"
            for row in linear_rows(enc, card, train, test, fractions, args.seeds):
                rows.append({"target": label, **row})
                print(json.dumps(rows[-1]), flush=True)
            for protocol in args.protocols.split(","):
                if protocol == "prompt" and not is_vit(enc):
                    continue
                opts = TransferOptions(protocol=protocol, epochs=args.epochs, seeds=args.seeds,
                                       lrs=[float(x) for x in args.lrs.split(",")], lora_rank=args.lora_rank,
                                       lora_alpha=2.0 * args.lora_rank, low_shot=[f for f in fractions if f < 1])
                for row in run_protocol(enc, card, train, test, opts, log=lambda m: None):
                    rows.append({"target": label, "budget_images": args.epochs * row["train_images"], **row})
                    print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "args": vars(args)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| target | protocol | labels | train images | trainable % | minutes / seed | top-1 (mean +- sd) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['protocol']} | {r['fraction']:g} | {r['train_images']} | "
                     f"{r['trainable_pct']:.2f} | {r['minutes']:.2f} | {r['top1']:.2f} +- {r['top1_std']:.2f} |")
    out.with_suffix(".md").write_text(f"# Transfer protocols\n\n{json.dumps(meta)}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
