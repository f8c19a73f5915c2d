"""A pretraining run: run directory, data, Lightning Trainer (evaluation and export after it are
:mod:`selfsup.pipeline`'s, a layer above both).

A run directory is never damaged: a new run refuses a directory that already holds a run,
the process writing a run holds a lock on it (``RUN_DIR/.lock``, with its pid), a resume
checks that the overrides leave the model, method, data and schedule of the checkpoint
alone before anything is written, and a run that would take (or took) no optimiser step
is an error rather than an export of the initial weights."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from selfsup.config import ConfigError, RunConfig, dump_yaml, load_config, to_dict
from selfsup.train.loggers import LoggerSessions, build_loggers
from selfsup.train.state import AtomicCheckpointIO
from selfsup.data import build_dataset, make_loader, subset
from selfsup.fileio import LockedError, ensure_dir, file_lock, lock_holder, write_json, write_text
from selfsup.rundir import CHECKPOINT_DIR, CONFIG_FILE, RunDir
from selfsup.train.module import PretrainModule
from selfsup.train.monitors import LabelFreeMonitor



RUN_DIR_ENV = "SELFSUP_RUN_DIR"  # how the processes Lightning launches for DDP find rank 0's run directory


class RunDirError(RuntimeError):
    """A run directory this run cannot use (it holds another run, or another process is
    writing it); the message says what to do instead."""


class NoStepsError(RuntimeError):
    """A run that ended without taking one optimiser step; nothing was exported."""


def launched_processes() -> int:
    """Processes started by an external launcher (torchrun, SLURM) for this run; 1 if none."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def owns_run_dir() -> bool:
    """Whether this process checks, locks and writes the run directory's own files: not a
    process Lightning's DDP launcher started (those follow rank 0, which holds the lock),
    nor a rank above 0 of an external launcher (torchrun, SLURM)."""
    if os.environ.get(RUN_DIR_ENV):
        return False
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return True


def new_run_dir(cfg: RunConfig) -> Path:
    if os.environ.get(RUN_DIR_ENV):  # a DDP process Lightning started: rank 0's directory
        return Path(os.environ[RUN_DIR_ENV])
    if launched_processes() > 1:
        raise ValueError("this run was started as several processes (torchrun or SLURM): pass the same "
                         "--run-dir to every process so that they write to one run directory")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out_dir) / f"{cfg.name}-{stamp}"
    run_dir, i = base, 1
    while run_dir.exists():
        i += 1
        run_dir = base.with_name(f"{base.name}-{i}")
    return run_dir


# --------------------------------------------------------------------------- the run directory

_HELD: dict[Path, int] = {}  # run directories this process holds the lock of -> nesting depth


def _in_use(run_dir: Path, holder: int | None) -> str:
    who = f"process {holder}" if holder else "another process"
    return (f"run directory {run_dir} is in use: {who} is writing a run there; wait for it to finish "
            f"(`selfsup pretrain --resume {run_dir}` then continues it) or choose a fresh --run-dir")


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse a run directory before anything is written to it (reads only).

    Raises:
        RunDirError: another process holds the directory's lock (the message names its
            pid), or a new run (``resume=False``) would go into a directory that already
            holds a run (a config.yaml or checkpoints/).
        FileNotFoundError: ``resume`` and the run has no last checkpoint.
    """
    run_dir = Path(run_dir)
    if run_dir.resolve() not in _HELD:
        holder = lock_holder(RunDir(run_dir).lock)
        if holder is not None:
            raise RunDirError(_in_use(run_dir, holder))
    if resume:
        last = RunDir(run_dir).last_checkpoint
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        return
    found = [name for name in (CONFIG_FILE, CHECKPOINT_DIR) if (run_dir / name).exists()]
    if found:
        raise RunDirError(f"run directory {run_dir} already holds a run ({' and '.join(found)}): continue it with "
                          f"`selfsup pretrain --resume {run_dir}`, or start a new run with a fresh --run-dir "
                          f"(without --run-dir a new one is made under out_dir)")


@contextmanager
def hold_run_dir(run_dir: str | Path, resume: bool = False) -> Iterator[None]:
    """The run directory checked (:func:`check_run_dir`), created and locked against other
    processes for the block; the lock file ``RUN_DIR/.lock`` holds this process's pid.
    Re-entrant within a process; a no-op in processes that do not own the directory
    (:func:`owns_run_dir`: Lightning's DDP processes, ranks above 0).

    Raises:
        RunDirError, FileNotFoundError: see :func:`check_run_dir`.
        selfsup.fileio.UnwritableError: the directory cannot be created or written (a
            read-only disk); the message names it and how to choose another place.
    """
    run_dir = Path(run_dir)
    if not owns_run_dir():
        yield
        return
    key = run_dir.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    check_run_dir(run_dir, resume)  # before anything is written
    ensure_dir(run_dir)
    with ExitStack() as stack:
        try:
            stack.enter_context(file_lock(RunDir(run_dir).lock, wait=False))
        except LockedError as err:
            raise RunDirError(_in_use(run_dir, err.holder)) from None
        _HELD[key] = 1
        stack.callback(_HELD.pop, key)
        check_run_dir(run_dir, resume)  # again, locked: another process may have finished a run here meanwhile
        yield


# --------------------------------------------------------------------------- what a resume may change

# keys a resume may change freely: how the run is watched, evaluated, computed or loaded,
# never what the checkpoint holds (keys ending in "." are sections)
RESUME_FREE = ("name", "out_dir", "eval.", "detection.", "data.download", "data.eval_batch_size",
               "data.num_workers", "data.on_bad_file", "data.cache", "data.cache_dir", "trainer.accelerator",
               "trainer.precision", "trainer.strategy", "trainer.sync_batchnorm", "trainer.compile",
               "trainer.grad_checkpointing", "trainer.log_every_n_steps", "trainer.val_every_n_epochs",
               "trainer.progress_bar")
RESUME_LONGER = ("trainer.max_epochs", "trainer.max_steps")  # may grow: the run continues for longer
# may change together while the global batch (the lr was scaled for it, the data order follows it) stays
RESUME_GLOBAL_BATCH = ("data.batch_size", "trainer.devices", "trainer.num_nodes", "trainer.accumulate_grad_batches")


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """``{"section.key": value}`` of a resolved config (``method.name`` included;
    dict-valued keys such as ``encoder.kwargs`` stay whole)."""
    out: dict[str, Any] = {}
    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def device_count(devices: int | str) -> int | None:
    """Devices per node that ``trainer.devices`` asks for; None when only the machine knows
    (``auto``, ``-1``)."""
    if isinstance(devices, int):
        return devices if devices > 0 else None
    text = str(devices).strip().strip("[]")
    if text.isdigit():
        return int(text)
    items = [d for d in text.split(",") if d.strip()]
    return len(items) if "," in text and all(d.strip().isdigit() for d in items) else None


def global_batch(cfg: RunConfig) -> int | None:
    """Images per optimiser step: batch_size x devices x nodes x accumulate_grad_batches
    (None when the device count is ``auto``)."""
    n = device_count(cfg.trainer.devices)
    return None if n is None else cfg.data.batch_size * n * cfg.trainer.num_nodes * cfg.trainer.accumulate_grad_batches


def _longer(key: str, old: int, new: int) -> bool:
    if key == "trainer.max_steps":  # -1: no step limit (max_epochs decides)
        return new == -1 or (old != -1 and new >= old)
    return new >= old


def resume_changes(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """The config changes a resume of a run trained with ``saved`` would make, as
    ``"key old -> new"``, when every one is allowed: keys in RESUME_FREE, a longer
    trainer.max_epochs / max_steps, and batch-size and device-count changes that keep the
    global batch.

    Raises:
        ConfigError: (one line) naming every refused key with its old and new value and why.
    """
    old, new = flat_config(saved), flat_config(cfg)
    changed = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    allowed, refused = [], []
    batch_keys = [k for k in changed if k in RESUME_GLOBAL_BATCH]
    if batch_keys:
        before, after = global_batch(saved), global_batch(cfg)
        why = (f"global batch {before} -> {after}" if before is not None and after is not None
               else "trainer.devices=auto hides the device count")
        keep = before is not None and before == after
        for k in batch_keys:
            (allowed if keep else refused).append((k, "" if keep else why))
    for k in changed:
        if k in RESUME_GLOBAL_BATCH:
            continue
        if k in RESUME_LONGER:
            ok = _longer(k, old[k], new[k])
            (allowed if ok else refused).append((k, "" if ok else "a resumed run can only get longer"))
        elif any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_FREE):
            allowed.append((k, ""))
        else:
            refused.append((k, ""))

    def show(k: str, why: str) -> str:
        return f"{k} {old.get(k)!r} -> {new.get(k)!r}" + (f" ({why})" if why else "")

    if refused:
        raise ConfigError(
            f"cannot resume with these changes: {'; '.join(show(k, w) for k, w in refused)}. They would change "
            f"what the checkpoint was trained as (model, method, data, optimiser or schedule); resume with the "
            f"run's own config plus only allowed changes (a longer trainer.max_epochs or max_steps, eval.*, "
            f"trainer.progress_bar, data.num_workers, ...), or start a new run with a fresh --run-dir")
    return [show(k, w) for k, w in allowed]


def record_config(run_dir: Path, cfg: RunConfig, resume: bool, changes: list[str],
                  log: Callable[[str], None]) -> None:
    """Write the run's config.yaml: a new run's, or on a resume that changed allowed keys
    the new one, after keeping the previous file as ``config.before-resume-N.yaml``
    (an unchanged resume rewrites nothing)."""
    path = RunDir(run_dir).config
    if not resume:
        write_text(dump_yaml(cfg), path)
        return
    if not changes:
        return
    n = 1
    while (run_dir / f"config.before-resume-{n}.yaml").exists():
        n += 1
    kept = run_dir / f"config.before-resume-{n}.yaml"
    write_text(path.read_text(), kept)
    write_text(dump_yaml(cfg), path)
    log(f"[resume] config changes: {'; '.join(changes)} (the previous config is kept as {kept.name})")


# --------------------------------------------------------------------------- how many steps


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
    return text + f"; {plan.total_steps} optimiser steps"


# --------------------------------------------------------------------------- the run


def pretrain(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
             log: Callable[[str], None] = print, then: Callable[[Path], Any] | None = None,
             check_encoder: Callable[[torch.nn.Module], None] | None = None) -> Path:
    """Train ``cfg.method``; returns the run directory (config, metrics.csv, checkpoints/).
    ``check_encoder(encoder)`` runs on the untrained encoder before anything is written (selfsup.pipeline
    checks ``eval.layers`` there); ``then(run_dir)`` runs after training while the run directory is still
    locked (selfsup.pipeline evaluates and exports there).

    Everything is checked before anything is written: the run directory
    (:func:`check_run_dir`), on a resume the config changes (:func:`resume_changes`), and
    that the run takes at least one optimiser step (:func:`plan_steps`).

    Raises:
        ConfigError: refused resume changes, or a run that would take no optimiser step.
        RunDirError: the directory holds another run, or another process writes it.
        FileNotFoundError: a resume without a last checkpoint.
        selfsup.fileio.UnwritableError: the run directory cannot be written.
        NoStepsError: training ended without one optimiser step (its checkpoints, the
            untrained initial weights, are removed).
    """
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    owner = owns_run_dir()
    check_trainable(cfg.data.batch_size, cfg.trainer.max_steps)
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
    info = train_ds.info()
    module = PretrainModule(cfg, info)
    if check_encoder is not None:
        check_encoder(module.method.encoder)
    train_loader = make_loader(train_ds, cfg.data.batch_size, train=True, num_workers=cfg.data.num_workers,
                               seed=cfg.seed, with_indices=module.method.needs_indices)
    val_loader = None
    if module.probe is not None:
        val_loader = make_loader(build_dataset(cfg.data, "test"), cfg.data.eval_batch_size, train=False,
                                 num_workers=cfg.data.num_workers)
    trainer = build_trainer(cfg, module, run_dir, log, resume)
    plan = plan_steps(len(train_ds), cfg.data.batch_size, trainer.world_size, t.limit_train_batches,
                      t.accumulate_grad_batches, t.max_epochs, t.max_steps)
    if trainer.world_size > 1:  # every rank needs the same batch size: replace unreadable files, never drop
        train_ds.keep_batches_full()

    with hold_run_dir(run_dir, resume):
        if owner:
            record_config(run_dir, cfg, resume, changes, log)
        bad_files = RunDir(run_dir).bad_files
        train_ds.set_bad_file_log(bad_files)
        if owner:
            write_json(dataclasses.asdict(info), RunDir(run_dir).data_info)
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
                                 resume, epochs=trainer.fit_loop.epoch_progress.current.completed)
        if module.skipped_batches and trainer.is_global_zero:
            log(f"[pretrain] {module.skipped_batches} batch(es) of fewer than 2 images were skipped")
        # a skipped batch still counts a global step (Lightning calls the optimiser, which has no
        # gradients): what trained is the batches with a loss
        if module.trained_batches == 0 and (module.skipped_batches or trainer.global_step == 0):
            removed = owner and trainer.is_global_zero and not resume  # a new run's untrained initial weights
            if removed:
                shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)
            raise NoStepsError(no_steps_message(module.skipped_batches, removed))
        if bad_files.is_file() and trainer.is_global_zero:
            n = len({line.split("\t")[0] for line in bad_files.read_text().splitlines()})
            log(f"[data] {n} unreadable image file(s) were left out (data.on_bad_file=skip); see {bad_files}")
        if then is not None:
            then(run_dir)
    return run_dir


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


def no_steps_message(skipped: int, removed: bool) -> str:
    """Why a run trained nothing (``skipped``: its batches of fewer than 2 images;
    ``removed``: its checkpoints, the untrained initial weights, were deleted)."""
    why = (f"all {skipped} batch(es) had fewer than 2 images and were skipped (unreadable files left out, see "
           f"bad_files.txt)" if skipped else "no batch reached an optimiser step")
    gone = " and its checkpoints (the untrained initial weights) were removed" if removed else ""
    return (f"the run trained nothing: {why}; nothing was exported{gone}. Fix the data or raise "
            f"data.batch_size, then start again with a fresh --run-dir")


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


class PrecisionWarning(UserWarning):
    """A precision that works but is known to be slower or less stable on this device."""


# Measured by benchmarks/precision.py (benchmarks/results/precision.md): under bf16 autocast,
# oneDNN's bf16 convolution weight-gradient (jit_bf16:avx512_core, oneDNN 3.12) returns garbage,
# at times NaN/inf, for the filter taps of a strided convolution whose input is narrower than its
# stride (a ResNet's layer4.0.conv1 on 1-pixel maps at 16 px: wrong in 283 of 300 steps over five
# methods, NaN in 2 of 300 in another run); and bf16 is not faster (speed-up by CPU kind below).
CPU_BF16_CAVEAT = ("oneDNN's bf16 convolution weight-gradient returns garbage, at times NaN/inf, when a strided "
                   "convolution's input is narrower than its stride (e.g. a ResNet's layer4 at 16 px), and bf16 "
                   "steps measured {speed}; trainer.precision=32-true (what auto picks on CPUs) avoids both")
CPU_BF16_SPEED = {True: "1.02x the float32 rate on a Xeon with AMX",
                  False: "0.6-0.85x the float32 rate on a CPU without AVX512-BF16/AMX (emulated)"}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, accelerator: str = "auto",
                      warn: Callable[[str], None] | None = None) -> str:
    """``trainer.precision`` for Lightning.

    "auto" is bf16-mixed on GPUs that support bf16 (Ampere and later), 16-mixed (fp16 with
    loss scaling) on older GPUs, and 32-true on CPUs, with or without native bf16: there
    bf16 autocast was measured no faster and not stable (:data:`CPU_BF16_CAVEAT`). Any other
    value is passed through; a bf16 precision on a CPU is honoured with a one-line warning
    (``warn``, default :func:`warnings.warn` with a :class:`PrecisionWarning`)."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision == "auto":
        if on_gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not on_gpu and not torch.backends.mps.is_available())
    if on_cpu and precision.startswith("bf16"):
        message = (f"trainer.precision={precision} on a CPU: "
                   f"{CPU_BF16_CAVEAT.format(speed=CPU_BF16_SPEED[cpu_has_bf16()])}")
        if warn is None:
            import warnings

            warnings.warn(message, PrecisionWarning, stacklevel=2)
        else:
            warn(message)
    return precision


def load_run_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a selfsup run directory")
    return load_config(path, overrides)

