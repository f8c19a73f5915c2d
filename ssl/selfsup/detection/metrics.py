"""COCO box mAP of a detector's predictions, through torchmetrics' ``MeanAveragePrecision``.

torchmetrics hands the boxes to pycocotools' ``COCOeval`` (bbox, IoU 0.50:0.05:0.95, 101 recall
points, at most 100 detections per image, area "all"): mAP@[.5:.95], AP50, AP75, and per class the
same mAP over that class's images, in percent. The IoU and recall thresholds are pycocotools' own
(float64): torchmetrics' defaults come from a float32 ``torch.linspace`` (0.57 is 0.5699999928), which
moves AP whenever a recall lands exactly on a threshold (measured: 22.12 instead of COCO's 22.18 on
25 random images).
"""

from __future__ import annotations

from typing import Any

import torch
from pycocotools.cocoeval import Params
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

from selfsup.detection.boxes import Target


def _percent(value: float) -> float:
    """COCO's fraction in percent, 2 decimals; COCOeval's -1 (nothing to score) is 0."""
    return round(max(float(value), 0.0) * 100, 2)


def _labels(items: list[dict[str, Tensor]]) -> Tensor:
    """Every ``labels`` entry of ``items``, int64 ``[sum N]`` (empty for no items)."""
    return torch.cat([d["labels"].reshape(-1).long() for d in items] + [torch.zeros(0, dtype=torch.long)])


def coco_map(targets: list[Target], predictions: list[dict[str, Tensor]], class_names: list[str]) -> dict[str, Any]:
    """COCO bbox evaluation of ``predictions`` against ``targets``, one entry per image.

    Args:
        targets: ``{"boxes": float [N, 4] xyxy pixels, "labels": int64 [N] in 1..K}`` per image.
        predictions: ``{"boxes": [M, 4] xyxy, "scores": [M], "labels": int64 [M] in 1..K}`` per image.
        class_names: the K class names, label k+1 is ``class_names[k]``.

    Returns:
        ``{"map", "ap50", "ap75"}`` in percent, ``"per_class_ap"`` (name -> AP@[.5:.95] in percent,
        None for a class without ground truth in these images) and ``"detections"`` (the count).

    Raises:
        ValueError: when ``targets`` and ``predictions`` differ in length, or a label is outside 1..K.
    """
    if len(targets) != len(predictions):
        raise ValueError(f"coco_map got {len(targets)} target images but {len(predictions)} prediction images; "
                         f"pass one prediction per test image")
    labels = _labels([*targets, *predictions])  # [sum N + sum M]
    if not ((labels >= 1) & (labels <= len(class_names))).all():
        raise ValueError(f"coco_map got labels {sorted(set(labels.tolist()) - set(range(1, len(class_names) + 1)))} "
                         f"outside 1..{len(class_names)} (the {len(class_names)} classes); label 0 is background")
    coco = Params(iouType="bbox")  # COCO's thresholds, as COCOeval itself builds them
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=coco.iouThrs.tolist(),
                                  rec_thresholds=coco.recThrs.tolist(), max_detection_thresholds=list(coco.maxDets),
                                  class_metrics=True, backend="pycocotools")
    metric.update([{k: p[k].float() if k != "labels" else p[k].long() for k in ("boxes", "scores", "labels")}
                   for p in predictions],
                  [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets])
    res = metric.compute()
    with_truth = set(_labels(targets).tolist())
    class_ap = res.get("map_per_class", torch.zeros(0))  # [classes]; absent when there is no image at all
    scored = dict(zip(res["classes"].reshape(-1).tolist(), class_ap.reshape(-1).tolist()))
    per_class = {name: (_percent(scored.get(k + 1, 0.0)) if k + 1 in with_truth else None)
                 for k, name in enumerate(class_names)}
    return {"map": _percent(res["map"]), "ap50": _percent(res["map_50"]), "ap75": _percent(res["map_75"]),
            "per_class_ap": per_class, "detections": sum(len(p["scores"]) for p in predictions)}
