"""Image folders are read as the user sees them: one class list for every split, hidden and
system entries ignored, mixed or empty layouts refused, EXIF orientation applied, each file
counted once however it is linked, a seeded stratified held-out split for labelled folders
without test/, and a decoded cache that never outlives the data it was built from."""

import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import ConfigError, DataConfig, load_config
from selfsup.data import DataError, build_dataset
from selfsup.data.imagefiles import decode_image

COLOURS = {"a": (220, 30, 30), "b": (30, 220, 30), "c": (30, 30, 220), "d": (200, 200, 30)}


def _png(path: Path, colour=(128, 128, 128), size=(6, 5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="image-folder", root=str(root), image_size=4, **kw)


def _class_of(path: str, names: tuple[str, ...]) -> int:
    """The label a file must have: its class folder's place among the sorted training classes."""
    return names.index(Path(path).parent.name)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- one class list


def test_test_split_uses_the_training_class_numbers(tmp_path):
    """train/{a,b,c} and test/{a,c}: test 'c' images are class 2, as in train (per-split
    numbering made them 1), so pixel nearest-neighbour scoring gets every test image right."""
    for cls in "abc":
        for i in range(3):
            _png(tmp_path / "train" / cls / f"{i}.png", COLOURS[cls])
    for cls in "ac":
        for i in range(2):
            _png(tmp_path / "test" / cls / f"t{i}.png", COLOURS[cls])
    train, test = build_dataset(_cfg(tmp_path), "train"), build_dataset(_cfg(tmp_path), "test")
    assert train.class_names == test.class_names == ("a", "b", "c") and test.num_classes == 3
    c_labels = [int(y) for f, y in zip(test.files, test.labels) if Path(f).parent.name == "c"]
    assert c_labels == [2, 2]
    assert test.labels.tolist() == [_class_of(f, ("a", "b", "c")) for f in test.files]

    def pixels(ds):  # [N, D]
        return torch.stack([ds.load(i)[0] for i in range(len(ds))]).flatten(1).float()

    nearest = torch.cdist(pixels(test), pixels(train)).argmin(1)  # [N_test] 1-NN in pixel space
    assert (train.labels[nearest] == test.labels).float().mean().item() == 1.0


def test_another_member_test_with_one_late_class_and_an_empty_folder(tmp_path):
    for cls in "abcd":
        _png(tmp_path / "train" / cls / "0.png", COLOURS[cls])
    _png(tmp_path / "val" / "d" / "0.png", COLOURS["d"])  # val/ stands in for test/
    (tmp_path / "val" / "b").mkdir()  # an empty test class folder is the class being absent
    with pytest.warns(UserWarning, match="training class folder.*'a', 'b', 'c' in .* have no test images"):
        test = build_dataset(_cfg(tmp_path), "test")
    assert test.labels.tolist() == [3] and test.num_classes == 4


def test_training_classes_without_test_images_are_named_in_a_warning(tmp_path, recwarn):
    """helper-72's: a class with training images but no test images (no test folder, an empty one, or one image
    when the test split is held out) was left out of the test split without a word, so the test accuracy said
    nothing about it. It is still scored (its images train, its class can be predicted) but named in a warning,
    only when the test split is built."""
    for cls in "abc":
        _png(tmp_path / "split" / "train" / cls / "0.png", COLOURS[cls])
    _png(tmp_path / "split" / "test" / "a" / "0.png", COLOURS["a"])
    (tmp_path / "split" / "test" / "c").mkdir()
    train_dir, test_dir = str(tmp_path / "split" / "train"), str(tmp_path / "split" / "test")
    assert len(build_dataset(_cfg(tmp_path / "split"), "train")) == 3 and not recwarn.list  # training: no warning
    with pytest.warns(UserWarning) as said:
        test = build_dataset(_cfg(tmp_path / "split"), "test")
    assert test.labels.tolist() == [0]
    assert [str(w.message) for w in said] == [
        f"training class folder(s) 'b', 'c' in {train_dir!r} have no test images (no folder, or an empty one, in "
        f"{test_dir!r}), so the test accuracy says nothing about those classes; add their test images as "
        f"{os.path.join(test_dir, '<class>', '')!r}, or remove the class folder(s) from {train_dir!r}"]
    _labelled(tmp_path / "held", {"a": 5, "b": 1, "c": 4, "d": 1})  # b and d: one image each, which trains
    with pytest.warns(UserWarning) as said:
        test = build_dataset(_cfg(tmp_path / "held"), "test")
    assert sorted(set(test.labels.tolist())) == [0, 2]
    assert [str(w.message) for w in said] == [
        f"training class folder(s) 'b', 'd' in {str(tmp_path / 'held')!r} have one image only (it trains: a class "
        f"needs two or more for one to be held out for testing), so the test accuracy says nothing about those "
        f"classes; add images to those classes, or add a test/ folder of class subfolders"]


def test_classes_missing_from_one_split_are_named_in_every_result_row(tmp_path, capsys):
    """helper-74's: the warning of a training class without test images went to stderr only; results.json and
    results.md (what a user reads later, and compare) said nothing, though the accuracy is of the other classes.
    Each row's warnings now name the untested classes and, the other way round, test classes no training image
    has (with the accuracy they cap); a split where every class is on both sides adds neither."""
    import json

    from selfsup.cli import main
    from selfsup.eval.evaldata import unseen_classes_message, untested_classes_message

    for cls in "abc":
        for i in range(4):
            _png(tmp_path / "d" / "train" / cls / f"{i}.png", COLOURS[cls])
    for cls in "ab":
        for i in range(2):
            _png(tmp_path / "d" / "test" / cls / f"{i}.png", COLOURS[cls])
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="training class folder"):
        assert main(["eval", "pixels", "data.name=image-folder", f"data.root={tmp_path / 'd'}", "data.image_size=4",
                     "eval.plots=false", "eval.probe_seeds=1", "eval.low_shot=[]", "eval.knn=[[3, 0.07]]",
                     "eval.linear=false", "--out", str(out)]) == 0
    (row,) = json.loads((out / "results.json").read_text())
    said = ("class(es) 'c' have training images but no test image: the test accuracy says nothing about them; add "
            "test images of those classes")
    assert said in row["warnings"] and said in (out / "results.md").read_text()
    cfg = load_config(None, ["method.name=simclr"])
    y = torch.tensor
    assert untested_classes_message(y([0, 1, 2]), y([0, 1, 1]), ()) == said.replace("'c'", "2")
    assert untested_classes_message(y([0, 1]), y([1, 0]), ("a", "b")) is None
    assert unseen_classes_message(y([0, 1]), y([0, 1]), ("a", "b"), cfg) is None
    assert unseen_classes_message(y([0, 0]), y([0, 1, 1, 1]), ("a", "b"), cfg) == (
        "3 of the 4 test images (75.0%) of dataset 'fashion-mnist' are of class(es) 'b', which none of the 2 labelled "
        "training images has: kNN and probes can never predict them, so accuracy is at most 25.0%; add training "
        "images of those classes")


def test_test_classes_a_training_subset_lacks_are_named_with_the_accuracy_they_cap(tmp_path):
    """helper-72's: ``data.subset`` draws a random subset of the training images; a class it leaves out can never
    be predicted, so its test images are certain errors, and nothing said so. The warning counts them, caps the
    accuracy by their share, and names the fix."""
    import warnings

    from selfsup.eval.evaldata import evaluation_data

    for cls, n in (("a", 6), ("b", 6), ("c", 1)):
        for i in range(n):
            _png(tmp_path / "train" / cls / f"{i}.png", COLOURS[cls])
    for cls, n in (("a", 3), ("b", 2), ("c", 3)):
        for i in range(n):
            _png(tmp_path / "test" / cls / f"{i}.png", COLOURS[cls])
    args = ["method.name=simclr", "data.name=image-folder", f"data.root={tmp_path}", "data.image_size=4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class trains: nothing to say
        train, test, _ = evaluation_data(load_config(None, args))
    assert len(train) == 13 and len(test) == 8
    cfg = load_config(None, [*args, "data.subset=8", "seed=4"])  # seed 4 draws no image of c
    with pytest.warns(UserWarning) as said:
        train, test, _ = evaluation_data(cfg)
    missing = sorted(set(test.labels.tolist()) - set(train.labels.tolist()))  # [classes] the subset left out
    assert missing, "seed 4 must leave a class out of the 8-image subset for this test to test anything"
    names = ("a", "b", "c")
    n = sum(1 for y in test.labels.tolist() if y in missing)
    shown = ", ".join(repr(names[c]) for c in missing)
    assert [str(w.message) for w in said] == [
        f"{n} of the 8 test images ({100 * n / 8:.1f}%) of dataset 'image-folder' at {str(tmp_path)!r} are of "
        f"class(es) {shown}, which none of the 8 labelled training images has: kNN and probes can never predict "
        f"them, so accuracy is at most {100 - 100 * n / 8:.1f}%; data.subset=8 drew none of their training images: "
        f"raise data.subset (or drop it) so that every class has training images"]


def test_a_test_class_that_train_lacks_is_a_one_line_error(tmp_path):
    for cls in "ab":
        _png(tmp_path / "train" / cls / "0.png")
    for cls in "abde":
        _png(tmp_path / "test" / cls / "0.png")
    assert len(build_dataset(_cfg(tmp_path), "train")) == 2  # the training split does not depend on test/
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "test")
    msg = _one_line(err)
    assert "test class(es) 'd', 'e'" in msg and "not in" in msg and "add the class(es) there" in msg


def test_labelled_test_folder_with_unlabeled_train_folder_is_an_error(tmp_path):
    _png(tmp_path / "train" / "0.png")
    _png(tmp_path / "test" / "a" / "0.png")
    with pytest.raises(DataError, match="class subfolders .*'a'.* but .*train.* has none"):
        build_dataset(_cfg(tmp_path), "test")
    shutil.rmtree(tmp_path / "train")
    _png(tmp_path / "train" / "a" / "0.png")
    shutil.rmtree(tmp_path / "test" / "a")
    _png(tmp_path / "test" / "loose.png")
    with pytest.raises(DataError, match="holds loose images but .* has class subfolders; .*'a'"):
        build_dataset(_cfg(tmp_path), "test")


def test_a_test_folder_without_train_is_an_error(tmp_path):
    for cls in "ab":
        _png(tmp_path / cls / "0.png")
    _png(tmp_path / "test" / "a" / "1.png")  # would otherwise become a third class named 'test'
    with pytest.raises(DataError, match=r"has a test/ subfolder but no train/"):
        build_dataset(_cfg(tmp_path), "train")


@pytest.mark.parametrize("train_name, test_name", [("Train", "Test"), ("TRAIN", "VAL"), ("train", "validation"),
                                                    ("training", "Valid"), ("Training", "testing")])
def test_split_folders_are_found_in_any_case_and_common_names(tmp_path, train_name, test_name):
    """helper-63's: Train/ and Test/ were two classes named "Train" and "Test" (a kNN of which folder an image
    came from, at 83 %), and train/ + validation/ left validation/ out and held out a share of train/. Both are
    the splits, with the class numbers of the training folder."""
    for cls in "ab":
        for i in range(3):
            _png(tmp_path / train_name / cls / f"{i}.png", COLOURS[cls])
        _png(tmp_path / test_name / cls / "t.png", COLOURS[cls])
    train, test = build_dataset(_cfg(tmp_path), "train"), build_dataset(_cfg(tmp_path), "test")
    assert train.class_names == test.class_names == ("a", "b")
    assert len(train) == 6 and sorted(Path(f).name for f in test.files) == ["t.png", "t.png"]
    assert test.labels.tolist() == [_class_of(f, ("a", "b")) for f in test.files]


def test_a_class_named_like_a_split_beside_other_classes_is_refused_not_trained_alone(tmp_path):
    """helper-65's: car/ bus/ Train/ (a class named "Train") trained on Train/'s 6 images as the training split,
    dropping the 12 car and bus images without a word (plain train/ did so before). A split folder beside other
    folders or loose images that hold images is refused, naming them; an empty folder or a non-image file
    beside the splits is no reason."""
    for cls in ("car", "bus", "Train"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", COLOURS["a"])
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "train")
    assert _one_line(err) == (
        f"image folder {str(tmp_path)!r} has the split folder Train/ beside 'bus/', 'car/' holding images, which "
        f"would not be read: is Train/ a class named like a split? Put every class folder under Train/ (test images "
        f"under test/), or set data.splits=flat to read every subfolder as a class")
    flat = _cfg(tmp_path, splits="flat")  # the fix the message names: Train/ is a class like the others
    train, test = build_dataset(flat, "train"), build_dataset(flat, "test")
    assert train.class_names == test.class_names == ("Train", "bus", "car")
    assert len(train) + len(test) == 6 and len(test) == 3  # one of each class's 2 images held out
    for ds in (train, test):
        assert ds.labels.tolist() == [_class_of(f, ("Train", "bus", "car")) for f in ds.files]
    for cls in ("car", "bus"):
        shutil.rmtree(tmp_path / cls)
    _png(tmp_path / "stray.png")  # a loose image beside the split: not read either
    with pytest.raises(DataError, match="beside 'stray.png' holding images"):
        build_dataset(_cfg(tmp_path), "train")
    (tmp_path / "stray.png").unlink()
    (tmp_path / "notes").mkdir()  # empty
    (tmp_path / "README.txt").write_text("not an image")
    for i in range(2):  # Train/ now a split of class folders
        (tmp_path / "Train" / f"{i}.png").unlink()
        _png(tmp_path / "Train" / "x" / f"{i}.png")
    assert build_dataset(_cfg(tmp_path), "train").class_names == ("x",)


def test_flat_splits_read_train_and_test_folders_as_classes(tmp_path):
    """data.splits=flat: a folder whose classes are named train/ and test/ is read as two classes split by
    holdout_fraction, where the default reads them as the splits of unlabeled images; another value is refused."""
    for cls, colour in (("train", "a"), ("test", "b")):
        for i in range(5):
            _png(tmp_path / cls / f"{cls}{i}.png", COLOURS[colour])
    auto = build_dataset(_cfg(tmp_path), "train")  # auto: train/ and test/ are splits of unlabeled images
    assert auto.class_names == () and len(auto) == 5 and set(auto.labels.tolist()) == {-1}
    train, test = build_dataset(_cfg(tmp_path, splits="flat"), "train"), build_dataset(_cfg(tmp_path, splits="flat"),
                                                                                      "test")
    assert train.class_names == ("test", "train") and len(train) == 8 and len(test) == 2
    assert sorted(Path(f).parent.name for f in test.files) == ["test", "train"]
    with pytest.raises(DataError, match="data.splits must be 'auto' or 'flat', got 'both'"):
        from selfsup.data.folders import folder_split
        folder_split(tmp_path, "train", splits="both")
    with pytest.raises(ConfigError, match="splits"):
        load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={tmp_path}", "data.splits=both"])


def test_flat_splits_refuse_split_folders_that_hold_classes_and_say_what_applies(tmp_path):
    """helper-70's: data.splits=flat on a folder with real train/{a,b} and test/{a,b} splits trained on two "classes",
    test and train, each holding the real classes: refused, naming the folders. Under flat, holdout 0 no longer
    suggests adding test/ (it would be a class), and test/ without train/ offers data.splits=flat."""
    for split in ("train", "test"):
        for cls in "ab":
            for i in range(2):
                _png(tmp_path / "split" / split / cls / f"{i}.png", COLOURS[cls])
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path / "split", splits="flat"), "train")
    assert _one_line(err) == (f"data.splits=flat reads every subfolder of {str(tmp_path / 'split')!r} as a class, "
                              f"but 'test/', 'train/' hold class folders of their own: they are splits, not classes; "
                              f"drop data.splits=flat")
    for cls in ("car", "bus", "test"):
        for i in range(2):
            _png(tmp_path / "cv" / cls / f"{i}.png", COLOURS["a"])
    with pytest.raises(DataError, match=r"move test/ out to split the folder itself, or set data.splits=flat if test/ "
                                        r"is a class$"):
        build_dataset(_cfg(tmp_path / "cv"), "train")
    assert build_dataset(_cfg(tmp_path / "cv", splits="flat"), "train").class_names == ("bus", "car", "test")
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path / "cv", splits="flat", holdout_fraction=0.0), "test")
    assert _one_line(err).endswith("it is read with data.splits=flat and data.holdout_fraction is 0, so there is "
                                   "nothing to evaluate on; set data.holdout_fraction (e.g. 0.2)")


def test_a_class_folder_linked_to_nothing_is_refused_not_dropped(tmp_path):
    """helper-71's: a class folder that is a link to a missing place (an unmounted drive) was left out without a
    word: 2 classes trained instead of 3, and every class number after it moved. Refused, naming the link and
    its target; a broken link to an image file is still counted as an unreadable file."""
    for cls in ("x", "y"):
        for i in range(2):
            _png(tmp_path / "root" / cls / f"{i}.png", COLOURS["a"])
    (tmp_path / "root" / "w").symlink_to(tmp_path / "missing-drive")
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path / "root"), "train")
    assert _one_line(err) == (f"{str(tmp_path / 'root' / 'w')!r} is a link to {str(tmp_path / 'missing-drive')!r}, "
                              f"which does not exist (a drive not mounted?), so its images cannot be read: mount it, "
                              f"or remove the link")
    (tmp_path / "root" / "w").unlink()
    (tmp_path / "root" / "x" / "gone.png").symlink_to(tmp_path / "nothing.png")
    assert build_dataset(_cfg(tmp_path / "root"), "train").class_names == ("x", "y")


def test_holdout_zero_names_the_online_probe_when_it_is_what_needs_a_test_split(tmp_path, capsys):
    """helper-71's: data.holdout_fraction=0 (train on everything) with --no-eval was refused as "nothing to
    evaluate on", though nothing was to be evaluated: the online probe's test loader needed the split. The
    error names trainer.online_probe=false, which makes the same command train."""
    from conftest import ROOT, one_line_error
    from selfsup.cli import main

    for cls in ("x", "y"):
        for i in range(4):
            _png(tmp_path / "data" / cls / f"{i}.png", COLOURS["a" if cls == "x" else "b"])
    args = ["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(tmp_path / "run"), "--no-eval",
            "data.name=image-folder", f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.in_chans=3",
            "data.batch_size=4", "data.holdout_fraction=0", "trainer.max_steps=1", "trainer.progress_bar=false",
            "encoder.kwargs={channels: [8, 16, 32, 64]}"]
    capsys.readouterr()
    assert main(args) == 2
    err = one_line_error(capsys.readouterr().err)
    assert err.startswith("selfsup pretrain: error: the online probe (trainer.online_probe) scores on the test split, "
                          "and image folder") and err.endswith("; or set trainer.online_probe=false")
    assert main([*args, "trainer.online_probe=false"]) == 0


def test_class_names_reach_subsets_and_decoded_copies(tmp_path):
    """helper-70's: kNN warnings lost the class names under data.subset and data.cache=uint8 (a Subset and the
    decoded copy had none)."""
    from selfsup.data import subset

    for cls in ("crow", "duck", "emu"):
        for i in range(4):
            _png(tmp_path / "birds" / cls / f"{i}.png", COLOURS["a" if cls == "emu" else "b"])
    plain = build_dataset(_cfg(tmp_path / "birds", holdout_fraction=0.25), "train")
    cached = build_dataset(_cfg(tmp_path / "birds", holdout_fraction=0.25, cache="uint8",
                                cache_dir=str(tmp_path / "cache")), "train")
    assert plain.class_names == cached.class_names == subset(plain, 5, 0).class_names == ("crow", "duck", "emu")
    assert subset(cached, 5, 0).class_names == ("crow", "duck", "emu")


def test_test_like_names_are_classes_without_a_train_folder_and_an_empty_test_folder_is_no_split(tmp_path):
    """helper-65's: a flat labelled folder of classes valid/ and invalid/ was refused as "a valid/ subfolder but
    no train/" (accepted before split names widened); and train/ beside an empty Val/ read Val/ as the test split
    and refused it as holding loose images. Without train/, only test/ and val/ mean a split; an empty test-like
    folder is none (the test images are then held out)."""
    for cls in ("valid", "invalid"):
        for i in range(3):
            _png(tmp_path / "flat" / cls / f"{i}.png", COLOURS["a" if cls == "valid" else "b"])
    assert build_dataset(_cfg(tmp_path / "flat"), "train").class_names == ("invalid", "valid")
    for i in range(5):
        _png(tmp_path / "split" / "train" / "a" / f"{i}.png", COLOURS["a"])
        _png(tmp_path / "split" / "train" / "b" / f"{i}.png", COLOURS["b"])
    (tmp_path / "split" / "Val").mkdir()
    test = build_dataset(_cfg(tmp_path / "split"), "test")
    assert len(test) == 2 and all("/train/" in f for f in test.files)  # a held-out share of train/


def test_several_test_like_folders_take_test_and_one_split_in_two_cases_is_refused(tmp_path):
    """train/ val/ test/ (ImageNet-like): test/ is the test split, val/ is not read. test/ and Test/ (a
    case-sensitive file system) would split one split in two: refused, naming both."""
    for split, colour in (("train", "a"), ("val", "b"), ("test", "c")):
        _png(tmp_path / split / "k" / "0.png", COLOURS[colour])
        _png(tmp_path / split / "j" / "0.png", COLOURS[colour])
    assert {Path(f).parts[-3] for f in build_dataset(_cfg(tmp_path), "test").files} == {"test"}
    _png(tmp_path / "Test" / "k" / "1.png")  # Linux file systems tell the two apart
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "test")
    assert _one_line(err) == (f"image folder {str(tmp_path)!r} has subfolders Test/, test/, one split spelled in "
                              f"different cases: merge them into one")


def test_a_relative_or_home_root_names_the_folder_seen_when_typed(tmp_path, monkeypatch):
    """helper-63's: a relative data.root was kept as typed in the run's config.yaml, so `selfsup eval RUN` from
    another working directory read another folder of the same name (other classes, other images) and scored it
    as the run's data, without a word. The root (and data.cache_dir) is made absolute when read, ~ and $VARS
    expanded; the config a run writes names the folder itself."""
    from selfsup.config import to_dict

    _png(tmp_path / "mine" / "a" / "0.png", COLOURS["a"])
    _png(tmp_path / "mine" / "b" / "0.png", COLOURS["b"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PHOTOS", str(tmp_path / "mine"))
    for typed in ("mine", "./mine/", "~/mine", "$PHOTOS", "${HOME}/mine"):
        cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.root={typed}",
                                 "data.cache_dir=cache"])
        assert cfg.data.root == str(tmp_path / "mine") and cfg.data.cache_dir == str(tmp_path / "cache"), typed
        assert to_dict(cfg)["data"]["root"] == str(tmp_path / "mine")  # what config.yaml holds
    monkeypatch.delenv("NOPE_UNSET", raising=False)
    with pytest.raises(ConfigError) as err:  # helper-65's: "'/cwd/$NOPE_UNSET/d1' does not exist"
        load_config(None, ["method.name=simclr", "data.name=image-folder", "data.root=$NOPE_UNSET/d1"])
    assert _one_line(err) == ("data.root '$NOPE_UNSET/d1': the environment variable NOPE_UNSET is not set; set it or "
                              "give the path itself")
    _png(tmp_path / "price$list" / "a" / "0.png")  # a folder whose name holds a $ is that folder, not a variable
    cfg = load_config(None, ["method.name=simclr", "data.name=image-folder", "data.root=price$list"])
    assert cfg.data.root == str(tmp_path / "price$list")
    saved = load_config(None, ["method.name=simclr", "data.name=image-folder", "data.root=mine"])  # typed here
    other = tmp_path / "elsewhere"
    _png(other / "mine" / "x" / "0.png")  # the same relative name from another directory: another folder
    monkeypatch.chdir(other)
    assert build_dataset(saved.data, "train").class_names == ("a", "b")  # still the folder it named


def test_a_root_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "photos.zip").write_bytes(b"PK")
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path / "photos.zip"), "train")
    assert _one_line(err) == (f"data.root {str(tmp_path / 'photos.zip')!r} is a file, not a folder: give the folder "
                              f"that holds the images (class subfolders, or train/ and test/)")


# --------------------------------------------------------------------------- hidden and system entries


def test_flat_folder_with_a_hidden_thumbnail_folder_stays_flat(tmp_path):
    """300 loose images plus .thumbnails/ with one image: 300 unlabeled images (it was
    read as one class holding 1 image)."""
    for i in range(300):
        _png(tmp_path / f"img{i:03d}.png", (i % 256, 0, 0), size=(2, 2))
    _png(tmp_path / ".thumbnails" / "img000.png")
    ds = build_dataset(_cfg(tmp_path), "train")
    assert len(ds) == 300 and ds.num_classes == 0 and set(ds.labels.tolist()) == {-1}
    assert sorted(Path(f).name for f in ds.files) == [f"img{i:03d}.png" for i in range(300)]


@pytest.mark.parametrize("junk", ["__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found",
                                  ".git", "#recycle"])
def test_system_folders_and_hidden_files_are_ignored(tmp_path, junk):
    for i in range(3):
        _png(tmp_path / f"{i}.png")
    _png(tmp_path / junk / "x.png")
    _png(tmp_path / "._0.png")  # an AppleDouble file: not an image of the user's
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    ds = build_dataset(_cfg(tmp_path), "train")
    assert sorted(Path(f).name for f in ds.files) == ["0.png", "1.png", "2.png"] and ds.num_classes == 0


def test_hidden_entries_inside_class_folders_are_ignored(tmp_path):
    for cls in "ab":
        for i in range(2):
            _png(tmp_path / "train" / cls / f"{i}.png", COLOURS[cls])
        _png(tmp_path / "train" / cls / f"._{cls}.png")
        _png(tmp_path / "train" / cls / ".thumbs" / "t.png")
        _png(tmp_path / "train" / cls / "@eaDir" / "SYNOPHOTO_THUMB.png")
    _png(tmp_path / "train" / "__MACOSX" / "a" / "._0.png")
    _png(tmp_path / "test" / "a" / "0.png", COLOURS["a"])
    ds = build_dataset(_cfg(tmp_path), "train")
    assert ds.class_names == ("a", "b") and len(ds) == 4
    assert ds.labels.tolist() == [_class_of(f, ("a", "b")) for f in ds.files] == [0, 0, 1, 1]


def test_loose_images_beside_subfolders_is_an_error_naming_both(tmp_path):
    for i in range(5):
        _png(tmp_path / f"img{i}.png")
    _png(tmp_path / "cats" / "c.png")
    _png(tmp_path / "dogs" / "d.png")
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "train")
    msg = _one_line(err)
    assert "mixes 5 loose image(s) ('img0.png', 'img1.png', 'img2.png' and 2 more)" in msg
    assert "subfolder(s) ('cats/', 'dogs/')" in msg and "put every image in a class subfolder" in msg


def test_a_class_folder_without_images_is_an_error(tmp_path):
    _png(tmp_path / "a" / "0.png")
    _png(tmp_path / "b" / "._0.png")  # only hidden and non-image files: no images
    (tmp_path / "b" / "notes.txt").write_text("to do")
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "train")
    assert "class folder(s) 'b', 'c'" in _one_line(err) and "hold no images" in str(err.value)


def test_gif_files_count_as_images(tmp_path):
    _png(tmp_path / "0.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "1.GIF")
    assert len(build_dataset(_cfg(tmp_path), "train")) == 2


# --------------------------------------------------------------------------- decoding as a viewer shows it


def _oriented(arr: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for stored pixels ``arr`` [H, W, C] under EXIF Orientation 1-8
    (the TIFF/EXIF definition, written with numpy's own flips and rotations)."""
    return {1: arr, 2: arr[:, ::-1], 3: arr[::-1, ::-1], 4: arr[::-1], 5: arr.swapaxes(0, 1),
            6: np.rot90(arr, -1), 7: np.rot90(arr, 2).swapaxes(0, 1), 8: np.rot90(arr, 1)}[orientation]


def _with_orientation(im: Image.Image, path: Path, orientation: int, **kw) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, **kw)
    return path


@pytest.mark.parametrize("fmt", ["png", "tiff", "webp"])
def test_exif_orientation_is_applied_to_lossless_files(tmp_path, fmt):
    arr = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)  # [H, W, C], not symmetric
    kw = {"lossless": True} if fmt == "webp" else {}
    for o in range(1, 9):
        path = _with_orientation(Image.fromarray(arr), tmp_path / f"o{o}.{fmt}", o, **kw)
        out = decode_image(str(path), 3).permute(1, 2, 0).numpy()  # [H', W', 3]
        assert np.array_equal(out, _oriented(arr, o)), (fmt, o)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_exif_orientation_of_uncompressed_tiffs_in_other_modes(tmp_path, mode):
    """Pillow memory-maps uncompressed TIFFs opened by path and then garbles a transposing
    Orientation; decoding must match the file's pixels turned as a viewer turns them."""
    arr = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    im = Image.fromarray(arr[..., 0].astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(arr).convert(mode)
    stored = np.asarray(im.convert("RGB") if mode != "I;16" else Image.fromarray(arr[..., 0]).convert("RGB"))
    for o in (6, 5, 8):
        path = _with_orientation(im, tmp_path / f"{mode.replace(';', '')}{o}.tiff", o)
        out = decode_image(str(path), 3).permute(1, 2, 0).numpy()
        assert np.array_equal(out, _oriented(stored, o)), (mode, o)


def test_exif_orientation_of_a_jpeg_photo(tmp_path):
    """A phone JPEG stored sideways with Orientation 6 is decoded upright: the decoded pixels
    equal the stored (lossy) pixels rotated 90 degrees clockwise, in RGB and in grayscale."""
    yy, xx = np.mgrid[0:24, 0:40]
    arr = np.stack([xx * 6, yy * 10, np.full_like(xx, 90)], -1).astype(np.uint8)  # smooth ramps: [24, 40, 3]
    path = _with_orientation(Image.fromarray(arr), tmp_path / "phone.jpg", 6, quality=95)
    with Image.open(path) as raw:  # what the file stores, as Pillow decodes it without the tag
        stored_rgb, stored_l = np.asarray(raw.convert("RGB")), np.asarray(raw.convert("L"))
    assert np.array_equal(decode_image(str(path), 3).permute(1, 2, 0).numpy(), np.rot90(stored_rgb, -1))
    assert np.array_equal(decode_image(str(path), 1)[0].numpy(), np.rot90(stored_l, -1))
    raw = decode_image(str(path), 3, exif_orientation=False)  # the stored grid, for boxes annotated on it
    assert np.array_equal(raw.permute(1, 2, 0).numpy(), stored_rgb)
    ds = build_dataset(DataConfig(name="image-folder", root=str(tmp_path), image_size=8), "train")
    assert ds.load(0)[0].shape == (3, 8, 8)


def test_unreadable_exif_leaves_the_pixels_as_stored(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "bad_exif.png", exif=b"Exif\x00\x00MM\x00*garbage")
    assert np.array_equal(decode_image(str(tmp_path / "bad_exif.png"), 3).permute(1, 2, 0).numpy(), arr)


def test_transparency_is_dropped_the_same_way_for_every_mode(tmp_path):
    """Alpha is dropped (each pixel keeps its stored colour, as torchvision's loader does),
    whether the image is RGBA, grayscale+alpha or a palette with a transparent index."""
    Image.new("RGBA", (3, 2), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("LA", (3, 2), (77, 0)).save(tmp_path / "la.png")
    pal = Image.new("P", (3, 2), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    pal.save(tmp_path / "pal.png", transparency=0)
    assert decode_image(str(tmp_path / "rgba.png"), 3)[:, 1, 2].tolist() == [10, 20, 30]
    assert decode_image(str(tmp_path / "pal.png"), 3)[:, 1, 2].tolist() == [10, 20, 30]
    assert decode_image(str(tmp_path / "la.png"), 3)[:, 1, 2].tolist() == [77, 77, 77]
    assert decode_image(str(tmp_path / "la.png"), 1)[:, 1, 2].tolist() == [77]
    gray = round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)  # ITU-R 601 luma, what "L" means
    assert abs(decode_image(str(tmp_path / "rgba.png"), 1)[0, 1, 2].item() - gray) <= 1


@pytest.mark.parametrize("fmt", ["gif", "tiff", "webp", "png"])
def test_multi_frame_files_give_their_first_frame(tmp_path, fmt):
    first, second = Image.new("RGB", (5, 4), (255, 0, 0)), Image.new("RGB", (5, 4), (0, 0, 255))
    kw = {"lossless": True} if fmt == "webp" else {}
    first.save(tmp_path / f"anim.{fmt}", save_all=True, append_images=[second], **kw)
    with Image.open(tmp_path / f"anim.{fmt}") as im:
        assert getattr(im, "n_frames", 1) == 2  # the file really holds two frames
    out = decode_image(str(tmp_path / f"anim.{fmt}"), 3)
    assert out.shape == (3, 4, 5) and out[:, 0, 0].tolist() == [255, 0, 0] and out.unique().tolist() == [0, 255]


# --------------------------------------------------------------------------- links


def test_symlinked_and_hard_linked_files_count_once_in_a_flat_folder(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.png", (i, 0, 0))
    os.symlink(tmp_path / "0.png", tmp_path / "link.png")
    os.link(tmp_path / "1.png", tmp_path / "hard.png")
    os.symlink("link.png", tmp_path / "link2.png")  # a link to a link
    ds = build_dataset(_cfg(tmp_path), "train")
    assert sorted(Path(f).name for f in ds.files) == ["0.png", "1.png", "2.png", "3.png"]


def test_linked_folders_and_loops_count_each_file_once(tmp_path):
    outside = tmp_path / "elsewhere"
    for i in range(2):
        _png(outside / f"o{i}.png", COLOURS["b"])
    root = tmp_path / "data"
    for i in range(3):
        _png(root / "a" / f"{i}.png", COLOURS["a"])
    _png(root / "a" / "sub" / "3.png", COLOURS["a"])
    os.symlink(root / "a" / "sub", root / "a" / "sub_again")  # the same folder twice
    os.symlink(root / "a", root / "a" / "sub" / "loop")  # a loop back up
    os.symlink(".", root / "a" / "self")  # a loop onto itself
    os.symlink(outside, root / "b")  # a class folder that is a link
    ds = build_dataset(_cfg(root, holdout_fraction=0), "train")
    assert ds.class_names == ("a", "b") and torch.bincount(ds.labels).tolist() == [4, 2]
    assert len({(os.stat(f).st_dev, os.stat(f).st_ino) for f in ds.files}) == len(ds) == 6  # no file twice
    assert {os.path.realpath(f) for f, y in zip(ds.files, ds.labels) if y == 1} == \
        {str(outside / "o0.png"), str(outside / "o1.png")}


@pytest.mark.parametrize("link", ["symlink", "hardlink", "linked folder"])
def test_one_file_in_two_classes_is_an_error_naming_it(tmp_path, link):
    _png(tmp_path / "a" / "0.png")
    _png(tmp_path / "b" / "1.png")
    if link == "symlink":
        os.symlink(tmp_path / "a" / "0.png", tmp_path / "b" / "dup.png")
    elif link == "hardlink":
        os.link(tmp_path / "a" / "0.png", tmp_path / "b" / "dup.png")
    else:
        os.symlink(tmp_path / "a", tmp_path / "b" / "dup")
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "train")
    msg = _one_line(err)
    assert "0.png" in msg and "(class 'a')" in msg and "(class 'b')" in msg and "only one label" in msg


def test_a_test_image_linked_to_a_training_image_is_an_error(tmp_path):
    for cls in "ab":
        _png(tmp_path / "train" / cls / "0.png", COLOURS[cls])
    _png(tmp_path / "test" / "a" / "t.png", COLOURS["a"])
    (tmp_path / "test" / "b").mkdir()
    os.link(tmp_path / "train" / "b" / "0.png", tmp_path / "test" / "b" / "0.png")
    with pytest.raises(DataError, match=r"1 test image\(s\) are the same files .* as training images, first .*b/0"):
        build_dataset(_cfg(tmp_path), "test")


def test_a_broken_link_is_an_unreadable_file_not_a_crash(tmp_path):
    _png(tmp_path / "0.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    ds = build_dataset(_cfg(tmp_path), "train")
    assert sorted(Path(f).name for f in ds.files) == ["0.png", "broken.png"]
    with pytest.warns(UserWarning, match="broken.png"):
        assert ds[ds.files.index(str(tmp_path / "broken.png"))] is None


# --------------------------------------------------------------------------- held-out split


def _labelled(root: Path, counts: dict[str, int]) -> list[str]:
    files = []
    for cls, n in counts.items():
        for i in range(n):
            files.append(str(_png(root / cls / f"{cls}{i:02d}.png", COLOURS[cls], size=(2, 2))))
    return files


COUNTS = {"a": 10, "b": 7, "c": 1, "d": 2}
HELD = {"a": 2, "b": 1, "c": 0, "d": 1}  # round(0.2 n), at least 1 and at most n - 1 when n >= 2: by hand


def test_labelled_folder_without_splits_gets_a_stratified_held_out_split(tmp_path):
    every = _labelled(tmp_path, COUNTS)
    train, test = build_dataset(_cfg(tmp_path), "train"), build_dataset(_cfg(tmp_path), "test")
    assert train.class_names == test.class_names == ("a", "b", "c", "d")
    assert not set(train.files) & set(test.files) and sorted(train.files + test.files) == sorted(every)
    for ds in (train, test):
        assert ds.labels.tolist() == [_class_of(f, ds.class_names) for f in ds.files]
    held = {cls: sum(Path(f).parent.name == cls for f in test.files) for cls in COUNTS}
    assert held == HELD
    assert {Path(f).parent.name for f in train.files} == set(COUNTS)  # every class trains


def test_held_out_split_is_deterministic_and_independent_of_listing_order_and_location(tmp_path, monkeypatch):
    _labelled(tmp_path / "one", COUNTS)
    cfg = _cfg(tmp_path / "one")

    def rel(ds, root):
        return sorted(str(Path(f).relative_to(root)) for f in ds.files)

    first = rel(build_dataset(cfg, "test"), tmp_path / "one")
    assert rel(build_dataset(cfg, "test"), tmp_path / "one") == first
    real_scandir = os.scandir

    class Shuffled:  # the same entries, listed in another order (file systems promise none)
        def __init__(self, path):
            self.it = real_scandir(path)
            self.entries = list(self.it)
            random.Random(7).shuffle(self.entries)

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            self.it.close()

    monkeypatch.setattr(os, "scandir", Shuffled)
    assert rel(build_dataset(cfg, "test"), tmp_path / "one") == first
    monkeypatch.undo()
    shutil.copytree(tmp_path / "one", tmp_path / "moved" / "two")
    assert rel(build_dataset(_cfg(tmp_path / "moved" / "two"), "test"), tmp_path / "moved" / "two") == first
    others = [rel(build_dataset(_cfg(tmp_path / "one", holdout_seed=s), "test"), tmp_path / "one") for s in (1, 2, 3)]
    assert any(o != first for o in others)  # the seed chooses the images


def test_adding_an_image_moves_at_most_one_other(tmp_path):
    _labelled(tmp_path, {"a": 10, "b": 4})
    before = set(build_dataset(_cfg(tmp_path), "test").files)
    new = _png(tmp_path / "a" / "zz_new.png", COLOURS["a"], size=(2, 2))
    after = set(build_dataset(_cfg(tmp_path), "test").files)
    assert len(after) == len(before) == 3  # a: round(0.2 * 11) == round(0.2 * 10) == 2, b: 1
    assert after - before <= {str(new)} and len(before - after) == len(after - before)


def test_held_out_split_inside_train_folder_and_fraction_options(tmp_path):
    _labelled(tmp_path / "train", {"a": 5, "b": 5})
    test = build_dataset(_cfg(tmp_path, holdout_fraction=0.4), "test")  # no test/: split train/ itself
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1]
    assert len(build_dataset(_cfg(tmp_path, holdout_fraction=0.4), "train")) == 6
    assert len(build_dataset(_cfg(tmp_path, holdout_fraction=0), "train")) == 10
    with pytest.raises(DataError, match="holdout_fraction is 0.*set data.holdout_fraction"):
        build_dataset(_cfg(tmp_path, holdout_fraction=0), "test")
    for bad in ("1", "-0.1", "1.5"):
        with pytest.raises(ConfigError, match="holdout_fraction"):
            load_config(None, ["method.name=simclr", f"data.holdout_fraction={bad}"])
    assert load_config(None, ["method.name=simclr", "data.holdout_seed=5"]).data.holdout_seed == 5


def test_single_image_classes_leave_nothing_to_hold_out(tmp_path):
    _labelled(tmp_path, {"a": 1, "b": 1})
    assert len(build_dataset(_cfg(tmp_path), "train")) == 2
    with pytest.raises(DataError, match="no class in .* has two or more images"):
        build_dataset(_cfg(tmp_path), "test")


def test_unlabeled_folder_trains_on_everything_and_has_no_test_split(tmp_path):
    for i in range(10):
        _png(tmp_path / f"{i}.png")
    assert len(build_dataset(_cfg(tmp_path), "train")) == 10  # never split: nothing to score
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "test")
    assert "unlabeled" in _one_line(err) and "no test/ or val/" in str(err.value)


# --------------------------------------------------------------------------- the decoded cache follows the data


def _bmp(path: Path, value: int) -> Path:
    """A 6x6 BMP: every such file has the same size, whatever its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path, "BMP")
    return path


def _plain_and_mapped(root: Path, cache: Path, split: str, **kw):
    plain = build_dataset(_cfg(root, **kw), split)
    mapped = build_dataset(_cfg(root, cache="uint8", cache_dir=str(cache), **kw), split)
    assert torch.equal(mapped.images, torch.stack([plain.load(i)[0] for i in range(len(plain))]))  # [N, 3, 4, 4]
    assert torch.equal(mapped.labels, plain.labels)
    return mapped


def test_decoded_cache_is_keyed_by_the_split_and_the_held_out_seed(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    for cls in "ab":
        for i in range(5):
            _bmp(root / cls / f"{i}.bmp", 20 * i + (100 if cls == "b" else 0))
    tr0, te0 = (_plain_and_mapped(root, cache, s) for s in ("train", "test"))
    assert tr0.path != te0.path and len(tr0) == 8 and len(te0) == 2
    tr1, te1 = (_plain_and_mapped(root, cache, s, holdout_seed=1) for s in ("train", "test"))
    assert {tr1.path, te1.path}.isdisjoint({tr0.path, te0.path})
    assert _plain_and_mapped(root, cache, "train").path == tr0.path  # unchanged data and settings: reused
    assert len(list(cache.glob("*.u8"))) == 4


def test_decoded_cache_follows_a_retargeted_link_with_the_same_size_and_times(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    first, second = _bmp(tmp_path / "first.bmp", 10), _bmp(tmp_path / "second.bmp", 250)
    st = os.stat(first)
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(second) == st.st_size
    _bmp(root / "plain.bmp", 90)
    os.symlink(first, root / "link.bmp")
    before = _plain_and_mapped(root, cache, "train")
    (root / "link.bmp").unlink()
    os.symlink(second, root / "link.bmp")  # same path, size and mtime: another file
    after = _plain_and_mapped(root, cache, "train")
    assert after.path != before.path and after.images.amax().item() == 250


def test_decoded_cache_notices_a_rewrite_whose_mtime_was_set_back(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    for i in range(3):
        _bmp(root / f"{i}.bmp", 40 * i)
    before = _plain_and_mapped(root, cache, "train")
    path = root / "1.bmp"
    st = os.stat(path)
    time.sleep(0.05)  # past the file system's timestamp granularity
    _bmp(path, 41)  # new pixels, the same size, in place
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime back (rsync -t, touch -d)
    now = os.stat(path)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    after = _plain_and_mapped(root, cache, "train")
    assert after.path != before.path and after.images[1].unique().tolist() == [41]


def test_decoded_cache_key_covers_the_decoder_version_and_class_names(tmp_path, monkeypatch):
    from selfsup.data import decoded

    for cls in "ab":
        _png(tmp_path / "train" / cls / "0.png")
    ds = build_dataset(_cfg(tmp_path, holdout_fraction=0), "train")
    key = decoded.folder_key(ds)
    from selfsup.data import imagefiles

    monkeypatch.setattr(imagefiles, "DECODER_VERSION", imagefiles.DECODER_VERSION + 1)
    assert decoded.folder_key(ds) != key
    monkeypatch.undo()
    renamed = build_dataset(_cfg(tmp_path, holdout_fraction=0), "train")
    renamed.class_names = ("x", "y")
    assert decoded.folder_key(renamed) != key


# --------------------------------------------------------------------------- the sibling path: VOC detection folders


def test_voc_folders_ignore_hidden_annotations_and_know_every_image_extension(tmp_path):
    """A VOC folder unpacked from a macOS zip holds ``._name.xml`` AppleDouble files beside the
    annotations: they are not annotations (they were reported as unreadable ones). An image
    found by the annotation's stem may have any extension image folders accept (.gif here)."""
    from selfsup.detection.readers import voc_dataset

    def xml(filename: str) -> str:
        return (f"<annotation><filename>{filename}</filename><size><width>6</width><height>5</height></size>"
                f"<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax>"
                f"</bndbox></object></annotation>")

    _png(tmp_path / "a.png")
    (tmp_path / "a.xml").write_text(xml("a.png"))
    Image.new("RGB", (6, 5), (1, 2, 3)).save(tmp_path / "b.gif")
    (tmp_path / "b.xml").write_text(xml("renamed.png"))  # <filename> is stale: found by the stem
    for name in ("a", "b"):
        (tmp_path / f"._{name}.xml").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    ds = voc_dataset(tmp_path)
    assert sorted(s.name for s in ds.samples) == ["a.png", "b.gif"] and ds.num_boxes == 2
    assert ds.report.total == 0, ds.report.summary()


def test_voc_annotations_with_an_upper_case_extension_are_read(tmp_path):
    """Annotations saved by a Windows tool as ``NAME.XML`` are annotations too (they were not
    found, and a folder of them was 'no .xml annotations'); a folder also named ``x.xml`` is not one."""
    from selfsup.detection.readers import voc_dataset

    for i, ext in enumerate([".XML", ".xml", ".Xml"]):
        _png(tmp_path / f"{i}.png")
        (tmp_path / f"{i}{ext}").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>6</width><height>5</height></size>"
            f"<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax>"
            f"</bndbox></object></annotation>")
    (tmp_path / "folder.xml").mkdir()
    ds = voc_dataset(tmp_path)
    assert sorted(s.name for s in ds.samples) == ["0.png", "1.png", "2.png"] and ds.num_boxes == 3
    assert ds.report.total == 0, ds.report.summary()


@pytest.mark.parametrize("chans", [2, 4])
def test_in_chans_other_than_grayscale_or_rgb_is_refused_when_the_config_is_read(chans):
    """helper-63's: data.in_chans=4 trained until the stem's first forward pass and failed in a traceback,
    leaving a run directory without a checkpoint. Refused in one line when the config is read."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=simclr", "data.name=image-folder", f"data.in_chans={chans}"])
    assert _one_line(err) == (f"data.in_chans must be 1 (grayscale) or 3 (RGB), got {chans}: images are decoded "
                              f"as one or the other (an alpha channel is dropped)")
    assert load_config(None, ["method.name=simclr", "data.in_chans=1"]).data.in_chans == 1


def test_sixteen_bit_images_decode_alike_in_every_format_and_float_images_are_refused(tmp_path):
    """helper-63's: the same 16-bit data (largest value 199) decoded to at most 1 as a PNG (I;16) but to 199 as
    a PGM (Pillow's mode I: its range was guessed from the image's own largest value), and a float TIFF of
    values in [0, 1] to an almost black image. Both 16-bit files decode to value * 255 / 65535, whatever their
    largest value; a float image (no defined range) is refused, naming the file."""
    values = (np.arange(64).reshape(8, 8) * 3 + 10).astype(np.uint16)  # 10..199: a dark 16-bit image
    Image.fromarray(values).save(tmp_path / "a.png")
    with open(tmp_path / "a.pgm", "wb") as f:
        f.write(b"P5\n8 8\n65535\n" + values.astype(">u2").tobytes())
    want = np.round(values * (255.0 / 65535.0)).astype(np.uint8)  # [8, 8]
    for name in ("a.png", "a.pgm"):
        assert np.array_equal(decode_image(str(tmp_path / name), 1)[0].numpy(), want), name
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError) as err:
        decode_image(str(tmp_path / "f.tif"), 1)
    assert _one_line(err).startswith(f"cannot decode image {str(tmp_path / 'f.tif')!r}: ValueError: a 32-bit "
                                     f"floating-point TIFF (SampleFormat 3) has no defined value range")


def test_photos_in_formats_not_read_are_counted_and_named(tmp_path):
    """helper-63's: .heic, .tga, .jp2 and .ico files were left out without a word (a phone's HEIC photos beside
    its JPEGs: half the data gone). They are still left out (Pillow reads them not, or not as a viewer shows
    them) but the warning counts them per extension and names the first, for train and test folders alike."""
    for cls in "ab":
        _png(tmp_path / "train" / cls / "0.png", COLOURS[cls])
        _png(tmp_path / "test" / cls / "0.png", COLOURS[cls])
    (tmp_path / "train" / "a" / "IMG_1.HEIC").write_bytes(b"x")
    (tmp_path / "train" / "a" / "IMG_2.heic").write_bytes(b"x")
    (tmp_path / "train" / "b" / "logo.tga").write_bytes(b"x")
    (tmp_path / "train" / "b" / "notes.txt").write_text("not a picture: not counted")
    (tmp_path / "test" / "b" / "scan.jp2").write_bytes(b"x")
    with pytest.warns(UserWarning) as said:
        train = build_dataset(_cfg(tmp_path), "train")
    assert len(train) == 2
    assert [str(w.message) for w in said] == [
        f"image folder {str(tmp_path / 'train')!r}: 3 file(s) in formats selfsup does not read were left out (2 "
        f".heic, 1 .tga; first {str(tmp_path / 'train' / 'a' / 'IMG_1.HEIC')!r}): convert them to JPEG or PNG to "
        f"train on them"]
    with pytest.warns(UserWarning) as said:
        build_dataset(_cfg(tmp_path), "test")
    assert f"image folder {str(tmp_path / 'test')!r}: 1 file(s) in formats selfsup does not read were left out " \
           f"(1 .jp2;" in str(said[-1].message)
