"""Image files whose samples no 8-bit scale fits (32-bit and signed integers, floating point) are refused
naming the file, the bit depth and the fix, never clipped; unsigned 16-bit files are scaled by 65535 in
every format; an image over Pillow's decompression-bomb limit is a one-line error saying how to raise it."""

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import DataError
from selfsup.data.imagefiles import BAD_FILE_ADVICE, decode_image

TO_8_OR_16 = "convert it to unsigned 8-bit or 16-bit (values scaled to 0..255 or 0..65535)"


def _tiff(path: Path, values: np.ndarray, sample_format: int, photometric: int = 1) -> Path:
    """A one-strip little-endian grayscale TIFF of ``values`` [H, W] written by hand (TIFF 6.0: BitsPerSample from
    the dtype, SampleFormat 1 unsigned, 2 signed, 3 float; PhotometricInterpretation 1 BlackIsZero, 0
    WhiteIsZero), as other programs write what Pillow will not."""
    arr = np.ascontiguousarray(values, values.dtype.newbyteorder("<"))
    h, w = arr.shape
    data = arr.tobytes()
    tags = [(256, 4, w), (257, 4, h), (258, 3, arr.dtype.itemsize * 8), (259, 3, 1), (262, 3, photometric),
            (273, 4, -1), (277, 3, 1), (278, 4, h), (279, 4, len(data)), (339, 3, sample_format)]
    start = 8 + 2 + 12 * len(tags) + 4  # pixels right after the header and the one directory
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = start if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else
                                                     struct.pack("<I", value))
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + data)
    return path


def _refused(path: Path, why: str) -> None:
    with pytest.raises(DataError) as err:
        decode_image(str(path), 1)
    assert str(err.value) == f"cannot decode image {str(path)!r}: ValueError: {why}{BAD_FILE_ADVICE}"


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
def test_thirty_two_bit_integer_tiffs_are_refused_not_clipped(tmp_path):
    """helper-72's: a 32-bit integer TIFF (Pillow mode I) was scaled as 16-bit, so every value above 65535 came out
    255; an unsigned one's values from 2**31 up (Pillow reads them as negative) came out 0."""
    wide = np.array([[0, 70_000, 2**32 - 1], [5, 2**31, 1]], dtype=np.uint32)
    with Image.open(_tiff(tmp_path / "u32.tif", wide, 1)) as im:  # the premise: Pillow's view of the file
        assert im.mode == "I" and np.asarray(im)[0, 2] == -1
    _refused(tmp_path / "u32.tif", f"a 32-bit integer TIFF (Pillow mode I) holds values up to 4,294,967,295: scaled "
                                   f"by that range any value below 8,388,608 would round to black; {TO_8_OR_16}")
    # Pillow writes its mode I as signed 32-bit (SampleFormat 2), whatever the values
    Image.fromarray(np.array([[0, 70_000, 300]], dtype=np.int32)).save(tmp_path / "i32.tif")
    _refused(tmp_path / "i32.tif", f"a signed 32-bit integer TIFF (SampleFormat 2): a negative value has no "
                                   f"brightness, so its values cannot be scaled to 8 bits without a guess; "
                                   f"{TO_8_OR_16}")
    Image.fromarray(np.array([[0, 70_000, 300]], dtype=np.int32)).save(tmp_path / "i32.im")  # mode I, no tags
    _refused(tmp_path / "i32.im", f"a 32-bit integer IM image (Pillow mode I) holds values up to 2,147,483,647: "
                                  f"scaled by that range any value below 4,194,304 would round to black; {TO_8_OR_16}")


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_signed_integer_tiffs_are_refused_not_wrapped_or_clipped(tmp_path, dtype):
    """helper-72's: a signed 8-bit TIFF decoded -5 as 251 (Pillow reads it as mode L) and a signed 16-bit one
    clipped every negative value to 0 and scaled 32767 to 128."""
    bits = np.dtype(dtype).itemsize * 8
    path = _tiff(tmp_path / "s.tif", np.array([[0, -5, np.iinfo(dtype).max]], dtype=dtype), 2)
    _refused(path, f"a signed {bits}-bit integer TIFF (SampleFormat 2): a negative value has no brightness, so its "
                   f"values cannot be scaled to 8 bits without a guess; {TO_8_OR_16}")


@pytest.mark.parametrize("values", [[0.0, 0.5, 1.0], [-1.0, 0.5, 2.0], [np.nan, np.inf, 0.5]],
                         ids=["in-0-1", "outside-0-1", "not-finite"])
def test_float_tiffs_are_refused_whatever_their_values(tmp_path, values):
    """A float image has no defined range: values in [0, 1] are not taken for 0..255 by a guess, and values
    outside it or not finite are never clipped."""
    Image.fromarray(np.array([values], dtype=np.float32)).save(tmp_path / "pil.tif")
    _tiff(tmp_path / "hand.tif", np.array([values], dtype=np.float32), 3)
    for name in ("pil.tif", "hand.tif"):
        _refused(tmp_path / name, f"a 32-bit floating-point TIFF (SampleFormat 3) has no defined value range "
                                  f"(whether or not its values lie in [0, 1]; values outside it or not finite could "
                                  f"only be clipped), so it cannot be scaled to 8 bits without a guess; {TO_8_OR_16}")


def test_unsigned_sixteen_bit_tiffs_scale_by_65535_like_png(tmp_path):
    values = np.array([[0, 1, 128, 129, 1000], [32767, 32768, 65000, 65534, 65535]], dtype=np.uint16)  # [2, 5]
    want = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # round half up; no tie here
    Image.fromarray(values).save(tmp_path / "pil.tif")
    Image.fromarray(values).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    Image.fromarray(values).save(tmp_path / "a.png")
    _tiff(tmp_path / "hand.tif", values, 1)
    for name in ("pil.tif", "lzw.tif", "a.png", "hand.tif"):
        assert np.array_equal(decode_image(str(tmp_path / name), 1)[0].numpy(), want), name


def test_an_image_over_the_decompression_bomb_limit_names_its_pixels_and_the_override(tmp_path, monkeypatch):
    Image.new("L", (40, 25)).save(tmp_path / "big.png")  # 1,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # Pillow refuses over 2 x 400, warns over 400
    with pytest.raises(DataError) as err:
        decode_image(str(tmp_path / "big.png"), 3)
    assert str(err.value) == (
        f"cannot decode image {str(tmp_path / 'big.png')!r}: DecompressionBombError: the image has 1,000 pixels, over "
        f"Pillow's decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS = 800 pixels; Pillow warns from 400), "
        f"which guards against a small file that decodes to gigabytes; if the file is trusted, raise the limit "
        f"(image folders: data.max_image_pixels=1000 or 0 for none; in Python: `PIL.Image.MAX_IMAGE_PIXELS`), or "
        f"downscale the image{BAD_FILE_ADVICE}")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # within twice the limit: Pillow's warning, then decoded
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode_image(str(tmp_path / "big.png"), 3).shape == (3, 25, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the override the message names
    assert decode_image(str(tmp_path / "big.png"), 3).shape == (3, 25, 40)


def test_data_max_image_pixels_sets_the_limit_an_image_folder_decodes_under(tmp_path, monkeypatch):
    """The override the message names, for command-line users who cannot set Pillow's limit in Python: the key's
    value becomes PIL.Image.MAX_IMAGE_PIXELS on every decode (so a spawned DataLoader worker has it too), 0 no
    limit; left out, Pillow's limit stays as it is. It is part of a decoded copy's key (which files decode)."""
    from selfsup.config import load_config
    from selfsup.data import build_dataset, decoded

    for cls in "ab":
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("L", (40, 25), 9).save(tmp_path / "train" / cls / "big.png")  # 1,000 pixels
        Image.new("L", (8, 8), 9).save(tmp_path / "train" / cls / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # as if Pillow's default were 400: refused over 800

    def folder(*overrides: str):
        cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={tmp_path}",
                                 "data.image_size=8", "data.holdout_fraction=0", "data.on_bad_file=error", *overrides])
        return build_dataset(cfg.data, "train")

    with pytest.raises(DataError, match="data.max_image_pixels=1000 or 0 for none"):
        folder()[0]
    assert Image.MAX_IMAGE_PIXELS == 400  # left out: Pillow's limit untouched
    for value, limit in (("1000", 1000), ("0", None)):
        ds = folder(f"data.max_image_pixels={value}")
        assert ds[0][0].shape == (3, 8, 8) and Image.MAX_IMAGE_PIXELS == limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    with pytest.raises(DataError):  # 300: refused above 600
        folder("data.max_image_pixels=300")[0]
    assert len({decoded.folder_key(folder(*o)) for o in ((), ("data.max_image_pixels=1000",),
                                                           ("data.max_image_pixels=0",))}) == 3
    with pytest.raises(ValueError, match="max_image_pixels"):
        load_config(None, ["method.name=simclr", "data.max_image_pixels=-1"])


def test_white_is_zero_tiffs_decode_as_a_viewer_shows_them_at_8_and_16_bits(tmp_path):
    """helper-74's: a 16-bit TIFF whose PhotometricInterpretation is 0 (WhiteIsZero, as some scanners and
    microscopes write) decoded exactly as its samples stored black-is-zero: a negative of the image. Pillow
    inverts 8-bit ones itself; 16-bit ones are now inverted before the scaling to 8 bits."""
    u16 = np.array([[0, 1000, 32768], [60000, 65535, 257]], dtype=np.uint16)  # [2, 3]
    want16 = np.floor((65535 - u16.astype(np.float64)) * 255 / 65535 + 0.5).astype(np.uint8)
    assert np.array_equal(decode_image(str(_tiff(tmp_path / "w16.tif", u16, 1, photometric=0)), 1)[0].numpy(),
                          want16)
    black16 = np.floor(u16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # BlackIsZero: unchanged
    assert np.array_equal(decode_image(str(_tiff(tmp_path / "b16.tif", u16, 1)), 1)[0].numpy(), black16)
    u8 = np.array([[0, 10, 128], [200, 255, 1]], dtype=np.uint8)
    assert np.array_equal(decode_image(str(_tiff(tmp_path / "w8.tif", u8, 1, photometric=0)), 1)[0].numpy(), 255 - u8)
    assert np.array_equal(decode_image(str(_tiff(tmp_path / "b8.tif", u8, 1)), 1)[0].numpy(), u8)


@pytest.mark.parametrize("dtype, sample_format, what", [
    (np.float64, 3, "a TIFF of 1 64-bit floating-point sample a pixel"),
    (np.float16, 3, "a TIFF of 1 16-bit floating-point sample a pixel"),
])
def test_a_tiff_pillow_cannot_open_is_named_by_what_it_holds(tmp_path, dtype, sample_format, what):
    """helper-74's: TIFFs Pillow has no mode for (64- or 16-bit floating point, ...) were refused only as
    "cannot identify image file"; the refusal now says what the file holds, read from its header, and the fix."""
    path = _tiff(tmp_path / "x.tif", np.zeros((2, 3), dtype=dtype), sample_format)
    with pytest.raises(DataError) as err:
        decode_image(str(path), 1)
    assert str(err.value) == (f"cannot decode image {str(path)!r}: {what}, which Pillow cannot read; {TO_8_OR_16}"
                              f"{BAD_FILE_ADVICE}")
    _tiff(tmp_path / "odd8.tif", np.zeros((2, 3), dtype=np.uint8), 1)  # readable samples, unknown compression:
    raw = (tmp_path / "odd8.tif").read_bytes()  # the samples are not the cause, so not named as one
    (tmp_path / "odd8.tif").write_bytes(raw.replace(struct.pack("<HHIHH", 259, 3, 1, 1, 0),
                                                    struct.pack("<HHIHH", 259, 3, 1, 50000, 0)))
    with pytest.raises(DataError) as err:
        decode_image(str(tmp_path / "odd8.tif"), 1)
    assert "which Pillow cannot read" not in str(err.value)
    (tmp_path / "not.tif").write_bytes(b"II*\x00" + b"\xff" * 4)  # an IFD offset past the end: no header to read
    with pytest.raises(DataError, match="UnidentifiedImageError"):
        decode_image(str(tmp_path / "not.tif"), 1)


def test_a_colour_tiff_pillow_cannot_open_is_named_with_its_samples(tmp_path):
    """Three signed 16-bit samples a pixel (BitsPerSample and SampleFormat three values each, stored away from
    their directory entries), read from the header as written here by hand, big-endian."""
    h, w = 2, 2
    data = np.zeros((h, w, 3), dtype=">i2").tobytes()
    n_tags = 11
    extra = 8 + 2 + 12 * n_tags + 4  # where the arrays go: after the directory
    bits_at, fmt_at, data_at = extra, extra + 6, extra + 12
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, data_at), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1),
            (339, 3, 3, fmt_at)]
    ifd = struct.pack(">H", n_tags)
    for tag, kind, count, value in tags:
        inline = kind == 3 and count == 1
        ifd += struct.pack(">HHI", tag, kind, count) + (struct.pack(">HH", value, 0) if inline else
                                                         struct.pack(">I", value))
    body = ifd + b"\x00" * 4 + struct.pack(">3H", 16, 16, 16) + struct.pack(">3H", 2, 2, 2) + data
    path = tmp_path / "rgb.tif"
    path.write_bytes(b"MM\x00*" + struct.pack(">I", 8) + body)
    with pytest.raises(DataError) as err:
        decode_image(str(path), 3)
    assert str(err.value) == (f"cannot decode image {str(path)!r}: a TIFF of 3 16-bit signed integer samples a "
                              f"pixel, which Pillow cannot read; {TO_8_OR_16}{BAD_FILE_ADVICE}")
