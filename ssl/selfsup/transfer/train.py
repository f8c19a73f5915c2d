"""Training and scoring an adapted classifier: one Lightning run per (labelled fraction, seed, learning rate),
the learning rate chosen on a split held out from the training images, the chosen run's final-epoch test
top-1/top-5 reported as mean +- sd over seeds (:func:`run_protocol`)."""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from selfsup.config import ConfigError
from selfsup.data import CleanTransform, DataInfo, ImageDataset, make_loader
from selfsup.data.datasets import Subset
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.linear import DIVERGED_NATS, best_candidate, check_fit_split, check_fraction_splits, class_balanced_subset, \
    fraction_key, held_out_count, selection_warnings, summarise
from selfsup.losses import NonFiniteLossError
from selfsup.schedules import cosine_factors, warmup_steps
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

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.transform(images))  # [B, num_classes]

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]  # [B, C, H, W] uint8, [B]
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.options.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the {self.options.protocol} loss is {loss.item()} at step {self.global_step} "
                                     f"(lr {self.lr:g}): lower the learning rate (--lrs)")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        groups = encoder_param_groups(self.classifier, self.options)
        for g in groups:
            g["lr"] = self.lr * g.pop("lr_scale", 1.0)
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.999))
        last = len(self.factors) - 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: float(self.factors[min(step, last)]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def run_device(trainer: dict[str, Any]) -> str:
    """Where a trained classifier is scored: "cuda" when present and the trainer's accelerator allows it."""
    ok = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    return "cuda" if torch.cuda.is_available() and ok else "cpu"


@torch.no_grad()
def predict(module: TransferModule, ds: ImageDataset, batch_size: int, device: str) -> Tensor:
    """Logits ``[N, num_classes]`` of every image of ``ds``, in order, in eval mode."""
    module.eval().to(device)
    out = [module(batch[0].to(device)).float().cpu() for batch in make_loader(ds, batch_size, train=False)]
    return torch.cat(out)


def fit(encoder: nn.Module, ds: ImageDataset, info: DataInfo, num_classes: int, options: TransferOptions,
        lr: float, seed: int, trainer: dict[str, Any] | None = None) -> tuple[TransferModule, float]:
    """Adapt a copy of ``encoder`` to ``ds`` (labels in ``[0, num_classes)``) with ``options`` at peak ``lr``;
    returns the trained module and the training seconds. ``trainer``: extra ``lightning.Trainer`` keyword
    arguments (accelerator, devices, precision, enable_progress_bar)."""
    torch.manual_seed(seed)  # head, adapters and prompts
    classifier = build_classifier(copy.deepcopy(encoder), num_classes, options)
    loader = make_loader(ds, options.batch_size, train=True, seed=seed)
    module = transfer_module(classifier, info, options, lr, len(loader))
    start = time.perf_counter()
    train_module(module, loader, options.epochs, trainer)
    return module, time.perf_counter() - start


def transfer_module(classifier: Classifier, info: DataInfo, options: TransferOptions, lr: float,
                    steps_per_epoch: int) -> TransferModule:
    """The Lightning module training ``classifier`` for ``options.epochs`` epochs of ``steps_per_epoch``."""
    total = options.epochs * steps_per_epoch
    warmup = warmup_steps(round(options.warmup_epochs * steps_per_epoch), total)
    return TransferModule(classifier, info, options, lr, total, warmup)


def train_module(module: TransferModule, loader: DataLoader, epochs: int, trainer: dict[str, Any] | None = None) -> None:
    """``lightning.Trainer(max_epochs=epochs, **trainer).fit(module, loader)``, without checkpoints or logger;
    the frozen modules' eval mode is intended (:class:`Classifier`), so Lightning's warning about it is
    silenced."""
    kwargs = {"max_epochs": epochs, "logger": False, "enable_checkpointing": False,
              "enable_model_summary": False, "num_sanity_val_steps": 0, "use_distributed_sampler": False,
              "enable_progress_bar": False, **(trainer or {})}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        L.Trainer(**kwargs).fit(module, loader)


def held_out(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (fit, val) positions of ``n`` training images, ``round(fraction * n)`` (at least 1, at most
    n - 1) held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = held_out_count(n, fraction)
    check_fit_split(n, n_val, "this labelled set")  # run_protocol names the fraction before any training
    return perm[n_val:], perm[:n_val]


def one_seed(encoder: nn.Module, train_ds: ImageDataset, test_ds: ImageDataset, info: DataInfo,
             options: TransferOptions, fraction: float, seed: int, trainer: dict[str, Any],
             log: Callable[[str], None]) -> tuple[dict[str, Any], TransferModule]:
    """One seed of one labelled fraction: every lr trained on the fit part, the best on the held-out part
    kept; its final-epoch test top-1/top-5, held-out top-1, lr and training seconds (all lrs), and module."""
    idx = (class_balanced_subset(train_ds.labels, fraction, seed) if fraction < 1
           else torch.arange(len(train_ds)))  # [n]
    fit_pos, val_pos = held_out(len(idx), options.val_fraction, seed)
    fit_ds, val_ds = Subset(train_ds, idx[fit_pos].tolist()), Subset(train_ds, idx[val_pos].tolist())
    device, seconds, scores, kept = run_device(trainer), 0.0, [], None
    for lr in options.lrs:
        module, secs = fit(encoder, fit_ds, info, train_ds.num_classes, options, lr, seed, trainer)
        seconds += secs
        logits = predict(module, val_ds, options.batch_size, device)  # [V, num_classes]
        val = topk_accuracy(logits, val_ds.labels, (1,))["top1"]
        loss = F.cross_entropy(logits, val_ds.labels).item()
        log(f"[{options.protocol}] {fraction * 100:g}% of labels, seed {seed}, lr {lr:g}: held-out top-1 {val:.2f}% "
            f"(cross-entropy {loss:.3f}, {len(val_ds)} image(s))")
        scores.append((val, loss))
        if best_candidate(scores, train_ds.num_classes) == len(scores) - 1:
            kept = module  # only the best so far stays in memory (each is a whole adapted encoder)
    best = best_candidate(scores, train_ds.num_classes)  # ties: the lower held-out cross-entropy; a diverged lr (non-finite) never
    if best is None:
        raise ConfigError(f"--protocol {options.protocol}: every lr in {options.lrs} diverged (held-out cross-entropy "
                          f"not finite, or over {DIVERGED_NATS:g} x ln(classes)) at {fraction * 100:g}% of labels, "
                          f"seed {seed}: lower --transfer lrs")
    (val, _), lr, module = scores[best], options.lrs[best], kept
    test = topk_accuracy(predict(module, test_ds, options.batch_size, device), test_ds.labels)
    return {**test, "val_top1": val, "lr": lr, "weight_decay": options.weight_decay, "seconds": seconds,
            "train_images": len(idx), "val_images": len(val_ds)}, module


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

    Raises:
        ConfigError: a protocol the encoder cannot take (prompt on a convnet), a missing peft, too few stages.
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
                          f"--protocol {options.protocol}", "eval.low_shot (or --transfer low_shot)")
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
                exported = export_transfer(module.classifier, card, options, out_dir,
                                           {"fraction": fraction, "seed": seed, **run})
        warnings = selection_warnings(options.protocol, fraction, runs[0]["train_images"], len(train_ds),
                                      runs[0]["val_images"], train_ds.num_classes, len(options.lrs))
        for warning in warnings:
            log(f"[{options.protocol}] warning: {warning}")
        rows.append({"key": fraction_key(fraction).replace("linear", options.protocol, 1),
                     "protocol": options.protocol, "fraction": fraction,
                     "train_images": runs[0]["train_images"], "val_images": runs[0]["val_images"],
                     "warnings": warnings, **summarise(runs),
                     "val_top1": sum(r["val_top1"] for r in runs) / len(runs),
                     "minutes": sum(r["seconds"] for r in runs) / len(runs) / 60,
                     **trainable_summary(module.classifier, encoder_params), "options": asdict(options)})
        if on_row is not None:
            on_row(rows[-1])
    return rows

