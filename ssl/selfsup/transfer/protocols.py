"""Freeze masks of the transfer protocols, and the classifier (encoder + linear head) they train.

:func:`adapt` turns a timm encoder (``num_classes=0``) into the module a protocol trains: the encoder itself
with ``requires_grad`` set per parameter (finetune, partial, bitfit), a peft LoRA model (:mod:`.lora`) or a
prompted ViT (:mod:`.prompt`). :class:`Classifier` adds the head and keeps every module that holds
parameters but trains none of them in eval mode (frozen BatchNorm statistics, no dropout), whatever
``train()`` is called with.
"""

from __future__ import annotations

from timm.layers import DropPath
from torch import Tensor, nn

from selfsup.config import ConfigError
from selfsup.encoders import is_convnet, pooled_width
from selfsup.transfer.options import VIT_ONLY, VIT_OPTIONS, TransferOptions

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def is_vit(encoder: nn.Module) -> bool:
    """A timm VisionTransformer-like encoder: patch embedding, ``blocks`` and a class/prefix-token layout."""
    return all(hasattr(encoder, a) for a in ("patch_embed", "blocks", "_pos_embed", "num_prefix_tokens"))


def stage_names(encoder: nn.Module) -> list[str]:
    """Names of the encoder's stages that own parameters, input to output: timm's ``feature_info`` modules
    (``layer1``..``layer4`` of a ResNet, ``blocks.0``.. of a ViT). A stem with no parameters of its own
    (a ResNet's ``act1``) is not a stage."""
    info = getattr(encoder, "feature_info", None) or []
    names = [f["module"] if isinstance(f, dict) else f for f in info]
    if hasattr(info, "module_name"):  # a FeatureInfo object
        names = info.module_name()
    modules = dict(encoder.named_modules())
    return [n for n in names if n in modules and any(True for _ in modules[n].parameters())]


def partial_trainable(encoder: nn.Module, k: int) -> set[str]:
    """Parameter names of the last ``k`` stages and of everything registered after them (a ViT's final
    norm). ConfigError when the encoder has fewer than ``k`` stages."""
    stages = stage_names(encoder)
    if k > len(stages):
        raise ConfigError(f"partial fine-tuning of the last {k} stage(s), but the encoder has {len(stages)} "
                          f"({', '.join(stages) or 'no timm feature_info'}): lower partial_blocks, or use "
                          f"--protocol finetune to train everything")
    names = [n for n, _ in encoder.named_parameters()]
    first = stages[-k]
    start = next(i for i, n in enumerate(names) if n.startswith(first + "."))
    return set(names[start:])


def bitfit_trainable(encoder: nn.Module) -> set[str]:
    """Parameter names of every bias and every normalisation layer's parameters (BitFit)."""
    out = {n for n, _ in encoder.named_parameters() if n == "bias" or n.endswith(".bias")}
    for mod_name, mod in encoder.named_modules():
        if isinstance(mod, NORM_TYPES) or type(mod).__name__.endswith("Norm"):
            out |= {f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False)}
    return out


def declared_trainable(encoder: nn.Module, options: TransferOptions) -> set[str]:
    """The encoder parameters (names of the plain timm encoder) that ``options.protocol`` trains:
    finetune all, partial / bitfit their subsets, lora and prompt none (they add parameters instead)."""
    names = {n for n, _ in encoder.named_parameters()}
    return {"finetune": lambda: names, "partial": lambda: partial_trainable(encoder, options.partial_blocks),
            "bitfit": lambda: bitfit_trainable(encoder), "lora": set, "prompt": set}[options.protocol]()


def check_protocol(encoder: nn.Module, options: TransferOptions) -> None:
    """ConfigError (one line) when ``options`` cannot adapt ``encoder``: the ViT-only protocols on others, and a
    ViT-only option the user gave (``options.given``) for a convnet."""
    protocol = options.protocol
    vit_only = [name for name in options.given if name in VIT_OPTIONS]
    if vit_only and not is_vit(encoder):
        raise ConfigError(f"transfer option {vit_only[0]} changes a ViT's training only, but the encoder "
                          f"({type(encoder).__name__}) is not a timm VisionTransformer (convnets get the same "
                          f"schedule without layer decay): drop it")
    if protocol in VIT_ONLY and not is_vit(encoder):
        kind = "a convnet" if is_convnet(encoder) else "not a timm VisionTransformer"
        raise ConfigError(f"--protocol {protocol} needs a timm VisionTransformer, but the encoder "
                          f"({type(encoder).__name__}) is {kind}; the ViT-only protocols are "
                          f"{', '.join(VIT_ONLY)}: use finetune, partial, lora or bitfit")


def set_drop_path(encoder: nn.Module, rate: float) -> int:
    """Stochastic depth (Huang et al. 2016) at rates rising linearly from 0 to ``rate`` over the blocks,
    timm's rule, on an encoder built without it: each block's ``drop_path``, ``drop_path1`` or ``drop_path2``
    Identity becomes a DropPath. In eval mode DropPath is the identity, so the outputs of a trained encoder
    equal those of the same timm model built without drop path. Returns the number of modules replaced."""
    slots = [(mod, attr) for _, mod in encoder.named_modules()
             for attr in ("drop_path", "drop_path1", "drop_path2")
             if isinstance(getattr(mod, attr, None), (nn.Identity, DropPath))]
    owners = list(dict.fromkeys(id(m) for m, _ in slots))  # blocks, input to output
    for mod, attr in slots:
        i = owners.index(id(mod))
        new = DropPath(rate * i / max(1, len(owners) - 1)) if rate > 0 else nn.Identity()
        setattr(mod, attr, new.train(mod.training))  # a new module would otherwise train inside an eval model
    return len(slots)


def adapt(encoder: nn.Module, options: TransferOptions) -> nn.Module:
    """The module ``options.protocol`` trains around ``encoder`` (which it may change in place: pass a copy),
    with ``requires_grad`` set. Raises ConfigError (:func:`check_protocol`, :func:`partial_trainable`,
    a missing peft for lora)."""
    check_protocol(encoder, options)
    if options.protocol == "lora":
        from selfsup.transfer.lora import add_lora

        return add_lora(encoder, options)
    if options.protocol == "prompt":
        from selfsup.transfer.prompt import PromptedViT

        encoder.requires_grad_(False)
        return PromptedViT(encoder, options.prompt_tokens, options.prompt_deep)
    trainable = declared_trainable(encoder, options)
    if options.protocol in ("finetune", "partial") and options.drop_path > 0:
        set_drop_path(encoder, options.drop_path)
    for name, p in encoder.named_parameters():
        p.requires_grad_(name in trainable)
    return encoder


class Classifier(nn.Module):
    """An adapted encoder and a linear head: images ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    ``train(True)`` leaves every module that holds parameters but trains none of them in eval mode
    (a frozen stage's BatchNorm keeps its statistics, its dropout is off); modules without parameters
    follow their parent."""

    def __init__(self, encoder: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's head init (a near-zero classifier)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))  # [B, D] -> [B, num_classes]

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode:
            for m in frozen_modules(self):
                m.eval()
        return self


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost modules of ``model`` that hold parameters, none of them trainable."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(m)
            return
        for child in m.children():
            visit(child)

    visit(model)
    return out


def build_classifier(encoder: nn.Module, num_classes: int, options: TransferOptions) -> Classifier:
    """:func:`adapt` a copy-ready ``encoder`` and add a ``num_classes``-way head (in train mode)."""
    width = pooled_width(encoder)
    return Classifier(adapt(encoder, options), width, num_classes).train()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def trainable_summary(classifier: Classifier, encoder_params: int) -> dict[str, float | int]:
    """Trainable parameters of the adapted encoder (added adapters and prompts included, the head not) and
    of the head, and the encoder's share as a percent of the plain encoder's ``encoder_params``."""
    enc = count_params(classifier.encoder, trainable_only=True)
    return {"trainable_params": enc, "head_params": count_params(classifier.head),
            "encoder_params": encoder_params, "trainable_pct": 100.0 * enc / max(1, encoder_params)}


def encoder_param_groups(model: nn.Module, options: TransferOptions) -> list[dict]:
    """AdamW parameter groups of the trainable parameters of ``model`` (a :class:`Classifier`): layer-wise
    lr decay (``lr_scale`` per group, timm's ``param_groups_layer_decay``) for a ViT trained by finetune or
    partial, else timm's ``param_groups_weight_decay``. timm's grouping of a ViT with L blocks scales the
    embeddings by decay^L, block i by decay^(L - 1 - i) and the final norm by 1 (it shares the last block's
    group): one factor of decay less at every depth than MAE's ``param_groups_lrd``, which gives the last
    block decay^1. No weight decay on biases, norms, tokens and position embeddings either way. The head's group has ``lr_scale`` 1."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    enc = model.encoder
    skip = set(getattr(enc, "no_weight_decay", lambda: set())())
    if is_vit(enc) and options.protocol in ("finetune", "partial") and options.layer_decay < 1:
        groups = param_groups_layer_decay(enc, options.weight_decay, no_weight_decay_list=skip,
                                          layer_decay=options.layer_decay)
    else:
        groups = param_groups_weight_decay(enc, options.weight_decay, no_weight_decay_list=skip)
    groups = [g for g in groups if g["params"]]
    head = param_groups_weight_decay(model.head, options.weight_decay)
    return groups + [{**g, "lr_scale": 1.0} for g in head if g["params"]]

