"""One small registry used for methods, datasets and anything else selected by name."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Raised when a name is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


def close_matches(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates close to ``name`` (difflib ratio >= 0.6), closest first."""
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``name`` (difflib ratio >= 0.6), or None."""
    found = close_matches(name, candidates, n=1)
    return found[0] if found else None


class Registry(Generic[T]):
    """Maps names to objects (classes or builder functions).

    >>> METHODS = Registry("method")
    >>> @METHODS.register("simclr")
    ... class SimCLR: ...

    ``on_register(name, obj)`` runs as each entry is registered (the method registry fills the
    config layer's registry of method config classes with it). A registry filled from a layer
    above its own module's is given a loader by that layer (:meth:`set_loader`): the lookups
    then work before anything imported the entries' modules.
    """

    def __init__(self, kind: str, on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._on_register = on_register
        self._load: Callable[[], object] | None = None

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            if self._on_register is not None:
                self._on_register(name, obj)
            return obj

        return deco

    def set_loader(self, load: Callable[[], object]) -> None:
        """``load()`` registers the entries (imports the modules that register them); it runs once,
        at the first :meth:`get`, :meth:`names` or ``in``."""
        self._load = load

    def _loaded(self) -> dict[str, T]:
        load, self._load = self._load, None  # once: the modules it imports may look entries up
        if load is not None:
            load()
        return self._items

    def get(self, name: str) -> T:
        if name not in self._loaded():
            hint = closest(name, self.names())
            did_you_mean = f" did you mean {hint!r}?" if hint else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}:{did_you_mean} "
                f"Registered {self.kind}s: {', '.join(self.names())}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._loaded())

    def __contains__(self, name: str) -> bool:
        return name in self._loaded()
