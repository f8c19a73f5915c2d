"""What a detection dataset is: images with boxes, the box checks, and seeded splits.

Every dataset yields ``(uint8 image [C, H, W], {"boxes": float [N, 4] xyxy pixels,
"labels": int64 [N] in 1..K})``; label 0 is the detector's background. Boxes are validated
when read: non-finite, degenerate (zero or negative width or height) and out-of-image boxes
are dropped and counted with the file they came from (``BoxReport``), so bad annotations
never stop training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup.data.datasets import DataError, decode_image

Target = dict[str, Tensor]


# --------------------------------------------------------------------------- box validation


@dataclass
class BoxReport:
    """Boxes (or whole files) dropped while reading, counted by reason, with the files they came from."""

    counts: Counter = field(default_factory=Counter)
    files: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, source: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.counts[reason] += n
        names = self.files.setdefault(reason, [])
        if source not in names:
            names.append(source)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "BoxReport") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            names = self.files.setdefault(reason, [])
            names += [src for src in other.files.get(reason, []) if src not in names]

    def as_dict(self) -> dict[str, Any]:
        return {reason: {"count": n, "files": self.files.get(reason, [])} for reason, n in sorted(self.counts.items())}

    def summary(self, max_files: int = 3) -> str:
        if not self.counts:
            return "no boxes dropped"
        parts = []
        for reason, n in sorted(self.counts.items()):
            files = self.files.get(reason, [])
            more = f" and {len(files) - max_files} more" if len(files) > max_files else ""
            parts.append(f"{n} {reason} (in {', '.join(files[:max_files])}{more})")
        return "dropped " + "; ".join(parts)


def validate_boxes(boxes: Tensor, labels: Tensor, width: int, height: int, source: str,
                   report: BoxReport) -> tuple[Tensor, Tensor]:
    """Keep the boxes ``[N, 4]`` (xyxy pixels) that are finite, have positive width and height
    and lie inside the ``width`` x ``height`` image; count the others in ``report`` under
    ``source``. Returns the kept (boxes float32 [M, 4], labels int64 [M])."""
    boxes = boxes.reshape(-1, 4).float()
    labels = labels.reshape(-1).long()
    finite = torch.isfinite(boxes).all(1)
    safe = torch.where(finite[:, None], boxes, torch.zeros_like(boxes))
    x1, y1, x2, y2 = safe.unbind(1)
    degenerate = finite & ((x2 <= x1) | (y2 <= y1))
    outside = finite & ~degenerate & ((x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height))
    report.add("non-finite boxes", source, int((~finite).sum()))
    report.add("degenerate boxes (zero or negative width or height)", source, int(degenerate.sum()))
    report.add("out-of-image boxes", source, int(outside.sum()))
    keep = finite & ~degenerate & ~outside
    return boxes[keep], labels[keep]


# --------------------------------------------------------------------------- datasets


@dataclass
class DetectionSample:
    """One image: in memory (uint8 ``[C, H, W]``) or a file decoded on access, with its boxes."""

    name: str
    image: Tensor | str
    width: int
    height: int
    boxes: Tensor  # float32 [N, 4] xyxy pixels
    labels: Tensor  # int64 [N], 1..K


class DetectionDataset(Dataset):
    """Samples with boxes; ``__getitem__`` -> (uint8 ``[C, H, W]``, target dict)."""

    def __init__(self, name: str, samples: list[DetectionSample], class_names: list[str],
                 report: BoxReport | None = None, meta: dict[str, Any] | None = None) -> None:
        self.name, self.samples, self.class_names = name, samples, list(class_names)
        self.report = report or BoxReport()
        self.meta = meta or {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_boxes(self) -> int:
        return sum(len(s.boxes) for s in self.samples)

    @property
    def in_chans(self) -> int:
        first = self.samples[0].image
        return first.shape[0] if isinstance(first, Tensor) else 3

    def image(self, i: int) -> Tensor:
        """uint8 ``[C, H, W]``; files are decoded as RGB by selfsup's ``decode_image``, EXIF
        orientation not applied (boxes are given in the stored pixel grid)."""
        img = self.samples[i].image
        if isinstance(img, Tensor):
            return img
        try:
            # the stored pixel grid: box annotations and the header size checks refer to it, not to
            # the EXIF-rotated view
            return decode_image(img, 3, exif_orientation=False)
        except DataError as err:  # detection never skips files, so drop decode_image's data.on_bad_file hint
            raise DataError(f"{str(err).partition(' Remove or replace')[0]} (in detection dataset {self.name!r}); "
                            f"remove or replace the file") from None

    def target(self, i: int) -> Target:
        s = self.samples[i]
        return {"boxes": s.boxes, "labels": s.labels}

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        return self.image(i), self.target(i)


def detection_collate(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Images of different sizes stay a list (the detector resizes and batches them)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(n)`` into (train, test) index lists, each sorted; at least one
    item on each side when ``n >= 2``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = min(n - 1, max(1, round(n * test_fraction))) if n >= 2 else 0
    return sorted(perm[n_test:]), sorted(perm[:n_test])


def subset(ds: DetectionDataset, idx: list[int], split: str) -> DetectionDataset:
    """The samples ``idx`` of ``ds`` as the dataset ``NAME:split`` (same classes, report and meta)."""
    return DetectionDataset(f"{ds.name}:{split}", [ds.samples[i] for i in idx], ds.class_names, ds.report,
                            dict(ds.meta))

