"""End to end through the command line: pretrain -> eval -> export on sklearn digits."""

import contextlib
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys

from pathlib import Path

import pytest

from selfsup.cli import main

from conftest import one_line_error

TINY = ["data.name=digits", "data.image_size=16", "data.batch_size=64",
        "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.progress_bar=false",
        "eval.linear_epochs=5", "eval.linear_lrs=[0.1]", "eval.linear_wds=[0.0]", "eval.low_shot=[0.1]",
        "eval.probe_seeds=2"]


def test_pretrain_eval_export(tmp_path, capsys):
    from conftest import ROOT

    run_dir = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run_dir),
                 "trainer.max_epochs=1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "| SimCLR resnet18 (pretrained) |" in out and "| raw pixels |" in out and "| random-init resnet18 |" in out
    rows = json.loads((run_dir / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["pretrained", "random", "pixels"]
    for r in rows:
        assert 0 < r["knn"]["k=20,T=0.07"]["top1"] <= 100 and 0 < r["linear"]["top1"] <= 100
        low = r["linear_10pct"]  # class-balanced 10% subsets, two seeds
        assert low["seeds"] == 2 and len(low["top1_per_seed"]) == 2 and low["fraction"] == 0.1
        assert abs(low["top1_std"] - statistics.stdev(low["top1_per_seed"])) < 1e-9
        assert "linear_sklearn" in r  # digits is small enough for the scikit-learn cross-check
    assert "linear top-1, 10% labels" in (run_dir / "results.md").read_text()
    for r in rows:  # label-free signals of the test features, in results.json and under the table
        assert 1 <= r["label_free"]["rankme"] <= min(r["feature_dim"], r["label_free"]["rows"])
        assert -8 <= r["label_free"]["uniformity"] <= 0
    assert "Label-free signals of " in (run_dir / "results.md").read_text()
    assert rows[2]["knn"]["k=20,T=0.07"]["top1"] > 90  # pixels on digits are a strong baseline
    assert (run_dir / "results.md").is_file() and (run_dir / "export" / "model.safetensors").is_file()
    card = json.loads((run_dir / "export" / "config.json").read_text())["selfsup"]
    assert "SimCLR resnet18 (pretrained)" in card["results"]

    assert main(["eval", str(run_dir / "export"), "--out", str(tmp_path / "ev"), "--baseline", "pixels", *TINY[:3]]) == 0
    ev = json.loads((tmp_path / "ev" / "results.json").read_text())
    # the export is the same encoder as the run: identical kNN result
    assert ev[0]["knn"] == rows[0]["knn"]
    assert main(["export", str(run_dir), str(tmp_path / "exp2")]) == 0
    assert (tmp_path / "exp2" / "config.json").is_file()
    assert main(["export", str(run_dir), str(tmp_path / "exp2")]) == 0  # an existing export is replaced
    assert main(["export", str(run_dir), str(run_dir)]) == 2  # a run directory is refused, nothing written
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "README.md").exists()

    # pictures, training time and one table across the run and its export
    assert f"plots: {run_dir / 'plots' / 'training_curves.png'}" in out
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == ["embedding.png", "knn_grid.png",
                                                                      "training_curves.png", "views.png"]
    from PIL import Image

    panels = {name: int(Image.open(run_dir / "plots" / name).text["panels"]) for name in ("embedding.png", "views.png")}
    assert panels == {"embedding.png": 2, "views.png": 6 * 3}  # run + random init; 6 images x (original + 2 views)
    timing = json.loads((run_dir / "training_time.json").read_text())
    steps = max(int(r["step"]) for r in csv.DictReader((run_dir / "logs" / "metrics.csv").open()) if r["step"])
    assert timing["seconds"] > 0 and timing["steps"] == steps + 1 and len(timing["sessions"]) == 1
    assert timing["epochs"] == 1  # epochs completed (here equal to trainer.max_epochs=1)
    # the export's card keeps the run's training time and epochs, and its model card says them
    assert card["training_minutes"] == round(timing["seconds"] / 60, 4) and card["trained_epochs"] == 1
    assert "(1 epoch completed) in " in (run_dir / "export" / "README.md").read_text()
    capsys.readouterr()
    (run_dir / "plots" / "knn_grid.png").unlink()
    assert main(["plot", str(run_dir)]) == 0 and (run_dir / "plots" / "knn_grid.png").is_file()
    assert str(run_dir / "plots" / "knn_grid.png") in capsys.readouterr().out.splitlines()
    assert main(["compare", str(run_dir), str(run_dir / "export"), "--baselines", "--csv", str(tmp_path / "c.csv"),
                 "--plot", str(tmp_path / "c.png")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| target | method | encoder | data | px | epochs | train min | kNN k=20,T=0.07 |")
    knn = f"{rows[0]['knn']['k=20,T=0.07']['top1']:.2f}"
    own = [line for line in table if line.startswith(f"| {run_dir}")]
    assert len(own) == 2 and all("| simclr | resnet18 | digits" in line and " | 16 | 1 | " in line and f"| {knn} |"
                                 in line for line in own)  # the run's digits at 16 px; the export's card says both
    assert all(f"| {timing['seconds'] / 60:.1f} |" in line for line in own)  # the run's time, and the card's copy
    assert any(line.startswith("| raw pixels |") for line in table)
    with open(tmp_path / "c.csv", newline="") as f:
        written = list(csv.reader(f))
    markdown_rows = [line for line in table if line.startswith("|")]
    assert len(written) == len(markdown_rows) - 1  # header + rows (the markdown adds a rule)
    notes = [line for line in table if line.startswith("- **Warning**")]  # the rows' warnings, under the table
    # this tiny run's rows carry warnings (its low-shot subsets): each note is one line of its row's CSV cell
    assert notes and written[0][-1] == "warnings"
    assert sum(len(r[-1].splitlines()) for r in written[1:]) == len(notes)
    assert (tmp_path / "c.png").stat().st_size > 0
    # an evaluation folder (here of the export, with --out) compares as its target's rows
    assert main(["compare", str(tmp_path / "ev")]) == 0
    ev_knn = next(f"{r['knn']['k=20,T=0.07']['top1']:.2f}" for r in ev if r["kind"] == "pretrained")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 and lines[1].startswith(f"| {tmp_path / 'ev'} | ") and f"| {ev_knn} |" in lines[1]
    # a target given twice (however spelled) is listed once, with a note
    assert main(["compare", str(run_dir), str(run_dir) + "/", str(run_dir / "export"),
                 str(run_dir / "export" / ".." / "export")]) == 0
    captured = capsys.readouterr()
    assert len([line for line in captured.out.splitlines() if line.startswith(f"| {run_dir}")]) == 2
    assert captured.err.count("gives the same results as a target before it (the same directory") == 2
    # outputs that cannot be written are refused before the table is printed (no traceback, no partial output)
    (tmp_path / "adir").mkdir()
    for extra, message in ((["--csv", str(tmp_path / "adir")], f"--csv {tmp_path / 'adir'} is a directory"),
                           (["--plot", str(tmp_path / "adir")], f"--plot {tmp_path / 'adir'} is a directory"),
                           (["--plot", str(tmp_path / "c.txt")], "its name must end in .png (e.g. ")):
        assert main(["compare", str(run_dir), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and message in one_line_error(captured.err)
    assert not (tmp_path / "c.txt").exists() and list((tmp_path / "adir").iterdir()) == []
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'} does not exist: give a run directory" in capsys.readouterr().err
    # an export onto an existing file is refused; the file is left as it was
    (tmp_path / "afile").write_text("keep me")
    assert main(["export", str(run_dir), str(tmp_path / "afile")]) == 2
    assert "is a file, not a directory" in one_line_error(capsys.readouterr().err)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_export_never_writes_into_a_run_or_a_folder_of_other_files(tmp_path, capsys):
    """`selfsup export` refuses, before it loads anything, a directory holding a training run
    (even the run it exports) and a non-empty folder that is no export (its README.md and
    config.json would be overwritten); their files are left byte for byte."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project\n")
    (project / "config.json").write_text("{}\n")
    for out, names in [(run, "holds a training run (config.yaml and checkpoints)"),
                       (project, "is a non-empty directory that holds no export")]:
        before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
        code, err = run_cli(["export", str(run), str(out)])
        assert code == 2 and err.count("\n") == 1 and f"selfsup export: error: {out} {names}" in err, err
        assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before


def run_cli(argv):
    """``sys.exit(main(argv))`` as the interpreter runs it: returns (exit status, stderr text).
    A ``SystemExit`` with a message prints it and exits 1, as Python does; any other exception is
    a crash with a traceback, which a bad input must never cause."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
                code = 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"selfsup {' '.join(argv)} crashed instead of a one-line error: "
                                 f"{type(exc).__name__}: {exc}") from exc
    return (0 if code is None else code), err.getvalue()


# (arguments, what the error must name); {tmp} is a fresh directory, {cfg} the quickstart config
BAD_INPUTS = [
    (["pretrain", "--run-dir", "{tmp}/r", "method.name=simclr"], "give a config file"),
    (["pretrain", "{cfg}", "--run-dir", "{tmp}/r", "method.temprature=0.1"], "did you mean 'method.temperature'"),
    (["pretrain", "{cfg}", "--run-dir", "{tmp}/r", "optim.lr=-1"], "'optim.lr' must be > 0"),
    (["pretrain", "{cfg}", "--run-dir", "{tmp}/r", "trainer.max_epochs=abc"], "'trainer.max_epochs' must be int"),
    (["pretrain", "{cfg}", "--run-dir", "{tmp}/r", "data.name=digitz"], "did you mean 'digits'"),
    (["pretrain", "{cfg}", "--run-dir", "{tmp}/r", "data.name=digits", "data.image_size=16",
      "encoder.name=resnet9000"], "'resnet9000' is not a timm model"),
    (["pretrain", "{tmp}/missing.yaml", "--run-dir", "{tmp}/r"], "missing.yaml"),
    (["pretrain", "{tmp}/broken.yaml", "--run-dir", "{tmp}/r"], "not valid YAML"),
    (["pretrain", "{cfg}", "--run-dir", "{tmp}/r", "eval.knn=[[20, 0.07]"], "not valid YAML"),
    (["pretrain", "--resume", "{tmp}/no-run"], "not a selfsup run directory"),
    (["pretrain", "--resume", "{tmp}/no-run", "{cfg}"], "--resume takes the run's own config"),
    (["pretrain", "{cfg}", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["eval", "nothing-here"], "neither a path"),
    (["eval", "random:resnet9000", "--out", "{tmp}/ev", "data.name=digits"], "'resnet9000' is not a timm model"),
    (["eval", "pixels", "--out", "{tmp}/ev", "data.name=image-folder", "data.root={tmp}/no-images"], "no-images"),
    (["eval", "pixels", "--dataset", "deepforest", "data.name=digits"], "add --task detection"),
    (["export", "{tmp}/no-run", "{tmp}/out"], "no-run"),
    (["export", "{tmp}/no-run", "{tmp}/out", "--format", "bogus"], "unknown export format 'bogus'"),
]


@pytest.mark.parametrize("argv, names", BAD_INPUTS, ids=[" ".join(a[:3]) + f" ({n})" for a, n in BAD_INPUTS])
def test_cli_errors_are_one_line(argv, names, tmp_path):
    """Every bad input: exit status 2 and exactly one line on stderr, 'selfsup CMD: error: ...',
    that names the problem; no traceback."""
    from conftest import ROOT

    (tmp_path / "broken.yaml").write_text("data: {name: digits\nmethod: [\n")
    argv = [a.format(tmp=tmp_path, cfg=ROOT / "configs" / "quickstart.yaml") for a in argv]
    code, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, f"stderr of selfsup {' '.join(argv)} is {len(lines)} lines: {err!r}"
    assert re.match(r"selfsup( \w+)?: error: ", lines[0]), lines[0]
    assert names in lines[0]
    assert code == 2, f"exit status {code} ({lines[0]!r})"


def test_the_installed_entry_point_prints_one_line_and_exits_2(tmp_path):
    """The same through a real process (``python -m selfsup.cli``): the interpreter adds no traceback."""
    from conftest import ROOT, SRC

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines == [f"selfsup pretrain: error: config file '{tmp_path / 'missing.yaml'}' does not exist"]


@pytest.mark.parametrize("cmd", ["pretrain", "eval", "export", "plot", "compare", "list"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: selfsup" in capsys.readouterr().out


def test_eval_without_out_gives_each_target_its_own_folder(tmp_path):
    """`selfsup eval TARGET` without --out wrote every non-run target to runs/eval/, so evaluating an
    export replaced the results of the random encoder evaluated before it. Each target now has its own
    folder; two exports whose paths end alike still differ."""
    from selfsup.cli_eval import eval_folder

    a, b = tmp_path / "x" / "run1" / "export", tmp_path / "y" / "run1" / "export"
    names = [eval_folder("pixels"), eval_folder("random:resnet18"), eval_folder(str(a)), eval_folder(str(b))]
    assert names[:2] == ["pixels", "random-resnet18"]
    assert names[2].startswith("run1-export-") and names[3].startswith("run1-export-") and len(set(names)) == 4
    assert eval_folder(str(a / ".." / "export")) == names[2]  # one folder however the path is spelled
    assert eval_folder("my run/exp ort").startswith("my_run-exp_ort-")


def test_a_non_run_target_on_other_data_or_another_random_init_gets_its_own_folder(tmp_path):
    """The tour's: `selfsup eval random:resnet18` on digits silently replaced its results on an image
    folder (one runs/eval/random-resnet18 for every data and encoder). The default folder now names the
    data, and for random: targets the encoder's kwargs and seed; the same evaluation keeps its folder."""
    from selfsup.cli_eval import target_eval_dir
    from selfsup.config import load_config

    def cfg(*o):
        return load_config(None, ["method.name=simclr", *o])

    digits, folder = cfg("data.name=digits"), cfg("data.name=image-folder", f"data.root={tmp_path}")
    spots = {target_eval_dir(t, c) for t in ("random:resnet18", "pixels", str(tmp_path / "exp"))
             for c in (digits, folder)}
    assert len(spots) == 6
    assert target_eval_dir("pixels", digits) == Path("runs/eval/pixels") / target_eval_dir("pixels", digits).name
    assert target_eval_dir("pixels", digits).name.startswith("digits-")
    assert target_eval_dir("random:resnet18", digits) == target_eval_dir("random:resnet18", cfg("data.name=digits"))
    slim = cfg("data.name=digits", "encoder.name=resnet18", "encoder.kwargs={output_stride: 16}")
    other_seed = cfg("data.name=digits", "seed=1")
    assert len({target_eval_dir("random:resnet18", c) for c in (digits, slim, other_seed)}) == 3
    assert target_eval_dir("random:resnet50", slim) == target_eval_dir("random:resnet50", digits)  # kwargs not its


def test_an_out_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path, capsys):
    """The tour's: `--out FILE/sub` ended in a NotADirectoryError traceback when the first classifier was
    exported, after the training it was to hold. Frozen and transfer evaluations now refuse it in one line
    before any extraction or training."""
    blocker = tmp_path / "tb.md"
    blocker.write_text("a file, not a folder\n")
    tiny = ["data.name=digits", "data.image_size=8", "data.subset=60", "eval.knn=[[3, 0.07]]", "eval.linear=false"]
    for extra in ([], ["--protocol", "bitfit", "--transfer", "epochs=1"]):
        out = blocker / "sub"
        target = "pixels" if not extra else "random:resnet18"
        assert main(["eval", target, "--out", str(out), *extra, *tiny]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert line == f"selfsup eval: error: --out {out}: cannot create this folder ({blocker} is a file, not a " \
                       f"folder): pass a folder path that can be created and written"
    assert blocker.read_text() == "a file, not a folder\n" and sorted(p.name for p in tmp_path.iterdir()) == ["tb.md"]


def test_an_out_folder_on_a_filesystem_that_refuses_it_is_refused_too(tmp_path, capsys):
    """The second tour's: as root, os.access says yes everywhere, so `--out /proc/x` passed the check and
    failed after the work. The check now really makes (and removes) a folder there."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")  # Linux only: the CI machines are Linux
    out = Path("/proc") / "selfsup-nope" / "x"
    assert main(["eval", "pixels", "--out", str(out), "data.name=digits", "data.image_size=8", "data.subset=60",
                 "eval.knn=[[3, 0.07]]", "eval.linear=false"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"selfsup eval: error: --out {out}: cannot create this folder (nothing can be created "
                           f"in /proc: ") and line.endswith("pass a folder path that can be created and written")


def test_a_non_run_target_evaluated_with_other_settings_keeps_both_results(tmp_path, monkeypatch, capsys):
    """The third tour's: `selfsup eval pixels` with eval.linear_lrs=[0.1], then with the defaults, wrote both to
    runs/eval/pixels/<data>/results.json, the second replacing the first. Each eval setting now has its own
    folder under the data's, and they share its feature cache (extracted once)."""
    monkeypatch.chdir(tmp_path)
    base = ["eval", "pixels", "data.name=digits", "data.image_size=8", "data.subset=60", "eval.knn=[[3, 0.07]]",
            "eval.linear=false", "eval.plots=false"]
    assert main(base) == 0 and main([*base[:-3], "eval.knn=[[5, 0.07]]", *base[-2:]]) == 0
    results = sorted(tmp_path.glob("runs/eval/pixels/digits-*/eval-*/results.json"))
    assert len(results) == 2
    keys = [set(json.loads(p.read_text())[0]["knn"]) for p in results]
    assert sorted(map(sorted, keys)) == [["k=3,T=0.07"], ["k=5,T=0.07"]]  # both kept, each its own
    assert len(list(tmp_path.glob("runs/eval/pixels/digits-*/features"))) == 1  # one cache for the data
    capsys.readouterr()
