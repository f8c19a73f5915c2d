"""Detection transfer of one target: train the detector on its frozen encoder, score it on the
test split with COCO mAP, draw a few test images with their boxes, and tabulate the rows.

Images are resized to ``detection.image_size`` squared and normalised with the encoder's
mean/std; RGB images are converted to grayscale for 1-channel encoders (ITU-R 601 luma) and
grayscale images repeated for 3-channel ones. Training: SGD with momentum, linear warmup then
cosine decay, fixed seed (:mod:`selfsup.detection.train`). Scoring: COCOeval through torchmetrics,
mAP@[.5:.95], AP50, AP75 and per-class AP (:mod:`selfsup.detection.metrics`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from selfsup.config import DetectionConfig, RunConfig
from selfsup.data import DataInfo
from selfsup.detection.boxes import DetectionDataset
from selfsup.detection.datasets import detection_data
from selfsup.detection.metrics import coco_map
from selfsup.detection.model import SimplePyramid, build_detector
from selfsup.detection.train import image_stats, predict, train_detector
from selfsup.eval.evaluate import EncoderLoader, default_device, resolve_target
from selfsup.plots import detection_boxes
from selfsup.rundir import training_warning, weights_record
from selfsup.safeload import LoadError

#: test images drawn with their boxes after each evaluation
PICTURE_IMAGES = 6


def detection_data_info(train: DetectionDataset, cfg: DetectionConfig, in_chans: int | None = None) -> DataInfo:
    """What a random encoder is built for: ``in_chans`` (default: the images'), the detection image
    size, the dataset's classes and channel statistics."""
    c = in_chans or train.in_chans
    mean, std = image_stats(train, c)
    return DataInfo(c, cfg.image_size, train.num_classes, mean, std, len(train))


def check_target(spec: str) -> None:
    """Raise a LoadError for targets that cannot be detection backbones (raw pixels)."""
    if spec == "pixels":
        raise LoadError("raw pixels have no feature maps to detect from; evaluate an encoder, and use "
                        "--baseline random:<timm-name> as the detection baseline")


def draw_detections(test: DetectionDataset, predictions: list[dict[str, Tensor]], out: str | Path,
                    count: int = PICTURE_IMAGES, min_score: float = 0.5) -> Path | None:
    """The first ``count`` test images with their ground-truth boxes and the predicted boxes scoring
    at least ``min_score`` (:func:`selfsup.plots.detection_boxes`), one panel each, written to ``out``
    (PNG). None when there is no test image."""
    n = min(count, len(test), len(predictions))
    images = [test.image(i).float().div(255).numpy() for i in range(n)]  # [C, H, W] in [0, 1]
    truths = [test.target(i)["boxes"].numpy() for i in range(n)]  # [N, 4] xyxy
    boxes = [predictions[i]["boxes"].float().numpy() for i in range(n)]  # [M, 4] xyxy
    scores = [predictions[i]["scores"].float().numpy() for i in range(n)]  # [M]
    return detection_boxes(images, truths, boxes, scores, out, min_score=min_score)


def picture_name(label: str) -> str:
    """The file name of a target's detection picture: ``detection_<label>.png``, the label made safe."""
    return "detection_" + re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") + ".png"


def evaluate_detection(spec: str, cfg: RunConfig, device: str | None = None, in_chans: int | None = None,
                       data: tuple[DetectionDataset, DetectionDataset] | None = None,
                       log: Callable[[str], None] = print, plot_dir: str | Path | None = None,
                       load: EncoderLoader | None = None) -> dict[str, Any]:
    """Train a detector on target ``spec``'s frozen encoder and score it on the test split.

    ``in_chans`` sets the channels of a random encoder (to match the encoder it is compared
    with); ``data`` reuses already built (train, test) sets; with ``plot_dir`` the first test
    images are drawn with their true and predicted boxes into ``plot_dir/detection_<label>.png``.

    Raises:
        LoadError: for a target without feature maps (``pixels``).
        NonFiniteLossError: when the detection loss stops being finite (lower ``detection.lr``).
    """
    check_target(spec)
    t0 = time.perf_counter()
    dcfg = cfg.detection
    device = device or default_device(cfg.trainer.accelerator)
    train, test = data or detection_data(cfg)
    target = resolve_target(spec, cfg, lambda: detection_data_info(train, dcfg, in_chans), load)
    info = target.info
    log(f"[detection] {target.label} on {dcfg.dataset}: {len(train)} train / {len(test)} test images, "
        f"{train.num_classes} classes, {dcfg.epochs} epoch{'' if dcfg.epochs == 1 else 's'}, trainable_layers={dcfg.trainable_layers}"
        + (", deformable FPN/RPN convs (DCNv2)" if dcfg.deformable else ""))
    torch.manual_seed(cfg.seed)
    model = build_detector(target.encoder, info, train.num_classes, dcfg)
    encoder_trainable = sum(p.numel() for p in model.backbone.body.encoder.parameters() if p.requires_grad)
    detector_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fit = train_detector(model, train, dcfg, info.in_chans, device, cfg.seed, log)
    t_eval = time.perf_counter()
    preds = predict(model, test, info.in_chans, device, dcfg.batch_size * 2, dcfg.num_workers)
    metrics = coco_map([test.target(i) for i in range(len(test))], preds, test.class_names)
    backbone = model.backbone
    row = {
        "target": spec, "label": target.label, "kind": target.kind, "task": "detection",
        **weights_record(spec, target.kind),  # a run's steps: selfsup compare warns after a resume trains on
        "warnings": [w for w in [training_warning(spec, target.kind)] if w],
        # every detection key but how fast (selfsup compare tells folders trained otherwise apart by them)
        "detection_settings": {k: v for k, v in dataclasses.asdict(dcfg).items() if k != "num_workers"},
        "dataset": dcfg.dataset, "classes": test.class_names,
        "train_images": len(train), "test_images": len(test), "train_boxes": train.num_boxes,
        "test_boxes": test.num_boxes, **metrics,
        "encoder": {"in_chans": info.in_chans, "mean": list(info.mean), "std": list(info.std),
                    "pyramid": "vitdet-simple" if isinstance(backbone.body, SimplePyramid) else "fpn",
                    "strides": backbone.strides, "trainable_params": encoder_trainable},
        "detector_trainable_params": detector_trainable, "anchor_sizes": model.anchor_sizes,
        "image_size": dcfg.image_size, "epochs": dcfg.epochs, "batch_size": dcfg.batch_size,
        "trainable_layers": dcfg.trainable_layers, "deformable": dcfg.deformable,
        "deformable_convs": model.deformable, "seed": cfg.seed, "data_seed": dcfg.data_seed, **fit,
        "eval_seconds": round(time.perf_counter() - t_eval, 1),
        "dropped": train.report.as_dict() if train.report is test.report else
        {"train": train.report.as_dict(), "test": test.report.as_dict()},
        "data": {k: v for k, v in train.meta.items() if isinstance(v, (int, float, str))},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if plot_dir is not None:
        picture = draw_detections(test, preds, Path(plot_dir) / picture_name(table_label(row)))
        log(f"[detection] picture: {picture}")
    return row



def table_label(row: dict[str, Any]) -> str:
    """A result row's encoder label, marked `` + DCNv2`` when its detector had deformable convolutions."""
    return row["label"] + (" + DCNv2" if row.get("deformable") else "")


def _ap(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def detection_markdown(rows: list[dict[str, Any]]) -> str:
    """A results table (mAP, AP50, AP75 per encoder and dataset), per-class AP per dataset, and the protocol."""
    if not rows:
        return ""
    lines = ["| encoder | dataset | mAP@[.5:.95] | AP50 | AP75 | train / test images | epochs (steps) | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {table_label(r)} | {r['dataset']} | {r['map']:.2f} | {r['ap50']:.2f} | {r['ap75']:.2f} | "
                     f"{r['train_images']} / {r['test_images']} | {r['epochs']} ({r['steps']}) | {r['seconds']:.0f} |")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        classes = group[0]["classes"]
        if len(classes) < 2:
            continue
        lines += ["", f"Per-class AP@[.5:.95] on {dataset}:", "",
                  "| encoder | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        lines += [f"| {table_label(r)} | " + " | ".join(_ap(r["per_class_ap"].get(c)) for c in classes) + " |"
                  for r in group]
    said = [f"**Warning** ({table_label(r)}): {w}" for r in rows for w in r.get("warnings") or []]
    if said:  # a run evaluated while it trained: its numbers are of a checkpoint on the way
        lines += ["", *(f"- {w}" for w in said)]
    first = rows[0]
    frozen = ("encoder frozen" if first["trainable_layers"] == 0
              else f"{first['trainable_layers']} deepest encoder stages trained")
    notes = [(f"Faster R-CNN with an FPN (torchvision) on each encoder's feature maps, {frozen}, BatchNorm frozen; "
              f"{first['image_size']}x{first['image_size']} images, SGD at batch {first['batch_size']} (lr "
              f"{first['lr']:g}, warmup then cosine), seed {first['seed']}; COCOeval AP in percent on the test "
              f"split, final weights."),
             "1-channel encoders see RGB images as grayscale; images are normalised with each encoder's own mean/std."]
    if any(r.get("deformable") for r in rows):
        mults = ", ".join(f"{m:g}" for m in dict.fromkeys(r["offset_lr_mult"] for r in rows if "offset_lr_mult" in r))
        notes.append("+ DCNv2: the FPN output and RPN head 3x3 convolutions are modulated deformable convolutions "
                     "(Zhu et al. 2019) whose offsets and modulation come from zero-initialised convolutions, the "
                     "modulation scaled as 2*sigmoid so training starts from the plain detector, and the offset/"
                     f"modulation predictors trained at detection.offset_lr_mult ({mults}) x the lr (the DCNv2 "
                     "authors' lr_mult is 0.1).")
    notes += [f"{label}: random init with timm's zero_init_last disabled (a fair baseline)."
              for label in dict.fromkeys(r["label"] for r in rows if r["kind"] == "random")]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
