"""The markdown table of a transfer evaluation (``selfsup eval TARGET --protocol NAME``): per labelled
fraction, the test top-1/top-5 (mean ± sd over seeds, final epoch), the trainable parameters and the
training minutes, beside the same target's frozen-feature linear probe and kNN when its run has them; a
footnote says why a frozen cell is blank and how to get the number."""

from __future__ import annotations

from typing import Any

from selfsup.eval.linear import fraction_key
from selfsup.eval.report import mean_sd_text, top5_note


def frozen_own(frozen_rows: list[dict[str, Any]], size: int | None = None) -> list[dict[str, Any]]:
    """The pretrained final-stage rows of ``frozen_rows``; with ``size``, only those that saw the images at
    ``size`` px (a row without ``image_size`` is taken to have)."""
    return [r for r in frozen_rows if r.get("kind") == "pretrained" and r.get("pooling") in (None, "encoder")
            and (size is None or r.get("image_size", size) == size)]


def frozen_scores(frozen_rows: list[dict[str, Any]], fraction: float, size: int | None = None) -> tuple[str, str]:
    """The pretrained row's linear top-1 at ``fraction`` and its first kNN top-1 ("" when absent):
    the frozen-feature numbers of the same encoder (final stage), at ``size`` px when given (numbers at
    another input size are not the same encoder's comparison)."""
    own = frozen_own(frozen_rows, size)
    if not own:
        return "", ""
    probe = own[0].get(fraction_key(fraction))
    knn = next(iter(own[0].get("knn", {}).values()), None) if fraction >= 1 else None
    return (mean_sd_text(probe, "top1") if isinstance(probe, dict) and "top1" in probe else "",
            f"{knn['top1']:.2f}" if knn else "")


def frozen_notes(target: str, rows: list[dict[str, Any]], frozen_rows: list[dict[str, Any]],
                 other_data: bool = False, behind: str | None = None) -> list[str]:
    """Footnotes for the blank frozen linear / kNN cells of the table of ``rows``: none when every cell is
    filled; else why they are blank (no frozen evaluation beside the target; one of other weights, ``behind``
    saying whose, see :func:`selfsup.rundir.results_behind`; none at that labelled fraction; kNN votes with
    every label, so it has the all-labels row only) and how to get the numbers."""
    cells = [frozen_scores(frozen_rows, r["fraction"], r.get("image_size")) for r in rows]
    if not any("" in cell for cell in cells):
        return []
    if other_data:  # the run's results.json is of the data it trained on
        return [f"Frozen linear / kNN top-1 are blank: this transfer is on other data than {target} was trained and "
                f"evaluated on, and its results.json holds numbers of its own data only; `selfsup eval {target}` "
                f"with the same data options gives the frozen numbers on this data (in a folder of their own)."]
    size = next((r["image_size"] for r in rows if r.get("image_size")), None)
    if frozen_own(frozen_rows) and not frozen_own(frozen_rows, size):
        seen = sorted({r["image_size"] for r in frozen_own(frozen_rows)})
        return [f"Frozen linear / kNN top-1 are blank: the run's frozen evaluation saw the images at "
                f"{', '.join(map(str, seen))} px and this transfer at {size} px, so its numbers are not this "
                f"encoder's at this size; `selfsup eval {target} eval.image_size={size}` gives them (in its own "
                f"folder)."]
    if behind is not None and not any(r.get("kind") == "pretrained" for r in frozen_rows):
        return [f"Frozen linear / kNN top-1 are blank: {target}'s results.json holds frozen numbers {behind}, not of "
                f"the weights this transfer adapted (a resume trained on since, or a checkpoint read mid-training); "
                f"`selfsup eval {target}` with the same data options evaluates its weights now."]
    if not any(r.get("kind") == "pretrained" for r in frozen_rows):
        return [f"Frozen linear / kNN top-1 are blank: {target} has no frozen-feature evaluation beside it (they "
                f"are read from the results.json of a run directory given as the target). For them, run "
                f"`selfsup eval {target}` with the same data options (kNN and linear probe on the frozen encoder, "
                f"in its own results.md), or give a pretrained run directory as the target once it is evaluated."]
    notes = []
    if any(linear == "" for linear, _ in cells):
        missing = ", ".join(f"{r['fraction'] * 100:g}%" for r, (linear, _) in zip(rows, cells) if linear == "")
        notes.append(f"Frozen linear top-1 is blank at {missing} of labels: the run's frozen evaluation has no "
                     f"probe at that fraction; add it to eval.low_shot and run `selfsup eval {target}` again.")
    if any(knn == "" for r, (_, knn) in zip(rows, cells) if r["fraction"] >= 1):
        notes.append(f"Frozen kNN top-1 is blank: the run's frozen evaluation has no kNN result; run `selfsup eval "
                     f"{target}` with eval.knn set (a list of [k, T] pairs).")
    if any(r["fraction"] < 1 for r in rows):
        notes.append("Frozen kNN top-1 is given with all labels only (its votes use every training label).")
    return notes


def transfer_markdown(target: str, rows: list[dict[str, Any]], frozen_rows: list[dict[str, Any]],
                      other_data: bool = False, behind: str | None = None) -> str:
    """Markdown: one line per labelled fraction of ``rows`` (:func:`selfsup.transfer.run_protocol`);
    ``other_data``: the transfer is on other data than the run's (``frozen_rows`` are then empty); ``behind``:
    why the run's own frozen rows were left out of ``frozen_rows`` (:func:`frozen_notes`)."""
    single = bool(rows) and all(r.get("val_images") == 0 for r in rows)  # one lr: nothing chosen, nothing held out
    how = ("one learning rate, trained on every training image" if single
           else "the learning rate chosen on a split held out from the training images")
    lines = [f"Transfer of {target}: top-1 / top-5 on the test split after the last epoch, mean ± sd over "
             f"seeds ({how}).", "",
             "| protocol | labels | train images | top-1 | top-5 | trainable params (% of encoder) | train min "
             "(per seed) | frozen linear top-1 | frozen kNN top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        linear, knn = frozen_scores(frozen_rows, r["fraction"], r.get("image_size"))
        lines.append(f"| {r['protocol']} | {r['fraction'] * 100:g}% | {r['train_images']} | {mean_sd_text(r, 'top1')} | "
                     f"{mean_sd_text(r, 'top5')} | {r['trainable_params']:,} ({r['trainable_pct']:.2f}%) | "
                     f"{r['minutes']:.1f} | {linear} | {knn} |")
    notes = [f"**Warning**: {w}" for r in rows for w in r.get("warnings", [])] + frozen_notes(target, rows, frozen_rows, other_data, behind)
    if note := top5_note(rows):  # as results.md says for the frozen probes
        notes.append(note)
    processes = {r.get("processes", 1) for r in rows}
    if processes != {1}:  # data-parallel: BatchNorm statistics and the batches' split differ from one process
        notes.append(f"Trained data-parallel on {', '.join(str(p) for p in sorted(processes))} processes "
                     f"(trainer.devices x trainer.num_nodes); the global batch is --transfer batch_size.")
    if any("val_images" in r for r in rows) and not single:
        held = ", ".join(f"{r['fraction'] * 100:g}%: {r['val_images']}" for r in rows if "val_images" in r)
        notes.append(f"Train images: the labelled subset. Each lr trains on it less a held-out share ({held} "
                     f"images) that chooses the lr, and the chosen model is the one reported (no refit on the whole "
                     f"subset, unlike the linear probe).")
    return "\n".join(lines) + "\n" + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
