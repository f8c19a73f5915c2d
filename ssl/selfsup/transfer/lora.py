"""LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") on timm encoders through
Hugging Face ``peft``: ``W x + (alpha / r) B A x`` beside each targeted layer, A random and B zero at
initialisation (so the adapted encoder starts as the frozen one), the original weights frozen.

Targets (:func:`lora_targets`): a ViT's attention (``qkv``, ``proj``) and MLP (``fc1``, ``fc2``) linear layers
in its blocks; a convnet's convolutions inside its stages (peft's Conv2d LoRA). ``peft`` is an optional
dependency (``pip install 'selfsup[transfer]'``); :func:`require_peft` says so in one line.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

from torch import nn

from selfsup.config import ConfigError
from selfsup.fileio import write_text
from selfsup.safeload import ExportError
from selfsup.transfer.options import TransferOptions


def require_peft() -> None:
    """ConfigError (one line) when ``peft`` is not installed."""
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("--protocol lora needs Hugging Face peft, which is not installed: pip install peft "
                          "(or pip install 'selfsup[transfer]')")


def mirrorable(layer: nn.Module) -> bool:
    """Whether peft's LoRA reproduces ``layer``'s geometry: every Linear; a Conv2d only when undilated and
    ungrouped. peft builds the A convolution with the layer's kernel, stride and padding but not its
    dilation (a dilated conv, e.g. a ResNet's last stage at ``output_stride`` 16, gives a map of another
    size), and cannot merge grouped (depthwise) ones."""
    if isinstance(layer, nn.Conv2d):
        return tuple(layer.dilation) == (1, 1) and layer.groups == 1
    return isinstance(layer, nn.Linear)


def lora_targets(encoder: nn.Module) -> list[str]:
    """Full names of the layers LoRA adapts: nn.Linear layers inside a ViT's blocks, nn.Conv2d layers inside
    a convnet's stages (:func:`selfsup.transfer.protocols.stage_names`), those peft cannot mirror left out
    (:func:`mirrorable`). ConfigError when there are none."""
    from selfsup.transfer.protocols import is_vit, stage_names

    kind, where = (nn.Linear, ["blocks"]) if is_vit(encoder) else (nn.Conv2d, stage_names(encoder))
    names = [n for n, m in encoder.named_modules()
             if isinstance(m, kind) and mirrorable(m) and any(n.startswith(w + ".") for w in where)]
    if not names:
        raise ConfigError(f"--protocol lora found no {kind.__name__} layer (undilated, ungrouped) inside the stages of "
                          f"{type(encoder).__name__} ({', '.join(where) or 'no timm feature_info'}) to adapt: "
                          f"use finetune, partial or bitfit")
    return names


def add_lora(encoder: nn.Module, options: TransferOptions) -> nn.Module:
    """A peft model around ``encoder`` (changed in place) with LoRA of rank ``options.lora_rank``, scale
    ``lora_alpha / lora_rank`` and dropout ``lora_dropout`` on :func:`lora_targets`; only the adapters train.
    Calling it returns the encoder's features ``[B, D]``."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                        target_modules=lora_targets(encoder), bias="none", init_lora_weights=True)
    return get_peft_model(encoder, config)


def is_peft(module: nn.Module) -> bool:
    return type(module).__module__.startswith("peft.")


def merged_encoder(peft_model: nn.Module) -> nn.Module:
    """A plain timm encoder whose weights hold ``W + (alpha / r) B A`` (peft's ``merge_and_unload`` on a
    copy; ``peft_model`` keeps its adapters)."""
    return copy.deepcopy(peft_model).merge_and_unload()


def source_encoder(peft_model: nn.Module) -> nn.Module:
    """The plain timm encoder LoRA started from: the frozen base weights without the adapters (peft's
    ``unload`` on a copy; ``peft_model`` keeps its adapters)."""
    return copy.deepcopy(peft_model).unload()


def classifier_adapter(peft_encoder: nn.Module, classifier_model: nn.Module, head_name: str) -> nn.Module:
    """A peft model around ``classifier_model`` (a timm classifier, ``num_classes`` > 0, holding the source
    encoder's weights and the trained head; changed in place) with ``peft_encoder``'s LoRA config and
    trained A / B weights on the same module names, and ``modules_to_save=[head_name]``: its
    ``save_pretrained`` holds the adapters and the head, so ``PeftModel.from_pretrained`` on a timm classifier
    with the source encoder's weights (any head) rebuilds the scored classifier. In eval mode.

    Raises:
        ExportError: ``head_name`` names no single module, or an adapter of the encoder has no module of the
            same name in the classifier.
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import ModulesToSaveWrapper

    name = peft_encoder.active_adapter
    config = copy.deepcopy(peft_encoder.peft_config[name])
    config.modules_to_save = [head_name]
    model = get_peft_model(classifier_model, config, adapter_name=name)
    heads = [n for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if len(heads) != 1:  # peft matches modules_to_save by name suffix
        raise ExportError(f"cannot write the LoRA adapter with the head: peft's modules_to_save={head_name!r} matches "
                          f"{len(heads)} modules of the classifier ({', '.join(heads[:3]) or 'none'}), not one")
    lora = get_peft_model_state_dict(peft_encoder, adapter_name=name)  # A / B weights, no adapter name
    full = get_peft_model_state_dict(model, adapter_name=name)  # the same names (untrained) and the head's
    stray = sorted(set(lora) - set(full))
    if stray:
        raise ExportError(f"cannot write the LoRA adapter with the head: {len(stray)} adapter tensors of the encoder "
                          f"have no module of that name in the timm classifier (e.g. {stray[0]!r})")
    set_peft_model_state_dict(model, {**full, **lora}, adapter_name=name)
    return model.eval()


def save_adapter(peft_model: nn.Module, out_dir: str | Path, note: str = "") -> Path:
    """The adapters (and ``modules_to_save``) alone in peft's own format (``adapter_config.json``,
    ``adapter_model.safetensors``); ``note`` (markdown), when given, replaces the ``README.md`` template peft
    writes, under peft's front matter."""
    out = Path(out_dir)
    peft_model.save_pretrained(str(out))
    if note:
        write_text(f"---\nlibrary_name: peft\ntags:\n- lora\n- timm\n---\n\n{note}", out / "README.md")
    return out
