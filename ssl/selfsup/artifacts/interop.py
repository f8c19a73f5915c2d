"""Interop formats: the encoder as TorchScript and ONNX, each checked against the timm encoder before it is
written (the torchvision conversion is :mod:`selfsup.artifacts.torchvision`).

Every interop file maps normalised images ``[B, C, H, W]`` (the card's ``input_size``) to the
pooled features ``[B, num_features]`` of the timm encoder. Before it is written, each one is run on
a batch of another size than the one it was traced with and compared with the timm encoder:
``max |exported - timm| <= FEATURE_RTOL * max(1, max |timm|)``, else nothing is written.

TorchScript and the TorchScript-based ONNX exporter are deprecated upstream (torch >= 2.9 warns).
selfsup uses them on purpose: they need no extra compiler stack (the ``torch.export``-based ONNX
exporter needs onnxscript and takes ~30x longer on a ResNet), and every output is checked
numerically. Their deprecation warnings are silenced inside these calls only.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.fileio import write_bytes
from selfsup.safeload import ExportError, first_line

FORMATS = ("safetensors", "torchscript", "onnx", "torchvision")
FORMAT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx",
                "torchvision": "model.torchvision.safetensors"}
ONNX_OPSET = 17  # run by onnxruntime >= 1.11 and most other ONNX runtimes
ONNX_INPUT, ONNX_OUTPUT = "images", "features"
# float32 reassociation (fused conv + BN, other kernels) moves features by ~1e-6 relative; a wrong
# mapping moves them by O(1). The bound sits between, relative to the features' scale.
FEATURE_RTOL = 1e-4
TRACE_BATCH, CHECK_BATCH = 2, 3  # checked on another batch size than traced: the batch axis is dynamic


def onnx_installed() -> bool:
    return importlib.util.find_spec("onnx") is not None


def example_input(card: Mapping[str, Any], batch: int, seed: int = 0) -> Tensor:
    """Normal noise shaped like a batch of normalised images: ``[batch, C, H, W]``."""
    return torch.randn(batch, *card["input_size"], generator=torch.Generator().manual_seed(seed))


def check_features(fmt: str, ref: Tensor, out: Tensor) -> dict[str, float]:
    """``max |out - ref|`` and its bound ``FEATURE_RTOL * max(1, max |ref|)``; an ExportError beyond it."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ExportError(f"the {fmt} export gives features of shape {list(out.shape)}, the timm encoder "
                          f"{list(ref.shape)}; nothing was written")
    diff = (out.float() - ref.float()).abs().max().item()  # [B, D] -> scalar
    tol = FEATURE_RTOL * max(1.0, ref.abs().max().item())
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"the {fmt} export's features differ from the timm encoder's by up to {diff:.3g} "
                          f"(allowed {tol:.3g}); nothing was written")
    return {"max_abs_diff": diff, "tolerance": tol}


def compare_features(fmt: str, encoder: nn.Module, run: Callable[[Tensor], Tensor],
             card: Mapping[str, Any]) -> dict[str, float]:
    x = example_input(card, CHECK_BATCH, seed=1)  # [CHECK_BATCH, C, H, W]
    with torch.no_grad():
        return check_features(fmt, encoder(x), run(x))  # [CHECK_BATCH, D] each


@contextmanager
def _upstream_deprecations_silenced() -> Iterator[None]:
    """torch >= 2.9 deprecates TorchScript and the TorchScript-based ONNX exporter (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        yield


def write_torchscript(encoder: nn.Module, card: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``torch.jit.trace`` of the encoder (eval mode) at ``path``; returns the card's record of it."""
    try:
        with _upstream_deprecations_silenced(), torch.no_grad():
            traced = torch.jit.trace(encoder, example_input(card, TRACE_BATCH), check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            data = buf.getvalue()
            reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as err:  # a model that cannot be traced: say so in one line
        raise ExportError(f"cannot trace {card['architecture']!r} to TorchScript: {first_line(err)}") from None
    record = compare_features("torchscript", encoder, reloaded, card)
    write_bytes(data, path)
    return {"file": path.name, "how": f"torch.jit.trace in eval mode on a batch of {TRACE_BATCH}",
            "checked_with": f"torch.jit.load (torch {torch.__version__}) on a batch of {CHECK_BATCH}", **record}


def _onnxruntime_runner(data: bytes) -> tuple[Callable[[Tensor], Tensor], str] | None:
    """Features from the ONNX model ``data`` run by onnxruntime, or None when it is not installed."""
    try:  # lazy: onnxruntime is an optional dependency (selfsup[onnx])
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, D]
        return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])

    return run, f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"


def write_onnx(encoder: nn.Module, card: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The encoder as ONNX (opset ONNX_OPSET, batch axis dynamic) at ``path``; checked with onnxruntime
    when it is installed. Returns the card's record of it."""
    buf = io.BytesIO()
    try:
        with _upstream_deprecations_silenced(), torch.no_grad():
            torch.onnx.export(encoder, (example_input(card, TRACE_BATCH),), buf, dynamo=False,
                              opset_version=ONNX_OPSET, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}})
    except Exception as err:
        raise ExportError(f"cannot export {card['architecture']!r} to ONNX: {first_line(err)}") from None
    data = buf.getvalue()
    c, h, w = card["input_size"]
    record: dict[str, Any] = {
        "file": path.name, "opset": ONNX_OPSET, "exporter": "torch.onnx.export(dynamo=False), TorchScript-based",
        "input": f"{ONNX_INPUT}: float32 [batch, {c}, {h}, {w}], normalised",
        "output": f"{ONNX_OUTPUT}: float32 [batch, {card['num_features']}]"}
    runner = _onnxruntime_runner(data)
    if runner is None:
        record.update(checked_with=None, note="not checked: onnxruntime is not installed (pip install 'selfsup[onnx]')")
    else:
        run, engine = runner
        record.update(compare_features("onnx", encoder, run, card),
                      checked_with=f"{engine} on a batch of {CHECK_BATCH}")
    write_bytes(data, path)
    return record
