"""``selfsup compare RUN_OR_EXPORT ...``: one table across runs, exports and evaluation folders.

Each target contributes the row of its own encoder (the final stage when it was evaluated
layer-wise); ``baselines=True`` adds the random-init and pixel rows they were evaluated beside
(a row repeated beside several targets once; two different rows under one label each say which
target they were evaluated beside). Columns: method, encoder, epochs completed and training minutes
(from the run's ``training_time.json``, or the export card's copy of it; blank when unknown, never
the configured ``max_epochs``), every kNN
(k, T) and every linear-probe fraction any target has, as mean ± sd over probe seeds, the all-labels probe's
top-5 and the scikit-learn cross-check (``linear_sklearn``) when any target has them. A transfer folder
(``selfsup eval TARGET --protocol NAME --out DIR``; DIR or its ``classifier/`` export) adds, per protocol,
"PROTOCOL F% top-1" for each labelled fraction F, "PROTOCOL 100% top-5" and "PROTOCOL trainable %" (trainable
parameters in % of the encoder); method, encoder, epochs and minutes are its encoder's (the run the folder sits
in, or the classifier's card), never the transfer's own training. A frozen evaluation folder (``selfsup eval
TARGET`` with another dataset or ``--out``: ``RUN/eval-<data>-<hash>``, ``runs/eval/...``) adds its target's rows
(the run it sits in gives method, encoder, epochs and minutes); one of a baseline alone (``random:NAME``,
``pixels``) is listed as "FOLDER (LABEL)". A detection folder (``selfsup eval TARGET --task detection``) adds
"detection mAP / AP50 / AP75" (and the detection settings when they differ between rows). A column a target lacks is
blank; a target with nothing to compare is an error naming it. A result of a run's weights before a resume that
trained on is warned, its epochs and minutes blank (the run's now are not its weights'); an export in a run directory
the run has trained past since is warned too, and so is a run's result while another process trains the run on. The
warnings a row was written with (a diverged learning rate, a low-shot subset too small to read as asked, an
approximate kNN index) come with it: notes under the markdown table, a last ``warnings`` column in the CSV (one per
line). A value where a number belongs that is not a finite one (null, text, true, NaN) is an error naming it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.artifacts.card import CARD, export_behind, from_config_json
from selfsup.artifacts.validate import read_card
from selfsup.eval.report import PRETRAINING_DATA_DIFFERS, mean_sd_text, probe_header, probe_keys, row_warnings
from selfsup.fileio import read_json_or_none
from selfsup.rundir import (FEATURES_DIR, RunDir, is_export_dir, nearest_run, results_behind, run_steps, steps_text,
                            target_key, training_pid)
from selfsup.safeload import LoadError

BASELINE_KINDS = ("random", "pixels")
TRANSFER_KIND = "transfer"  # the one row of a transfer folder: its results.json rows under "transfer"
CLASSIFIER_DIR = "classifier"  # where a transfer folder keeps its adapted classifier (selfsup.transfer.export)


@dataclass
class Entry:
    """What one run or export says about itself."""

    target: str
    method: str | None = None
    encoder: str | None = None
    epochs: float | None = None
    train_minutes: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # result rows: label, kind, knn, linear...
    baseline_target: bool = False  # an evaluation of a baseline alone: its rows are the target's own


def _final_stage(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of each target's own features (layer-wise rows of earlier stages left out)."""
    return [r for r in rows if r.get("pooling") in (None, "encoder")]


def run_about(path: Path) -> Entry:
    """An :class:`Entry` without rows: the method, encoder, epochs completed and training minutes of run
    directory ``path`` (config.yaml, training_time.json)."""
    import yaml

    run = RunDir(path)
    cfg = yaml.safe_load(run.config.read_text()) or {}
    timing = read_training_time(run.training_time)
    minutes = timing["seconds"] / 60 if "seconds" in timing else None
    return Entry(str(path), (cfg.get("method") or {}).get("name"), (cfg.get("encoder") or {}).get("name"),
                 timing.get("epochs"), minutes)


def read_training_time(path: Path) -> dict[str, Any]:
    """A run's ``training_time.json`` (``{}`` without one), once ``seconds`` and ``epochs`` are numbers >= 0 and
    ``steps`` an integer >= 0 where given.

    Raises:
        LoadError: (one line) the file is no JSON object, or a value is not what selfsup writes, naming it."""
    if not path.is_file():
        return {}
    timing = read_json_or_none(path)
    if not isinstance(timing, dict):
        raise LoadError(f"{path} is not a JSON object of training times (edited or cut short?): restore it or delete "
                        f"it (the epochs and minutes cells are then blank)")
    for key in ("seconds", "epochs", "steps"):
        value = timing.get(key)
        bad = value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or
                                     not math.isfinite(value) or value < 0 or (key == "steps" and
                                                                               not isinstance(value, int)))
        if bad:
            raise LoadError(f"{path}: {key} = {json.dumps(value, default=str)}, where selfsup writes "
                            f"{'an integer' if key == 'steps' else 'a number'} >= 0: restore the file or delete it")
    return timing


def read_results(path: Path, again: str) -> list[dict[str, Any]]:
    """A run's ``results.json`` at ``path``, read and checked (:func:`check_rows`) before any number of it is used
    (compare's table, an export's model card).

    Raises:
        LoadError: (one line) the file is not JSON (edited or cut short), or not laid out as selfsup writes it;
            ``again`` says how to make it afresh."""
    raw = read_json_or_none(path)
    if raw is None:
        raise LoadError(f"{path} is not readable JSON (edited or cut short?): {again}, or restore the file")
    return check_rows(raw, str(path))


# the integer fields of a result row or of one probe / transfer result, and the least value selfsup writes there
# (image, box, step and parameter counts >= 0; sizes, dimensions and process counts >= 1; classes >= 2)
COUNTS = {"train_images": 0, "test_images": 0, "val_images": 0, "train_unlabeled_left_out": 0, "train_boxes": 0,
          "test_boxes": 0, "trained_steps": 0, "trainable_params": 0, "encoder_params": 0,
          "detector_trainable_params": 0, "feature_dim": 1, "image_size": 1, "data_image_size": 1, "processes": 1,
          "seeds": 1, "num_classes": 2}
COUNT_WORDS = {"seeds": "a seed count", "num_classes": "a class count", "feature_dim": "a feature dimension",
               "image_size": "a side length in px", "data_image_size": "a side length in px",
               "processes": "a process count", "trained_steps": "an optimiser step count"}
DURATIONS = ("minutes", "seconds", "eval_seconds")  # numbers >= 0 where present
DETECTION_APS = ("map", "ap50", "ap75")  # a detection row's average precisions, in [0, 100]
SPREADS = ("top1_std", "top5_std")  # sample standard deviations of a percentage over seeds, in [0, 100] or null
SEED_LISTS = ("top1_per_seed", "top5_per_seed")  # each seed's percentage


def contradiction(res: dict[str, Any], test_images: int | None) -> tuple[str, Any, str] | None:
    """The first number of one kNN, probe or transfer result ``res`` that contradicts another, as ``(key,
    value, what selfsup writes there)``, or None: top-5 below top-1; per-seed lists of another length than
    ``seeds``, or whose mean or sample standard deviation is not ``top1`` / ``top1_std`` (top-5 alike); with
    ``test_images`` (the row's count, >= 1), an accuracy on one test set (a kNN pair's, each seed's) that is
    no whole number of those images (a fraction typed for a percentage: 0.95 of 6 images). Each field's
    own range is checked by :func:`check_rows`."""
    top1, top5 = res.get("top1"), res.get("top5")
    if isinstance(top1, int | float) and isinstance(top5, int | float) and top5 < top1 - 1e-9:
        return "top5", top5, f"a top-5 accuracy >= its top-1 ({top1:g})"
    single = [] if any(stat in res for stat in SEED_LISTS) or "seeds" in res else \
        [(stat, res[stat]) for stat in ("top1", "top5") if isinstance(res.get(stat), int | float)]  # a kNN pair's
    for stat in ("top1", "top5"):
        values = res.get(f"{stat}_per_seed")
        if not isinstance(values, list) or not values:
            continue
        if isinstance(res.get("seeds"), int) and len(values) != res["seeds"]:
            return f"{stat}_per_seed", values, f"one value per seed ({res['seeds']})"
        mean = sum(values) / len(values)
        if isinstance(res.get(stat), int | float) and abs(mean - res[stat]) > 1e-6:
            return stat, res[stat], f"the mean of {stat}_per_seed ({mean:g})"
        spread = res.get(f"{stat}_std")
        if len(values) > 1 and isinstance(spread, int | float):
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # the sample standard deviation
            if abs(sd - spread) > 1e-6 * max(1.0, sd):
                return f"{stat}_std", spread, f"the sample standard deviation of {stat}_per_seed ({sd:g})"
        single += [(f"{stat}_per_seed[{i}]", v) for i, v in enumerate(values)]
    if isinstance(test_images, int) and not isinstance(test_images, bool) and test_images >= 1:
        for key, value in single:
            hits = value * test_images / 100  # an accuracy is 100 x hits / test images
            if abs(hits - round(hits)) > 1e-6 * max(1.0, hits):
                return key, value, f"a whole number of the row's {test_images} test images, in percent (100 x k / " \
                                   f"{test_images})"
    return None


def check_rows(rows: Any, source: str) -> list[dict[str, Any]]:
    """``rows`` (a results.json read from ``source``) once they are laid out as selfsup writes them: a list of
    objects whose labels are text and warnings lists of text, whose kNN, probe, detection and transfer results
    hold their accuracies as numbers in [0, 100] (per seed too; spreads in [0, 100], ``val_top1`` in [0, 100] or
    null, labelled fractions in (0, 1]) and whose counts are integers (:data:`COUNTS`: images, boxes, steps and
    parameters >= 0, seeds, sizes and dimensions >= 1, ``num_classes`` >= 2), durations numbers >= 0, the
    label-free signals and the kNN index's numbers finite (counts >= 0), where present.

    Raises:
        LoadError: (one line) naming ``source``, the row and the key, the value found and the fix."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise LoadError(f"{source} is not a list of result objects (edited or cut short?): evaluate again into a "
                        f"fresh folder, or restore the file")
    for r in rows:
        label = r.get("label", r.get("key", ""))

        def refuse(key: str, value: Any, want: str) -> None:
            raise LoadError(f"{source}: result {label!r} holds {key} = {json.dumps(value, default=str)}, where "
                            f"selfsup writes {want}: its results.json was edited or cut short; evaluate it again")

        def number(key: str, value: Any, low: float = 0.0, high: float = 100.0, want: str = "a percentage",
                   open_low: bool = False) -> None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or \
                    not low <= value <= high or (open_low and value == low):
                refuse(key, value, f"{want} in {'(' if open_low else '['}{low:g}, {high:g}]" if math.isfinite(high)
                       else f"{want} >= {low:g}")

        def counts(prefix: str, res: dict[str, Any]) -> None:  # integer fields, durations, a label's text
            for field_name, least in COUNTS.items():
                value = res.get(field_name)
                if field_name in res and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                    refuse(prefix + field_name, value, f"{COUNT_WORDS.get(field_name, 'a count')}: an integer "
                                                       f">= {least}")
            for field_name in DURATIONS:
                if field_name in res:
                    number(prefix + field_name, res[field_name], 0.0, math.inf, "a duration")

        def result(key: str, res: Any) -> None:  # one kNN pair's, probe's or transfer fraction's numbers
            if not isinstance(res, dict):
                refuse(key, res, "an object of numbers")
            for stat in ("top1", "top5"):
                if stat in res:
                    number(f"{key}.{stat}", res[stat])
            if res.get("val_top1") is not None:  # null: a single setting held nothing out
                number(f"{key}.val_top1", res["val_top1"])
            for stat in SEED_LISTS:
                if stat in res:
                    if not isinstance(res[stat], list):
                        refuse(f"{key}.{stat}", res[stat], "a list of percentages, one per seed")
                    for i, value in enumerate(res[stat]):
                        number(f"{key}.{stat}[{i}]", value)
            if "trainable_pct" in res:  # of the plain encoder's parameters: added adapters can take it past 100
                number(f"{key}.trainable_pct", res["trainable_pct"], 0.0, math.inf, "a share in percent")
            for stat in SPREADS:
                if res.get(stat) is not None:
                    number(f"{key}.{stat}", res[stat], 0.0, 100.0, "a spread")
            if "fraction" in res:  # a share of the labelled images: none (0) is no probe selfsup runs
                number(f"{key}.fraction", res["fraction"], 0.0, 1.0, "a labelled fraction", open_low=True)
            counts(f"{key}.", res)
            words(f"{key}.warnings", res.get("warnings"))
            contradicted = contradiction(res, r.get("test_images"))
            if contradicted:
                refuse(f"{key}.{contradicted[0]}", contradicted[1], contradicted[2])

        def words(key: str, value: Any) -> None:
            if value is not None and (not isinstance(value, list) or not all(isinstance(w, str) for w in value)):
                refuse(key, value, "a list of warnings (text)")

        if "label" in r and (not isinstance(r["label"], str) or not r["label"].strip()):
            label = "?"
            refuse("label", r["label"], "the evaluated encoder's name (non-empty text)")
        counts("", r)
        if r.get("label_free") is not None:  # RankMe, uniformity, spread of the test features, and how many
            free = r["label_free"]
            if not isinstance(free, dict):
                refuse("label_free", free, "an object of label-free signals")
            for key in ("rankme", "spread"):
                if key in free:
                    number(f"label_free.{key}", free[key], 0.0, math.inf, "a number")
            value = free.get("uniformity")  # the log of a mean of exp(-2 d^2): <= 0
            if "uniformity" in free and (isinstance(value, bool) or not isinstance(value, int | float) or
                                         not math.isfinite(value) or value > 0):
                refuse("label_free.uniformity", value, "a log-mean (uniformity): a number <= 0")
            if "rows" in free and (isinstance(free["rows"], bool) or not isinstance(free["rows"], int) or
                                   free["rows"] < 0):
                refuse("label_free.rows", free["rows"], "a count of test features: an integer >= 0")
        words("warnings", r.get("warnings"))
        if r.get(PRETRAINING_DATA_DIFFERS) is not None and not isinstance(r[PRETRAINING_DATA_DIFFERS], str):
            refuse(PRETRAINING_DATA_DIFFERS, r[PRETRAINING_DATA_DIFFERS], "how the data differs from the pretraining "
                                                                         "data (text)")
        if r.get("test_images") == 0 and any(k == "knn" or k.startswith("linear") or k == "protocol" for k in r):
            refuse("test_images", 0, "the count of test images its accuracies were measured on (>= 1)")
        if "knn" in r:
            if not isinstance(r["knn"], dict):
                refuse("knn", r["knn"], "an object of kNN results")
            for k, res in r["knn"].items():
                result(f'knn["{k}"]', res)
        for key, res in r.items():
            if key.startswith("linear"):  # linear, linear_10pct, linear_sklearn
                result(key, res)
        if r.get("knn_index") is not None:
            if not isinstance(r["knn_index"], dict):
                refuse("knn_index", r["knn_index"], "an object describing the kNN index")
            words("knn_index.warnings", r["knn_index"].get("warnings"))
            for key, value in r["knn_index"].items():  # rows, dim, k, nlist, ...: integers >= 0; seconds >= 0
                if isinstance(value, int | float) and not isinstance(value, bool) and \
                        (not math.isfinite(value) or value < 0):
                    refuse(f"knn_index.{key}", value, "a count or duration >= 0")
        if r.get("task") == DETECTION_TASK:
            for key in DETECTION_APS:
                if key in r:
                    number(key, r[key])
        if "protocol" in r:  # a transfer folder's row
            if not isinstance(r["protocol"], str):
                refuse("protocol", r["protocol"], "a protocol's name")
            result(f"transfer[{r['protocol']}]", r)
        if r.get("transfer") is not None:
            if not isinstance(r["transfer"], list):
                refuse("transfer", r["transfer"], "a list of transfer results")
            check_rows(r["transfer"], source)
    return rows


def mark_stale(rows: list[dict[str, Any]], run: Path | None) -> None:
    """Add a warning to each result of ``rows`` (a transfer row: each protocol row it holds) measured on run
    ``run``'s weights after another number of optimiser steps (``trained_steps``) than the run has now
    (:func:`selfsup.rundir.results_behind`): a resume trained on since, so they are numbers of older weights.
    Only the run's own results are read: its pretrained rows and its transfers (a moved run directory keeps
    them); baselines and results without ``trained_steps`` (written before it) are left as they are, and
    results read while the run trained carry their own warning (:func:`is_stale` reads them). While another
    process trains the run (its lock, :func:`selfsup.rundir.training_pid`), its results are warned as those of
    the weights before that training (:func:`training_now_text`)."""
    now = run_steps(run) if run is not None else None
    pid = training_pid(run) if run is not None else None
    for r in rows:
        own = (r.get("transfer") or []) if r.get("kind") == TRANSFER_KIND else [r] if r.get("kind") == "pretrained" \
            else []
        for result in own:
            behind = None if result.get("mid_training") else results_behind([result], now)
            if behind is not None:
                result[STALE] = True
                result["warnings"] = [*(result.get("warnings") or []),
                                      f"measured on {run}'s weights {behind}; the run has trained to {now} since (a "
                                      f"resume): evaluate it again for its weights now"]
            elif pid is not None and not result.get("mid_training"):  # measured before the training going on now
                result["warnings"] = [*(result.get("warnings") or []), training_now_text(run, pid)]


def training_now_text(run: Path, pid: int) -> str:
    """The warning on a result of run ``run`` that ``pid`` (0: a process that has not written its pid yet) is
    training now: its numbers are of the weights before that training, which will change them."""
    who = f"process {pid}" if pid else "another process"
    return (f"{run} is being trained now by {who}: these are the numbers of its weights before that training; "
            f"evaluate it again when the training has ended")


STALE = "stale"  # set by mark_stale on a result of a run's older weights


def is_stale(row: dict[str, Any]) -> bool:
    """Whether ``row`` (a transfer row: any result it holds) was measured on a run's older weights
    (:func:`mark_stale`) or on a checkpoint read while the run was still training (``mid_training``, warned
    when written): the run's epochs and minutes now are not those of its weights."""
    return any(STALE in r or r.get("mid_training") for r in ([row, *(row.get("transfer") or [])]))


def results_note(folder: Path) -> str | None:
    """What ``selfsup plot FOLDER`` says when the results.json of ``folder`` (a run directory or an evaluation
    folder) it draws from is not of its run's weights now: measured before a resume trained on, or on a checkpoint
    read mid-training (:func:`mark_stale`), or the run is being trained now; None when the numbers are current
    (or no run is known)."""
    rows = read_json_or_none(RunDir(folder).results_json)
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    run = folder if RunDir(folder).is_run() else nearest_run(folder) or evaluated_run(rows)
    if not rows or run is None:
        return None
    behind = results_behind(rows, run_steps(run))
    pid = training_pid(run)
    if behind is None and pid is None:
        return None
    who = f"process {pid}" if pid else "another process"
    why = (f"numbers of {run}'s weights before the training {who} is running now" if behind is None else
           f"numbers of {run}'s weights {behind}, not of its weights now" if behind.startswith("after") else
           f"numbers {behind} ({run})")  # "of a checkpoint read while it was still training"
    when = " when that training has ended" if behind is None else ""
    return (f"note: the pictures drawn from {RunDir(folder).results_json} (kNN grid, stages, embedding) show the "
            f"{why}: evaluate it again{when} (selfsup eval {run}) and plot again")


def mark_export_behind(entry: Entry, path: Path) -> None:
    """Warn on the rows of export ``path`` when it sits in a run directory (``RUN/export``) that has trained on
    since it was written (:func:`selfsup.artifacts.card.export_behind`): its numbers are those of its own
    weights, which are no longer the run's."""
    behind = export_behind(path)
    if behind is None:
        return
    run, then, now = behind
    for r in entry.rows:
        if r.get("kind") == "pretrained":
            r["warnings"] = [*(r.get("warnings") or []),
                             f"an export of {run}'s weights after {steps_text(then)}; the run has trained to {now} "
                             f"since (a resume): selfsup export {run} {path} for its weights now"]


def read_run(path: Path) -> Entry:
    """An :class:`Entry` from a run directory: config.yaml, results.json, training_time.json."""
    run = RunDir(path)
    if not run.results_json.is_file():
        found = [str(d) for d in run.evaluation_folders()]  # eval-*, transfer-*, detection/*
        elsewhere = (f", or compare its evaluation folder{'s' if len(found) > 1 else ''}: {' '.join(found)}"
                     if found else "")
        info = read_json_or_none(run.data_info)
        classes = info.get("num_classes") if isinstance(info, dict) else None
        how = (f"selfsup eval {path} data.root=LABELLED_FOLDER (a folder of class subfolders: the run's own data has "
               f"{'no labels' if classes == 0 else 'one class'}, nothing to score)"
               if isinstance(classes, int) and not isinstance(classes, bool) and classes < 2 else f"selfsup eval {path}")
        raise LoadError(f"{path} has no results.json of its own: run {how}{elsewhere}")
    entry = run_about(path)
    entry.rows = _final_stage(read_results(run.results_json, f"evaluate the run again (selfsup eval {path})"))
    mark_stale(entry.rows, path)  # a resume with --no-eval leaves the results of the weights before it
    return entry


def transfer_about(config_json: Path) -> dict[str, Any] | None:
    """The ``selfsup.transfer`` block of a transfer classifier's config.json (None for any other file: an
    encoder export, a missing or unreadable file)."""
    raw = read_json_or_none(config_json)
    block = (raw.get("selfsup") or {}) if isinstance(raw, dict) else {}
    about = block.get("transfer") if isinstance(block, dict) else None
    return about if isinstance(about, dict) else None


def transfer_rows(folder: Path) -> list[dict[str, Any]] | None:
    """The rows of a transfer folder's results.json (each with "protocol" and "fraction"); None when
    ``folder`` holds no such file (a frozen evaluation's results.json, or none)."""
    rows = read_json_or_none(RunDir(folder).results_json)
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "protocol" in r and "fraction" in r
                                               for r in rows):
        return rows
    return None


def read_transfer(folder: Path, target: str) -> Entry:
    """An :class:`Entry` of one row from transfer folder ``folder`` (given as ``target``): its results.json
    rows under "transfer". Method, encoder, epochs and minutes are the encoder's: those of the run the folder
    sits in (its default place), else those its classifier's card keeps (blank for a random encoder).

    Raises:
        LoadError: the folder's results.json holds no transfer rows (one line).
    """
    rows = transfer_rows(folder)
    if rows is None:
        raise LoadError(f"{folder} holds no transfer results (results.json with protocol rows): give the folder "
                        f"selfsup eval TARGET --protocol NAME --out DIR wrote")
    if RunDir(folder.parent).is_run():
        entry = run_about(folder.parent)
    else:
        raw = read_json_or_none(folder / CLASSIFIER_DIR / CARD)
        card = from_config_json(raw) if isinstance(raw, dict) else {}
        entry = Entry("", card.get("method"), card.get("architecture"), card.get("trained_epochs"),
                      card.get("training_minutes"))
    entry.target = target
    rows = check_rows(rows, str(RunDir(folder).results_json))
    entry.rows = [{"label": target, "kind": TRANSFER_KIND, "transfer": rows}]
    mark_stale(entry.rows, nearest_run(folder))
    return entry


def frozen_rows(folder: Path) -> list[dict[str, Any]] | None:
    """The rows of a frozen evaluation folder's results.json (``selfsup eval TARGET`` with its own or an
    ``--out`` folder: rows with "label" and "kind", no "protocol"); None when ``folder`` holds no such file."""
    rows = read_json_or_none(RunDir(folder).results_json)
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "label" in r and "kind" in r
                                               and "protocol" not in r for r in rows):
        return rows
    return None


def read_frozen_eval(folder: Path, target: str) -> Entry:
    """An :class:`Entry` from a frozen evaluation folder (``RUN/eval-<data>-<hash>``,
    ``runs/eval/<target>/...``, or an ``--out`` folder): its results.json rows (the final stage's).
    Method, encoder, epochs and minutes are those of the run its pretrained row names (``target_path``:
    ``selfsup eval RUN --out DIR``, wherever DIR is), else of the run the folder sits in, else blank. The
    evaluation of a baseline alone (``selfsup eval random:resnet18`` or ``pixels``) compares its
    rows as the target's own (:attr:`Entry.baseline_target`)."""
    rows = _final_stage(check_rows(frozen_rows(folder) or [], str(RunDir(folder).results_json)))
    run = nearest_run(folder)  # RUN/eval-<data>-<hash>, RUN/detection/<data>-<hash>
    evaluated = evaluated_run(rows) or run  # the run its row names (an --out folder elsewhere, or made in another run)
    entry = run_about(evaluated) if evaluated is not None else Entry("")
    entry.target, entry.rows = target, rows
    entry.baseline_target = all(r.get("kind") in BASELINE_KINDS for r in rows)
    mark_stale(rows, evaluated)
    return entry


def evaluated_run(rows: list[dict[str, Any]]) -> Path | None:
    """The run directory the pretrained row of an evaluation folder outside it names (``target_path``,
    recorded with ``trained_steps``: ``selfsup eval RUN --out DIR``); None when it names none that exists."""
    for r in rows:
        where = r.get("target_path") if r.get("kind") == "pretrained" else None
        if isinstance(where, str) and RunDir(Path(where)).is_run():
            return Path(where)
    return None


def read_export(path: Path) -> Entry:
    """An :class:`Entry` from an export directory's config.json (its card keeps the results)."""
    card = read_card(path)
    data = ((card.get("training_config") or {}).get("data") or {}).get("name")  # the card's results: its test split
    rows = [{"label": label, "kind": "random" if label.startswith("random") else
             "pixels" if label.startswith("raw pixels") else "pretrained", **({"dataset": data} if data else {}), **res}
            for label, res in (card.get("results") or {}).items()]
    entry = Entry(str(path), card.get("method"), card.get("architecture"), card.get("trained_epochs"),
                  card.get("training_minutes"), check_rows(rows, str(path / CARD)))
    mark_export_behind(entry, path)
    return entry


def read_entry(target: str | Path) -> Entry:
    """A run directory or an export directory; LoadError (one line) for anything else."""
    path = Path(target)
    if not path.exists():
        raise LoadError(f"{target} does not exist: give a run directory (selfsup pretrain), an export directory "
                        f"(selfsup export) or an evaluation folder (selfsup eval, frozen or --protocol NAME)")
    if is_export_dir(path) and transfer_about(path / CARD) is not None:  # a transfer's classifier: its folder
        if transfer_rows(path.parent) is None:
            raise LoadError(f"{target} is the classifier of a transfer run, whose results are in its folder's "
                            f"results.json, and {path.parent / 'results.json'} is missing: give the folder "
                            f"selfsup eval TARGET --protocol NAME --out DIR wrote, with its results.json")
        return read_transfer(path.parent, str(target))
    if is_export_dir(path):
        return read_export(path)
    if RunDir(path).is_run():
        return read_run(path)
    if transfer_rows(path) is not None:
        return read_transfer(path, str(target))
    if frozen_rows(path) is not None:
        return read_frozen_eval(path, str(target))
    saved = RunDir(path).results_json
    if path.name == FEATURES_DIR and RunDir(path.parent).is_run():  # RUN/features: the run's feature cache
        found = [str(path.parent), *map(str, RunDir(path.parent).evaluation_folders())]
        raise LoadError(f"{target} is the feature cache of run {path.parent}, not an evaluation: compare the run or "
                        f"its evaluation folders: {' '.join(found)}")
    if not saved.exists() and RunDir(path).features.is_dir():  # a data's feature cache, or an unfinished evaluation
        done = sorted(str(d) for d in path.parent.glob(f"{path.name}-*") if RunDir(d).results_json.is_file())
        if done:  # RUN/eval-<data>: the features its evaluation folders RUN/eval-<data>-<settings> share
            raise LoadError(f"{target} is the feature cache of the evaluations on that data; compare their "
                            f"folder{'s' * (len(done) > 1)}: {' '.join(done)}")
        raise LoadError(f"{target} holds cached features but no results.json: its evaluation did not finish; run "
                        f"the selfsup eval command that made it again (the features are reused)")
    if saved.is_file() and read_json_or_none(saved) is None:  # an evaluation folder whose results cannot be read
        raise LoadError(f"{saved} is not readable JSON (edited or cut short?): evaluate {target}'s encoder again "
                        f"into a fresh folder, or restore the file")
    if saved.is_file():  # readable, but no rows selfsup writes: named as such, not as "no evaluation folder"
        check_rows(read_json_or_none(saved), str(saved))
        raise LoadError(f"{saved} holds rows without the label and kind (or protocol and fraction) selfsup writes "
                        f"(edited?): evaluate {target}'s encoder again into a fresh folder, or restore the file")
    raise LoadError(f"{target} is neither a run directory (config.yaml + checkpoints/) nor an export directory "
                    f"(config.json + model.safetensors) nor an evaluation folder (results.json of selfsup eval, "
                    f"frozen or --protocol): give what selfsup pretrain, selfsup export or selfsup eval wrote")


def unique_targets(targets: list[str]) -> tuple[list[str], list[str]]:
    """``targets`` with repeats of one directory (however spelled) left out, and the repeats; a transfer
    classifier counts as its folder (both give the folder's results)."""
    kept, repeats, seen = [], [], set()
    for t in targets:
        key = Path(target_key(t))
        if is_export_dir(key) and transfer_about(key / CARD) is not None:
            key = key.parent
        (repeats if key in seen else kept).append(t)
        seen.add(key)
    return kept, repeats


def check_outputs(csv_path: str | None, plot_path: str | None) -> None:
    """Refuse, before anything is read or printed, a ``--csv`` or ``--plot`` path that cannot be written:
    a directory, or a picture whose name does not end in .png (selfsup's pictures are PNG files).

    Raises:
        LoadError: (one line) naming the path and the fix.
    """
    for flag, path in (("--csv", csv_path), ("--plot", plot_path)):
        if path and Path(path).is_dir():
            raise LoadError(f"{flag} {path} is a directory: give a file name, e.g. {Path(path) / 'compare'}"
                            f"{'.csv' if flag == '--csv' else '.png'}")
        blocker = next((p for p in Path(path).parents if p.exists()), None) if path else None
        if blocker is not None and not blocker.is_dir():
            raise LoadError(f"{flag} {path}: {blocker} is a file, so no folder can be made there: give a path "
                            f"under a folder")
    if plot_path and Path(plot_path).suffix.lower() != ".png":
        raise LoadError(f"--plot {plot_path}: the picture is a PNG file, so its name must end in .png "
                        f"(e.g. {Path(plot_path).with_suffix('.png')})")


Column = tuple[str, Any]  # (header, cell of a picked result row: row -> str)


def _probe_cell(key: str, stat: str) -> Any:
    """The cell of probe result ``key``'s ``stat`` (mean ± sd over seeds; blank where the row lacks it)."""
    return lambda r: mean_sd_text(r[key], stat) if isinstance(r.get(key), dict) and stat in r[key] else ""


def frozen_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """The frozen-feature columns any of ``rows`` has: kNN top-1 per (k, T); linear top-1 (and top-5 beside it,
    with all labels) per labelled fraction; scikit-learn's logistic top-1 (the probe's cross-check)."""
    knn_keys = list(dict.fromkeys(k for r in rows for k in r.get("knn", {})))
    columns: list[Column] = [(f"kNN {k}", lambda r, k=k: f"{r['knn'][k]['top1']:.2f}"
                              if k in r.get("knn", {}) else "") for k in knn_keys]
    for key in probe_keys(rows):
        columns.append((probe_header(key), _probe_cell(key, "top1")))
        if key == "linear" and any("top5" in (r.get("linear") or {}) for r in rows):
            columns.append(("linear top-5", _probe_cell(key, "top5")))
    if any(isinstance(r.get("linear_sklearn"), dict) for r in rows):
        columns.append((probe_header("linear_sklearn"), lambda r: f"{r['linear_sklearn']['top1']:.2f}"
                        if isinstance(r.get("linear_sklearn"), dict) else ""))
    return columns


DETECTION_TASK = "detection"  # the "task" of a detection result row (selfsup eval TARGET --task detection)
# what a detection result depends on besides its encoder and data (the px column gives detection.image_size)
DETECTION_SETTINGS = ("epochs", "trainable_layers", "deformable", "batch_size", "lr", "seed")


def detection_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The detection settings a detection result row was trained with: its ``detection_settings`` (every
    ``detection`` key), or for rows written before, the :data:`DETECTION_SETTINGS` it holds."""
    given = row.get("detection_settings")
    return given if isinstance(given, dict) else {k: row.get(k) for k in DETECTION_SETTINGS}


def detection_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """The detection columns when any of ``rows`` is a detection result: COCO mAP@[.5:.95], AP50 and AP75 (in
    percent, the test split), and "detection settings" naming the :data:`DETECTION_SETTINGS` whose values differ
    between the detection rows (two rows trained otherwise read as one protocol without it)."""
    found = [r for r in rows if r.get("task") == DETECTION_TASK]
    if not found:
        return []

    def metric(key: str) -> Any:
        return lambda r: f"{r[key]:.2f}" if r.get("task") == DETECTION_TASK and key in r else ""

    columns: list[Column] = [("detection mAP", metric("map")), ("detection AP50", metric("ap50")),
                             ("detection AP75", metric("ap75"))]
    settings = [detection_settings(r) for r in found]
    keys = list(dict.fromkeys(k for one in settings for k in one))
    differing = [k for k in keys if len({json.dumps(one.get(k), sort_keys=True, default=str) for one in settings}) > 1]
    if differing:
        columns.append(("detection settings", lambda r: ", ".join(f"{k}={detection_settings(r).get(k)}"
                                                                  for k in differing)
                        if r.get("task") == DETECTION_TASK else ""))
    return columns


def transfer_header(protocol: str, fraction: float, stat: str = "top-1") -> str:
    """"bitfit 100% top-1", "lora 10% top-1", "finetune 100% top-5"."""
    return f"{protocol} {fraction * 100:g}% {stat}"


def _transfer_result(r: dict[str, Any], protocol: str, fraction: float) -> dict[str, Any] | None:
    return next((t for t in r.get("transfer", []) if t["protocol"] == protocol and t["fraction"] == fraction), None)


def transfer_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """The transfer columns any of ``rows`` has, per protocol (in the order met): top-1 per labelled fraction
    (all labels first), top-5 with all labels, then the trainable parameters in % of the encoder."""
    results = [t for r in rows for t in r.get("transfer", [])]
    columns: list[Column] = []
    for protocol in dict.fromkeys(t["protocol"] for t in results):
        fractions = sorted({t["fraction"] for t in results if t["protocol"] == protocol}, reverse=True)
        for f in fractions:
            def cell(r: dict[str, Any], f: float = f, stat: str = "top1", protocol: str = protocol) -> str:
                t = _transfer_result(r, protocol, f)
                return mean_sd_text(t, stat) if t and stat in t else ""

            columns.append((transfer_header(protocol, f), cell))
            if f == 1.0 and any("top5" in t for t in results if t["protocol"] == protocol and t["fraction"] == 1):
                columns.append((transfer_header(protocol, f, "top-5"), lambda r, c=cell: c(r, stat="top5")))

        def pct(r: dict[str, Any], protocol: str = protocol) -> str:
            t = next((t for t in r.get("transfer", []) if t["protocol"] == protocol and "trainable_pct" in t), None)
            return f"{t['trainable_pct']:.2f}" if t else ""

        columns.append((f"{protocol} trainable %", pct))
        differing = options_that_differ([t for t in results if t["protocol"] == protocol])
        if differing:  # two transfers of one protocol with other options looked the same but for the folder

            def opts(r: dict[str, Any], protocol: str = protocol, keys: list[str] = differing) -> str:
                t = next((t for t in r.get("transfer", []) if t["protocol"] == protocol), None)
                given = t.get("options") if t else None
                return ", ".join(f"{k}={given.get(k)}" for k in keys) if isinstance(given, dict) else ""

            columns.append((f"{protocol} options", opts))
    return columns


def options_that_differ(results: list[dict[str, Any]]) -> list[str]:
    """The ``options`` keys (``--transfer``) whose values differ between transfer ``results`` (sorted); results
    written without options are left out."""
    seen = [t["options"] for t in results if isinstance(t.get("options"), dict)]
    keys = sorted({k for o in seen for k in o} - {"given"})  # "given": which options were set, bookkeeping
    return [k for k in keys if len({json.dumps(o.get(k), sort_keys=True) for o in seen}) > 1]


def data_cell(row: dict[str, Any]) -> str:
    """Which data a result row was measured on: the dataset and its train / test image counts (a transfer
    row: those of its all-labels fraction); blank when the row does not say (results written before)."""
    r = (row.get("transfer") or [{}])[0] if row.get("kind") == TRANSFER_KIND else row
    if not r.get("dataset"):
        return ""
    counts = f" ({r['train_images']}/{r['test_images']})" if "train_images" in r and "test_images" in r else ""
    return f"{r['dataset']}{counts}"


def size_cell(row: dict[str, Any]) -> str:
    """The side length (px) a result row's encoder saw the images at (a transfer row: its all-labels
    fraction's); blank when the row does not say (results written before ``image_size`` was recorded)."""
    r = (row.get("transfer") or [{}])[0] if row.get("kind") == TRANSFER_KIND else row
    return str(r["image_size"]) if isinstance(r.get("image_size"), int) else ""


def _scores(row: dict[str, Any]) -> str:
    """A result row's numbers, as text: every kNN and probe top-1, a detection row's mAP, AP50, AP75 and
    settings (:data:`DETECTION_SETTINGS`), a transfer row's top-1 per protocol and fraction. The same baseline
    read from a run's results.json and from its export's card (which keeps fewer fields) compares equal; two
    detection baselines trained otherwise do not (they were listed as one)."""
    numbers = {f"knn {k}": v.get("top1") for k, v in (row.get("knn") or {}).items() if isinstance(v, dict)}
    numbers.update({k: v.get("top1") for k, v in row.items() if k.startswith("linear") and isinstance(v, dict)})
    if row.get("task") == DETECTION_TASK:
        numbers.update({k: row.get(k) for k in (*DETECTION_APS, "image_size")})
        numbers["settings"] = detection_settings(row)
    for t in row.get("transfer") or []:
        if isinstance(t, dict):
            numbers[f"{t.get('protocol')} {t.get('fraction')}"] = t.get("top1")
    return json.dumps(numbers, sort_keys=True, default=str)


def table_rows(entries: list[Entry], baselines: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison (see the module docstring)."""
    picked: list[tuple[Entry, dict[str, Any]]] = []
    seen = set()
    for e in entries:
        own = e.rows if e.baseline_target else [r for r in e.rows if r.get("kind") not in BASELINE_KINDS]
        if not own:
            what = "only baselines" if e.rows else "no results at all"
            raise LoadError(f"{e.target} holds no result of its own encoder ({what}): evaluate it with "
                            f"selfsup eval {e.target}")
        picked += [(e, r) for r in own]
        if baselines and not e.baseline_target:
            for r in e.rows:  # a baseline listed once: the same row beside several targets is one row
                key = (r["label"], r.get("dataset"), _scores(r))
                if r.get("kind") in BASELINE_KINDS and key not in seen:
                    seen.add(key)
                    picked.append((Entry(e.target), r))
    rows = [r for _, r in picked]
    # two different baselines under one label (random-init resnet18 built with another target's kwargs, or
    # on other data): each says which target it was evaluated beside (one was hidden by the other before)
    labels = [r["label"] for e, r in picked if r.get("kind") in BASELINE_KINDS and not e.baseline_target]
    shared = {label for label in labels if labels.count(label) > 1}
    columns = frozen_columns(rows) + transfer_columns(rows) + detection_columns(rows)
    numbers = [result_cells(e, r, columns) for e, r in picked]
    for (e, r), row_cells in zip(picked, numbers):  # results compare cannot read (another task's, ...) are named
        if not any(row_cells) and (e.baseline_target or r.get("kind") not in BASELINE_KINDS):
            raise LoadError(f"{e.target}: its result {r.get('label', '')!r} holds none of the numbers compare "
                            f"reads (kNN, linear probes, transfer, detection mAP): give a run, export or "
                            f"evaluation folder of selfsup eval")
    sized = any(size_cell(r) for r in rows)  # a px column when any row says the size its encoder saw
    header = ["target", "method", "encoder", "data", *([SIZE] if sized else []), "epochs", "train min",
              *[h for h, _ in columns]]
    cells = []
    for (e, r), row_cells in zip(picked, numbers):
        label = (f"{e.target} ({r['label']})" if e.baseline_target else
                 (f"{r['label']} (beside {e.target})" if r["label"] in shared else r["label"])
                 if r.get("kind") in BASELINE_KINDS else e.target)
        cells.append([label, e.method or "", e.encoder or "", data_cell(r), *([size_cell(r)] if sized else []),
                      # a result of a run's older weights: the run's epochs and minutes now are not theirs
                      "" if e.epochs is None or is_stale(r) else f"{e.epochs:g}",
                      "" if e.train_minutes is None or is_stale(r) else f"{e.train_minutes:.1f}", *row_cells])
    said = [result_warnings(r) for r in rows]
    if any(said):  # the warnings a number was written with travel with it (a diverged lr, a too small subset)
        header.append(WARNINGS)
        for c, w in zip(cells, said):
            c.append("\n".join(w))
    return header, cells


def result_cells(entry: Entry, row: dict[str, Any], columns: list[Column]) -> list[str]:
    """The cells of ``row`` (of ``entry``) in ``columns``; the values were checked by :func:`check_rows`.

    Raises:
        LoadError: (one line) a result lacks a key a cell reads (an edited or cut results.json)."""
    try:
        return [cell(row) for _, cell in columns]
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise LoadError(f"{entry.target}: its result {row.get('label', '')!r} is not laid out as selfsup writes "
                        f"results ({type(err).__name__}: {err}): its results.json was edited or cut short; "
                        f"evaluate it again") from None


WARNINGS = "warnings"  # the last column when any row has warnings: one per line in the CSV, notes under the markdown
SIZE = "px"  # the column of the side length each row's encoder saw, when any row records it


def result_warnings(row: dict[str, Any]) -> list[str]:
    """The warnings a result row was written with: a frozen row's (:func:`selfsup.eval.report.row_warnings`),
    a transfer row's from each protocol and fraction it holds; and, where the evaluation data was not what
    the encoder was pretrained on (``pretraining_data_differs``, written by ``selfsup eval``), that."""
    parts = row.get("transfer", []) if row.get("kind") == TRANSFER_KIND else [row]
    said = [w for t in parts for w in t.get("warnings") or []] if row.get("kind") == TRANSFER_KIND else \
        row_warnings(row)
    differs = dict.fromkeys(t[PRETRAINING_DATA_DIFFERS] for t in parts if t.get(PRETRAINING_DATA_DIFFERS))
    return [*said, *(f"evaluated on other data than its encoder was pretrained on ({why})" for why in differs)]


def differ(data: set[str]) -> bool:
    """Whether data cells (:func:`data_cell`: ``name`` or ``name (train/test)``) name different data: other
    datasets, or one dataset at other image counts (a cell without counts, an export card's, matches any)."""
    names: dict[str, set[str]] = {}
    for cell in data:
        name, _, counts = cell.partition(" (")
        names.setdefault(name, set()).update([counts] if counts else [])
    return len(names) > 1 or any(len(c) > 1 for c in names.values())


def markdown(header: list[str], cells: list[list[str]]) -> str:
    """The table; under it each row's warnings (the last column, :data:`WARNINGS`, when there) and a note
    when its rows were measured on different data (the data column)."""
    notes: list[str] = []
    if header and header[-1] == WARNINGS:
        for c in cells:
            notes += [f"- **Warning** ({c[0]}): {w}" for w in c[-1].splitlines() if w]  # a list, as in results.md
        header, cells = header[:-1], [c[:-1] for c in cells]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|"]
    sizes = {c[header.index(SIZE)] for c in cells if c[header.index(SIZE)]} if SIZE in header else set()
    text = "\n".join([*lines, *("| " + " | ".join(c) + " |" for c in cells)]) + "\n"
    data = {c[header.index("data")] for c in cells if c[header.index("data")]} if "data" in header else set()
    if notes:
        text += "\n" + "\n".join(dict.fromkeys(notes)) + "\n"
    if differ(data):
        text += (f"\nNote: these rows were measured on different data ({'; '.join(sorted(data))}): numbers of "
                 f"different data do not compare.\n")
    if len(sizes) > 1:
        text += (f"\nNote: these rows' encoders saw the images at different sizes ({', '.join(sorted(sizes, key=int))} "
                 f"px, the px column): numbers at different input sizes do not compare.\n")
    return text


def to_csv(header: list[str], cells: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(cells)
    return buf.getvalue()


def bar_plot(header: list[str], cells: list[list[str]], out: str | Path) -> Path | None:
    """The first kNN column, the all-labels linear top-1 and each protocol's all-labels transfer top-1 of every
    row as grouped bars."""
    from selfsup.plots import bar_chart

    columns = [i for i, h in enumerate(header) if h.startswith("kNN ")][:1] + \
        [i for i, h in enumerate(header) if h in ("linear top-1", "detection mAP") or h.endswith(" 100% top-1")]

    def value(text: str) -> float | None:
        return float(text.split(" ± ")[0]) if text else None

    def spread(text: str) -> float | None:
        return float(text.split(" ± ")[1]) if " ± " in text else None

    detection = any(header[i] == "detection mAP" for i in columns)
    return bar_chart([c[0] for c in cells], {header[i]: [value(c[i]) for c in cells] for i in columns}, out,
                     ylabel="test top-1 / detection mAP (%)" if detection else "test top-1 (%)",
                     errors={header[i]: [spread(c[i]) for c in cells] for i in columns})
