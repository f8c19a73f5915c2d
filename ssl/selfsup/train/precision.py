"""``trainer.precision="auto"`` and the measured reason it is float32 on CPUs."""

from __future__ import annotations

from typing import Callable

import torch


class PrecisionWarning(UserWarning):
    """A precision that works but is known to be slower or less stable on this device."""


# Measured by benchmarks/precision.py (benchmarks/results/precision.md): under bf16 autocast,
# oneDNN's bf16 convolution weight-gradient (jit_bf16:avx512_core, oneDNN 3.12) returns garbage,
# at times NaN/inf, for the filter taps of a strided convolution whose input is narrower than its
# stride (a ResNet's layer4.0.conv1 on 1-pixel maps at 16 px: wrong in 283 of 300 steps over five
# methods, NaN in 2 of 300 in another run); and bf16 is not faster (speed-up by CPU kind below).
CPU_BF16_CAVEAT = ("oneDNN's bf16 convolution weight-gradient returns garbage, at times NaN/inf, when a strided "
                   "convolution's input is narrower than its stride (e.g. a ResNet's layer4 at 16 px), and bf16 "
                   "steps measured {speed}; trainer.precision=32-true (what auto picks on CPUs) avoids both")
CPU_BF16_SPEED = {True: "1.02x the float32 rate on a Xeon with AMX",
                  False: "0.6-0.85x the float32 rate on a CPU without AVX512-BF16/AMX (emulated)"}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, accelerator: str = "auto",
                      warn: Callable[[str], None] | None = None) -> str:
    """``trainer.precision`` for Lightning.

    "auto" is bf16-mixed on GPUs that support bf16 (Ampere and later), 16-mixed (fp16 with
    loss scaling) on older GPUs, and 32-true on CPUs, with or without native bf16: there
    bf16 autocast was measured no faster and not stable (:data:`CPU_BF16_CAVEAT`). Any other
    value is passed through; a bf16 precision on a CPU is honoured with a one-line warning
    (``warn``, default :func:`warnings.warn` with a :class:`PrecisionWarning`)."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision == "auto":
        if on_gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not on_gpu and not torch.backends.mps.is_available())
    if on_cpu and precision.startswith("bf16"):
        message = (f"trainer.precision={precision} on a CPU: "
                   f"{CPU_BF16_CAVEAT.format(speed=CPU_BF16_SPEED[cpu_has_bf16()])}")
        if warn is None:
            import warnings

            warnings.warn(message, PrecisionWarning, stacklevel=2)
        else:
            warn(message)
    return precision
