"""Training and running the detector: images matched to the encoder's channels, SGD with
linear warmup then cosine decay at a fixed seed, and prediction on a test set."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.transforms.v2 import functional as TF

from selfsup.config import DetectionConfig
from selfsup.detection.boxes import DetectionDataset, Target, detection_collate
from selfsup.encoders import EncoderError
from selfsup.losses import NonFiniteLossError
from selfsup.progress import Bar
from selfsup.schedules import cosine_factors, warmup_steps


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
    linear warmup then cosine decay per step; returns the step count, time and last losses.
    Deformable blocks' offset/modulation predictors train at ``cfg.offset_lr_mult`` times the lr
    (default the DCNv2 authors' 0.1; :func:`selfsup.detection.deformable.offset_lr_groups`).

    A bar over the steps is drawn on stderr where someone watches it (:mod:`selfsup.progress`).

    Raises:
        NonFiniteLossError: when a step's loss is not finite (names the epoch, step and losses).
    """
    import timm.optim
    from tqdm import tqdm  # tqdm.external_write_mode: the epoch's line above the bar (tqdm comes with Lightning)

    from selfsup.detection.deformable import offset_lr_groups

    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
                        num_workers=cfg.num_workers, collate_fn=detection_collate,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=cfg.num_workers > 0)
    lr = cfg.lr * cfg.batch_size / 16
    # deformable blocks' offset/modulation predictors at cfg.offset_lr_mult x lr (selfsup.detection.deformable)
    groups = offset_lr_groups(timm.optim.param_groups_weight_decay(model, cfg.weight_decay), model, lr,
                              cfg.offset_lr_mult)
    opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    total = cfg.epochs * len(loader)
    factors = cosine_factors(total, warmup_steps(cfg.warmup_steps, total), 0.0).tolist()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factors[min(s, total)])
    model.to(device).train()
    t0, step = time.perf_counter(), 0
    window: deque[dict[str, float]] = deque(maxlen=20)  # the last steps' losses
    with Bar("[detection] training", total, unit="step") as bar:  # removed on error too
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
                bar.update()
            with tqdm.external_write_mode():
                log(f"[detection] epoch {epoch + 1}/{cfg.epochs}: loss "
                    f"{sum(sum(w.values()) for w in window) / len(window):.3f}")
    last = {k: round(sum(w[k] for w in window) / len(window), 4) for k in window[0]} if window else {}
    offset_mult = {g["lr_mult"] for g in groups if "lr_mult" in g}
    return {"steps": step, "lr": lr, **({"offset_lr_mult": offset_mult.pop()} if offset_mult else {}),
            "train_seconds": round(time.perf_counter() - t0, 1), "final_losses": last}


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

