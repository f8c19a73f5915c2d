"""Objectives: pure nn.Modules with no config."""

from selfsup.losses.infonce import NTXent, LossOutput

__all__ = ["NTXent", "LossOutput"]
