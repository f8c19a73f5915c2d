"""What a transfer run writes (:func:`export_transfer`):

- ``classifier/``: the adapted classifier as a timm model with ``num_classes`` > 0 (``config.json`` in timm's
  schema, ``model.safetensors``), so ``timm.create_model("local-dir:DIR/classifier", pretrained=True)`` gives
  the same logits; for LoRA the adapters are merged into the weights (peft's ``merge_and_unload``). The
  classifier's outputs are checked against the trained model's before it is written. Protocols
  finetune, partial, bitfit and lora.
- ``adapter/``: LoRA's adapters alone in peft's format (``save_pretrained``).
- ``prompt.safetensors``: visual prompt tokens ``prompts`` ``[L, N, D]`` and the head (``head.weight``,
  ``head.bias``), with the settings in the file's metadata; a prompted ViT is not a timm model, so the
  protocol ``prompt`` writes no ``classifier/`` (the frozen encoder is the target's own export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import Tensor, nn

from selfsup.artifacts.card import CARD, CROP_PCT, INTERPOLATION, LICENSE, WEIGHTS, to_config_json
from selfsup.data import DataInfo
from selfsup.fileio import ensure_dir, save_tensors, write_json
from selfsup.safeload import ExportError
from selfsup.transfer.lora import is_peft, merged_encoder, save_adapter
from selfsup.transfer.options import TransferOptions
from selfsup.transfer.protocols import Classifier

CLASSIFIER_DIR, ADAPTER_DIR, PROMPT_FILE = "classifier", "adapter", "prompt.safetensors"
TOLERANCE = 1e-4  # max |logit difference| allowed between the exported and the trained classifier


def minimal_card(architecture: str, kwargs: Mapping[str, Any], info: DataInfo) -> dict[str, Any]:
    """The fields of an export card a transfer run needs, for a target that has no card (a random encoder)."""
    return {"architecture": architecture, "kwargs": dict(kwargs), "in_chans": info.in_chans,
            "input_size": [info.in_chans, info.image_size, info.image_size], "mean": list(info.mean),
            "std": list(info.std), "crop_pct": CROP_PCT, "interpolation": INTERPOLATION, "license": LICENSE}


def plain_encoder(classifier: Classifier) -> nn.Module:
    """The classifier's encoder as a plain timm encoder: LoRA merged into a copy, else the encoder itself."""
    enc = classifier.encoder
    return merged_encoder(enc) if is_peft(enc) else enc


def timm_classifier(classifier: Classifier, card: Mapping[str, Any]) -> nn.Module:
    """The timm model ``card["architecture"]`` with ``num_classes`` = the head's outputs holding the adapted
    encoder's weights and the head (strict load: every tensor accounted for), in eval mode."""
    enc = plain_encoder(classifier)
    head = classifier.head
    model = timm.create_model(card["architecture"], num_classes=head.out_features, in_chans=card["in_chans"],
                              **dict(card.get("kwargs") or {}))
    name = model.pretrained_cfg.get("classifier")
    if not isinstance(name, str) or not isinstance(model.get_submodule(name), nn.Linear):
        raise ExportError(f"cannot export a {card['architecture']!r} classifier: timm's head of it is not one "
                          f"nn.Linear ({name!r})")
    state = {**enc.state_dict(), f"{name}.weight": head.weight, f"{name}.bias": head.bias}
    model.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, strict=True)
    return model.eval()


def check_logits(model: nn.Module, classifier: Classifier, card: Mapping[str, Any], seed: int = 0) -> float:
    """Max |logit difference| of ``model`` and ``classifier`` (both eval mode) on 4 seeded normal images of the
    card's input size; ExportError when above :data:`TOLERANCE`."""
    x = torch.randn(4, *card["input_size"], generator=torch.Generator().manual_seed(seed))  # [4, C, H, W]
    was = classifier.training
    classifier.eval()
    with torch.no_grad():
        diff = (model(x) - classifier(x)).abs().max().item()  # [4, classes]
    classifier.train(was)
    if not diff <= TOLERANCE:
        raise ExportError(f"the exported timm classifier's logits differ from the trained model's by {diff:.3g} "
                          f"(allowed {TOLERANCE:g}); nothing was written")
    return diff


def write_classifier(model: nn.Module, card: Mapping[str, Any], out: Path, about: dict[str, Any]) -> Path:
    """``model.safetensors`` and ``config.json`` (timm's schema, ``num_classes`` > 0) of ``model`` in ``out``;
    selfsup's ``about`` goes under ``selfsup.transfer``."""
    ensure_dir(out)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_tensors(state, out / WEIGHTS, {"format": "pt"})
    config = to_config_json({**card, "num_features": model.num_features})
    config["num_classes"] = model.num_classes
    config["pretrained_cfg"]["classifier"] = model.pretrained_cfg.get("classifier")
    config["selfsup"]["transfer"] = about
    write_json(config, out / CARD)
    return out


def prompt_tensors(classifier: Classifier) -> dict[str, Tensor]:
    """The trained tensors of a prompt-tuned classifier: ``prompts`` ``[L, N, D]``, ``head.weight`` and
    ``head.bias``."""
    return {"prompts": classifier.encoder.prompts, "head.weight": classifier.head.weight,
            "head.bias": classifier.head.bias}


def export_transfer(classifier: Classifier, card: Mapping[str, Any], options: TransferOptions,
                    out_dir: str | Path, results: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write what :mod:`this module <selfsup.transfer.export>` describes for a trained ``classifier`` (on
    the CPU) into ``out_dir``; returns the written paths by kind. ExportError: see :func:`check_logits`."""
    out = ensure_dir(out_dir)
    about = {"protocol": options.protocol, "options": {k: v for k, v in vars(options).items()},
             "results": dict(results or {})}
    written: dict[str, Path] = {}
    if options.protocol == "prompt":
        tensors = {k: v.detach().cpu().contiguous() for k, v in prompt_tensors(classifier).items()}
        meta = {"deep": str(classifier.encoder.deep), "num_tokens": str(classifier.encoder.num_tokens),
                "encoder": json.dumps({k: card[k] for k in ("architecture", "kwargs", "in_chans") if k in card})}
        save_tensors(tensors, out / PROMPT_FILE, meta)
        written["prompt"] = out / PROMPT_FILE
        return written
    model = timm_classifier(classifier, card)
    about["max_logit_difference"] = check_logits(model, classifier, card)
    written["classifier"] = write_classifier(model, card, out / CLASSIFIER_DIR, about)
    if is_peft(classifier.encoder):
        written["adapter"] = save_adapter(classifier.encoder, out / ADAPTER_DIR)
    return written
