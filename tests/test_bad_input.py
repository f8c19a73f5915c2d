"""Bad input gets a clear error or is left out and counted, never a crash: image folders
with corrupt, truncated, foreign, unusual-mode and tiny files, an empty folder, and
random bytes / random YAML fed through the loaders (hypothesis)."""

import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from selfsup.config import ConfigError, load_config
from selfsup.data import DataError, build_dataset, make_loader
from selfsup.data.imagefiles import FolderImages, decode_image


def _save(im: Image.Image, path, fmt: str) -> None:
    buf = io.BytesIO()
    im.save(buf, fmt)
    path.write_bytes(buf.getvalue())


def test_unusual_modes_decode_to_the_right_values(tmp_path):
    _save(Image.new("CMYK", (5, 4), (0, 255, 0, 0)), tmp_path / "cmyk.jpg", "JPEG")  # magenta ink
    _save(Image.new("RGBA", (5, 4), (10, 20, 30, 0)), tmp_path / "rgba.png", "PNG")  # fully transparent
    pal = Image.new("P", (5, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 0
    _save(pal, tmp_path / "palette.png", "PNG")
    deep = np.full((4, 5), 65535, dtype=np.uint16)
    deep[0, 0] = 32896  # 128 * 257
    _save(Image.fromarray(deep), tmp_path / "deep16.png", "PNG")
    _save(Image.new("L", (1, 1), 77), tmp_path / "tiny.png", "PNG")

    cmyk = decode_image(str(tmp_path / "cmyk.jpg"), 3)
    assert cmyk.shape == (3, 4, 5) and cmyk[0].float().mean() > 200 and cmyk[1].float().mean() < 60
    assert decode_image(str(tmp_path / "rgba.png"), 3)[:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped
    assert decode_image(str(tmp_path / "palette.png"), 3)[:, 0, 0].tolist() == [200, 100, 50]
    deep8 = decode_image(str(tmp_path / "deep16.png"), 1)
    assert deep8.dtype == torch.uint8 and deep8[0, 0, 0] == 128 and deep8[0, 1, 1] == 255  # scaled, not clipped
    ds = FolderImages([str(tmp_path / "tiny.png")], [-1], 0, size=8, in_chans=3)
    img, _ = ds[0]
    assert img.shape == (3, 8, 8) and img.unique().tolist() == [77]  # a 1x1 image is upscaled


@pytest.fixture()
def messy_folder(tmp_path):
    root = tmp_path / "photos"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            _save(Image.new("RGB", (12, 10), (40 * i, 80, 120)), root / cls / f"ok{i}.png", "PNG")
    (root / "cats" / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))  # not an image
    (root / "cats" / "notes.png").write_text("this is a text file with an image extension")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "PNG")
    (root / "dogs" / "truncated.png").write_bytes(good.getvalue()[:60])
    (root / "dogs" / "folder.png").mkdir()  # a directory with an image name: not a sample at all
    return root


def test_skip_policy_counts_and_lists_bad_files(messy_folder, tmp_path):
    cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={messy_folder}",
                             "data.image_size=8", "data.holdout_fraction=0"])
    ds = build_dataset(cfg.data, "train")
    log = tmp_path / "bad_files.txt"
    ds.set_bad_file_log(log)
    with pytest.warns(UserWarning, match="skipping unreadable images"):
        batches = list(make_loader(ds, batch_size=4, train=False))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.shape == (6, 3, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1, 1]  # the six good files
    listed = sorted(line.split("\t")[0].rsplit("/", 1)[1] for line in log.read_text().splitlines())
    assert listed == ["notes.png", "random.jpg", "truncated.png"]


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_found_by_the_channel_statistics_are_listed_too(messy_folder, tmp_path, workers):
    """helper-63's: training reads the channel statistics (ds.info(): every image of a small folder) before the
    log is set, so those unreadable files were known, never decoded again and never written: no bad_files.txt
    and no "[data] N unreadable" line without data.cache=uint8. The log gets them when it is set, once each,
    and the warning no longer advises data.on_bad_file=skip, which is set."""
    import warnings

    cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={messy_folder}",
                             "data.image_size=8", "data.holdout_fraction=0"])
    ds = build_dataset(cfg.data, "train")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ds.info()  # as selfsup.train.run does, before set_bad_file_log
    assert len(said) == 1 and "on_bad_file=skip to leave" not in str(said[0].message)
    log = tmp_path / "bad_files.txt"
    ds.set_bad_file_log(log)
    images = torch.cat([b[0] for b in make_loader(ds, batch_size=4, train=False, num_workers=workers)])
    assert len(images) == 6
    listed = [line.split("\t")[0].rsplit("/", 1)[1] for line in log.read_text().splitlines()]
    assert sorted(listed) == ["notes.png", "random.jpg", "truncated.png"]


def test_a_run_lists_its_unreadable_files_and_its_export_card_counts_them(messy_folder, tmp_path, capsys):
    """The same through `selfsup pretrain` (without data.cache): bad_files.txt lists the 3 unreadable files, the
    run says so at its end, and the export's card keeps how many of its training images were left out."""
    import json

    from conftest import ROOT
    from selfsup.cli import main

    run = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "--no-eval",
                 "data.name=image-folder", f"data.root={messy_folder}", "data.image_size=8",
                 "data.holdout_fraction=0", "data.batch_size=9", "encoder.kwargs={channels: [8, 16, 32, 64]}",
                 "trainer.max_steps=1", "trainer.online_probe=false", "trainer.progress_bar=false"]) == 0
    assert f"[data] 3 unreadable image file(s) were left out (data.on_bad_file=skip); see {run / 'bad_files.txt'}" \
        in capsys.readouterr().out
    assert main(["export", str(run), str(tmp_path / "exp")]) == 0
    card = json.loads((tmp_path / "exp" / "config.json").read_text())["selfsup"]
    assert (card["train_images"], card["unreadable_images"]) == (9, 3)
    readme = (tmp_path / "exp" / "README.md").read_text()
    assert "9 training images (3 of them unreadable, left out of training)" in readme
    # helper-63's: how the files were decoded (EXIF turned, 16-bit scaled, RGB) for code that feeds it other files
    assert "the EXIF orientation applied (`PIL.ImageOps.exif_transpose`)" in readme and \
        "unsigned 16-bit images scaled by 255 / 65535 (32-bit, signed and floating-point images were refused), " \
        "then converted to RGB" in readme


def test_a_decoded_copy_counts_readable_images_and_a_resume_switching_it_says_why_it_cannot(messy_folder, tmp_path,
                                                                                             capsys):
    """helper-65's: with data.cache=uint8 the image count leaves unreadable files out already, so the card's
    "6 training images (3 of them unreadable)" undercounted; and a resume switching data.cache was refused as
    "its files changed since" (the count moved with the cache mode). The card says "3 more files"; the resume
    names data.cache and the value to keep; bad_files.txt's reasons carry no advice to set skip."""
    import json

    from conftest import ROOT, one_line_error
    from selfsup.cli import main

    run = tmp_path / "run"
    common = ["data.name=image-folder", f"data.root={messy_folder}", "data.image_size=8", "data.holdout_fraction=0",
              "data.batch_size=9", "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.online_probe=false",
              "trainer.progress_bar=false"]
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "--no-eval", *common,
                 "trainer.max_steps=1", "data.cache=uint8", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    reasons = [line.split("\t")[1] for line in (run / "bad_files.txt").read_text().splitlines()]
    assert len(reasons) == 3 and not any("on_bad_file" in r for r in reasons), reasons
    assert main(["export", str(run), str(tmp_path / "exp")]) == 0
    card = json.loads((tmp_path / "exp" / "config.json").read_text())["selfsup"]
    assert (card["train_images"], card["unreadable_images"]) == (6, 3)
    assert "6 training images (3 more files unreadable, left out)" in (tmp_path / "exp" / "README.md").read_text()
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--no-eval", "trainer.max_steps=2", "data.cache=none"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "selfsup pretrain: error: cannot resume with data.cache uint8 -> none: the folder has unreadable files, which "
        "the decoded copy (uint8) leaves out of the image count and the files themselves do not (training images 6 "
        "then, 9 now), and that count sizes the run's per-image state; resume with data.cache=uint8")


@pytest.mark.parametrize("cache", ["none", "uint8"])
def test_unreadable_test_images_are_said_under_the_results(tmp_path, capsys, cache):
    """helper-65's: unreadable images of the test split were left out with a Python warning only; results.md said
    "2 test images" and nothing of the 2 others. The row warns how many of each split were left out."""
    import json

    from conftest import ROOT
    from selfsup.cli import main

    for split in ("train", "test"):
        for cls, value in (("a", 30), ("b", 220)):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(3 if split == "train" else 2):
                _save(Image.new("L", (6, 6), value), tmp_path / "data" / split / cls / f"{i}.png", "PNG")
    (tmp_path / "data" / "test" / "b" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "data" / "test" / "a" / "empty.png").write_bytes(b"")
    assert main(["eval", "pixels", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--out",
                 str(tmp_path / "out"), "data.name=image-folder", f"data.root={tmp_path / 'data'}", "data.in_chans=1",
                 "data.image_size=6", f"data.cache={cache}", f"data.cache_dir={tmp_path / 'cache'}",
                 "eval.knn=[[3,0.1]]", "eval.linear=false", "eval.plots=false"]) == 0
    row = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    said = ("2 of the 6 test images could not be decoded and were left out (data.on_bad_file=skip): the numbers are "
            "of the other 4")
    assert row["test_images"] == 4 and said in row["warnings"]
    assert said in (tmp_path / "out" / "results.md").read_text()
    assert not any("train images" in w for w in row["warnings"])


def test_a_bad_file_line_keeps_one_file_per_line():
    """A name holding a newline or a tab counted as two files in bad_files.txt (helper-63's NL folder)."""
    from selfsup.data.imagefiles import bad_file_line

    lines = bad_file_line("/x/a\nb\tc\\.png", "cannot decode 'a\nb'") + bad_file_line("/x/d.png", "truncated")
    assert lines == "/x/a\\nb\\tc\\\\.png\tcannot decode 'a\\nb'\n/x/d.png\ttruncated\n"
    assert len({line.split("\t")[0] for line in lines.splitlines()}) == 2


def test_error_policy_names_the_file_and_the_fix(messy_folder):
    cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={messy_folder}",
                             "data.image_size=8", "data.holdout_fraction=0", "data.on_bad_file=error"])
    ds = build_dataset(cfg.data, "train")
    with pytest.raises(DataError, match=r"cannot decode image .*notes\.png.*UnidentifiedImageError.*data\.on_bad_file=skip"):
        list(make_loader(ds, batch_size=16, train=False))


def test_permission_denied_is_a_bad_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    _save(Image.new("L", (4, 4)), path, "PNG")
    import builtins

    from selfsup.data import imagefiles

    def refuse(fp, *args, **kwargs):  # what a file without read permission does (root would bypass chmod)
        if str(fp) == str(path):
            raise PermissionError(13, "Permission denied", str(fp))
        return builtins.open(fp, *args, **kwargs)

    monkeypatch.setattr(imagefiles, "open", refuse, raising=False)  # decode_image opens the file itself
    with pytest.raises(DataError, match="PermissionError"):
        decode_image(str(path), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert FolderImages([str(path)], [-1], 0, 8, 1)[0] is None


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    for root, message in ((tmp_path / "empty", "holds no images"), (tmp_path / "nowhere", "does not exist")):
        cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={root}"])
        with pytest.raises(DataError, match=message):
            build_dataset(cfg.data, "train")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=300), ext=st.sampled_from(["png", "jpg", "bmp", "gif", "webp"]))
def test_fuzz_random_bytes_are_skipped_or_a_data_error(tmp_path, data, ext):
    path = tmp_path / f"fuzz.{ext}"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item = FolderImages([str(path)], [-1], 0, 8, 3)[0]
    assert item is None or (item[0].dtype == torch.uint8 and item[0].shape == (3, 8, 8))
    try:
        decode_image(str(path), 1)
    except DataError as err:
        assert "fuzz." in str(err) and "data.on_bad_file" in str(err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 40), w=st.integers(1, 40), mode=st.sampled_from(["L", "RGB", "RGBA", "CMYK", "P", "I;16", "1"]),
       fmt=st.sampled_from(["PNG", "TIFF", "BMP", "JPEG"]), seed=st.integers(0, 2**16))
def test_fuzz_random_small_images_decode(tmp_path, h, w, mode, fmt, seed):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        im = Image.fromarray(arr[..., 0] if bands == 1 else arr, "L" if bands == 1 else None)
        im = im.convert(mode) if im.mode != mode else im
    path = tmp_path / f"img.{fmt.lower()}"
    try:
        im.save(path, fmt)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in this format: nothing to read back
    for c in (1, 3):
        assert decode_image(str(path), c).shape == (c, h, w)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200),
                      st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                                             st.text(max_size=8)),
                                   lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                          st.dictionaries(st.sampled_from(
                                                              ["method", "name", "data", "optim", "lr", "seed",
                                                               "batch_size", "encoder", "trainer", "eval", "x"]),
                                                              kids, max_size=4)), max_leaves=12)))
def test_fuzz_config_loader_raises_only_config_errors(tmp_path, text):
    import yaml

    path = tmp_path / "fuzz.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif isinstance(text, str):
        path.write_text(text)
    else:
        path.write_text(yaml.safe_dump(text))
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err)  # a message, never an unhandled exception type


def test_distributed_training_replaces_unreadable_files_so_batches_keep_their_size(messy_folder):
    """Several processes need the same batch size on every rank: after keep_batches_full an
    unreadable file's slot holds the next readable image, and each bad file is logged once."""
    cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={messy_folder}",
                             "data.image_size=8", "data.holdout_fraction=0"])
    ds = build_dataset(cfg.data, "train")
    bad = [i for i, f in enumerate(ds.files) if not f.rsplit("/", 1)[-1].startswith("ok")]
    assert bad
    with pytest.warns(UserWarning, match="skipping unreadable"):
        assert len(ds.__getitems__(list(range(len(ds))))[0]) == len(ds) - len(bad)  # dropped by default
    ds.keep_batches_full()
    images, labels = ds.__getitems__(list(range(len(ds))))
    assert len(images) == len(ds)
    for i in bad:  # the stand-in is the next readable file (wrapping around)
        j = next((i + s) % len(ds) for s in range(1, len(ds)) if (i + s) % len(ds) not in bad)
        assert torch.equal(images[i], ds.load(j)[0]) and labels[i] == ds.labels[j]
    assert sorted(ds.skipped) == sorted(ds.files[i] for i in bad)  # logged once each
    decoded = []
    real_load = ds.load
    ds.load = lambda j: decoded.append(j) or real_load(j)
    assert len(ds.__getitems__(list(range(len(ds))))[0]) == len(ds)  # a second epoch, full again
    assert decoded and not set(decoded) & set(bad)  # known-bad files are not decoded again
