"""The one LightningModule: wraps any registered method, adds the online probe,
optimiser and schedule, and stores the resolved config in every checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError, RunConfig, build_config, method_name, to_dict
from selfsup.data import CleanTransform, DataInfo
from selfsup.encoders import create_encoder, is_convnet
from selfsup.losses import NonFiniteLossError
from selfsup.methods import METHODS, Method
from selfsup.train.optim import build_optimizer, build_scheduler, max_lr, step_overflowed
from selfsup.train.state import rng_state, set_rng_state
from selfsup.version import __version__

CHECKPOINT_KEY = "selfsup"


# below every temperature in use (0.01-1 in the papers selfsup follows): a non-finite loss with one names it
TINY_TEMPERATURE = 1e-3


class NonFiniteGradientError(NonFiniteLossError):
    """A gradient became NaN or inf although the loss was finite; the message names the first
    parameter hit, the step, the precision and the fix. A subclass of :class:`NonFiniteLossError`
    so that whatever reports that one (the CLI's one-line errors) reports this one too."""


def first_non_finite_grad(named_params: Iterable[tuple[str, nn.Parameter]]) -> str | None:
    """The name of the first parameter whose gradient holds a NaN or an inf; None when every
    gradient is finite (parameters without a gradient are skipped).

    Cheap enough for every step: one fused max-|g| reduction over all gradients
    (``torch._foreach_norm`` with ord=inf: NaN or inf for a gradient with any such element)
    and one host sync; the names are looked at only when something is not finite.
    """
    return first_non_finite([(name, p.grad) for name, p in named_params if p.grad is not None])


def first_non_finite(named: list[tuple[str, Tensor]]) -> str | None:
    """The name of the first tensor of ``named`` holding a NaN or an inf (None when all are finite), by one
    fused max-|x| reduction and one host sync (:func:`first_non_finite_grad`'s test, for any tensors)."""
    if not named:
        return None
    peaks = torch.stack(torch._foreach_norm([t.detach() for _, t in named], float("inf")))  # [P] max |x| per tensor
    finite = torch.isfinite(peaks)  # [P]
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0, 0])][0]


def build_method(cfg: RunConfig, encoder: nn.Module, info: DataInfo) -> Method:
    """The method ``cfg.method`` names, built on ``encoder``.

    Raises:
        ConfigError: (one line) when the method refuses its settings or this encoder (e.g. a
            pixel-reconstruction method that needs a ViT), naming the method and the encoder.
    """
    name = method_name(cfg)
    try:
        return METHODS.get(name)(cfg.method, encoder, info)
    except ConfigError:
        raise
    except ValueError as err:  # the method's own check of its settings against the encoder and data
        raise ConfigError(f"method {name!r} on encoder {cfg.encoder.name!r}: {err}") from None


class PretrainModule(L.LightningModule):
    """Pretrains ``cfg.method`` on a timm encoder.

    When the data has labels and ``trainer.online_probe`` is on, a linear classifier
    is trained on the *detached* features the method returns (it never changes the
    encoder) and scored on the clean test split every ``val_every_n_epochs``.
    """

    def __init__(self, cfg: RunConfig, info: DataInfo) -> None:
        super().__init__()
        self.cfg, self.info = cfg, info
        encoder = create_encoder(cfg.encoder.name, info.in_chans, cfg.encoder.kwargs)
        if cfg.encoder.channels_last and is_convnet(encoder):
            encoder = encoder.to(memory_format=torch.channels_last)
        if cfg.trainer.grad_checkpointing:
            enable_grad_checkpointing(encoder, cfg.encoder.name)
        self.method = build_method(cfg, encoder, info)
        self._stepped_at = 0  # global_step after the last optimiser step seen by on_train_batch_end
        # training batches of fewer than 2 images (Lightning still calls the optimiser, without
        # gradients, and counts a global step) and batches that trained: a run must train one
        self.skipped_batches = self.trained_batches = 0
        use_probe = cfg.trainer.online_probe and info.num_classes > 0
        self.probe = nn.Linear(self.method.num_features, info.num_classes) if use_probe else None
        self.clean = CleanTransform(info.mean, info.std, info.image_size)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor | None:
        images, labels = batch[0], batch[1]
        if images.shape[0] < 2:  # unreadable files were left out of this batch; BatchNorm needs two images
            self.skipped_batches += 1  # counted: a run whose every batch is skipped is an error (train.run)
            return None  # no loss: nothing to backpropagate
        self.trained_batches += 1
        out = self.method.step(images, labels, batch[2] if len(batch) > 2 else None)
        loss = out["loss"]
        if not torch.isfinite(loss):
            self._non_finite(out)
        bs = images.shape[0]
        logs = {f"train/{k}": v for k, v in out.items() if k not in ("loss", "features") and v.ndim == 0}
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=bs)
        if self.probe is not None and "features" in out:
            known = labels >= 0
            if known.any():
                logits = self.probe(out["features"].detach()[known].float())  # [b, classes]
                probe_loss = F.cross_entropy(logits, labels[known])
                acc = (logits.argmax(1) == labels[known]).float().mean()
                self.log("probe/train_acc", acc, on_step=False, on_epoch=True, batch_size=int(known.sum()))
                loss = loss + probe_loss
        return loss

    def _non_finite(self, out: dict[str, Tensor]) -> None:
        terms = {k: float(v.detach()) for k, v in out.items() if k != "features" and v.ndim == 0}
        raise NonFiniteLossError(
            f"the loss is not finite at epoch {self.current_epoch}, step {self.global_step} "
            f"(terms: {terms}, trainer.precision={self._precision()}). The weights of this step were not saved; "
            f"the last good checkpoint is {self._last_checkpoint()}. {self._non_finite_fix()}, "
            f"or check the data for constant images.")

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step; an optimiser step float32 cannot compute (:func:`step_overflowed`) is a
        one-line error naming the learning rate, not a traceback from inside the optimiser.

        Raises:
            NonFiniteLossError: the step size overflows float32.
        """
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        except RuntimeError as err:
            if not step_overflowed(err):
                raise
            raise NonFiniteLossError(
                f"the optimiser's step at learning rate {max_lr(optimizer):g} overflows float32 at epoch "
                f"{self.current_epoch}, step {self.global_step} (an Adam step is up to ten times the lr, "
                f"lr / (1 - 0.9^t)). No optimiser step was taken; the last good checkpoint is {self._last_checkpoint()}. Lower "
                f"optim.lr.") from None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse to step on a non-finite gradient, naming the parameter (the loss was finite).
        Under fp16 with loss scaling (16-mixed) inf gradients are expected: the GradScaler
        skips those steps and lowers its scale, so nothing is checked there.

        Raises:
            NonFiniteGradientError: a parameter's gradient holds a NaN or an inf.
        """
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        name = first_non_finite_grad(self.named_parameters())
        if name is not None:
            raise NonFiniteGradientError(
                f"the gradient of {name} is not finite at epoch {self.current_epoch}, step {self.global_step} "
                f"(trainer.precision={self._precision()}; the loss was finite). No optimiser step was taken; the "
                f"last good checkpoint is {self._last_checkpoint()}. {self._non_finite_fix()}.")

    def _precision(self) -> str:
        return str(self.trainer.precision) if self._trainer is not None else "unknown (no trainer)"

    def _last_checkpoint(self) -> str:
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") if self._trainer is not None else ""
        return ckpt or "none yet"

    def _non_finite_fix(self) -> str:
        temperature = getattr(self.method.cfg, "temperature", None)
        tiny = (f", or raise method.temperature ({temperature:g}: the similarities divided by it reach "
                f"{1 / temperature:.1e}, and their gradients with them)"
                if isinstance(temperature, float) and 0 < temperature < TINY_TEMPERATURE else "")
        if self._precision().startswith(("bf16", "16")):
            # CPUs: oneDNN's bf16 convolution weight-gradient is wrong for some shapes (benchmarks/precision.py)
            return "Set trainer.precision=32-true (half precision is the usual cause), or lower optim.lr" + tiny
        return "Lower optim.lr" + tiny

    def on_train_start(self) -> None:
        self._stepped_at = self.global_step  # > 0 when resumed

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # once per optimiser step: not after batches that only accumulated gradients
        # (trainer.accumulate_grad_batches) or were skipped
        if self.global_step != self._stepped_at:
            self._stepped_at = self.global_step
            self.method.on_train_step_end(self.global_step, self.trainer.estimated_stepping_batches)

    # ---------------------------------------------------------------- online probe
    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        if self.probe is None:
            return
        images, labels = batch[0], batch[1]
        feats = self.method.exported_encoder()(self.clean(images))  # [B, D]
        logits = self.probe(feats.float())
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("probe/val_acc", acc, prog_bar=True, on_epoch=True, batch_size=images.shape[0])

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg.optim
        # world_size counts every process on every node
        global_batch = self.cfg.data.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
        extra = []
        if self.probe is not None:
            extra.append({"params": list(self.probe.parameters()), "lr": cfg.probe_lr, "weight_decay": 0.0})
        opt = build_optimizer(cfg, self.method, global_batch, extra)
        total = int(self.trainer.estimated_stepping_batches)
        batches = self.trainer.num_training_batches  # known once estimated_stepping_batches has run
        per_epoch = max(1, int(batches) if batches != float("inf") else total // max(1, self.trainer.max_epochs))
        sched = build_scheduler(opt, cfg, total, per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """selfsup's block of the checkpoint; non-finite weights are never written.

        Raises:
            NonFiniteLossError: a weight holds NaN or inf (the loss and the gradients were finite, so an
                optimiser update overflowed: helper-53's SGD at lr 3e38 left a checkpoint that evaluation
                then called damaged).
        """
        name = first_non_finite(list(self.named_parameters()))
        if name is not None:
            raise NonFiniteLossError(
                f"the weights of {name} hold NaN or inf at epoch {self.current_epoch}, step {self.global_step}: an "
                f"optimiser update overflowed (the loss and its gradients were finite). This checkpoint was not "
                f"written; the last good checkpoint is {self._last_checkpoint()}. Lower optim.lr.")
        checkpoint[CHECKPOINT_KEY] = {"config": to_dict(self.cfg), "data_info": dataclasses.asdict(self.info),
                                      "version": __version__, "rng": rng_state()}
        if self._trainer is not None:  # metrics on disk before the checkpoint that covers them
            for logger in self.trainer.loggers:
                logger.save()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues the random streams where the checkpoint left them."""
        rng = checkpoint.get(CHECKPOINT_KEY, {}).get("rng")
        if rng is not None:
            set_rng_state(rng)


def enable_grad_checkpointing(encoder: nn.Module, name: str) -> None:
    """timm's activation checkpointing (recompute each block in the backward pass)."""
    try:
        encoder.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError):
        raise ConfigError(f"trainer.grad_checkpointing: timm's {name!r} does not support gradient "
                          f"checkpointing; set it to false") from None


def module_from_checkpoint(checkpoint: dict[str, Any]) -> PretrainModule:
    """Rebuild the module from a checkpoint dict (loaded with ``weights_only=True``)."""
    meta = checkpoint.get(CHECKPOINT_KEY)
    if meta is None:
        raise ValueError("this checkpoint was not written by selfsup (it has no 'selfsup' entry with the config)")
    cfg = build_config(meta["config"])
    info_d = dict(meta["data_info"])
    info = DataInfo(**{**info_d, "mean": tuple(info_d["mean"]), "std": tuple(info_d["std"])})
    module = PretrainModule(cfg, info)
    module.load_state_dict(checkpoint["state_dict"])
    return module
