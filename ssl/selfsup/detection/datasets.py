"""The detection data of a run: ``--dataset`` specs parsed, and the (train, test) sets built.

Four sources: ``synthetic-fmnist`` (:mod:`selfsup.detection.synthetic`), ``deepforest``,
``voc:DIR`` and ``coco:IMAGES_DIR,ANNOTATIONS.json`` (:mod:`selfsup.detection.readers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfsup.config import DataConfig, DetectionConfig, RunConfig
from selfsup.data.datasets import DataError
from selfsup.detection.boxes import DetectionDataset, split_indices, subset
from selfsup.detection.readers import coco_dataset, deepforest_split, voc_dataset
from selfsup.detection.synthetic import fmnist_objects, synthetic_fmnist

DATASET_SPECS = "synthetic-fmnist, deepforest, voc:DIR or coco:IMAGES_DIR,ANNOTATIONS.json"


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
        train, test = subset(full, tr, "train"), subset(full, te, "test")
    for name, ds in (("training", train), ("test", test)):
        if len(ds) == 0 or ds.num_boxes == 0:
            raise DataError(f"the {name} split of detection dataset {cfg.dataset!r} has no usable boxes "
                            f"({len(ds)} images; {ds.report.summary()}); check the annotations or the split")
    return train, test


def detection_data(cfg: RunConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """(train, test) sets of ``cfg.detection``; synthetic-fmnist reads Fashion-MNIST where the run
    found it (``cfg.data.root``) at its native 28x28."""
    fmnist = None
    if cfg.data.name == "fashion-mnist":
        fmnist = DataConfig(name="fashion-mnist", root=cfg.data.root, download=cfg.data.download)
    return build_detection_data(cfg.detection, fmnist)
