"""Progress bars (tqdm) for the long steps outside Lightning's training loop: feature extraction,
the kNN search over query chunks, the linear-probe grid and seeds, the decoded-image cache build.

A bar is drawn on stderr only where someone watches it: stderr is a terminal, this is rank 0 of a
distributed run, and ``SELFSUP_QUIET`` is unset (``selfsup --quiet`` sets it). Otherwise the
iterable is returned as it is, so logs and CI output stay free of bar redraws.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from selfsup import distributed

QUIET_ENV = "SELFSUP_QUIET"
T = TypeVar("T")


def enabled() -> bool:
    """Whether bars are drawn (see the module docstring)."""
    quiet = os.environ.get(QUIET_ENV, "") not in ("", "0")
    return not quiet and distributed.rank() == 0 and bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar labelled ``desc`` when :func:`enabled`, else unchanged.
    The bar is removed when the loop ends (the log line after it says what was done)."""
    return _bar(iterable, desc, total, unit) if enabled() else iterable


def _bar(iterable: Iterable[T] | None, desc: str, total: int | None, unit: str) -> Any:
    """A tqdm bar on stderr, removed when done (tqdm is installed with Lightning; imported only to draw)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)


class Bar:
    """A bar advanced by hand (``update(n)``) for loops whose unit is not the iterable's item, e.g.
    probe steps over several epochs. A no-op when :func:`enabled` is False. ``close()`` (or a ``with``
    block) removes it."""

    def __init__(self, desc: str, total: int, unit: str = "it") -> None:
        self._bar: Any = _bar(None, desc, total, unit) if enabled() else None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

