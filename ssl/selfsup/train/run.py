"""A pretraining run: data, Lightning Trainer, checkpoints and the run's records (evaluation and
export after it are :mod:`selfsup.pipeline`'s, a layer above both).

A run directory is never damaged (:mod:`selfsup.train.workdir`: a new run refuses a directory that
holds a trained run, the writing process holds a lock), a resume checks that the overrides leave the
model, method, data and schedule of the checkpoint alone before anything is written
(:mod:`selfsup.train.resume`), and a run that would take (or took) no optimiser step is an error
rather than an export of the initial weights (:mod:`selfsup.train.steps`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from selfsup.config import ConfigError, RunConfig, method_name
from selfsup.data import DataError, DataInfo, build_dataset, make_loader, subset
from selfsup.encoders import EncoderError, check_forward, check_kwargs_take_effect
from selfsup.fileio import write_json
from selfsup.rundir import RunDir, bad_file_count
from selfsup.train.loggers import LoggerSessions, build_loggers, start_loggers
from selfsup.train.module import PretrainModule
from selfsup.train.monitors import LabelFreeMonitor
from selfsup.train.precision import resolve_precision
from selfsup.train.optim import check_scaled_lr
from selfsup.train.resume import (check_devices, check_nodes, check_same_data, check_sync_batchnorm, device_count,
                                  kept_info, write_fingerprint,
                                  global_batch, record_config, resume_changes)
from selfsup.train.state import AtomicCheckpointIO
from selfsup.train.steps import NoStepsError, check_trainable, describe_plan, no_steps_message, plan_steps
from selfsup.train.workdir import RUN_DIR_ENV, check_run_dir, hold_run_dir, load_run_config, new_run_dir, owns_run_dir




def pretrain(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
             log: Callable[[str], None] = print, then: Callable[[Path], Any] | None = None,
             check_encoder: Callable[[torch.nn.Module, DataInfo], None] | None = None) -> Path:
    """Train ``cfg.method``; returns the run directory (config, metrics.csv, checkpoints/).
    ``check_encoder(encoder, info)`` runs on the untrained encoder and the data's DataInfo before anything is
    written (selfsup.pipeline
    checks ``eval.layers`` there); ``then(run_dir)`` runs after training while the run directory is still
    locked (selfsup.pipeline evaluates and exports there).

    Everything is checked before anything is written: the run directory
    (:func:`check_run_dir`), on a resume the config changes (:func:`resume_changes`), and
    that the run takes at least one optimiser step (:func:`plan_steps`).

    Raises:
        ConfigError: refused resume changes, or a run that would take no optimiser step.
        EncoderError: an ``encoder.kwargs`` key that changes nothing in the model timm builds
            (:func:`selfsup.encoders.check_kwargs_take_effect`).
        RunDirError: the directory holds another run, or another process writes it.
        FileNotFoundError: a resume without a last checkpoint.
        selfsup.fileio.UnwritableError: the run directory cannot be written.
        NoStepsError: training ended without one optimiser step (its checkpoints, the
            untrained initial weights, are removed).
    """
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    owner = owns_run_dir()
    check_trainable(cfg.data.batch_size, cfg.trainer.max_steps)
    check_devices(cfg.trainer.devices, cfg.trainer.accelerator)
    check_nodes(cfg.trainer.num_nodes)
    check_scaled_lr(cfg.optim, global_batch(cfg))
    if not resume:  # a resumed run keeps the kwargs it was trained with (resume_changes refuses others)
        check_kwargs_take_effect(cfg.encoder.name, cfg.encoder.kwargs)
    changes: list[str] = []
    if owner:
        check_run_dir(run_dir, resume)
        if resume:
            changes = resume_changes(load_run_config(run_dir), cfg)
    last = RunDir(run_dir).last_checkpoint
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    train_ds = subset(build_dataset(cfg.data, "train"), cfg.data.subset, cfg.seed)
    t = cfg.trainer
    devices = device_count(t.devices)
    if devices is not None:  # refuse a run of no step before Lightning starts (the Trainer checks it again)
        plan_steps(len(train_ds), cfg.data.batch_size, devices * t.num_nodes, t.limit_train_batches,
                   t.accumulate_grad_batches, t.max_epochs, t.max_steps)
    # a resume on the files the run kept a fingerprint of reads their statistics back instead of decoding again;
    # taken before the statistics, so that a file changed while they are decoded (minutes of photos) does not
    # leave the new files' fingerprint beside the old files' statistics
    fingerprint = train_ds.fingerprint()
    info = (kept_info(RunDir(run_dir), fingerprint) if resume else None) or train_ds.info()
    if resume and owner:  # the same config can read other images (files added to a folder since)
        cache_then = load_run_config(run_dir).data.cache
        check_same_data(RunDir(run_dir).data_info, dataclasses.asdict(info),
                        (cache_then, cfg.data.cache) if cache_then != cfg.data.cache else None)
    module = PretrainModule(cfg, info)
    try:
        for size in dict.fromkeys([info.image_size, *module.method.encoder_input_sizes()]):  # tiles, patches too
            try:
                check_forward(module.method.encoder, info.in_chans, size, cfg.encoder.name, cfg.encoder.kwargs,
                              "data.image_size" if size == info.image_size else
                              "method.tile_size" if hasattr(cfg.method, "tile_size") else "method.grid")
            except EncoderError as err:
                if size == info.image_size:
                    raise
                raise EncoderError(f"{err} (the {size}x{size} inputs are {method_name(cfg)}'s tiles or patches, which "
                                   f"its method.* settings size)") from None
    except EncoderError as err:
        if not resume:
            raise
        # a run made before a check cannot take its fix: a resume keeps the encoder it trained
        raise EncoderError(f"{err} (this run was trained with that encoder, and a resume cannot change "
                           f"encoder.kwargs or the images: start a new run with the fix)") from None
    if check_encoder is not None:
        check_encoder(module.method.encoder, info)
    train_loader = make_loader(train_ds, cfg.data.batch_size, train=True, num_workers=cfg.data.num_workers,
                               seed=cfg.seed, with_indices=module.method.needs_indices)
    val_loader = None
    if module.probe is not None:
        try:
            test_ds = build_dataset(cfg.data, "test")
        except DataError as err:  # no test split (data.holdout_fraction=0): the online probe has nothing to score
            raise DataError(f"the online probe (trainer.online_probe) scores on the test split, and {err}; or set "
                            f"trainer.online_probe=false") from None
        val_loader = make_loader(test_ds, cfg.data.eval_batch_size, train=False, num_workers=cfg.data.num_workers)
    trainer = build_trainer(cfg, module, run_dir, log, resume)
    check_sync_batchnorm(t.sync_batchnorm, trainer.world_size, trainer.accelerator)  # before any process starts
    plan = plan_steps(len(train_ds), cfg.data.batch_size, trainer.world_size, t.limit_train_batches,
                      t.accumulate_grad_batches, t.max_epochs, t.max_steps)
    if trainer.world_size > 1:  # every rank needs the same batch size: replace unreadable files, never drop
        train_ds.keep_batches_full()

    with hold_run_dir(run_dir, resume, log):
        if owner:
            record_config(run_dir, cfg, resume, changes, log)
        if owner and trainer.is_global_zero:
            start_loggers(trainer.loggers)
        bad_files = RunDir(run_dir).bad_files
        train_ds.set_bad_file_log(bad_files)
        if owner:
            write_json(dataclasses.asdict(info), RunDir(run_dir).data_info)
            write_fingerprint(RunDir(run_dir), fingerprint)
        log(f"[pretrain] {type(module.method).__name__} on {cfg.data.name} ({len(train_ds)} images, "
            f"{info.in_chans}x{info.image_size}x{info.image_size}; "
            f"{describe_plan(plan, cfg.data.batch_size, trainer.world_size)}), encoder {cfg.encoder.name}, "
            f"run dir {run_dir}")
        os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes Lightning's DDP launcher starts
        # Lightning's DDP setup re-seeds every rank with this seed; seeding here too puts one process
        # in the same state, so the random draws of any device count are the same (a resume then
        # restores the checkpoint's generators)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        started = time.perf_counter()
        try:
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None,
                        weights_only=True)
        finally:
            os.environ.pop(RUN_DIR_ENV, None)
        if owner and trainer.is_global_zero:
            record_training_time(RunDir(run_dir).training_time, time.perf_counter() - started, trainer.global_step,
                                 resume, epochs=epochs_trained(trainer.global_step, trainer.num_training_batches,
                                                               t.accumulate_grad_batches,
                                                               trainer.fit_loop.epoch_progress.current.completed))
        if module.skipped_batches and trainer.is_global_zero:
            log(f"[pretrain] {module.skipped_batches} batch(es) of fewer than 2 images were skipped")
        # a skipped batch still counts a global step (Lightning calls the optimiser, which has no
        # gradients): what trained is the batches with a loss
        if module.trained_batches == 0 and (module.skipped_batches or trainer.global_step == 0):
            removed = owner and trainer.is_global_zero and not resume  # a new run's untrained initial weights
            if removed:
                shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)
            raise NoStepsError(no_steps_message(module.skipped_batches, removed))
        took_none = resume and module.trained_batches == 0 and trainer.is_global_zero
        if took_none and trainer.global_step >= plan.total_steps:
            log(f"[pretrain] nothing left to train: the checkpoint already holds all {trainer.global_step} optimiser "
                f"steps of this schedule, so this resume took none; raise trainer.max_steps or trainer.max_epochs to "
                f"train on")
        elif took_none:  # Lightning's epoch count ran ahead of the steps (it resumes at an epoch's end)
            log(f"[pretrain] warning: this resume took no step although the schedule plans {plan.total_steps} and the "
                f"checkpoint holds {trainer.global_step}: Lightning counts the checkpoint's last epoch as finished "
                f"(a checkpoint saved where trainer.max_steps stopped inside or at the end of an epoch), so "
                f"trainer.max_epochs={t.max_epochs} is reached; raise trainer.max_epochs to train the rest")
        elif resume and trainer.is_global_zero and not trainer.interrupted and trainer.global_step < plan.total_steps:
            log(short_resume_warning(trainer.global_step, plan.total_steps, trainer.current_epoch, plan.steps_per_epoch,
                                     t.max_epochs, t.max_steps))
        if bad_files.is_file() and trainer.is_global_zero:
            log(f"[data] {bad_file_count(run_dir)} unreadable image file(s) were left out (data.on_bad_file=skip); "
                f"see {bad_files}")
        if then is not None:
            then(run_dir)
    return run_dir


def short_resume_warning(step: int, planned: int, epoch: int, steps_per_epoch: int, max_epochs: int,
                         max_steps: int) -> str:
    """The warning of a resume that stopped at optimiser ``step`` short of the ``planned`` steps because
    Lightning counted the checkpoint's last epoch as finished (a checkpoint saved where ``trainer.max_steps``
    stopped inside or at the end of an epoch) and reached ``max_epochs`` early (its epoch count now
    ``epoch``; a resume starts at the next). With ``max_steps`` set, the ``trainer.max_epochs`` that reaches
    it (the learning-rate schedule then ends where it is laid out to); without (``max_steps`` -1, which a
    resume cannot change), the ``trainer.max_epochs`` that trains the steps this resume did not take."""
    head = (f"[pretrain] warning: this resume stopped at optimiser step {step} of the {planned} the schedule plans: "
            f"Lightning counts the checkpoint's last epoch as finished (a checkpoint saved where trainer.max_steps "
            f"stopped inside or at the end of an epoch), so trainer.max_epochs={max_epochs} was reached early and the "
            f"learning rate did not reach the end of its schedule")
    if max_steps > 0:
        need = epoch + 1 + math.ceil((max_steps - step) / steps_per_epoch)
        return f"{head}; resume with trainer.max_epochs={need} to train on to trainer.max_steps={max_steps}"
    more = math.ceil((planned - step) / steps_per_epoch)
    return (f"{head}; with trainer.max_steps=-1 the plan grows with trainer.max_epochs, and a resume of such a "
            f"checkpoint trains one epoch fewer than it plans: trainer.max_epochs={epoch + 1 + more} trains at least "
            f"the {planned - step} step{'s' * (planned - step != 1)} this one did not take (and is itself short of "
            f"its plan)")


def epochs_trained(global_step: int, batches_per_epoch: float, accumulate: int, lightning_epochs: int) -> float:
    """Epochs of training in ``global_step`` optimiser steps: whole epochs as an int, a cut-short one as
    a fraction (2 decimals). Lightning counts an epoch that ``trainer.max_steps`` stopped after 1 of its 4
    steps as completed, so a 1-step run's card said "1 epoch completed"; this says 0.25. With no known
    epoch length (an iterable dataset), Lightning's count."""
    if not math.isfinite(batches_per_epoch) or batches_per_epoch <= 0:
        return lightning_epochs
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulate))
    whole, part = divmod(global_step, steps_per_epoch)
    return whole if part == 0 else round(global_step / steps_per_epoch, 2)


def record_training_time(path: Path, seconds: float, global_step: int, resumed: bool,
                         epochs: int | None = None) -> dict[str, Any]:
    """Append one training session (wall seconds of ``trainer.fit``; the optimiser steps it took:
    ``global_step`` less the steps of the sessions before) to ``path`` (``training_time.json``) and
    return the file's content: ``{"seconds": total, "steps": global_step, "epochs": epochs,
    "sessions": [...]}`` (``epochs``: the epochs completed so far, resumed sessions included, which
    is less than ``trainer.max_epochs`` when a run stopped early; left out when not given). A new
    run starts the list again; a resume adds to it."""
    old = json.loads(path.read_text()) if resumed and path.is_file() else {}
    before = sum(s["steps"] for s in old.get("sessions", []))
    sessions = [*old.get("sessions", []),
                {"seconds": round(seconds, 2), "steps": global_step - before, "resumed": resumed}]
    record = {"seconds": round(sum(s["seconds"] for s in sessions), 2), "steps": global_step,
              **({"epochs": epochs} if epochs is not None else {}), "sessions": sessions}
    write_json(record, path)
    return record


def build_trainer(cfg: RunConfig, module: PretrainModule, run_dir: Path,
                  log: Callable[[str], None] = print, resume: bool = False) -> L.Trainer:
    """The Lightning Trainer of a run (writes nothing until it fits): epoch-end checkpoints
    in ``run_dir/checkpoints`` (last.ckpt kept), metrics.csv and the loggers of ``trainer.logger``
    (:mod:`selfsup.train.loggers`; a resume continues their runs).

    Raises:
        ConfigError: a logger's package is not installed."""
    callbacks: list[Any] = [
        # save_top_k=1 without a monitor keeps the newest epoch file; Lightning (>= 2.6) writes
        # last.ckpt only in an epoch that saved one, so top-k 0 would leave no checkpoint until the end
        # no version counter: a run directory that was moved or copied resumes from last.ckpt and
        # must overwrite it (Lightning would otherwise write last-v1.ckpt beside the stale one)
        ModelCheckpoint(dirpath=RunDir(run_dir).checkpoints, filename="epoch{epoch:03d}", save_last=True,
                        save_top_k=1, every_n_epochs=1, auto_insert_metric_name=False, enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    if cfg.trainer.monitor_every_n_steps:
        callbacks.append(LabelFreeMonitor(cfg.trainer.monitor_every_n_steps, cfg.trainer.monitor_images, log))
    loggers = build_loggers(cfg.trainer, run_dir, resume)
    if len(loggers) > 1:
        callbacks.append(LoggerSessions(run_dir))
    if cfg.trainer.compile:
        module.method.encoder.compile()  # in place: parameter names (checkpoints, exports) unchanged
    t = cfg.trainer
    strategy = fsdp_strategy(module, cfg) if t.strategy == "fsdp" else t.strategy
    return L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        sync_batchnorm=t.sync_batchnorm,
        precision=resolve_precision(t.precision, t.accelerator, warn=lambda m: log(f"[precision] {m}")),
        accumulate_grad_batches=t.accumulate_grad_batches,
        use_distributed_sampler=False,  # EpochShuffle shards the global batches itself
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        check_val_every_n_epoch=t.val_every_n_epochs,
        num_sanity_val_steps=0,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
    )


def fsdp_strategy(module: PretrainModule, cfg: RunConfig) -> Any:
    """Lightning's FSDP with each block of the encoder (``encoder.blocks``: ViTs) its own
    shard unit, so a block's weights are gathered only while it runs (timm's activation
    checkpointing, ``trainer.grad_checkpointing``, composes with it)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if any(name.endswith("teacher") for name, _ in module.method.named_children()):
        raise ConfigError(f"trainer.strategy=fsdp: {type(module.method).__name__}'s momentum teacher is updated "
                          f"from the online weights parameter by parameter, which FSDP shards differently; "
                          f"use trainer.strategy=ddp")
    blocks = getattr(module.method.encoder, "blocks", None)
    policy = {type(b) for b in blocks} if blocks is not None else None
    return FSDPStrategy(auto_wrap_policy=policy)
