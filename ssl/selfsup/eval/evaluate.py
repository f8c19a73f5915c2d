"""Evaluate a frozen encoder: a run, an export, ``random:<timm-name>`` or ``pixels``.

An evaluator never needs the method, only an encoder and the data. For each target this
module scores kNN (every (k, T) of ``eval.knn``, :mod:`selfsup.eval.knn`) and the linear
probes (:mod:`selfsup.eval.linear`) on cached features, plus label-free statistics of the
test features, into one result row (:func:`evaluate`), or one row per asked-for stage of the
encoder (``eval.layers``: :func:`evaluate_layers`). The steps before scoring live in:

- :mod:`selfsup.eval.target`: the target encoder (a path is read by the ``load`` function the
  caller passes: reading a run needs the training code, which evaluation never imports);
- :mod:`selfsup.eval.evaldata`: the labelled data scored, what cannot be scored, its identity;
- :mod:`selfsup.eval.prepare`: extracting and caching the features (sharded over ranks).

Their public names stay importable from here as before.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from selfsup.config import RunConfig
from selfsup.data import ImageDataset
from selfsup.eval.evaldata import (DATA_IDENTITY, NotScorable, changed_data_keys, check_channels, data_identity,
                                   data_key, data_tag, describe_data, evaluation_data, labelled_part,
                                   labelled_training_data, unseen_classes_message, untested_classes_message)
from selfsup.eval.knn import check_finite, knn_evaluate_with_index
from selfsup.eval.layers import Stage
from selfsup.eval.linear import CONSTANT_STD, check_fraction_splits, probe_protocol, sklearn_probe
from selfsup.eval.prepare import (Prepared, cache_features, check_layers, feature_extractor, fill_stage_cache,
                                  layer_wise, prepare, target_stages)
from selfsup.eval.search import IndexOptions
from selfsup.eval.target import EncoderLoader, Target, default_device, random_encoder, resolve_target
from selfsup.monitors import CONSTANT_SPREAD, collapse_warning, rankme, relative_spread, uniformity
from selfsup.rundir import training_warning, weights_record

__all__ = ["DATA_IDENTITY", "EncoderLoader", "LABEL_FREE_ROWS", "NotScorable", "Prepared", "STORAGE", "Target",
           "cache_features", "changed_data_keys", "check_channels", "check_layers", "check_probe_fractions",
           "data_identity", "data_key", "data_tag", "default_device", "describe_data", "evaluate", "evaluate_layers",
           "evaluation_data", "fill_stage_cache", "labelled_part", "labelled_training_data", "layer_wise", "prepare",
           "probe_fractions", "resolve_target", "target_stages"]

STORAGE = {"F16": "float16", "F32": "float32"}  # safetensors dtype code -> name in results.json
LABEL_FREE_ROWS = 2048  # test rows RankMe and uniformity are measured on (a seeded sample)


def probe_fractions(cfg: RunConfig) -> tuple[float, ...]:
    """The labelled fractions the probe protocol trains: all labels, then ``eval.low_shot`` largest first."""
    return (1.0, *sorted(cfg.eval.low_shot, reverse=True))


def check_probe_fractions(cfg: RunConfig) -> None:
    """Refuse, before pretraining, the ``eval.low_shot`` fractions the linear probe would refuse after it
    (:func:`selfsup.eval.linear.check_fraction_splits` on the evaluation's labelled training images,
    :func:`labelled_training_data`; the test split is not read): a 2-class folder of 24 images finished
    pretraining, then failed with no results and no export (helper-70).
    Nothing to check without linear probes or labels (:class:`NotScorable`: the evaluation is skipped then).

    Raises:
        ConfigError / DataError: as the probe protocol would, naming the fractions to drop.
    """
    if not cfg.eval.linear:
        return
    try:
        labels = labelled_training_data(cfg)[0].labels  # [N]
    except NotScorable:
        return
    check_fraction_splits(labels, probe_fractions(cfg), cfg.eval.linear_val_fraction, cfg.seed,
                          "the linear probe", "eval.low_shot", len(cfg.eval.linear_lrs) * len(cfg.eval.linear_wds))


def evaluate(spec: str, cfg: RunConfig, cache_dir: str | Path, device: str | None = None,
             log: Callable[[str], None] = print, prepared: Prepared | None = None,
             load: EncoderLoader | None = None) -> dict[str, Any]:
    """kNN (every (k, T) in ``cfg.eval.knn``) and linear-probe results for target ``spec`` on the
    encoder's pooled output (the final stage, whatever ``eval.layers`` says; :func:`evaluate_layers`
    gives a row per stage). ``prepared``: what :func:`cache_features` already loaded for it, so
    nothing is loaded twice; ``load``: as in :func:`prepare`."""
    if prepared is not None:
        prepared = dataclasses.replace(prepared, stages=[])
    else:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, layers="last"))
    return evaluate_layers(spec, cfg, cache_dir, device, log, prepared, load)[0]


def evaluate_layers(spec: str, cfg: RunConfig, cache_dir: str | Path, device: str | None = None,
                    log: Callable[[str], None] = print, prepared: Prepared | None = None,
                    load: EncoderLoader | None = None) -> list[dict[str, Any]]:
    """One result row per stage ``eval.layers`` asks for (:mod:`selfsup.eval.layers`), shallowest
    first, each scored by the same kNN and linear probes; with ``eval.layers=last`` (and for raw
    pixels, which have no stages) one row, as before layer-wise evaluation existed. Rows of
    layer-wise evaluation add ``layer`` (the timm feature_info name; None for pixels) and
    ``pooling`` (``encoder`` for the final stage: the pooled output, the same numbers as
    ``last``; ``grid`` or ``avg`` for the others). Every missing stage is extracted in one pass
    (:func:`fill_stage_cache`); ``seconds`` counts from the start of the target's evaluation.
    ``load`` reads a path target (:func:`prepare`)."""
    t0 = time.perf_counter()
    device = device or default_device(cfg.trainer.accelerator)
    p = prepared or prepare(spec, cfg, cache_dir, load)
    warnings = [f"{p.unlabeled_left_out} unlabeled training image(s) (label -1) left out of kNN and the probes"
                ] if p.unlabeled_left_out else []  # the row's own; the kNN index adds its own (report.row_warnings)
    for warning in warnings:
        log(f"[eval] {warning}")
    if p.stages:
        fill_stage_cache(p, cfg, device, log)
    rows = []
    for stage in p.stages or [None]:
        about = None if not layer_wise(cfg) else {
            "layer": stage and stage.name, "pooling": stage and ("encoder" if stage.last else p.pool)}
        row = _score(p, spec, cfg, stage, about, warnings, device, log)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    return rows


def feature_warnings(sample: Tensor, signals: dict[str, Any], kind: str, stage: Stage | None = None) -> list[str]:
    """Warnings on a sample of test features ``sample`` [n, D] with their label-free ``signals``
    (``spread``: :func:`selfsup.monitors.relative_spread`, ``rankme``):

    - spread below :data:`selfsup.monitors.CONSTANT_SPREAD`: one vector dominates the features, and
      cosine similarity (the kNN's) cannot reliably tell the images apart in float32: the kNN columns
      are unreliable, down to chance (random-init repvgg_a0, efficientvit_b0, ghostnet_100 in eval
      mode). The linear probe standardises each feature and reads those that vary by
      :data:`selfsup.eval.linear.CONSTANT_STD` or more; with none, it is chance too.
    - otherwise, for a trained encoder, RankMe below 1% of D or 1.5 (:func:`selfsup.monitors.collapse_warning`):
      a run that collapsed (the training monitors may not have run in a short run)."""
    where = "" if stage is None else f" of stage {stage.name}"
    dim = sample.shape[1]
    if signals["spread"] < CONSTANT_SPREAD:
        said = (f"the features{where} barely vary across test images (their spread is {signals['spread']:.1e} of "
                f"their size, below {CONSTANT_SPREAD:g}: one vector dominates them), finer than cosine similarity "
                f"resolves reliably in float32, so the kNN columns are unreliable, down to chance")
        readable = int((sample.std(0) >= CONSTANT_STD).sum())
        return [said + ("; so are the probes: no feature varies by 1e-06 across images" if readable == 0 else
                        f"; the linear probe standardises each feature and reads the {readable} of {dim} that vary")]
    collapsed = collapse_warning(signals["rankme"], dim, rows=len(sample)) if kind == "pretrained" else None
    return [f"the test features{where}: {collapsed}"] if collapsed else []


def image_files(ds: ImageDataset) -> int:
    """How many images ``ds`` holds, unreadable ones included: a decoded copy (``data.cache=uint8``) keeps the
    readable ones and lists the others (``skipped_files``)."""
    return len(ds) + len(getattr(ds, "skipped_files", None) or ())


def unreadable_warnings(train_rows: int, train_files: int, test_rows: int, test_files: int) -> list[str]:
    """The warning of a split whose features have fewer rows than its dataset has images: files that could not
    be decoded were left out (data.on_bad_file=skip), so the numbers are of fewer images than the data holds."""
    return [f"{files - rows} of the {files} {split} images could not be decoded and were left out "
            f"(data.on_bad_file=skip): the numbers are of the other {rows}"
            for split, rows, files in (("train", train_rows, train_files), ("test", test_rows, test_files))
            if rows < files]


def _score(p: Prepared, spec: str, cfg: RunConfig, stage: Stage | None, about: dict[str, Any] | None,
           warnings: list[str], device: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The result row of one stage (None: the encoder's pooled output) of a prepared target;
    ``about`` (layer, pooling) goes after ``kind`` when given."""
    target, train_ds, test_ds, cache = p.target, p.train_ds, p.test_ds, p.cache
    (name_tr, key_tr), (name_te, key_te) = p.entry(stage, "train"), p.entry(stage, "test")
    lazy_tr, ytr = cache.get_lazy(name_tr, key_tr, feature_extractor(p, train_ds, cfg, device, log, stage=stage),
                                  train_ds.labels)  # streamed
    lazy_te, yte = cache.get_lazy(name_te, key_te, feature_extractor(p, test_ds, cfg, device, log, stage=stage),
                                  test_ds.labels)
    xte = lazy_te.load()
    check_finite(xte, "test")  # before any signal is read off them (RankMe raised a traceback on a diverged run)
    if target.kind == "pixels":  # centre on the training mean image
        mean = lazy_tr.mean()
        lazy_tr, xte = lazy_tr.centered(mean), xte - mean
    classes = train_ds.num_classes
    results: dict[str, Any] = {"target": spec, "label": target.label, "kind": target.kind, **(about or {})}
    results.update({
        "dataset": cfg.data.name, "num_classes": classes,
        "data_root": cfg.data.root, "train_images": len(ytr), "test_images": len(yte),
        "train_unlabeled_left_out": p.unlabeled_left_out, "feature_dim": lazy_tr.shape[1],
        # the side the encoder saw (px) and the data's: a trained encoder sees its training size
        "image_size": target.info.image_size, "data_image_size": train_ds.image_size,
        # a run's steps when evaluated, and where it is: a resume that trains on leaves these numbers behind
        # (compare says so, also for an --out folder outside the run)
        **weights_record(spec, target.kind),
        # a random-init encoder's kwargs (the config's encoder.kwargs when it is the config's encoder): two
        # "random-init resnet18" rows of other widths are other baselines
        **({"encoder_kwargs": random_encoder(spec, cfg)[1]} if target.kind == "random" else {}),
        "feature_storage": {"train": STORAGE.get(lazy_tr.dtype, lazy_tr.dtype),
                            "test": STORAGE.get(lazy_te.dtype, lazy_te.dtype)}, "seed": cfg.seed,
        "warnings": [*warnings, *filter(None, [training_warning(spec, target.kind)]),
                     *unreadable_warnings(len(ytr), image_files(train_ds), len(yte), image_files(test_ds)),
                     *filter(None, [unseen_classes_message(ytr, yte, train_ds.class_names, cfg),
                                    untested_classes_message(ytr, yte, train_ds.class_names)])],
        # where the test features are cached (the embedding picture reads them; checked against the key)
        "test_features": {"directory": str(cache.directory), "name": name_te, "key": key_te},
    })
    if len(xte) >= 2:  # label-free signals of the test features (selfsup.monitors), on a seeded sample
        pick = torch.randperm(len(xte), generator=torch.Generator().manual_seed(cfg.seed))[:LABEL_FREE_ROWS]
        sample = xte[pick].float()  # [n, D]
        results["label_free"] = {"rankme": rankme(sample), "uniformity": uniformity(sample),
                                 "spread": relative_spread(sample), "rows": len(sample)}
        for said in feature_warnings(sample, results["label_free"], target.kind, stage):
            results["warnings"].append(said)  # kNN at chance on features one vector dominates; a collapsed run
            log(f"[eval] warning ({target.label if stage is None else f'{target.label} [{stage.name}]'}): {said}")
    shown = target.label if stage is None else f"{target.label} [{stage.name}]"
    e = cfg.eval
    opts = IndexOptions(kind=e.knn_index, exact_max=e.knn_exact_max, nlist=e.knn_nlist or None, nprobe=e.knn_nprobe,
                        codes=e.knn_ivf_codes, chunk_rows=e.knn_chunk_rows, seed=cfg.seed,
                        gpu=None if str(device).startswith("cuda") else False)
    results["knn"], results["knn_index"] = knn_evaluate_with_index(lazy_tr, ytr, xte, yte, list(e.knn), classes, opts,
                                                                   train_ds.class_names)
    for warning in results["knn_index"].get("warnings", []):  # also under the results.md table
        log(f"[eval] warning ({shown}): {warning}")
    if cfg.eval.linear:
        xtr = lazy_tr.load()  # the probes need train in memory
        log(f"[eval] linear probes for {shown} (lr x wd grid {len(cfg.eval.linear_lrs)}x"
            f"{len(cfg.eval.linear_wds)}, labelled fractions {' '.join(f'{f:g}' for f in [1, *cfg.eval.low_shot])}, "
            f"{cfg.eval.probe_seeds} seed{'s' if cfg.eval.probe_seeds != 1 else ''})")
        probes = probe_protocol(xtr, ytr, xte, yte, classes, cfg.eval.linear_lrs, cfg.eval.linear_wds,
                                probe_fractions(cfg), cfg.eval.probe_seeds,
                                cfg.eval.linear_epochs, cfg.eval.linear_batch_size, cfg.eval.linear_val_fraction,
                                cfg.seed)
        results.update(probes)
        for warning in [w for res in probes.values() for w in res.get("warnings", [])]:
            results["warnings"].append(warning)  # a low-shot subset or held-out split too small to read as asked
            log(f"[eval] warning ({shown}): {warning}")
        if 0 < len(ytr) <= cfg.eval.sklearn_max_images:
            results["linear_sklearn"] = sklearn_probe(xtr, ytr, xte, yte, classes)
    return results
