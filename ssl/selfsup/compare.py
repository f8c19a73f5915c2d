"""``selfsup compare RUN_OR_EXPORT ...``: one table across runs and exports.

Each target contributes the row of its own encoder (the final stage when it was evaluated
layer-wise); ``baselines=True`` adds the random-init and pixel rows they were evaluated beside
(once per label and dataset). Columns: method, encoder, epochs completed and training minutes
(from the run's ``training_time.json``, or the export card's copy of it; blank when unknown, never
the configured ``max_epochs``), every kNN
(k, T) and every linear-probe fraction any target has, as mean ± sd over probe seeds. A
column a target lacks is blank; a target with nothing to compare is an error naming it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.artifacts.validate import read_card
from selfsup.eval.report import _pm, probe_header, probe_keys
from selfsup.rundir import RunDir, is_export_dir
from selfsup.safeload import LoadError

BASELINE_KINDS = ("random", "pixels")


@dataclass
class Entry:
    """What one run or export says about itself."""

    target: str
    method: str | None = None
    encoder: str | None = None
    epochs: float | None = None
    train_minutes: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # result rows: label, kind, knn, linear...


def _final_stage(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of each target's own features (layer-wise rows of earlier stages left out)."""
    return [r for r in rows if r.get("pooling") in (None, "encoder")]


def read_run(path: Path) -> Entry:
    """An :class:`Entry` from a run directory: config.yaml, results.json, training_time.json."""
    import yaml

    run = RunDir(path)
    cfg = yaml.safe_load(run.config.read_text()) or {}
    if not run.results_json.is_file():
        raise LoadError(f"{path} has no results.json (the run was not evaluated): run selfsup eval {path} first")
    rows = json.loads(run.results_json.read_text())
    timing = json.loads(run.training_time.read_text()) if run.training_time.is_file() else {}
    minutes = timing["seconds"] / 60 if "seconds" in timing else None
    return Entry(str(path), (cfg.get("method") or {}).get("name"), (cfg.get("encoder") or {}).get("name"),
                 timing.get("epochs"), minutes, _final_stage(rows))


def read_export(path: Path) -> Entry:
    """An :class:`Entry` from an export directory's config.json (its card keeps the results)."""
    card = read_card(path)
    rows = [{"label": label, "kind": "random" if label.startswith("random") else
             "pixels" if label.startswith("raw pixels") else "pretrained", **res}
            for label, res in (card.get("results") or {}).items()]
    return Entry(str(path), card.get("method"), card.get("architecture"), card.get("trained_epochs"),
                 card.get("training_minutes"), rows)


def read_entry(target: str | Path) -> Entry:
    """A run directory or an export directory; LoadError (one line) for anything else."""
    path = Path(target)
    if not path.exists():
        raise LoadError(f"{target} does not exist: give a run directory (selfsup pretrain) or an export directory "
                        f"(selfsup export)")
    if is_export_dir(path):
        return read_export(path)
    if RunDir(path).is_run():
        return read_run(path)
    raise LoadError(f"{target} is neither a run directory (config.yaml + checkpoints/) nor an export directory "
                    f"(config.json + model.safetensors): give what selfsup pretrain or selfsup export wrote")


def unique_targets(targets: list[str]) -> tuple[list[str], list[str]]:
    """``targets`` with repeats of one directory (however spelled) left out, and the repeats."""
    kept, repeats, seen = [], [], set()
    for t in targets:
        key = Path(t).resolve()
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
    if plot_path and Path(plot_path).suffix.lower() != ".png":
        raise LoadError(f"--plot {plot_path}: the picture is a PNG file, so its name must end in .png "
                        f"(e.g. {Path(plot_path).with_suffix('.png')})")


def table_rows(entries: list[Entry], baselines: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison (see the module docstring)."""
    picked: list[tuple[Entry, dict[str, Any]]] = []
    seen = set()
    for e in entries:
        own = [r for r in e.rows if r.get("kind") not in BASELINE_KINDS]
        if not own:
            raise LoadError(f"{e.target} holds no result of its own encoder (only baselines): evaluate it with "
                            f"selfsup eval {e.target}")
        picked += [(e, r) for r in own]
        if baselines:
            for r in e.rows:
                key = (r["label"], r.get("dataset"))
                if r.get("kind") in BASELINE_KINDS and key not in seen:
                    seen.add(key)
                    picked.append((Entry(e.target), r))
    knn_keys = list(dict.fromkeys(k for _, r in picked for k in r.get("knn", {})))
    probes = probe_keys([r for _, r in picked])
    header = ["target", "method", "encoder", "epochs", "train min", *[f"kNN {k}" for k in knn_keys],
              *[probe_header(k) for k in probes]]
    cells = []
    for e, r in picked:
        label = r["label"] if r.get("kind") in BASELINE_KINDS else e.target
        cells.append([label, e.method or "", e.encoder or "", "" if e.epochs is None else f"{e.epochs:g}",
                      "" if e.train_minutes is None else f"{e.train_minutes:.1f}",
                      *[f"{r['knn'][k]['top1']:.2f}" if k in r.get("knn", {}) else "" for k in knn_keys],
                      *[_pm(r[k], "top1") if isinstance(r.get(k), dict) and "top1" in r[k] else "" for k in probes]])
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(c) + " |" for c in cells)]) + "\n"


def to_csv(header: list[str], cells: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(cells)
    return buf.getvalue()


def bar_plot(header: list[str], cells: list[list[str]], out: str | Path) -> Path | None:
    """The first kNN column and the all-labels linear top-1 of every row as grouped bars."""
    from selfsup.plots import bar_chart

    columns = [i for i, h in enumerate(header) if h.startswith("kNN ")][:1] + \
        [i for i, h in enumerate(header) if h == "linear top-1"]

    def value(text: str) -> float | None:
        return float(text.split(" ± ")[0]) if text else None

    def spread(text: str) -> float | None:
        return float(text.split(" ± ")[1]) if " ± " in text else None

    return bar_chart([c[0] for c in cells], {header[i]: [value(c[i]) for c in cells] for i in columns}, out,
                     errors={header[i]: [spread(c[i]) for c in cells] for i in columns})
