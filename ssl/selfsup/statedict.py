"""Comparing a state dict with the one a model expects: names, shapes and values, for one-line errors.

Bottom layer: imports only ``selfsup.safeload`` (for :func:`~selfsup.safeload.first_names`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.safeload import first_names

Shape = tuple[int, ...]


@dataclass(frozen=True)
class StateMismatch:
    """How a state dict differs from the one a model expects."""

    missing: list[str]  # the model's tensors that the file lacks
    unexpected: list[str]  # the file's tensors that the model does not have
    shapes: list[tuple[str, Shape, Shape]]  # (name, shape in the file, shape in the model)
    n_expected: int = 0  # how many tensors the model has
    n_found: int = 0  # how many tensors the file has

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def tensor_shapes(state: Mapping[str, Tensor]) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in state.items()}


def compare_state(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> StateMismatch:
    """Names and shapes of state dict ``found`` (a file) against ``expected`` (a model's)."""
    want, got = tensor_shapes(expected), tensor_shapes(found)
    return StateMismatch(missing=[k for k in want if k not in got],
                         unexpected=[k for k in got if k not in want],
                         shapes=[(k, got[k], s) for k, s in want.items() if k in got and got[k] != s],
                         n_expected=len(want), n_found=len(got))


def _prefix_hint(m: StateMismatch) -> str:
    """Names a prefix that the file's keys carry where the model's have none (e.g. 'encoder.')."""
    missing = set(m.missing)
    for head in sorted({k.split(".", 1)[0] for k in m.unexpected if "." in k}):
        hits = sum(k.split(".", 1)[1] in missing for k in m.unexpected if k.startswith(head + "."))
        if missing and hits >= len(missing) / 2:
            return (f"; the file's names carry a {head + '.'!r} prefix: it is the state of a model that contains the "
                    f"encoder, not the encoder's own")
    return ""


def describe_mismatch(m: StateMismatch) -> str:
    """Counts and a few names of each kind of difference."""
    parts = []
    if m.missing:
        parts.append(f"{len(m.missing)} of the model's {m.n_expected} tensors are missing from the file "
                     f"(e.g. {first_names(m.missing)})")
    if m.unexpected:
        parts.append(f"{len(m.unexpected)} of the file's {m.n_found} tensors are not in the model "
                     f"(e.g. {first_names(m.unexpected)})")
    if m.shapes:
        shown = ", ".join(f"{k!r}: file {list(f)} vs model {list(e)}" for k, f, e in m.shapes[:2])
        parts.append(f"{len(m.shapes)} have another shape (e.g. {shown})")
    return "; ".join(parts) + _prefix_hint(m)


def file_in_chans(m: StateMismatch, first_conv: str | None) -> int | None:
    """The file's input channels when the stem conv's input channels are the only difference."""
    if m.missing or m.unexpected or len(m.shapes) != 1 or not isinstance(first_conv, str):
        return None
    name, found, expected = m.shapes[0]
    if name != f"{first_conv}.weight" or len(found) != len(expected) or len(found) < 2:
        return None
    return found[1] if found[:1] + found[2:] == expected[:1] + expected[2:] else None


def tensor_faults(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str | None:
    """What is wrong with the values of ``found`` (whose names and shapes fit ``expected``): a float
    tensor where the model has an integer one or the reverse, or NaN / infinite values; None if nothing."""
    kinds = [k for k, v in found.items() if k in expected and v.is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        k = kinds[0]
        return (f"{len(kinds)} tensors hold another kind of number than the model's (e.g. {k!r}: file "
                f"{found[k].dtype} vs model {expected[k].dtype})")
    bad = [k for k, v in found.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        return f"{len(bad)} of its {len(found)} tensors hold NaN or infinite values (e.g. {first_names(bad)})"
    return None
