"""Results as a markdown table (results.md) beside results.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NOTES = {
    "random": "random init with timm's zero_init_last disabled (a fair baseline: no block starts as identity)",
    "pixels": "raw pixels, normalised and centred on the training mean image",
}


# the results.json key of a row evaluated on other data than its encoder was pretrained on: how the data differs
# (written by selfsup eval RUN, read by selfsup compare)
PRETRAINING_DATA_DIFFERS = "pretraining_data_differs"


POOL_NOTES = {
    "grid": "earlier stages average-pooled to a grid of about 9k values (round(sqrt(9216 / channels)) cells "
            "a side, at most the map's own size)",
    "avg": "earlier stages globally average-pooled (one value per channel)",
}


def mean_sd_text(result: Mapping[str, Any], key: str = "top1") -> str:
    """``mean ± sd`` of a result over its seeds (``result[key]``, ``result[key + "_std"]``); the mean
    alone for one seed (``seeds`` 1, or a single ``key + "_per_seed"`` value), whose spread is not
    measured (a ``± 0.00`` would claim none), or with no sd recorded."""
    std = result.get(f"{key}_std")
    per_seed = result.get(f"{key}_per_seed")
    one_seed = result.get("seeds") == 1 or (isinstance(per_seed, list) and len(per_seed) == 1)
    return f"{result[key]:.2f}" if std is None or one_seed else f"{result[key]:.2f} ± {std:.2f}"


def probe_header(key: str) -> str:
    """The column name of probe result ``key``: "linear top-1" for all labels, "linear top-1, 10% labels"
    for a low-shot fraction, "sklearn logistic top-1" for the scikit-learn cross-check."""
    if key == "linear":
        return "linear top-1"
    if key == "linear_sklearn":
        return "sklearn logistic top-1"
    return f"linear top-1, {key.removeprefix('linear_').replace('pct', '%')} labels"


def probe_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The probe results present ("linear", then low-shot "linear_10pct", ... by falling fraction)."""
    keys = {k for r in rows for k, v in r.items() if k.startswith("linear") and isinstance(v, dict) and "fraction" in v}
    keys |= {"linear"} if any("linear" in r for r in rows) else set()
    frac = {k: next(r[k].get("fraction", 1.0) for r in rows if k in r) for k in keys}
    return sorted(keys, key=lambda k: -frac[k])


def baseline_options(rows: list[dict[str, Any]]) -> str:
    """The ``--baseline`` options of ``selfsup eval`` that give the baseline rows of ``rows`` again (their
    ``target``: ``pixels``, ``random:resnet18``, a path), e.g. `` --baseline pixels``; ``""`` for none."""
    targets = dict.fromkeys(r["target"] for r in rows if r.get("kind") in ("random", "pixels")
                            and isinstance(r.get("target"), str))
    return "".join(f" --baseline {t}" for t in targets)


def row_warnings(row: dict[str, Any]) -> list[str]:
    """A result's one-line warnings: its own ``warnings`` and its kNN index's (``knn_index.warnings``)."""
    return [*(row.get("warnings") or []), *((row.get("knn_index") or {}).get("warnings") or [])]


def top5_note(rows: list[dict[str, Any]]) -> str | None:
    """A note when some rows (results.md's, the transfer table's: each with ``num_classes``) have 5 classes or
    fewer: a top-5 prediction then holds every class, so top-5 is 100 whatever the features; None otherwise."""
    few = sorted({r["num_classes"] for r in rows if 0 < r.get("num_classes", 6) <= 5})
    if not few:
        return None
    return (f"With {' or '.join(map(str, few))} classes a top-5 prediction holds every class: top-5 is 100 by "
            f"construction there and says nothing about the features.")


def stage_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """The warnings of layer-wise rows, each once per target with the stages it came from: ``**Warning**
    (run x, stages act1, layer1): ...``, or ``(run x, every stage)`` when all of the target's stage rows have
    it (a target's data warnings), in the order first seen. Without the stage, a probe that diverged at one
    stage read as the target's."""
    stages: dict[str, list[str]] = {}  # a target's stage names, in row order (none for raw pixels)
    seen: dict[tuple[str, str], list[str]] = {}  # (target, warning) -> the stages that gave it
    for r in rows:
        where = [] if r.get("layer") is None else [str(r["layer"])]
        stages.setdefault(r["label"], []).extend(where)
        for w in row_warnings(r):
            seen.setdefault((r["label"], w), []).extend(where)
    out = []
    for (label, w), where in seen.items():
        where = list(dict.fromkeys(where))
        said = ("" if not where else ", every stage" if where == stages[label] and len(where) > 1 else
                f", stage{'s' if len(where) > 1 else ''} {', '.join(where)}")
        out.append(f"**Warning** ({label}{said}): {w}")
    return out


def layer_cell(row: dict[str, Any]) -> str:
    """The "stage" cell of a layer-wise row: the timm stage name, its pooling and width
    (``layer3 (grid, 1024-d)``; the final stage is the encoder's pooled output)."""
    if row.get("layer") is None:
        return "no stages"
    how = "pooled output" if row.get("pooling") == "encoder" else row.get("pooling")
    return f"{row['layer']} ({how}, {row['feature_dim']}-d)"


def probe_held_out(rows: list[dict[str, Any]]) -> list[int]:
    """The held-out split sizes (``val_images``) of every linear probe of ``rows`` (0: a single setting,
    nothing held out; empty when no row has a probe)."""
    return [v["val_images"] for r in rows for k, v in r.items()
            if k.startswith("linear") and k != "linear_sklearn" and isinstance(v, dict) and "val_images" in v]


def probe_chooses(rows: list[dict[str, Any]]) -> bool:
    """Whether a linear probe of ``rows`` chose its (lr, wd) on a held-out split (rows written before
    ``val_images`` existed are taken to have)."""
    held = probe_held_out(rows)
    return not held or any(n > 0 for n in held)


def probe_choice_note(rows: list[dict[str, Any]]) -> str:
    """The results note on how the linear probe's setting was chosen."""
    if probe_chooses(rows):
        return "Linear probe: lr and weight decay chosen on a split held out from the training set."
    return "Linear probe: one lr and weight decay (eval.linear_lrs, eval.linear_wds), trained on every training image."


def input_size_notes(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The warnings and notes on the side length each row's encoder saw (``image_size``, px) against
    the data's (``data_image_size``): a warning when the rows saw different sizes (their accuracies
    are not read at one input size), a note naming each target's size when one differs from the
    data's (a trained encoder sees its training size). Rows written before these keys: none."""
    sized = {r["label"]: (r["image_size"], r.get("data_image_size")) for r in rows if r.get("image_size")}
    if not sized:
        return [], []
    by_size: dict[int, list[str]] = {}
    for label, (size, _) in sized.items():
        by_size.setdefault(size, []).append(label)
    each = "; ".join(f"{', '.join(labels)} {size} px" for size, labels in by_size.items())
    warnings = [f"**Warning**: the encoders saw the images at different sizes ({each}), so their accuracies are "
                f"not compared at one input size; eval.image_size=N evaluates every target at N px"] \
        if len(by_size) > 1 else []
    resized = {label: (size, data) for label, (size, data) in sized.items() if data and size != data}
    notes = [f"Input size: {each}; the data's images are {next(iter(resized.values()))[1]} px, resized for "
             f"{', '.join(resized)} (a trained encoder sees the size it was trained at unless eval.image_size is "
             f"set)."] if resized else []
    return warnings, notes


def random_kwargs_note(row: dict[str, Any]) -> str:
    """", built with encoder.kwargs {...}" (the config's, for its own encoder) or ", built with timm's default
    kwargs" for a random-init row that records them (``encoder_kwargs``); "" for any other row."""
    if "encoder_kwargs" not in row:
        return ""
    kwargs = row["encoder_kwargs"]
    return f", built with encoder.kwargs {kwargs}" if kwargs else ", built with timm's default kwargs"


def knn_index_note(rows: list[dict[str, Any]]) -> str:
    """The kNN search note: the settings of every row's faiss index (``knn_index``) said once where they agree,
    per row where they differ (the feature width of each target and stage: one row's said them all)."""
    indexes = [(f"{r['label']}{' [' + r['layer'] + ']' if r.get('layer') else ''}", r["knn_index"])
               for r in rows if r.get("knn_index")]
    keys = [k for k in dict.fromkeys(k for _, ix in indexes for k in ix)
            if k not in ("seconds", "warnings") and any(ix.get(k) is not None for _, ix in indexes)]
    same = [k for k in keys if len({repr(ix.get(k)) for _, ix in indexes}) == 1]
    shown = ", ".join(f"{k} {indexes[0][1][k]}" for k in same)
    differ = "".join(f"; {k}: " + ", ".join(f"{label} {ix.get(k)}" for label, ix in indexes)
                     for k in keys if k not in same)
    return f"kNN search: faiss, {shown}{differ}."


def markdown_table(rows: list[dict[str, Any]], extra_notes: Sequence[str] = ()) -> str:
    """One row per evaluated target, or per stage of each target when evaluated layer-wise
    (rows with a ``layer`` key: a "stage" column after the encoder's). kNN top-1 for each (k, T); linear top-1/top-5
    with all labels and top-1 on each low-shot fraction, as mean ± std over the probe seeds. Under
    the table, every warning of every row (:func:`row_warnings`), then notes on the protocol, then
    ``extra_notes`` (e.g. a baseline left out)."""
    if not rows:
        return ""
    knn_keys = list(rows[0].get("knn", {}))
    layered = any("layer" in r for r in rows)
    header = ["encoder"] + (["stage"] if layered else []) + [f"kNN {k} top-1" for k in knn_keys]
    probes = probe_keys(rows)
    for key in probes:
        if key == "linear":
            header += ["linear top-1", "linear top-5"]
        else:
            header.append(probe_header(key))
    has_sklearn = any("linear_sklearn" in r for r in rows)
    if has_sklearn:
        header.append("sklearn logistic top-1")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        cells = [r["label"]] + ([layer_cell(r)] if layered else []) + [f"{r['knn'][k]['top1']:.2f}" for k in knn_keys]
        for key in probes:
            res = r.get(key)
            width = 2 if key == "linear" else 1
            if not res:
                cells += [""] * width
            else:
                cells += [mean_sd_text(res, "top1"), mean_sd_text(res, "top5")][:width]
        if has_sklearn:
            cells.append(f"{r['linear_sklearn']['top1']:.2f}" if "linear_sklearn" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    warnings = stage_warnings(rows) if layered else [f"**Warning** ({r['label']}): {w}" for r in rows
                                                      for w in row_warnings(r)]
    once = (lambda xs: list(dict.fromkeys(xs))) if layered else list  # a target's stage rows share its notes
    size_warnings, size_notes = input_size_notes(rows)
    notes = [*size_warnings, *warnings, *size_notes,
             f"Dataset {first['dataset']}: {first['train_images']} train / {first['test_images']} test images; "
             f"accuracies in percent on the test split; seed {first['seed']}; "
             + ("the weights of the last checkpoint (a run still training: its warning says so)"
                if any(r.get("mid_training") for r in rows) else "the weights of the last training step"
                if any(r.get("kind") == "pretrained" for r in rows) else "no trained weights (baselines only)")
             + ", no epoch picked on the test set. kNN: cosine, votes weighted by exp(sim/T); a class without a vote "
             "is never counted as predicted, in top-5 too." + (" " + probe_choice_note(rows) if probes else "")]
    if probes and (note := top5_note(rows)):
        notes.append(note)
    if any(r.get("knn_index") for r in rows):
        notes.append(knn_index_note(rows))
    lin = next((r["linear"] for r in rows if "linear" in r), None)
    if lin and lin.get("seeds") == 1:
        notes.append("Probe numbers are from one seed: no spread is measured (eval.probe_seeds sets more).")
    elif lin and "seeds" in lin:
        notes.append(f"Probe numbers are mean ± sample standard deviation over {lin['seeds']} seeds (seed "
                     f"{first['seed']} onwards). All labels: lr/wd chosen once, the probe retrained from each seed. "
                     f"Low-shot: a class-balanced subset drawn per seed"
                     + (", lr/wd chosen on a split held out from it." if probe_chooses(rows) else "."))
    if has_sklearn:
        notes.append("sklearn logistic top-1: scikit-learn's multinomial logistic regression (L-BFGS, C=1) on the "
                     "same standardised features, a cross-check of the SGD probe.")
    if layered:
        pools = sorted({r["pooling"] for r in rows if r.get("pooling") in POOL_NOTES})
        notes.append("Layer-wise evaluation (Goyal et al. 2019; VISSL): one row per encoder stage (timm feature_info "
                     "names), all from one extraction pass, scored by the same kNN and probes; the final stage is "
                     "the encoder's pooled output, the same numbers as eval.layers=last"
                     + "".join(f"; {POOL_NOTES[p]}" for p in pools) + ".")
        if any(r.get("layer") is None for r in rows):
            notes.append("Raw pixels have no stages: one row.")
    free = [f"{r['label']}{' [' + r['layer'] + ']' if r.get('layer') else ''} {r['label_free']['rankme']:.1f} / "
            f"{r['label_free']['uniformity']:.2f}" for r in rows if r.get("label_free")]
    if free:
        n = next(r["label_free"]["rows"] for r in rows if r.get("label_free"))
        notes.append(f"Label-free signals of {n} test features (RankMe: effective rank, Garrido et al. 2023; uniformity at t=2, Wang & Isola "
                     f"2020; no labels used), RankMe / uniformity: " + "; ".join(free) + ".")
    notes += once(f"{r['label']}: {NOTES[r['kind']]}{random_kwargs_note(r)}." for r in rows if r["kind"] in NOTES)
    notes += extra_notes
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
