"""A CLI that starts fast and explains itself: `selfsup --help`, `selfsup CMD --help`, `selfsup list` and
`selfsup config PREFIX` import neither torch, Lightning nor timm; `selfsup config` shows every key's type,
default, range and help (checked against the dataclass fields read here), or a resolved config; --quiet."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import typing

import pytest
import yaml

from conftest import ROOT, one_line_error
from selfsup import clihelp, config
from selfsup.cli import main

HEAVY = ("torch", "lightning", "timm")
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# runs `main(argv)` in a fresh interpreter: prints the heavy modules it imported and the CPU seconds it took
# (CPU time, not wall time: the suite shares its cores with other jobs, which stretch wall time, not CPU time)
RUN_MAIN = """
import json, sys, time
t0 = time.process_time()
from selfsup.cli import main
try:
    rc = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "heavy": [m for m in %r if m in sys.modules], "seconds": time.process_time() - t0}))
""" % (HEAVY,)
COMMANDS = ["pretrain", "eval", "export", "plot", "compare", "list", "config"]


def fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    """``python -c code args`` in a fresh interpreter that finds selfsup."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS), ["list"], ["config", "optim"],
                                  ["--quiet", "config", "trainer.max_epochs"]])
def test_help_list_and_config_import_no_torch_and_start_fast(argv):
    res = fresh(RUN_MAIN, json.dumps(argv))
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0 and out["heavy"] == [], out
    assert out["seconds"] < 1.0, out  # torch alone takes seconds to import


@pytest.mark.parametrize("argv, said", [
    (["pretrain"], "give a config file (e.g. configs/quickstart.yaml) or --resume RUN_DIR"),
    (["pretrain", QUICKSTART, "--resume", "somewhere"], "--resume takes the run's own config"),
])
def test_a_pretrain_without_its_config_is_refused_before_torch_is_imported(argv, said):
    """helper-52's: `selfsup pretrain` with no config took 12 s (torch, Lightning, timm) to say so."""
    res = fresh(RUN_MAIN, json.dumps(argv))
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == 2 and out["heavy"] == [] and out["seconds"] < 1.0, (out, res.stderr)
    assert said in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_import_tree_of_the_cli_holds_no_heavy_package():
    """`python -X importtime`: nothing selfsup.cli pulls in is torch, Lightning or timm (their import alone takes
    seconds), and the import is timed (wall time, which other jobs on the machine stretch: a loose bound)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "import selfsup.cli"], env=env,
                         capture_output=True, text=True, timeout=120)
    rows = [line.split("|") for line in res.stderr.splitlines() if line.startswith("import time:")][1:]  # no header
    cumulative = {name.strip(): int(cum) for _, cum, name in rows}  # microseconds, the module and all it imports
    assert res.returncode == 0 and cumulative["selfsup.cli"] < 3_000_000, res.stderr[-2000:]
    assert not [name for name in cumulative if name.split(".")[0] in HEAVY]


def test_list_table_is_the_registries():
    """`selfsup list` reads a static table; it names exactly the registered methods and datasets, each
    described as its own docstring begins."""
    from selfsup.data import DATASETS
    from selfsup.methods import METHODS

    fix = "add (or remove) its one line in ssl/selfsup/clihelp.py"
    assert sorted(clihelp.METHODS) == METHODS.names(), fix
    assert sorted(clihelp.DATASETS) == DATASETS.names(), fix
    for name, text in clihelp.METHODS.items():
        doc = sys.modules[METHODS.get(name).__module__].__doc__.strip().splitlines()[0]
        lead = doc.split(" (")[0]  # the method's name, before its citation
        assert text.startswith(lead + ":"), (name, lead, text)
    for name, text in clihelp.DATASETS.items():
        assert text == DATASETS.get(name).__doc__.strip().splitlines()[0], name


def test_list_prints_every_method_and_dataset(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, text in {**clihelp.METHODS, **clihelp.DATASETS}.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(text)}$", out, re.M), name


def test_export_help_numbers_are_interops():
    from selfsup.artifacts import interop

    assert (clihelp.FORMAT_FILES, clihelp.ONNX_OPSET, clihelp.FEATURE_RTOL) == (
        interop.FORMAT_FILES, interop.ONNX_OPSET, interop.FEATURE_RTOL)


# --------------------------------------------------------------------------- selfsup config

LINE = re.compile(r"^(?P<key>[\w.]+): (?P<type>.+?) = (?P<default>.*?)(?: \((?P<each>each )?(?P<range>[<>]=? [^()]*)\))?"
                  r"(?:  (?P<help>.*))?$")
SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def shown_keys(capsys, *argv: str) -> dict[str, dict[str, str]]:
    assert main(["config", *argv]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m]
    return {m["key"]: m.groupdict() for m in parsed}


def expected_fields(cls: type, prefix: str, owner: typing.Any = None) -> dict[str, tuple]:
    """key -> (field, default, type hint), nested dataclasses expanded (defaults from the parent's instance)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if owner is not None:
            default = getattr(owner, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(expected_fields(hints[f.name], f"{prefix}.{f.name}", default))
        else:
            out[f"{prefix}.{f.name}"] = (f, default, hints[f.name])
    return out


def as_yaml(value: typing.Any) -> typing.Any:
    return [as_yaml(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_against_fields(shown: dict[str, dict[str, str]], expected: dict[str, tuple]) -> None:
    assert list(shown) == list(expected)
    for key, (f, default, hint) in expected.items():
        row = shown[key]
        assert yaml.safe_load(row["default"]) == as_yaml(default), key
        assert (row["help"] or "") == f.metadata.get("help", ""), key
        bounds = {(SYMBOLS[n], float(f.metadata[n])) for n in SYMBOLS if f.metadata.get(n) is not None}
        got = {(part.split(" ")[0], float(part.split(" ")[1])) for part in (row["range"] or "").split(", ") if part}
        assert got == bounds, key
        assert bool(row["each"]) == bool(bounds and f.metadata.get("each")), key  # a list's bounds hold per item
        if isinstance(hint, type):
            assert row["type"] == hint.__name__, key


@pytest.mark.parametrize("section", ["data", "encoder", "optim", "trainer", "eval", "detection"])
def test_config_section_shows_each_fields_type_default_range_and_help(section, capsys):
    cls = typing.get_type_hints(config.RunConfig)[section]
    check_against_fields(shown_keys(capsys, section), expected_fields(cls, section))


def test_config_method_shows_one_methods_keys(capsys):
    from selfsup.methods import METHODS

    for name in ("simclr", "mae"):
        cls = METHODS.get(name).Config
        check_against_fields(shown_keys(capsys, f"method.{name}"), expected_fields(cls, "method", cls()))
    # one key across the methods that have it, each under its method's heading
    assert main(["config", "method.temperature"]) == 0
    out = capsys.readouterr().out
    having = [n for n in METHODS.names()
              if "temperature" in {f.name for f in dataclasses.fields(METHODS.get(n).Config)}]
    assert re.findall(r"^# method.name=(\w+)$", out, re.M) == having and len(having) >= 3


def test_config_without_prefix_lists_every_key(capsys):
    shown = shown_keys(capsys)
    for section in ("data", "encoder", "optim", "trainer", "eval", "detection"):
        cls = typing.get_type_hints(config.RunConfig)[section]
        assert set(expected_fields(cls, section)) <= set(shown)
    assert {"method.name", "method.temperature", "method.augment.crop_scale", "seed", "out_dir"} <= set(shown)


def test_config_file_with_override_is_the_resolved_yaml(capsys):
    assert main(["config", "--file", QUICKSTART, "optim.lr=0.123", "trainer.max_epochs=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    want = config.to_dict(config.load_config(QUICKSTART))
    assert (want["optim"]["lr"], want["trainer"]["max_epochs"]) != (0.123, 7)
    want["optim"]["lr"], want["trainer"]["max_epochs"] = 0.123, 7
    assert shown == want
    assert main(["config", "optim", "--file", QUICKSTART, "optim.lr=0.123"]) == 0  # only the prefix's part
    assert yaml.safe_load(capsys.readouterr().out) == {"optim": want["optim"]}
    assert main(["config", "method.name=moco", "method.temperature=0.3"]) == 0  # overrides alone: the defaults
    method = yaml.safe_load(capsys.readouterr().out)["method"]
    assert method["name"] == "moco" and method["temperature"] == 0.3


@pytest.mark.parametrize("argv, message", [
    (["optimm"], "no config key under 'optimm': did you mean optim"),
    (["trainer.max_epoch"], "no config key under 'trainer.max_epoch': did you mean trainer.max_epochs"),
    (["method.temprature"], "'temprature' is neither a method nor a key of one: did you mean method.temperature"),
    (["method.simclrr"], "'simclrr' is neither a method nor a key of one: did you mean method.simclr,"),  # a method
    (["method.nosuch"], "'nosuch' is neither a method nor a key of one: "),
    (["trainr", "--file", QUICKSTART], "the resolved config has no key 'trainr': did you mean trainer"),
    (["nosuchkey"], "no config key under 'nosuchkey': `selfsup config` with no prefix lists every key"),  # no near key
    (["nosuchkey", "--file", QUICKSTART], "the resolved config has no key 'nosuchkey': `selfsup config --file FILE` "
     "with no prefix shows all of it"),
])
def test_config_unknown_prefix_is_one_line_naming_close_keys(argv, message, capsys):
    assert main(["config", *argv]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"selfsup config: error: {message}"), line


def test_config_bad_override_is_the_config_error(capsys):
    assert main(["config", "--file", QUICKSTART, "optim.lr=-1"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == "selfsup config: error: config key 'optim.lr' must be > 0, got -1.0"


# --------------------------------------------------------------------------- --quiet


@pytest.mark.parametrize("argv", [["--quiet", "pretrain", QUICKSTART], ["pretrain", QUICKSTART, "--quiet"]])
def test_quiet_sets_the_environment_and_turns_the_progress_bar_off(argv, monkeypatch):
    seen = {}
    monkeypatch.delenv("SELFSUP_QUIET", raising=False)
    monkeypatch.setattr("selfsup.pipeline.pretrain_evaluate_export",
                        lambda cfg, **kw: seen.setdefault("cfg", cfg) and None)
    monkeypatch.setattr("selfsup.cli._draw", lambda folder: None)
    main(argv)
    assert seen["cfg"].trainer.progress_bar is False and os.environ["SELFSUP_QUIET"] == "1"


def test_without_quiet_the_config_decides(monkeypatch):
    seen = {}
    monkeypatch.delenv("SELFSUP_QUIET", raising=False)
    monkeypatch.setattr("selfsup.pipeline.pretrain_evaluate_export",
                        lambda cfg, **kw: seen.setdefault("cfg", cfg) and None)
    monkeypatch.setattr("selfsup.cli._draw", lambda folder: None)
    main(["pretrain", QUICKSTART])
    assert seen["cfg"].trainer.progress_bar is config.load_config(QUICKSTART).trainer.progress_bar is True
    assert "SELFSUP_QUIET" not in os.environ


@pytest.mark.parametrize("argv, message", [
    (["config", "--file", QUICKSTART, "eval.probe_seeds=1", "eval.probe_seeds=2"],
     "selfsup config: error: override key 'eval.probe_seeds' is given twice ('eval.probe_seeds=1', then "
     "'eval.probe_seeds=2'): the first would be lost; keep one"),
    (["config", "data.subset=3", "--file", QUICKSTART, "data.subset=4"],  # the first read as config's prefix
     "selfsup config: error: override key 'data.subset' is given twice ('data.subset=3', then 'data.subset=4'): "
     "the first would be lost; keep one"),
    (["pretrain", QUICKSTART, "encoder.kwargs.stem_width=8", "encoder.kwargs={channels: [8, 16, 32, 64]}"],
     "selfsup pretrain: error: override 'encoder.kwargs={channels: [8, 16, 32, 64]}' replaces the section "
     "'encoder.kwargs' and would lose the earlier 'encoder.kwargs.stem_width=8': put that key inside the "
     "section's value, or after it"),
    (["eval", "pixels", "data.subset=3", "--quiet", "data.subset=4"],
     "selfsup eval: error: override key 'data.subset' is given twice ('data.subset=3', then 'data.subset=4'): "
     "the first would be lost; keep one"),
])
def test_an_override_that_would_undo_another_is_refused(argv, message, capsys, tmp_path, monkeypatch):
    """A repeated key, or a section replaced after a key inside it, is one line before any work (the last
    one used to win silently); nothing is written."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert one_line_error(capsys.readouterr().err) == message
    assert not list(tmp_path.iterdir())


def test_a_key_set_inside_a_section_after_it_is_kept(capsys):
    """The order that loses nothing: the section, then a key inside it."""
    assert main(["config", "encoder", "--file", QUICKSTART,
                 "encoder.kwargs={channels: [8, 16, 32, 64], stem_width: 32}", "encoder.kwargs.stem_width=8"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["encoder"]["kwargs"] == {"channels": [8, 16, 32, 64], "stem_width": 8}


def test_config_overrides_without_a_file_resolve_over_the_defaults(capsys):
    """`selfsup config eval eval.probe_seeds=2` needs no --file (it used to say method.name is required)."""
    assert main(["config", "eval", "eval.probe_seeds=2"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["eval"]["probe_seeds"] == 2
    assert main(["config", "method", "method.name=moco"]) == 0  # a method given is the one shown
    assert yaml.safe_load(capsys.readouterr().out)["method"]["name"] == "moco"


def test_load_config_defaults_fill_only_what_the_file_leaves_out(tmp_path):
    """defaults= fill a missing key; a file's own value and an override both win over them."""
    moco = tmp_path / "moco.yaml"
    moco.write_text("method:\n  name: moco\n")
    bare = tmp_path / "bare.yaml"
    bare.write_text("data:\n  name: digits\n")
    simclr = ["method.name=simclr"]
    assert config.method_name(config.load_config(moco, [], simclr)) == "moco"
    assert config.method_name(config.load_config(bare, [], simclr)) == "simclr"
    assert config.method_name(config.load_config(bare, ["method.name=npid"], simclr)) == "npid"
    with pytest.raises(config.ConfigError, match="'method.name' is required"):
        config.load_config(bare, [])


@pytest.mark.parametrize("argv, option", [
    (["eval", "pixels", "--out", ""], "--out"),
    (["eval", "pixels", "--config", " "], "--config"),
    (["pretrain", QUICKSTART, "--run-dir", ""], "--run-dir"),
    (["pretrain", QUICKSTART, "--resume", ""], "--resume"),
    (["export", "", "out"], "run_dir"),
    (["export", "run", ""], "out_dir"),
    (["plot", ""], "run_dir"),
    (["compare", "a", ""], "targets"),
    (["compare", "a", "--csv", ""], "--csv"),
    (["compare", "a", "--plot", ""], "--plot"),
    (["eval", ""], "target"),  # read as '.'
    (["eval", "pixels", "--baseline", ""], "--baseline"),  # ran the whole evaluation, then failed
    (["eval", "pixels", "--task", "detection", "--dataset", ""], "--dataset"),  # trained on the default
    (["eval", "pixels", "--task", "detection", "--test-dataset", " "], "--test-dataset"),
    (["pretrain", ""], "config"),
    (["config", "--file", ""], "--file"),  # read as '.'
])
def test_an_empty_path_is_refused_not_read_as_the_default(argv, option, capsys, tmp_path, monkeypatch):
    """`--out ''` was read as no --out: the results went to the default folder, not where the user
    (or a script with an unset variable) pointed."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        main(argv)
    out = capsys.readouterr().err
    assert err.value.code == 2 and out.count("\n") == 1, out
    # each says what belongs there: a target or baseline is not just "a file or folder"
    wanted = {"target": "a run directory, an export directory, a checkpoint, pixels or random:<timm-name>",
              "--baseline": "a run directory, an export directory, a checkpoint, pixels or random:<timm-name>",
              "--dataset": "a detection dataset: synthetic-fmnist, deepforest, voc:DIR or coco:IMAGES_DIR,ANNOTATIONS.json",
              "--test-dataset": "a detection dataset: synthetic-fmnist",
              "targets": "a run directory, an export directory or an evaluation folder"}.get(option, "a file or folder name")
    assert f"error: argument {option}: " in out and f"is empty: give {wanted}" in out, out
    # only an option has a default to fall back on (helper-52: the hint made no sense for a positional argument)
    assert ("(an option left out takes its default)" in out) == option.startswith("--"), out
    assert list(tmp_path.iterdir()) == []


def test_the_eval_line_about_the_runs_own_results_names_only_a_file_that_exists(tmp_path):
    """The tour's: on a --no-eval run, `selfsup eval RUN eval.probe_seeds=1` said the run's own results
    "stay in RUN/results.json", a file that did not exist."""
    from selfsup.cli_eval import own_results_note
    from selfsup.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert own_results_note(run) == (f"the run has no results of its own yet (selfsup eval {tmp_path / 'run'} "
                                     f"writes results.json)")
    (tmp_path / "run").mkdir()
    run.results_json.write_text("[]")
    assert own_results_note(run) == f"the run's own results stay in {run.results_json}"


def test_random_without_a_name_is_the_configs_encoder_in_its_folder_too():
    """The tour's: `selfsup eval random:` evaluates the config's encoder (with its kwargs) but its default
    folder was hashed from the empty name without kwargs, so two different random encoders wrote over each
    other's results. The folder is now the one of random:<the config's encoder>."""
    from selfsup.cli_eval import target_eval_dir
    from selfsup.config import load_config

    slim = load_config(None, ["method.name=simclr", "encoder.name=resnet18", "encoder.kwargs={channels: [8, 16, 32, 64]}"])
    full = load_config(None, ["method.name=simclr", "encoder.name=resnet18"])
    assert target_eval_dir("random:", slim) == target_eval_dir("random:resnet18", slim)
    assert target_eval_dir("random:", slim) != target_eval_dir("random:", full)
    assert target_eval_dir("random:", full).parts[2] == "random-resnet18"
    # the one reading of a random: spec, which the transfer export's card also takes (it wrote architecture ''
    # and no kwargs for random:), and the detection folder's init tag (two random encoders shared one folder)
    from selfsup.cli_eval import init_tag
    from selfsup.eval.target import random_encoder

    assert random_encoder("random:", slim) == ("resnet18", {"channels": [8, 16, 32, 64]})
    assert random_encoder("random:resnet50", slim) == ("resnet50", {})
    assert init_tag("random:", slim) == init_tag("random:resnet18", slim) != init_tag("random:", full)
    assert init_tag("pixels", slim) == "" and init_tag("runs/x", slim) == ""


@pytest.mark.parametrize("extra", [[], ["--protocol", "bitfit"], ["--task", "detection"]])
def test_out_never_writes_over_a_run_or_an_export(tmp_path, capsys, extra):
    """The tour's silent overwrite: `eval TARGET --out RUN` replaced the run's own results.json (what compare
    and the export card read) with this evaluation's rows; a transfer also wrote classifier/ there. A run or
    an export directory as --out is refused in one line, before anything is read, and left as it was."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: r\n")
    (run / "results.json").write_text("[]")
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"")
    for out, kind in ((run, "a run directory"), (export, "an export directory")):
        before = sorted(p.name for p in out.iterdir())
        assert main(["eval", "pixels", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: --out {out} is {kind}: this evaluation's results.json and " \
                                           "results.md would take the place of " in err, err
        assert err.rstrip().endswith("give a folder of its own (without --out, an evaluation of a run writes into "
                                     "the run and never replaces its results with those of other settings)")
        assert sorted(p.name for p in out.iterdir()) == before
    assert (run / "results.json").read_text() == "[]"


@pytest.mark.parametrize("argv, said", [
    (["eval", "pixels", "--baseline", "random:resnet18", "--baseline", "random:resnet18"], "random:resnet18 is given twice"),
    (["eval", "pixels", "--baseline", "pixels"], "pixels is given as the target too"),
    # helper-53's: the same run spelled otherwise was evaluated twice
    (["eval", "r1", "--baseline", "r1/"], "r1/ is given as the target too"),
    (["eval", "pixels", "--baseline", "./r1", "--baseline", "r1"], "./r1 is given twice"),
])
def test_an_encoder_given_twice_is_refused_before_anything_runs(argv, said, tmp_path, monkeypatch, capsys):
    """helper-52's: `--baseline random:resnet18` twice trained and printed two identical rows."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: --baseline {said}: give each encoder once" in err, err
    assert list(tmp_path.iterdir()) == []


def test_eval_image_size_is_refused_for_detection_which_has_its_own_size(tmp_path, capsys):
    """eval.image_size sets what kNN, the probes and the transfer protocols see; a detector would have
    ignored it silently."""
    assert main(["eval", "random:resnet18", "--task", "detection", "--out", str(tmp_path / "d"),
                 "eval.image_size=32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a detector trains at detection.image_size: set that instead" in err, err
    assert not (tmp_path / "d").exists()


def test_input_size_notes_warn_only_when_rows_saw_different_sizes():
    from selfsup.eval.report import input_size_notes

    def row(label: str, size: int | None, data: int | None) -> dict:
        return {"label": label, **({"image_size": size, "data_image_size": data} if size else {})}

    assert input_size_notes([row("run a", None, None), row("raw pixels", None, None)]) == ([], [])  # older rows
    assert input_size_notes([row("run a", 32, 32), row("raw pixels", 32, 32)]) == ([], [])
    warnings, notes = input_size_notes([row("run a", 16, 18), row("random-init r", 18, 18), row("raw pixels", 18, 18)])
    assert warnings == ["**Warning**: the encoders saw the images at different sizes (run a 16 px; random-init r, "
                        "raw pixels 18 px), so their accuracies are not compared at one input size; "
                        "eval.image_size=N evaluates every target at N px"]
    assert notes == ["Input size: run a 16 px; random-init r, raw pixels 18 px; the data's images are 18 px, resized "
                     "for run a (a trained encoder sees the size it was trained at unless eval.image_size is set)."]
    assert input_size_notes([row("export e", 224, 32)])[0] == []  # one size: a note, no warning


@pytest.mark.parametrize("baselines, said", [
    ("[foo]", "eval.baselines: 'foo' is neither random, pixels, random:<timm-name> nor an existing path"),
    ("[random:resnet99]", "eval.baselines: 'random:resnet99' names no timm model ('resnet99')"),
    ("[random, random:resnet18]", "eval.baselines: 'random:resnet18' and 'random' are the same baseline; give each "
                                  "once"),
    ("['random:', random]", "eval.baselines: 'random' and 'random:' are the same baseline"),
    ("[pixels, pixels]", "eval.baselines: 'pixels' is given twice; give each baseline once"),
    ("[{e}, {e}/]", "eval.baselines: '{e}/' and '{e}' are the same baseline"),
    ("['']", "eval.baselines: an empty entry in ['']"),
    ("[{d}]", "eval.baselines: '{d}' holds no encoder to evaluate: '{d}' is not a selfsup run directory"),
    ("[{d}/run]", "eval.baselines: '{d}/run' is this run itself, which is evaluated anyway; drop it"),
])
def test_baselines_the_evaluation_would_fail_on_or_repeat_are_refused_before_pretraining(tmp_path, capsys, baselines,
                                                                                        said):
    """eval.baselines=[foo] was accepted and failed only when pretraining had ended (minutes to hours later), and
    so did an existing path holding no encoder (helper-56: `''` is `.`); a baseline given twice gave two rows of
    one encoder. Refused in one line before the run directory is made."""
    from selfsup.data import DataInfo
    from selfsup.encoders import create_encoder
    from selfsup.export import make_card, write_export

    export = tmp_path / "shipped"  # a real export, given twice
    cfg = config.load_config(None, ["method.name=simclr", "encoder.kwargs={channels: [8, 16, 32, 64]}"])
    encoder = create_encoder("resnet18", 1, cfg.encoder.kwargs)
    write_export(encoder, make_card(cfg, DataInfo(1, 16, 10, (0.3,), (0.3,), 100), encoder), export)
    baselines, said = (t.format(d=tmp_path, e=export) for t in (baselines, said))
    run = tmp_path / "run"
    assert main(["pretrain", QUICKSTART, "--run-dir", str(run), "data.name=digits", "data.image_size=16",
                 "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.max_steps=1",
                 f"eval.baselines={baselines}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not run.exists()


def test_a_runs_own_export_is_labelled_as_the_runs(tmp_path):
    """`--baseline RUN/export` was labelled "export export"."""
    from selfsup.eval.target import target_label

    run = tmp_path / "r16"
    (run / "export").mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\n")
    for folder in (run / "export", tmp_path / "shipped"):
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
    assert target_label(run / "export", str(run / "export")) == "export of run r16"
    assert target_label(tmp_path / "shipped", "shipped") == "export shipped"
    assert target_label(run, str(run)) == "run r16"


@pytest.mark.parametrize("inside", ["checkpoints", "checkpoints/sub", "logs", "features", "plots", "export"])
def test_out_inside_a_runs_own_folders_is_refused(tmp_path, capsys, inside):
    """`selfsup eval TARGET --out RUN/checkpoints` wrote results.json, results.md and plots among the run's
    checkpoints (and RUN/export among the export's files before it was exported). A run's own folders are
    refused, with a place that works; a folder of its own inside the run is not."""
    from selfsup.cli_eval import check_out_folder

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: simclr}\n")
    out = run / inside
    assert main(["eval", "pixels", "--out", str(out)]) == 2
    folder = run / inside.split("/")[0]
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup eval: error: --out {out} is inside {folder}, the run's own {folder.name}/ folder (selfsup keeps the "
        f"run's files there): give a folder of its own, e.g. {run}/eval-mine or a path outside the run")
    check_out_folder(str(run / "eval-mine"))  # refused nothing
    check_out_folder(str(tmp_path / "checkpoints"))  # a folder named so outside any run is anyone's


def test_out_inside_another_run_is_refused_and_inside_the_targets_own_run_is_not(tmp_path, capsys):
    """helper-66's: `eval runC --out runA/eval-fromC` was accepted; compare then showed runC's numbers under runA's
    method, encoder and epochs, warned as "runA's weights after 5994 steps". An --out inside a run directory
    the target is not part of (another run, or a baseline's evaluation) is refused; the target's own run, its
    checkpoint's or its export's, and a folder outside every run are fine."""
    from selfsup.cli_eval import check_out_folder
    from selfsup.config import ConfigError

    runs = {}
    for name in ("a", "c"):
        runs[name] = tmp_path / name
        (runs[name] / "checkpoints").mkdir(parents=True)
        (runs[name] / "config.yaml").write_text("method: {name: simclr}\n")
        (runs[name] / "checkpoints" / "last.ckpt").write_bytes(b"")
    a, c = runs["a"], runs["c"]
    for target, fix in ((str(c), f" (or inside {c})"), ("pixels", ""), ("random:resnet18", "")):
        with pytest.raises(ConfigError) as err:
            check_out_folder(str(a / "eval-fromC"), "frozen", target)
        assert str(err.value) == (f"--out {a / 'eval-fromC'} is inside run {a.resolve()}, whose folders compare and "
                                  f"its resume read as that run's evaluations, but this evaluates {target}: give it a "
                                  f"folder of its own outside {a.resolve()}{fix}")
    for target in (str(a), str(a / "checkpoints" / "last.ckpt")):
        check_out_folder(str(a / "eval-mine"), "frozen", target)
        check_out_folder(str(a / "nested" / "deeper"), "transfer", target)
    check_out_folder(str(tmp_path / "elsewhere"), "frozen", str(c))
    assert main(["eval", str(c), "--out", str(a / "eval-fromC")]) == 2  # before anything is loaded
    assert "is inside run" in one_line_error(capsys.readouterr().err)


def test_out_holding_another_kind_of_results_is_refused(tmp_path, capsys):
    """helper-61's: `eval RUN --out RUN/transfer-bitfit-x` replaced a transfer's results.json with kNN results
    (its classifier/ left beside numbers no longer its own), and the reverse. Refused before any work; the same
    kind is rewritten as before; a run's detection/ folder itself is refused too."""
    from selfsup.cli_eval import check_out_folder
    from selfsup.config import ConfigError

    kinds = {"transfer": [{"protocol": "bitfit", "fraction": 1.0}], "detection": [{"label": "x", "task": "detection"}],
             "frozen": [{"label": "x", "kind": "pretrained"}]}
    for there, rows in kinds.items():
        folder = tmp_path / there
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(rows))
        check_out_folder(str(folder), there)  # the same kind: rewritten
        for kind in set(kinds) - {there}:
            with pytest.raises(ConfigError) as err:
                check_out_folder(str(folder), kind)
            assert str(err.value) == (f"--out {folder} holds the results of a {there} evaluation (its results.json): "
                                      f"this {kind} evaluation would replace them; give a folder of its own")
    assert main(["eval", "pixels", "--out", str(tmp_path / "transfer")]) == 2
    assert "holds the results of a transfer evaluation" in one_line_error(capsys.readouterr().err)
    run = tmp_path / "run"
    (run / "detection").mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: simclr}\n")
    assert main(["eval", "pixels", "--task", "detection", "--out", str(run / "detection")]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        f"--out {run / 'detection'} is the run's own detection/ folder (one folder per detection setting inside it): "
        f"give a folder of its own, e.g. {run / 'detection'}/mine or a path outside the run")
    check_out_folder(str(run / "detection" / "mine"), "detection")  # a folder of its own inside it
    for kind in ("frozen", "transfer"):  # helper-62's: suggested RUN/detection/mine for a kNN evaluation, took it
        for out in (run / "detection", run / "detection" / "mine"):
            with pytest.raises(ConfigError) as err:
                check_out_folder(str(out), kind)
            assert str(err.value) == (
                f"--out {out} is inside {run / 'detection'}, where the run keeps its detection evaluations (compare "
                f"and the resume read them as such): give this {kind} evaluation a folder of its own, e.g. "
                f"{run}/{'transfer' if kind == 'transfer' else 'eval'}-mine or a path outside the run")
