"""How many optimiser steps a run takes, refused before anything is written when it is none."""

from __future__ import annotations

import dataclasses
import math

from selfsup.config import ConfigError


class NoStepsError(RuntimeError):
    """A run that ended without taking one optimiser step; nothing was exported."""




@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What one training epoch is, per process: its batches (after
    ``trainer.limit_train_batches``), the optimiser steps they make, and the images left out."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    dropped_per_epoch: int  # the incomplete last (global) batch of each shuffled epoch (drop_last)
    limited_per_epoch: int  # images of the batches trainer.limit_train_batches leaves out


def check_trainable(batch_size: int, max_steps: int) -> None:
    """Settings that take no optimiser step whatever the data: ConfigError (one line)."""
    if batch_size < 2:
        raise ConfigError(f"data.batch_size={batch_size}: a training batch needs at least 2 images "
                          f"(BatchNorm statistics, contrastive pairs; smaller batches are skipped), so this run "
                          f"would train nothing; use data.batch_size >= 2")
    if max_steps == 0:
        raise ConfigError("trainer.max_steps=0 takes no optimiser step (like trainer.max_epochs=0): give a positive "
                          "number of steps, or -1 to let trainer.max_epochs decide")


def plan_steps(n_images: int, batch_size: int, world_size: int, limit_train_batches: int | float,
               accumulate: int, max_epochs: int, max_steps: int) -> StepPlan:
    """The optimiser steps a run takes, computed as the loader (:func:`selfsup.data.make_loader`,
    :class:`selfsup.data.EpochShuffle`) and Lightning will batch it: one process drops the
    incomplete last batch unless the data is smaller than one batch (then one short batch);
    several processes drop the incomplete last global batch of ``batch_size x world_size``.

    Raises:
        ConfigError: (one line, naming why) when the run would take no optimiser step.
    """
    check_trainable(batch_size, max_steps)
    per_batch = batch_size * world_size
    if world_size == 1 and 0 < n_images < batch_size:  # drop_last is off: one short batch
        if n_images < 2:
            raise ConfigError(f"{n_images} training image: a training batch needs at least 2 images; "
                              f"use more data (data.subset, data.root)")
        batches, dropped, per_batch = 1, 0, n_images
    else:
        batches, dropped = n_images // per_batch, n_images % per_batch
        if batches == 0:
            raise ConfigError(f"{n_images} training images are fewer than one global batch (data.batch_size "
                              f"{batch_size} x {world_size} processes): no optimiser step; lower data.batch_size")
    limit = limit_train_batches
    limited = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if limited == 0:
        raise ConfigError(f"trainer.limit_train_batches={limit} of {batches} batch(es) per epoch is 0 batches: "
                          f"no optimiser step; use at least {1 / batches:.3g} or a whole number of batches")
    steps = math.ceil(limited / accumulate)  # Lightning steps at the last batch of an epoch too
    total = steps * max_epochs if max_steps < 0 else min(steps * max_epochs, max_steps)
    return StepPlan(limited, steps, total, dropped, (batches - limited) * per_batch)


def describe_plan(plan: StepPlan, batch_size: int, world_size: int) -> str:
    """The plan as the run's log says it."""
    per = f"{batch_size} x {world_size} processes" if world_size > 1 else f"{batch_size}"
    text = (f"{plan.batches_per_epoch} batches of {per} per epoch, {plan.dropped_per_epoch} image(s) of each "
            f"epoch dropped by batching (drop_last)")
    if plan.limited_per_epoch:
        text += f", {plan.limited_per_epoch} left out by trainer.limit_train_batches"
    return text + f"; {plan.total_steps} optimiser step{'' if plan.total_steps == 1 else 's'}"


def no_steps_message(skipped: int, removed: bool) -> str:
    """Why a run trained nothing (``skipped``: its batches of fewer than 2 images;
    ``removed``: its checkpoints, the untrained initial weights, were deleted)."""
    why = (f"all {skipped} batch(es) had fewer than 2 images and were skipped (unreadable files left out, see "
           f"bad_files.txt)" if skipped else "no batch reached an optimiser step")
    gone = " and its checkpoints (the untrained initial weights) were removed" if removed else ""
    again = ("run the same command again (the run directory takes the new run and keeps this one's files in "
             "stopped-attempt-N/)" if removed else "resume again")
    return f"the run trained nothing: {why}; nothing was exported{gone}. Fix the data or raise data.batch_size, then {again}"
