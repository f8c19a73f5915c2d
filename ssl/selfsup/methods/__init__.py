"""Self-supervised methods: one file each, registered by name.

Every module in this package is imported here, so adding a method is adding a file
that decorates its class with ``@METHODS.register("name")``. Modules whose name starts
with an underscore hold building blocks shared by several methods and are skipped.
"""

from __future__ import annotations

import importlib
import pkgutil

from selfsup.methods.base import METHODS, Method

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["METHODS", "Method"]
