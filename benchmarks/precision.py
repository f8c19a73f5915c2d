"""bf16 autocast against float32 on this CPU: is bf16 stable, and is it faster?

``trainer.precision: auto`` picks float32 ("32-true") on CPUs; this script holds the
measurements behind that choice, on whichever CPU runs it:

- speed: the quickstart's SimCLR step (Fashion-MNIST 28 px, batch 256) and an NPID step on
  digits (16 px, batch 64) at 32-true and at bf16-mixed, two training loops in one
  process, timed in alternating windows (the order flips each window); the ratio of the
  median step times is bf16's speed-up (> 1: bf16 faster);
- stability: several methods x seeds, ``--steps`` optimiser steps each on digits at 16 px
  (slim resnet18, batch 64; NPID with 256 noise samples: the setting of issue 13), at
  32-true, at bf16-mixed, and at bf16-mixed with oneDNN turned off (first seed only;
  ``torch.backends.mkldnn.flags(enabled=False)``: the same autocast, ATen's own bf16
  kernels). Counted per run: steps whose loss or a gradient is NaN/inf (skipped, as a
  GradScaler would, so one bad step does not poison the rest), and steps where a
  convolution's gradient is silently wrong: not zero on a filter tap that meets only zero
  padding (exactly zero by arithmetic; at 16 px every tap but the centre of
  ``encoder.layer4.0.conv1``, whose input is 1x1);
- the convolution alone: the bf16 weight gradient of strided convolutions whose input is
  narrower than their stride, and two controls, against float64, oneDNN on and off.

Writes benchmarks/results/precision.{json,md} and prints the JSON. About 10 minutes on 2
shared cores with the defaults (``--steps 5 --seeds 0``: about 2).

    python benchmarks/precision.py [--steps 20] [--seeds 0,1,2] [--methods npid,simclr,...] [--windows 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from methods import training_loop  # noqa: E402
from selfsup.config import RunConfig, load_config  # noqa: E402
from selfsup.data import build_dataset, make_loader, subset  # noqa: E402
from selfsup.fileio import write_json, write_text  # noqa: E402
from selfsup.train.module import PretrainModule, first_non_finite_grad  # noqa: E402
from selfsup.train.optim import build_optimizer  # noqa: E402
from selfsup.train.precision import PrecisionWarning, cpu_has_bf16  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
SLIM = "encoder.kwargs={channels: [32, 64, 128, 256]}"  # no output_stride: layer4 strides 2
DIGITS = ["data.name=digits", "data.image_size=16", "data.batch_size=64", "encoder.name=resnet18", SLIM,
          "trainer.online_probe=false", "trainer.progress_bar=false"]
EXTRA = {"npid": ["method.num_noise=256"], "moco": ["method.queue_size=1024", "method.bn_splits=1"],
         "mocov3": ["method.freeze_patch_embed=false"]}  # its config's ViT option; the runs here use the ResNet


def cpu_info() -> dict[str, Any]:
    """lscpu's model name and the bf16 flags, torch's and oneDNN's versions."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    field = dict(re.findall(r"^([^:\n]+):\s*(.*)$", lscpu, flags=re.M))
    flags = set(field.get("Flags", "").split())
    onednn = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return {"model": field.get("Model name", platform.processor() or "unknown"),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "native_bf16 (selfsup.train.run.cpu_has_bf16)": cpu_has_bf16(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "onednn": onednn.group(1) if onednn else None}


def config(method: str, seed: int, precision: str, extra: list[str] = ()) -> RunConfig:
    base = ROOT / "configs" / ("quickstart.yaml" if method == "simclr" else f"{method}-fashion-mnist.yaml")
    return load_config(base, [f"seed={seed}", f"trainer.precision={precision}", "trainer.accelerator=cpu",
                              *EXTRA.get(method, []), *extra])


# --------------------------------------------------------------------------- speed


def speed(name: str, method: str, extra: list[str], windows: int, per_window: int) -> dict[str, Any]:
    """Median step time of 32-true and bf16-mixed, measured in alternating windows of one process."""
    loops = {p: training_loop(config(method, 0, p, extra))[2] for p in ("32-true", "bf16-mixed")}
    for loop in loops.values():  # warm-up: allocators, oneDNN primitives
        for _ in range(2):
            next(loop)
    times: dict[str, list[float]] = {p: [] for p in loops}
    for w in range(windows):
        for p in (list(loops) if w % 2 == 0 else list(loops)[::-1]):
            t = time.perf_counter()
            for _ in range(per_window):
                next(loops[p])
            times[p].append((time.perf_counter() - t) / per_window)
    t32, t16 = statistics.median(times["32-true"]), statistics.median(times["bf16-mixed"])
    return {"workload": name, "float32_step_s": round(t32, 4), "bf16_step_s": round(t16, 4),
            "bf16_speedup": round(t32 / t16, 3), "windows": windows, "steps_per_window": per_window}


# --------------------------------------------------------------------------- stability


def padding_only_taps(conv: nn.Conv2d, height: int, width: int) -> Tensor:
    """The filter taps of ``conv`` that meet only zero padding at every output position of a
    ``height`` x ``width`` input, ``[kh, kw]`` bool: their true gradient is exactly zero (at
    16 px, every tap but the centre of a ResNet's layer4.0.conv1, whose input is 1x1)."""

    def axis(n: int, k: int, s: int, p: int, d: int) -> Tensor:
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        return torch.tensor([not any(0 <= o * s + j * d - p < n for o in range(out)) for j in range(k)])

    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return axis(height, kh, sh, ph, dh)[:, None] | axis(width, kw, sw, pw, dw)[None, :]  # [kh, kw]


def stability(method: str, seed: int, precision: str, steps: int, onednn: bool = True) -> dict[str, Any]:
    """``steps`` optimiser steps on digits. Counts the steps whose loss or a gradient is not
    finite (those steps are skipped, as a GradScaler would) naming the first parameter hit, and
    the steps where a convolution's gradient is silently wrong: not zero on a tap that meets
    only zero padding (:func:`padding_only_taps`)."""
    cfg = config(method, seed, precision, DIGITS)
    torch.manual_seed(seed)
    ds = subset(build_dataset(cfg.data, "train"), cfg.data.subset, seed)
    module = PretrainModule(cfg, ds.info())
    method_ = module.method
    opt = build_optimizer(cfg.optim, method_, cfg.data.batch_size)
    loader = make_loader(ds, cfg.data.batch_size, train=True, seed=seed, with_indices=method_.needs_indices)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed")
    masks: dict[str, tuple[nn.Conv2d, Tensor]] = {}  # convolutions with padding-only taps

    def record(name: str) -> Any:
        def hook(conv: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name not in masks and not isinstance(conv.padding, str):
                mask = padding_only_taps(conv, *inputs[0].shape[-2:])
                if mask.any():
                    masks[name] = (conv, mask)
        return hook

    for name, conv in method_.named_modules():
        if isinstance(conv, nn.Conv2d):
            conv.register_forward_hook(record(name))
    bad: list[tuple[int, str]] = []
    wrong: list[tuple[int, str, float]] = []
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for step, batch in zip(range(steps), batches):
        opt.zero_grad(set_to_none=True)
        with torch.backends.mkldnn.flags(enabled=onednn):
            with autocast:
                out = method_.step(batch[0], batch[1], batch[2] if len(batch) > 2 else None)
            if not torch.isfinite(out["loss"]):
                bad.append((step, "loss"))
                continue
            out["loss"].backward()
        junk = [(name, float(conv.weight.grad[:, :, mask].abs().max().nan_to_num(float("inf"))))
                for name, (conv, mask) in masks.items()
                if conv.weight.grad is not None and bool(conv.weight.grad[:, :, mask].ne(0).any())]
        if junk:
            wrong.append((step, f"{junk[0][0]}.weight", junk[0][1]))
        name = first_non_finite_grad(method_.named_parameters())
        if name is not None:
            bad.append((step, name))
            continue
        opt.step()
        method_.on_train_step_end(step, steps)
    arm = precision + ("" if onednn or precision == "32-true" else ", oneDNN off")
    return {"method": method, "seed": seed, "arm": arm, "steps": steps, "non_finite_steps": len(bad),
            "first": {"step": bad[0][0], "where": bad[0][1]} if bad else None,
            "wrong_gradient_steps": len(wrong),
            "first_wrong": {"step": wrong[0][0], "where": wrong[0][1], "max_abs": finite_or_text(wrong[0][2])}
            if wrong else None, "worst_wrong_abs": finite_or_text(max((w[2] for w in wrong), default=0.0))}


def finite_or_text(x: float) -> float | str:
    """JSON has no NaN or inf: those become the text "nan/inf"."""
    return x if math.isfinite(x) else "nan/inf"


def number(x: float | str) -> str:
    return x if isinstance(x, str) else f"{x:.3g}"


# --------------------------------------------------------------------------- the convolution


def conv_check(seeds: int = 8) -> list[dict[str, Any]]:
    """Relative error of the bf16 weight gradient of single convolutions (input [32, 32, H, W],
    64 filters) against float64, oneDNN on and off, worst over ``seeds`` draws."""
    cases = [("layer4.0.conv1 at 16 px: 3x3, stride 2, pad 1, input 1x1", 1, 1, 3, 2, 1),
             ("3x3, stride 2, pad 1, input 4 high x 1 wide", 4, 1, 3, 2, 1),
             ("3x3, stride 3, pad 1, input 2x2", 2, 2, 3, 3, 1),
             ("control: 3x3, stride 2, pad 1, input 2x2", 2, 2, 3, 2, 1),
             ("control: 3x3, stride 1, pad 1, input 1x1", 1, 1, 3, 1, 1)]
    rows = []
    for label, h, w, k, s, p in cases:
        row: dict[str, Any] = {"convolution": label}
        for onednn in (True, False):
            worst = 0.0
            for seed in range(seeds):
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(32, 32, h, w, generator=g).bfloat16()  # [N, C, H, W]
                wt = (0.1 * torch.randn(64, 32, k, k, generator=g)).bfloat16()  # [O, C, k, k]
                gy = torch.randn(torch.nn.functional.conv2d(x.float(), wt.float(), stride=s, padding=p).shape,
                                 generator=g).bfloat16()  # [N, O, H', W']
                args = ([s, s], [p, p], [1, 1], False, [0, 0], 1, [False, True, False])
                with torch.backends.mkldnn.flags(enabled=onednn):
                    gw = torch.ops.aten.convolution_backward(gy, x, wt, None, *args)[1]
                ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), wt.double(), None, *args)[1]
                err = float((gw.double() - ref).abs().max() / ref.abs().max())
                worst = max(worst, float("inf") if err != err else err)  # NaN counts as inf
            row["oneDNN on" if onednn else "oneDNN off"] = finite_or_text(worst)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


def markdown(res: dict[str, Any]) -> str:
    cpu = res["cpu"]
    lines = ["# bf16 autocast vs float32 on the CPU\n",
             f"CPU: {cpu['model']} (avx512_bf16: {cpu['avx512_bf16']}, amx_bf16: {cpu['amx_bf16']}), "
             f"torch threads: {cpu['threads']}, torch {cpu['torch']}, oneDNN {cpu['onednn']}. "
             f"Written by `python benchmarks/precision.py`.\n",
             "## Speed (median step time, alternating windows in one process)\n",
             "| workload | float32 s/step | bf16 s/step | bf16 speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {r['workload']} | {r['float32_step_s']} | {r['bf16_step_s']} | {r['bf16_speedup']}x |"
              for r in res["speed"]]
    lines += ["", f"## Stability ({res['stability'][0]['steps']} steps per run, digits 16 px, slim resnet18, "
              "batch 64)\n",
              "Non-finite: the loss or a gradient is NaN/inf (the step is skipped). Wrong: a convolution's gradient "
              "is not zero on a filter tap that meets only zero padding (exactly zero by arithmetic), a silent "
              "error that reaches the weights.\n",
              "| method | arm | runs with a non-finite step | non-finite steps | steps with a wrong gradient | "
              "first non-finite (seed, step: where) | first wrong (seed, step: where) | largest wrong value |",
              "|---|---|---:|---:|---:|---|---|---:|"]
    for (method, arm), runs in itertools.groupby(res["stability"], key=lambda r: (r["method"], r["arm"])):
        runs = list(runs)
        first = next((r for r in runs if r["first"]), None)
        bad = next((r for r in runs if r["first_wrong"]), None)
        first_s = f"seed {first['seed']}, step {first['first']['step']}: {first['first']['where']}" if first else "-"
        bad_s = f"seed {bad['seed']}, step {bad['first_wrong']['step']}: {bad['first_wrong']['where']}" if bad else "-"
        worst = max((float("inf") if isinstance(r["worst_wrong_abs"], str) else r["worst_wrong_abs"]) for r in runs)
        lines.append(f"| {method} | {arm} | {sum(r['non_finite_steps'] > 0 for r in runs)} of {len(runs)} | "
                     f"{sum(r['non_finite_steps'] for r in runs)} | {sum(r['wrong_gradient_steps'] for r in runs)} of "
                     f"{sum(r['steps'] for r in runs)} | {first_s} | {bad_s} | "
                     f"{number(finite_or_text(worst))} |")
    lines += ["", "## The convolution alone (bf16 weight gradient vs float64, worst relative error)\n",
              "| convolution | oneDNN on | oneDNN off |", "|---|---:|---:|"]
    lines += [f"| {r['convolution']} | {number(r['oneDNN on'])} | {number(r['oneDNN off'])} |"
              for r in res["conv_check"]]
    lines += ["", "## Verdict\n", res["verdict"], "",
              "Measured before on an Intel Xeon with AVX512-BF16 and AMX (the project design notes, DESIGN.md, "
              "2026-11-30): the quickstart's SimCLR step at 1.02x under bf16 autocast, with intermittent non-finite gradients "
              "(issue 13: NPID on digits at 16 px, encoder.layer4.0.conv1.weight at step 0, 5 or 10).", ""]
    return "\n".join(lines)


def verdict(res: dict[str, Any]) -> str:
    fastest = max(r["bf16_speedup"] for r in res["speed"])
    runs = [r for r in res["stability"] if r["arm"] == "bf16-mixed"]
    unstable = sum(r["non_finite_steps"] > 0 or r["wrong_gradient_steps"] > 0 for r in runs)
    good = fastest > 1.0 and unstable == 0
    return (f"bf16-mixed: best speed-up {fastest}x; {unstable} of {len(runs)} runs with a non-finite or wrong "
            f"gradient. " + ("bf16 is both stable and faster here." if good else
                             "bf16 is not both stable and faster here: `trainer.precision: auto` picks 32-true on "
                             "CPUs."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="optimiser steps per stability run")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="npid,simclr,moco,mocov3,rotation")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per precision")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default). 1 by default: on a shared machine two OpenMP threads "
                         "made steps up to 70x slower (spin-waits), which drowns the ratio being measured")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=PrecisionWarning)  # bf16-mixed on a CPU is asked for on purpose
    seeds = [int(s) for s in args.seeds.split(",")]
    res: dict[str, Any] = {"cpu": cpu_info()}
    res["speed"] = [speed("SimCLR quickstart, Fashion-MNIST 28 px, batch 256", "simclr", ["data.subset=4096"],
                          args.windows, 2),
                    speed("NPID, digits 16 px, batch 64", "npid", DIGITS, args.windows, 5)]
    print(json.dumps(res["speed"]), file=sys.stderr, flush=True)
    res["stability"] = []
    for m in args.methods.split(","):
        for p, onednn in (("32-true", True), ("bf16-mixed", True), ("bf16-mixed", False)):
            for s in seeds if onednn else seeds[:1]:  # the control without oneDNN: one seed
                res["stability"].append(stability(m, s, p, args.steps, onednn))
                print(json.dumps(res["stability"][-1]), file=sys.stderr, flush=True)
    res["conv_check"] = conv_check()
    res["verdict"] = verdict(res)
    print(json.dumps(res, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(res, args.out / "precision.json")
    write_text(markdown(res), args.out / "precision.md")


if __name__ == "__main__":
    main()
