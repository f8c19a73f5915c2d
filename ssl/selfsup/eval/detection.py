"""Detection transfer of a frozen encoder: torchvision's Faster R-CNN on a feature pyramid.

The detector is torchvision's ``FasterRCNN`` (Ren et al. 2015, "Faster R-CNN: Towards
Real-Time Object Detection with Region Proposal Networks") on torchvision's
``FeaturePyramidNetwork`` (Lin et al. 2017, "Feature Pyramid Networks for Object Detection").
The pyramid is built on a copy of the encoder being evaluated (freezing it and resizing a
ViT's position embeddings leave the caller's module as it was):

- convnets (any timm model whose ``feature_info`` has several strides): the deepest map of each
  stride >= 4, read with timm's ``forward_intermediates``;
- plain ViTs (one stride): ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain
  Vision Transformer Backbones for Object Detection") from the last block's map at stride p:
  two 2x deconvolutions (p/4), one (p/2), identity (p) and a 2x max-pool (2p). torchvision's
  FPN then adds its lateral and output convolutions (and a top-down sum ViTDet does without).

The encoder is frozen by default (``trainable_layers=0``); its BatchNorm layers are always
kept in eval mode with frozen affines, so the score measures the features. Images are
resized to ``image_size`` x ``image_size`` and normalised with the encoder's mean/std; RGB
images are converted to grayscale for 1-channel encoders (ITU-R 601 luma) and grayscale
images repeated for 3-channel ones. Training: SGD with momentum, linear warmup then cosine
decay, fixed seed. Scoring: pycocotools' COCOeval, mAP@[.5:.95], AP50, AP75 and per-class AP.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from collections import OrderedDict, deque
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, box_convert
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.transforms.v2 import functional as TF

from selfsup.config import DataConfig, DetectionConfig, RunConfig
from selfsup.data import DataInfo
from selfsup.data.detection import DetectionDataset, Target, build_detection_data, detection_collate
from selfsup.encoders import EncoderError
from selfsup.losses import NonFiniteLossError
from selfsup.schedules import cosine_factors

# --------------------------------------------------------------------------- feature pyramids


def _feature_info(encoder: nn.Module) -> list[dict[str, Any]]:
    info = getattr(encoder, "feature_info", None)
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    if not info or not hasattr(encoder, "forward_intermediates"):
        raise EncoderError(f"{type(encoder).__name__} has no timm feature_info / forward_intermediates, so no "
                           f"feature maps can be read from it for detection; use a timm convnet or ViT")
    return list(info)


def is_plain_vit(encoder: nn.Module) -> bool:
    """A single-stride transformer (ViT, DeiT, ...): every ``feature_info`` entry has one reduction."""
    info = _feature_info(encoder)
    return len({d["reduction"] for d in info}) == 1 and hasattr(encoder, "patch_embed")


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


class ConvPyramid(nn.Module):
    """Multi-scale maps of a timm convnet: for each stride >= 4, the deepest stage with that stride.

    ``forward(x [B, C, H, W])`` -> OrderedDict ``{"0": [B, C0, H/s0, W/s0], ...}``, finest first.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        info = _feature_info(encoder)
        last_of_stride: dict[int, int] = {}
        for i, d in enumerate(info):
            if d["reduction"] >= 4:
                last_of_stride[d["reduction"]] = i  # a deeper stage at the same stride (dilation) wins
        if not last_of_stride:
            raise EncoderError(f"{type(encoder).__name__} has no feature map at stride >= 4")
        self.indices = sorted(last_of_stride.values())
        self.strides = [info[i]["reduction"] for i in self.indices]
        self.channels = [info[i]["num_chs"] for i in self.indices]
        self.deepest = info[self.indices[-1]]["module"]  # the last module whose output is read

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not _frozen(self.encoder)):
            maps = self.encoder.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al. 2022) from a plain ViT's last block.

    The last block's tokens form a map ``[B, D, H/p, W/p]``; deconvolutions give strides p/4
    (``D/4`` channels) and p/2 (``D/2``), the map itself stride p (``D``) and a max-pool stride
    2p (``D``). The ViT's position embeddings are resampled to the detector's input size.
    """

    def __init__(self, encoder: nn.Module, input_size: int) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        self.encoder = encoder
        p = encoder.patch_embed.patch_size[0]
        if p < 4 or p & (p - 1):
            raise EncoderError(f"the ViT's patch size {p} is not a power of two >= 4; the feature pyramid needs "
                               f"power-of-two strides from p/4 to 2p")
        if input_size % p:
            raise EncoderError(f"detection image size {input_size} is not a multiple of the ViT's patch size {p}")
        if tuple(encoder.patch_embed.img_size) != (input_size, input_size):
            encoder.set_input_size(img_size=(input_size, input_size))
        d = encoder.num_features
        self.up4 = nn.Sequential(nn.ConvTranspose2d(d, d // 2, 2, stride=2), LayerNorm2d(d // 2), nn.GELU(),
                                 nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(d, d // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2)
        self.strides = [p // 4, p // 2, p, 2 * p]
        self.channels = [d // 4, d // 2, d, d]
        self.deepest = _feature_info(encoder)[-1]["module"]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not _frozen(self.encoder)):
            m = self.encoder.forward_intermediates(x, indices=1, intermediates_only=True)[-1]  # [B, D, H/p, W/p]
        maps = [self.up4(m), self.up2(m), m, self.down2(m)]
        return OrderedDict((str(i), t) for i, t in enumerate(maps))


class EncoderFPN(nn.Module):
    """A pyramid body plus torchvision's FPN with a max-pooled extra level (``"pool"``);
    ``out_channels`` as torchvision's detectors expect. BatchNorm layers of the encoder stay in
    eval mode whatever ``train()`` says, and a fully frozen encoder stays in eval mode."""

    def __init__(self, body: ConvPyramid | SimplePyramid, channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels
        self.strides = [*body.strides, 2 * body.strides[-1]]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))

    def train(self, mode: bool = True) -> "EncoderFPN":
        super().train(mode)
        encoder = self.body.encoder
        if _frozen(encoder):
            encoder.eval()
        for m in encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def freeze_encoder(encoder: nn.Module, trainable_layers: int, deepest: str) -> int:
    """Freeze ``encoder`` except its ``trainable_layers`` deepest stages, counted back from the
    stage holding module ``deepest`` (the last one the pyramid reads; later layers such as a
    final norm never see a gradient). Stages are timm's coarse parameter groups (stem, then
    stages or blocks); more than there are trains all of them. BatchNorm affines are always
    frozen. Returns the number of trainable encoder parameters."""
    from timm.models import group_parameters

    encoder.requires_grad_(False)
    if trainable_layers > 0:
        if not hasattr(encoder, "group_matcher"):
            raise EncoderError(f"{type(encoder).__name__} has no timm group_matcher, so its stages are unknown; "
                               f"set detection.trainable_layers=0")
        groups = list(group_parameters(encoder, encoder.group_matcher(coarse=True)).values())
        last = max((i for i, names in enumerate(groups) if any(n.startswith(f"{deepest}.") for n in names)),
                   default=len(groups) - 1)
        groups = groups[:last + 1]
        params = dict(encoder.named_parameters())
        for names in groups[-trainable_layers:]:
            for n in names:
                params[n].requires_grad_(True)
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.requires_grad_(False)
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def anchor_sizes(cfg: DetectionConfig, levels: int) -> list[int]:
    """One anchor side per pyramid level, finest first: ``cfg.anchor_sizes``, or ``image_size/16``
    doubling per level (128-pixel images: 8, 16, 32, 64, 128)."""
    if cfg.anchor_sizes:
        if len(cfg.anchor_sizes) != levels:
            raise EncoderError(f"detection.anchor_sizes has {len(cfg.anchor_sizes)} sizes but this encoder's "
                               f"pyramid has {levels} levels; give {levels} sizes or leave it empty")
        return list(cfg.anchor_sizes)
    base = max(4, round(cfg.image_size / 16))
    return [base * 2 ** i for i in range(levels)]


def padded_size(size: int, divisor: int = 32) -> int:
    return int(math.ceil(size / divisor) * divisor)


def build_detector(encoder: nn.Module, info: DataInfo, num_classes: int, cfg: DetectionConfig) -> FasterRCNN:
    """Faster R-CNN (Ren et al. 2015) with an FPN (Lin et al. 2017) over the maps of a copy of
    ``encoder`` (``model.backbone.body.encoder``; ``encoder`` itself is left untouched), for
    ``num_classes`` object classes (plus background), on ``info.in_chans``-channel images
    normalised with ``info.mean``/``info.std``; the copy is frozen per ``cfg.trainable_layers``."""
    encoder = copy.deepcopy(encoder)
    vit = is_plain_vit(encoder)
    body = SimplePyramid(encoder, padded_size(cfg.image_size)) if vit else ConvPyramid(encoder)
    freeze_encoder(encoder, cfg.trainable_layers, body.deepest)
    backbone = EncoderFPN(body, cfg.fpn_channels)
    levels = len(backbone.strides)
    sizes = anchor_sizes(cfg, levels)
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * levels)
    # one bilinear sample per RoIAlign bin: Mask R-CNN (He et al. 2017, sec. 3) finds the result insensitive
    # to the number of samples, and on a CPU the backward pass of 2x2 samples dominates a training step
    roi_pool = MultiScaleRoIAlign([str(i) for i in range(levels - 1)], output_size=7, sampling_ratio=1)
    model = FasterRCNN(
        backbone, num_classes=None,
        min_size=cfg.image_size, max_size=cfg.image_size, fixed_size=(cfg.image_size, cfg.image_size),
        size_divisible=32, image_mean=list(info.mean), image_std=list(info.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),
        box_batch_size_per_image=cfg.rois_per_image, box_score_thresh=cfg.score_threshold, box_detections_per_img=100,
    )
    model.anchor_sizes = sizes
    return model


# --------------------------------------------------------------------------- inputs


def match_channels(image: Tensor, in_chans: int) -> Tensor:
    """``[C, H, W]`` -> ``[in_chans, H, W]``: RGB to grayscale (ITU-R 601 luma) for 1-channel
    encoders, grayscale repeated for 3-channel ones."""
    c = image.shape[0]
    if c == in_chans:
        return image
    if in_chans == 1 and c == 3:
        return TF.rgb_to_grayscale(image, num_output_channels=1)
    if c == 1:
        return image.expand(in_chans, -1, -1)
    raise EncoderError(f"cannot feed {c}-channel images to a {in_chans}-channel encoder")


def prepare_batch(images: list[Tensor], targets: list[Target], in_chans: int, device: str,
                  hflip: bool = False) -> tuple[list[Tensor], list[Target]]:
    """uint8 images -> float [0, 1] ``[in_chans, H, W]`` on ``device``; with ``hflip`` each image
    and its boxes are mirrored with probability 0.5 (torchvision's v2 flip on tv_tensors)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    flip = v2.RandomHorizontalFlip(0.5)
    out_i, out_t = [], []
    for img, tgt in zip(images, targets):
        img = match_channels(img, in_chans)
        boxes = tgt["boxes"]
        if hflip:
            img, boxes = flip(tv_tensors.Image(img),
                              tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(img.shape[-2:])))
        out_i.append(TF.to_dtype(img.as_subclass(Tensor), torch.float32, scale=True).to(device))
        out_t.append({"boxes": boxes.as_subclass(Tensor).float().to(device), "labels": tgt["labels"].to(device)})
    return out_i, out_t


def image_stats(ds: DetectionDataset, in_chans: int, max_images: int = 200) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over the first ``max_images`` images (random encoders)."""
    xs = [TF.to_dtype(match_channels(ds.image(i), in_chans), torch.float32, scale=True).flatten(1)
          for i in range(min(len(ds), max_images))]
    x = torch.cat(xs, 1)  # [C, pixels]
    mean, std = x.mean(1), x.std(1).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


# --------------------------------------------------------------------------- training


def train_detector(model: FasterRCNN, ds: DetectionDataset, cfg: DetectionConfig, in_chans: int, device: str,
                   seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """SGD (momentum, weight decay off norms and biases) over ``cfg.epochs`` epochs of ``ds``,
    linear warmup then cosine decay per step; returns the step count, time and last losses."""
    import timm.optim

    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
                        num_workers=cfg.num_workers, collate_fn=detection_collate,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=cfg.num_workers > 0)
    groups = [g for g in timm.optim.param_groups_weight_decay(model, cfg.weight_decay) if g["params"]]
    lr = cfg.lr * cfg.batch_size / 16
    opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    total = cfg.epochs * len(loader)
    factors = cosine_factors(total, min(cfg.warmup_steps, total // 2), 0.0).tolist()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factors[min(s, total)])
    model.to(device).train()
    t0, step = time.perf_counter(), 0
    window: deque[dict[str, float]] = deque(maxlen=20)  # the last steps' losses
    for epoch in range(cfg.epochs):
        for images, targets in loader:
            images, targets = prepare_batch(images, targets, in_chans, device, hflip=cfg.hflip)
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the detection loss is not finite at epoch {epoch}, step {step} "
                    f"({ {k: float(v.detach()) for k, v in losses.items()} }); lower detection.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            window.append({k: float(v.detach()) for k, v in losses.items()})
        log(f"[detection] epoch {epoch + 1}/{cfg.epochs}: loss {sum(sum(w.values()) for w in window) / len(window):.3f}")
    last = {k: round(sum(w[k] for w in window) / len(window), 4) for k in window[0]} if window else {}
    return {"steps": step, "lr": lr, "train_seconds": round(time.perf_counter() - t0, 1), "final_losses": last}


@torch.inference_mode()
def predict(model: FasterRCNN, ds: DetectionDataset, in_chans: int, device: str, batch_size: int = 16,
            num_workers: int = 0) -> list[dict[str, Tensor]]:
    """Detections ``{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N]}`` per image, in the image's
    own pixel coordinates (the detector maps them back from its input size)."""
    model.to(device).eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=detection_collate,
                        num_workers=num_workers)
    out = []
    for images, targets in loader:
        images, _ = prepare_batch(images, targets, in_chans, device)
        out += [{k: v.cpu() for k, v in p.items()} for p in model(images)]
    return out


# --------------------------------------------------------------------------- COCO evaluation


def coco_ground_truth(targets: list[Target], sizes: list[tuple[int, int]], class_names: list[str]):
    """A pycocotools ``COCO`` index of ground-truth boxes: image ids 1..N, annotation ids from 1
    (COCOeval marks unmatched with id 0), categories 1..K; ``sizes`` are (height, width)."""
    from pycocotools.coco import COCO

    images = [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
    anns = []
    for i, t in enumerate(targets):
        xywh = box_convert(t["boxes"].float(), "xyxy", "xywh")
        for box, label in zip(xywh.tolist(), t["labels"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label), "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_detections(predictions: list[dict[str, Tensor]]) -> list[dict[str, Any]]:
    """Detections in COCO's result format (xywh boxes, image ids 1..N)."""
    out = []
    for i, p in enumerate(predictions):
        xywh = box_convert(p["boxes"].float(), "xyxy", "xywh")
        for box, score, label in zip(xywh.tolist(), p["scores"].tolist(), p["labels"].tolist()):
            out.append({"image_id": i + 1, "category_id": int(label), "bbox": box, "score": float(score)})
    return out


def coco_map(targets: list[Target], predictions: list[dict[str, Tensor]], sizes: list[tuple[int, int]],
             class_names: list[str]) -> dict[str, Any]:
    """COCOeval (bbox) of ``predictions`` against ``targets``: mAP@[.5:.95], AP50, AP75 and the
    AP of each class (area "all", 100 detections), in percent; a class without ground truth
    in these images has AP None."""
    from pycocotools.cocoeval import COCOeval

    gt = coco_ground_truth(targets, sizes, class_names)
    dets = coco_detections(predictions)
    if not dets:  # pycocotools cannot load an empty result list
        per = {n: (0.0 if any((t["labels"] == k + 1).any() for t in targets) else None)
               for k, n in enumerate(class_names)}
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0, "per_class_ap": per, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T iou, R recall, K classes, A areas, M max-dets]
    per = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        per[name] = round(float(valid.mean()) * 100, 2) if valid.size else None

    def pct(v: float) -> float:
        return round(max(float(v), 0.0) * 100, 2)  # COCOeval reports -1 when nothing can be scored

    return {"map": pct(ev.stats[0]), "ap50": pct(ev.stats[1]), "ap75": pct(ev.stats[2]), "per_class_ap": per,
            "detections": len(dets)}


# --------------------------------------------------------------------------- the task


def detection_data_info(train: DetectionDataset, cfg: DetectionConfig, in_chans: int | None = None) -> DataInfo:
    """What a random encoder is built for: ``in_chans`` (default: the images'), the detection image
    size, the dataset's classes and channel statistics."""
    c = in_chans or train.in_chans
    mean, std = image_stats(train, c)
    return DataInfo(c, cfg.image_size, train.num_classes, mean, std, len(train))


def check_target(spec: str) -> None:
    """Raise a LoadError for targets that cannot be detection backbones (raw pixels)."""
    from selfsup.safeload import LoadError

    if spec == "pixels":
        raise LoadError("raw pixels have no feature maps to detect from; evaluate an encoder, and use "
                        "--baseline random:<timm-name> as the detection baseline")


def detection_data(cfg: RunConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """(train, test) sets of ``cfg.detection``; synthetic-fmnist reads Fashion-MNIST where the run
    found it (``cfg.data.root``) at its native 28x28."""
    fmnist = None
    if cfg.data.name == "fashion-mnist":
        fmnist = DataConfig(name="fashion-mnist", root=cfg.data.root, download=cfg.data.download)
    return build_detection_data(cfg.detection, fmnist)


def evaluate_detection(spec: str, cfg: RunConfig, device: str | None = None, in_chans: int | None = None,
                       data: tuple[DetectionDataset, DetectionDataset] | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a detector on target ``spec``'s frozen encoder and score it on the test split.

    ``in_chans`` sets the channels of a random encoder (to match the encoder it is compared
    with); ``data`` reuses already built (train, test) sets."""
    from selfsup.eval.evaluate import default_device, resolve_target

    check_target(spec)
    t0 = time.perf_counter()
    dcfg = cfg.detection
    device = device or default_device(cfg.trainer.accelerator)
    train, test = data or detection_data(cfg)
    target = resolve_target(spec, cfg, lambda: detection_data_info(train, dcfg, in_chans))
    info = target.info
    log(f"[detection] {target.label} on {dcfg.dataset}: {len(train)} train / {len(test)} test images, "
        f"{train.num_classes} classes, {dcfg.epochs} epochs, trainable_layers={dcfg.trainable_layers}")
    torch.manual_seed(cfg.seed)
    model = build_detector(target.encoder, info, train.num_classes, dcfg)
    encoder_trainable = sum(p.numel() for p in model.backbone.body.encoder.parameters() if p.requires_grad)
    detector_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fit = train_detector(model, train, dcfg, info.in_chans, device, cfg.seed, log)
    t_eval = time.perf_counter()
    preds = predict(model, test, info.in_chans, device, dcfg.batch_size * 2, dcfg.num_workers)
    sizes = [(s.height, s.width) for s in test.samples]
    metrics = coco_map([test.target(i) for i in range(len(test))], preds, sizes, test.class_names)
    backbone = model.backbone
    return {
        "target": spec, "label": target.label, "kind": target.kind, "task": "detection",
        "dataset": dcfg.dataset, "classes": test.class_names,
        "train_images": len(train), "test_images": len(test), "train_boxes": train.num_boxes,
        "test_boxes": test.num_boxes, **metrics,
        "encoder": {"in_chans": info.in_chans, "mean": list(info.mean), "std": list(info.std),
                    "pyramid": "vitdet-simple" if isinstance(backbone.body, SimplePyramid) else "fpn",
                    "strides": backbone.strides, "trainable_params": encoder_trainable},
        "detector_trainable_params": detector_trainable, "anchor_sizes": model.anchor_sizes,
        "image_size": dcfg.image_size, "epochs": dcfg.epochs, "batch_size": dcfg.batch_size,
        "trainable_layers": dcfg.trainable_layers, "seed": cfg.seed, "data_seed": dcfg.data_seed, **fit,
        "eval_seconds": round(time.perf_counter() - t_eval, 1),
        "dropped": train.report.as_dict() if train.report is test.report else
        {"train": train.report.as_dict(), "test": test.report.as_dict()},
        "data": {k: v for k, v in train.meta.items() if isinstance(v, (int, float, str))},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _ap(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def detection_markdown(rows: list[dict[str, Any]]) -> str:
    """A results table (mAP, AP50, AP75 per encoder and dataset), per-class AP per dataset, and the protocol."""
    if not rows:
        return ""
    lines = ["| encoder | dataset | mAP@[.5:.95] | AP50 | AP75 | train / test images | epochs (steps) | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['dataset']} | {r['map']:.2f} | {r['ap50']:.2f} | {r['ap75']:.2f} | "
                     f"{r['train_images']} / {r['test_images']} | {r['epochs']} ({r['steps']}) | {r['seconds']:.0f} |")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        classes = group[0]["classes"]
        if len(classes) < 2:
            continue
        lines += ["", f"Per-class AP@[.5:.95] on {dataset}:", "",
                  "| encoder | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        lines += [f"| {r['label']} | " + " | ".join(_ap(r["per_class_ap"].get(c)) for c in classes) + " |"
                  for r in group]
    first = rows[0]
    frozen = ("encoder frozen" if first["trainable_layers"] == 0
              else f"{first['trainable_layers']} deepest encoder stages trained")
    notes = [(f"Faster R-CNN with an FPN (torchvision) on each encoder's feature maps, {frozen}, BatchNorm frozen; "
              f"{first['image_size']}x{first['image_size']} images, SGD at batch {first['batch_size']} (lr "
              f"{first['lr']:g}, warmup then cosine), seed {first['seed']}; COCOeval AP in percent on the test "
              f"split, final weights."),
             "1-channel encoders see RGB images as grayscale; images are normalised with each encoder's own mean/std."]
    notes += [f"{label}: random init with timm's zero_init_last disabled (a fair baseline)."
              for label in dict.fromkeys(r["label"] for r in rows if r["kind"] == "random")]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
