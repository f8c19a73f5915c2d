"""README.md of an export directory: the Hugging Face model card (YAML front matter with ``license`` and the
Hub's ``model-index``), how the encoder was trained and how it scored, and how to load it with each library;
:func:`results_markdown` is also the results table of ``selfsup eval``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from selfsup.artifacts.card import CARD, LICENSE, WEIGHTS, timm_call
from selfsup.rundir import EXPORT_DIR
from selfsup.artifacts.interop import FORMAT_FILES, ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUT
from selfsup.artifacts.torchvision import torchvision_call, torchvision_problem
from selfsup.eval.report import mean_sd_text, probe_header

def _dataset(card: Mapping[str, Any]) -> str | None:
    """The named dataset the encoder was trained on (None for an image folder, which has no name)."""
    data = (card.get("training_config") or {}).get("data", {}).get("name")
    return data if data and data != "image-folder" else None


def model_index(card: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The Hub's ``model-index`` of the card's own encoder (the first row of its results; the others are
    baselines): kNN and linear-probe top-1 accuracy (%) on the test split of the training dataset; ``[]``
    when nothing was evaluated or the data has no name."""
    dataset, results = _dataset(card), [r for r in (card.get("results") or {}).values() if isinstance(r, Mapping)]
    if not dataset or not results:
        return []
    own = results[0]
    metrics = [{"type": "accuracy", "name": f"kNN {k} top-1", "value": round(float(v["top1"]), 2)}
               for k, v in (own.get("knn") or {}).items() if isinstance(v, Mapping) and "top1" in v]
    metrics += [{"type": "accuracy", "name": probe_header(k), "value": round(float(v["top1"]), 2)}
                for k, v in own.items() if k.startswith("linear") and isinstance(v, Mapping) and "top1" in v]
    if not metrics:
        return []
    return [{"name": name, "results": [{
        "task": {"type": "image-classification", "name": "frozen-feature classification (kNN, linear probe)"},
        "dataset": {"type": dataset, "name": dataset, "split": "test"}, "metrics": metrics}]}]


def _front_matter(card: Mapping[str, Any], name: str) -> str:
    kind = "supervised" if card["method"] == "supervised" else "self-supervised-learning"
    meta: dict[str, Any] = {"license": card.get("license", LICENSE), "library_name": "timm",
                            "pipeline_tag": "image-feature-extraction",
                            "tags": ["image-feature-extraction", "timm", "selfsup", kind, card["method"],
                                     card["architecture"]]}
    if _dataset(card):
        meta["datasets"] = [_dataset(card)]
    if name == EXPORT_DIR:  # a run's own export folder: the folder's name says nothing of the model
        run = (card.get("training_config") or {}).get("name")
        name = "-".join(p for p in (run, card["method"], card["architecture"]) if p)
    index = model_index(card, name)
    if index:
        meta["model-index"] = index
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"



def counted(n: Any, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 epoch", "1,200 optimiser steps" ("?" when unknown)."""
    if isinstance(n, bool) or not isinstance(n, int):
        return f"{n} {noun}s"
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _training_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    tc = card.get("training_config", {})
    data, trainer, optim = tc.get("data", {}), tc.get("trainer", {}), tc.get("optim", {})
    c, h, w = card["input_size"]
    hyper = ", ".join(f"{k}={v}" for k, v in card.get("method_config", {}).items()
                      if k != "name" and isinstance(v, (int, float, str, bool)))
    method = f"`{card['method']}`: {card.get('method_reference', card['method'])}" + (
        f"; hyper-parameters {hyper}" if hyper else "")
    kwargs = card.get("kwargs") or {}
    encoder = (f"timm `{card['architecture']}`" + (f", kwargs `{json.dumps(kwargs)}`" if kwargs else "")
               + f"; {c} input channel{'s' * (c != 1)}; {card['num_features']}-d features"
               + (f"; {card['num_params']:,} parameters" if card.get("num_params") else ""))
    name = data.get("name", "?")
    bad = card.get("unreadable_images")
    decoded = data.get("cache") == "uint8"  # the decoded copy counts the readable images only
    images = (f", {card['train_images']:,} training images" if card.get("train_images") else "") + (
        (f" ({bad:,} more files unreadable, left out)" if decoded else
         f" ({bad:,} of them unreadable, left out of training)") if card.get("train_images") and bad else "")
    subset = f" (a seeded subset of {data['subset']:,})" if data.get("subset") else ""
    data_row = (("a folder of images (`image-folder`)" if name == "image-folder" else f"`{name}`") + images + subset
                + f"; {h}x{w} pixels, normalised with mean {card['mean']} and std {card['std']}")
    steps = trainer.get("max_steps", -1)
    length = counted(steps, "optimiser step") if steps and steps > 0 else counted(trainer.get("max_epochs", "?"), "epoch")
    done = (f"; the exported checkpoint was written after {counted(card['trained_steps'], 'optimiser step')}"
            if card.get("trained_steps") is not None else "")
    if card.get("trained_epochs") is not None:
        done += f" ({counted(card['trained_epochs'], 'epoch')} completed)"
    if card.get("training_minutes") is not None:
        minutes = card["training_minutes"]
        done += f" in {minutes:.1f} wall minutes" if minutes >= 0.1 else f" in {minutes * 60:.1f} wall seconds"
    schedule = (f"{length}{done}; batch {data.get('batch_size', '?')}; {optim.get('name', '?')}, peak lr "
                f"{optim.get('lr', '?')} at batch 256 ({optim.get('lr_scaling', '?')} scaling), weight decay "
                f"{optim.get('weight_decay', '?')}, {counted(optim.get('warmup_epochs', '?'), 'warmup epoch')}; "
                f"precision {trainer.get('precision', '?')}")
    versions = card.get("versions") or {"selfsup": card.get("selfsup_version", "?")}
    return [("method", method), ("encoder", encoder), ("data", data_row), ("schedule", schedule),
            ("seed", str(tc.get("seed", "?"))), ("software", ", ".join(f"{k} {v}" for k, v in versions.items()))]


def _probe_order(key: str, value: Mapping[str, Any]) -> tuple[int, float]:
    rank = 0 if key == "linear" else 2 if key == "linear_sklearn" else 1
    return rank, -float(value.get("fraction", 0.0))


def results_markdown(results: Mapping[str, Any], dataset: str, input_size: int | None = None) -> str:
    """The card's evaluation results as a markdown table (top-1 %, one row per evaluated encoder); a row
    measured at another side length than the encoder's ``input_size`` (``eval.image_size``) says so."""
    rows = {label: r for label, r in results.items() if isinstance(r, Mapping)}
    if not rows:
        return ("No evaluation results were recorded with this export; `selfsup eval DIR` scores it with a kNN "
                "classifier and a linear probe on its training data when that has labels of two or more classes, "
                "`selfsup eval DIR data.root=LABELLED_FOLDER` on a folder of class subfolders.\n")
    knn = list(dict.fromkeys(k for r in rows.values() for k in r.get("knn", {})))
    probes = {k: v for r in rows.values() for k, v in r.items() if k.startswith("linear") and isinstance(v, Mapping)}
    probe_keys = sorted(probes, key=lambda k: _probe_order(k, probes[k]))
    header = ["encoder"] + [f"kNN {k} top-1" for k in knn] + [probe_header(k) for k in probe_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for label, r in rows.items():
        cells = [label] + [f"{r['knn'][k]['top1']:.2f}" if k in r.get("knn", {}) else "" for k in knn]
        cells += [mean_sd_text(r[k]) if isinstance(r.get(k), Mapping) and "top1" in r[k] else "" for k in probe_keys]
        lines.append("| " + " | ".join(cells) + " |")
    counts = {v["seeds"] for r in rows.values() for k, v in r.items()
              if k.startswith("linear") and isinstance(v, Mapping) and "seeds" in v}
    seeds = counts.pop() if len(counts) == 1 else (0 if counts else None)  # 0: rows of other seed counts
    note = (f"\nTop-1 accuracy (%) of the frozen features on the test split of `{dataset}` (`selfsup eval`): "
            f"weighted kNN (cosine similarity, votes weighted by exp(sim/T)) and a linear probe whose learning rate "
            f"and weight decay were chosen on held-out training images"
            + (f"; ± is the standard deviation over {seeds} probe seeds" if seeds and seeds > 1 else
               "; from one probe seed, so no spread is measured" if seeds == 1 else
               "; ± is the standard deviation over each row's probe seeds (a number without ± is from one seed)"
               if seeds == 0 else "")
            + ". Rows other than the pretrained encoder are baselines scored the same way.\n")
    warned = [f"- **Note** ({label}): measured on {r['image_size']}x{r['image_size']} images (eval.image_size), not "
              f"the {input_size}x{input_size} inputs the exported encoder was trained at" for label, r in rows.items()
              if input_size and isinstance(r.get("image_size"), int) and r["image_size"] != input_size]
    warned += list(dict.fromkeys(f"- **Warning** ({label}): {w}" for label, r in rows.items()
                                 for w in r.get("warnings") or []))  # they qualify the numbers above
    return "\n".join(lines) + "\n" + note + ("\n" + "\n".join(warned) + "\n" if warned else "")


def _code(text: str) -> str:
    return f"```python\n{text}\n```\n"


def _exported(card: Mapping[str, Any], fmt: str) -> bool:
    """Whether the export directory holds ``fmt``'s interop file."""
    return fmt in (card.get("exports") or {})


def _how_to_write(fmt: str, dir_name: str) -> str:
    """The command that adds ``fmt``'s interop file to the export directory."""
    return f"`selfsup export RUN_DIR {dir_name} --format {fmt}` writes `{FORMAT_FILES[fmt]}`"


def _timm_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    c, h, w = card["input_size"]
    return _code(
        f"import timm, torch\n"
        f"model = {timm_call(dir_name)}.eval()  # or 'hf-hub:USER/REPO' after an upload\n"
        f"config = timm.data.resolve_model_data_config(model)  # input_size {[c, h, w]}, mean, std of this encoder\n"
        f"mean = torch.tensor(config[\"mean\"]).view(1, -1, 1, 1)\n"
        f"std = torch.tensor(config[\"std\"]).view(1, -1, 1, 1)\n"
        f"x = (images.float() / 255 - mean) / std  # images: uint8 [B, {c}, {h}, {w}]\n"
        f"features = model(x)  # [B, {card['num_features']}]")


def _timm_overlay_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    """The same model built from the architecture's name, the file and the data settings given as an overlay."""
    c, h, w = card["input_size"]
    kwargs = "".join(f", {k}={v!r}" for k, v in (card.get("kwargs") or {}).items())
    return _code(
        f"model = timm.create_model({card['architecture']!r}, pretrained=True, num_classes=0, in_chans={c},\n"
        f"                          pretrained_cfg_overlay=dict(file=\"{dir_name}/{WEIGHTS}\", "
        f"input_size=({c}, {h}, {w}),\n"
        f"                                                      mean={tuple(card['mean'])}, std={tuple(card['std'])})"
        + (f",\n                          {kwargs[2:]}" if kwargs else "") + ").eval()")


def _torchvision_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    c = card["in_chans"]
    if _exported(card, "torchvision"):
        conv1 = "" if c == 3 else (f"model.conv1 = torch.nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, "
                                   f"bias=False)  # {c}-channel images\n")
        return _code(f"import torch, torchvision\nfrom safetensors.torch import load_file\n"
                     f"model = {torchvision_call(card)}\n"
                     f"model.fc = torch.nn.Identity()  # features, as the timm encoder\n{conv1}"
                     f"model.load_state_dict(load_file(\"{dir_name}/{FORMAT_FILES['torchvision']}\"))\n"
                     f"model.eval()")
    problem = torchvision_problem(card)
    if problem:
        return f"Not available for this encoder: {problem}.\n"
    return (f"`selfsup.artifacts.load.to_torchvision(\"{dir_name}\")` returns it as a torchvision model; "
            f"{_how_to_write('torchvision', dir_name)}.\n")


def _torchscript_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    if not _exported(card, "torchscript"):
        return f"{_how_to_write('torchscript', dir_name)}.\n"
    return _code(f"import torch\nmodel = torch.jit.load(\"{dir_name}/{FORMAT_FILES['torchscript']}\")\n"
                 f"features = model(x)  # [B, {card['num_features']}]")


def _onnx_snippet(card: Mapping[str, Any], dir_name: str) -> str:
    if not _exported(card, "onnx"):
        return (f"{_how_to_write('onnx', dir_name)} (ONNX opset {ONNX_OPSET}, dynamic batch axis; needs "
                f"`pip install 'selfsup[onnx]'`).\n")
    return _code(f"import onnxruntime\n"
                 f"session = onnxruntime.InferenceSession(\"{dir_name}/{FORMAT_FILES['onnx']}\")\n"
                 f"features = session.run([\"{ONNX_OUTPUT}\"], {{\"{ONNX_INPUT}\": x.numpy()}})[0]  "
                 f"# [B, {card['num_features']}], any batch size")


def decoding_note(in_chans: int) -> str:
    """How selfsup decoded the training images (:func:`selfsup.data.imagefiles.decode_image`), for a user who
    feeds the encoder from image files with other code: the steps plain timm or torchvision loaders skip."""
    colour = ("converted to one grayscale channel by Pillow's `convert(\"L\")` (ITU-R 601-2 luma; feed the encoder "
              "one channel: `timm.create_model(..., in_chans=3)` would instead average the stem's weights over three "
              "channels, another function)" if in_chans == 1 else "converted to RGB by Pillow's `convert(\"RGB\")`")
    return ("Image files were decoded as an image viewer shows them, which plain timm and torchvision loaders do "
            "not all do: the EXIF orientation applied (`PIL.ImageOps.exif_transpose`), the first frame of "
            "animations, transparency dropped (not composited), unsigned 16-bit images scaled by 255 / 65535 (32-bit, "
            "signed and floating-point images were refused), then "
            f"{colour}; the shorter side resized to the input size (antialiased), then a centre crop.\n")


def _usage(card: Mapping[str, Any], dir_name: str) -> str:
    c, h, w = card["input_size"]
    intro = (f"Inputs are images resized to {h}x{w} with {c} channel{'s' * (c != 1)}, scaled to [0, 1] and "
             f"normalised per channel; the output is the pooled feature vector `[B, {card['num_features']}]` "
             f"(no classifier).\n"
             + ("\n" + decoding_note(c) if card.get("training_config", {}).get("data", {}).get("name") == "image-folder"
                else ""))
    selfsup_snippet = _code(f"import selfsup\nmodel = selfsup.load_encoder(\"{dir_name}\")  "
                            f"# eval mode; model.selfsup_info has the input size, mean and std")
    overlay = ("With timm older than 1.0.16 (no `local-dir:`), or to spell the architecture out:\n\n"
               + _timm_overlay_snippet(card, dir_name))
    parts = [intro, "**timm**\n", _timm_snippet(card, dir_name), overlay, "**selfsup**\n", selfsup_snippet,
             "**torchvision**\n", _torchvision_snippet(card, dir_name),
             "**TorchScript**\n", _torchscript_snippet(card, dir_name), "**ONNX**\n", _onnx_snippet(card, dir_name)]
    return "\n".join(parts)


def _files(card: Mapping[str, Any]) -> str:
    lines = ["| file | what | checked against the timm encoder |", "|---|---|---|",
             f"| `{WEIGHTS}` | the timm model's state dict | the reference |",
             f"| `{CARD}` | timm's model config (architecture, `model_args`, `pretrained_cfg` with input size and "
             f"normalisation); selfsup's training config, results and checks under `selfsup` | |"]
    what = {"torchscript": "TorchScript (traced)", "onnx": f"ONNX, opset {ONNX_OPSET}, dynamic batch axis",
            "torchvision": "state dict keyed for torchvision (no `fc`)"}
    for fmt, rec in (card.get("exports") or {}).items():
        check = (f"max abs diff {rec['max_abs_diff']:.2g} (bound {rec['tolerance']:.2g}), {rec['checked_with']}"
                 if rec.get("checked_with") else rec.get("note", "not checked"))
        lines.append(f"| `{rec['file']}` | {what.get(fmt, fmt)} | {check} |")
    return "\n".join(lines) + "\n"


def model_card_markdown(card: Mapping[str, Any], dir_name: str) -> str:
    """``README.md`` of an export directory: YAML front matter for the Hugging Face Hub, how the encoder
    was trained and how it scored (from the card), and how to load it with each library."""
    data = card.get("training_config", {}).get("data", {}).get("name", "?")
    intro = (f"# {card['architecture']} pretrained with {card['method']} (selfsup)\n\n"
             f"A timm `{card['architecture']}` encoder without classifier (`num_classes=0`), pretrained with "
             f"selfsup: {card.get('method_reference', card['method'])}.\n")
    training = ("## Training\n\n| | |\n|---|---|\n"
                + "".join(f"| {k} | {v} |\n" for k, v in _training_rows(card))
                + f"\nThe whole training config is `training_config` in `{CARD}`.\n")
    results = results_markdown(card.get("results") or {}, data, card["input_size"][-1])
    return "\n".join([_front_matter(card, dir_name), intro, training, "## Evaluation\n", results, "## Use\n",
                      _usage(card, dir_name), "## Files\n", _files(card)])
