"""One small registry used for methods, datasets and anything else selected by name."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Raised when a name is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``name`` (difflib ratio >= 0.6), or None."""
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


class Registry(Generic[T]):
    """Maps names to objects (classes or builder functions).

    >>> METHODS = Registry("method")
    >>> @METHODS.register("simclr")
    ... class SimCLR: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            hint = closest(name, self.names())
            did_you_mean = f" did you mean {hint!r}?" if hint else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}:{did_you_mean} "
                f"Registered {self.kind}s: {', '.join(self.names())}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
