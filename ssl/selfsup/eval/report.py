"""Results as a markdown table (results.md) beside results.json."""

from __future__ import annotations

from typing import Any

NOTES = {
    "random": "random init with timm's zero_init_last disabled (a fair baseline: no block starts as identity)",
    "pixels": "raw pixels, normalised and centred on the training mean image",
}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per evaluated target: kNN top-1 for each (k, T), linear top-1/top-5."""
    if not rows:
        return ""
    knn_keys = list(rows[0].get("knn", {}))
    header = ["encoder"] + [f"kNN {k} top-1" for k in knn_keys]
    has_linear = any("linear" in r for r in rows)
    if has_linear:
        header += ["linear top-1", "linear top-5"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        cells = [r["label"]] + [f"{r['knn'][k]['top1']:.2f}" for k in knn_keys]
        if has_linear:
            lin = r.get("linear")
            cells += [f"{lin['top1']:.2f}", f"{lin['top5']:.2f}"] if lin else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    notes = [f"Dataset {first['dataset']}: {first['train_images']} train / {first['test_images']} test images; "
             f"accuracies in percent on the test split; seed {first['seed']}; final-epoch weights, no epoch picked "
             f"on the test set. kNN: cosine, votes weighted by exp(sim/T). Linear probe: lr and weight decay "
             f"chosen on a split held out from the training set."]
    notes += [f"{r['label']}: {NOTES[r['kind']]}." for r in rows if r["kind"] in NOTES]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
