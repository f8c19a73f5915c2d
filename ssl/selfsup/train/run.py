"""A pretraining run: run directory, data, Lightning Trainer, then evaluation and export."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from selfsup import distributed
from selfsup.config import RunConfig, dump_yaml, load_config
from selfsup.train.state import AtomicCheckpointIO, ResumableCSVLogger
from selfsup.data import build_dataset, make_loader, subset
from selfsup.fileio import write_json, write_text
from selfsup.train.module import PretrainModule

CONFIG_FILE = "config.yaml"


RUN_DIR_ENV = "SELFSUP_RUN_DIR"  # how the processes Lightning launches for DDP find rank 0's run directory


def launched_processes() -> int:
    """Processes started by an external launcher (torchrun, SLURM) for this run; 1 if none."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


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


def pretrain(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
             log: Callable[[str], None] = print) -> Path:
    """Train ``cfg.method``; returns the run directory (config, metrics.csv, checkpoints/)."""
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"cannot resume: {last} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(dump_yaml(cfg), run_dir / CONFIG_FILE)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    train_ds = subset(build_dataset(cfg.data, "train"), cfg.data.subset, cfg.seed)
    bad_files = run_dir / "bad_files.txt"
    train_ds.set_bad_file_log(bad_files)
    info = train_ds.info()
    write_json(dataclasses.asdict(info), run_dir / "data_info.json")
    module = PretrainModule(cfg, info)
    train_loader = make_loader(train_ds, cfg.data.batch_size, train=True, num_workers=cfg.data.num_workers,
                               seed=cfg.seed, with_indices=module.method.needs_indices)
    val_loader = None
    if module.probe is not None:
        val_loader = make_loader(build_dataset(cfg.data, "test"), cfg.data.eval_batch_size, train=False,
                                 num_workers=cfg.data.num_workers)
    log(f"[pretrain] {type(module.method).__name__} on {cfg.data.name} ({len(train_ds)} images, "
        f"{info.in_chans}x{info.image_size}x{info.image_size}), encoder {cfg.encoder.name}, run dir {run_dir}")

    callbacks: list[Any] = [
        # save_top_k=1 without a monitor keeps the newest epoch file; Lightning (>= 2.6) writes
        # last.ckpt only in an epoch that saved one, so top-k 0 would leave no checkpoint until the end
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:03d}", save_last=True,
                        save_top_k=1, every_n_epochs=1, auto_insert_metric_name=False),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    loggers: list[Any] = [ResumableCSVLogger(save_dir=str(run_dir), name="", version="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    if cfg.trainer.compile:
        module.method.encoder.compile()  # in place: parameter names (checkpoints, exports) unchanged
    t = cfg.trainer
    strategy = fsdp_strategy(module, cfg) if t.strategy == "fsdp" else t.strategy
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        sync_batchnorm=t.sync_batchnorm,
        precision=resolve_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches,
        use_distributed_sampler=False,  # EpochShuffle shards the global batches itself
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        limit_train_batches=cfg.trainer.limit_train_batches,
        check_val_every_n_epoch=cfg.trainer.val_every_n_epochs,
        num_sanity_val_steps=0,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
    )
    if trainer.world_size > 1:  # every rank needs the same batch size: replace unreadable files, never drop
        train_ds.keep_batches_full()
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes Lightning's DDP launcher starts
    # Lightning's DDP setup re-seeds every rank with this seed; seeding here too puts one process
    # in the same state, so the random draws of any device count are the same (a resume then
    # restores the checkpoint's generators)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None, weights_only=True)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
    if bad_files.is_file() and trainer.is_global_zero:
        n = len({line.split("\t")[0] for line in bad_files.read_text().splitlines()})
        log(f"[data] {n} unreadable image file(s) were left out (data.on_bad_file=skip); see {bad_files}")
    return run_dir


def fsdp_strategy(module: PretrainModule, cfg: RunConfig) -> Any:
    """Lightning's FSDP with each block of the encoder (``encoder.blocks``: ViTs) its own
    shard unit, so a block's weights are gathered only while it runs (timm's activation
    checkpointing, ``trainer.grad_checkpointing``, composes with it)."""
    from lightning.pytorch.strategies import FSDPStrategy

    from selfsup.config import ConfigError

    if any(name.endswith("teacher") for name, _ in module.method.named_children()):
        raise ConfigError(f"trainer.strategy=fsdp: {type(module.method).__name__}'s momentum teacher is updated "
                          f"from the online weights parameter by parameter, which FSDP shards differently; "
                          f"use trainer.strategy=ddp")
    blocks = getattr(module.method.encoder, "blocks", None)
    policy = {type(b) for b in blocks} if blocks is not None else None
    return FSDPStrategy(auto_wrap_policy=policy)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``trainer.precision`` for Lightning: "auto" is bf16-mixed on GPUs that support bf16
    (Ampere and later) and CPUs with native bf16, 16-mixed (fp16 with loss scaling) on older
    GPUs, 32-true otherwise; any other value is passed through."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.backends.mps.is_available())
    return "bf16-mixed" if on_cpu and cpu_has_bf16() else "32-true"


def evaluate_run(run_dir: Path, cfg: RunConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Evaluate the run's encoder and ``cfg.eval.baselines``; write results.json/.md."""
    from selfsup.eval.evaluate import cache_features, evaluate
    from selfsup.eval.report import markdown_table

    targets = [str(run_dir)] + [f"random:{cfg.encoder.name}" if b == "random" else b for b in cfg.eval.baselines]
    prepared = [None] * len(targets)
    if distributed.is_distributed():  # every rank extracts its share of the features; rank 0 scores them
        quiet = log if distributed.rank() == 0 else lambda s: None
        prepared = [cache_features(t, cfg, run_dir / "features", log=quiet) for t in targets]
        if distributed.rank() != 0:
            return []
    rows = [evaluate(t, cfg, run_dir / "features", log=log, prepared=p) for t, p in zip(targets, prepared)]
    rows[0]["label"] = f"{cfg.method.__class__.__name__.removesuffix('Config')} {cfg.encoder.name} (pretrained)"
    write_json(rows, run_dir / "results.json")
    table = markdown_table(rows)
    write_text(table, run_dir / "results.md")
    return rows


def finish_run(run_dir: Path, cfg: RunConfig, log: Callable[[str], None] = print) -> str | None:
    """Evaluate and export after pretraining; returns the markdown table (None on the ranks
    other than 0 of a distributed run, which only help extract features)."""
    from selfsup.export import export_encoder, results_summary

    rows = evaluate_run(run_dir, cfg, log)
    if distributed.rank() != 0:
        return None
    export_dir = export_encoder(run_dir, run_dir / "export", results=results_summary(rows))
    log(f"[export] encoder written to {export_dir} (loads with timm.create_model, see {export_dir / 'config.json'})")
    return (run_dir / "results.md").read_text()


def saved_config(path: str | Path, overrides: list[str] = ()) -> RunConfig | None:
    """The config a run directory or an export directory was trained with, plus
    ``overrides``; None when ``path`` is neither."""
    from selfsup.config import apply_override, build_config
    from selfsup.export import is_export_dir, read_card

    p = Path(path)
    if (p / CONFIG_FILE).is_file():
        return load_run_config(p, overrides)
    if is_export_dir(p):
        raw = read_card(p)["training_config"]
        for ov in overrides:
            apply_override(raw, ov)
        return build_config(raw)
    return None


def load_run_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a selfsup run directory")
    return load_config(path, overrides)

