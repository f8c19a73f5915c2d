"""selfsup's version (bottom layer: every module may import it; ``selfsup.__version__`` re-exports it)."""

__version__ = "0.1.0"
