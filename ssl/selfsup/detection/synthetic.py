"""``synthetic-fmnist``: Fashion-MNIST test-split objects pasted on black canvases, their 10
classes as labels; deterministic for a given seed."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.datasets import FashionMNIST
from torchvision.ops import box_iou

from selfsup.config import DataConfig, DetectionConfig
from selfsup.data.datasets import ImageDataset, build_dataset
from selfsup.detection.boxes import BoxReport, DetectionDataset, DetectionSample

#: Fashion-MNIST's classes in label order (Xiao et al. 2017), as torchvision names them, lower-cased.
FASHION_MNIST_CLASSES = [c.lower() for c in FashionMNIST.classes]


def render_object(image: Tensor, size: int, ink: int = 8) -> Tensor:
    """A 1-channel uint8 object ``[1, h, w]`` resized to ``size`` x ``size`` (antialiased), with
    pixels darker than ``ink`` set to 0, so its non-zero pixels are exactly the object."""
    from torchvision.transforms.v2 import functional as TF

    patch = TF.resize(image, [size, size], antialias=True)  # [1, size, size]
    return torch.where(patch < ink, torch.zeros_like(patch), patch)


def tight_box(patch: Tensor) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) of the non-zero pixels of ``patch`` ``[C, h, w]`` (x2, y2 exclusive), or None."""
    mask = patch.amax(0) > 0  # [h, w]
    if not mask.any():
        return None
    ys, xs = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def paste_objects(objects: Tensor, labels: Tensor, n_images: int, canvas: int, per_image: tuple[int, int],
                  size: tuple[int, int], seed: int, max_iou: float = 0.3,
                  tries: int = 20) -> tuple[list[DetectionSample], list[list[dict[str, int]]]]:
    """Canvases ``[1, canvas, canvas]`` with ``per_image`` (min, max) objects drawn from ``objects``
    (uint8 ``[M, 1, h, w]``) at random sides in ``size`` and random positions, composited with a
    pixel-wise max. A placement whose box overlaps an earlier one by IoU > ``max_iou`` is redrawn
    (up to ``tries`` times, then the object is left out). Images are drawn one after another from
    one seeded generator, so the first images do not depend on ``n_images``.

    Returns the samples and, per image, each object's ``{"index", "size", "x", "y"}``."""
    g = torch.Generator().manual_seed(seed)
    samples, placements = [], []

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    for i in range(n_images):
        image = torch.zeros(1, canvas, canvas, dtype=torch.uint8)
        boxes: list[list[float]] = []
        labs: list[int] = []
        placed: list[dict[str, int]] = []
        for _ in range(draw(*per_image)):
            k = draw(0, len(objects) - 1)
            for _ in range(tries):
                side = draw(*size)
                x, y = draw(0, canvas - side), draw(0, canvas - side)
                patch = render_object(objects[k], side)
                box = tight_box(patch)
                if box is None:
                    break
                xyxy = [x + box[0], y + box[1], x + box[2], y + box[3]]
                if boxes and box_iou(torch.tensor([xyxy], dtype=torch.float32),
                                     torch.tensor(boxes, dtype=torch.float32)).max() > max_iou:
                    continue
                region = image[:, y:y + side, x:x + side]
                torch.maximum(region, patch, out=region)
                boxes.append([float(v) for v in xyxy])
                labs.append(int(labels[k]) + 1)
                placed.append({"index": k, "size": side, "x": x, "y": y})
                break
        samples.append(DetectionSample(f"canvas{i:05d}", image, canvas, canvas,
                                       torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                       torch.tensor(labs, dtype=torch.long)))
        placements.append(placed)
    return samples, placements


def fmnist_objects(source: DataConfig | None = None) -> ImageDataset:
    """Fashion-MNIST's TEST split, where ``source`` (default: selfsup's usual places) finds it."""
    return build_dataset(source or DataConfig(name="fashion-mnist"), "test")


def synthetic_fmnist(cfg: DetectionConfig, split: str,
                     source: DataConfig | ImageDataset | None = None) -> DetectionDataset:
    """Fashion-MNIST objects on black canvases: objects come from Fashion-MNIST's TEST split
    (never seen by an encoder pretrained on its train split), half of it (seeded) for the
    training canvases and the other half for the test canvases; 10 classes. ``source`` is
    where to find Fashion-MNIST, or its test split already loaded (:func:`fmnist_objects`)."""
    fm = source if isinstance(source, ImageDataset) else fmnist_objects(source)
    half = torch.randperm(len(fm), generator=torch.Generator().manual_seed(cfg.data_seed))
    pool = half[: len(fm) // 2] if split == "train" else half[len(fm) // 2:]
    images, labels = fm.__getitems__(pool.tolist())  # [M, 1, 28, 28], [M]
    n = cfg.synthetic_train if split == "train" else cfg.synthetic_test
    seed = cfg.data_seed * 2 + (0 if split == "train" else 1)
    samples, placements = paste_objects(images, labels, n, cfg.synthetic_canvas, cfg.synthetic_objects,
                                        cfg.synthetic_object_size, seed)
    meta = {"placements": placements, "object_pool": pool.tolist()}
    return DetectionDataset(f"synthetic-fmnist:{split}", samples, FASHION_MNIST_CLASSES, BoxReport(), meta)

