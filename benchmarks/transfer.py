"""Transfer beyond the frozen probe (issue 17): linear probe, partial, BitFit, LoRA, prompt (ViT) and full
fine-tuning of pretrained encoders and their random-init twins, at several labelled fractions.

For every target (an export or run directory: the quickstart's SimCLR resnet, an MAE-pretrained ViT) and each
``--twins`` entry (``pretrained``: the target itself; ``random-init``: the same timm architecture and kwargs at
timm's fair init, with the target's normalisation), on Fashion-MNIST (or ``--data``), each ``--protocols`` entry:

- ``linear``: selfsup's linear probe on frozen features (:func:`selfsup.eval.linear.probe_protocol`, its
  default grid), the reference every protocol is read against;
- the others through :func:`selfsup.transfer.run_protocol` with ``--epochs``, ``--lrs`` (a grid, chosen on a
  held-out split), ``--seeds`` and LoRA rank ``--lora-rank``; ``prompt`` only on ViTs.

Each cell reports top-1 mean +- sd over seeds, the trainable share of the encoder, and training minutes per
seed; the budget of a cell is ``epochs x labelled images`` (``--train-images`` caps the training set, a seeded
class-balanced subset, so that a cell fits a CPU budget). benchmarks/results/transfer.{json,md} are rewritten
after every protocol of every twin (an interrupted run keeps what it measured); the md is generated from the
json alone. ``--merge`` adds this run's rows to the existing json, replacing the rows of the same target,
protocol, labelled fraction and lr grid, and keeps every earlier run's record.

    python benchmarks/transfer.py RUN_OR_EXPORT [...] [--protocols linear,finetune,partial,bitfit,lora,prompt]
        [--twins pretrained,random-init] [--fractions 0.01,0.1,1] [--epochs 5] [--lrs 0.001] [--seeds 3]
        [--train-images 10000] [--merge]
    python benchmarks/transfer.py --render   # rewrite the md from the json, no training
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ssl"), str(ROOT / "benchmarks")]  # selfsup; machine.py

from machine import cpu_name  # noqa: E402

TWINS = ("pretrained", "random-init")
PROTOCOL_ORDER = ("linear", "finetune", "partial", "bitfit", "lora", "prompt")
LINEAR_LRS = (0.01, 0.03, 0.1, 0.3)  # the linear probe's own grid (its rows' "lr grid" reads "probe")
LINEAR_WDS = (0.0, 1e-5, 1e-4)
NOT_RUN = "not run"


class BenchmarkError(ValueError):
    """A bad benchmark argument or results file (the message names the fix)."""


# ---------------------------------------------------------------- pure functions: rows, merge, markdown


def lr_grid(row: dict[str, Any]) -> str:
    """The lr grid a row was chosen from, as text: ``"probe"`` for the linear probe's own grid, else the
    ``--lrs`` values (``"0.0001,0.0003,0.001"``); read from ``lr_grid``, else from the row's options."""
    if "lr_grid" in row:
        return str(row["lr_grid"])
    if row["protocol"] == "linear":
        return "probe"
    return ",".join(f"{float(x):g}" for x in row["options"]["lrs"])


def row_key(row: dict[str, Any]) -> tuple[str, str, float, str]:
    """What makes two rows the same cell: (target, protocol, labelled fraction, lr grid)."""
    return (row["target"], row["protocol"], float(row["fraction"]), lr_grid(row))


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every row of ``new`` added: a new row replaces the old row of the same :func:`row_key` in
    its place, the others are appended in their order (the last of equal-keyed new rows wins)."""
    merged = list(old)
    where = {row_key(r): i for i, r in enumerate(merged)}
    for row in new:
        key = row_key(row)
        if key in where:
            merged[where[key]] = row
        else:
            where[key] = len(merged)
            merged.append(row)
    return merged


def runs_of(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The run records of a results file's meta: ``meta["runs"]``, or a single-run meta (the layout before
    ``--merge``) as the one record."""
    if "runs" in meta:
        return list(meta["runs"])
    return [dict(meta)] if meta else []


def merge_document(old: dict[str, Any] | None, run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results file after ``run`` (its record: args, command, machine, ...) measured ``rows``: ``old``'s
    runs plus this one, ``old``'s rows merged with ``rows`` (:func:`merge_rows`); each new row names its run by
    index (``"run"``). ``old`` None: a file of this run alone.

    Raises:
        BenchmarkError: ``old`` is not a results file (no ``rows`` list).
    """
    if old is not None and not isinstance(old.get("rows"), list):
        raise BenchmarkError("the existing results file has no 'rows' list: pass --out to a new file or drop "
                             "--merge to overwrite it")
    runs = runs_of(old["meta"]) if old is not None else []
    index = len(runs)
    tagged = [{**r, "run": index} for r in rows]
    return {"meta": {"runs": runs + [run]}, "rows": merge_rows(old["rows"] if old else [], tagged)}


def split_target(target: str) -> tuple[str, str]:
    """``"name (twin)"`` -> (name, twin); a label without a twin is its own name with twin ``""``."""
    if target.endswith(")") and " (" in target:
        name, twin = target[:-1].rsplit(" (", 1)
        return name, twin
    return target, ""


def _order(values: list[Any], preferred: tuple[Any, ...] = ()) -> list[Any]:
    """Distinct ``values``: those in ``preferred`` first in its order, then the rest in first-seen order."""
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def fraction_label(fraction: float, rows: list[dict[str, Any]]) -> str:
    """A column title: ``"1% labels"``, or ``"all labels (3,000 images)"`` when every all-labels row used the
    same number of training images."""
    if fraction < 1:
        return f"{fraction * 100:g}% labels"
    sizes = {r["train_images"] for r in rows if float(r["fraction"]) == 1.0}
    return f"all labels ({sizes.pop():,} images)" if len(sizes) == 1 else "all labels"


def top1_text(row: dict[str, Any] | None) -> str:
    """``"mean ± sd"`` of a row's top-1 (the mean alone for one seed:
    :func:`selfsup.eval.report.mean_sd_text`), or :data:`NOT_RUN`."""
    from selfsup.eval.report import mean_sd_text

    return NOT_RUN if row is None else mean_sd_text(row)


def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    """The wide table: one line per (target, protocol, lr grid), one column per labelled fraction. Every
    (protocol, lr grid) run on either twin of a target gets a line for each twin of that target, and a cell
    (or a whole line) that was not run reads :data:`NOT_RUN`."""
    fractions = sorted({float(r["fraction"]) for r in rows})
    cells = {row_key(r): r for r in rows}
    names = _order([split_target(r["target"])[0] for r in rows])
    lines = ["| target | protocol | lr grid | trainable % | " + " | ".join(fraction_label(f, rows) for f in fractions)
             + " |", "|---|---|---|---:|" + "---:|" * len(fractions)]
    for name in names:
        mine = [r for r in rows if split_target(r["target"])[0] == name]
        twins = _order([split_target(r["target"])[1] for r in mine], TWINS)
        combos = _order([(r["protocol"], lr_grid(r)) for r in mine],
                        tuple((p, g) for p in PROTOCOL_ORDER for g in _order([lr_grid(r) for r in mine])))
        for twin in twins:
            target = f"{name} ({twin})" if twin else name
            for protocol, grid in combos:
                found = [cells.get((target, protocol, f, grid)) for f in fractions]
                pct = next((f"{r['trainable_pct']:.2f}" for r in found if r is not None), "–")
                lines.append(f"| {target} | {protocol} | {grid} | {pct} | "
                             + " | ".join(top1_text(r) for r in found) + " |")
    return lines


def chosen_lrs(row: dict[str, Any]) -> str:
    """The lr each seed's held-out split chose (``"0.001, 0.001"``)."""
    lrs = row.get("lr")
    return ", ".join(f"{float(x):g}" for x in lrs) if isinstance(lrs, list) else str(lrs)


def cells_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every measured cell, in the file's order, with its run (1-based index into the header's runs)."""
    lines = ["| target | protocol | lr grid | labels | train images | trainable % | minutes / seed | "
             "lr chosen (per seed) | top-1 (mean ± sd) | run |", "|---|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        run = r.get("run", 0) + 1
        lines.append(f"| {r['target']} | {r['protocol']} | {lr_grid(r)} | {float(r['fraction']):g} | "
                     f"{r['train_images']} | {r['trainable_pct']:.2f} | {r['minutes']:.2f} | {chosen_lrs(r)} | "
                     f"{top1_text(r)} | {run} |")
    return lines


def command_text(run: dict[str, Any]) -> str:
    """The command line of a run: its recorded ``command``, else one rebuilt from its ``args``."""
    if run.get("command"):
        return str(run["command"])
    a = run.get("args", {})
    targets = [str(t).split(" (")[0] for t in a.get("targets", [])]
    flags = [f"--{k.replace('_', '-')} {a[k]}" for k in ("protocols", "fractions", "epochs", "lrs", "seeds",
                                                           "lora_rank", "train_images") if k in a]
    return "python benchmarks/transfer.py " + " ".join(targets + flags)


def run_text(i: int, run: dict[str, Any]) -> str:
    """One header bullet: the run's command, machine, threads, seeds, budget per cell and state."""
    a = run.get("args", {})
    epochs, seeds, cap = a.get("epochs"), a.get("seeds"), a.get("train_images")
    data = f"a seeded class-balanced {cap:,}-image training subset" if cap else "all training images"
    machine = run.get("cpu") or run.get("machine", "unknown machine")
    load = run.get("loadavg")
    state = ("finished" if run.get("finished") else
             f"stopped before it finished ({run['partial']})" if run.get("partial") else
             "stopped before it finished (or still running)" if "finished" in run else "")
    parts = [f"`{command_text(run)}`", f"{machine}, {run.get('threads', '?')} torch thread(s)"
             + (f", load average {load[0]:.2f} at its start" if load else ""),
             f"{a.get('data', 'fashion-mnist')}: {data} (the low-shot fractions are drawn from it), "
             f"{run.get('test_split', 'all test images')}",
             f"{seeds} seed{'s' if seeds != 1 else ''} per cell ({'mean ± sd' if seeds != 1 else 'no sd'})",
             f"budget per cell: {epochs} epochs over its labelled images",
             f"LoRA r={a.get('lora_rank')}"]
    described = [str(t) for t in a.get("targets", []) if " (" in str(t)]
    if described:
        parts.append("targets: " + ", ".join(described))
    if run.get("note"):
        parts.append(str(run["note"]))
    if run.get("started"):
        parts.append(f"started {run['started']}")
    return f"{i + 1}. " + "; ".join(parts) + (f"; **{state}**" if state else "") + "."


def render_md(doc: dict[str, Any], source: str = "transfer.json") -> str:
    """The whole markdown report of a results file (``source``: its name, for the header): the runs, the wide
    summary, then every cell."""
    runs = runs_of(doc.get("meta", {}))
    rows = doc["rows"]
    partial = any(r.get("finished") is False for r in runs)  # a stopped old-layout run says so in its line
    head = ["# Transfer protocols" + (" (partial)" if partial else ""), "",
            f"Generated from `{source}` (next to this file) by `benchmarks/transfer.py`. Runs (the `run` "
            "column of the last table):", ""]
    head += [run_text(i, r) for i, r in enumerate(runs)]
    head += ["", "Top-1 is the final epoch's on the test set; the lr of each seed is chosen from the row's lr grid "
             "on a held-out 10% of its labelled images (a single lr holds nothing out and trains on all of them; "
             "`probe`: the linear probe's own lr and weight-decay grid). "
             "Minutes are wall-clock training minutes per seed (all lrs of the grid) and are inflated when the "
             "machine was shared with other jobs. A cell marked \"not run\" was not measured (its twin or its other "
             "fractions were).", ""]
    return "\n".join(head + summary_table(rows) + ["", "Every cell:", ""] + cells_table(rows)
                     + warnings_list(rows)) + "\n"


def warnings_list(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' warnings (selfsup.transfer.run_protocol's: a diverged lr, settings chosen on fewer
    held-out images than classes, ...), each under its target: the benchmark silences the protocols'
    log, so this is where they show."""
    said = [f"- {r['target']}: {w}" for r in rows for w in r.get("warnings", [])]
    return ["", "Warnings:", "", *said] if said else []


def write_results(out: Path, doc: dict[str, Any]) -> None:
    """Write ``out``.json and ``out``.md (the md from :func:`render_md`), each atomically (a temporary file
    renamed over the old), so that an interrupted run never leaves a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    md = render_md(doc, out.with_suffix(".json").name)
    for suffix, text in ((".json", json.dumps(doc, indent=1)), (".md", md)):
        tmp = out.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out.with_suffix(suffix))


def read_doc(path: Path) -> dict[str, Any]:
    """A results file.

    Raises:
        BenchmarkError: it is missing or not valid JSON.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchmarkError(f"cannot read the results file {path} ({err}): pass --out as a results file's path without .json") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise BenchmarkError(f"{path} holds no rows of benchmarks/transfer.py (a json object with a 'rows' list): "
                             f"pass --out as the stem of a results file this script wrote")
    return doc


def check_args(args: argparse.Namespace) -> None:
    """Refuse, in one line, what would fail or be wrong only after targets are loaded and cells trained:
    an unknown or repeated protocol, a labelled fraction outside (0, 1] or repeated, an lr that is not a
    number > 0 or repeated, epochs, seeds or a LoRA rank below 1, a negative --train-images, an unknown
    --data, an image folder without --data-root or a --data-root that is not a folder, and a target that is
    missing or not a selfsup run or export directory.

    Raises:
        BenchmarkError: naming the argument and the fix.
    """
    protocols = protocol_list(args.protocols)
    unknown = [p for p in protocols if p not in PROTOCOL_ORDER]
    if unknown or not protocols:
        raise BenchmarkError(f"--protocols: unknown {unknown or [args.protocols]}; choose from {', '.join(PROTOCOL_ORDER)}")
    if len(set(protocols)) < len(protocols):
        raise BenchmarkError(f"--protocols {args.protocols!r}: a protocol is given twice; give each once")
    for name, text, ok, want in (("--fractions", args.fractions, lambda v: 0 < v <= 1, "in (0, 1]"),
                                 ("--lrs", args.lrs, lambda v: math.isfinite(v) and v > 0, "finite and > 0")):
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise BenchmarkError(f"{name} {text!r}: give comma-separated numbers") from None
        if not all(ok(v) for v in values):
            raise BenchmarkError(f"{name} {text!r}: every value must be {want}")
        if len(set(values)) < len(values):
            raise BenchmarkError(f"{name} {text!r}: a value is given twice; give each once")
    for name in ("epochs", "seeds", "lora_rank"):
        if getattr(args, name) < 1:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.train_images < 0:
        raise BenchmarkError(f"--train-images must be 0 (all) or more, got {args.train_images}")
    from selfsup.cli_eval import ensure_out_dir
    from selfsup.configread import first_repeated
    from selfsup.data import DATASETS
    from selfsup.rundir import RunDir, is_export_dir

    if not str(args.out).strip():
        raise BenchmarkError("--out '' is empty: give a file stem such as benchmarks/results/transfer")
    out = Path(args.out)
    if out.is_dir():
        raise BenchmarkError(f"--out {out} is a folder: --out is a file stem (STEM.json and STEM.md are written); "
                             f"pass e.g. {out / 'transfer'}")
    try:  # its folder must be creatable before cells train (the results are written after the first one)
        ensure_out_dir(out.parent)
    except Exception as err:
        raise BenchmarkError(str(err).replace(f"--out {out.parent}:", f"--out {out}: its folder", 1)) from None
    if args.data not in DATASETS:
        raise BenchmarkError(f"--data {args.data!r}: unknown dataset; choose from {', '.join(DATASETS.names())}")
    if args.data == "image-folder" and not args.data_root:
        raise BenchmarkError("--data image-folder needs --data-root: the folder holding train/ and test/ class "
                             "subfolders")
    if args.data_root and not Path(args.data_root).is_dir():
        what = "not a folder" if Path(args.data_root).exists() else "no such folder"
        raise BenchmarkError(f"--data-root {args.data_root}: {what}; pass the folder that holds the data")
    missing = [t for t in args.targets if not Path(t).exists()]  # after the options: a typo there is named first
    if missing:
        raise BenchmarkError(f"no such target: {', '.join(missing)}: pass export or run directories (the "
                             f"random-init twin of each comes from --twins)")
    twice = first_repeated([str(Path(t).resolve()) for t in args.targets])
    if twice is not None:
        raise BenchmarkError(f"target {twice} is given twice: give each target once")
    names = first_repeated([Path(t).resolve().name for t in args.targets])
    if names is not None:  # rows are labelled by the folder's name: two would overwrite each other's rows
        raise BenchmarkError(f"two targets are folders named {names!r}: their rows would share one label; "
                             f"give them distinct folder names (a symlink will do)")
    other = [t for t in args.targets if not (RunDir(t).is_run() or is_export_dir(Path(t)))]
    if other:
        raise BenchmarkError(f"not a selfsup run or export directory: {', '.join(other)}: pass the directory "
                             f"`selfsup pretrain` or `selfsup export` wrote")


def test_split_text(data: str, root: str | None) -> str:
    """The header's words for the test images: the dataset's test split, or, for an image folder
    with no ``test/`` or ``val/``, the seeded share of each class selfsup holds out of it
    (``data.holdout_fraction``; :func:`selfsup.data.folders.test_folder`)."""
    if data == "image-folder" and root:
        from selfsup.config import DataConfig
        from selfsup.data.folders import test_folder

        if test_folder(root) is None:
            share = DataConfig().holdout_fraction
            return (f"test images: a seeded {share * 100:g}% of each class held out of the folder (it has no test/ "
                    f"or val/; the rest trains)")
    return "all test images"


def protocol_list(text: str) -> list[str]:
    """``--protocols`` as a list, spaces around the commas allowed."""
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_twins(text: str, no_random: bool) -> list[str]:
    """``--twins`` as a list (``--no-random`` drops ``random-init``).

    Raises:
        BenchmarkError: an unknown twin, or none left.
    """
    twins = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in twins if t not in TWINS]
    if bad or not twins:
        raise BenchmarkError(f"unknown --twins {','.join(bad) or repr(text)}: use a comma list of {','.join(TWINS)}")
    if len(set(twins)) < len(twins):
        raise BenchmarkError(f"--twins {text!r}: a twin is given twice; give each once")
    twins = [t for t in twins if not (no_random and t == "random-init")]
    if not twins:
        raise BenchmarkError("no twin left to run: --no-random with --twins random-init; pass --twins pretrained")
    return twins


# ---------------------------------------------------------------- training


def random_twin(card: dict[str, Any], seed: int = 0):
    """The target's architecture at timm's fair random init (no block starts as an identity)."""
    import torch

    from selfsup.encoders import create_encoder

    torch.manual_seed(seed)
    return create_encoder(card["architecture"], card["in_chans"], card.get("kwargs") or {}, fair_random_init=True)


def linear_rows(encoder, card: dict[str, Any], train, test, fractions: list[float],
                seeds: int) -> list[dict[str, Any]]:
    """The linear probe of every fraction, in run_protocol's row layout (trainable: 0% of the encoder)."""
    from selfsup.artifacts.card import card_info
    from selfsup.eval.features import extract_features
    from selfsup.eval.linear import probe_protocol

    info = card_info(card)
    start = time.perf_counter()
    xtr, ytr = extract_features(encoder, train, info, channels_last=True)  # as selfsup eval (convnets only)
    xte, yte = extract_features(encoder, test, info, channels_last=True)
    probes = probe_protocol(xtr, ytr, xte, yte, train.num_classes, list(LINEAR_LRS), list(LINEAR_WDS),
                            tuple(fractions), seeds)
    minutes = (time.perf_counter() - start) / 60 / max(1, seeds)
    return [{**r, "key": key, "protocol": "linear", "lr_grid": "probe", "trainable_params": 0,
             "trainable_pct": 0.0, "minutes": minutes} for key, r in probes.items()]


def run_all(args: argparse.Namespace, twins: list[str],
            save: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Every target x twin x protocol of ``args``: its rows, and ``save(rows so far)`` after each labelled
    fraction of each protocol of each twin (after each protocol for the linear cells)."""
    from selfsup.artifacts.load import load_encoder_and_card
    from selfsup.config import DataConfig
    from selfsup.data import build_dataset
    from selfsup.data.datasets import Subset
    from selfsup.eval.linear import class_balanced_subset
    from selfsup.transfer import TransferOptions, run_protocol
    from selfsup.transfer.protocols import is_vit

    fractions = [float(f) for f in args.fractions.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    grid = ",".join(f"{x:g}" for x in lrs)
    rows: list[dict[str, Any]] = []
    for path in args.targets:
        encoder, card = load_encoder_and_card(path)
        folder = {"in_chans": card["in_chans"]} if args.data == "image-folder" else {}  # read as the encoder takes them
        data = DataConfig(name=args.data, root=args.data_root, image_size=card["input_size"][-1], **folder)
        train, test = build_dataset(data, "train"), build_dataset(data, "test")
        if train.in_chans != card["in_chans"]:  # every protocol, the linear probe's extraction too
            raise BenchmarkError(f"{path} takes {card['in_chans']}-channel images but --data {args.data} has "
                                 f"{train.in_chans}-channel ones: benchmark it on data with {card['in_chans']} channel(s)")
        if args.train_images and args.train_images < len(train):
            idx = class_balanced_subset(train.labels, args.train_images / len(train), 0)
            train = Subset(train, idx.tolist())
        for kind in twins:
            enc = encoder if kind == "pretrained" else random_twin(card)
            label = f"{Path(path).name} ({kind})"
            def keep(row: dict[str, Any]) -> None:
                print(json.dumps(row), flush=True)
                rows.append(row)
                save(rows)

            for protocol in protocol_list(args.protocols):
                if protocol == "linear":
                    for r in linear_rows(enc, card, train, test, fractions, args.seeds):
                        keep({"target": label, **r})
                elif protocol != "prompt" or is_vit(enc):
                    opts = TransferOptions(protocol=protocol, epochs=args.epochs, seeds=args.seeds, lrs=lrs,
                                           lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank,
                                           low_shot=[f for f in fractions if f < 1])
                    run_protocol(enc, card, train, test, opts, log=lambda m: None, on_row=lambda r: keep(
                        {"target": label, "budget_images": args.epochs * r["train_images"], "lr_grid": grid, **r}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("targets", nargs="*", help="export or run directories")
    ap.add_argument("--data", default="fashion-mnist", help="labelled dataset (selfsup list shows them)")
    ap.add_argument("--data-root", default=None, help="where --data is (data.root; needed by image-folder: a folder "
                                                      "of train/ and test/ class subfolders)")
    ap.add_argument("--protocols", default="linear,finetune,partial,bitfit,lora,prompt",
                    help="comma list; linear is the frozen linear probe")
    ap.add_argument("--twins", default="pretrained,random-init", help="which encoders of each target to run")
    ap.add_argument("--fractions", default="0.01,0.1,1", help="labelled fractions in (0, 1], class-balanced")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of every adapted cell")
    ap.add_argument("--lrs", default="0.001", help="lr grid, chosen per seed on a held-out split (a single lr "
                                                    "holds nothing out)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per cell (mean ± sd)")
    ap.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r")
    ap.add_argument("--train-images", type=int, default=0, help="cap on training images (0: all)")
    ap.add_argument("--no-random", action="store_true", help="skip the random-init twins (= --twins pretrained)")
    ap.add_argument("--merge", action="store_true",
                    help="add to the existing results, replacing rows of the same target/protocol/fraction/lr grid")
    ap.add_argument("--render", action="store_true", help="only rewrite the md from the json (no training)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transfer"),
                    help="results file stem: writes STEM.json and STEM.md, replacing them (--merge keeps their rows); "
                         "the default is the repository's own results")
    args = ap.parse_args()
    out = Path(args.out)
    try:
        if args.render:
            write_results(out, read_doc(out.with_suffix(".json")))
            return
        twins = parse_twins(args.twins, args.no_random)
        check_args(args)  # before anything is loaded or trained
        if not args.targets:
            raise BenchmarkError("no target given: pass one or more export or run directories (or --render)")
        old = read_doc(out.with_suffix(".json")) if args.merge and out.with_suffix(".json").exists() else None
        import torch

        run = {"command": shlex.join(["python", "benchmarks/transfer.py", *sys.argv[1:]]), "cpu": cpu_name(),
               "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "loadavg": list(os.getloadavg()),
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "finished": False,
               "args": vars(args), "test_split": test_split_text(args.data, args.data_root)}

        def save(rows: list[dict[str, Any]], finished: bool = False) -> None:
            run["finished"] = finished
            write_results(out, merge_document(old, run, rows))

        save(run_all(args, twins, save), finished=True)
    except Exception as err:  # selfsup's own one-line errors too (a target it cannot load, ...)
        from selfsup.cli import one_line_errors

        if not isinstance(err, (BenchmarkError, *one_line_errors())):
            raise
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
