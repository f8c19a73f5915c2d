"""Speed of the foundation, as ratios measured in one process (this machine is shared and noisy).

(a) a full SimCLR training step (batched augmentation of both views, forward and
    backward, projection head, NT-Xent, optimiser step) against the bare encoder's
    forward+backward on the same 2N views: target >= 0.90 with SimCLR's default head
    (hidden width = the encoder's), also reported with the quickstart's wider head;
(b) feature extraction (selfsup.eval.features.extract_features, from uint8 images)
    against bare encoder inference on ready tensors: target >= 0.90;
(c) faiss exact kNN (k=200) over 60,000 x 10,000 x 512 features against one torch
    matmul of the same similarity matrix: target time ratio <= 1.3.

Each measurement alternates the two sides and reports medians. Prints JSON and
writes benchmarks/results/speed.{json,md}.

    python benchmarks/speed.py [--config configs/quickstart.yaml] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from selfsup.config import load_config  # noqa: E402
from selfsup.data import DataInfo, TensorImages  # noqa: E402
from selfsup.eval.features import extract_features  # noqa: E402
from selfsup.eval.knn import search  # noqa: E402
from selfsup.train.module import PretrainModule  # noqa: E402
from selfsup.train.optim import build_optimizer  # noqa: E402


def timed(fn, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(a, b, repeats: int) -> tuple[list[float], list[float]]:
    ta, tb = [], []
    a(), b()  # warm up both
    for _ in range(repeats):
        ta.append(timed(a, 0))
        tb.append(timed(b, 0))
    return ta, tb


def training_step(cfg, info: DataInfo, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    module = PretrainModule(cfg, info)
    method = module.method
    opt = build_optimizer(cfg.optim, method, batch)
    images = torch.randint(0, 256, (batch, info.in_chans, info.image_size, info.image_size), dtype=torch.uint8)
    views = torch.randn(2 * batch, info.in_chans, info.image_size, info.image_size)

    def full():
        opt.zero_grad(set_to_none=True)
        out = method.training_step(images)
        out["loss"].backward()
        opt.step()

    def bare():
        method.encoder.zero_grad(set_to_none=True)
        method.encoder(views).sum().backward()

    tf, tb = alternate(full, bare, repeats)
    full_ips, bare_ips = batch / statistics.median(tf), batch / statistics.median(tb)
    return {"batch": batch, "full_step_images_per_s": round(full_ips, 1),
            "bare_encoder_images_per_s": round(bare_ips, 1), "ratio": round(full_ips / bare_ips, 3),
            "target": ">= 0.90"}


def extraction(cfg, info: DataInfo, n: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    encoder = PretrainModule(cfg, info).method.encoder.eval()
    ds = TensorImages(torch.randint(0, 256, (n, info.in_chans, info.image_size, info.image_size),
                                    dtype=torch.uint8), torch.zeros(n, dtype=torch.long), 10)
    ready = [torch.randn(min(batch, n - i), info.in_chans, info.image_size, info.image_size)
             for i in range(0, n, batch)]

    def full():
        extract_features(encoder, ds, info, batch)

    @torch.inference_mode()
    def bare():
        for x in ready:
            encoder(x)

    tf, tb = alternate(full, bare, repeats)
    full_ips, bare_ips = n / statistics.median(tf), n / statistics.median(tb)
    return {"images": n, "extract_images_per_s": round(full_ips, 1), "bare_inference_images_per_s": round(bare_ips, 1),
            "ratio": round(full_ips / bare_ips, 3), "target": ">= 0.90"}


def knn(n_train: int, n_test: int, dim: int, k: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(n_train, dim, generator=g), dim=1)
    test = torch.nn.functional.normalize(torch.randn(n_test, dim, generator=g), dim=1)

    def faiss_side():
        search(train, test, k)

    def matmul_side():
        test @ train.T  # [Q, N] similarity matrix, the GEMM a search cannot avoid

    tf, tm = alternate(faiss_side, matmul_side, max(3, repeats // 2))
    return {"shape": [n_train, n_test, dim], "k": k, "faiss_seconds": round(statistics.median(tf), 3),
            "matmul_seconds": round(statistics.median(tm), 3),
            "ratio": round(statistics.median(tf) / statistics.median(tm), 3), "target": "<= 1.3"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    cfg = load_config(args.config, ["trainer.online_probe=false"])
    info = DataInfo(in_chans=1, image_size=28, num_classes=10, mean=(0.286,), std=(0.353,))
    res = {
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "encoder": {"name": cfg.encoder.name, "kwargs": cfg.encoder.kwargs, "input": [1, 28, 28]},
        "training_step": training_step(load_config(args.config, ["trainer.online_probe=false",
                                                                 "method.proj_hidden_dim=0"]),
                                       info, args.batch, args.repeats),
        "training_step_config_head": training_step(cfg, info, args.batch, args.repeats),
        "feature_extraction": extraction(cfg, info, 8192, 512, args.repeats),
        "knn": knn(60_000, 10_000, 512, 200, args.repeats),
    }
    print(json.dumps(res, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(res, indent=2) + "\n")
    t, e, k = res["training_step"], res["feature_extraction"], res["knn"]
    tw = res["training_step_config_head"]
    md = ["| measurement | selfsup | reference | ratio | target |", "|---|---:|---:|---:|---|",
          f"| SimCLR step vs bare encoder fwd+bwd (img/s) | {t['full_step_images_per_s']} | "
          f"{t['bare_encoder_images_per_s']} | {t['ratio']} | {t['target']} |",
          f"| same, head hidden {cfg.method.proj_hidden_dim} as in {Path(args.config).name} | "
          f"{tw['full_step_images_per_s']} | {tw['bare_encoder_images_per_s']} | {tw['ratio']} | (reported) |",
          f"| feature extraction vs bare inference (img/s) | {e['extract_images_per_s']} | "
          f"{e['bare_inference_images_per_s']} | {e['ratio']} | {e['target']} |",
          f"| faiss kNN k=200 vs one matmul (s, 60k x 10k x 512) | {k['faiss_seconds']} | {k['matmul_seconds']} | "
          f"{k['ratio']} | {k['target']} |"]
    (out / "speed.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
