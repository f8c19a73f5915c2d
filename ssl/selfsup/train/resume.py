"""What a resume may change in a run's config, and the config.yaml it leaves behind."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from selfsup.config import ConfigError, RunConfig, dump_yaml, to_dict
from selfsup.fileio import write_text
from selfsup.rundir import RunDir

if TYPE_CHECKING:
    from selfsup.data import DataInfo


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


def runs_on_cpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` (``cpu``, ``gpu``, ``cuda``, ``mps``, ``auto``) resolves to the CPU here."""
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def check_devices(devices: int | str, accelerator: str) -> None:
    """ConfigError (one line) for a ``trainer.devices`` that names GPUs (``-1``: every GPU; ``'0,1'``:
    GPU indices) on a run that resolves to the CPU, where Lightning refused it with a traceback (the
    form itself is checked when the config loads, :class:`selfsup.config.TrainerConfig`)."""
    text = str(devices).strip()
    if runs_on_cpu(accelerator) and (text == "-1" or "," in text):
        where = "trainer.accelerator=cpu" if accelerator == "cpu" else "no GPU was found"
        raise ConfigError(f"trainer.devices={text} names GPUs ({'every GPU' if text == '-1' else 'GPU indices'}) and "
                          f"this run is on the CPU ({where}): set trainer.devices to a process count such as 1 "
                          f"(or 2 for two CPU processes under DDP)")


def node_launcher() -> str | None:
    """What started this process as one of several machines' processes: a cluster environment Lightning
    detects (torchrun / torchelastic, SLURM's srun, LSF's jsrun, MPI; their own ``detect``), or the
    variables Lightning's own environment reads when set by hand (``NODE_RANK`` or ``GROUP_RANK`` with
    ``MASTER_ADDR``); None when nothing did."""
    import os

    from lightning.fabric.plugins.environments import (LSFEnvironment, MPIEnvironment, SLURMEnvironment,
                                                       TorchElasticEnvironment)

    for env in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        try:
            if env.detect():
                return env.__name__
        except Exception:  # noqa: BLE001 -- an environment that cannot tell (a SLURM allocation without srun)
            continue
    if "MASTER_ADDR" in os.environ and ({"NODE_RANK", "GROUP_RANK"} & set(os.environ)):
        return "NODE_RANK and MASTER_ADDR"
    return None


def check_nodes(num_nodes: int) -> None:
    """ConfigError (one line) for ``trainer.num_nodes`` > 1 in a process no launcher started as one of
    several machines' (:func:`node_launcher`): Lightning then waited for the other machines without end,
    a hang with no output instead of an error."""
    if num_nodes > 1 and node_launcher() is None:
        raise ConfigError(f"trainer.num_nodes={num_nodes} asks for {num_nodes} machines, and no launcher started this "
                          f"process as one of them (torchrun, SLURM's srun, LSF's jsrun, MPI; or NODE_RANK and "
                          f"MASTER_ADDR set by hand), so it would wait for the others without end: start one process "
                          f"per device on each machine (README: \"Many GPUs and machines\"), or set trainer.num_nodes=1")


def check_sync_batchnorm(sync_batchnorm: bool, world_size: int, accelerator: object) -> None:
    """ConfigError (one line) when ``trainer.sync_batchnorm`` asks several processes for torch's
    SyncBatchNorm on an ``accelerator`` (Lightning's resolved one) other than CUDA: SyncBatchNorm runs on
    GPUs only, and on the CPU the run failed at its first step with a traceback in every process. One
    process has no statistics to share, so the setting is left alone there."""
    if sync_batchnorm and world_size > 1 and type(accelerator).__name__ != "CUDAAccelerator":
        raise ConfigError(f"trainer.sync_batchnorm=true shares BatchNorm statistics through torch's SyncBatchNorm, "
                          f"which runs on GPUs only, and these {world_size} processes run on "
                          f"{type(accelerator).__name__.removesuffix('Accelerator') or 'a non-GPU device'}: set "
                          f"trainer.sync_batchnorm=false (each process then normalises by its own share of the batch)")


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


DATA_INFO_KEYS = {"num_samples": "training images", "num_classes": "classes", "in_chans": "channels",
                  "image_size": "side (px)", "mean": "channel mean", "std": "channel std"}


def check_same_data(saved: Path, now: dict[str, Any], cache_change: tuple[str, str] | None = None) -> None:
    """Refuse a resume whose training data is not the run's: ``now`` (the :class:`selfsup.data.DataInfo` of the
    data as read now, as a dict) against the run's ``data_info.json`` at ``saved`` (written when it started;
    nothing is checked for a run without one). The same config can read other images: an image folder with
    files added, removed or changed since (``data.root`` names a folder, not its content). Trained on, the run
    would mix two datasets and its normalisation would change mid-run (the model reads the mean and std of the
    data it is built on; a memory bank would no longer match its checkpoint's rows).

    ``cache_change``: ``data.cache`` (then, now) when this resume changes it: a decoded copy leaves unreadable
    files out of the image count, so with unreadable files the count moves with it (said so).

    Raises:
        ConfigError: (one line) naming what differs, then and now, and what to do.
    """
    from selfsup.fileio import read_json_or_none

    then = read_json_or_none(saved)
    if not isinstance(then, dict):
        if Path(saved).exists():  # emptied or edited: the data can no longer be checked against it
            raise ConfigError(f"cannot resume: the run's {saved} is not readable statistics (edited or cut short), so "
                              f"the data cannot be checked to be what the run trained on; restore the file, or start "
                              f"a new run with a fresh --run-dir")
        return
    differ = data_differences(then, now)
    if differ == [f"training images {then.get('num_samples')} then, {now.get('num_samples')} now"] and cache_change:
        raise ConfigError(f"cannot resume with data.cache {cache_change[0]} -> {cache_change[1]}: the folder has "
                          f"unreadable files, which the decoded copy (uint8) leaves out of the image count and the "
                          f"files themselves do not ({differ[0]}), and that count sizes the run's per-image state; "
                          f"resume with data.cache={cache_change[0]}")
    if differ:
        raise ConfigError(f"cannot resume: the training data is not what this run trained on ({'; '.join(differ)}: "
                          f"its files changed since, or it is other data); restore the data the run started with, or "
                          f"start a new run with a fresh --run-dir")


def write_fingerprint(run: RunDir, fingerprint: str | None) -> None:
    """Keep the training data's :meth:`selfsup.data.ImageDataset.fingerprint` in the run's
    ``data_fingerprint.json`` beside ``data_info.json`` (written together); None (data without one, e.g. a
    decoded copy) removes a file an earlier session of the run left, which no longer describes its data."""
    from selfsup.fileio import write_json

    if fingerprint is None:
        run.data_fingerprint.unlink(missing_ok=True)
    else:
        write_json({"fingerprint": fingerprint}, run.data_fingerprint)


def same_fingerprint(run: RunDir, fingerprint: str | None) -> bool:
    """Whether ``fingerprint`` (of the training data read now) is the one the run kept when it last started
    (:func:`write_fingerprint`): the data's :meth:`~selfsup.data.ImageDataset.info` is then the run's
    ``data_info.json`` without decoding the images again. False when either is missing."""
    from selfsup.fileio import read_json_or_none

    kept = read_json_or_none(run.data_fingerprint)
    return fingerprint is not None and isinstance(kept, dict) and kept.get("fingerprint") == fingerprint


def kept_info(run: RunDir, fingerprint: str | None) -> DataInfo | None:
    """The run's ``data_info.json`` when the training data read now has the ``fingerprint`` the run kept
    (:func:`same_fingerprint`): a resume then needs no second decoding of up to 10,000 images for the channel
    statistics (minutes of photos) to learn what it holds. None otherwise, or when the file does not read
    as a DataInfo (the data is then decoded and checked as before)."""
    from selfsup.data import DataInfo
    from selfsup.fileio import read_json_or_none

    if not same_fingerprint(run, fingerprint):
        return None
    try:
        return DataInfo.from_json(read_json_or_none(run.data_info))
    except (TypeError, ValueError, KeyError):
        return None


def data_differences(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two :class:`selfsup.data.DataInfo` dicts (a run's ``data_info.json`` and the data
    read now), as "training images 10 then, 14 now" or "channel mean [0.5] then, [0.48] now" (:data:`DATA_INFO_KEYS`;
    keys either lacks are skipped). Both sides are shown alike: per-channel statistics as lists, whether read from
    the JSON file (lists) or from the data now (tuples)."""
    return [f"{what} {_as_list(then[k])} then, {_as_list(now[k])} now" for k, what in DATA_INFO_KEYS.items()
            if k in then and k in now and _as_list(then[k]) != _as_list(now[k])]


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


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
