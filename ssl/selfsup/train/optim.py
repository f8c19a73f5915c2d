"""Optimisers (from timm) with no weight decay on norms and biases, and a per-step
cosine schedule after linear warmup (Loshchilov & Hutter 2017; Goyal et al. 2017)."""

from __future__ import annotations

import math

import timm.optim
import torch
from torch import nn

from selfsup.config import OptimConfig
from selfsup.schedules import cosine_factors, warmup_steps  # noqa: F401 - used below; tests import it from here too


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Peak learning rate for ``global_batch``: ``lr`` is quoted at batch size 256."""
    ratio = global_batch / 256
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]


def check_scaled_lr(cfg: OptimConfig, global_batch: int | None) -> None:
    """ConfigError (one line) when the peak learning rate at ``global_batch`` (:func:`scaled_lr`) is a number
    float32 cannot hold: ``optim.lr`` is checked when the config loads, before the scaling, so 1.4e-45 at
    batch 64 (x 0.25) became 0, a run that trains nothing. None: the batch is not known yet (``devices: auto``)."""
    from selfsup.config import ConfigError
    from selfsup.configread import fits_float32

    if global_batch is None:
        return
    lr = scaled_lr(cfg, global_batch)
    if not fits_float32(lr):
        small = abs(lr) < 1
        raise ConfigError(f"optim.lr={cfg.lr:g} scaled to the global batch of {global_batch} ({cfg.lr_scaling} "
                          f"scaling from 256) is {lr:g}, which float32 "
                          + ("rounds to 0: the run would train nothing; raise optim.lr" if small else
                             "cannot hold: the first step would overflow; lower optim.lr")
                          + ", or set optim.lr_scaling=none")


def build_optimizer(cfg: OptimConfig, model: nn.Module, global_batch: int,
                    extra_groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """SGD (momentum), LARS (You et al. 2017; norms and biases neither decayed nor
    adapted, as in SimCLR) or AdamW. ``extra_groups`` carry their own lr (the online probe)."""
    lr = scaled_lr(cfg, global_batch)
    groups = timm.optim.param_groups_weight_decay(model, cfg.weight_decay)
    for g in groups:
        g["lr"] = lr
    groups += extra_groups or []
    kwargs = {"momentum": cfg.momentum} if cfg.name in ("sgd", "lars") else {}
    return timm.optim.create_optimizer_v2(groups, opt=cfg.name, lr=lr, weight_decay=cfg.weight_decay, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = warmup_steps(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    factors = cosine_factors(total_steps, warmup, cfg.min_lr_ratio).tolist()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factors[min(s, total_steps)])


def step_overflowed(err: BaseException) -> bool:
    """Whether ``err`` is torch refusing an optimiser's float32 step size: Adam's step is
    ``lr / (1 - beta1^t)`` (10 lr at the first step), so a learning rate float32 holds (3e38) can
    still give a step it cannot ("value cannot be converted to type float without overflow")."""
    return isinstance(err, RuntimeError) and "without overflow" in str(err)


def max_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest learning rate of ``optimizer``'s parameter groups at this step."""
    return max(float(g["lr"]) for g in optimizer.param_groups)
