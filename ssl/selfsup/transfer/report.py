"""The markdown table of a transfer evaluation (``selfsup eval TARGET --protocol NAME``): per labelled
fraction, the test top-1/top-5 (mean ± sd over seeds, final epoch), the trainable parameters and the
training minutes, beside the same target's frozen-feature linear probe and kNN when its run has them."""

from __future__ import annotations

from typing import Any

from selfsup.eval.linear import fraction_key
from selfsup.eval.report import _pm


def frozen_scores(frozen_rows: list[dict[str, Any]], fraction: float) -> tuple[str, str]:
    """The pretrained row's linear top-1 at ``fraction`` and its first kNN top-1 ("" when absent):
    the frozen-feature numbers of the same encoder (final stage)."""
    own = [r for r in frozen_rows if r.get("kind") == "pretrained" and r.get("pooling") in (None, "encoder")]
    if not own:
        return "", ""
    probe = own[0].get(fraction_key(fraction))
    knn = next(iter(own[0].get("knn", {}).values()), None) if fraction >= 1 else None
    return (_pm(probe, "top1") if isinstance(probe, dict) and "top1" in probe else "",
            f"{knn['top1']:.2f}" if knn else "")


def transfer_markdown(target: str, rows: list[dict[str, Any]], frozen_rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per labelled fraction of ``rows`` (:func:`selfsup.transfer.run_protocol`)."""
    lines = [f"Transfer of {target}: top-1 / top-5 on the test split after the last epoch, mean ± sd over "
             f"seeds (the learning rate chosen on a split held out from the training images).", "",
             "| protocol | labels | train images | top-1 | top-5 | trainable params (% of encoder) | train min "
             "(per seed) | frozen linear top-1 | frozen kNN top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        linear, knn = frozen_scores(frozen_rows, r["fraction"])
        lines.append(f"| {r['protocol']} | {r['fraction'] * 100:g}% | {r['train_images']} | {_pm(r, 'top1')} | "
                     f"{_pm(r, 'top5')} | {r['trainable_params']:,} ({r['trainable_pct']:.2f}%) | "
                     f"{r['minutes']:.1f} | {linear} | {knn} |")
    return "\n".join(lines) + "\n"
