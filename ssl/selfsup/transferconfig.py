"""The options of a transfer run (``selfsup eval TARGET --protocol NAME --transfer KEY=VALUE``), with the
papers' defaults. They sit in the config layer, beside the run config, so that ``selfsup config transfer``
lists them from these fields (type, default, range, help) without importing the transfer code (torch);
:mod:`selfsup.transfer.options` re-exports them."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from selfsup.configread import ConfigError, check_range, param

PROTOCOLS = ("finetune", "partial", "lora", "prompt", "bitfit")
VIT_ONLY = ("prompt",)  # protocols that need a timm VisionTransformer
# options that change one protocol's training only: option -> the protocols it applies to (the rest apply to all)
APPLIES_TO = {"partial_blocks": ("partial",), "lora_rank": ("lora",), "lora_alpha": ("lora",),
              "lora_dropout": ("lora",), "prompt_tokens": ("prompt",), "prompt_deep": ("prompt",),
              "drop_path": ("finetune", "partial"), "layer_decay": ("finetune", "partial")}
VIT_OPTIONS = ("layer_decay",)  # options that change a ViT's training only (convnets get no layer decay)
INTERNAL = ("protocol", "given")  # fields set by --protocol and by the CLI, not --transfer options


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

    protocol: str = param("finetune", help="the protocol (--protocol)")
    epochs: int = param(20, ge=1, help="training epochs of each run (per labelled fraction, seed and lr)")
    batch_size: int = param(64, ge=1, help="images per step")
    lrs: list[float] = param(default_factory=lambda: [1e-3], gt=0, each=True,
                             help="peak learning rates tried; the best on the held-out split is kept")
    weight_decay: float = param(0.05, ge=0, help="AdamW weight decay (MAE fine-tuning)")
    layer_decay: float = param(0.75, gt=0, le=1, help="layer-wise lr decay of ViT blocks, 1: none (finetune, "
                               "partial; ViTs only; MAE: 0.75 for ViT-B, 0.65 for ViT-L/H)")
    warmup_epochs: float = param(1.0, ge=0, help="linear warmup epochs, at most half the run, then cosine decay "
                                 "(MAE: 5 of 100)")
    min_lr_ratio: float = param(0.0, ge=0, lt=1, help="final lr of the cosine schedule as a fraction of the peak")
    label_smoothing: float = param(0.1, ge=0, lt=1, help="label smoothing of the cross-entropy (MAE fine-tuning)")
    drop_path: float = param(0.1, ge=0, lt=1, help="stochastic depth rate (finetune, partial only; MAE: 0.1 "
                             "for ViT-B)")
    partial_blocks: int = param(1, ge=1, help="K: the last K stages / blocks trained (partial only; MAE fig. 9 "
                                "varies K)")
    lora_rank: int = param(8, ge=1, help="LoRA rank r (lora only; Hu et al.: r in {1, 2, 4, 8, 64})")
    lora_alpha: float = param(16.0, gt=0, help="LoRA scale alpha: the update is (alpha / r) B A (lora only; "
                              "alpha = 2r, peft's common choice)")
    lora_dropout: float = param(0.0, ge=0, lt=1, help="dropout on the LoRA branch's input (lora only)")
    prompt_tokens: int = param(10, ge=1, help="learnable prompt tokens, at the input or before each block "
                               "(prompt only; ViTs)")
    prompt_deep: bool = param(False, help="VPT-deep: new prompt tokens before every block, else at the input "
                              "only (prompt only)")
    low_shot: list[float] = param(default_factory=lambda: [0.01, 0.1], gt=0, lt=1, each=True,
                                  help="labelled fractions run besides all labels (which always run)")
    seeds: int = param(3, ge=1, help="seeds per labelled fraction (mean ± sd)")
    seed: int = param(0, help="first seed (subsets, held-out split, head init)")
    val_fraction: float = param(0.1, gt=0, lt=1, help="share of the training images held out to choose the lr")
    given: list[str] = param(default_factory=list, help="the options the user set: each must apply")

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def fractions(self) -> list[float]:
        """Labelled fractions run: all labels first, then the low-shot ones (largest first)."""
        return [1.0] + sorted(self.low_shot, reverse=True)  # distinct and below 1 (checked)


def check_options(o: TransferOptions) -> None:
    """One-line ConfigError naming the option and its allowed values for anything unusable: a protocol
    not in :data:`PROTOCOLS`, a whole-number option that is not one, a value outside its field's range
    (``param``), an empty ``lrs``, and an option the user set (``given``) that does not apply to the protocol."""
    if o.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown transfer protocol {o.protocol!r}: choose from {', '.join(PROTOCOLS)} "
                          f"(or eval.linear / eval.knn for frozen features)")
    hints = typing.get_type_hints(TransferOptions)
    for f in dataclasses.fields(TransferOptions):
        value = getattr(o, f.name)
        if hints[f.name] is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"transfer option {f.name!r} must be a whole number, got {value!r}")
        check_range(value, f.metadata, f.name, what="transfer option")
    if not o.lrs:
        raise ConfigError("transfer option 'lrs' must hold at least one learning rate, got []: e.g. lrs=[1e-3]")
    for name in o.given:
        protocols = APPLIES_TO.get(name, PROTOCOLS)
        if o.protocol not in protocols:
            raise ConfigError(f"transfer option {name} applies to --protocol {' / '.join(protocols)} only, not "
                              f"{o.protocol}: drop it, or use --protocol {protocols[0]}")
