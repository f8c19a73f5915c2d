"""Detection datasets: images with boxes, for scoring frozen encoders with a detector.

Every dataset yields ``(uint8 image [C, H, W], {"boxes": float [N, 4] xyxy pixels,
"labels": int64 [N] in 1..K})``; label 0 is the detector's background. Four sources:

- ``voc:DIR``: Pascal VOC XML (``Annotations/*.xml`` + ``JPEGImages/``, splits from
  ``ImageSets/Main`` when present), or a flat folder of images with same-stem ``.xml`` files;
  parsed with torchvision's ``VOCDetection.parse_voc_xml``. Coordinates are used as written
  (no 1-pixel shift) and ``difficult`` objects are kept as ordinary objects.
- ``coco:IMAGES,ANN.json``: COCO JSON read by pycocotools; crowd annotations are skipped.
- ``deepforest``: the aerial RGB tree-crown images with VOC boxes shipped in the ``deepforest``
  wheel (Weinstein et al. 2019, "Individual tree-crown detection in RGB imagery using
  semi-supervised deep learning neural networks"; Weinstein et al. 2020, "DeepForest"),
  about 950 crowns over 4 images, cut into square tiles (one class, ``tree``).
- ``synthetic-fmnist``: Fashion-MNIST test-split objects pasted on black canvases, their
  10 classes as labels; deterministic for a given seed.

Boxes are validated when read: non-finite, degenerate (zero or negative width or height)
and out-of-image boxes are dropped and counted with the file they came from (``BoxReport``),
so bad annotations never stop training.
"""

from __future__ import annotations

import importlib.util
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import FashionMNIST
from torchvision.ops import box_area, box_convert, box_iou, clip_boxes_to_image

from selfsup.config import DataConfig, DetectionConfig
from selfsup.data.datasets import IMAGE_EXTENSIONS, DataError, ImageDataset, build_dataset, decode_image, is_ignored

Target = dict[str, Tensor]

#: Fashion-MNIST's classes in label order (Xiao et al. 2017), as torchvision names them, lower-cased.
FASHION_MNIST_CLASSES = [c.lower() for c in FashionMNIST.classes]
DATASET_SPECS = "synthetic-fmnist, deepforest, voc:DIR or coco:IMAGES_DIR,ANNOTATIONS.json"
DEEPFOREST_INSTALL = "pip install --no-deps deepforest"


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


def _subset(ds: DetectionDataset, idx: list[int], split: str) -> DetectionDataset:
    return DetectionDataset(f"{ds.name}:{split}", [ds.samples[i] for i in idx], ds.class_names, ds.report,
                            dict(ds.meta))


# --------------------------------------------------------------------------- Pascal VOC XML


@dataclass
class VocRecord:
    """What one VOC XML file says: image file name, size, and (class name, xyxy box) objects."""

    xml: Path
    filename: str | None
    width: int | None
    height: int | None
    objects: list[tuple[str, list[float]]]


def read_voc_xml(path: str | Path) -> VocRecord:
    """Parse one Pascal VOC annotation with torchvision's ``VOCDetection.parse_voc_xml``."""
    from torchvision.datasets import VOCDetection

    path = Path(path)
    ann = VOCDetection.parse_voc_xml(ET.parse(path).getroot()).get("annotation")
    if not isinstance(ann, dict):
        raise ValueError("no <annotation> root element")
    size = ann.get("size") or {}
    objs = ann.get("object") or []
    objects = []
    for obj in objs if isinstance(objs, list) else [objs]:
        box = obj.get("bndbox") or {}
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            try:
                coords.append(float(box[key]))
            except (KeyError, TypeError, ValueError):
                coords.append(math.nan)  # reported as a non-finite box
        objects.append((str(obj.get("name", "")).strip(), coords))

    def as_int(v: Any) -> int | None:
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None

    return VocRecord(path, ann.get("filename"), as_int(size.get("width")), as_int(size.get("height")), objects)


def _image_for(xml: Path, filename: str | None, image_dirs: list[Path]) -> Path | None:
    """The image an XML file annotates: its ``<filename>`` if that file exists, else the same stem."""
    for folder in image_dirs:
        if filename and (folder / filename).is_file():
            return folder / filename
        for suffix in IMAGE_EXTENSIONS:
            for cand in (folder / f"{xml.stem}{suffix}", folder / f"{xml.stem}{suffix.upper()}"):
                if cand.is_file():
                    return cand
    return None


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def voc_samples(xml_files: list[Path], image_dirs: list[Path], report: BoxReport,
                rename: Callable[[str], str] | None = None) -> list[tuple[DetectionSample, list[str]]]:
    """(sample with empty labels, class name per kept box) for each readable XML file; unreadable
    files, missing images and bad boxes go to ``report``. ``rename`` maps class names."""
    out = []
    for xml in xml_files:
        try:
            rec = read_voc_xml(xml)
        except (ET.ParseError, ValueError, OSError) as err:
            report.add("unreadable annotation files", f"{xml.name} ({err})")
            continue
        image = _image_for(xml, rec.filename, image_dirs)
        if image is None:
            report.add("annotation files without an image", xml.name)
            continue
        try:
            width, height = _image_size(image)
        except Exception as err:  # PIL: unknown or corrupt format
            report.add("unreadable images", f"{image.name} ({err})")
            continue
        if rec.width is not None and rec.height is not None and (rec.width, rec.height) != (width, height):
            report.add("annotation files whose <size> is not the image's (boxes checked against the image)", xml.name)
        names = [rename(n) if rename else n for n, _ in rec.objects]
        boxes = torch.tensor([b for _, b in rec.objects], dtype=torch.float32).reshape(-1, 4)
        idx = torch.arange(len(names))
        boxes, kept = validate_boxes(boxes, idx, width, height, xml.name, report)
        sample = DetectionSample(image.name, str(image), width, height, boxes, torch.zeros(0, dtype=torch.long))
        out.append((sample, [names[i] for i in kept.tolist()]))
    return out


def assign_labels(items: list[tuple[DetectionSample, list[str]]], class_names: list[str],
                  report: BoxReport) -> list[DetectionSample]:
    """Set each sample's labels (1..K in ``class_names`` order); boxes of other classes are dropped."""
    index = {n: i + 1 for i, n in enumerate(class_names)}
    samples = []
    for sample, names in items:
        known = torch.tensor([n in index for n in names], dtype=torch.bool)
        report.add("boxes of classes absent from the training split", sample.name, int((~known).sum()))
        sample.boxes = sample.boxes[known]
        sample.labels = torch.tensor([index[n] for n in names if n in index], dtype=torch.long)
        samples.append(sample)
    return samples


def _xml_files(folder: Path) -> list[Path]:
    """The ``.xml`` files (any case: ``.XML`` from a Windows tool too) directly in ``folder``, sorted;
    hidden ones (macOS ``._name.xml`` AppleDouble files) left out, as image folders leave them out
    (:func:`is_ignored`)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file() and not is_ignored(p.name))


def _voc_layout(root: Path) -> tuple[list[Path], list[Path], Path | None]:
    """(xml files, image folders, ImageSets/Main folder or None) of a VOC root or a flat folder."""
    if (root / "Annotations").is_dir():
        images = [root / "JPEGImages", root / "images", root]
        sets = root / "ImageSets" / "Main"
        return _xml_files(root / "Annotations"), images, sets if sets.is_dir() else None
    return _xml_files(root), [root], None


def _read_ids(path: Path) -> set[str]:
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def voc_dataset(root: str | Path, name: str = "voc", rename: Callable[[str], str] | None = None,
                classes: list[str] | None = None) -> DetectionDataset:
    """Every annotated image of a VOC folder. Classes: ``classes`` when given (boxes of other
    classes are dropped and reported), else the sorted names found (after ``rename``) in the
    training images.

    ``meta["split"]`` holds the (train, test) stems of ``ImageSets/Main`` when the folder has
    them (``trainval``/``train`` and ``test``/``val``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"VOC folder {str(root)!r} does not exist; pass voc:DIR with Annotations/ and "
                        f"JPEGImages/, or a folder of images with same-stem .xml files")
    xmls, image_dirs, sets = _voc_layout(root)
    if not xmls:
        raise DataError(f"VOC folder {str(root)!r} holds no .xml annotations (looked in {str(root)!r} and "
                        f"{str(root / 'Annotations')!r}); pass a folder with Pascal VOC XML files")
    report = BoxReport()
    items = voc_samples(xmls, image_dirs, report, rename)
    meta: dict[str, Any] = {"root": str(root)}
    train_stems = None
    if sets is not None:
        train = next((sets / f for f in ("trainval.txt", "train.txt") if (sets / f).is_file()), None)
        test = next((sets / f for f in ("test.txt", "val.txt") if (sets / f).is_file()), None)
        if train is not None and test is not None:
            meta["split"] = (_read_ids(train), _read_ids(test))
            train_stems = meta["split"][0]
    if classes is None:
        classes = sorted({n for s, names in items for n in names
                          if n and (train_stems is None or Path(str(s.image)).stem in train_stems)})
    return DetectionDataset(name, assign_labels(items, classes, report), classes, report, meta)


# --------------------------------------------------------------------------- COCO JSON


def coco_dataset(images: str | Path, annotations: str | Path, name: str = "coco",
                 classes: list[str] | None = None) -> DetectionDataset:
    """Images of a COCO detection JSON (read by pycocotools). Classes: ``classes`` (category
    names; annotations of other categories are dropped and reported), else every category in id order."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    images, annotations = Path(images), Path(annotations)
    if not images.is_dir():
        raise DataError(f"COCO images folder {str(images)!r} does not exist; pass coco:IMAGES_DIR,ANNOTATIONS.json")
    if not annotations.is_file():
        raise DataError(f"COCO annotation file {str(annotations)!r} does not exist; pass coco:IMAGES_DIR,ANNOTATIONS.json")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(annotations))
    except Exception as err:  # json errors, missing keys
        raise DataError(f"cannot read {str(annotations)!r} as COCO detection JSON: {type(err).__name__}: {err}") from None
    names = {c["id"]: c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))}
    if classes is None:
        classes = list(names.values())
    index = {n: i + 1 for i, n in enumerate(classes)}
    label_of = {c: index[n] for c, n in names.items() if n in index}
    report = BoxReport()
    samples = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        path = images / info["file_name"]
        if not path.is_file():
            report.add("annotated images missing from the images folder", info["file_name"])
            continue
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        report.add("crowd annotations (skipped)", info["file_name"], len(crowd))
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        other = [a for a in anns if a.get("category_id") not in label_of]
        report.add("boxes of classes absent from the training split", info["file_name"], len(other))
        anns = [a for a in anns if a.get("category_id") in label_of]
        xywh = torch.tensor([[float(v) for v in a.get("bbox", [math.nan] * 4)] for a in anns],
                            dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.long)
        w, h = int(info["width"]), int(info["height"])
        boxes, labels = validate_boxes(box_convert(xywh, "xywh", "xyxy"), labels, w, h, info["file_name"], report)
        samples.append(DetectionSample(info["file_name"], str(path), w, h, boxes, labels))
    return DetectionDataset(name, samples, classes, report, {"images": str(images), "annotations": str(annotations)})


# --------------------------------------------------------------------------- tiling (deepforest)


def tile_origins(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x0, y0)`` of a non-overlapping grid of ``tile`` x ``tile`` tiles covering
    the image, row by row; the last row and column reach past the image (zero padding)."""
    return [(x, y) for y in range(0, height, tile) for x in range(0, width, tile)]


def crop_tile(image: Tensor, x0: int, y0: int, tile: int) -> Tensor:
    """``image`` uint8 ``[C, H, W]`` -> the ``[C, tile, tile]`` window at (x0, y0), zero-padded."""
    out = image.new_zeros(image.shape[0], tile, tile)
    part = image[:, y0:y0 + tile, x0:x0 + tile]  # [C, h, w], h, w <= tile
    out[:, :part.shape[1], :part.shape[2]] = part
    return out


def boxes_in_tile(boxes: Tensor, labels: Tensor, x0: int, y0: int, tile: int,
                  min_visible: float) -> tuple[Tensor, Tensor]:
    """Boxes ``[N, 4]`` (image xyxy) as seen in the tile at (x0, y0): shifted to tile coordinates,
    clipped to the tile, and kept when the clipped area is at least ``min_visible`` of the
    original area. A box crossing a tile border thus appears, clipped, in both tiles."""
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)  # [N, 4]
    clipped = clip_boxes_to_image(shifted, (tile, tile))
    visible = box_area(clipped) / box_area(boxes).clamp_min(1e-6)  # [N]
    keep = (visible >= min_visible) & (box_area(clipped) > 0)
    return clipped[keep], labels[keep]


def tile_dataset(ds: DetectionDataset, tile: int, min_visible: float) -> DetectionDataset:
    """Cut every image into ``tile`` x ``tile`` tiles with their clipped boxes; tiles without
    any box (padding, unannotated ground) are skipped. Tile names are ``image@x0,y0``."""
    samples = []
    for i, s in enumerate(ds.samples):
        image = ds.image(i)  # uint8 [C, H, W]
        for x0, y0 in tile_origins(s.width, s.height, tile):
            boxes, labels = boxes_in_tile(s.boxes, s.labels, x0, y0, tile, min_visible)
            if len(boxes):
                samples.append(DetectionSample(f"{s.name}@{x0},{y0}", crop_tile(image, x0, y0, tile), tile, tile,
                                               boxes, labels))
    meta = {**ds.meta, "tile_size": tile, "min_visible": min_visible, "source_images": len(ds.samples),
            "source_boxes": ds.num_boxes}
    return DetectionDataset(f"{ds.name}-tiles{tile}", samples, ds.class_names, ds.report, meta)


def deepforest_root(root: str | None = None) -> Path:
    """The folder of the tree-crown data: ``root``, else the installed deepforest wheel's ``data/``
    (found without importing deepforest, which needs none of its dependencies for this)."""
    if root:
        path = Path(root)
        if not path.is_dir():
            raise DataError(f"detection.deepforest_root {root!r} does not exist; point it at deepforest/data/")
        return path
    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the deepforest tree-crown data was not found: install the wheel just for its data "
                        f"({DEEPFOREST_INSTALL}) or set detection.deepforest_root=DIR")
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not _xml_files(path):
        raise DataError(f"{str(path)!r} holds no VOC .xml files; reinstall with {DEEPFOREST_INSTALL}")
    return path


def _one_tree_class(name: str) -> str:
    """Every tree-crown class name (``Tree``, ``Alive``, ``Dead``) is one class, ``tree``."""
    return "tree"


@lru_cache(maxsize=4)
def _deepforest_tiles(root: str, tile: int, min_visible: float) -> DetectionDataset:
    images = voc_dataset(root, "deepforest", rename=_one_tree_class)
    return tile_dataset(images, tile, min_visible)


def deepforest_split(cfg: DetectionConfig, split: str) -> DetectionDataset:
    """Tree-crown tiles of the deepforest data: a seeded split of the tiles (``cfg.test_fraction``).

    Test tiles come from the same four scenes as training tiles (neighbouring ground, and a
    crown cut by a tile border can appear in both), so this measures fitting this forest
    rather than transfer to new sites."""
    tiles = _deepforest_tiles(str(deepforest_root(cfg.deepforest_root)), cfg.tile_size, cfg.min_visible)
    train, test = split_indices(len(tiles), cfg.test_fraction, cfg.data_seed)
    return _subset(tiles, train if split == "train" else test, split)


# --------------------------------------------------------------------------- synthetic Fashion-MNIST


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


# --------------------------------------------------------------------------- dataset specs


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset`` value: kind and its paths."""

    kind: str  # "synthetic-fmnist" | "deepforest" | "voc" | "coco"
    paths: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(self.paths) if self.paths else "")


def parse_dataset_spec(text: str) -> DatasetSpec:
    """``synthetic-fmnist`` | ``deepforest`` | ``voc:DIR`` | ``coco:IMAGES_DIR,ANNOTATIONS.json``."""
    from selfsup.registry import closest

    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("synthetic-fmnist", "deepforest"):
        if rest:
            where = "detection.deepforest_root=DIR" if kind == "deepforest" else "data.root=DIR (Fashion-MNIST)"
            raise DataError(f"detection dataset {text!r}: {kind} takes no path after ':'; set {where} instead")
        return DatasetSpec(kind)
    if kind == "voc" and rest:
        return DatasetSpec("voc", (rest,))
    if kind == "coco":
        parts = [p for p in rest.split(",") if p]
        if len(parts) != 2:
            raise DataError(f"detection dataset {text!r}: coco needs two paths, coco:IMAGES_DIR,ANNOTATIONS.json")
        return DatasetSpec("coco", (parts[0], parts[1]))
    if kind == "voc":
        raise DataError(f"detection dataset {text!r}: voc needs a folder, voc:DIR")
    hint = closest(kind, ["synthetic-fmnist", "deepforest", "voc", "coco"])
    hint = f"did you mean {hint!r}? " if hint else ""
    raise DataError(f"unknown detection dataset {text!r}: {hint}use {DATASET_SPECS}")


def _load_folder(spec: DatasetSpec, classes: list[str] | None = None) -> DetectionDataset:
    if spec.kind == "voc":
        return voc_dataset(spec.paths[0], name=str(spec), classes=classes)
    return coco_dataset(*spec.paths, name=str(spec), classes=classes)


def build_detection_data(cfg: DetectionConfig, fmnist: DataConfig | None = None
                         ) -> tuple[DetectionDataset, DetectionDataset]:
    """(train, test) sets for ``cfg.dataset`` (and ``cfg.test_dataset`` when given).

    ``fmnist`` says where Fashion-MNIST is (synthetic-fmnist); default: selfsup's usual places."""
    spec = parse_dataset_spec(cfg.dataset)
    if cfg.test_dataset and spec.kind in ("synthetic-fmnist", "deepforest"):
        raise DataError(f"detection.test_dataset applies to voc: and coco: sets; {spec.kind} has its own test "
                        f"split, so remove --test-dataset")
    if spec.kind == "synthetic-fmnist":
        objects = fmnist_objects(fmnist)  # loaded once for both splits
        train, test = synthetic_fmnist(cfg, "train", objects), synthetic_fmnist(cfg, "test", objects)
    elif spec.kind == "deepforest":
        train, test = deepforest_split(cfg, "train"), deepforest_split(cfg, "test")
    elif cfg.test_dataset:
        train = _load_folder(spec)
        test_spec = parse_dataset_spec(cfg.test_dataset)
        if test_spec.kind not in ("voc", "coco"):
            raise DataError(f"detection.test_dataset {cfg.test_dataset!r} must be voc:DIR or coco:IMAGES_DIR,ANN.json")
        test = _load_folder(test_spec, classes=train.class_names)
    else:
        full = _load_folder(spec)
        split = full.meta.get("split")
        if split is not None:
            stems = [Path(str(s.image)).stem for s in full.samples]
            tr = [i for i, st in enumerate(stems) if st in split[0]]
            te = [i for i, st in enumerate(stems) if st in split[1]]
        else:
            tr, te = split_indices(len(full), cfg.test_fraction, cfg.data_seed)
        train, test = _subset(full, tr, "train"), _subset(full, te, "test")
    for name, ds in (("training", train), ("test", test)):
        if len(ds) == 0 or ds.num_boxes == 0:
            raise DataError(f"the {name} split of detection dataset {cfg.dataset!r} has no usable boxes "
                            f"({len(ds)} images; {ds.report.summary()}); check the annotations or the split")
    return train, test
