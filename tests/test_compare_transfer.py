"""`selfsup compare` of transfer folders (``selfsup eval TARGET --protocol NAME --out DIR``, DIR or its
classifier/ export) beside runs and exports, with the probes' top-5 and scikit-learn columns; bar_chart's axis
from 0 and no error bar without a spread; the transfer table's footnote on blank frozen cells; the --transfer
options in `selfsup config`. Fixtures are written here in the files' own formats (no training)."""

from __future__ import annotations

import csv
import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from conftest import one_line_error
from selfsup import plots
from selfsup.artifacts.card import to_config_json
from selfsup.cli import main

ENCODER_CARD = {"architecture": "resnet18", "kwargs": {}, "in_chans": 1, "input_size": [1, 16, 16], "mean": [0.3],
                "std": [0.3], "num_features": 64}


def transfer_row(protocol: str, fraction: float, top1: list[float], top5: list[float], pct: float) -> dict:
    """A results.json row of a transfer run (the keys selfsup.transfer.run_protocol writes)."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    sd = lambda xs: (sum((x - mean(xs)) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0  # noqa: E731
    key = protocol if fraction == 1 else f"{protocol}_{fraction * 100:g}pct"
    return {"key": key, "protocol": protocol, "fraction": fraction, "train_images": 100, "seeds": len(top1),
            "top1": mean(top1), "top1_std": sd(top1), "top1_per_seed": top1, "top5": mean(top5), "top5_std": sd(top5),
            "top5_per_seed": top5, "minutes": 0.1, "trainable_params": 1328, "encoder_params": 183344,
            "trainable_pct": pct}


def write_transfer(folder: Path, rows: list[dict], card: dict | None = None) -> Path:
    """A transfer folder: results.json and classifier/ (config.json with num_classes > 0 and the
    selfsup.transfer block, a weights file)."""
    (folder / "classifier").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(rows))
    config = to_config_json({**ENCODER_CARD, **(card or {})})
    config["num_classes"] = 10
    config["selfsup"]["transfer"] = {"protocol": rows[0]["protocol"], "options": {}, "results": {}}
    (folder / "classifier" / "config.json").write_text(json.dumps(config))
    (folder / "classifier" / "model.safetensors").write_bytes(b"")
    return folder


def frozen_row(label: str, kind: str = "pretrained", sklearn: bool = True) -> dict:
    row = {"label": label, "kind": kind, "dataset": "digits", "knn": {"k=20,T=0.07": {"top1": 91.234}},
           "linear": {"seeds": 3, "top1": 93.456, "top1_std": 0.321, "top5": 99.111, "top5_std": 0.05,
                      "fraction": 1.0},
           "linear_10pct": {"seeds": 3, "top1": 80.5, "top1_std": 1.25, "top5": 97.0, "top5_std": 0.5,
                            "fraction": 0.1}}
    if sklearn:
        row["linear_sklearn"] = {"top1": 92.875, "top5": 99.5}
    return row


def write_run(folder: Path, rows: list[dict] | None, method: str = "simclr", seconds: float = 90.0) -> Path:
    """A run directory: config.yaml, checkpoints/, training_time.json and (when given) results.json."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "encoder": {"name": "resnet18"}}))
    (folder / "training_time.json").write_text(json.dumps({"seconds": seconds, "epochs": 2}))
    if rows is not None:
        (folder / "results.json").write_text(json.dumps(rows))
    return folder


def table(out: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The markdown table's header and its rows by target."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    return header, {cells[0]: dict(zip(header, cells)) for cells in map(split, lines[2:])}


@pytest.fixture
def bitfit(tmp_path) -> tuple[Path, list[dict]]:
    rows = [transfer_row("bitfit", 1.0, [10.555], [49.166], 0.724321), transfer_row("bitfit", 0.5, [10.277], [50.555],
                                                                                    0.724321)]
    return write_transfer(tmp_path / "h30tr", rows), rows


def test_transfer_classifier_is_read_as_its_folders_results(bitfit, capsys):
    folder, rows = bitfit
    assert main(["compare", str(folder / "classifier")]) == 0
    header, by_target = table(capsys.readouterr().out)
    assert header[6:] == ["bitfit 100% top-1", "bitfit 100% top-5", "bitfit 50% top-1", "bitfit trainable %"]
    row = by_target[str(folder / "classifier")]
    # one seed: the mean alone (no measured spread), two decimals
    assert row["bitfit 100% top-1"] == f"{10.555:.2f}"
    assert (row["bitfit 100% top-5"], row["bitfit 50% top-1"]) == (f"{49.166:.2f}", f"{10.277:.2f}")
    assert row["bitfit trainable %"] == "0.72" and row["encoder"] == "resnet18" and row["method"] == ""
    # the folder itself gives the same row; both given: listed once
    assert main(["compare", str(folder), str(folder / "classifier")]) == 0
    captured = capsys.readouterr()
    assert len(table(captured.out)[1]) == 1 and "classifier gives the same results as a target before it" in captured.err


def test_rows_from_runs_and_transfer_folders_line_up_by_column(tmp_path, bitfit, capsys):
    folder, _ = bitfit
    run = write_run(tmp_path / "run", [frozen_row("run simclr"), frozen_row("random resnet18", kind="random")])
    lora = [transfer_row("lora", 1.0, [70.0, 72.0, 74.0], [95.0, 96.0, 97.0], 3.5),
            transfer_row("lora", 0.1, [40.0, 41.0, 45.0], [80.0, 81.0, 82.0], 3.5)]
    write_transfer(run / "transfer-lora", lora, {"method": "simclr"})
    capsys.readouterr()
    csv_path = tmp_path / "c.csv"
    assert main(["compare", str(run), str(folder), str(run / "transfer-lora" / "classifier"), "--csv",
                 str(csv_path), "--plot", str(tmp_path / "c.png")]) == 0
    header, by_target = table(capsys.readouterr().out)
    assert header == ["target", "method", "encoder", "data", "epochs", "train min", "kNN k=20,T=0.07", "linear top-1",
                      "linear top-5", "linear top-1, 10% labels", "sklearn logistic top-1", "bitfit 100% top-1",
                      "bitfit 100% top-5", "bitfit 50% top-1", "bitfit trainable %", "lora 100% top-1",
                      "lora 100% top-5", "lora 10% top-1", "lora trainable %"]
    r = by_target[str(run)]
    assert (r["kNN k=20,T=0.07"], r["linear top-1"], r["linear top-5"]) == ("91.23", "93.46 ± 0.32", "99.11 ± 0.05")
    assert (r["linear top-1, 10% labels"], r["sklearn logistic top-1"]) == ("80.50 ± 1.25", "92.88")
    assert all(r[h] == "" for h in header[11:])  # a run has no transfer result
    b = by_target[str(folder)]
    assert all(b[h] == "" for h in header[6:11] + header[15:])  # no frozen result, no lora
    t = by_target[str(run / "transfer-lora" / "classifier")]
    # the folder sits in the run: its encoder's method, epochs and training minutes (90 s)
    assert (t["method"], t["encoder"], t["epochs"], t["train min"]) == ("simclr", "resnet18", "2", "1.5")
    assert t["lora 100% top-1"] == "72.00 ± 2.00"  # mean and sample sd of 70, 72, 74
    assert t["lora 100% top-5"] == "96.00 ± 1.00" and t["lora 10% top-1"] == f"42.00 ± {(14 / 2) ** 0.5:.2f}"
    assert t["lora trainable %"] == "3.50" and all(t[h] == "" for h in header[6:15])
    with open(csv_path, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == header and [dict(zip(header, c)) for c in written[1:]] == list(by_target.values())
    assert (tmp_path / "c.png").stat().st_size > 0


def test_top5_and_sklearn_columns_only_when_a_target_has_them(tmp_path, capsys):
    plain = frozen_row("run a", sklearn=False)
    del plain["linear"]["top5"]
    write_run(tmp_path / "a", [plain])
    write_run(tmp_path / "b", [frozen_row("run b")])
    assert main(["compare", str(tmp_path / "a")]) == 0
    header, _ = table(capsys.readouterr().out)
    assert "linear top-5" not in header and "sklearn logistic top-1" not in header
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    header, by_target = table(capsys.readouterr().out)
    a, b = by_target[str(tmp_path / "a")], by_target[str(tmp_path / "b")]
    assert (a["linear top-5"], a["sklearn logistic top-1"]) == ("", "")
    assert (b["linear top-5"], b["sklearn logistic top-1"]) == ("99.11 ± 0.05", "92.88")


def test_encoder_export_still_compares(tmp_path, capsys):
    card = {**ENCODER_CARD, "method": "simclr", "trained_epochs": 3, "training_minutes": 1.5,
            "results": {"SimCLR resnet18 (pretrained)": {"knn": {"k=20,T=0.07": {"top1": 50.0}}}}}
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "config.json").write_text(json.dumps(to_config_json(card)))
    (tmp_path / "exp" / "model.safetensors").write_bytes(b"")
    assert main(["compare", str(tmp_path / "exp")]) == 0
    header, by_target = table(capsys.readouterr().out)
    assert header == ["target", "method", "encoder", "data", "epochs", "train min", "kNN k=20,T=0.07"]
    assert list(by_target[str(tmp_path / "exp")].values())[1:] == ["simclr", "resnet18", "", "3", "1.5", "50.00"]


def test_what_is_no_transfer_folder_is_refused_in_one_line(tmp_path, bitfit, capsys):
    folder, _ = bitfit
    (folder / "results.json").unlink()
    assert main(["compare", str(folder / "classifier")]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "is the classifier of a transfer run" in err and "results.json is missing" in err
    (tmp_path / "ev").mkdir()  # a folder with no results.json at all (a frozen evaluation folder compares now)
    assert main(["compare", str(tmp_path / "ev")]) == 2
    assert "is neither a run directory" in one_line_error(capsys.readouterr().err)


# --------------------------------------------------------------------------- bar_chart

def drawn_axes(monkeypatch, *args, **kwargs):
    """The axes bar_chart draws (its figure captured before it is saved)."""
    seen = {}

    def keep(fig, out, rect=None):
        seen["ax"] = fig.axes[0]
        plots._pyplot().close(fig)
        return Path(out)

    monkeypatch.setattr(plots, "_save", keep)
    assert plots.bar_chart(*args, **kwargs) is not None
    return seen["ax"]


def error_segments(ax) -> list:
    from matplotlib.container import ErrorbarContainer

    return [seg for c in ax.containers if isinstance(c, ErrorbarContainer) for lc in c.lines[2]
            for seg in lc.get_segments()]


def test_bar_chart_starts_at_zero_and_draws_error_bars_only_where_there_is_spread(tmp_path, monkeypatch):
    ax = drawn_axes(monkeypatch, ["a", "b"], {"kNN": [80.0, 85.0], "linear": [82.0, 84.0]}, tmp_path / "x.png",
                    errors={"kNN": [None, 0.0], "linear": [0.5, None]})
    low, high = ax.get_ylim()
    assert low == 0.0 and high >= 85.0  # every bar whole, from 0
    segments = error_segments(ax)
    assert len(segments) == 1  # linear on "a" only: None and 0 are one seed, no spread
    (x0, y0), (x1, y1) = segments[0]
    assert (y0, y1) == pytest.approx((81.5, 82.5))
    # one seed everywhere (the compare table of single-seed runs): no error bar at all
    ax = drawn_axes(monkeypatch, ["a"], {"kNN": [60.0]}, tmp_path / "y.png", errors={"kNN": [None]})
    assert error_segments(ax) == [] and ax.get_ylim()[0] == 0.0


def test_bar_chart_tells_a_zero_bar_from_a_missing_value(tmp_path, monkeypatch):
    """A detection mAP of 0.00 drew a bar of height 0, which looked like the blank of a missing value:
    zero bars are marked "0" and missing ones "n/a", each at its own bar's position."""
    ax = drawn_axes(monkeypatch, ["run a", "run b"], {"kNN": [80.0, None], "mAP": [0.0, 12.5]}, tmp_path / "z.png")
    marks = sorted((t.get_text(), round(t.xy[0], 3)) for t in ax.texts)
    width = 0.8 / 2
    assert marks == [("0", round(0 + width / 2, 3)), ("n/a", round(1 - width / 2, 3))]
    ax = drawn_axes(monkeypatch, ["a"], {"kNN": [60.0]}, tmp_path / "y.png")
    assert len(ax.texts) == 0  # nothing to mark
    # helper-74's: the last group's missing bar fell outside the axes (they ended at the last bar drawn)
    ax = drawn_axes(monkeypatch, ["a", "b"], {"kNN": [80.0, 70.0], "linear": [82.0, None]}, tmp_path / "w.png")
    (mark,) = ax.texts
    assert mark.get_text() == "n/a" and ax.get_xlim()[0] <= mark.xy[0] <= ax.get_xlim()[1]
    assert ax.get_xlim() == (-0.5, 1.5)


def test_bar_chart_legend_covers_no_bar(tmp_path):
    """helper-62's: the legend sat inside the axes, over the tops of bars near the scale's top (accuracies of
    80-90 %, the usual case). It is drawn above the axes: its box meets no bar's in the saved figure."""
    import matplotlib.pyplot as plt

    kept = {}
    real_close = plt.close

    def keep(fig):  # the figure as saved (tight layout done), read before it is closed
        fig.canvas.draw()
        ax = fig.axes[0]
        kept["legend"] = ax.get_legend().get_window_extent()
        kept["bars"] = [p.get_window_extent() for p in ax.patches]
        real_close(fig)

    import unittest.mock

    with unittest.mock.patch.object(plt, "close", keep):
        plots.bar_chart(["run a", "run b", "random", "pixels"],
                        {"kNN k=20,T=0.07": [88.0, 91.0, 80.0, 86.0], "linear top-1": [90.0, 92.5, 81.0, 84.5],
                         "bitfit 100% top-1": [93.0, 94.0, None, None]}, tmp_path / "bars.png")
    assert len(kept["bars"]) == 12 and not any(kept["legend"].overlaps(bar) for bar in kept["bars"])


# --------------------------------------------------------------------------- transfer report

def test_transfer_table_says_why_frozen_cells_are_blank():
    from selfsup.transfer.report import transfer_markdown

    rows = [transfer_row("bitfit", 1.0, [10.5], [49.0], 0.72), transfer_row("bitfit", 0.5, [10.2], [50.0], 0.72)]
    for r in rows:
        r["trainable_params"] = 1328
    text = transfer_markdown("random:resnet18", rows, [])
    lines = text.splitlines()
    assert [[c.strip() for c in line.split("|")[-3:-1]] for line in lines if line.startswith("| bitfit")] == \
        [["", ""], ["", ""]]
    notes = [line for line in lines if line.startswith("- ")]
    assert len(notes) == 1 and "random:resnet18 has no frozen-feature evaluation" in notes[0]
    assert "`selfsup eval random:resnet18` with the same data options" in notes[0]
    # beside a run's frozen evaluation: filled where it has the number, a note for the low-shot probe it lacks
    frozen = [frozen_row("run simclr")]
    text = transfer_markdown("runs/x", rows, frozen)
    filled = [line for line in text.splitlines() if line.startswith("| bitfit | 100%")][0]
    assert filled.endswith("| 93.46 ± 0.32 | 91.23 |")
    notes = [line for line in text.splitlines() if line.startswith("- ")]
    assert any("blank at 50% of labels" in n and "eval.low_shot" in n for n in notes)
    assert any("all labels only" in n for n in notes)
    no_knn = [{**frozen_row("run simclr"), "knn": {}}]  # evaluated without kNN
    notes = [line for line in transfer_markdown("runs/x", rows[:1], no_knn).splitlines() if line.startswith("- ")]
    assert len(notes) == 1 and "no kNN result" in notes[0] and "eval.knn" in notes[0]
    # every frozen cell filled: no note
    assert "\n- " not in transfer_markdown("runs/x", rows[:1], frozen)
    # with 5 classes or fewer the top-5 column is 100 by construction, and the table says so (as results.md)
    few = transfer_markdown("runs/x", [{**rows[0], "num_classes": 4}], frozen)
    assert "\n- With 4 classes a top-5 prediction holds every class: top-5 is 100 by construction" in few
    assert "by construction" not in transfer_markdown("runs/x", [{**rows[0], "num_classes": 6}], frozen)


# --------------------------------------------------------------------------- selfsup config: --transfer options

def test_transfer_keys_are_the_dataclass_fields():
    """selfsup config's --transfer options are TransferOptions' fields (less protocol and given) plus the
    CLI's lr shorthand, each with its type, default (the run config's key for low_shot, seeds and seed)
    and a help string naming the protocols it applies to."""
    from selfsup.configkeys import transfer_keys
    from selfsup.transferconfig import APPLIES_TO, TransferOptions

    fields = {f.name: f for f in dataclasses.fields(TransferOptions)}
    hints = typing.get_type_hints(TransferOptions)
    keys = {k.key: k for k in transfer_keys()}
    assert list(keys) == [n for n in fields if n not in ("protocol", "given")][:3] + ["lr"] + [
        n for n in fields if n not in ("protocol", "given")][3:]
    from_eval = {"low_shot": "eval.low_shot", "seeds": "eval.probe_seeds", "seed": "seed"}
    for name, k in keys.items():
        if name == "lr":
            assert (k.type, k.range) == ("float", "> 0")
            continue
        f = fields[name]
        assert k.type == (hints[name].__name__ if isinstance(hints[name], type) else str(hints[name])), name
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert k.default == from_eval[name] if name in from_eval else yaml.safe_load(k.default) == value, name
        assert k.help and all(p in k.help for p in APPLIES_TO.get(name, ())), name


def _violations(type_: str, bound: str, each: bool) -> tuple:
    """(bad value, good value) of one range bound ("> 0", ">= 1", ...; ``each``: of a list's items)."""
    sym, num = bound.split(" ")
    v = float(num)
    step = 1 if type_ == "int" else 0.01
    bad, good = {">": (v, v + step), ">=": (v - step, v), "<": (v, v - step), "<=": (v + step, v)}[sym]
    cast = int if type_ == "int" else float
    return ([cast(bad)], [cast(good)]) if each else (cast(bad), cast(good))


def test_transfer_option_ranges_are_what_the_options_refuse():
    from selfsup.config import ConfigError
    from selfsup.configkeys import transfer_keys
    from selfsup.transfer.options import TransferOptions

    checked = 0
    for k in transfer_keys():
        name, type_, bounds = k.key, k.type.removeprefix("list[").removesuffix("]"), k.range
        field = "lrs" if name == "lr" else name
        for bound in filter(None, bounds.removeprefix("each ").split(", ")):
            bad, good = _violations(type_, bound, bounds.startswith("each "))
            if name == "lr":
                bad, good = [bad], [good]
            TransferOptions(**{field: good})
            with pytest.raises(ConfigError, match=field):
                TransferOptions(**{field: bad})
            checked += 1
    assert checked >= 20


def test_config_lists_the_transfer_options(capsys):
    from selfsup.configkeys import TRANSFER_HEADING, transfer_keys

    assert main(["config", "transfer"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == TRANSFER_HEADING and "--transfer KEY=VALUE" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == [k.key for k in transfer_keys()]
    rank = "lora_rank: int = 8 (>= 1)  LoRA rank r (lora only; Hu et al.: r in {1, 2, 4, 8, 64})"
    assert rank in lines and "lrs: list[float] = [0.001] (each > 0)  peak learning rates tried" in " ".join(lines)
    assert main(["config", "transfer.lora_rank"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [rank]
    assert main(["config", "optim"]) == 0
    assert TRANSFER_HEADING not in capsys.readouterr().out
    assert main(["config"]) == 0  # every key: the run config's, then the --transfer options
    everything = capsys.readouterr().out.splitlines()
    assert everything[everything.index(TRANSFER_HEADING) + 1:] == lines[1:]
    assert main(["config", "transfr"]) == 2
    assert "did you mean transfer" in one_line_error(capsys.readouterr().err)


def test_config_transfer_imports_no_torch():
    from test_cli_fast import RUN_MAIN, fresh

    res = fresh(RUN_MAIN, json.dumps(["config", "transfer"]))
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0 and out["heavy"] == [], out


def test_transfer_table_says_what_train_images_counts():
    """With held-out sizes in the rows, a note says the lr is chosen on them and the model kept is the one
    trained on the rest (no refit on the whole subset)."""
    from selfsup.transfer.report import transfer_markdown

    rows = [transfer_row("bitfit", 1.0, [10.5], [49.0], 0.72), transfer_row("bitfit", 0.5, [10.2], [50.0], 0.72)]
    for r, val in zip(rows, (30, 15)):
        r.update(trainable_params=1328, val_images=val)
    notes = [line for line in transfer_markdown("runs/x", rows, [frozen_row("run simclr")]).splitlines()
             if line.startswith("- Train images")]
    assert notes == ["- Train images: the labelled subset. Each lr trains on it less a held-out share (100%: 30, "
                     "50%: 15 images) that chooses the lr, and the chosen model is the one reported (no refit on the "
                     "whole subset, unlike the linear probe)."]


def test_rows_of_different_data_are_labelled_and_flagged():
    """The tour's: compare put a 3-class image-folder run beside a digits run with nothing to tell them apart.
    The data column names each row's data, and the table says when they differ."""
    from selfsup.compare import Entry, markdown, table_rows

    KNN = {"k=20,T=0.07": {"top1": 50.0}}  # noqa: N806
    a = Entry("runs/a", "simclr", "resnet18", rows=[{"label": "a", "kind": "pretrained", "dataset": "digits",
                                                    "train_images": 300, "test_images": 360, "knn": KNN}])
    b = Entry("runs/b", "simclr", "resnet18", rows=[{"label": "b", "kind": "transfer", "transfer": [
        {"protocol": "bitfit", "fraction": 1.0, "dataset": "image-folder", "train_images": 9, "test_images": 6,
         "top1": 100.0, "top1_std": 0.0, "top5": 100.0, "top5_std": 0.0, "trainable_pct": 1.0}]}])
    old = Entry("runs/old", "simclr", "resnet18", rows=[{"label": "old", "kind": "pretrained", "knn": KNN}])
    header, cells = table_rows([a, b, old])
    assert [c[header.index("data")] for c in cells] == ["digits (300/360)", "image-folder (9/6)", ""]
    assert markdown(header, cells).endswith("\nNote: these rows were measured on different data (digits (300/360); "
                                            "image-folder (9/6)): numbers of different data do not compare.\n")
    assert "Note:" not in markdown(*table_rows([a, old]))
    from selfsup.compare import differ

    assert not differ({"digits (300/360)", "digits"}) and differ({"digits (300/360)", "digits (100/360)"})


def test_frozen_evaluation_folders_compare(tmp_path, capsys):
    """The tour's: `selfsup eval` output folders were refused by compare. A run's evaluation on other data
    (RUN/eval-<data>-<hash>) takes the run's method, encoder, epochs and minutes; a baseline evaluated
    alone (runs/eval/random-resnet18/...) is its own row, labelled by folder and baseline, listed once
    with --baselines; a folder of anything else is still refused in one line."""
    run = write_run(tmp_path / "run", [frozen_row("run run")])
    other = run / "eval-digits-abc"
    other.mkdir()
    (other / "results.json").write_text(json.dumps([frozen_row("run run"), frozen_row("raw pixels", "pixels")]))
    alone = tmp_path / "runs" / "eval" / "random-resnet18" / "eval-1"
    alone.mkdir(parents=True)
    random_row = frozen_row("random-init resnet18", "random")
    random_row["knn"]["k=20,T=0.07"]["top1"] = 55.5
    (alone / "results.json").write_text(json.dumps([random_row]))
    assert main(["compare", str(run), str(other), str(alone), "--baselines"]) == 0
    header, by_target = table(capsys.readouterr().out)
    o = by_target[str(other)]
    assert (o["method"], o["encoder"], o["epochs"], o["train min"]) == ("simclr", "resnet18", "2", "1.5")
    assert o["linear top-1"] == "93.46 ± 0.32"
    r = by_target[f"{alone} (random-init resnet18)"]
    assert (r["method"], r["encoder"], r["epochs"]) == ("", "", "") and r["kNN k=20,T=0.07"] == "55.50"
    assert list(by_target).count(f"{alone} (random-init resnet18)") == 1 and "raw pixels" in by_target
    # a run evaluated only on other data: the error names the folder that compare can read
    bare = write_run(tmp_path / "bare", None)
    (bare / "eval-digits-x").mkdir()
    (bare / "eval-digits-x" / "results.json").write_text(json.dumps([frozen_row("run bare")]))
    assert main(["compare", str(bare)]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(f"has no results.json of its own: run selfsup eval "
                                                            f"{bare}, or compare its evaluation folder: "
                                                            f"{bare / 'eval-digits-x'}")
    # helper-74's: a run of one class (or unlabeled) was told to run `selfsup eval RUN`, which cannot score it
    for classes, has in ((1, "one class"), (0, "no labels")):
        (bare / "data_info.json").write_text(json.dumps({"in_chans": 3, "image_size": 16, "num_classes": classes,
                                                         "mean": [0.5] * 3, "std": [0.2] * 3, "num_samples": 9}))
        assert main(["compare", str(bare)]) == 2
        assert one_line_error(capsys.readouterr().err).endswith(
            f"has no results.json of its own: run selfsup eval {bare} data.root=LABELLED_FOLDER (a folder of class "
            f"subfolders: the run's own data has {has}, nothing to score), or compare its evaluation folder: "
            f"{bare / 'eval-digits-x'}")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.json").write_text(json.dumps({"not": "rows"}))
    assert main(["compare", str(tmp_path / "junk")]) == 2  # helper-66's: named as a damaged results.json
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {tmp_path / 'junk' / 'results.json'} is not a list of result objects (edited or "
        f"cut short?): evaluate again into a fresh folder, or restore the file")
    (tmp_path / "junk" / "results.json").write_text(json.dumps([{"top1": 5}]))  # rows, but of nothing selfsup writes
    assert main(["compare", str(tmp_path / "junk")]) == 2
    assert "holds rows without the label and kind" in one_line_error(capsys.readouterr().err)
    (tmp_path / "empty").mkdir()  # no results.json at all: not an evaluation folder
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert one_line_error(capsys.readouterr().err).endswith("give what selfsup pretrain, selfsup export or selfsup "
                                                            "eval wrote")


def test_two_different_baselines_under_one_label_are_both_listed(tmp_path, capsys):
    """The second tour's: `random-init resnet18` beside a slim run (its kwargs) and beside a full-width one
    are different encoders under one label; --baselines kept the first and hid the other. Both are listed,
    each saying which target it was evaluated beside; the same row beside two targets stays one row."""
    slim, full, again = (frozen_row("random-init resnet18", "random") for _ in range(3))
    slim["knn"]["k=20,T=0.07"]["top1"], full["knn"]["k=20,T=0.07"]["top1"] = 46.11, 82.22
    a = write_run(tmp_path / "a", [frozen_row("run a"), slim, frozen_row("raw pixels", "pixels")])
    b = write_run(tmp_path / "b", [frozen_row("run b"), full, frozen_row("raw pixels", "pixels")])
    assert main(["compare", str(a), str(b), "--baselines"]) == 0
    _, by_target = table(capsys.readouterr().out)
    assert by_target[f"random-init resnet18 (beside {a})"]["kNN k=20,T=0.07"] == "46.11"
    assert by_target[f"random-init resnet18 (beside {b})"]["kNN k=20,T=0.07"] == "82.22"
    assert "raw pixels" in by_target and len(by_target) == 5  # the identical pixel rows: one
    again["knn"]["k=20,T=0.07"]["top1"] = 46.11
    c = write_run(tmp_path / "c", [frozen_row("run c"), again])
    assert main(["compare", str(a), str(c), "--baselines"]) == 0
    _, by_target = table(capsys.readouterr().out)
    assert "random-init resnet18" in by_target and len(by_target) == 4  # the same random row beside both: once


def test_an_output_under_a_file_is_refused_before_anything_is_read(tmp_path, capsys):
    """The third tour's: --csv FILE/x.csv ended in FileExistsError after the table was printed."""
    run = write_run(tmp_path / "run", [frozen_row("run run")])
    blocker = run / "results.json"
    for flag, name in (("--csv", "x.csv"), ("--plot", "x.png")):
        assert main(["compare", str(run), flag, str(blocker / name)]) == 2
        captured = capsys.readouterr()
        assert one_line_error(captured.err).endswith(f"{flag} {blocker / name}: {blocker} is a file, so no folder can "
                                                     f"be made there: give a path under a folder")
        assert captured.out == ""


def test_warnings_travel_with_their_numbers(tmp_path, capsys):
    """A transfer row written with a diverged lr and a frozen row with a too small low-shot subset: compare showed
    their numbers without the warnings results.md had under them. Now notes under the table, each naming its
    target, and a last CSV column (one warning per line); a table with no warning has no such column."""
    diverged = "at the 100% row, lr 30.0 diverged (seed 0) and was left out of the choice"
    fit = transfer_row("linear", 1.0, [71.0], [95.0], 0.1)
    write_transfer(tmp_path / "tr", [{**fit, "warnings": [diverged]}])
    small = "the 10% subset holds 9 images, fewer than one per class: its probe is a guess"
    row = frozen_row("run a")
    row["warnings"] = [small]
    row["knn_index"] = {"warnings": ["IVF index: approximate neighbours"]}
    write_run(tmp_path / "a", [row])
    write_run(tmp_path / "b", [frozen_row("run b")])
    csv_path = tmp_path / "t.csv"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "tr"), str(tmp_path / "b"), "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    header, by_target = table(out)
    assert "warnings" not in header and set(by_target) == {str(tmp_path / p) for p in ("a", "tr", "b")}
    notes = [line for line in out.splitlines() if line.startswith("- **Warning**")]  # a markdown list
    assert notes == [f"- **Warning** ({tmp_path / 'a'}): {small}",
                     f"- **Warning** ({tmp_path / 'a'}): IVF index: approximate neighbours",
                     f"- **Warning** ({tmp_path / 'tr'}): {diverged}"]
    written = {r["target"]: r for r in csv.DictReader(csv_path.open())}
    assert written[str(tmp_path / "a")]["warnings"].splitlines() == [small, "IVF index: approximate neighbours"]
    assert (written[str(tmp_path / "tr")]["warnings"], written[str(tmp_path / "b")]["warnings"]) == (diverged, "")
    assert main(["compare", str(tmp_path / "b"), "--csv", str(csv_path)]) == 0
    assert "**Warning**" not in capsys.readouterr().out and "warnings" not in csv_path.read_text().splitlines()[0]


def test_compare_shows_the_size_each_encoder_saw_and_notes_different_sizes(tmp_path, capsys):
    """helper-55's: compare put rows evaluated at 16, 20 and 12 px side by side with nothing to say so. A px
    column (when any row records image_size) and a note when the sizes differ; rows written before the key
    leave it blank; rows of one size get the column but no note."""
    at16 = write_run(tmp_path / "r16", [{**frozen_row("a"), "image_size": 16}])
    at20 = write_run(tmp_path / "r20", [{**frozen_row("b"), "image_size": 20}])
    old = write_run(tmp_path / "old", [frozen_row("c")])
    assert main(["compare", str(at16), str(at20), str(old), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    header, by_target = table(out)
    assert header[3:6] == ["data", "px", "epochs"]
    assert [by_target[str(p)]["px"] for p in (at16, at20, old)] == ["16", "20", ""]
    assert "Note: these rows' encoders saw the images at different sizes (16, 20 px, the px column)" in out
    with open(tmp_path / "t.csv") as f:
        assert [r["px"] for r in csv.DictReader(f)] == ["16", "20", ""]
    assert main(["compare", str(at16), str(old)]) == 0
    out = capsys.readouterr().out
    assert table(out)[0][4] == "px" and "different sizes" not in out
    assert main(["compare", str(old)]) == 0
    assert "px" not in table(capsys.readouterr().out)[0]  # no row says: no column


def test_transfers_of_one_protocol_with_other_options_say_which(tmp_path, capsys):
    """helper-56's: two bitfit folders, epochs=1 and epochs=2, compared as two rows that differed only in their
    folder names. A "bitfit options" column names the options that differ (only those), blank for rows
    written without options; none when the options agree."""
    base = {"lrs": [0.003], "epochs": 1, "batch_size": 64}
    one = write_transfer(tmp_path / "t1", [{**transfer_row("bitfit", 1.0, [50.0], [90.0], 0.7), "options": base}])
    two = write_transfer(tmp_path / "t2", [{**transfer_row("bitfit", 1.0, [52.0], [91.0], 0.7),
                                            "options": {**base, "epochs": 2}}])
    old = write_transfer(tmp_path / "t3", [transfer_row("bitfit", 1.0, [51.0], [90.5], 0.7)])
    assert main(["compare", str(one), str(two), str(old)]) == 0
    header, by_target = table(capsys.readouterr().out)
    assert header[-1] == "bitfit options"
    assert [by_target[str(p)]["bitfit options"] for p in (one, two, old)] == ["epochs=1", "epochs=2", ""]
    same = write_transfer(tmp_path / "t4", [{**transfer_row("bitfit", 1.0, [50.0], [90.0], 0.7), "options": base}])
    assert main(["compare", str(one), str(same)]) == 0
    assert "bitfit options" not in table(capsys.readouterr().out)[0]


def test_an_evaluation_folder_whose_results_json_is_unreadable_says_so(tmp_path, capsys):
    """helper-57's: compare of a folder with a hand-broken results.json said it was "neither a run directory ...
    nor an evaluation folder"; it names the unreadable file."""
    folder = write_transfer(tmp_path / "t", [transfer_row("bitfit", 1.0, [50.0], [90.0], 0.7)])
    (folder / "results.json").write_text('[{"protocol": "bitfit", ')
    assert main(["compare", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder / 'results.json'} is not readable JSON" in err, err


def detection_row(label: str, kind: str, mean_ap: float, epochs: int = 4, **extra) -> dict:
    """A results.json row of `selfsup eval TARGET --task detection` (the keys compare reads)."""
    return {"target": label, "label": label, "kind": kind, "task": "detection", "dataset": "deepforest",
            "train_images": 40, "test_images": 10, "map": mean_ap, "ap50": mean_ap + 20.0, "ap75": mean_ap - 5.0,
            "image_size": 128, "epochs": epochs, "trainable_layers": 0, "deformable": False, "batch_size": 4,
            "lr": 0.02, "seed": 0, **extra}


def test_detection_folders_compare_by_their_map_and_name_settings_that_differ(tmp_path, capsys):
    """A detection folder (RUN/detection/<data>-<hash>) compared as a row of nothing: every cell blank, no error.
    It now gives its mAP, AP50 and AP75 (the run it sits in: method, epochs), its random baseline with
    --baselines, and a column naming the detection settings that differ between two folders."""
    run = write_run(tmp_path / "run", [frozen_row("run run")])
    first = run / "detection" / "deepforest-aaaa"
    first.mkdir(parents=True)
    (first / "results.json").write_text(json.dumps([detection_row("run", "pretrained", 31.256),
                                                    detection_row("random-init resnet18", "random", 12.5)]))
    second = run / "detection" / "deepforest-bbbb"
    second.mkdir()
    (second / "results.json").write_text(json.dumps([detection_row("run", "pretrained", 35.0, epochs=8)]))
    assert main(["compare", str(run), str(first), str(second), "--baselines"]) == 0
    header, by_target = table(capsys.readouterr().out)
    assert [t for t in by_target if "random" in t] == ["random-init resnet18"]
    assert header[-4:] == ["detection mAP", "detection AP50", "detection AP75", "detection settings"]
    f, s = by_target[str(first)], by_target[str(second)]
    assert (f["method"], f["epochs"], f["px"], f["detection mAP"], f["detection AP50"], f["detection AP75"]) == \
        ("simclr", "2", "128", "31.26", "51.26", "26.26")
    assert (f["detection settings"], s["detection settings"]) == ("epochs=4", "epochs=8")
    assert by_target["random-init resnet18"]["detection mAP"] == "12.50"
    assert by_target[str(run)]["detection mAP"] == "" and by_target[str(run)]["linear top-1"] == "93.46 ± 0.32"
    # the same baseline label and mAP trained for other epochs: two baselines, each beside its folder (one was
    # dropped: the rows' kNN and probe numbers, both none, were all that told baselines apart)
    (second / "results.json").write_text(json.dumps([detection_row("run", "pretrained", 35.0, epochs=8),
                                                     detection_row("random-init resnet18", "random", 12.5, epochs=8)]))
    assert main(["compare", str(first), str(second), "--baselines"]) == 0
    _, by_target = table(capsys.readouterr().out)
    assert {t: c["detection settings"] for t, c in by_target.items() if "random" in t} == {
        f"random-init resnet18 (beside {first})": "epochs=4", f"random-init resnet18 (beside {second})": "epochs=8"}
    # helper-61's: settings the row's own fields do not hold (fpn_channels) tell two baselines apart too
    for folder, channels in ((first, 16), (second, 8)):
        rows = [detection_row("run", "pretrained", 31.0), detection_row("random-init resnet18", "random", 12.5)]
        (folder / "results.json").write_text(json.dumps([{**r, "detection_settings": {"fpn_channels": channels,
                                                                                      "epochs": 4}} for r in rows]))
    assert main(["compare", str(first), str(second), "--baselines"]) == 0
    _, by_target = table(capsys.readouterr().out)
    assert {t: c["detection settings"] for t, c in by_target.items() if "random" in t} == {
        f"random-init resnet18 (beside {first})": "fpn_channels=16", f"random-init resnet18 (beside {second})":
        "fpn_channels=8"}
    # one folder alone: no settings column (nothing differs)
    assert main(["compare", str(second)]) == 0
    header, _ = table(capsys.readouterr().out)
    assert header[-1] == "detection AP75"


def test_a_result_holding_no_number_compare_reads_is_named(tmp_path, capsys):
    """A results.json of rows compare reads nothing from (another task's, edited) gave a row of blank cells and
    exit 0; it is an error naming the target and its row."""
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps([{"label": "mine", "kind": "pretrained", "task": "segment"}]))
    assert main(["compare", str(folder)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {folder}: its result 'mine' holds none of the numbers compare reads (kNN, linear "
        f"probes, transfer, detection mAP): give a run, export or evaluation folder of selfsup eval")


def test_a_result_of_older_weights_shows_no_epochs_of_the_weights_now(tmp_path, capsys):
    """After a resume trained on, a run's results.json of its older weights was warned, yet its row showed the
    run's epochs and minutes now, which are not those weights'. Those cells are blank; a fresh row keeps them."""
    old = {**frozen_row("run run"), "trained_steps": 10}
    run = write_run(tmp_path / "run", [old])
    (run / "training_time.json").write_text(json.dumps({"seconds": 90.0, "epochs": 2, "steps": 20}))
    fresh = write_run(tmp_path / "fresh", [{**frozen_row("run fresh"), "trained_steps": 20}])
    (fresh / "training_time.json").write_text(json.dumps({"seconds": 90.0, "epochs": 2, "steps": 20}))
    assert main(["compare", str(run), str(fresh)]) == 0
    out = capsys.readouterr().out
    _, by_target = table(out)
    assert (by_target[str(run)]["epochs"], by_target[str(run)]["train min"]) == ("", "")
    assert (by_target[str(fresh)]["epochs"], by_target[str(fresh)]["train min"]) == ("2", "1.5")
    assert f"measured on {run}'s weights after 10 optimiser steps; the run has trained to 20 since" in out
    # a result read while the run was still training (its own warning says so): no epochs of the weights now
    (run / "results.json").write_text(json.dumps([{**frozen_row("run run"), "mid_training": True}]))
    assert main(["compare", str(run)]) == 0
    _, by_target = table(capsys.readouterr().out)
    assert (by_target[str(run)]["epochs"], by_target[str(run)]["train min"]) == ("", "")


def test_a_row_records_the_steps_of_a_run_and_nothing_of_other_targets(tmp_path):
    """weights_record: what a frozen or detection result row keeps to tell, after a resume, whose weights it
    measured: a run's steps and its resolved path; nothing for a baseline, an export or a run without steps."""
    from selfsup.rundir import weights_record

    run = write_run(tmp_path / "run", None)
    assert weights_record(str(run), "pretrained") == {}  # training_time.json without "steps" (written before)
    (run / "training_time.json").write_text(json.dumps({"seconds": 9.0, "epochs": 1, "steps": 7}))
    assert weights_record(str(run), "pretrained") == {"trained_steps": 7, "target_path": str(run.resolve())}
    assert weights_record("random:resnet18", "random") == weights_record("pixels", "pixels") == {}
    (tmp_path / "export").mkdir()
    assert weights_record(str(tmp_path / "export"), "pretrained") == {}


def test_an_evaluation_folder_that_stopped_after_extracting_says_so(tmp_path, capsys):
    """A folder of an evaluation interrupted after its feature extraction (features/, no results.json) was
    "neither a run directory nor ..."; it is named as an unfinished evaluation, with what to do."""
    folder = tmp_path / "eval-x"
    (folder / "features").mkdir(parents=True)
    assert main(["compare", str(folder)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {folder} holds cached features but no results.json: its evaluation did not "
        f"finish; run the selfsup eval command that made it again (the features are reused)")
    done = tmp_path / "eval-x-1234abcd"  # RUN/eval-<data> is the cache its evaluation folders share
    done.mkdir()
    (done / "results.json").write_text(json.dumps([frozen_row("run run")]))
    assert main(["compare", str(folder)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {folder} is the feature cache of the evaluations on that data; compare their "
        f"folder: {done}")


NOT_NUMBERS = [(None, "null"), ("91", '"91"'), (True, "true"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
               (float("-inf"), "-Infinity"), ([91.0], "[91.0]")]


@pytest.mark.parametrize("value, shown", NOT_NUMBERS)
@pytest.mark.parametrize("where", ["knn", "linear.top1", "linear.top1_std", "linear_sklearn", "detection map",
                                   "transfer top1", "transfer trainable_pct"])
def test_a_value_where_a_number_belongs_that_is_not_a_finite_one_is_named(tmp_path, capsys, value, shown, where):
    """helper-60's: `"top1": null` raised a TypeError traceback; helper-62's: `true` was shown as 1.00 and NaN or
    infinity as "nan" / "inf", numbers no evaluation wrote. Each is an error naming the key and the value, in
    every kind of cell compare reads (kNN, probe mean and sd, scikit-learn, detection, transfer)."""
    folder = tmp_path / "x"
    folder.mkdir()
    row = {"label": "run x", "kind": "pretrained", "knn": {"k=3,T=0.1": {"top1": 91.0}}}
    key = {"knn": 'knn["k=3,T=0.1"].top1', "linear.top1": "linear.top1", "linear.top1_std": "linear.top1_std",
           "linear_sklearn": "linear_sklearn.top1", "detection map": "map",
           "transfer top1": "transfer[bitfit].top1",
           "transfer trainable_pct": "transfer[bitfit].trainable_pct"}[where]
    if where == "knn":
        row["knn"]["k=3,T=0.1"]["top1"] = value
    elif where.startswith("linear."):
        row["linear"] = {"top1": 90.0, "top1_std": 0.5, "seeds": 3, "fraction": 1.0, where.split(".")[1]: value}
    elif where == "linear_sklearn":
        row["linear_sklearn"] = {"top1": value}
    elif where == "detection map":
        row = {"label": "run x", "kind": "pretrained", "task": "detection", "map": value, "ap50": 40.0}
    else:
        t = transfer_row("bitfit", 1.0, [80.0, 82.0], [99.0, 99.5], 0.5)
        t[where.split()[1]] = value
        write_transfer(folder, [t])
    if not where.startswith("transfer"):
        (folder / "results.json").write_text(json.dumps([row]))
    if where == "linear.top1_std" and value is None:  # no sd recorded: the mean alone, as results.md shows it
        assert main(["compare", str(folder)]) == 0
        assert table(capsys.readouterr().out)[1][str(folder)]["linear top-1"] == "90.00"
        return
    assert main(["compare", str(folder)]) == 2
    label = "bitfit" if where.startswith("transfer") else "run x"
    want = "a spread in [0, 100]" if where.endswith("_std") else "a share in percent >= 0" \
        if where.endswith("trainable_pct") else "a percentage in [0, 100]"
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {folder / 'results.json'}: result '{label}' holds {key} = {shown}, where selfsup "
        f"writes {want}: its results.json was edited or cut short; evaluate it again")


@pytest.mark.parametrize("edit, key, shown, want", [
    ({"knn": {"k=3,T=0.1": 91.0}}, 'knn["k=3,T=0.1"]', "91.0", "an object of numbers"),
    ({"knn": None}, "knn", "null", "an object of kNN results"),
    ({"linear": None}, "linear", "null", "an object of numbers"),
    ({"linear": [1]}, "linear", "[1]", "an object of numbers"),
    ({"linear_sklearn": 5}, "linear_sklearn", "5", "an object of numbers"),
    ({"linear": {"top1": -1.0}}, "linear.top1", "-1.0", "a percentage in [0, 100]"),
    ({"linear": {"top1": 150}}, "linear.top1", "150", "a percentage in [0, 100]"),
    ({"linear": {"top1": 1e308}}, "linear.top1", "1e+308", "a percentage in [0, 100]"),
    ({"linear": {"top1": 50.0, "top1_std": -3}}, "linear.top1_std", "-3", "a spread in [0, 100]"),
    ({"linear_10pct": {"top1": 50.0, "fraction": "0.1"}}, "linear_10pct.fraction", '"0.1"',
     "a labelled fraction in (0, 1]"),
    ({"linear": {"top1": 50.0, "seeds": "1"}}, "linear.seeds", '"1"', "a seed count: an integer >= 1"),
    ({"warnings": "lr diverged"}, "warnings", '"lr diverged"', "a list of warnings (text)"),
    ({"warnings": 5}, "warnings", "5", "a list of warnings (text)"),
    ({"knn_index": [1]}, "knn_index", "[1]", "an object describing the kNN index"),
    ({"knn_index": {"warnings": "x"}}, "knn_index.warnings", '"x"', "a list of warnings (text)"),
    ({"transfer": 5}, "transfer", "5", "a list of transfer results"),
])
def test_a_result_not_laid_out_as_selfsup_writes_is_named_not_a_traceback(tmp_path, capsys, edit, key, shown, want):
    """helper-66's: hand-edited results.json values gave tracebacks (knn or linear null, a warnings string split
    into one warning per letter, a text fraction), or printed as numbers no evaluation writes (-1, 150, 1e308, a
    negative spread). Each is one line naming the file, the row, the key and the value."""
    folder = tmp_path / "x"
    folder.mkdir()
    row = {"label": "run x", "kind": "pretrained", "knn": {"k=3,T=0.1": {"top1": 91.0}}, **edit}
    (folder / "results.json").write_text(json.dumps([row]))
    assert main(["compare", str(folder)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {folder / 'results.json'}: result 'run x' holds {key} = {shown}, where selfsup "
        f"writes {want}: its results.json was edited or cut short; evaluate it again")


FROZEN_FIELDS = {"num_classes": 10, "train_images": 200, "test_images": 400, "train_unlabeled_left_out": 0,
                 "feature_dim": 64, "image_size": 16, "data_image_size": 16, "trained_steps": 2, "seconds": 1.5,
                 "label_free": {"rankme": 11.5, "uniformity": -0.23, "spread": 0.07, "rows": 400},
                 "knn_index": {"kind": "exact", "rows": 200, "dim": 64, "k": 20, "seconds": 0.03, "warnings": []}}


def numbered_row(where: str, value: object) -> tuple[dict, str]:
    """A frozen row with every numeric field selfsup writes (:data:`FROZEN_FIELDS`, probes with their counts and
    per-seed numbers), ``where`` (a dotted key, "transfer.KEY" for a transfer row's) set to ``value``; and the file
    compare reads it from (results.json)."""
    row = {**frozen_row("run x"), **json.loads(json.dumps(FROZEN_FIELDS))}
    # accuracies that agree with each other: whole numbers of the 400 test images (multiples of 0.25), each
    # mean and sample standard deviation those of its seeds' values
    row["knn"]["k=20,T=0.07"]["top1"], row["linear_sklearn"]["top1"] = 91.25, 92.75
    row["linear"].update(train_images=200, val_images=20, val_top1=75.0, top1=93.5, top1_std=0.5,
                         top1_per_seed=[93.0, 93.5, 94.0])
    row["linear_10pct"].update(train_images=21, val_images=2, val_top1=None, top1_per_seed=[79.25, 80.5, 81.75])
    if where.startswith("transfer."):
        t = transfer_row("bitfit", 1.0, [80.0, 82.0], [99.0, 99.5], 0.5)
        t.update(num_classes=10, val_images=10, val_top1=81.0, processes=1, test_images=400, image_size=16)
        t[where.split(".", 1)[1]] = value
        return t, "transfer"
    *path, last = where.split(".")
    holder = row
    for key in path:
        holder = holder[key]
    holder[last] = value
    return row, "frozen"


OFF_GRID = [80.5 + 1.25 * z / 1.03 ** 0.5 for z in (-1.1, 0.2, 0.9)]  # z: mean 0, sum of squares 2 x 1.03


def test_a_result_with_every_numeric_field_selfsup_writes_compares(tmp_path, capsys):
    """The rows the range checks below edit are read as written: their values are all in range."""
    row, _ = numbered_row("linear.top1", 93.5)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.json").write_text(json.dumps([row]))
    assert main(["compare", str(tmp_path / "x")]) == 0
    assert table(capsys.readouterr().out)[1][str(tmp_path / "x")]["linear top-1"] == "93.50 ± 0.50"
    t, _ = numbered_row("transfer.top1", 81.0)
    write_transfer(tmp_path / "t", [t])
    assert main(["compare", str(tmp_path / "t")]) == 0


@pytest.mark.parametrize("where, value, shown, want", [
    ("linear.fraction", 0, "0", "a labelled fraction in (0, 1]"),  # helper-73's: fraction 0 was read
    ("linear_10pct.fraction", -0.1, "-0.1", "a labelled fraction in (0, 1]"),
    ("linear_10pct.fraction", 1.5, "1.5", "a labelled fraction in (0, 1]"),
    ("train_images", -5, "-5", "a count: an integer >= 0"),  # helper-73's: negative train_images was read
    ("train_images", 2.5, "2.5", "a count: an integer >= 0"),
    ("test_images", "360", '"360"', "a count: an integer >= 0"),
    ("train_unlabeled_left_out", -1, "-1", "a count: an integer >= 0"),
    ("num_classes", 1, "1", "a class count: an integer >= 2"),  # helper-73's: num_classes was not checked
    ("num_classes", 10.0, "10.0", "a class count: an integer >= 2"),
    ("num_classes", True, "true", "a class count: an integer >= 2"),
    ("feature_dim", 0, "0", "a feature dimension: an integer >= 1"),
    ("image_size", -16, "-16", "a side length in px: an integer >= 1"),
    ("data_image_size", None, "null", "a side length in px: an integer >= 1"),
    ("trained_steps", -3, "-3", "an optimiser step count: an integer >= 0"),
    ("seconds", -1.5, "-1.5", "a duration >= 0"),
    ("linear.train_images", -200, "-200", "a count: an integer >= 0"),
    ("linear.val_images", 2.5, "2.5", "a count: an integer >= 0"),
    ("linear.val_top1", 175.0, "175.0", "a percentage in [0, 100]"),
    ("linear.seeds", 0, "0", "a seed count: an integer >= 1"),
    ("linear.top1_per_seed", 93.0, "93.0", "a list of percentages, one per seed"),
    ("linear_10pct.top1_per_seed", [80.0, -2.0], "-2.0", "a percentage in [0, 100]"),
    ("label_free.rows", -360, "-360", "a count of test features: an integer >= 0"),
    ("label_free.rankme", -1.0, "-1.0", "a number >= 0"),
    ("label_free.uniformity", 0.5, "0.5", "a log-mean (uniformity): a number <= 0"),
    ("knn_index.rows", -200, "-200", "a count or duration >= 0"),
    ("transfer.fraction", 0.0, "0.0", "a labelled fraction in (0, 1]"),
    ("transfer.train_images", -100, "-100", "a count: an integer >= 0"),
    ("transfer.num_classes", 1, "1", "a class count: an integer >= 2"),
    ("transfer.seeds", 0, "0", "a seed count: an integer >= 1"),
    ("transfer.minutes", -0.1, "-0.1", "a duration >= 0"),
    ("transfer.trainable_params", -1328, "-1328", "a count: an integer >= 0"),
    ("transfer.processes", 0, "0", "a process count: an integer >= 1"),
    ("transfer.top5_per_seed", [99.0, 101.0], "101.0", "a percentage in [0, 100]"),
    ("label", 5, "5", "the evaluated encoder's name (non-empty text)"),
    # helper-74's: numbers each in range but contradicting another (a silent wrong row in the table)
    ("linear.top5", 50.0, "50.0", "a top-5 accuracy >= its top-1 (93.5)"),
    ("linear.top1", 95.0, "95.0", "the mean of top1_per_seed (93.5)"),
    ("linear.top1_per_seed", [93.0, 94.0], "[93.0, 94.0]", "one value per seed (3)"),
    ("linear.top1_std", 2.0, "2.0", "the sample standard deviation of top1_per_seed (0.5)"),
    ("linear_sklearn.top1", 0.95, "0.95", "a whole number of the row's 400 test images, in percent (100 x k / 400)"),
    # each seed's value not a whole number of images, their mean (80.5) and sample sd (1.25) still the row's
    ("linear_10pct.top1_per_seed", OFF_GRID, json.dumps(OFF_GRID[0]),
     "a whole number of the row's 400 test images, in percent (100 x k / 400)"),
    ("test_images", 0, "0", "the count of test images its accuracies were measured on (>= 1)"),
    ("pretraining_data_differs", 5, "5", "how the data differs from the pretraining data (text)"),
    ("transfer.top5_per_seed", [99.0, 99.5, 99.75], "[99.0, 99.5, 99.75]", "one value per seed (2)"),
    ("label", "", '""', "the evaluated encoder's name (non-empty text)"),
])
def test_every_numeric_field_and_the_label_of_a_result_are_checked(tmp_path, capsys, where, value, shown, want):
    """helper-73's: compare read fraction 0, negative train_images and any num_classes or label. Each numeric field
    selfsup writes is checked against what it writes (fractions in (0, 1], counts non-negative integers, classes
    >= 2, percentages in [0, 100], durations >= 0, per-seed numbers too), in one line naming the file, the result,
    the field, the value and the fix."""
    row, kind = numbered_row(where, value)
    folder = tmp_path / "x"
    if kind == "transfer":
        write_transfer(folder, [row])
    else:
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps([row]))
    assert main(["compare", str(folder)]) == 2
    key = where.removeprefix("transfer.")
    if kind == "transfer":
        # a transfer row's counts are named as the row's own fields, its numbers as its protocol's result
        key = key if key in ("train_images", "num_classes", "minutes", "trainable_params", "processes", "seeds") \
            else f"transfer[bitfit].{key}"
    if where.endswith("_per_seed") and isinstance(value, list):  # the seed whose value is refused, if one is
        bad = [i for i, v in enumerate(value)
               if not 0 <= v <= 100 or (want.startswith("a whole number") and (v * 400 / 100) % 1)]
        key += f"[{bad[0]}]" if bad else ""
    label = "?" if where == "label" else "bitfit" if kind == "transfer" else "run x"
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {folder / 'results.json'}: result {label!r} holds {key} = {shown}, where selfsup "
        f"writes {want}: its results.json was edited or cut short; evaluate it again")


@pytest.mark.parametrize("timing, key, shown", [({"seconds": "63"}, "seconds", '"63"'),
                                                ({"epochs": -3}, "epochs", "-3"), ({"steps": 2.5}, "steps", "2.5")])
def test_a_training_time_record_not_as_selfsup_writes_it_is_named(tmp_path, capsys, timing, key, shown):
    """helper-66's: training_time.json with text seconds or epochs raised a traceback, and epochs -3 showed as
    "-3" in the epochs column. Named in one line; a record cut short too."""
    run = write_run(tmp_path / "run", [frozen_row("run run")])
    (run / "training_time.json").write_text(json.dumps({"seconds": 9.0, "epochs": 1, "steps": 4, **timing}))
    assert main(["compare", str(run)]) == 2
    want = "an integer" if key == "steps" else "a number"
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {run / 'training_time.json'}: {key} = {shown}, where selfsup writes {want} >= 0: "
        f"restore the file or delete it")
    (run / "training_time.json").write_text('{"seconds": 9')
    assert main(["compare", str(run)]) == 2
    assert "training_time.json is not a JSON object of training times" in capsys.readouterr().err
    (run / "training_time.json").unlink()
    (run / "results.json").write_text('[{"label": "run run", "kind": "pre')  # a run's results.json cut short
    assert main(["compare", str(run)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"selfsup compare: error: {run / 'results.json'} is not readable JSON (edited or cut short?): evaluate the "
        f"run again (selfsup eval {run}), or restore the file")


def test_results_of_a_run_another_process_trains_now_are_warned_in_compare_and_plot(tmp_path, capsys):
    """helper-62's: compare of a run that `selfsup pretrain --resume` was training showed its results.json (of
    the weights before that training) with no word; plot redrew them silently too. Both say so while the lock is
    held, and say nothing once the training has ended."""
    from conftest import lock_held_elsewhere

    run = write_run(tmp_path / "run", [{**frozen_row("run run"), "trained_steps": 20}])
    (run / "training_time.json").write_text(json.dumps({"seconds": 90.0, "epochs": 2, "steps": 20}))
    with lock_held_elsewhere(run) as pid:
        assert main(["compare", str(run)]) == 0
        out = capsys.readouterr().out
        said = (f"{run} is being trained now by process {pid}: these are the numbers of its weights before "
                f"that training; evaluate it again when the training has ended")
        assert f"- **Warning** ({run}): {said}" in out
        _, by_target = table(out)
        assert by_target[str(run)]["epochs"] == "2"  # the results' own weights: the epochs before that training
        assert main(["plot", str(run)]) == 0
        assert (f"note: the pictures drawn from {run / 'results.json'} (kNN grid, stages, embedding) show the numbers "
                f"of {run}'s weights before the training process {pid} is running now: evaluate it again when "
                f"that training has ended (selfsup eval {run}) and plot again") in capsys.readouterr().out
        from selfsup.cli_eval import own_results_note
        from selfsup.rundir import RunDir

        (run / "results.json").rename(run / "kept.json")  # a run trained with --no-eval, resumed now
        assert own_results_note(RunDir(run)) == (  # not "selfsup eval RUN writes it": that comes here again
            f"the run has no results of its own yet (its training writes results.json when it ends, or selfsup eval "
            f"{run} after it)")
        (run / "kept.json").rename(run / "results.json")
    assert main(["compare", str(run)]) == 0
    assert "Warning" not in capsys.readouterr().out
    assert main(["plot", str(run)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_plot_says_when_it_draws_results_of_older_weights(tmp_path, capsys):
    """helper-62's: `selfsup plot RUN` after a resume with --no-eval redrew the kNN grid of the weights before the
    resume without a word; it names them, as the resume and compare do. An evaluation folder read mid-training
    says so too; current results and a folder of no run say nothing."""
    run = write_run(tmp_path / "run", [{**frozen_row("run run"), "trained_steps": 10}])
    (run / "training_time.json").write_text(json.dumps({"seconds": 90.0, "epochs": 2, "steps": 20}))
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert str(run / "plots" / "knn_grid.png") in out
    assert (f"note: the pictures drawn from {run / 'results.json'} (kNN grid, stages, embedding) show the numbers of "
            f"{run}'s weights after 10 optimiser steps, not of its weights now: evaluate it again (selfsup eval {run}) "
            f"and plot again") in out
    folder = run / "eval-other-1234"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps([{**frozen_row("run run"), "mid_training": True}]))
    assert main(["plot", str(folder)]) == 0
    assert (f"show the numbers of a checkpoint read while it was still training ({run.resolve()}): evaluate it again"
            in capsys.readouterr().out)
    (run / "results.json").write_text(json.dumps([{**frozen_row("run run"), "trained_steps": 20}]))
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "results.json").write_text(json.dumps([frozen_row("run x")]))
    for target in (run, lone):
        assert main(["plot", str(target)]) == 0
        assert "note:" not in capsys.readouterr().out


def test_a_runs_evaluation_folders_and_an_export_it_trained_past_are_read_in_one_place(tmp_path):
    """RunDir.evaluation_folders (the layout the resume's stale-folder line and compare's advice read) and
    export_behind (the resume's line and compare's warning on RUN/export): each kind of folder found, folders
    without results.json left out; an export behind its run, current, elsewhere or without steps."""
    from selfsup.artifacts.card import export_behind
    from selfsup.rundir import RunDir

    run = write_run(tmp_path / "run", None)
    made = ["eval-digits-1-2", "transfer-bitfit", "eval-digits-1/transfer-lora", "detection/voc-ab12"]
    for name in [*made, "eval-digits-1", "plots"]:  # the last two: no results.json (a feature cache, pictures)
        (run / name).mkdir(parents=True, exist_ok=True)
    for name in made:
        (run / name / "results.json").write_text("[]")
    assert RunDir(run).evaluation_folders() == sorted(run / name for name in made)
    (run / "export").mkdir()
    (run / "export" / "config.json").write_text(json.dumps(to_config_json({**ENCODER_CARD, "trained_steps": 3})))
    assert export_behind(run / "export") is None  # the run records no steps
    (run / "training_time.json").write_text(json.dumps({"seconds": 9.0, "epochs": 1, "steps": 5}))
    assert export_behind(run / "export") == (run.resolve(), 3, 5)
    (run / "training_time.json").write_text(json.dumps({"seconds": 9.0, "epochs": 1, "steps": 3}))
    assert export_behind(run / "export") is None  # current
    elsewhere = tmp_path / "exp"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text((run / "export" / "config.json").read_text())
    assert export_behind(elsewhere) is None
