"""A pre-decoded copy of an image folder: every image decoded and resized once into a
memory-mapped uint8 file ``[N, C, S, S]`` (``data.cache=uint8``), so later epochs and
runs read bytes instead of decoding JPEGs (the usual bottleneck of small-image training
on few CPU cores). Costs ``N x C x S x S`` bytes of disk: 1.28M ImageNet images at
112 px are 48 GB, at 224 px 193 GB; CIFAR-sized folders a few hundred MB.

The file is raw uint8 bytes (mapped with ``np.memmap``; nothing is unpickled) with a
JSON sidecar holding its shape, the labels, the files left out as unreadable, and a key over
everything the pixels and labels depend on (:func:`folder_key`): the file list with each
file's label, size, inode and modification and change times, the class names, the side
length, the channels and the decoder's version. A changed folder, split (``train/`` or
``test/``, or the held-out split: their file lists differ) or setting builds a new file.
Both are written to temporary files and renamed into place; concurrent processes (several
ranks on one machine) take a file lock, one builds and the others then map its result.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from selfsup.data.base import DataError, TensorImages
from selfsup.data.imagefiles import BAD_FILE_ADVICE, FolderImages, bad_file_line, files_digest
from selfsup.fileio import atomic_path, file_lock, write_json
from selfsup.progress import progress


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selfsup" / "decoded"


def folder_key(ds: FolderImages) -> str:
    """Hash of what the decoded file depends on (:func:`selfsup.data.imagefiles.files_digest`): the decoder
    version, the side, the channels, the class names, the decompression-bomb limit (``data.max_image_pixels``:
    which files decode at all), and each file's path, label, size, inode, mtime and ctime (links are
    followed: a symlink pointed at another file changes the key; ctime also catches a
    rewrite whose mtime was set back, as ``rsync -t`` or ``touch -d`` do)."""
    return files_digest(ds, lambda st: (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))


class MappedImages(TensorImages):
    """Images in a memory-mapped uint8 file ``[N, C, S, S]``; rows are read when indexed,
    a batch per call, in the loader's workers (``data.num_workers``), each of which maps
    the file itself instead of receiving a copy."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int], labels: Tensor, num_classes: int,
                 skipped: list[list[str]], class_names: tuple[str, ...] = ()) -> None:
        self.path, self.shape, self.skipped_files = Path(path), tuple(shape), skipped
        self.class_names = tuple(class_names)  # the folder's (part of the copy's key)
        self._images: Tensor | None = None
        super().__init__(self.images, labels, num_classes)

    @property
    def images(self) -> Tensor:
        if self._images is None:
            # copy-on-write: a writable array for torch; the file itself is never modified
            self._images = torch.from_numpy(np.memmap(self.path, dtype=np.uint8, mode="c", shape=self.shape))
        return self._images

    @images.setter
    def images(self, value: Tensor) -> None:
        self._images = value

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}

    def set_bad_file_log(self, path: Path) -> None:
        if self.skipped_files:
            with open(path, "a") as f:
                f.writelines(bad_file_line(p, reason.removesuffix(BAD_FILE_ADVICE)) for p, reason in self.skipped_files)


class _Decoded(torch.utils.data.Dataset):
    """(image, label, index) of each file, or (None, reason, index) for an unreadable one
    when the policy is skip."""

    def __init__(self, ds: FolderImages) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        try:
            return (*self.ds.load(i), i)
        except DataError as err:
            if self.ds.on_bad_file == "error":
                raise
            return None, str(err), i


def _as_list(items: list) -> list:
    return items


def decode_all(ds: FolderImages, out: Path, num_workers: int) -> tuple[list[int], list[list[str]]]:
    """Decode every file of ``ds`` into the raw uint8 file ``out`` (rows in file order,
    unreadable files left out); returns the labels of the rows and ``[path, reason]`` of
    each file left out."""
    item = (ds.in_chans, ds.image_size, ds.image_size)
    arr = np.memmap(out, dtype=np.uint8, mode="w+", shape=(len(ds), *item))
    loader = DataLoader(_Decoded(ds), batch_size=64, num_workers=num_workers, collate_fn=_as_list)
    labels, skipped, row = [], [], 0
    for batch in progress(loader, f"decoding {len(ds)} images once", total=len(loader), unit="batch"):
        for img, y, i in batch:
            if img is None:
                skipped.append([ds.files[i], y])
                continue
            arr[row] = img.numpy()
            labels.append(y)
            row += 1
    arr.flush()
    del arr
    os.truncate(out, row * int(np.prod(item)))  # drop the rows of unreadable files
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable image(s) left out of the decoded copy (data.on_bad_file=skip), "
                      f"first: {skipped[0][1].removesuffix(BAD_FILE_ADVICE)}", stacklevel=2)
    return labels, skipped


def cached_folder(ds: FolderImages, cache_dir: str | Path | None, split: str, num_workers: int = 0) -> MappedImages:
    """``ds`` decoded once into ``cache_dir`` (default ``~/.cache/selfsup/decoded``) and mapped."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cache=uint8 cannot use {str(root)!r} ({err.strerror}); set data.cache_dir to a "
                        f"writable directory with room for N x C x S x S bytes") from None
    key = folder_key(ds)
    stem = f"{split}-{ds.image_size}px-{ds.in_chans}ch-{key[:20]}"
    data, meta = root / f"{stem}.u8", root / f"{stem}.json"

    def current() -> bool:
        return data.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key

    if not current():
        with file_lock(root / f"{stem}.lock"):  # one process decodes; the others wait, then map its file
            if not current():
                with atomic_path(data) as tmp:
                    labels, skipped = decode_all(ds, tmp, num_workers)
                if not labels:
                    raise DataError(f"none of the {len(ds)} images in the folder could be decoded "
                                    f"(first: {skipped[0][1]})")
                shape = [len(labels), ds.in_chans, ds.image_size, ds.image_size]
                write_json({"key": key, "shape": shape, "labels": labels, "num_classes": ds.num_classes,
                            "skipped": skipped}, meta)
    info = json.loads(meta.read_text())
    if info["skipped"] and ds.on_bad_file == "error":  # decoded earlier under data.on_bad_file=skip
        path, reason = info["skipped"][0]
        raise DataError(f"{reason} ({len(info['skipped'])} unreadable file(s) in this folder; first {path!r})")
    return MappedImages(data, info["shape"], torch.as_tensor(info["labels"], dtype=torch.long), info["num_classes"],
                        info["skipped"], ds.class_names)
