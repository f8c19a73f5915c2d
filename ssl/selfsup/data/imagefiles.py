"""Image files as a dataset: :func:`decode_image` reads one file the way an image viewer
shows it, and :class:`FolderImages` decodes a list of files on access (in DataLoader
workers), skipping or replacing unreadable ones as ``data.on_bad_file`` says.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from selfsup.data.base import DataError, ImageDataset

if TYPE_CHECKING:
    from PIL import Image


def decode_image(path: str, in_chans: int, exif_orientation: bool = True, max_pixels: int | None = None) -> Tensor:
    """uint8 ``[C, H, W]`` of an image file as grayscale (C=1) or RGB (C=3), the way an
    image viewer shows it.

    The EXIF Orientation tag (JPEG, PNG, WebP) is applied first, so a phone photo stored
    sideways comes out upright (an unreadable EXIF block leaves the pixels as stored);
    ``exif_orientation=False`` keeps the stored pixel grid instead (for annotations made
    on it; Pillow applies a TIFF's Orientation tag itself, as its reported size says).
    Multi-frame files (GIF, TIFF, WebP, APNG) give their first frame. Palette, CMYK, RGBA,
    grayscale+alpha and 16-bit images are converted; transparency is dropped, not
    composited (each pixel keeps its stored colour, as torchvision's ImageFolder loader
    does); unsigned 16-bit values (PNG, TIFF, and PGM/PPM, whose maxval Pillow scales to 65535) are
    scaled to 8 bits (65535 -> 255) instead of clipped, whatever the image's own largest value, so a dark
    image is not brightened unlike a bright one. Images whose samples no such scale fits are refused,
    never clipped (:func:`_refusal`): 32-bit integers (Pillow's mode "I" from a TIFF or any format but
    PNG and PGM/PPM; scaled by their full range any value below 2**22 would round to black), signed
    integers of any width (a TIFF's SampleFormat 2: a negative value has no brightness) and floating
    point (mode "F": its value range is not defined, whether or not its values lie in [0, 1]).
    Any failure (missing permission, not an image, truncated or corrupt data, one of the refused
    kinds above, an image over Pillow's decompression-bomb limit) is a one-line DataError naming the file.

    ``max_pixels`` (``data.max_image_pixels``): None leaves Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, a process-wide setting) as it is; a number sets it first, 0 to
    no limit. Pillow warns above the limit and refuses an image of more than twice it.
    """
    import numpy as np
    from PIL import Image

    if max_pixels is not None:  # set on every call: a DataLoader worker started by spawn has Pillow's default
        Image.MAX_IMAGE_PIXELS = max_pixels or None
    from torchvision.transforms.v2 import functional as TF

    try:
        # from a file object, not the path: Pillow memory-maps uncompressed files opened by path,
        # and its mapping of a TIFF whose Orientation swaps width and height garbles the pixels
        with open(path, "rb") as f, Image.open(f) as im:
            refused = _refusal(im)  # from the header and the mode, before any pixel is decoded
            if refused:
                raise ValueError(refused)
            # a TIFF whose PhotometricInterpretation is 0 (WhiteIsZero): Pillow inverts 1- and 8-bit samples
            # itself, 16-bit ones not (read off the header before the turn below gives a new image)
            white_is_zero = im.format == "TIFF" and getattr(im, "tag_v2", {}).get(262) == 0
            im.load()  # decode now (the first frame): truncated files fail here, not later
            if exif_orientation:
                im = _upright(im)
            if im.mode in SIXTEEN_BIT_MODES:  # unsigned 16-bit grayscale (_refusal let through no other "I")
                arr = np.asarray(im, dtype=np.float64)  # [H, W] in 0..65535 (Pillow scales a PGM's maxval to it)
                if white_is_zero:
                    arr = 65535.0 - arr  # as a viewer shows it: 0 is white
                im = Image.fromarray(np.clip(arr * (255.0 / 65535.0), 0, 255).round().astype(np.uint8), "L")
            elif im.mode == "P":
                im = im.convert("RGBA")  # palettes with transparency convert cleanly through RGBA
            im = im.convert("L" if in_chans == 1 else "RGB")
            return TF.pil_to_tensor(im)  # uint8 [C, H, W]
    except Image.DecompressionBombError as err:  # Pillow's guard against a tiny file that decodes to gigabytes
        raise DataError(f"cannot decode image {path!r}: {_bomb_message(str(err))}{BAD_FILE_ADVICE}") from None
    except Exception as err:  # PIL raises many types for corrupt, truncated or foreign files
        unread = _tiff_samples(path) if isinstance(err, Image.UnidentifiedImageError) else None
        if unread:  # a TIFF Pillow has no mode for: say what it holds, not only that it is no image
            raise DataError(f"cannot decode image {path!r}: {unread}, which Pillow cannot read; "
                            f"{TO_EIGHT_OR_SIXTEEN_BIT}{BAD_FILE_ADVICE}") from None
        raise DataError(f"cannot decode image {path!r}: {type(err).__name__}: {err}{BAD_FILE_ADVICE}") from None


BAD_FILE_ADVICE = ". Remove or replace the file, or set data.on_bad_file=skip to leave such files out"

# Bump when decoding or resizing changes what a file decodes to (2: EXIF orientation applied; 3: mode "I"
# always scaled as 16-bit, mode "F" refused; 4: 32-bit, signed and floating-point TIFFs refused, which an
# older copy holds clipped or wrapped, and 16-bit WhiteIsZero TIFFs inverted), so that copies made by an
# older decoder are not reused
# (selfsup.data.decoded.folder_key) and a run's fingerprint of its files changes (FolderImages.fingerprint).
DECODER_VERSION = 4


def files_digest(ds: FolderImages, stat_fields: Callable[[os.stat_result], tuple[int, ...]]) -> str:
    """sha256 (hex) of how ``ds``'s files decode (:data:`DECODER_VERSION`, side, channels, class names,
    ``max_pixels``) and of each file's path, label and ``stat_fields(os.stat(path))`` (links followed; a
    file that cannot be stat'ed hashes as missing), from the file system alone: no image is decoded."""
    import hashlib

    h = hashlib.sha256(f"v{DECODER_VERSION}|{ds.image_size}|{ds.in_chans}|{ds.num_classes}|"
                       f"{'/'.join(ds.class_names)}|{ds.max_pixels}\n".encode())
    for path, label in zip(ds.files, ds.labels.tolist()):
        try:
            fields = "|".join(map(str, stat_fields(os.stat(path))))
            h.update(f"{path}|{label}|{fields}\n".encode())
        except OSError:  # unreadable now: part of the hash (left out when decoding)
            h.update(f"{path}|{label}|missing\n".encode())
    return h.hexdigest()

# Pillow's modes of unsigned 16-bit grayscale; its mode "I" (signed 32-bit) holds 16-bit data only from PNG
# (Pillow before 10.4 read 16-bit grayscale PNGs as "I") and PGM/PPM (any maxval above 255, scaled to 0..65535)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
SIXTEEN_BIT_IN_MODE_I = ("PNG", "PPM")
TO_EIGHT_OR_SIXTEEN_BIT = "convert it to unsigned 8-bit or 16-bit (values scaled to 0..255 or 0..65535)"


def _refusal(im: Image.Image) -> str:
    """Why ``im``'s samples cannot be scaled to 8 bits without a guess (one line naming their bit depth
    and the fix), or "" when they can.

    A TIFF says what its samples are in its BitsPerSample (258) and SampleFormat (339: 1 unsigned,
    2 signed, 3 floating point; TIFF 6.0, section 19) tags, which Pillow keeps in ``tag_v2``; Pillow
    reads a signed 8-bit TIFF as mode "L" (-1 becomes 255) and an unsigned 32-bit one as mode "I"
    (values from 2**31 up become negative), so the tags are read, not only the mode. Other formats:
    by Pillow's mode ("F" floating point; "I" 32-bit integers except from PNG and PGM/PPM).
    """
    fmt = f"{im.format} " if im.format else ""
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    if tags is not None:
        bits = max(_tag_values(tags.get(258)) or (1,))
        sample_format = max(_tag_values(tags.get(339)) or (1,))
        if sample_format == 3 or im.mode == "F":
            return _float_refusal(f"a {bits}-bit floating-point TIFF (SampleFormat 3)")
        if sample_format == 2:
            return (f"a signed {bits}-bit integer TIFF (SampleFormat 2): a negative value has no brightness, so its "
                    f"values cannot be scaled to 8 bits without a guess; {TO_EIGHT_OR_SIXTEEN_BIT}")
        if bits > 16:
            return (f"a {bits}-bit integer TIFF (Pillow mode {im.mode}) holds values up to {2 ** bits - 1:,}: scaled "
                    f"by that range any value below {2 ** (bits - 9):,} would round to black; "
                    f"{TO_EIGHT_OR_SIXTEEN_BIT}")
        return ""
    if im.mode == "F":
        return _float_refusal(f"a floating-point {fmt}image (Pillow mode F)")
    if im.mode == "I" and im.format not in SIXTEEN_BIT_IN_MODE_I:
        return (f"a 32-bit integer {fmt}image (Pillow mode I) holds values up to {2 ** 31 - 1:,}: scaled by that "
                f"range any value below {2 ** 22:,} would round to black; {TO_EIGHT_OR_SIXTEEN_BIT}")
    return ""


TIFF_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point"}  # tag 339 (TIFF 6.0)


def _tiff_samples(path: str) -> str | None:
    """What a classic TIFF's first image holds, read from its header (``"a TIFF of 3 64-bit floating-point
    samples a pixel"``: SamplesPerPixel 277, BitsPerSample 258, SampleFormat 339), or None for a file that is
    no TIFF, a BigTIFF, a header that does not read, or unsigned samples of up to 16 bits (which Pillow reads:
    something else failed). For the files Pillow refuses to open at all
    (floating point of 16 or 64 bits, signed or floating-point colour, 16-bit grey with alpha, ...)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or len(head) < 8 or struct.unpack(order + "H", head[2:4])[0] != 42:
                return None
            f.seek(struct.unpack(order + "I", head[4:8])[0])
            (count,) = struct.unpack(order + "H", f.read(2))
            entries = f.read(12 * count)
            tags: dict[int, tuple[int, ...]] = {}
            for i in range(count):  # each entry: tag, type (3 SHORT, 4 LONG), count, value or offset
                tag, kind, n, value = struct.unpack(order + "HHI4s", entries[12 * i:12 * i + 12])
                if tag in (258, 277, 339) and kind in (3, 4):
                    size = 2 if kind == 3 else 4
                    if n * size > 4:  # the values lie elsewhere in the file
                        here = f.tell()
                        f.seek(struct.unpack(order + "I", value)[0])
                        value = f.read(n * size)
                        f.seek(here)
                    tags[tag] = struct.unpack(order + ("H" if kind == 3 else "I") * n, value[:n * size])
    except (OSError, struct.error):
        return None
    samples, bits, sample_format = (tags.get(277) or (1,))[0], max(tags.get(258) or (1,)), max(tags.get(339) or (1,))
    if sample_format == 1 and bits <= 16:  # samples Pillow reads: the cause is elsewhere (compression, layout)
        return None
    kind = TIFF_SAMPLE_FORMATS.get(sample_format, "undefined")
    return f"a TIFF of {samples} {bits}-bit {kind} sample{'s' * (samples != 1)} a pixel"


def _float_refusal(what: str) -> str:
    """The refusal of a floating-point image, ``what`` naming its kind."""
    return (f"{what} has no defined value range (whether or not its values lie in [0, 1]; values outside it or "
            f"not finite could only be clipped), so it cannot be scaled to 8 bits without a guess; "
            f"{TO_EIGHT_OR_SIXTEEN_BIT}")


def _tag_values(value: object) -> tuple[int, ...]:
    """A TIFF tag's integer values as a tuple (Pillow gives one value or a tuple, one per sample)."""
    if value is None:
        return ()
    values = value if isinstance(value, tuple) else (value,)
    return tuple(int(v) for v in values if isinstance(v, int))


def _bomb_message(pillow_says: str) -> str:
    """One line for Pillow's DecompressionBombError: the image's pixel count (from Pillow's message,
    ``Image size (N pixels) exceeds limit of M pixels, ...``), Pillow's limit and how to raise it."""
    import re

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    found = re.search(r"\((\d+) pixels\)", pillow_says)
    pixels = int(found.group(1)) if found else None
    size = f"{pixels:,} pixels" if pixels else pillow_says.rstrip(".")
    return (f"DecompressionBombError: the image has {size}, over Pillow's decompression-bomb limit (2 x "
            f"PIL.Image.MAX_IMAGE_PIXELS = {2 * limit:,} pixels; Pillow warns from {limit:,}), which guards against "
            f"a small file that decodes to gigabytes; if the file is trusted, raise the limit (image folders: "
            f"data.max_image_pixels={pixels or 'N'} or 0 for none; in Python: "
            f"`PIL.Image.MAX_IMAGE_PIXELS`), or downscale the image")


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF Orientation tag (1-8) says; unchanged without a tag or
    when the EXIF block cannot be parsed (viewers then show the stored pixels too)."""
    from PIL import ImageOps

    try:
        ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
    except Exception:  # malformed EXIF raises assorted types; the pixels themselves are fine
        pass
    return im


class FolderImages(ImageDataset):
    """Image files decoded on access (in DataLoader workers), resized to a square side.

    ``on_bad_file="skip"`` leaves unreadable files out of their batch (``__getitem__``
    returns None, ``__getitems__`` drops it), warns once per process and appends the file
    and the reason to the log set by :meth:`set_bad_file_log`; ``"error"`` raises. After
    :meth:`keep_batches_full` (distributed training) an unreadable file is replaced by
    the next readable one instead, so no batch shrinks.
    """

    def __init__(self, files: list[str], labels: list[int], num_classes: int, size: int, in_chans: int,
                 on_bad_file: str = "skip", class_names: tuple[str, ...] = (), max_pixels: int | None = None) -> None:
        self.files = files
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes, self.image_size, self.in_chans = num_classes, size, in_chans
        self.class_names = class_names  # label i is class_names[i] (class-folder names; empty when unlabeled)
        self.on_bad_file = on_bad_file
        self.max_pixels = max_pixels  # data.max_image_pixels: Pillow's decompression-bomb limit (decode_image)
        self.bad_file_log: Path | None = None
        self.skipped: dict[str, str] = {}  # unreadable file -> reason, in this process (each worker has its own)
        self.substitute = False

    def set_bad_file_log(self, path: Path) -> None:
        """Append every unreadable file to ``path`` (one ``file<TAB>reason`` line each, :func:`bad_file_line`):
        those found already (the channel statistics decode the images before training starts, and DataLoader
        workers inherit this list, so they would never write them), then each one found later."""
        self.bad_file_log = Path(path)
        if self.skipped:
            with open(self.bad_file_log, "a") as f:
                f.writelines(bad_file_line(p, r) for p, r in self.skipped.items())

    def load(self, i: int) -> tuple[Tensor, int]:
        """Image ``i`` (uint8 ``[C, S, S]``: shorter side resized to S, centre crop) and its
        label; a DataError when the file cannot be decoded."""
        from torchvision.transforms.v2 import functional as TF

        img = decode_image(self.files[i], self.in_chans, max_pixels=self.max_pixels)
        img = TF.resize(img, self.image_size, antialias=True)  # shorter side -> size
        img = TF.center_crop(img, [self.image_size, self.image_size])
        return img, int(self.labels[i])

    def keep_batches_full(self) -> None:
        self.substitute = True

    def fingerprint(self) -> str:
        """A hash of what :meth:`info` depends on, from the file system alone (:func:`files_digest`): the
        decoder's version, the side, the channels, the class names, the decompression-bomb limit, and each
        file's path, label, size, mode, inode, modification and status-change time. The ctime is in because
        the mtime alone can be put back: ``cp -p`` of one same-sized file over another (fixed-size formats
        such as BMP, an unpacked archive whose files share one mtime), ``touch -d``, ``rsync -t`` rewrite the
        pixels and keep size, inode and mtime, but every write moves the ctime, which no tool sets back. A
        ``chmod`` or a restored backup moves it too: the statistics are then decoded and compared once more."""
        return files_digest(self, lambda st: (st.st_size, st.st_mode, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        for step in range(len(self.files) if self.substitute else 1):
            j = (i + step) % len(self.files)
            if self.files[j] in self.skipped:  # known unreadable: not decoded again in later epochs
                continue
            try:
                return self.load(j)  # j != i: the next readable image stands in for file i
            except DataError as err:
                if self.on_bad_file == "error":
                    raise
                self._skip(self.files[j], str(err))
        if self.substitute:
            raise DataError(f"none of the {len(self.files)} image files can be decoded (see the warnings)")
        return None

    def _skip(self, path: str, reason: str) -> None:
        import warnings

        reason = reason.removesuffix(BAD_FILE_ADVICE)  # skip is set already: that advice is not for this case
        if not self.skipped:
            where = f"; the list is in {self.bad_file_log}" if self.bad_file_log else ""
            warnings.warn(f"skipping unreadable images (data.on_bad_file=skip), first: {reason}{where}", stacklevel=2)
        self.skipped[path] = reason
        if self.bad_file_log is not None:
            with open(self.bad_file_log, "a") as f:  # one short line per file: appends do not interleave
                f.write(bad_file_line(path, reason))


def bad_file_line(path: str, reason: str) -> str:
    """One line of a run's ``bad_files.txt``: ``path<TAB>reason``, with a tab, newline or backslash in either
    written as ``\\t``, ``\\n``, ``\\\\`` (a file name may hold them; each file is one line, so
    counting the lines' distinct paths counts the files)."""
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    return f"{escape(path)}\t{escape(reason)}\n"
