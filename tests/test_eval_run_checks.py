"""`selfsup eval RUN` checks: config overrides an evaluation never reads (encoder.* on a run's own encoder,
method.*, optim.*, pretraining trainer.* keys, detection.* without --task detection) are refused in one line
naming the key, why and the fix, unless they equal the run's own value or shape a random: target or baseline;
an evaluation on an image folder that changed since pretraining says what to do for the run's own results and
records in results.json / results.md that its data differs; the resume refusal shows the channel statistics of
then and now alike."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, one_line_error
from selfsup.cli import main

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture(autouse=True)
def _bars_restored(monkeypatch):
    """eval's trainer.progress_bar=false sets SELFSUP_QUIET in this process: set here so that it is undone."""
    from selfsup.progress import QUIET_ENV

    monkeypatch.setenv(QUIET_ENV, "0")
WEIGHTS = "'s encoder is built from its own saved weights and architecture (its checkpoint or export)"
ENCODER_WHY = (", so encoder.{key} changes nothing that is evaluated: it only shapes random: baselines (random: alone "
               "is the config's encoder; encoder.kwargs apply to random:NAME of that name). To evaluate another "
               "encoder give its run or export as the target (selfsup eval OTHER_RUN), or a random-init one with "
               "--baseline random:<timm-name>; else drop it")


def hand_made_run(folder: Path, *overrides: str) -> Path:
    """A run directory as selfsup lays it out (config.yaml, checkpoints/) without weights: enough for every check
    made before an encoder is loaded; an evaluation that gets past them fails on the missing checkpoint."""
    from selfsup.config import load_config, to_dict

    cfg = load_config(None, ["method.name=simclr", "data.name=digits", "data.image_size=16",
                             "encoder.kwargs={channels: [8, 16, 32, 64]}", *overrides])
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    return folder


@pytest.mark.parametrize("extra, override, why", [
    # helper-73's case: the user thinks a ViT is evaluated; the run's ResNet is
    ([], "encoder.name=vit_small_patch16_224", "{run}" + WEIGHTS + ENCODER_WHY.format(key="name")),
    ([], "encoder.kwargs={channels: [16, 32, 64, 128]}", "{run}" + WEIGHTS + ENCODER_WHY.format(key="kwargs")),
    # random:NAME of another model takes no kwargs of the config's encoder: the override reaches nothing
    (["--baseline", "random:resnet34"], "encoder.kwargs={output_stride: 16}",
     "{run}" + WEIGHTS + ENCODER_WHY.format(key="kwargs")),
    (["--protocol", "bitfit"], "encoder.name=resnet50", "{run}" + WEIGHTS + ENCODER_WHY.format(key="name")),
    (["--task", "detection"], "encoder.name=resnet50", "{run}" + WEIGHTS + ENCODER_WHY.format(key="name")),
    ([], "method.temperature=0.3", "selfsup eval pretrains nothing, so the pretraining method has no effect on the "
                                   "evaluation (the encoder is evaluated as it is): drop it"),
    ([], "optim.lr=0.01", "selfsup eval pretrains nothing, so the pretraining optim has no effect on the evaluation "
                          "(the encoder is evaluated as it is): drop it"),
    ([], "trainer.max_epochs=3", "trainer.max_epochs is a pretraining setting and a frozen evaluation reads only "
                                 "trainer.accelerator, trainer.progress_bar: drop it (the linear probes train as "
                                 "eval.linear_epochs etc. say)"),
    (["--task", "detection"], "trainer.precision=32-true",
     "trainer.precision is a pretraining setting and a detection evaluation reads only trainer.accelerator, "
     "trainer.progress_bar: drop it (the detector trains as detection.epochs etc. say)"),
    (["--protocol", "bitfit"], "trainer.max_epochs=4",
     "trainer.max_epochs is a pretraining setting and a transfer evaluation reads only trainer.accelerator, "
     "trainer.devices, trainer.num_nodes, trainer.strategy, trainer.sync_batchnorm, trainer.precision, "
     "trainer.progress_bar: drop it (a transfer trains as its --transfer options say, e.g. epochs=2)"),
    ([], "detection.epochs=2", "detection.* sets the detector of --task detection; this frozen evaluation trains "
                               "none: drop it, or add --task detection"),
    (["--protocol", "bitfit"], "detection.epochs=2", "detection.* sets the detector of --task detection; this "
                                                     "transfer evaluation trains none: drop it, or add --task "
                                                     "detection"),
    (["--task", "detection"], "encoder.channels_last=false",
     "only kNN and the linear probes read it (their feature extraction); a detection evaluation does not: drop it"),
    ([], "out_dir=elsewhere", "out_dir names a pretraining run's directory; an evaluation writes into the run it "
                              "evaluates, runs/eval/ or --out DIR: drop it, or give --out DIR"),
])
def test_an_override_the_evaluation_never_reads_is_refused_naming_it(tmp_path, capsys, extra, override, why):
    """helper-73's: `selfsup eval RUN encoder.name=vit_small_patch16_224` evaluated the run's own ResNet (its
    encoder comes from its checkpoint) and said nothing; so did method.*, optim.*, the pretraining trainer.* keys
    and detection.* without --task detection. Each is one line naming the override, why and the fix, before
    anything is loaded (the hand-made run has no weights)."""
    run = hand_made_run(tmp_path / "run")
    assert main(["eval", str(run), *extra, override]) == 2
    how = " --task detection" if "detection" in extra else " --protocol bitfit" if "--protocol" in extra else ""
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup eval: error: {override} has no effect on selfsup eval {run}{how}: {why.format(run=run)}")


@pytest.mark.parametrize("extra, overrides", [
    ([], ["encoder.name=resnet18", "encoder.kwargs={channels: [8, 16, 32, 64]}"]),  # the run's own values
    ([], ["method.name=simclr", "trainer.max_epochs=100"]),  # the run's own (the defaults it was made with)
    ([], ["trainer.accelerator=cpu", "encoder.channels_last=false"]),  # read by kNN and the probes
    ([], ["trainer.progress_bar=false"]),  # acts as --quiet
    (["--task", "detection"], ["trainer.progress_bar=false"]),
    (["--baseline", "random:"], ["encoder.name=vit_tiny_patch16_224"]),  # random: alone is the config's encoder
    (["--baseline", "random:resnet18"], ["encoder.kwargs={channels: [4, 8, 16, 32]}"]),  # the config's encoder's
    (["--protocol", "bitfit"], ["trainer.precision=32-true", "trainer.devices=1"]),  # a transfer's Trainer
    (["--task", "detection"], ["detection.epochs=2"]),
])
def test_an_override_the_evaluation_reads_or_the_runs_own_value_is_accepted(tmp_path, capsys, extra, overrides):
    """Not refused: an override equal to the run's own value, encoder.* where it shapes a random: baseline,
    trainer keys the evaluation hands on. The evaluation goes on to load the run's weights (none here)."""
    run = hand_made_run(tmp_path / "run")
    assert main(["eval", str(run), *extra, *overrides]) == 2
    said = capsys.readouterr()
    err = one_line_error(said.err)
    assert "has no effect" not in err and "without a checkpoint (no checkpoints/last.ckpt)" in err, err
    # encoder.* that shapes a random: baseline says that the run's own encoder is what is evaluated
    if extra[:1] == ["--baseline"]:
        assert (f"[eval] {overrides[0]} shapes the random-init baseline ({extra[1]}) only: {run} is evaluated with "
                f"its own encoder") in said.out, said.out
    else:
        assert "shapes the random-init" not in said.out, said.out


def test_trainer_progress_bar_false_given_to_eval_acts_as_quiet(tmp_path, monkeypatch):
    """Scripts that pass their pretraining overrides on to eval: trainer.progress_bar=false was refused as a
    pretraining setting; it turns eval's bars off as --quiet does. A run's saved value is not acted on."""
    from selfsup.cli_eval import quiet_if_asked
    from selfsup.config import load_config
    from selfsup.progress import QUIET_ENV

    saved_quiet = load_config(None, ["method.name=simclr", "trainer.progress_bar=false"])
    quiet_if_asked([], saved_quiet)  # the run's own config says false: nothing asked of this eval
    assert os.environ[QUIET_ENV] == "0"
    quiet_if_asked(["trainer.progress_bar=true"], load_config(None, ["method.name=simclr"]))
    assert os.environ[QUIET_ENV] == "0"
    quiet_if_asked(["trainer.progress_bar=false"], saved_quiet)
    assert os.environ[QUIET_ENV] == "1"


def test_encoder_overrides_shape_a_random_target_and_pixels_have_no_encoder(tmp_path, capsys, monkeypatch):
    """`selfsup eval random: encoder.name=...` builds that encoder (accepted: the evaluation goes on to the data
    check); `selfsup eval pixels encoder.name=...` evaluates no encoder, so it is refused."""
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "pixels", "data.name=digits", "encoder.name=resnet50"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "selfsup eval: error: encoder.name=resnet50 has no effect on selfsup eval pixels: pixels are no encoder"
        + ENCODER_WHY.format(key="name"))
    assert main(["eval", "pixels", "data.name=digits", "method.name=moco"]) == 2  # the placeholder is simclr
    assert one_line_error(capsys.readouterr().err) == (
        "selfsup eval: error: method.name=moco has no effect on selfsup eval pixels: selfsup eval pretrains nothing, "
        "so the pretraining method has no effect on the evaluation (the encoder is evaluated as it is): drop it")
    assert main(["eval", "random:", "data.name=image-folder", f"data.root={tmp_path / 'none'}",
                 "encoder.name=resnet34"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "has no effect" not in err and "none" in err, err


def test_data_differences_show_the_channel_statistics_of_then_and_now_alike(tmp_path):
    """helper-73's: the resume refusal printed the run's channel mean as a list ([0.5], read from data_info.json)
    and the data's now as a tuple ((0.25,), from DataInfo): the same statistic in two spellings."""
    from selfsup.config import ConfigError
    from selfsup.train.resume import check_same_data, data_differences

    then = {"num_samples": 16, "num_classes": 2, "in_chans": 1, "image_size": 12, "mean": [0.5], "std": [0.2]}
    now = {"num_samples": 16, "num_classes": 2, "in_chans": 1, "image_size": 12, "mean": (0.25,), "std": (0.2,)}
    assert data_differences(then, now) == ["channel mean [0.5] then, [0.25] now"]
    rgb = {**now, "num_samples": 20, "mean": (0.5, 0.25, 0.125), "std": (0.1, 0.2, 0.3)}
    assert data_differences({**then, "mean": [0.5, 0.25, 0.125], "std": [0.1, 0.2, 0.4]}, rgb) == [
        "training images 16 then, 20 now", "channel std [0.1, 0.2, 0.4] then, [0.1, 0.2, 0.3] now"]
    saved = tmp_path / "data_info.json"
    saved.write_text(json.dumps(then))
    with pytest.raises(ConfigError) as err:
        check_same_data(saved, now)
    assert str(err.value) == (
        "cannot resume: the training data is not what this run trained on (channel mean [0.5] then, [0.25] now: its "
        "files changed since, or it is other data); restore the data the run started with, or start a new run with "
        "a fresh --run-dir")


def pretrained_on_a_folder(tmp_path: Path, per_class: int, high: int, *extra: str) -> tuple[Path, Path]:
    """A folder of two classes of ``per_class`` random 12 px grayscale PNGs (values below ``high``) and a run
    pretrained on it for one step (no evaluation): ``(root, run)``."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls in "ab":
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, high, (12, 12), dtype=np.uint8)).save(root / cls / f"{i}.png")
    run = tmp_path / "run"
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run), "--no-eval", "data.name=image-folder",
                 f"data.root={root}", "data.in_chans=1", "data.image_size=12", "encoder.kwargs={channels: [8, 16, 32, "
                 "64]}", "trainer.progress_bar=false", "trainer.max_steps=1", "trainer.precision=32-true",
                 "trainer.online_probe=false", *extra]) == 0
    return root, run


def test_an_evaluation_on_an_image_folder_changed_since_pretraining_says_so_and_what_to_do(tmp_path, capsys):
    """helper-73's: after the run's image folder changed, `selfsup eval RUN` of a --no-eval run advised running
    `selfsup eval RUN` (the command just run, which would come here again), and results.json / results.md did not
    say that their data was not the pretraining data. The advice now is to put the images back, and every row and
    the table say how the data differs."""
    from PIL import Image

    root, run = pretrained_on_a_folder(tmp_path, 8, 120, "data.batch_size=8")
    saved = json.loads((run / "data_info.json").read_text())
    Image.new("L", (12, 12), 255).save(root / "b" / "0.png")  # as many files, other pixels
    capsys.readouterr()
    assert main(["eval", str(run), "eval.plots=false", "eval.probe_seeds=1", "eval.low_shot=[]",
                 "eval.knn=[[3, 0.07]]"]) == 0
    out = capsys.readouterr().out
    from selfsup.cli_eval import data_changed_since
    from selfsup.train.workdir import load_run_config

    reason = data_changed_since(run, load_run_config(run))
    assert reason.startswith(f"the run's image folder {root} is not what it trained on (channel mean "
                             f"{saved['mean']} then, [") and reason.endswith(": its files changed since)"), reason
    folder = next(run.glob("eval-*-*"))
    assert (f"[eval] {reason}: results go to {folder}, the run has no results of its own yet, and selfsup eval {run} "
            f"writes them only on the images it trained on: put its image folder back as it was when it trained, "
            f"then run selfsup eval {run} again") in out, out
    assert f"(selfsup eval {run} writes results.json)" not in out
    rows = json.loads((folder / "results.json").read_text())
    assert [r["pretraining_data_differs"] for r in rows] == [reason] * len(rows)
    assert (folder / "results.md").read_text().splitlines()[-1] == (
        f"**Note**: the evaluation data differs from the data {run} was pretrained on ({reason}): these numbers are "
        f"of other images than its pretraining saw.")
    assert not (run / "results.json").exists()
    # helper-74's: compare read the rows as if of the pretraining data; it says so under the table now
    assert main(["compare", str(folder)]) == 0
    assert f"evaluated on other data than its encoder was pretrained on ({reason})" in capsys.readouterr().out
    # a transfer of the run on that folder: a folder of its own too (not RUN/transfer-bitfit), and the same record
    assert main(["eval", str(run), "--protocol", "bitfit", "--transfer", "epochs=1", "--transfer", "seeds=1",
                 "--transfer", "low_shot=[]", "--transfer", "lrs=[0.01]"]) == 0
    out = capsys.readouterr().out
    assert not (run / "transfer-bitfit").exists()
    transfer = next(run.glob("eval-*/transfer-bitfit"))
    assert f"[transfer] evaluating on other data than {run} was pretrained on ({reason}): results go to {transfer}" \
        in out, out
    assert transfer.parent.name.startswith("eval-image-folder-") and transfer.parent != folder
    rows = json.loads((transfer / "results.json").read_text())
    assert [r["pretraining_data_differs"] for r in rows] == [reason]
    assert (transfer / "results.md").read_text().splitlines()[-1] == (
        f"**Note**: the evaluation data differs from the data {run} was pretrained on ({reason}): these numbers are "
        f"of other images than its pretraining saw.")
    # the same data keys as the run's but another dataset named: recorded too, by the keys that differ
    assert main(["eval", str(run), "data.name=digits", "data.image_size=12", "eval.plots=false",
                 "eval.probe_seeds=1", "eval.low_shot=[]", "eval.knn=[[3, 0.07]]", "eval.linear=false"]) == 0
    capsys.readouterr()
    other = [f for f in run.glob("eval-digits-*-*") if (f / "results.json").is_file()]
    assert len(other) == 1
    rows = json.loads((other[0] / "results.json").read_text())
    assert {r["pretraining_data_differs"] for r in rows} == {"data.name differs from the run's config"}, rows


def test_an_unchanged_image_folder_is_known_by_its_fingerprint_without_decoding_it(tmp_path, monkeypatch):
    """`selfsup eval RUN` on an image folder compared the folder with the run's data_info.json by its channel
    statistics, which decode up to 10,000 images (minutes of photos) even when nothing changed and the features
    come from the cache. Pretraining now keeps a fingerprint of the files (paths, sizes, modes, inodes, mtimes);
    the same fingerprint is the same data without decoding, any other falls back to the statistics."""
    import dataclasses

    from PIL import Image

    from selfsup.cli_eval import data_changed_since
    from selfsup.data import build_dataset, subset
    from selfsup.data.base import ImageDataset
    from selfsup.rundir import RunDir
    from selfsup.train.resume import same_fingerprint, write_fingerprint
    from selfsup.train.workdir import load_run_config

    root, run = pretrained_on_a_folder(tmp_path, 6, 200, "data.batch_size=4", "data.subset=8")
    cfg = load_run_config(run)
    train = subset(build_dataset(cfg.data, "train"), cfg.data.subset, cfg.seed)
    assert json.loads((run / "data_fingerprint.json").read_text()) == {"fingerprint": train.fingerprint()}
    assert dataclasses.asdict(train.info()) == {**json.loads((run / "data_info.json").read_text()),
                                                "mean": train.info().mean, "std": train.info().std}

    def no_decoding(self, max_images=10_000):
        raise AssertionError("decoded the images")

    with monkeypatch.context() as m:
        m.setattr(ImageDataset, "channel_stats", no_decoding)
        assert data_changed_since(run, cfg) is None  # the same files: no image decoded
        first = Path(train.base.files[train.indices[0]])  # a file the run trained on
        first.read_bytes()  # read again: nothing of its status changes
        assert data_changed_since(run, cfg) is None
        # helper-75's: pixels rewritten with size, inode and mtime kept (`cp -p` of a same-sized file over it, as
        # fixed-size BMPs of an unpacked archive sharing one mtime allow; `touch -d` after an edit) kept the
        # fingerprint, so a resume trained on the stale statistics. The write moved the ctime, which is in it
        st = first.stat()
        first.write_bytes(first.read_bytes())  # in place: the same inode and size
        os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the mtime put back
        assert (first.stat().st_ino, first.stat().st_size, first.stat().st_mtime_ns) == \
            (st.st_ino, st.st_size, st.st_mtime_ns)
        with pytest.raises(AssertionError, match="decoded the images"):  # -> the statistics decide
            data_changed_since(run, cfg)
    assert data_changed_since(run, cfg) is None  # the same pixels: the statistics agree
    assert not same_fingerprint(RunDir(run), train.fingerprint())  # a plain check leaves the run as it is
    assert data_changed_since(run, cfg, refresh=True) is None  # an evaluation in place keeps the new fingerprint
    assert same_fingerprint(RunDir(run), train.fingerprint())  # so the next one decodes nothing
    for change in (lambda: first.chmod(0o600), lambda: Image.new("L", (12, 12), 7).save(root / "b" / "9.png")):
        change()  # a mode (a file made unreadable decodes to nothing) or a file added: another fingerprint
        assert not same_fingerprint(RunDir(run), subset(build_dataset(cfg.data, "train"), cfg.data.subset,
                                                        cfg.seed).fingerprint())
    full = build_dataset(cfg.data, "train")
    assert len({full.fingerprint(), subset(full, 8, 0).fingerprint(), subset(full, 8, 1).fingerprint()}) == 3
    # a decoded copy has no fingerprint: a resume switching data.cache on leaves none that describes other data
    cached = build_dataset(dataclasses.replace(cfg.data, cache="uint8", cache_dir=str(tmp_path / "cache")), "train")
    assert cached.fingerprint() is None
    write_fingerprint(RunDir(run), cached.fingerprint())
    assert not (run / "data_fingerprint.json").exists() and not same_fingerprint(RunDir(run), None)


def test_a_resume_on_the_same_files_reads_the_statistics_back_instead_of_decoding(tmp_path, monkeypatch, capsys):
    """A resume decoded up to 10,000 images again for the channel statistics (minutes of photos) before its
    first step. With the fingerprint the run kept unchanged it reads them from data_info.json; a file changed
    since makes it decode and check them as before (a changed image: refused by its statistics)."""
    from PIL import Image

    from selfsup.data.base import DataInfo, ImageDataset
    from selfsup.rundir import RunDir
    from selfsup.train.resume import kept_info

    root, run = pretrained_on_a_folder(tmp_path, 6, 200, "data.batch_size=4")
    saved = json.loads((run / "data_info.json").read_text())
    fingerprint = json.loads((run / "data_fingerprint.json").read_text())["fingerprint"]
    assert kept_info(RunDir(run), fingerprint) == DataInfo.from_json(saved) and \
        DataInfo.from_json(saved).mean == tuple(saved["mean"])
    assert kept_info(RunDir(run), "another") is None and kept_info(RunDir(run), None) is None
    decoded = []

    def counted(self, max_images=10_000):
        decoded.append(len(self))
        return real(self, max_images)

    real = ImageDataset.channel_stats
    monkeypatch.setattr(ImageDataset, "channel_stats", counted)
    assert main(["pretrain", "--resume", str(run), "--no-eval", "trainer.max_steps=2"]) == 0
    assert decoded == []  # the same files: nothing decoded for the statistics
    assert json.loads((run / "data_info.json").read_text()) == saved
    (run / "data_info.json").write_text("{\"in_chans\": 1}")  # cut short: decoded and checked again, not trusted
    assert kept_info(RunDir(run), fingerprint) is None
    (run / "data_info.json").write_text(json.dumps(saved))
    for i in range(6):  # other pixels (and sizes, mtimes) in every file of a class
        Image.new("L", (12, 12), 255).save(root / "a" / f"{i}.png")
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--no-eval", "trainer.max_steps=3"]) == 2
    assert decoded, "the changed folder was not decoded"
    assert "cannot resume: the training data is not what this run trained on (channel mean" in \
        one_line_error(capsys.readouterr().err)


def test_the_keys_named_as_changed_are_those_that_differ():
    """helper-74's: `selfsup eval RUN data.subset=10` noted "data.subset, seed differ from the run's config" with
    the run's own seed: the seed counted as changed whenever only one side drew a subset."""
    from selfsup.config import load_config
    from selfsup.eval.evaldata import changed_data_keys

    def cfg(*o):
        return load_config(None, ["method.name=simclr", *o])

    assert changed_data_keys(cfg(), cfg("data.subset=10")) == ["data.subset"]
    assert changed_data_keys(cfg("data.subset=10"), cfg()) == ["data.subset"]
    assert changed_data_keys(cfg("data.subset=10"), cfg("data.subset=10", "seed=1")) == ["seed"]  # another draw
    assert changed_data_keys(cfg(), cfg("seed=1")) == []  # no subset: the seed draws nothing of the data
    assert changed_data_keys(cfg("data.subset=10"), cfg("data.subset=12", "seed=3")) == ["data.subset", "seed"]


def test_pretraining_keeps_the_fingerprint_of_the_files_its_statistics_were_read_from(tmp_path, monkeypatch):
    """helper-75's (from the code): the fingerprint was taken after the statistics, minutes of decoding later
    for photos; a file changed in between was kept as unchanged beside the old statistics. It is taken before:
    a change during the decoding leaves a fingerprint that no longer matches, so the next eval decodes again."""
    from PIL import Image

    from selfsup.data import build_dataset, subset
    from selfsup.data.base import ImageDataset
    from selfsup.rundir import RunDir
    from selfsup.train.resume import same_fingerprint
    from selfsup.train.workdir import load_run_config

    real = ImageDataset.channel_stats
    edited = []

    def edit_while_decoding(self, max_images=10_000):
        if not edited:  # another program writes a file while the statistics are decoded
            target = Path(self.base.files[0] if hasattr(self, "base") else self.files[0])
            Image.new("L", (12, 12), 255).save(target)
            edited.append(target)
        return real(self, max_images)

    monkeypatch.setattr(ImageDataset, "channel_stats", edit_while_decoding)
    root, run = pretrained_on_a_folder(tmp_path, 6, 200, "data.batch_size=4")
    assert edited
    cfg = load_run_config(run)
    now = subset(build_dataset(cfg.data, "train"), cfg.data.subset, cfg.seed).fingerprint()
    assert not same_fingerprint(RunDir(run), now)  # the run's fingerprint is of the files before the edit


def test_a_damaged_data_info_is_neither_trusted_nor_taken_for_unchanged_data(tmp_path, capsys):
    """helper-76's: a resume read whatever data_info.json held while the fingerprint matched (a NaN mean failed
    as a diverged loss, a 1-channel mean on RGB data trained silently, std -1 was a traceback), and an emptied file
    made resume and eval take a changed folder for the run's own data. A statistic that is not in_chans finite
    numbers (std above 0) is not read back; an unreadable file refuses the resume and is named by eval."""
    from selfsup.cli_eval import data_changed_since
    from selfsup.data.base import DataInfo
    from selfsup.train.workdir import load_run_config

    good = {"in_chans": 3, "image_size": 16, "num_classes": 2, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
            "num_samples": 10}
    assert DataInfo.from_json(good).mean == (0.5, 0.4, 0.3)
    for bad in ({"mean": [float("nan")] * 3}, {"mean": [0.5]}, {"std": [-1.0, 0.0, 1.0]}, {"in_chans": True},
                {"image_size": 0}, {"num_samples": 2.5}):
        with pytest.raises((TypeError, ValueError)):
            DataInfo.from_json({**good, **bad})
    root, run = pretrained_on_a_folder(tmp_path, 6, 200, "data.batch_size=4")
    (run / "data_info.json").write_text("")  # emptied
    reason = data_changed_since(run, load_run_config(run))
    assert reason == (f"the run's {run / 'data_info.json'} is not readable statistics (edited or cut short), so its "
                      f"image folder {root} cannot be checked to be what it trained on")
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--no-eval", "trainer.max_steps=2"]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        f"cannot resume: the run's {run / 'data_info.json'} is not readable statistics (edited or cut short), so the "
        f"data cannot be checked to be what the run trained on; restore the file, or start a new run with a fresh "
        f"--run-dir")
