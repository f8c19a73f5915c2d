"""benchmarks/transfer.py's bookkeeping (no training): the merge of a new run's rows into the results file, the
lr grid a row is labelled by, and the markdown generated from the json (the summary's "not run" cells)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transfer_benchmark", ROOT / "benchmarks" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["transfer_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def cell(target: str, protocol: str, fraction: float, top1: float, lrs: list[float] | None = None,
         pct: float = 3.0, images: int = 3000) -> dict:
    """A row in run_protocol's layout (the linear probe's has no options), as the results file stores it."""
    row = {"target": target, "protocol": protocol, "fraction": fraction, "top1": top1, "top1_std": 0.5,
           "train_images": int(images * fraction), "trainable_pct": pct, "minutes": 0.25, "lr": [0.001, 0.001]}
    if protocol != "linear":
        row["options"] = {"lrs": lrs or [0.001]}
    return row


def summary_lines(md: str) -> list[list[str]]:
    """The summary table's body rows of a generated md, split into cells (the first table after the runs)."""
    tables = md.split("\n\n")
    body = next(t for t in tables if t.startswith("| target | protocol | lr grid | trainable %"))
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()[2:]]


def test_lr_grid_labels_old_and_new_rows(bench):
    assert bench.lr_grid(cell("a (pretrained)", "linear", 1.0, 50)) == "probe"
    assert bench.lr_grid(cell("a (pretrained)", "lora", 1.0, 50, [0.0001, 0.0003, 0.001])) == "0.0001,0.0003,0.001"
    assert bench.lr_grid({**cell("a (pretrained)", "lora", 1.0, 50), "lr_grid": "0.01"}) == "0.01"


def test_merge_replaces_same_target_protocol_fraction_grid_and_keeps_the_rest(bench):
    old = [cell("m (pretrained)", "finetune", 1.0, 38.2), cell("m (pretrained)", "finetune", 0.1, 19.5),
           cell("m (random-init)", "bitfit", 1.0, 42.4)]
    new = [cell("m (pretrained)", "finetune", 1.0, 60.0),                        # same cell: replaces 38.2
           cell("m (pretrained)", "finetune", 1.0, 61.0, [0.0001, 0.001]),       # other lr grid: a new row
           cell("m (random-init)", "lora", 1.0, 40.0)]                            # new protocol: appended
    merged = bench.merge_rows(old, new)
    got = [(r["target"], r["protocol"], r["fraction"], r["top1"]) for r in merged]
    assert got == [("m (pretrained)", "finetune", 1.0, 60.0), ("m (pretrained)", "finetune", 0.1, 19.5),
                   ("m (random-init)", "bitfit", 1.0, 42.4), ("m (pretrained)", "finetune", 1.0, 61.0),
                   ("m (random-init)", "lora", 1.0, 40.0)]
    assert old[0]["top1"] == 38.2  # the old list is not changed


def test_merge_document_keeps_the_old_single_run_meta_and_numbers_the_runs(bench):
    old = {"meta": {"threads": 1, "args": {"epochs": 4}, "partial": "stopped"},
           "rows": [cell("m (pretrained)", "linear", 1.0, 57.8)]}
    run = {"command": "python benchmarks/transfer.py m --merge", "args": {"epochs": 4}, "finished": False}
    doc = bench.merge_document(old, run, [cell("m (random-init)", "lora", 1.0, 40.0)])
    assert doc["meta"]["runs"] == [old["meta"], run]
    assert [(r["target"], r.get("run")) for r in doc["rows"]] == [("m (pretrained)", None), ("m (random-init)", 1)]
    again = bench.merge_document(doc, {"args": {}}, [cell("m (random-init)", "lora", 1.0, 41.0)])
    assert len(again["meta"]["runs"]) == 3
    assert [(r["top1"], r.get("run")) for r in again["rows"]] == [(57.8, None), (41.0, 2)]
    assert bench.merge_document(None, run, [])["meta"]["runs"] == [run]


def test_merge_document_refuses_a_file_without_rows(bench):
    with pytest.raises(bench.BenchmarkError, match="no 'rows' list.*--out"):
        bench.merge_document({"meta": {}}, {}, [])


@pytest.mark.parametrize("text", ["{}", "[]", '{"rows": 3}'])
def test_render_refuses_a_results_file_without_rows(bench, tmp_path, text):
    """helper-37's case: --render on {} was a KeyError traceback."""
    (tmp_path / "g.json").write_text(text)
    with pytest.raises(bench.BenchmarkError, match=r"g.json holds no rows of benchmarks/transfer.py .*--out"):
        bench.read_doc(tmp_path / "g.json")


def test_md_marks_the_cells_and_rows_not_run(bench):
    rows = [cell("m (pretrained)", "linear", f, 50 + f, pct=0.0) for f in (0.01, 1.0)]
    rows += [cell("m (random-init)", "linear", f, 40 + f, pct=0.0) for f in (0.01, 1.0)]
    rows += [cell("m (pretrained)", "lora", f, 30 + f, pct=8.2) for f in (0.01, 1.0)]      # twin's lora: not run
    rows += [cell("m (pretrained)", "finetune", 1.0, 44.0, [0.0001, 0.001], pct=100.0)]   # 1%: not run
    rows += [cell("r (pretrained)", "prompt", 1.0, 12.0, pct=0.1)]                        # another target
    md = bench.render_md({"meta": {"runs": [{"args": {"epochs": 4, "seeds": 2}, "finished": True}]}, "rows": rows})
    lines = summary_lines(md)
    by = {(c[0], c[1], c[2]): c[3:] for c in lines}
    assert by[("m (random-init)", "lora", "0.001")] == ["–", "not run", "not run"]
    assert by[("m (pretrained)", "lora", "0.001")] == ["8.20", "30.01 ± 0.50", "31.00 ± 0.50"]
    assert by[("m (pretrained)", "finetune", "0.0001,0.001")] == ["100.00", "not run", "44.00 ± 0.50"]
    assert by[("m (random-init)", "finetune", "0.0001,0.001")] == ["–", "not run", "not run"]
    assert by[("r (pretrained)", "prompt", "0.001")] == ["0.10", "not run", "12.00 ± 0.50"]
    assert not any(c[0].startswith("r ") and c[1] != "prompt" for c in lines)  # m's protocols stay m's
    assert ("m (pretrained)", "prompt", "0.001") not in by
    assert len(lines) == 7
    assert "all labels (3,000 images)" in md and "1% labels" in md
    # every measured cell is listed once below the summary, with its own numbers
    for r in rows:
        assert f"| {r['target']} | {r['protocol']} | {bench.lr_grid(r)} | {r['fraction']:g} | " in md
    assert md.count("not run") == 6 + 1  # the six cells above, and the header sentence
    assert "Warnings:" not in md  # none to say


def test_md_lists_the_rows_warnings_under_their_target(bench):
    """The benchmark silences the protocols' log, so a diverged lr (or a choice on too few held-out images)
    was said nowhere; the rows' warnings are listed under the table, each with its target."""
    warned = {**cell("m (pretrained)", "bitfit", 1.0, 50.0), "warnings": [
        "the bitfit at 100% labels: lr 100 diverged at seed 0 of 2 (never chosen; the reported lr is the best of "
        "the others)"]}
    md = bench.render_md({"meta": {"runs": [{"args": {"epochs": 1, "seeds": 2}, "finished": True}]},
                          "rows": [warned, cell("m (random-init)", "bitfit", 1.0, 40.0)]})
    assert md.rstrip().endswith("Warnings:\n\n- m (pretrained): the bitfit at 100% labels: lr 100 diverged at seed 0 "
                                "of 2 (never chosen; the reported lr is the best of the others)")


def test_md_header_states_commands_machine_threads_budget_and_shared_minutes(bench):
    runs = [{"machine": "x86_64", "threads": 1, "partial": "stopped when time ran out",
             "args": {"targets": ["/tmp/a (the SimCLR run)"], "epochs": 4, "seeds": 2, "lrs": "0.001",
                      "train_images": 3000, "lora_rank": 8}},
            {"command": "python benchmarks/transfer.py /tmp/b --merge", "cpu": "Some CPU @ 2GHz", "threads": 1,
             "finished": False, "args": {"epochs": 4, "seeds": 2, "train_images": 3000, "lora_rank": 8}}]
    md = bench.render_md({"meta": {"runs": runs}, "rows": [cell("a (pretrained)", "linear", 1.0, 50.0)]})
    assert md.startswith("# Transfer protocols (partial)")
    assert "`python benchmarks/transfer.py /tmp/a --epochs 4 --lrs 0.001 --seeds 2 --lora-rank 8 " \
           "--train-images 3000`" in md
    assert "`python benchmarks/transfer.py /tmp/b --merge`; Some CPU @ 2GHz, 1 torch thread(s)" in md
    assert md.count("budget per cell: 4 epochs over its labelled images") == 2
    assert "2 seeds per cell" in md and "3,000-image training subset" in md
    assert "inflated when the machine was shared" in md
    assert "stopped when time ran out" in md and "stopped before it finished (or still running)" in md
    runs[1]["finished"] = True  # the stopped run's missing cells were run later: no longer partial
    md = bench.render_md({"meta": {"runs": runs}, "rows": [cell("a (pretrained)", "linear", 1.0, 50.0)]})
    assert md.startswith("# Transfer protocols\n") and "stopped when time ran out" in md


def test_twins_parse_and_refuse(bench):
    assert bench.parse_twins("pretrained,random-init", False) == ["pretrained", "random-init"]
    assert bench.parse_twins("random-init", False) == ["random-init"]
    assert bench.parse_twins("pretrained,random-init", True) == ["pretrained"]
    with pytest.raises(bench.BenchmarkError,
                       match="unknown --twins random: use a comma list of pretrained,random-init"):
        bench.parse_twins("pretrained,random", False)
    with pytest.raises(bench.BenchmarkError, match="no twin left"):
        bench.parse_twins("random-init", True)


def test_a_corrupt_results_file_is_a_clear_error(bench, tmp_path):
    path = tmp_path / "transfer.json"
    path.write_text('{"meta": {}, "rows": [')  # cut off mid-write
    with pytest.raises(bench.BenchmarkError, match=r"cannot read the results file .*transfer.json .*--out"):
        bench.read_doc(path)
    path.write_text('{"meta": {}, "rows": []}')
    assert bench.read_doc(path) == {"meta": {}, "rows": []}


def test_protocols_may_have_spaces_after_commas(bench):
    assert bench.protocol_list("linear, lora ,bitfit") == ["linear", "lora", "bitfit"]


@pytest.mark.parametrize("argv, message", [  # a run directory whose files selfsup cannot load
    (["{tmp}/run"], "error: '{tmp}/run' is a selfsup run directory without a checkpoint"),
])
def test_a_target_selfsup_cannot_load_is_one_line(bench, tmp_path, monkeypatch, argv, message):
    """A run directory with a config but no loadable weights: selfsup's own error, one line, not a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: {name: simclr}\n")
    monkeypatch.setattr(sys, "argv", ["transfer.py", *[a.format(tmp=tmp_path) for a in argv], "--protocols", "linear",
                                      "--out", str(tmp_path / "res")])
    with pytest.raises(SystemExit) as err:
        bench.main()
    assert str(err.value).startswith(message.format(tmp=tmp_path)) and "\n" not in str(err.value)


@pytest.mark.parametrize("argv, message", [  # helper-37's: these failed only after the target was loaded
    (["/nonexistent/run"], "no such target: /nonexistent/run"),
    (["{tmp}", "--protocols", "foo"], "--protocols: unknown ['foo']"),
    (["{tmp}", "--fractions", "0,2"], "--fractions '0,2': every value must be in (0, 1]"),
    (["{tmp}", "--lrs", "-1"], "--lrs '-1': every value must be finite and > 0"),
    (["{tmp}", "--lrs", "1e-3,x"], "--lrs '1e-3,x': give comma-separated numbers"),
    (["{tmp}", "--seeds", "0"], "--seeds must be at least 1, got 0"),
    # a bad option is named before a missing target (the tour's: the target was reported first)
    (["/nonexistent/run", "--protocols", "foo"], "--protocols: unknown ['foo']"),
    (["/nonexistent/run", "--fractions", "2"], "--fractions '2': every value must be in (0, 1]"),
    (["{tmp}", "--fractions", "0.1,1,0.1"], "--fractions '0.1,1,0.1': a value is given twice; give each once"),
    (["{tmp}", "--lrs", "1e-3,0.001"], "--lrs '1e-3,0.001': a value is given twice; give each once"),
    # the last tour's: tracebacks, or errors only after loading
    (["{tmp}", "--protocols", "linear,linear"], "--protocols 'linear,linear': a protocol is given twice"),
    (["{tmp}", "--train-images", "-1"], "--train-images must be 0 (all) or more, got -1"),
    (["{tmp}", "--data", "bogus"], "--data 'bogus': unknown dataset; choose from"),
    (["{tmp}", "--data", "image-folder"], "--data image-folder needs --data-root: the folder holding train/"),
    (["{tmp}", "--data-root", "{tmp}/nope"], "--data-root {tmp}/nope: no such folder"),
    (["{tmp}"], "not a selfsup run or export directory: "),
    (["{tmp}", "{tmp}/."], "target {tmp} is given twice: give each target once"),
    (["--protocols", "foo"], "--protocols: unknown ['foo']"),  # an option's typo named even without a target
    (["{tmp}/a/run", "{tmp}/b/run"], "two targets are folders named 'run': their rows would share one label"),
    (["{tmp}", "--twins", "pretrained,pretrained"], "--twins 'pretrained,pretrained': a twin is given twice"),
    (["{tmp}", "--twins", ","], "unknown --twins ',': use a comma list of"),
])
def test_arguments_are_checked_before_anything_loads(bench, tmp_path, monkeypatch, argv, message):
    for sub in ("a/run", "b/run"):
        (tmp_path / sub).mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["transfer.py", *[a.format(tmp=tmp_path) for a in argv],
                                      "--out", str(tmp_path / "res")])
    with pytest.raises(SystemExit) as err:
        bench.main()
    assert str(err.value).startswith(f"error: {message.format(tmp=tmp_path)}") and "\n" not in str(err.value)
    assert not (tmp_path / "res.json").exists()


def test_an_image_folder_is_reached_through_data_root(bench, tmp_path, monkeypatch):
    """--data image-folder --data-root FOLDER trains and scores on that folder: the row counts its
    training images (8 per class, 2 classes), and its test top-1 is a count over its 8 test images.
    Data whose channels the encoder does not take is one line, before any training."""
    from test_eval_data import TINY_ENCODER, eval_cfg, toy_folder

    from selfsup.data import DataInfo
    from selfsup.encoders import create_encoder
    from selfsup.export import make_card, write_export

    folder = toy_folder(tmp_path / "data", train=8, test=4)
    cfg = eval_cfg(folder, "encoder.name=resnet18", TINY_ENCODER)
    for chans, name in ((1, "exp"), (3, "rgb")):
        torch.manual_seed(0)
        encoder = create_encoder("resnet18", chans, cfg.encoder.kwargs, fair_random_init=True).eval()
        info = DataInfo(chans, 8, 2, (0.35,) * chans, (0.3,) * chans, 16)
        write_export(encoder, make_card(cfg, info, encoder), tmp_path / name)

    def run(target: str, *data: str) -> None:
        monkeypatch.setattr(sys, "argv", ["transfer.py", str(tmp_path / target), *data, "--protocols", "linear",
                                          "--fractions", "1", "--seeds", "1", "--twins", "pretrained",
                                          "--out", str(tmp_path / "res")])
        bench.main()

    run("exp", "--data", "image-folder", "--data-root", str(folder))
    rows = json.loads((tmp_path / "res.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["train_images"] == 16 and rows[0]["protocol"] == "linear"
    assert rows[0]["top1"] * 8 / 100 == pytest.approx(round(rows[0]["top1"] * 8 / 100))  # a count of 8 test images
    assert "), all test images" in (tmp_path / "res.md").read_text()  # the folder has test/
    with pytest.raises(SystemExit) as err:
        run("rgb", "--data", "digits")
    assert str(err.value).startswith(f"error: {tmp_path / 'rgb'} takes 3-channel images but --data digits has "
                                     f"1-channel ones") and "\n" not in str(err.value)


def test_the_header_says_when_the_test_images_are_held_out_of_the_folder(bench, tmp_path):
    """The tour's: a folder with no test/ or val/ is split (a seeded 20% of each class tests), and the
    header said "all test images"."""
    flat = tmp_path / "flat"
    for c in ("a", "b"):
        (flat / c).mkdir(parents=True)
    assert bench.test_split_text("image-folder", str(flat)) == (
        "test images: a seeded 20% of each class held out of the folder (it has no test/ or val/; the rest trains)")
    from PIL import Image

    for split in ("test", "val"):  # a test split is a test-like folder holding images (an empty one is none)
        (tmp_path / split / "train" / "a").mkdir(parents=True)
        (tmp_path / split / split / "a").mkdir(parents=True)
        Image.new("L", (4, 4)).save(tmp_path / split / split / "a" / "0.png")
        assert bench.test_split_text("image-folder", str(tmp_path / split)) == "all test images"
    assert bench.test_split_text("fashion-mnist", None) == "all test images"
    run = {"args": {"data": "image-folder", "epochs": 1, "seeds": 1}, "test_split": bench.test_split_text(
        "image-folder", str(flat))}
    assert "(the low-shot fractions are drawn from it), test images: a seeded 20%" in bench.run_text(0, run)


def test_an_out_that_cannot_be_written_is_refused_before_anything_loads(bench, tmp_path, monkeypatch):
    """The sibling of `selfsup eval --out FILE/sub` (a traceback after the work): the benchmark wrote its
    results only after the first trained cell. A stem under a file, or a folder given as the stem, is one line
    before anything loads."""
    (tmp_path / "run").mkdir()
    blocker = tmp_path / "notes.md"
    blocker.write_text("x")
    for out, message in ((blocker / "res", f"--out {blocker / 'res'}: its folder cannot create this folder "
                                           f"({blocker} is a file, not a folder)"),
                         (tmp_path / "run", f"--out {tmp_path / 'run'} is a folder: --out is a file stem")):
        monkeypatch.setattr(sys, "argv", ["transfer.py", str(tmp_path / "run"), "--out", str(out)])
        with pytest.raises(SystemExit) as err:
            bench.main()
        assert str(err.value).startswith(f"error: {message}") and "\n" not in str(err.value)
    assert blocker.read_text() == "x"
