"""Detection data read from files: Pascal VOC XML, COCO JSON, and the deepforest tree crowns.

- ``voc:DIR``: Pascal VOC XML (``Annotations/*.xml`` + ``JPEGImages/``, splits from
  ``ImageSets/Main`` when present), or a flat folder of images with same-stem ``.xml`` files;
  parsed with torchvision's ``VOCDetection.parse_voc_xml``. Coordinates are used as written
  (no 1-pixel shift) and ``difficult`` objects are kept as ordinary objects.
- ``coco:IMAGES,ANN.json``: COCO JSON read by pycocotools; crowd annotations are skipped.
- ``deepforest``: the aerial RGB tree-crown images with VOC boxes shipped in the ``deepforest``
  wheel (Weinstein et al. 2019, "Individual tree-crown detection in RGB imagery using
  semi-supervised deep learning neural networks"; Weinstein et al. 2020, "DeepForest"),
  about 950 crowns over 4 images, cut into square tiles (one class, ``tree``).
"""

from __future__ import annotations

import importlib.util
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torchvision.ops import box_area, box_convert, clip_boxes_to_image

from selfsup.config import DetectionConfig
from selfsup.data.datasets import IMAGE_EXTENSIONS, DataError, is_ignored
from selfsup.detection.boxes import (BoxReport, DetectionDataset, DetectionSample, split_indices, subset,
                                     validate_boxes)

DEEPFOREST_INSTALL = "pip install --no-deps deepforest"


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
    return subset(tiles, train if split == "train" else test, split)

