"""The data an evaluation scores and its identity. Only labelled images are scored:
unlabeled training images (label -1) are left out and counted, and what cannot be scored
(no labels, one class, unlabeled test images, an encoder of other channels than the images)
is refused before any feature is extracted (:class:`NotScorable`, DataError). The features' cache keys and the run directory's
evaluation folders are named by the data's identity (:func:`data_key`, :func:`data_tag`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfsup.config import RunConfig
from selfsup.data import DataError, DataInfo, ImageDataset, build_dataset, subset
from selfsup.data.base import Subset
from selfsup.eval.features import dataset_fingerprint
from selfsup.eval.target import Target


class NotScorable(DataError):
    """The training data cannot score kNN or a probe at all (no labels, or one class):
    ``reason`` says why; the message adds how to evaluate on labelled data."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}; {fix}")
        self.reason = reason


def describe_data(cfg: RunConfig) -> str:
    """``dataset 'image-folder' at '/photos'``: the data named in one-line messages."""
    return f"dataset {cfg.data.name!r}" + (f" at {cfg.data.root!r}" if cfg.data.root else "")


def labelled_part(ds: ImageDataset) -> tuple[ImageDataset, int]:
    """``ds`` without its unlabeled images (label -1, e.g. STL-10's unlabeled split inside
    "train") and how many were left out; ``ds`` itself when every image has a label."""
    keep = ds.labels >= 0  # [N]
    dropped = int((~keep).sum())
    if dropped == 0:
        return ds, 0
    return Subset(ds, keep.nonzero().squeeze(1).tolist()), dropped


def labelled_training_data(cfg: RunConfig) -> tuple[ImageDataset, int]:
    """The labelled training images an evaluation scores with (``cfg.data.subset`` of them when set) and how
    many unlabeled training images were left out; the test split is not read.

    Raises:
        NotScorable: (one line) the training split has no labels, or labelled images of fewer than two classes.
    """
    full = build_dataset(cfg.data, "train")
    if full.num_classes == 0 or not (full.labels >= 0).any():
        raise NotScorable(f"the training split of {describe_data(cfg)} has no labels, so kNN and linear probes "
                          f"cannot be scored", "evaluate on labelled data, e.g. `selfsup eval RUN "
                          "data.root=LABELLED_FOLDER` (a folder of class subfolders) or data.name=...")
    labelled, dropped = labelled_part(full)
    train_ds = subset(labelled, cfg.data.subset, cfg.seed)
    classes = train_ds.labels.unique()
    if len(classes) < 2:
        names = getattr(full, "class_names", ())
        which = repr(names[int(classes[0])]) if names and len(classes) else str(classes.tolist()[0])
        raise NotScorable(f"a linear probe / kNN evaluation needs at least two classes, but the training split "
                          f"of {describe_data(cfg)} has labelled images of one class only ({which})",
                          "add images of another class (a class subfolder for image-folder) or evaluate on "
                          "other labelled data (data.root=... or data.name=...)")
    return train_ds, dropped


def evaluation_data(cfg: RunConfig) -> tuple[ImageDataset, ImageDataset, int]:
    """The labelled training images (:func:`labelled_training_data`), the test split, and how many unlabeled
    training images were left out.

    Everything is checked before any feature is extracted: :class:`NotScorable` (one line)
    when the training split has no labels or labelled images of fewer than two classes, a
    DataError when the test split holds unlabeled images; a warning (:func:`warn_unseen_classes`) when
    test images are of classes the training images lack.
    """
    train_ds, dropped = labelled_training_data(cfg)
    test_ds = build_dataset(cfg.data, "test")
    unlabeled = int((test_ds.labels < 0).sum())
    if unlabeled:
        raise DataError(f"the test split of {describe_data(cfg)} has {unlabeled} unlabeled image(s) (label -1) "
                        f"of {len(test_ds)}; kNN and probes are scored on labelled test images only: give every "
                        f"test image a class (a class subfolder for image-folder)")
    warn_unseen_classes(train_ds, test_ds, cfg)
    return train_ds, test_ds, dropped


def warn_unseen_classes(train_ds: ImageDataset, test_ds: ImageDataset, cfg: RunConfig) -> None:
    """Warn (one line, :func:`unseen_classes_message`) when test images are of classes no training image has.
    An image folder refuses a test class its training folder lacks (:mod:`selfsup.data.folders`); this catches
    a class that ``data.subset`` (a seeded random subset of the training images) left out, for any dataset."""
    import warnings

    names = getattr(test_ds, "class_names", ()) or getattr(train_ds, "class_names", ())
    message = unseen_classes_message(train_ds.labels, test_ds.labels, names, cfg)
    if message:
        warnings.warn(message, stacklevel=3)


def _class_list(classes: list[int], names: tuple[str, ...]) -> str:
    """Up to five classes by name (their number where the data has no names), then how many more."""
    shown = ", ".join(repr(names[c]) if c < len(names) else str(c) for c in classes[:5])
    return shown + (f" and {len(classes) - 5} more" if len(classes) > 5 else "")


def unseen_classes_message(train_labels: Tensor, test_labels: Tensor, names: tuple[str, ...],
                           cfg: RunConfig) -> str | None:
    """The warning when test images (``test_labels`` [M], class numbers >= 0) are of classes no training image
    (``train_labels`` [N]) has: kNN and probes can never predict those, so the accuracy is capped below 100% by
    their share; None when every test class has training images."""
    unseen = sorted(set(test_labels.unique().tolist()) - set(train_labels.unique().tolist()))
    if not unseen:
        return None
    n = int(torch.isin(test_labels, torch.as_tensor(unseen, dtype=torch.long)).sum())
    share = 100.0 * n / len(test_labels)
    if cfg.data.subset is not None:
        fix = (f"data.subset={cfg.data.subset} drew none of their training images: raise data.subset (or drop it) "
               f"so that every class has training images")
    else:
        fix = "add training images of those classes"
    return (f"{n} of the {len(test_labels)} test images ({share:.1f}%) of {describe_data(cfg)} are of class(es) "
            f"{_class_list(unseen, names)}, which none of the {len(train_labels)} labelled training images has: kNN "
            f"and probes can never predict them, so accuracy is at most {100.0 - share:.1f}%; {fix}")


def untested_classes_message(train_labels: Tensor, test_labels: Tensor, names: tuple[str, ...]) -> str | None:
    """The warning when classes of the training images (``train_labels`` [N]) have no test image
    (``test_labels`` [M]): the test accuracy says nothing about them (they can still be predicted, wrongly, for
    test images of other classes); None when every training class is tested. An image folder says so on stderr
    when its split is read (:func:`selfsup.data.folders.warn_untested`); this line goes into each result row."""
    untested = sorted(set(train_labels.unique().tolist()) - set(test_labels.unique().tolist()))
    if not untested:
        return None
    return (f"class(es) {_class_list(untested, names)} have training images but no test image: the test accuracy "
            f"says nothing about them; add test images of those classes")


def check_channels(target: Target, ds: ImageDataset, cfg: RunConfig) -> None:
    """A DataError (one line) when the encoder and the images disagree on channels,
    before anything runs through the encoder."""
    want, got = target.info.in_chans, ds.in_chans
    if want != got:
        raise DataError(f"the encoder of {target.label} takes {want}-channel images but {describe_data(cfg)} "
                        f"gives {got}-channel images; set data.in_chans={want} (image folders) or evaluate "
                        f"on data with {want} channel(s)")


def data_key(cfg: RunConfig, split: str, ds: ImageDataset, info: DataInfo) -> str:
    """The identity of the features' data: dataset name, root, split, the images and labels
    themselves (:func:`selfsup.eval.features.dataset_fingerprint`), their size and channels,
    and the transform (side length and normalisation) the encoder sees them through."""
    root = str(Path(cfg.data.root).expanduser().resolve()) if cfg.data.root else None
    about = {"dataset": cfg.data.name, "root": root, "split": split, "image_size": ds.image_size,
             "in_chans": ds.in_chans, "transform": [info.image_size, list(info.mean), list(info.std)]}
    h = hashlib.blake2b(json.dumps(about, sort_keys=True).encode(), digest_size=12)
    h.update(dataset_fingerprint(ds).encode())
    return h.hexdigest()


# the data.* keys that decide which images and labels an evaluation sees
DATA_IDENTITY = ("name", "root", "image_size", "in_chans", "subset", "holdout_fraction", "holdout_seed",
                 "splits")


def data_identity(cfg: RunConfig) -> dict[str, Any]:
    """The config keys that decide which images and labels an evaluation sees (``data.root``
    resolved; ``seed`` when ``data.subset`` draws a seeded subset)."""
    out = {f"data.{k}": getattr(cfg.data, k, None) for k in DATA_IDENTITY}
    if cfg.data.root:
        out["data.root"] = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.data.subset is not None:
        out["seed"] = cfg.seed
    return out


def changed_data_keys(before: RunConfig, after: RunConfig) -> list[str]:
    """The keys of :func:`data_identity` whose values differ between two configs, sorted. ``seed`` counts only
    where both draw a subset (a subset set on one side only is ``data.subset`` differing: the same seed is not
    another one)."""
    a, b = data_identity(before), data_identity(after)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and (k != "seed" or (k in a and k in b)))


def data_tag(cfg: RunConfig) -> str:
    """A directory name that says which data: ``<dataset name>-<8 hex digits of its identity>``."""
    digest = hashlib.blake2b(json.dumps(data_identity(cfg), sort_keys=True).encode(), digest_size=4).hexdigest()
    return f"{cfg.data.name}-{digest}"
