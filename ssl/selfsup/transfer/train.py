"""Training and scoring an adapted classifier: one Lightning run per (labelled fraction, seed, learning rate),
the learning rate chosen on a split held out from the training images, the chosen run's final-epoch test
top-1/top-5 reported as mean +- sd over seeds (:func:`run_protocol`).

Several devices (``trainer`` with ``devices`` x ``num_nodes`` > 1, Lightning's DDP): every process runs the
same loop over fractions, seeds and learning rates, and each run is data-parallel with the global batch
``options.batch_size`` split evenly over the R processes (:func:`per_process_batch`). The sampler
(:class:`selfsup.data.EpochShuffle`, seeded per run) gives rank r the r-th contiguous slice of every global
batch, so the R processes of a step see exactly the images one process of batch ``options.batch_size``
sees, and DDP's mean of the per-process gradients of per-process mean losses is the gradient of the mean
loss over the global batch: the weights agree with one process's to float tolerance
(tests/test_transfer_ddp.py). Two things differ by design: a BatchNorm layer that trains normalises by the
statistics of its process's share of the batch (``trainer.sync_batchnorm`` makes them global, on GPUs), and
stochastic depth (``drop_path``) is drawn per process. Held-out and test images are predicted in shares
(:func:`predict`), scored once on rank 0 and the scores sent to every rank, so every process keeps the same
learning rate; the export, ``on_row`` and the log lines are rank 0's only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from selfsup import distributed
from selfsup.config import ConfigError
from selfsup.data import CleanTransform, DataInfo, ImageDataset, make_loader
from selfsup.data.datasets import Subset
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.linear import DIVERGED_NATS, best_candidate, check_fit_split, check_fraction_splits, \
    class_balanced_subset, diverged_loss, fit_sizes, fraction_key, held_out_count, name_fractions, selection_warnings, summarise
from selfsup.schedules import cosine_factors, warmup_steps
from selfsup.train.optim import step_overflowed
from selfsup.train.resume import check_sync_batchnorm
from selfsup.transfer.options import TransferOptions
from selfsup.transfer.protocols import Classifier, build_classifier, count_params, encoder_param_groups, \
    trainable_summary


class TransferModule(L.LightningModule):
    """Lightning wrapper of a :class:`Classifier`: uint8 images ``[B, C, H, W]`` are normalised and resized
    to the encoder's input (:class:`CleanTransform`), cross-entropy with label smoothing, AdamW over
    :func:`encoder_param_groups` (each group's lr = peak lr x its ``lr_scale``), per-step linear warmup then
    cosine decay (:func:`selfsup.schedules.cosine_factors`)."""

    def __init__(self, classifier: Classifier, info: DataInfo, options: TransferOptions, lr: float,
                 total_steps: int, warmup_steps: int) -> None:
        super().__init__()
        self.classifier, self.options, self.lr = classifier, options, lr
        self.transform = CleanTransform(info.mean, info.std, info.image_size)
        self.factors = cosine_factors(total_steps, warmup_steps, options.min_lr_ratio)  # [total + 1]
        self.train_seconds, self._started = 0.0, 0.0
        self.diverged_at: int | None = None  # the step whose training loss was not finite (the run stopped there)
        self.epoch_loss: list[Tensor] = []  # the global mean training loss of each step of the current epoch
        self.last_epoch_loss = math.nan  # the mean training loss over the last epoch trained (nats)

    def on_train_start(self) -> None:  # after Lightning's setup: DDP's start of the other processes is not counted
        self._started = time.perf_counter()

    def on_train_end(self) -> None:
        self.train_seconds = time.perf_counter() - self._started

    def on_train_epoch_start(self) -> None:
        self.epoch_loss = []

    def on_train_epoch_end(self) -> None:
        if self.epoch_loss:  # one host sync an epoch, not one a step
            self.last_epoch_loss = float(torch.stack(self.epoch_loss).mean())

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.transform(images))  # [B, num_classes]

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]  # [B, C, H, W] uint8, [B]
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.options.label_smoothing)
        # the mean over the global batch (every process's batch has the same size): all processes stop at the
        # same step with the same message, and the bar shows what one process of the global batch would
        whole = distributed.all_reduce_mean(loss.detach())
        if self.diverged_at is not None or not torch.isfinite(whole):
            # this lr diverged: training stops, on every process at the same step (the mean is global), and
            # the lr is left out of the choice, the others' results kept. The step's loss is a zero with a
            # (zero) gradient for every trainable weight: under DDP a step must return a loss on every rank
            # (Lightning refuses None there), and the module is never scored or exported
            if self.diverged_at is None:
                self.diverged_at = self.global_step
            self.trainer.should_stop = True
            return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)
        self.log("train/loss", whole, prog_bar=True)
        self.epoch_loss.append(whole.detach())
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step; a step AdamW cannot compute in float32 (:func:`step_overflowed`: AdamW's first step is ten
        times the lr, beyond float32 for an lr above 3.4e37) makes this lr diverged, as a non-finite loss
        does, instead of a traceback that ended every lr's run."""
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        except RuntimeError as err:
            if not step_overflowed(err):
                raise
            if self.diverged_at is None:
                self.diverged_at = self.global_step
            self.trainer.should_stop = True

    def configure_optimizers(self) -> dict[str, Any]:
        groups = encoder_param_groups(self.classifier, self.options)
        for g in groups:
            g["lr"] = self.lr * g.pop("lr_scale", 1.0)
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.999))
        last = len(self.factors) - 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: float(self.factors[min(step, last)]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def run_device(trainer: dict[str, Any]) -> str:
    """Where a trained classifier is scored: :func:`selfsup.eval.target.default_device` of the trainer's
    accelerator, as every frozen evaluation decides it."""
    from selfsup.eval.target import default_device

    return default_device(trainer.get("accelerator", "auto"))


@torch.no_grad()
def predict(module: TransferModule, ds: ImageDataset, batch_size: int, device: str) -> Tensor:
    """Logits ``[N, num_classes]`` of every image of ``ds``, in order, in eval mode.

    Distributed (a collective: every rank calls it): each rank predicts a contiguous share of the batches of
    ``batch_size`` (the batches one process would run, so each image's logits are computed as there), and
    rank 0 gets all ``N`` rows in order (:func:`selfsup.distributed.gather_to_rank0`); the other ranks get
    their own share back."""
    module.eval().to(device)
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1:
        batches = math.ceil(len(ds) / batch_size)
        lo, hi = rank * batches // world * batch_size, min(len(ds), (rank + 1) * batches // world * batch_size)
        ds = Subset(ds, list(range(lo, hi)))
    out = [module(batch[0].to(device)).float().cpu() for batch in make_loader(ds, batch_size, train=False)
           ] if len(ds) else []
    width = module.classifier.head.out_features if not out else out[0].shape[1]
    logits = torch.cat(out) if out else torch.zeros(0, width)  # [n, num_classes]
    return distributed.gather_to_rank0(logits)


def scored_on_rank_zero(score: Callable[[], Any]) -> Any:
    """``score()`` computed on rank 0 (which holds every prediction, :func:`predict`) and sent to every rank,
    so that all processes make the same choice; ``score()`` itself in one process."""
    if not distributed.is_distributed():
        return score()
    return distributed.broadcast_object(score() if distributed.rank() == 0 else None)


def trainer_kwargs(epochs: int, trainer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``lightning.Trainer`` keyword arguments of a transfer run: ``max_epochs=epochs``, one device, no
    checkpoints, logger, model summary, sanity check or progress bar, and Lightning's distributed sampler off
    (:class:`selfsup.data.EpochShuffle` shards the global batches), each overridden by ``trainer``."""
    return {"max_epochs": epochs, "devices": 1, "logger": False, "enable_checkpointing": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "use_distributed_sampler": False,
            "enable_progress_bar": False, **(trainer or {})}


def process_count(trainer: dict[str, Any] | None = None) -> int:
    """Processes a fit with ``trainer`` (:func:`trainer_kwargs`) runs on: Lightning's resolution of its
    accelerator, devices and num_nodes (``auto`` included); nothing is launched.

    Raises:
        ConfigError: (one line) ``strategy`` fsdp on several processes: it shards pretraining's large ViTs,
            the transfer protocols train data-parallel (ddp); ``sync_batchnorm`` on several processes without
            GPUs (:func:`selfsup.train.resume.check_sync_batchnorm`)."""
    kwargs = trainer_kwargs(1, trainer)
    if str(kwargs["devices"]) in ("1", "[0]") and kwargs.get("num_nodes", 1) == 1:
        return 1  # nothing to resolve: no Trainer built
    strategy = kwargs.get("strategy", "auto")
    fsdp = isinstance(strategy, str) and strategy.startswith("fsdp")
    with lightning_info_off():  # a count, not a run: no "GPU available" lines
        probe = make_trainer({**kwargs, "strategy": "auto"} if fsdp else kwargs)
    processes = probe.world_size
    check_sync_batchnorm(bool(kwargs.get("sync_batchnorm")), processes, probe.accelerator)
    if fsdp and processes > 1:
        raise ConfigError(f"trainer.strategy={strategy} shards pretraining's large ViTs; the transfer protocols "
                          f"train data-parallel: use trainer.strategy=ddp (or auto)")
    return processes


def per_process_batch(batch_size: int, processes: int) -> int:
    """Each process's share of the global batch ``batch_size`` (``options.batch_size``, images per step
    whatever the device count).

    Raises:
        ConfigError: (one line) ``batch_size`` not divisible by ``processes``, naming the nearest sizes
            that are and the one-device fix."""
    if batch_size % processes:
        lower, upper = batch_size // processes * processes, (batch_size // processes + 1) * processes
        sizes = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(f"--transfer batch_size={batch_size} is the global batch of every step, which "
                          f"{processes} processes (trainer.devices x trainer.num_nodes) must split evenly: give "
                          f"--transfer batch_size={sizes}, or trainer.devices=1")
    return batch_size // processes


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimiser steps per epoch over ``n_images`` at global batch ``batch_size``: the incomplete last batch
    is dropped (one short batch when the images are fewer than one batch, in one process only), on any
    number of processes (:func:`selfsup.data.make_loader`, :class:`selfsup.data.EpochShuffle`)."""
    return max(1, n_images // batch_size)


def fit(encoder: nn.Module, ds: ImageDataset, info: DataInfo, num_classes: int, options: TransferOptions,
        lr: float, seed: int, trainer: dict[str, Any] | None = None) -> tuple[TransferModule, float]:
    """Adapt a copy of ``encoder`` to ``ds`` (labels in ``[0, num_classes)``) with ``options`` at peak ``lr``;
    returns the trained module and the training seconds. ``trainer``: extra ``lightning.Trainer`` keyword
    arguments (accelerator, devices, num_nodes, strategy, precision, enable_progress_bar). On R processes each
    takes ``options.batch_size / R`` images of every global batch (see the module docstring). The seconds
    are those of the training loop (Lightning's ``on_train_start`` to ``on_train_end``), without the setup.

    Raises:
        ConfigError: :func:`process_count`, :func:`per_process_batch`."""
    torch.manual_seed(seed)  # head, adapters and prompts (DDP then copies rank 0's to the other ranks)
    classifier = build_classifier(copy.deepcopy(encoder), num_classes, options)
    with lightning_info_off():  # run_protocol says once where the runs train
        run = make_trainer(trainer_kwargs(options.epochs, trainer))
    batch = per_process_batch(options.batch_size, run.world_size)
    if run.world_size > 1:  # an unreadable file is replaced, never dropped: every rank's batch has one size
        ds.keep_batches_full()
    loader = make_loader(ds, batch, train=True, seed=seed)  # EpochShuffle: rank r's slice of each global batch
    module = transfer_module(classifier, info, options, lr, steps_per_epoch(len(ds), options.batch_size))
    fit_module(run, module, loader)
    return module, module.train_seconds


def transfer_module(classifier: Classifier, info: DataInfo, options: TransferOptions, lr: float,
                    steps_per_epoch: int) -> TransferModule:
    """The Lightning module training ``classifier`` for ``options.epochs`` epochs of ``steps_per_epoch``."""
    total = options.epochs * steps_per_epoch
    warmup = warmup_steps(round(options.warmup_epochs * steps_per_epoch), total)
    return TransferModule(classifier, info, options, lr, total, warmup)


@contextlib.contextmanager
def lightning_info_off() -> Iterator[None]:
    """Lightning's info lines off while a Trainer is built ("GPU available: ...", "TPU available: ...",
    four lines a Trainer): a transfer protocol builds one per fit (lrs x seeds x fractions), and
    :func:`run_protocol` says once where the runs train. Warnings still show."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def make_trainer(kwargs: dict[str, Any]) -> L.Trainer:
    """``lightning.Trainer(**kwargs)`` (:func:`trainer_kwargs`); building one launches no process."""
    return L.Trainer(**kwargs)


def fit_module(run: L.Trainer, module: TransferModule, loader: DataLoader) -> None:
    """``run.fit(module, loader)``; the frozen modules' eval mode is intended (:class:`Classifier`), so
    Lightning's warning about it is silenced. With DDP's launcher the first fit of rank 0 starts the other
    processes (each re-runs this program's command); later fits reuse them and the process group."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        run.fit(module, loader)


def train_module(module: TransferModule, loader: DataLoader, epochs: int, trainer: dict[str, Any] | None = None) -> None:
    """``lightning.Trainer(max_epochs=epochs, **trainer).fit(module, loader)`` (:func:`trainer_kwargs`:
    one device unless ``trainer`` names more, without checkpoints or logger)."""
    fit_module(make_trainer(trainer_kwargs(epochs, trainer)), module, loader)


def held_out(n: int, fraction: float, seed: int, choices: int = 2) -> tuple[Tensor, Tensor]:
    """Seeded (fit, val) positions of ``n`` training images, ``round(fraction * n)`` (at least 1, at most
    n - 1) held out to choose among ``choices`` lrs; none held out for a single lr (nothing to choose)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = held_out_count(n, fraction, choices)
    check_fit_split(n, n_val, "this labelled set")  # run_protocol names the fraction before any training
    return perm[n_val:], perm[:n_val]


def one_seed(encoder: nn.Module, train_ds: ImageDataset, test_ds: ImageDataset, info: DataInfo,
             options: TransferOptions, fraction: float, seed: int, trainer: dict[str, Any],
             log: Callable[[str], None]) -> tuple[dict[str, Any], TransferModule]:
    """One seed of one labelled fraction: every lr trained on the fit part, the best on the held-out part
    kept; its final-epoch test top-1/top-5, held-out top-1, lr and training seconds (all lrs), and module.
    A single lr has nothing to choose: it trains on every image, and its held-out top-1 is None."""
    idx = (class_balanced_subset(train_ds.labels, fraction, seed) if fraction < 1
           else torch.arange(len(train_ds)))  # [n]
    fit_pos, val_pos = held_out(len(idx), options.val_fraction, seed, len(options.lrs))
    fit_ds, val_ds = Subset(train_ds, idx[fit_pos].tolist()), Subset(train_ds, idx[val_pos].tolist())
    device, seconds, scores, kept, diverged = run_device(trainer), 0.0, [], None, []
    single = len(options.lrs) == 1  # nothing to choose, nothing held out
    for lr in options.lrs:
        module, secs = fit(encoder, fit_ds, info, train_ds.num_classes, options, lr, seed, trainer)
        seconds += secs
        where = f"[{options.protocol}] {fraction * 100:g}% of labels, seed {seed}, lr {lr:g}"
        # nothing held out for a single lr: its last epoch's training loss says whether it diverged, by the
        # criterion held-out cross-entropies meet (diverged_loss)
        why = (f"training loss not finite at step {module.diverged_at}" if module.diverged_at is not None else
               f"last epoch's training loss {module.last_epoch_loss:.4g} nats (over {DIVERGED_NATS:g} x "
               f"ln(classes), or not finite)" if single and diverged_loss(module.last_epoch_loss, train_ds.num_classes)
               else None)
        if why:  # never a candidate (on every rank: the losses are global means)
            scores.append((0.0, math.inf))
            diverged.append(lr)
            log(f"{where}: {why}; diverged" + ("" if single else ", not a candidate"))
            continue
        if single:
            scores.append((None, None))
            kept = module
            continue
        logits = predict(module, val_ds, options.batch_size, device)  # [V, num_classes] (rank 0: all V rows)
        val, loss = scored_on_rank_zero(lambda: (topk_accuracy(logits, val_ds.labels, (1,))["top1"],
                                                 F.cross_entropy(logits, val_ds.labels).item()))
        scores.append((val, loss))
        gone = diverged_loss(loss, train_ds.num_classes)  # never chosen
        if gone:
            diverged.append(lr)
        log(f"{where}: held-out top-1 {val:.2f}% (cross-entropy {loss:.3f}, {len(val_ds)} image(s))"
            + ("; diverged, not a candidate" if gone else ""))
        if best_candidate(scores, train_ds.num_classes) == len(scores) - 1:
            kept = module  # only the best so far stays in memory (each is a whole adapted encoder)
    # ties: the lower held-out cross-entropy; a diverged lr never; a single lr untried unless it diverged
    best = (0 if kept is not None else None) if single else best_candidate(scores, train_ds.num_classes)
    if best is None:
        judged = "the last epoch's training loss" if single else "the held-out cross-entropy"
        raise ConfigError(f"--protocol {options.protocol}: every lr in {options.lrs} diverged (training loss not "
                          f"finite, or {judged} over {DIVERGED_NATS:g} x ln(classes) or not finite) at "
                          f"{fraction * 100:g}% of labels, seed {seed}: lower --transfer lrs")
    (val, _), lr, module = scores[best], options.lrs[best], kept
    logits = predict(module, test_ds, options.batch_size, device)  # [N, num_classes] (rank 0: all N rows)
    test = scored_on_rank_zero(lambda: topk_accuracy(logits, test_ds.labels))
    return {**test, "val_top1": val, "lr": lr, "weight_decay": options.weight_decay, "seconds": seconds,
            "train_images": len(idx), "val_images": len(val_ds), "diverged_lrs": diverged,
            "train_loss": module.last_epoch_loss}, module


def diverged_warnings(runs: list[dict[str, Any]], first_seed: int, row: str) -> list[str]:
    """One line per learning rate that diverged (a training loss that was not finite, or a held-out
    cross-entropy past ``DIVERGED_NATS x ln(classes)``) in any seed of ``runs`` (:func:`one_seed`'s
    rows, seeds ``first_seed, first_seed + 1, ...``) of ``row`` (e.g. "the bitfit at 10% labels"): it was
    never chosen, so the row's lr is the best of the others, which the results then say."""
    seeds: dict[float, list[int]] = {}
    for i, run in enumerate(runs):
        for lr in run.get("diverged_lrs", []):
            seeds.setdefault(lr, []).append(first_seed + i)
    return [f"{row}: lr {lr:g} diverged at seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))} of {len(runs)} "
            f"(never chosen; the reported lr is the best of the others)" for lr, s in seeds.items()]


POOR_FIT = 2.0  # a reported lr whose last epoch's training loss is above this many times ln(classes): warned


def poor_fit_warnings(runs: list[dict[str, Any]], first_seed: int, row: str, num_classes: int) -> list[str]:
    """One line when the reported lr of any seed of ``runs`` ended its last epoch at a training loss above
    :data:`POOR_FIT` x ln(classes), twice a uniform guess's: worse than guessing on its own training images,
    the mark of a fit that ran away without passing the divergence limit (a single lr of 10 gave 232
    nats and 4% top-1 on 10 classes, below chance). A single lr is never held-out scored, so this is
    the only word on it; the numbers are kept, the warning goes into results.md and the row."""
    limit = POOR_FIT * math.log(max(2, num_classes))
    bad = [(first_seed + i, r["train_loss"]) for i, r in enumerate(runs)
           if not math.isfinite(r.get("train_loss", 0.0)) or r.get("train_loss", 0.0) > limit]
    if not bad:
        return []
    seeds = ", ".join(f"{s} ({loss:.3g} nats)" for s, loss in bad)
    return [f"{row}: the reported lr ended its last epoch at a training loss above {POOR_FIT:g} x ln(classes) = "
            f"{limit:.3g} nats at seed{'s' if len(bad) > 1 else ''} {seeds}, worse than a uniform guess on its own "
            f"training images: the fit may have diverged; try lower --transfer lrs (several are chosen on held-out "
            f"images)"]


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def check_processes(encoder: nn.Module, labels: Tensor, options: TransferOptions, trainer: dict[str, Any] | None,
                    log: Callable[[str], None] = print) -> int:
    """The processes each run trains on (:func:`process_count`), checked before any training: on several,
    ``options.batch_size`` must split evenly (:func:`per_process_batch`) and every labelled fraction must
    leave at least one global batch to fit (one process takes a smaller set as one short batch, which R
    processes cannot split; on one process a fraction smaller than a batch trains one short batch per
    epoch, which is logged). Logs the split, and that BatchNorm layers that train use per-process
    statistics unless ``trainer`` sets ``sync_batchnorm``. ``labels``: ``[N]`` of the training images.

    Raises:
        ConfigError: (one line) naming the setting and the fix."""
    processes = process_count(trainer)
    p, batch = options.protocol, options.batch_size
    sizes = fit_sizes(labels, options.fractions, options.val_fraction, options.seed, len(options.lrs))
    short = {f: n_fit for f, (_, n_fit) in sizes.items() if n_fit < batch}
    if processes == 1:
        for f, n_fit in short.items():  # it trains, on a smaller batch than the one asked for
            log(f"[{p}] note: {name_fractions([f])} fits {n_fit} images, fewer than one batch of {batch} "
                f"(--transfer batch_size): each epoch is one step of {n_fit} images (lower batch_size to compare "
                f"at equal batch)")
        return 1
    share = per_process_batch(batch, processes)
    if short:  # every fraction named at once, with a fix that covers them all
        n_fit = next(iter(short.values()))
        fits = min(short.values()) // processes * processes
        lower = f"lower --transfer batch_size to at most {fits}, " if fits else ""
        low = [f"{f:g}" for f in short if f < 1]
        low_shot = f"drop {', '.join(low)} from --transfer low_shot=[...] (default: eval.low_shot), " if low else ""
        raise ConfigError(f"--protocol {p} at {name_fractions(list(short))} fits {n_fit} images, fewer than one "
                          f"global batch of {batch} (--transfer batch_size), which {processes} processes cannot "
                          f"split as one process would (one short batch): {lower}{low_shot}or use trainer.devices=1")
    log(f"[{p}] each run trains data-parallel on {processes} processes, {share} images each of every global "
        f"batch of {batch}")
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    if batchnorm and p in ("finetune", "partial", "bitfit") and not (trainer or {}).get("sync_batchnorm"):
        log(f"[{p}] note: the BatchNorm layers that train normalise by each process's {share} images, not by the "
            f"global batch of {batch} as one process does (trainer.sync_batchnorm=true shares the statistics, on GPUs)")
    return processes


def run_protocol(encoder: nn.Module, card: dict[str, Any], train_ds: ImageDataset, test_ds: ImageDataset,
                 options: TransferOptions, out_dir: str | Path | None = None, log: Callable[[str], None] = print,
                 trainer: dict[str, Any] | None = None,
                 on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Adapt ``encoder`` (a timm encoder with ``num_classes=0``; not changed) by ``options.protocol`` on the
    labelled ``train_ds`` for every fraction of ``options.fractions`` and ``options.seeds`` seeds, score on
    ``test_ds``, and return one row per fraction: the key (``finetune``, ``finetune_10pct``, ...),
    top-1/top-5 mean, sd and per-seed values, the mean held-out top-1, trainable parameters (count, and %
    of the encoder's), and training minutes (mean per seed, all lrs). ``card``: the encoder's export card
    (:func:`selfsup.artifacts.load.load_encoder_and_card`; or :func:`selfsup.transfer.export.minimal_card`),
    whose ``mean``, ``std`` and ``input_size`` feed the encoder. With ``out_dir`` the first seed's
    all-labels classifier is exported there (:func:`selfsup.transfer.export.export_transfer`).
    ``on_row`` is called with each fraction's row as soon as it is done (a long run saves as it goes).
    ``trainer``: ``lightning.Trainer`` keyword arguments (:func:`trainer_kwargs`; one device unless it names
    more). On several processes (see the module docstring) every process must call this with the same
    arguments; the scores, and so the chosen learning rates, are the same on every rank, and only rank 0
    logs, exports and calls ``on_row``.

    Raises:
        ConfigError: a protocol the encoder cannot take (prompt on a convnet), a missing peft, too few stages;
            on several processes a global batch they cannot split (:func:`check_processes`).
        DataError: images whose channels differ from the encoder's.
    """
    from selfsup.artifacts.card import card_info
    from selfsup.data import DataError

    info = card_info(card)
    if train_ds.in_chans != info.in_chans or test_ds.in_chans != info.in_chans:
        raise DataError(f"the encoder takes {info.in_chans}-channel images but the data has "
                        f"{train_ds.in_chans}-channel ones: evaluate on data with {info.in_chans} channel(s)")
    if train_ds.num_classes < 2:
        raise ConfigError(f"--protocol {options.protocol} needs labelled data of two or more classes")
    check_fraction_splits(train_ds.labels, options.fractions, options.val_fraction, options.seed,
                          f"--protocol {options.protocol}", "--transfer low_shot=[...] (default: eval.low_shot)",
                          len(options.lrs))
    log = log if distributed.is_rank_zero() else _silent
    processes = check_processes(encoder, train_ds.labels, options, trainer, log)
    t = trainer or {}
    log(f"[{options.protocol}] each run trains on {run_device(t)} ({processes} process{'es' if processes > 1 else ''}, "
        f"precision {t.get('precision', '32-true')}; Lightning's own device lines are left out)")
    if not distributed.is_rank_zero():  # the results are rank 0's to hand over
        on_row = None
    encoder_params = count_params(encoder)
    rows, exported = [], None
    for fraction in options.fractions:
        runs = []
        for seed in range(options.seed, options.seed + options.seeds):
            run, module = one_seed(encoder, train_ds, test_ds, info, options, fraction, seed, dict(trainer or {}),
                                   log)
            runs.append(run)
            if exported is None and out_dir is not None:
                from selfsup.transfer.export import export_transfer

                module.classifier.cpu()
                exported = (export_transfer(module.classifier, card, options, out_dir,
                                            {"fraction": fraction, "seed": seed, **run})
                            if distributed.is_rank_zero() else out_dir)  # written once
        warnings = selection_warnings(options.protocol, fraction, runs[0]["train_images"], len(train_ds),
                                      runs[0]["val_images"], train_ds.num_classes, len(options.lrs))
        row_name = f"the {options.protocol} at {fraction * 100:g}% labels"
        warnings += diverged_warnings(runs, options.seed, row_name)
        warnings += poor_fit_warnings(runs, options.seed, row_name, train_ds.num_classes)
        for warning in warnings:
            log(f"[{options.protocol}] warning: {warning}")
        rows.append({"key": fraction_key(fraction).replace("linear", options.protocol, 1),
                     "protocol": options.protocol, "fraction": fraction, "num_classes": train_ds.num_classes,
                     "train_images": runs[0]["train_images"], "val_images": runs[0]["val_images"],
                     "warnings": warnings, **summarise(runs),
                     "diverged_lrs": sorted({lr for r in runs for lr in r["diverged_lrs"]}), "processes": processes,
                     "val_top1": None if runs[0]["val_top1"] is None else sum(r["val_top1"] for r in runs) / len(runs),
                     "minutes": sum(r["seconds"] for r in runs) / len(runs) / 60,
                     **trainable_summary(module.classifier, encoder_params), "options": asdict(options)})
        if on_row is not None:
            on_row(rows[-1])
    return rows

