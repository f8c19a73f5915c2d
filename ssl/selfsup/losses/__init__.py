"""Objectives: pure nn.Modules with no config."""

from selfsup.losses.infonce import (InfoNCE, LossOutput, NTXent, cross_entropy_bound, full_precision, mi_lower_bound,
                                    no_autocast)
from selfsup.losses.memory import MemoryBank, Queue
from selfsup.losses.mi_bounds import BOUNDS, Bound, ConcatCritic, SeparableCritic
from selfsup.losses.nce import NCE, NCEOutput, nce_loss

__all__ = ["NonFiniteLossError", "InfoNCE", "LossOutput", "NTXent", "cross_entropy_bound", "full_precision",
           "mi_lower_bound", "no_autocast", "MemoryBank", "Queue", "NCE", "NCEOutput", "nce_loss", "BOUNDS", "Bound",
           "ConcatCritic", "SeparableCritic"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the step, the terms and the last good checkpoint."""
