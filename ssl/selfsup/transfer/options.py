"""The options of a transfer run (``selfsup eval TARGET --protocol NAME``), with the papers' defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from selfsup.config import ConfigError

PROTOCOLS = ("finetune", "partial", "lora", "prompt", "bitfit")
VIT_ONLY = ("prompt",)  # protocols that need a timm VisionTransformer
# options that change one protocol's training only: option -> the protocols it applies to (the rest apply to all)
APPLIES_TO = {"partial_blocks": ("partial",), "lora_rank": ("lora",), "lora_alpha": ("lora",),
              "lora_dropout": ("lora",), "prompt_tokens": ("prompt",), "prompt_deep": ("prompt",),
              "drop_path": ("finetune", "partial"), "layer_decay": ("finetune", "partial")}
VIT_OPTIONS = ("layer_decay",)  # options that change a ViT's training only (convnets get no layer decay)


@dataclass
class TransferOptions:
    """How an encoder is adapted and scored.

    Protocols (:data:`PROTOCOLS`):

    - ``finetune``: every encoder parameter and a linear head. MAE's fine-tuning recipe (He et al. 2022,
      "Masked Autoencoders Are Scalable Vision Learners", appendix A.1): AdamW (betas 0.9, 0.999), weight decay
      0.05, layer-wise lr decay 0.65-0.75 for ViTs (timm's ``param_groups_layer_decay``; BEiT, Bao et al. 2022),
      linear warmup then cosine decay, label smoothing 0.1 and drop path 0.1; convnets get the same schedule
      without layer decay.
    - ``partial``: the last ``partial_blocks`` stages (ViT blocks, ResNet stages) and everything after them
      trainable, the rest frozen and in eval mode (MAE's partial fine-tuning, sec. 4.3).
    - ``lora``: low-rank adapters ``W + (alpha / r) B A`` with B zero-initialised (Hu et al. 2022, "LoRA:
      Low-Rank Adaptation of Large Language Models"), through Hugging Face ``peft``'s ``LoraConfig`` on the
      attention and MLP linear layers of a ViT's blocks, on the convolutions of a convnet's stages.
    - ``prompt``: visual prompt tuning (Jia et al. 2022, "Visual Prompt Tuning"): ``prompt_tokens`` learnable
      tokens inserted after the class token at the input (shallow) or before every block (``prompt_deep``),
      the ViT frozen; VPT's defaults are 50 tokens at lr chosen by a grid, we default to 10 for small models.
    - ``bitfit``: only biases and normalisation parameters (Ben Zaken et al. 2022, "BitFit: Simple
      Parameter-efficient Fine-tuning for Transformer-based Masked Language-models").

    Options that change one protocol's training only (:data:`APPLIES_TO`; ``layer_decay`` a ViT's only) are
    refused when ``given`` (set by the user) for another protocol or a convnet, rather than ignored.

    The head is always trainable. ``lrs``: the learning rates tried (the peak lr of the schedule, as MAE's
    ``blr * batch / 256``); the one whose run scores best on the split held out from the training images
    (``val_fraction`` of them, seeded) is kept and its final-epoch test top-1/top-5 reported.
    """

    protocol: str = "finetune"
    epochs: int = 20
    batch_size: int = 64
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    weight_decay: float = 0.05  # MAE fine-tuning
    layer_decay: float = 0.75  # MAE: 0.75 for ViT-B, 0.65 for ViT-L/H
    warmup_epochs: float = 1.0  # MAE: 5 of 100; never more than half the run (selfsup.schedules.warmup_steps)
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1  # MAE fine-tuning
    drop_path: float = 0.1  # MAE fine-tuning (ViT-B); used by finetune and partial only
    partial_blocks: int = 1  # K: the last K stages trained (MAE fig. 9 varies K)
    lora_rank: int = 8  # Hu et al.: r in {1, 2, 4, 8, 64}
    lora_alpha: float = 16.0  # peft's common choice: alpha = 2r
    lora_dropout: float = 0.0
    prompt_tokens: int = 10
    prompt_deep: bool = False  # VPT-deep: new prompt tokens at every block
    low_shot: list[float] = field(default_factory=lambda: [0.01, 0.1])  # besides all labels (1.0)
    seeds: int = 3
    seed: int = 0
    val_fraction: float = 0.1
    given: list[str] = field(default_factory=list)  # the options the user set: each must apply (check_options)

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def fractions(self) -> list[float]:
        """Labelled fractions run: all labels first, then the low-shot ones (largest first)."""
        return [1.0] + sorted({f for f in self.low_shot if f < 1}, reverse=True)


def check_options(o: TransferOptions) -> None:
    """One-line ConfigError naming the option and its allowed values for anything unusable."""
    if o.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown transfer protocol {o.protocol!r}: choose from {', '.join(PROTOCOLS)} "
                          f"(or eval.linear / eval.knn for frozen features)")
    positive = {"epochs": o.epochs, "batch_size": o.batch_size, "seeds": o.seeds, "lora_rank": o.lora_rank,
                "prompt_tokens": o.prompt_tokens, "partial_blocks": o.partial_blocks}
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"transfer option {name} must be a whole number >= 1, got {value!r}")
    if not o.lrs or any(not (math.isfinite(lr) and lr > 0) for lr in o.lrs):
        raise ConfigError(f"transfer option lrs must be a non-empty list of finite learning rates > 0, got {o.lrs!r}")
    if not 0 < o.layer_decay <= 1:
        raise ConfigError(f"transfer option layer_decay must lie in (0, 1] (1: no decay), got {o.layer_decay!r}")
    for name in ("drop_path", "lora_dropout", "label_smoothing", "min_lr_ratio"):
        if not 0 <= getattr(o, name) < 1:
            raise ConfigError(f"transfer option {name} must lie in [0, 1), got {getattr(o, name)!r}")
    if o.weight_decay < 0 or o.warmup_epochs < 0 or o.lora_alpha <= 0:
        raise ConfigError("transfer options weight_decay and warmup_epochs must be >= 0 and lora_alpha > 0, got "
                          f"{o.weight_decay!r}, {o.warmup_epochs!r}, {o.lora_alpha!r}")
    if not 0 < o.val_fraction < 1:
        raise ConfigError(f"transfer option val_fraction must lie in (0, 1), got {o.val_fraction!r}")
    for name in o.given:
        protocols = APPLIES_TO.get(name, PROTOCOLS)
        if o.protocol not in protocols:
            raise ConfigError(f"transfer option {name} applies to --protocol {' / '.join(protocols)} only, not "
                              f"{o.protocol}: drop it, or use --protocol {protocols[0]}")
    bad = [f for f in o.low_shot if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"transfer option low_shot holds labelled fractions in (0, 1], got {bad}")
