"""Training throughput: images/s and peak memory of one full training step, and the same
SimCLR step built from another SSL library (lightly), as a ratio measured in one process.

A full step is what the trainer runs: batched augmentation of the uint8 batch into the
method's views, forward, loss, backward and the optimiser step (plus the method's per-step
hook: MoCo's momentum update). Images/s counts source images (a SimCLR step of batch B
encodes 2B views). Each (method, encoder) runs in a fresh subprocess so that its peak
memory is its own: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS
(``VmHWM``, imports included) on the CPU. Synthetic uint8 images, seeded.

Encoders: ``resnet18``, ``resnet50`` (torchvision-shaped timm ResNets, channels_last) and
``vit_small`` (timm ``vit_small_patch16_224``, ViT-S/16, at the run's resolution). MAE
needs a ViT, jigsaw's tiles are a third of the image (ViT tiles would need another patch
grid): those pairs are skipped.

On a GPU the model FLOPs of a step (forward and backward, counted by
``torch.utils.flop_counter``) give the fraction of the device's peak dense bf16 throughput
the step reaches (``--peak-tflops``, or known for H100/H200/A100).

Peer (``pip install -e '.[bench]'`` installs lightly): lightly's ``SimCLRProjectionHead``
and ``NTXentLoss`` on the same timm encoder, same batch and optimiser, alternated with
selfsup's SimCLR step in one process; medians of ``--repeats``:
  (a) the same augmented views fed to both (the model step: lightly encodes the two views
      in two forward passes, as its examples do; selfsup in one of 2B);
  (b) each library's own augmentation: lightly's per-image ``SimCLRTransform`` (PIL,
      torchvision, in the main process as with ``num_workers=0``) against selfsup's
      batched augmentation on the device.

    python benchmarks/throughput.py                          # CPU-sized: 64 px, batch 32
    python benchmarks/throughput.py --size 224 --batch 128 --compile both   # on a GPU

Input pipeline (``--pipeline-images``): one pass of the training loader over a folder of
generated JPEGs, decoding in workers against the pre-decoded memory map.
Prints JSON lines and writes benchmarks/results/throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from selfsup.config import RunConfig, load_config  # noqa: E402
from selfsup.data import DataInfo, make_loader  # noqa: E402
from selfsup.encoders import is_convnet  # noqa: E402
from selfsup.fileio import write_json, write_text  # noqa: E402
from selfsup.train.module import PretrainModule  # noqa: E402
from selfsup.train.optim import build_optimizer  # noqa: E402
from selfsup.train.precision import resolve_precision  # noqa: E402
from speed import alternate  # noqa: E402

ENCODERS = {"resnet18": ("resnet18", {}), "resnet50": ("resnet50", {}),
            "vit_small": ("vit_small_patch16_224", {"dynamic_img_size": False})}
SKIP = {("mae", "resnet18"), ("mae", "resnet50"), ("jigsaw", "vit_small")}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM data sheets
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def run_config(method: str, encoder: str, size: int, batch: int, precision: str, compile_: bool) -> RunConfig:
    name, kwargs = ENCODERS[encoder]
    kwargs = {**kwargs, "img_size": size} if encoder == "vit_small" else kwargs
    extra = ["method.queue_size=4096"] if method == "moco" else []
    return load_config(None, [f"method.name={method}", f"encoder.name={name}", f"encoder.kwargs={json.dumps(kwargs)}",
                              f"data.batch_size={batch}", f"trainer.precision={precision}",
                              f"trainer.compile={str(compile_).lower()}", "trainer.online_probe=false", *extra])


def autocast(device: str, precision: str):
    """The autocast context Lightning's precision plugin would open."""
    p = resolve_precision(precision, "gpu" if device == "cuda" else "cpu")
    if p in ("bf16-mixed", "16-mixed"):
        return torch.autocast(device, dtype=torch.bfloat16 if p.startswith("bf16") else torch.float16), p
    return torch.autocast(device, enabled=False), p


class SelfsupStep:
    """One full selfsup training step on a fixed uint8 batch."""

    def __init__(self, cfg: RunConfig, size: int, batch: int, device: str) -> None:
        torch.manual_seed(0)
        info = DataInfo(in_chans=3, image_size=size, num_classes=0, mean=MEAN, std=STD, num_samples=100_000)
        self.module = PretrainModule(cfg, info).to(device)
        if cfg.trainer.compile:
            self.module.method.encoder.compile()
        self.method = self.module.method
        self.opt = build_optimizer(cfg.optim, self.method, batch)
        self.images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        self.amp, self.precision = autocast(device, cfg.trainer.precision)
        self.step_no = 0

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.amp:
            out = self.method.step(self.images)
        out["loss"].backward()
        self.opt.step()
        self.step_no += 1
        self.method.on_train_step_end(self.step_no, 1_000_000)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(step, device: str, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def step_flops(step) -> float:
    """Model FLOPs of one step (forward and backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def peak_tflops(device: str, given: float | None) -> float | None:
    if given:
        return given
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """One (method, encoder, compile) in this process."""
    device = args.device
    cfg = run_config(args.method, args.encoder, args.size, args.batch, args.precision, args.compile_one)
    step = SelfsupStep(cfg, args.size, args.batch, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed_steps(step, device, args.steps, args.warmup)
    sec = statistics.median(times)
    row = {"method": args.method, "encoder": args.encoder, "size": args.size, "batch": args.batch,
           "device": device, "precision": step.precision, "compile": args.compile_one,
           "channels_last": cfg.encoder.channels_last and is_convnet(step.method.encoder), "step_s": round(sec, 4),
           "images_per_s": round(args.batch / sec, 1),
           "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb(), 1),
           "memory_kind": "max allocated (CUDA)" if device == "cuda" else "peak RSS (process)"}
    peak = peak_tflops(device, args.peak_tflops)
    if peak:
        flops = step_flops(step)
        row.update(tflop_per_step=round(flops / 1e12, 3), achieved_tflops=round(flops / sec / 1e12, 1),
                   fraction_of_peak=round(flops / sec / (peak * 1e12), 3), peak_tflops=peak)
    return row


# --------------------------------------------------------------------------- the peer


class LightlySimCLR(torch.nn.Module):
    """SimCLR as lightly's examples build it: backbone, SimCLRProjectionHead, NTXentLoss."""

    def __init__(self, encoder: torch.nn.Module, hidden: int, out: int, temperature: float) -> None:
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = encoder
        self.head = SimCLRProjectionHead(encoder.num_features, hidden, out)
        self.criterion = NTXentLoss(temperature=temperature)

    def loss(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))


def measure_peer(args: argparse.Namespace) -> dict[str, Any]:
    """selfsup's SimCLR step against lightly's, alternated in this process."""
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    from selfsup.encoders import create_encoder

    device, size, batch = args.device, args.size, args.batch
    cfg = run_config("simclr", args.encoder, size, batch, args.precision, False)
    ours = SelfsupStep(cfg, size, batch, device)
    name, kwargs = ENCODERS[args.encoder]
    kwargs = {**kwargs, "img_size": size} if args.encoder == "vit_small" else kwargs
    torch.manual_seed(0)
    encoder = create_encoder(name, 3, kwargs)
    if cfg.encoder.channels_last and "vit" not in name:
        encoder = encoder.to(memory_format=torch.channels_last)
    hidden = cfg.method.proj_hidden_dim or encoder.num_features
    peer = LightlySimCLR(encoder, hidden, cfg.method.proj_dim, cfg.method.temperature).to(device)
    peer_opt = build_optimizer(cfg.optim, peer, batch)
    aug = ours.method.augment
    amp = ours.amp

    def peer_step(x0: torch.Tensor, x1: torch.Tensor) -> None:
        peer_opt.zero_grad(set_to_none=True)
        with amp:
            loss = peer.loss(x0, x1)
        loss.backward()
        peer_opt.step()

    def peer_same_views() -> None:  # (a): selfsup's batched augmentation, lightly's model step
        with torch.no_grad():
            x0, x1 = aug(ours.images), aug(ours.images)
        peer_step(x0, x1)

    a = cfg.method.augment  # the same augmentation, in lightly's terms
    transform = SimCLRTransform(input_size=size, cj_prob=a.jitter_p, cj_strength=1.0, cj_bright=a.brightness,
                                cj_contrast=a.contrast, cj_sat=a.saturation, cj_hue=a.hue, min_scale=a.crop_scale[0],
                                random_gray_scale=a.grayscale_p, gaussian_blur=a.blur_p, sigmas=a.blur_sigma,
                                hf_prob=a.hflip, normalize={"mean": list(MEAN), "std": list(STD)})
    pil = [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in ours.images]

    def peer_own_pipeline() -> None:  # (b): lightly's per-image transforms, then its model step
        pairs = [transform(im) for im in pil]
        x0 = torch.stack([p[0] for p in pairs]).to(device, non_blocking=True)
        x1 = torch.stack([p[1] for p in pairs]).to(device, non_blocking=True)
        if cfg.encoder.channels_last:
            x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
        peer_step(x0, x1)

    def run(fn):
        def f():
            fn()
            sync(device)
        return f

    for _ in range(args.warmup):
        ours(), peer_same_views(), peer_own_pipeline()
    ta, tb = alternate(run(ours), run(peer_same_views), args.repeats)
    tc, td = alternate(run(ours), run(peer_own_pipeline), args.repeats)
    a, b, c, d = (batch / statistics.median(t) for t in (ta, tb, tc, td))
    return {"peer": "lightly", "peer_version": __import__("lightly").__version__, "encoder": args.encoder,
            "size": size, "batch": batch, "device": device, "precision": ours.precision,
            "same_views": {"selfsup_images_per_s": round(a, 1), "lightly_images_per_s": round(b, 1),
                           "ratio": round(a / b, 3)},
            "own_augmentation": {"selfsup_images_per_s": round(c, 1), "lightly_images_per_s": round(d, 1),
                                 "ratio": round(c / d, 3)}}


# --------------------------------------------------------------------------- input pipeline


def measure_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of one pass over an image folder of JPEGs: decoding in DataLoader workers
    against the pre-decoded memory-mapped copy (``data.cache=uint8``), same loader settings."""
    import tempfile

    import numpy as np
    from PIL import Image

    from selfsup.config import DataConfig
    from selfsup.data import build_dataset

    n, side, workers = args.pipeline_images, args.pipeline_side, args.pipeline_workers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos" / "train" / "all"
        root.mkdir(parents=True)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        for i in range(n):  # smooth random images (JPEG-typical sizes, not noise)
            im = Image.fromarray(np.roll(base, i, axis=0)).resize((side, side * 3 // 4), Image.BILINEAR)
            im.save(root / f"{i:05d}.jpg", quality=90)
        cfg = DataConfig(name="image-folder", root=str(Path(tmp) / "photos"), image_size=args.size,
                         num_workers=workers, cache_dir=str(Path(tmp) / "cache"),
                         holdout_fraction=0)  # every image trains: images/s divides by all of them
        folder = build_dataset(cfg, "train")
        t = time.perf_counter()
        mapped = build_dataset(DataConfig(**{**vars(cfg), "cache": "uint8"}), "train")
        build_s = time.perf_counter() - t

        def one_pass(ds) -> float:
            t = time.perf_counter()
            for _ in make_loader(ds, args.batch, train=True, num_workers=workers):
                pass
            return time.perf_counter() - t

        one_pass(folder)  # warm the page cache and the workers' imports
        folder_s = statistics.median(one_pass(folder) for _ in range(3))
        mapped_s = statistics.median(one_pass(mapped) for _ in range(3))
    return {"images": n, "jpeg_side": side, "size": args.size, "workers": workers,
            "decode_images_per_s": round(n / folder_s, 1), "mapped_images_per_s": round(n / mapped_s, 1),
            "ratio": round(folder_s / mapped_s, 2), "build_s": round(build_s, 2)}


# --------------------------------------------------------------------------- driver


def in_subprocess(args: argparse.Namespace, **variant: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--device", args.device, "--size", str(args.size), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
           "--precision", args.precision] + (["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])
    for k, v in variant.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        return {**variant, "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict[str, Any]], peers: list[dict[str, Any]], pipeline: dict[str, Any] | None,
             args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"Training throughput on {device}: {args.size} px, batch {args.batch}, synthetic uint8 images, "
             f"median of {args.steps} steps after {args.warmup} warm-up steps; torch {torch.__version__}.", "",
             "| method | encoder | precision | compile | images/s | step (s) | peak memory (MB) | fraction of peak |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('method')} | {r.get('encoder')} | | {r.get('compile_one')} | error: {r['error']} | | | |")
            continue
        frac = f"{r['fraction_of_peak']:.1%}" if "fraction_of_peak" in r else "n/a"
        lines.append(f"| {r['method']} | {r['encoder']} | {r['precision']} | {r['compile']} | {r['images_per_s']} | "
                     f"{r['step_s']} | {r['peak_memory_mb']} ({r['memory_kind']}) | {frac} |")
    if peers:
        lines += ["", f"SimCLR against lightly (same encoder, batch, optimiser; alternated in one process, "
                      f"medians of {args.repeats}): ratio = selfsup images/s / lightly images/s.", "",
                  "| encoder | comparison | selfsup images/s | lightly images/s | ratio |", "|---|---|---:|---:|---:|"]
        for p in peers:
            if "error" in p:
                lines.append(f"| {p.get('encoder')} | error: {p['error']} | | | |")
                continue
            for key, label in (("same_views", "(a) same views, model step"),
                               ("own_augmentation", "(b) each library's own augmentation")):
                v = p[key]
                lines.append(f"| {p['encoder']} | {label} | {v['selfsup_images_per_s']} | {v['lightly_images_per_s']} | "
                             f"{v['ratio']} |")
    if pipeline:
        p = pipeline
        lines += ["", f"Input pipeline: one pass over {p['images']} JPEGs ({p['jpeg_side']} px wide) resized to "
                      f"{p['size']} px, batch {args.batch}, {p['workers']} workers, median of 3 passes.", "",
                  "| source | images/s |", "|---|---:|",
                  f"| decoding JPEGs in workers | {p['decode_images_per_s']} |",
                  f"| pre-decoded uint8 memory map (data.cache=uint8; built once in {p['build_s']} s) | "
                  f"{p['mapped_images_per_s']} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--methods", default="simclr,moco,mae,jigsaw")
    ap.add_argument("--encoders", default="resnet18,resnet50,vit_small")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=32, help="source images per step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="alternations in the peer comparison")
    ap.add_argument("--precision", default="auto", help="trainer.precision (auto: bf16-mixed where native)")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="off")
    ap.add_argument("--peer", choices=("lightly", "none"), default="lightly")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak dense bf16 TFLOP/s")
    ap.add_argument("--pipeline-images", type=int, default=2000, help="JPEGs in the input-pipeline test (0: skip)")
    ap.add_argument("--pipeline-side", type=int, default=256, help="their width in pixels (height 3/4 of it)")
    ap.add_argument("--pipeline-workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    # one measurement, in a subprocess
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", help=argparse.SUPPRESS)
    ap.add_argument("--compile-one", type=lambda s: s == "True", default=False, help=argparse.SUPPRESS)
    ap.add_argument("--peer-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_one:
        print(json.dumps(measure_peer(args)))
        return
    if args.method:
        print(json.dumps(measure_one(args)))
        return

    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows = []
    for method in args.methods.split(","):
        for encoder in args.encoders.split(","):
            if (method, encoder) in SKIP:
                continue
            for c in compiles:
                row = in_subprocess(args, method=method, encoder=encoder, compile_one=c)
                print(json.dumps(row), flush=True)
                rows.append(row)
    peers = []
    if args.peer == "lightly":
        try:
            import lightly  # noqa: F401
        except ImportError:
            print("lightly is not installed (pip install -e '.[bench]'): no peer comparison", file=sys.stderr)
        else:
            for encoder in args.encoders.split(","):
                p = in_subprocess(args, encoder=encoder, peer_one="lightly")
                print(json.dumps(p), flush=True)
                peers.append(p)
    pipeline = measure_pipeline(args) if args.pipeline_images else None
    if pipeline:
        print(json.dumps(pipeline), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"settings": {k: v for k, v in vars(args).items() if not k.endswith("_one") and k not in
                             ("method", "encoder")}, "rows": rows, "peer": peers, "pipeline": pipeline},
               out / "throughput.json")
    write_text(markdown(rows, peers, pipeline, args), out / "throughput.md")


if __name__ == "__main__":
    main()
