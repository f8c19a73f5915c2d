"""Any folder of images as a dataset (``data.name=image-folder``): which files are images,
how class subfolders become labels, and how the files split into ``train`` and ``test``
(``train/`` and ``test/`` or ``val/`` subfolders, else a seeded hold-out by file path).

Hidden names and system folders are ignored and each file counts once however it is
linked; every layout that cannot give a sound split (loose images beside class folders,
one file in two classes or in both splits, an empty class) is a DataError saying how to fix it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from selfsup.config import DataConfig
from selfsup.data.base import DATASETS, DataError, ImageDataset
from selfsup.data.decoded import cached_folder
from selfsup.data.imagefiles import FolderImages


# Folders that never hold the user's images, besides every name starting with "." (hidden:
# .thumbnails/, .DS_Store, ._photo.jpg AppleDouble files): macOS resource forks unpacked from
# zip files, Synology and QNAP thumbnail and recycle folders, Windows recycle bins and volume
# data, fsck's lost+found, Python caches. Compared case-insensitively.
IGNORED_NAMES = frozenset(n.lower() for n in (
    "__MACOSX", "@eaDir", "@Recycle", "#recycle", "#snapshot", "$RECYCLE.BIN", "RECYCLER",
    "System Volume Information", "lost+found", "__pycache__"))

FileId = tuple  # (st_dev, st_ino) of a file after following links, or ("path", resolved path)

# Names that count as images (case-insensitive): torchvision ImageFolder's list plus other
# formats Pillow decodes (GIF and APNG give their first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp", ".tif", ".tiff",
                    ".webp", ".gif", ".avif")
# Photos and pictures in formats not read here (no decoder in Pillow, or none that reads them as a viewer shows
# them): left out, but counted and named (a phone's HEIC photos beside its JPEGs were dropped without a word).
UNREAD_EXTENSIONS = (".heic", ".heif", ".jxl", ".jp2", ".j2k", ".jpf", ".jpx", ".tga", ".ico", ".icns", ".psd",
                     ".svg", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw", ".exr", ".hdr",
                     ".dds")


def is_ignored(name: str) -> bool:
    """True for a hidden name (leading ``.``) or a system folder of :data:`IGNORED_NAMES`."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _few(names: list[str], n: int = 3) -> str:
    """``'a', 'b', 'c' and 4 more``: a short list for one-line messages."""
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def file_id(path: str) -> FileId:
    """What makes two paths one file: ``(st_dev, st_ino)`` after following symlinks, which
    hard links share too; the resolved path when the file cannot be stat-ed (a broken link)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return (st.st_dev, st.st_ino)


def _list_dir(folder: str) -> tuple[list[str], list[str], list[str]]:
    """(image files, subfolders, files of :data:`UNREAD_EXTENSIONS`) directly in ``folder`` as paths, sorted by
    name, hidden and system names left out. Links are followed; a broken link with an image name counts as
    a file (it is then reported as unreadable). Raises DataError when the folder cannot be read, or holds a
    broken link named like a folder (no extension)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not is_ignored(e.name)), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot list image folder {folder!r} ({err.strerror or err}); check that it "
                        f"exists and is readable") from None
    dirs = [e.path for e in entries if e.is_dir()]
    # a link to nothing named like a folder (no extension): a class folder on a drive not mounted, say; left out,
    # its class would vanish and every later class number shift without a word
    gone = [e for e in entries if e.is_symlink() and not os.path.exists(e.path) and not os.path.splitext(e.name)[1]]
    if gone:
        raise DataError(f"{gone[0].path!r} is a link to {os.readlink(gone[0].path)!r}, which does not exist (a drive "
                        f"not mounted?), so its images cannot be read: mount it, or remove the link")
    files = [e.path for e in entries if not e.is_dir() and _is_image_name(e.name)]
    unread = [e.path for e in entries if e.name.lower().endswith(UNREAD_EXTENSIONS) and not e.is_dir()]
    return files, dirs, unread


def _unique(paths: list[str]) -> list[tuple[str, FileId]]:
    """``(path, id)`` of each file once, in the given order: a later path to the same file
    (a symlink, a hard link, a linked folder) is dropped."""
    out, seen = [], set()
    for path in paths:
        fid = file_id(path)
        if fid not in seen:
            seen.add(fid)
            out.append((path, fid))
    return out


def _walk_images(folder: str, unread: list[str]) -> list[tuple[str, FileId]]:
    """``(path, id)`` of every image under ``folder`` (subfolders and linked folders
    included, hidden and system names left out), sorted by path, each file once; a folder
    reached again through a link (a link loop) is read once. Files of :data:`UNREAD_EXTENSIONS` are
    appended to ``unread``."""
    seen_dirs: set[FileId] = set()
    found: list[str] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        did = file_id(d)
        if did in seen_dirs:
            continue
        seen_dirs.add(did)
        files, dirs, others = _list_dir(d)
        found += files
        unread += others
        stack += reversed(dirs)  # depth first, in name order
    return _unique(sorted(found))


@dataclass(frozen=True)
class FolderScan:
    """The images of one folder: by class (class subfolders, read recursively) or loose
    (a flat, unlabeled folder); each file listed once, ``ids`` maps it to its :func:`file_id`."""

    folder: str
    classes: dict[str, list[str]]  # class-folder name -> its image files, sorted; {} for a flat folder
    loose: list[str]  # a flat folder's image files, sorted; [] when it has classes
    ids: dict[str, FileId]
    unread: tuple[str, ...] = ()  # files of UNREAD_EXTENSIONS found (left out)


def scan_folder(folder: str) -> FolderScan:
    """Read ``folder`` as class subfolders or as loose images (hidden and system entries
    ignored, see :func:`is_ignored`).

    Raises DataError when it mixes loose images with subfolders, or when one file (through
    a symlink or hard link) is in two classes.
    """
    files, dirs, unread = _list_dir(folder)
    if files and dirs:
        raise DataError(
            f"image folder {folder!r} mixes {len(files)} loose image(s) ({_few([os.path.basename(f) for f in files])}) "
            f"with subfolder(s) ({_few([os.path.basename(d) + '/' for d in dirs])}); put every image in a class "
            f"subfolder (labelled) or move the subfolders out (unlabeled). Hidden names (starting with '.') and "
            f"system folders such as __MACOSX are ignored")
    if not dirs:
        loose = _unique(files)
        return FolderScan(folder, {}, [p for p, _ in loose], dict(loose), tuple(unread))
    classes: dict[str, list[str]] = {}
    ids: dict[str, FileId] = {}
    owner: dict[FileId, tuple[str, str]] = {}  # file id -> (class, path) where first seen
    for d in dirs:
        name, listed = os.path.basename(d), _walk_images(d, unread)
        for path, fid in listed:
            first_class, first_path = owner.setdefault(fid, (name, path))
            if first_class != name:
                raise DataError(f"{path!r} (class {name!r}) and {first_path!r} (class {first_class!r}) are the same "
                                f"file (a symlink or hard link); an image can have only one label: remove one of them")
        classes[name] = [p for p, _ in listed]
        ids.update(listed)
    return FolderScan(folder, classes, [], ids, tuple(unread))


def warn_unread(scan: FolderScan) -> None:
    """Warn (once per folder and message) that ``scan`` left out files of :data:`UNREAD_EXTENSIONS`: how many,
    per extension, and the first one."""
    import warnings

    if not scan.unread:
        return
    counts: dict[str, int] = {}
    for path in scan.unread:
        ext = os.path.splitext(path)[1].lower()
        counts[ext] = counts.get(ext, 0) + 1
    kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items()))
    warnings.warn(f"image folder {scan.folder!r}: {len(scan.unread)} file(s) in formats selfsup does not read were "
                  f"left out ({kinds}; first {scan.unread[0]!r}): convert them to JPEG or PNG to train on them",
                  stacklevel=3)


def test_folder(root: str | Path, splits: str = "auto") -> str | None:
    """The image folder's test split (:data:`TEST_NAMES`: ``test/``, else ``val/``, ...), or None when it
    has none (or ``splits`` is ``"flat"``) and its test images are a seeded share of each class held out
    (``data.holdout_fraction``)."""
    return _split_dirs(Path(root), splits)[1]


TRAIN_NAMES = ("train", "training")  # a root's subfolder of training images, in any case (Train/, TRAIN/)
TEST_NAMES = ("test", "testing", "val", "valid", "validation")  # its test split, the first present in this order


def _root_entries(root: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """(``root``'s subfolders named like a split (:data:`TRAIN_NAMES`, :data:`TEST_NAMES`) by lower-case name,
    its other subfolders, its loose image files), hidden and system names left out (one pass over ``root``:
    a flat folder of a million photos is listed once).

    Raises:
        DataError: two split folders differ only in case (``test/`` and ``Test/``)."""
    files, dirs, _ = _list_dir(str(root))
    found: dict[str, list[str]] = {}
    for d in dirs:
        name = os.path.basename(d)
        if name.lower() in TRAIN_NAMES + TEST_NAMES:
            found.setdefault(name.lower(), []).append(name)
    for spelled in found.values():
        if len(spelled) > 1:
            raise DataError(f"image folder {str(root)!r} has subfolders {', '.join(f'{s}/' for s in sorted(spelled))}, "
                            f"one split spelled in different cases: merge them into one")
    others = [d for d in dirs if os.path.basename(d).lower() not in TRAIN_NAMES + TEST_NAMES]
    return {name: str(root / spelled[0]) for name, spelled in found.items()}, others, files


def _holds_image(folder: str) -> bool:
    """Whether any image file lies under ``folder`` (links followed, each folder read once; stops at the
    first image)."""
    seen: set[FileId] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        if (did := file_id(d)) in seen:
            continue
        seen.add(did)
        try:
            files, dirs, _ = _list_dir(d)
        except DataError:
            continue
        if files:
            return True
        stack += dirs
    return False


def _split_dirs(root: Path, splits: str = "auto") -> tuple[str, str | None]:
    """(training folder, test folder or None) of an image-folder root: its split subfolders when present
    (:data:`TRAIN_NAMES`, :data:`TEST_NAMES`, in any case: ``Train/`` and ``Test/`` are splits, not two
    classes named after them), else the root and no test folder. ``splits="flat"`` (``data.splits``): the
    root and no test folder whatever its subfolders are named (a class named ``train/``).

    With several test-like folders holding images (``train/ val/ test/``) the first in :data:`TEST_NAMES`'
    order is the test split (``test/``); the others are not read; an empty one is no split. Without a
    training folder, a test-like folder other than ``test/`` or ``val/`` is a class (``valid/`` beside
    ``invalid/``).

    Raises:
        DataError: ``test/`` or ``val/`` without a training folder; a training folder beside other
            folders or loose files holding images, which would not be read (a class named like a split:
            ``car/ bus/ Train/``); one split in two cases (:func:`_root_entries`); ``splits`` neither
            ``"auto"`` nor ``"flat"``.
    """
    if splits not in ("auto", "flat"):
        raise DataError(f"data.splits must be 'auto' or 'flat', got {splits!r}")
    named, others, loose = _root_entries(root)
    if splits == "flat":
        nested = [f"{os.path.basename(d)}/" for d in named.values()
                  if any(_holds_image(sub) for sub in _list_dir(d)[1])]  # a split-named folder of class folders
        if nested:  # flat would read a split's class folders as one class named after the split
            raise DataError(f"data.splits=flat reads every subfolder of {str(root)!r} as a class, but {_few(nested)} "
                            f"hold class folders of their own: they are splits, not classes; drop data.splits=flat")
        return str(root), None
    train = next((named[name] for name in TRAIN_NAMES if name in named), None)
    if train is None:
        lone = next((named[name] for name in ("test", "val") if name in named), None)
        if lone is not None:
            sub = os.path.basename(lone)
            raise DataError(f"image folder {str(root)!r} has a {sub}/ subfolder but no train/; put the training "
                            f"images in train/ (class subfolders), move {sub}/ out to split the folder itself, or "
                            f"set data.splits=flat if {sub}/ is a class")
        return str(root), None
    beside = [f"{os.path.basename(d)}/" for d in others if _holds_image(d)] + [os.path.basename(f) for f in loose]
    if beside:
        raise DataError(f"image folder {str(root)!r} has the split folder {os.path.basename(train)}/ beside "
                        f"{_few(beside)} holding images, which would not be read: is {os.path.basename(train)}/ a "
                        f"class named like a split? Put every class folder under {os.path.basename(train)}/ (test "
                        f"images under test/), or set data.splits=flat to read every subfolder as a class")
    test = next((named[name] for name in TEST_NAMES if name in named and _holds_image(named[name])), None)
    return train, test


def holdout_split(classes: dict[str, list[str]], folder: str, fraction: float,
                  seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, test) files per class: ``round(n * fraction)`` of a class's ``n`` images
    held out, at least 1 and at most ``n - 1`` when ``n >= 2`` (a single image trains).

    Which files are held out depends only on ``seed`` and each file's path relative to
    ``folder`` (the files ranked by a hash of both), never on the order files are listed
    in; adding a file moves at most one other file between the sides.
    """
    prefix = os.path.join(folder, "")  # the scan's paths are folder + os.sep + ...: slicing is 10x a Path's cost

    def rank(path: str) -> bytes:
        rel = path[len(prefix):] if path.startswith(prefix) else Path(path).relative_to(folder).as_posix()
        return hashlib.sha256(f"{seed}\0{rel.replace(os.sep, '/')}".encode()).digest()

    train, test = {}, {}
    for name, files in classes.items():
        n = len(files)
        k = 0 if n < 2 else min(max(int(n * fraction + 0.5), 1), n - 1)
        held = set(sorted(files, key=rank)[:k])
        train[name] = [f for f in files if f not in held]
        test[name] = [f for f in files if f in held]
    return train, test


def folder_split(root: Path, split: str, fraction: float = 0.2,
                 seed: int = 0, splits: str = "auto") -> tuple[list[str], list[int], list[str]]:
    """(files, labels, class names) of ``split`` ("train" or "test") of an image folder.

    Class numbers are the sorted class-folder names of the training folder, the same for
    both splits. Without ``test/`` or ``val/`` a labelled folder is split by
    :func:`holdout_split` (``fraction`` 0: all images train, no test split). Labels are -1
    and the class list empty for an unlabeled (flat) folder. ``splits``: as :func:`_split_dirs`'s.

    Raises DataError for: a test split that cannot exist (unlabeled folder without test/,
    ``fraction`` 0); a test class the training folder lacks; a training class folder with
    no images; loose images beside class folders; one file in two classes or in both
    splits; no images at all. Warns (:func:`warn_untested`, for ``split="test"``) when a training
    class has no test images (no or an empty test folder; a single image, when held out).
    """
    train_dir, test_dir = _split_dirs(root, splits)
    train = scan_folder(train_dir)
    warn_unread(train)
    if not train.classes:
        files = _unlabeled_side(train, test_dir, split, root)
        return files, [-1] * len(files), []
    empty = sorted(name for name, files in train.classes.items() if not files)
    if empty:
        raise DataError(f"class folder(s) {_few(empty)} in {train_dir!r} hold no images (hidden and non-image files "
                        f"and system folders are not counted); add images to them or remove them")
    names = sorted(train.classes)
    if test_dir is None:
        chosen = _held_out_side(train, root, split, fraction, seed, splits == "flat")
    elif split == "train":
        chosen = train.classes
    else:
        test = scan_folder(test_dir)
        warn_unread(test)
        chosen = _test_classes(train, test, names)
        warn_untested([name for name in names if not chosen.get(name)], train_dir, test_dir)
    files = [f for name in names for f in chosen.get(name, [])]
    labels = [i for i, name in enumerate(names) for _ in chosen.get(name, [])]
    return _nonempty(files, test_dir if split == "test" and test_dir else train_dir), labels, names


def _unlabeled_side(train: FolderScan, test_dir: str | None, split: str, root: Path) -> list[str]:
    """The files of ``split`` when the training folder has no class subfolders."""
    if split == "train":
        return _nonempty(train.loose, train.folder)
    if test_dir is None:
        raise DataError(f"image folder {str(root)!r} is unlabeled (no class subfolders) and has no test/ or val/ "
                        f"subfolder, so there is nothing to evaluate on; kNN and probes need a folder of class "
                        f"subfolders")
    test = scan_folder(test_dir)
    warn_unread(test)
    if test.classes:
        raise DataError(f"{test_dir!r} has class subfolders ({_few(sorted(test.classes))}) but {train.folder!r} has "
                        f"none; kNN and probes need labelled training images: put them in the same class subfolders")
    return _nonempty(test.loose, test_dir)


def _held_out_side(train: FolderScan, root: Path, split: str, fraction: float, seed: int,
                   flat: bool = False) -> dict[str, list[str]]:
    """``split``'s files per class of a labelled folder without test/ or val/ (see :func:`holdout_split`);
    ``flat``: read with ``data.splits=flat`` (a test/ folder would be one more class there)."""
    if fraction <= 0:
        if split == "test":
            what = "it is read with data.splits=flat" if flat else "it has no test/ or val/ subfolder"
            raise DataError(f"image folder {str(root)!r}: {what} and data.holdout_fraction is 0, so there is nothing "
                            f"to evaluate on; set data.holdout_fraction (e.g. 0.2)" + ("" if flat else " or add test/"))
        return train.classes
    kept, held = holdout_split(train.classes, train.folder, fraction, seed)
    if split == "test" and not any(held.values()):
        raise DataError(f"no class in {train.folder!r} has two or more images, so none can be held out for testing; "
                        f"add images or a test/ subfolder")
    if split == "test":
        warn_untested(sorted(name for name, files in held.items() if not files), train.folder, None)
    return held if split == "test" else kept


def warn_untested(classes: list[str], train_dir: str, test_dir: str | None) -> None:
    """Warn (one line) that the training classes ``classes`` have no test image: the test accuracy says nothing
    about them (kNN and probes still predict them, so they can take test images of other classes), and a
    per-class score has no test image of them. ``test_dir`` None: the test split is held out of ``train_dir``, where
    such a class has a single image (it trains, :func:`holdout_split`)."""
    import warnings

    if not classes:
        return
    if test_dir is None:
        why = "one image only (it trains: a class needs two or more for one to be held out for testing)"
        fix = "add images to those classes, or add a test/ folder of class subfolders"
    else:
        why = f"no test images (no folder, or an empty one, in {test_dir!r})"
        fix = (f"add their test images as {os.path.join(test_dir, '<class>', '')!r}, or remove the class folder(s) "
               f"from {train_dir!r}")
    warnings.warn(f"training class folder(s) {_few(classes, 10)} in {train_dir!r} have {why}, so the test accuracy "
                  f"says nothing about those classes; {fix}", stacklevel=3)


def _test_classes(train: FolderScan, test: FolderScan, names: list[str]) -> dict[str, list[str]]:
    """``test``'s files per class, checked against the training folder's classes and files."""
    if not test.classes:
        raise DataError(f"{test.folder!r} holds loose images but {train.folder!r} has class subfolders; put the test "
                        f"images in class subfolders named like the training ones ({_few(names)})")
    extra = sorted(name for name, files in test.classes.items() if files and name not in train.classes)
    if extra:
        raise DataError(f"test class(es) {_few(extra, 10)} in {test.folder!r} are not in {train.folder!r} (classes "
                        f"{_few(names)}); class numbers come from the training folder: add the class(es) there or "
                        f"remove them from the test folder")
    train_ids = set(train.ids.values())
    shared = [path for path, fid in test.ids.items() if fid in train_ids]
    if shared:
        raise DataError(f"{len(shared)} test image(s) are the same files (symlinks or hard links) as training "
                        f"images, first {shared[0]!r}; a test image seen in training inflates the score: remove them "
                        f"from one split")
    return test.classes


def _nonempty(files: list[str], folder: str) -> list[str]:
    if not files:
        raise DataError(f"image folder {folder!r} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)} "
                        f"(names starting with '.' and system folders such as __MACOSX are ignored)")
    return files


@DATASETS.register("image-folder")
def image_folder(cfg: DataConfig, split: str) -> ImageDataset:
    """Any folder of images. Class subfolders give labels; a flat folder is unlabeled.

    If ``root`` holds ``train/`` and ``test/`` (or ``val/``, ``validation/``...: :data:`TEST_NAMES`, in any
    case) subfolders they are the splits; a labelled folder without them is split by ``data.holdout_fraction`` and
    ``data.holdout_seed`` (see :func:`folder_split`); an unlabeled one is all training.
    Hidden entries (names starting with ``.``) and system folders (:data:`IGNORED_NAMES`)
    are ignored; each file counts once however it is linked.
    """
    if not cfg.root:
        raise DataError("data.root must name the image folder for dataset 'image-folder'")
    root = Path(cfg.root)
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root {str(root)!r} is a file, not a folder: give the folder that holds the images "
                        f"(class subfolders, or train/ and test/)")
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    files, labels, names = folder_split(root, split, cfg.holdout_fraction, cfg.holdout_seed, cfg.splits)
    ds = FolderImages(files, labels, len(names), cfg.image_size or 224, cfg.in_chans or 3, cfg.on_bad_file,
                      tuple(names), cfg.max_image_pixels)
    if cfg.cache == "uint8":
        return cached_folder(ds, cfg.cache_dir, split, cfg.num_workers)
    return ds
