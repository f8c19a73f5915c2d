"""selfsup: self-supervised representation learning on timm encoders."""

from __future__ import annotations

__version__ = "0.1.0"


def load_encoder(path):  # noqa: ANN001, ANN201 - re-exported lazily to keep `import selfsup` light
    """An encoder from an export directory, a run directory or a checkpoint (see selfsup.export)."""
    from selfsup.export import load_encoder as _load

    return _load(path)


__all__ = ["__version__", "load_encoder"]
