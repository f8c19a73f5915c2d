"""Self-supervised methods: one file each, registered by name.

Every module in this package is imported here, so adding a method is adding a file
that decorates its class with ``@METHODS.register("name")``.
"""

from __future__ import annotations

import importlib
import pkgutil

from selfsup.methods.base import METHODS, Method

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["METHODS", "Method"]
