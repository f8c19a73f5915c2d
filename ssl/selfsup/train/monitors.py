"""A Lightning callback that logs label-free quality signals during pretraining.

Every ``trainer.monitor_every_n_steps`` optimiser steps, on a held batch (the first training
batch's images, at most ``trainer.monitor_images``), with the encoder in eval mode and no
gradients: RankMe of the clean images' features, their uniformity, and for two-view methods
the alignment of two augmented views (:mod:`selfsup.monitors`; Garrido et al. 2023; Wang &
Isola 2020). Logged as ``monitor/rankme``, ``monitor/uniformity``, ``monitor/alignment``;
a collapse (RankMe below 1% of the width) is logged once as a warning. The cost is one
forward pass of a few hundred images every N steps (stable-pretraining logs such monitors as
callbacks too).
"""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor

from selfsup.monitors import alignment, collapse_warning, rankme, uniformity


class LabelFreeMonitor(L.Callback):
    """See the module docstring. ``log``: where the collapse warning goes (kept as ``self.say``:
    Lightning replaces every callback's ``log`` attribute with the LightningModule's ``log``)."""

    def __init__(self, every_n_steps: int, images: int = 256, log: Callable[[str], None] = print) -> None:
        self.every_n_steps, self.images, self.say = every_n_steps, images, log
        self.held: Tensor | None = None  # [N, C, H, W] raw images of the first batch
        self.warned = False

    @torch.no_grad()
    def measure(self, module: Any) -> dict[str, float]:
        """The signals on the held batch for ``module`` (a PretrainModule)."""
        method, encoder = module.method, module.method.encoder
        was_training = encoder.training
        encoder.eval()
        try:
            x = self.held.to(module.device)
            z = encoder(module.clean(x)).float()  # [N, D]
            out = {"rankme": rankme(z), "uniformity": uniformity(z)}
            views = method.view_augments()
            if len(views) == 2:
                out["alignment"] = alignment(encoder(views[0](x)).float(), encoder(views[1](x)).float())
        finally:
            encoder.train(was_training)
        return out

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.held is None:
            self.held = batch[0][:self.images].detach().clone()
        if self.held.shape[0] < 2 or trainer.global_step % self.every_n_steps != 0:
            return
        signals = self.measure(pl_module)
        if trainer.is_global_zero:  # straight to the loggers: self.log would thin them to log_every_n_steps
            for logger in trainer.loggers:
                logger.log_metrics({f"monitor/{k}": v for k, v in signals.items()}, step=trainer.global_step)
        warning = collapse_warning(signals["rankme"], pl_module.method.num_features, rows=self.held.shape[0])
        if warning and not self.warned and trainer.is_global_zero:
            self.warned = True
            self.say(f"[monitor] step {trainer.global_step}: {warning}")
