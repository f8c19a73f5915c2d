"""What a transfer run writes (:func:`export_transfer`) and loading it back (:func:`load_prompted`).

- ``classifier/`` (finetune, partial, bitfit, lora): the adapted classifier as a timm model with
  ``num_classes`` > 0 (``config.json`` in timm's schema, ``model.safetensors``), so
  ``timm.create_model("local-dir:DIR/classifier", pretrained=True)`` gives the same logits; for LoRA the
  adapters are merged into the weights (peft's ``merge_and_unload``). Its outputs are checked against the
  trained model's before it is written.
- ``adapter/`` (lora): the LoRA adapters and the trained head in peft's format (``save_pretrained``, with
  ``modules_to_save`` = timm's head: ``fc`` of a ResNet, ``head`` of a ViT), checked the same way. peft
  rebuilds the scored classifier on a timm classifier holding the encoder the run started from (its head
  random)::

      base = timm.create_model(ARCH, num_classes=N, in_chans=C, **MODEL_ARGS)
      base.load_state_dict(selfsup.load_encoder(TARGET).state_dict(), strict=False)  # all but the head
      model = peft.PeftModel.from_pretrained(base, "DIR/adapter").eval()

  (``DIR/adapter/README.md`` spells the call out for the run.)
- ``prompt.safetensors`` (prompt): the visual prompt tokens ``prompts`` ``[L, N, D]`` and the head
  (``head.weight`` ``[K, D]``, ``head.bias`` ``[K]``), with ``deep``, ``num_tokens`` and the encoder in the
  file's metadata; and ``encoder/``: the frozen ViT they were trained on, as an export directory (timm's
  schema, ``num_classes`` 0). A prompted ViT is not a timm model (plain timm has no place for the tokens, so
  no ``classifier/`` is written); :func:`load_prompted` ``("DIR")`` rebuilds the scored classifier from the
  two, and the export checks that it does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from selfsup.artifacts.card import (CARD, CROP_PCT, INTERPOLATION, LICENSE, WEIGHTS, global_pool, timm_call,
                                    to_config_json)
from selfsup.data import DataInfo
from selfsup.encoders import pooled_width
from selfsup.fileio import ensure_dir, save_tensors, write_json
from selfsup.safeload import ExportError, LoadError, describe_file, file_sha256, first_line
from selfsup.statedict import tensor_faults
from selfsup.transfer.lora import classifier_adapter, is_peft, merged_encoder, save_adapter, source_encoder
from selfsup.transfer.options import TransferOptions
from selfsup.transfer.prompt import PromptedViT
from selfsup.transfer.protocols import Classifier, is_vit

CLASSIFIER_DIR, ADAPTER_DIR, PROMPT_FILE, ENCODER_DIR = "classifier", "adapter", "prompt.safetensors", "encoder"
PROMPT_TENSORS = ("prompts", "head.weight", "head.bias")
TOLERANCE = 1e-4  # max |logit difference| allowed between the exported and the trained classifier
STALE_FIELDS = ("weights_sha256", "exports", "load_with_timm")  # the source export's, not true of a new file


def minimal_card(architecture: str, kwargs: Mapping[str, Any], info: DataInfo) -> dict[str, Any]:
    """The fields of an export card a transfer run needs, for a target that has no card (a random encoder)."""
    return {"architecture": architecture, "kwargs": dict(kwargs), "in_chans": info.in_chans,
            "input_size": [info.in_chans, info.image_size, info.image_size], "mean": list(info.mean),
            "std": list(info.std), "crop_pct": CROP_PCT, "interpolation": INTERPOLATION, "license": LICENSE}


def plain_encoder(classifier: Classifier) -> nn.Module:
    """The classifier's encoder as a plain timm encoder: LoRA merged into a copy, else the encoder itself."""
    enc = classifier.encoder
    return merged_encoder(enc) if is_peft(enc) else enc


def head_name(model: nn.Module, architecture: str) -> str:
    """The name of timm's classifier layer of ``model`` (``fc``, ``head``, ``head.fc``); ExportError when it is
    not one nn.Linear."""
    name = model.pretrained_cfg.get("classifier")
    if not isinstance(name, str) or not isinstance(model.get_submodule(name), nn.Linear):
        raise ExportError(f"cannot export a {architecture!r} classifier: timm's head of it is not one "
                          f"nn.Linear ({name!r})")
    return name


def timm_model(card: Mapping[str, Any], encoder: nn.Module, head: nn.Linear) -> nn.Module:
    """The timm model ``card["architecture"]`` with ``num_classes`` = the head's outputs holding ``encoder``'s
    weights (a plain timm encoder, ``num_classes=0``) and ``head`` (strict load: every tensor accounted
    for), in eval mode."""
    model = timm.create_model(card["architecture"], num_classes=head.out_features, in_chans=card["in_chans"],
                              **dict(card.get("kwargs") or {}))
    name = head_name(model, card["architecture"])
    state = {**encoder.state_dict(), f"{name}.weight": head.weight, f"{name}.bias": head.bias}
    model.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, strict=True)
    return model.eval()


def timm_classifier(classifier: Classifier, card: Mapping[str, Any]) -> nn.Module:
    """:func:`timm_model` of the adapted encoder (LoRA merged) and the trained head."""
    return timm_model(card, plain_encoder(classifier), classifier.head)


def adapter_classifier(classifier: Classifier, card: Mapping[str, Any]) -> nn.Module:
    """The peft model whose ``save_pretrained`` is ``adapter/``: the timm classifier with the weights of the
    encoder LoRA started from, the trained adapters and the trained head as peft's ``modules_to_save``
    (:func:`selfsup.transfer.lora.classifier_adapter`); in eval mode, its logits the classifier's."""
    base = timm_model(card, source_encoder(classifier.encoder), classifier.head)
    return classifier_adapter(classifier.encoder, base, head_name(base, card["architecture"]))


def check_logits(model: nn.Module, classifier: Classifier, card: Mapping[str, Any], seed: int = 0,
                 what: str = "the exported timm classifier") -> float:
    """Max |logit difference| of ``model`` and ``classifier`` (both eval mode) on 4 seeded normal images of the
    card's input size; ExportError naming ``what`` when above :data:`TOLERANCE`."""
    x = torch.randn(4, *card["input_size"], generator=torch.Generator().manual_seed(seed))  # [4, C, H, W]
    was = classifier.training
    classifier.eval()
    with torch.no_grad():
        diff = (model(x) - classifier(x)).abs().max().item()  # [4, classes]
    classifier.train(was)
    if not diff <= TOLERANCE:
        raise ExportError(f"{what}'s logits differ from the trained model's by {diff:.3g} (allowed {TOLERANCE:g}); "
                          f"nothing was written")
    return diff


def write_timm_dir(model: nn.Module, card: Mapping[str, Any], out: Path, about: dict[str, Any]) -> Path:
    """``model.safetensors`` and ``config.json`` (timm's schema; ``num_classes`` the model's: > 0 for a
    classifier, 0 for an encoder) of timm ``model`` in ``out``; selfsup's ``about`` goes under
    ``selfsup.transfer``, and the card's fields about the source export's files (checksum, interop
    exports) are replaced by this directory's."""
    ensure_dir(out)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_tensors(state, out / WEIGHTS, {"format": "pt"})
    own = {k: v for k, v in card.items() if k not in STALE_FIELDS}
    own.update({"num_features": model.num_features, "global_pool": global_pool(model), "exports": {},
                "weights_sha256": file_sha256(out / WEIGHTS), "load_with_timm": timm_call(out.name)})
    config = to_config_json(own)
    config["num_classes"] = model.num_classes
    if model.num_classes:
        config["pretrained_cfg"]["classifier"] = model.pretrained_cfg.get("classifier")
    config["selfsup"]["transfer"] = about
    write_json(config, out / CARD)
    return out


def adapter_note(card: Mapping[str, Any], num_classes: int, head: str, adapter_dir: Path) -> str:
    """The ``README.md`` of ``adapter_dir``: what it holds and the three lines that load it."""
    args = ", ".join(f"{k}={v!r}" for k, v in {"num_classes": num_classes, "in_chans": card["in_chans"],
                                                 **dict(card.get("kwargs") or {})}.items())
    return (f"# LoRA adapter and classifier head (selfsup transfer, --protocol lora)\n\n"
            f"peft's `save_pretrained` of the LoRA adapters of `{card['architecture']}` and its trained linear head "
            f"`{head}` (`modules_to_save`): on the timm classifier holding the encoder the run started from (the "
            f"TARGET of `selfsup eval TARGET --protocol lora`), it gives the logits the run scored.\n\n"
            f"```python\nimport peft, selfsup, timm\n"
            f"base = timm.create_model({card['architecture']!r}, {args})\n"
            f"base.load_state_dict(selfsup.load_encoder(TARGET).state_dict(), strict=False)  # all but {head!r}\n"
            f"model = peft.PeftModel.from_pretrained(base, {str(adapter_dir.resolve())!r}).eval()  # this directory\n"
            f"```\n\n"
            f"`../classifier/` holds the same classifier with the adapters merged, for plain timm. A `random:` "
            f"TARGET (timm's random init) was not saved, so there is nothing to load the adapter onto: use "
            f"`../classifier/`.\n")


def prompt_tensors(classifier: Classifier) -> dict[str, Tensor]:
    """The trained tensors of a prompt-tuned classifier: ``prompts`` ``[L, N, D]``, ``head.weight`` and
    ``head.bias``."""
    return {"prompts": classifier.encoder.prompts, "head.weight": classifier.head.weight,
            "head.bias": classifier.head.bias}


def write_prompt(classifier: Classifier, card: Mapping[str, Any], out: Path, about: dict[str, Any]) -> dict[str, Path]:
    """``prompt.safetensors`` (:func:`prompt_tensors`, settings in the metadata) and ``encoder/`` (the frozen
    ViT) in ``out``, then checked by loading them back (:func:`load_prompted`); ExportError (and both
    removed) when the loaded model's logits differ from ``classifier``'s."""
    prompted = classifier.encoder
    tensors = {k: v.detach().cpu().contiguous() for k, v in prompt_tensors(classifier).items()}
    meta = {"deep": str(prompted.deep), "num_tokens": str(prompted.num_tokens),
            "encoder": json.dumps({k: card[k] for k in ("architecture", "kwargs", "in_chans") if k in card})}
    save_tensors(tensors, out / PROMPT_FILE, meta)
    write_timm_dir(prompted.vit, card, out / ENCODER_DIR, about)
    try:
        check_logits(load_prompted(out), classifier, card, what=f"the prompted ViT loaded back from {str(out)!r}")
    except LoadError:
        (out / PROMPT_FILE).unlink(missing_ok=True)
        shutil.rmtree(out / ENCODER_DIR, ignore_errors=True)
        raise
    return {"prompt": out / PROMPT_FILE, "encoder": out / ENCODER_DIR}


def export_transfer(classifier: Classifier, card: Mapping[str, Any], options: TransferOptions,
                    out_dir: str | Path, results: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write what :mod:`this module <selfsup.transfer.export>` describes for a trained ``classifier`` (on
    the CPU) into ``out_dir``; returns the written paths by kind (``classifier``, ``adapter``; ``prompt``,
    ``encoder``). ExportError: see :func:`check_logits`."""
    out = ensure_dir(out_dir)
    about = {"protocol": options.protocol, "options": {k: v for k, v in vars(options).items()},
             "results": dict(results or {})}
    if options.protocol == "prompt":
        return write_prompt(classifier, card, out, about)
    model = timm_classifier(classifier, card)
    about["max_logit_difference"] = check_logits(model, classifier, card)
    adapter = adapter_classifier(classifier, card) if is_peft(classifier.encoder) else None
    if adapter is not None:
        check_logits(adapter, classifier, card, what="the LoRA adapter on the source encoder")
    written = {"classifier": write_timm_dir(model, card, out / CLASSIFIER_DIR, about)}
    if adapter is not None:
        note = adapter_note(card, model.num_classes, head_name(model, card["architecture"]), out / ADAPTER_DIR)
        written["adapter"] = save_adapter(adapter, out / ADAPTER_DIR, note)
    return written


# ---------------------------------------------------------------------------------------------
# Loading a prompt run back


def read_prompt_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of a ``prompt.safetensors``; LoadError (one line) when it is not one, or
    lacks a tensor of :data:`PROMPT_TENSORS` or the ``deep`` / ``num_tokens`` settings."""
    kind = describe_file(path)
    if kind != "a safetensors file":
        raise LoadError(f"{str(path)!r} should hold a prompt run's tokens as safetensors but is {kind}; run "
                        f"`selfsup eval TARGET --protocol prompt --out {path.parent}` again")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise LoadError(f"cannot read {str(path)!r}: {first_line(err)}; the file looks truncated or damaged, run "
                        f"`selfsup eval TARGET --protocol prompt --out {path.parent}` again") from None
    lacking = [k for k in PROMPT_TENSORS if k not in tensors]
    if lacking or meta.get("deep") not in ("True", "False") or not meta.get("num_tokens", "").isdigit():
        what = f"the tensor(s) {', '.join(lacking)}" if lacking else "the settings deep / num_tokens in its metadata"
        raise LoadError(f"{str(path)!r} is not the prompt file of a selfsup prompt run: it lacks {what}; run "
                        f"`selfsup eval TARGET --protocol prompt --out {path.parent}` again")
    return tensors, meta


def prompt_problem(tensors: Mapping[str, Tensor], meta: Mapping[str, str], vit: nn.Module) -> str | None:
    """What in a prompt file's ``tensors`` and ``meta`` does not fit ``vit`` (shapes, NaN); None if nothing."""
    deep, count, prompts = meta["deep"] == "True", int(meta["num_tokens"]), tensors["prompts"]
    layers = len(vit.blocks) if deep else 1
    if prompts.dim() != 3:
        return f"its prompts are {list(prompts.shape)}, not [layers, tokens, width]"
    if prompts.shape[2] != vit.embed_dim:
        return f"its prompt tokens are {prompts.shape[2]} wide but that ViT's embed_dim is {vit.embed_dim}"
    if prompts.shape[1] != count:
        return f"it holds {prompts.shape[1]} prompt tokens per layer but its metadata says num_tokens={count}"
    if prompts.shape[0] != layers:
        return (f"it holds prompts for {prompts.shape[0]} layer(s) but a {'deep' if deep else 'shallow'} prompt of "
                f"that {len(vit.blocks)}-block ViT has {layers}")
    weight, bias = tensors["head.weight"], tensors["head.bias"]
    if weight.dim() != 2 or bias.shape != weight.shape[:1] or weight.shape[1] != pooled_width(vit):
        return (f"its head is {list(weight.shape)} + {list(bias.shape)} but that ViT's pooled features are "
                f"{pooled_width(vit)} wide ([classes, {pooled_width(vit)}] + [classes] expected)")
    extra = sorted(set(tensors) - set(PROMPT_TENSORS))
    if extra:
        return f"it holds tensors a prompted ViT has no place for ({', '.join(extra[:3])})"
    return tensor_faults({k: torch.empty(0) for k in PROMPT_TENSORS}, tensors)  # integer tensors, NaN, inf


def prompt_paths(path: str | Path) -> tuple[Path, Path]:
    """(``prompt.safetensors``, ``encoder/``) of a prompt run's output directory or of its prompt file;
    LoadError (one line) naming what the path is otherwise."""
    path = Path(path)
    out = path.parent if path.is_file() and path.name == PROMPT_FILE else path
    again = f"run `selfsup eval TARGET --protocol prompt --out {out}` again"
    if not out.is_dir():
        found = f"it is {describe_file(out)}" if out.is_file() else "it does not exist"
        raise LoadError(f"{str(path)!r} is not the output directory of a prompt run ({found}); pass the --out "
                        f"directory of `selfsup eval TARGET --protocol prompt`")
    if not (out / PROMPT_FILE).is_file():
        if (out / CLASSIFIER_DIR).is_dir():
            raise LoadError(f"{str(out)!r} holds no {PROMPT_FILE} but a {CLASSIFIER_DIR}/: it is the output of another "
                            f"protocol; load it with timm.create_model('local-dir:{out / CLASSIFIER_DIR}', pretrained=True)")
        raise LoadError(f"{str(out)!r} holds no {PROMPT_FILE}: pass the --out directory of `selfsup eval TARGET "
                        f"--protocol prompt`, or {again}")
    if not (out / ENCODER_DIR).is_dir():
        raise LoadError(f"{str(out)!r} has {PROMPT_FILE} but no {ENCODER_DIR}/ (the frozen ViT its prompts were "
                        f"trained on): put that run's {ENCODER_DIR}/ beside it, or {again}")
    return out / PROMPT_FILE, out / ENCODER_DIR


def load_prompted(path: str | Path) -> Classifier:
    """The prompt-tuned classifier a prompt run exported, ready for inference (eval mode): images
    ``[B, C, H, W]`` -> logits ``[B, K]``, the frozen ViT of ``encoder/`` with the tokens and head of
    ``prompt.safetensors``. ``path``: the run's ``--out`` directory, or its ``prompt.safetensors``.

    Raises:
        LoadError: one line naming the missing or mismatched file (tokens of another width, count or depth
            than the ViT takes, a head of another width, NaN, a damaged encoder) and the fix.
    """
    from selfsup.artifacts.exportdir import load_export

    prompt_file, encoder_dir = prompt_paths(path)
    tensors, meta = read_prompt_file(prompt_file)
    vit, card = load_export(encoder_dir)
    fix = (f"put the {PROMPT_FILE} and {ENCODER_DIR}/ of one run together (`selfsup eval TARGET --protocol prompt "
           f"--out DIR` writes both)")
    if not is_vit(vit):
        raise LoadError(f"{str(encoder_dir)!r} holds a {type(vit).__name__}, not the timm VisionTransformer the prompts "
                        f"of {str(prompt_file)!r} need; {fix}")
    meant = json.loads(meta.get("encoder") or "{}").get("architecture", card["architecture"])
    problem = (f"its prompts were trained on a {meant!r}, not the {card['architecture']!r} in {str(encoder_dir)!r}"
               if meant != card["architecture"] else prompt_problem(tensors, meta, vit))
    if problem:
        raise LoadError(f"{str(prompt_file)!r} does not fit the ViT in {str(encoder_dir)!r}: {problem}; {fix}")
    model = Classifier(PromptedViT(vit, int(meta["num_tokens"]), meta["deep"] == "True"),
                       pooled_width(vit), tensors["head.bias"].shape[0])
    trained = {"encoder.prompts": tensors["prompts"], "head.weight": tensors["head.weight"],
               "head.bias": tensors["head.bias"]}
    model.load_state_dict({**model.state_dict(), **trained}, strict=True)
    model.requires_grad_(False)
    return model.eval()
