"""The run directory a pretraining writes: where a new one goes, which process owns it, and the
checks and lock that keep it from being damaged.

A new run refuses a directory that holds a trained run (a checkpoint); the process writing a run
holds a lock on it (``RUN_DIR/.lock``, with its pid). A directory left by a run that stopped before
its first checkpoint (a logger that could not start, an interrupted first epoch) holds nothing to
resume: a new run may start there, and the stopped attempt's files are first set aside in
``stopped-attempt-N/`` (nothing is deleted)."""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

from selfsup.config import RunConfig, load_config
from selfsup.fileio import LockedError, ensure_dir, file_lock, lock_holder
from selfsup.rundir import CHECKPOINT_DIR, CONFIG_FILE, RunDir

RUN_DIR_ENV = "SELFSUP_RUN_DIR"  # how the processes Lightning launches for DDP find rank 0's run directory
STOPPED_ATTEMPT = "stopped-attempt-"  # + N: the files of a run that stopped before its first checkpoint


class RunDirError(RuntimeError):
    """A run directory this run cannot use (it holds another run, or another process is
    writing it); the message says what to do instead."""


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
    from selfsup.distributed import launcher_rank_zero  # torch: not on the CLI's fast paths

    if os.environ.get(RUN_DIR_ENV):
        return False
    return launcher_rank_zero()


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


_HELD: dict[Path, int] = {}  # run directories this process holds the lock of -> nesting depth


def _in_use(run_dir: Path, holder: int | None) -> str:
    who = f"process {holder}" if holder else "another process"
    return (f"run directory {run_dir} is in use: {who} is writing a run there; wait for it to finish "
            f"(`selfsup pretrain --resume {run_dir}` then continues it) or choose a fresh --run-dir")


def stopped_attempt(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run that stopped before its first checkpoint: it began (a
    config.yaml or checkpoints/) but kept nothing to continue or to keep (no checkpoint file,
    no results.json, no export/). A new run may start there (:func:`set_aside_stopped_attempt`)."""
    run = RunDir(run_dir)
    began = run.config.exists() or run.checkpoints.exists()
    kept = bool(run.checkpoint_files()) or run.results_json.exists() or run.export.exists()
    return began and not kept


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse a run directory before anything is written to it (reads only).

    Raises:
        RunDirError: another process holds the directory's lock (the message names its
            pid), or a new run (``resume=False``) would go into a directory that already
            holds a run with a checkpoint, results or an export (a run that stopped before
            its first checkpoint is no obstacle: :func:`stopped_attempt`).
        FileNotFoundError: ``resume`` and the run has no last checkpoint (for a run that
            stopped before its first one, the message gives the command that starts it again).
    """
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if run_dir.resolve() not in _HELD:
        holder = lock_holder(run.lock)
        if holder is not None:
            raise RunDirError(_in_use(run_dir, holder))
    if resume:
        if run.last_checkpoint.is_file():
            return
        if stopped_attempt(run_dir):
            raise FileNotFoundError(
                f"cannot resume {run_dir}: its run stopped before its first checkpoint, so there is nothing to "
                f"continue; start it again with `selfsup pretrain {run.config} --run-dir {run_dir}` plus the "
                f"overrides that fix why it stopped (e.g. trainer.logger=[csv] after a logger failed; the stopped "
                f"attempt's files are moved to {run_dir}/{STOPPED_ATTEMPT}N/, not deleted)")
        raise FileNotFoundError(f"cannot resume: {run.last_checkpoint} does not exist")
    found = [name for name in (CONFIG_FILE, CHECKPOINT_DIR) if (run_dir / name).exists()]
    if found and not stopped_attempt(run_dir):
        if run.checkpoint_files():
            how = f"continue it with `selfsup pretrain --resume {run_dir}`, or start a new run with a fresh --run-dir"
        else:  # results or an export, but its checkpoints are gone: nothing to resume
            how = "it has no checkpoint left to resume, so start a new run with a fresh --run-dir"
        raise RunDirError(f"run directory {run_dir} already holds a run ({' and '.join(found)}): {how} "
                          f"(without --run-dir a new one is made under out_dir)")


def set_aside_stopped_attempt(run_dir: str | Path) -> Path | None:
    """Move the files of a run that stopped before its first checkpoint (:func:`stopped_attempt`)
    into ``run_dir/stopped-attempt-N/`` (N: the first free number), so that a new run starts in
    an empty directory and nothing is deleted; returns that folder, or None when there was no
    such run. The lock file and earlier ``stopped-attempt-*`` folders stay where they are."""
    run_dir = Path(run_dir)
    if not stopped_attempt(run_dir):
        return None
    n = 1
    while (run_dir / f"{STOPPED_ATTEMPT}{n}").exists():
        n += 1
    dest = ensure_dir(run_dir / f"{STOPPED_ATTEMPT}{n}")
    for entry in sorted(run_dir.iterdir()):
        if entry.name != RunDir(run_dir).lock.name and not entry.name.startswith(STOPPED_ATTEMPT):
            shutil.move(str(entry), str(dest / entry.name))
    return dest


@contextmanager
def hold_run_dir(run_dir: str | Path, resume: bool = False,
                 log: Callable[[str], None] = print) -> Iterator[None]:
    """The run directory checked (:func:`check_run_dir`), created and locked against other
    processes for the block; the lock file ``RUN_DIR/.lock`` holds this process's pid. A new
    run in a directory whose run stopped before its first checkpoint first sets that attempt's
    files aside (:func:`set_aside_stopped_attempt`, said through ``log``).
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
        if not resume:
            kept = set_aside_stopped_attempt(run_dir)
            if kept is not None:
                log(f"[pretrain] {run_dir} held a run that stopped before its first checkpoint; its files are "
                    f"kept in {kept} and a new run starts")
        yield


def load_run_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a selfsup run directory")
    return load_config(path, overrides)
