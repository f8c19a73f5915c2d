"""Evaluate a frozen encoder: a run, an export, ``random:<timm-name>`` or ``pixels``.

An evaluator never needs the method, only an encoder and the data. Features are
extracted once per split and cached; kNN and the linear probe read the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import RunConfig
from selfsup.data import DataInfo, ImageDataset, build_dataset, subset
from selfsup.encoders import create_encoder
from selfsup.eval.features import FeatureCache, extract_features, fingerprint
from selfsup.eval.knn import IndexOptions, knn_evaluate_with_index
from selfsup.eval.linear import probe_protocol, sklearn_probe
from selfsup.export import LoadError, is_export_dir, load_encoder


@dataclass
class Target:
    """What is evaluated: an encoder (raw pixels: a flatten), with a label for tables."""

    label: str
    kind: str  # "pretrained" | "random" | "pixels"
    info: DataInfo  # input size and normalisation the encoder expects
    encoder: nn.Module


def resolve_target(spec: str, cfg: RunConfig, data_info: Callable[[], DataInfo]) -> Target:
    """Turn a CLI target string into a Target; ``data_info()`` describes the evaluation data
    (called only for pixels and random encoders, which carry no input metadata)."""
    if spec == "pixels":
        return Target("raw pixels", "pixels", data_info(), nn.Flatten())
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1] or cfg.encoder.name
        torch.manual_seed(cfg.seed)
        kwargs = cfg.encoder.kwargs if name == cfg.encoder.name else {}
        info = data_info()
        encoder = create_encoder(name, info.in_chans, kwargs, fair_random_init=True)
        return Target(f"random-init {name}", "random", info, encoder)
    path = Path(spec)
    if not path.exists():
        raise LoadError(f"evaluation target {spec!r} is neither a path, 'pixels', nor 'random:<timm-name>'")
    encoder = load_encoder(path)
    label = f"{'export' if is_export_dir(path) else 'run'} {path.name or spec}"
    return Target(label, "pretrained", encoder.selfsup_info, encoder)


def default_device(accelerator: str = "auto") -> str:
    """"cuda" when a GPU is present and the config allows it, else "cpu"."""
    return "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"


@dataclass
class Prepared:
    """A target with its evaluation data and where its features are cached."""

    target: Target
    train_ds: ImageDataset
    test_ds: ImageDataset
    cache: FeatureCache
    key: str  # the encoder's fingerprint
    names: dict[str, str]  # split -> cache entry

    def splits(self) -> list[tuple[str, ImageDataset]]:
        return [("train", self.train_ds), ("test", self.test_ds)]


def prepare(spec: str, cfg: RunConfig, cache_dir: str | Path) -> Prepared:
    train_ds = subset(build_dataset(cfg.data, "train"), cfg.data.subset, cfg.seed)
    test_ds = build_dataset(cfg.data, "test")
    if train_ds.num_classes == 0:
        raise LoadError(f"dataset {cfg.data.name!r} has no labels, so kNN and linear probes cannot be scored; "
                        f"evaluate on a labelled dataset (class subfolders for image-folder)")
    target = resolve_target(spec, cfg, train_ds.info)
    key = fingerprint(target.encoder)
    names = {split: f"{target.kind}-{key}-{cfg.data.name}{target.info.image_size}-{split}-{len(ds)}"
             for split, ds in (("train", train_ds), ("test", test_ds))}
    return Prepared(target, train_ds, test_ds, FeatureCache(cache_dir), key, names)


def _extractor(p: Prepared, ds: ImageDataset, cfg: RunConfig, device: str, log: Callable[[str], None],
               sharded: bool = False) -> Callable[[], tuple[Tensor, Tensor]]:
    def run() -> tuple[Tensor, Tensor]:
        log(f"[eval] extracting features for {p.target.label} ({len(ds)} images)")
        return extract_features(p.target.encoder, ds, p.target.info, cfg.data.eval_batch_size, device,
                                cfg.data.num_workers, sharded=sharded)
    return run


def cache_features(spec: str, cfg: RunConfig, cache_dir: str | Path, device: str | None = None,
                   log: Callable[[str], None] = print) -> Prepared:
    """Extract and cache the features :func:`evaluate` needs, sharded over the ranks of a
    distributed run: a collective, every rank calls it (and reads the run directory, so it
    must be on a disk all ranks share); rank 0 decides what is missing and writes the cache.
    Returns the prepared target, for rank 0 to pass on to :func:`evaluate`."""
    device = device or default_device(cfg.trainer.accelerator)
    p = prepare(spec, cfg, cache_dir)
    for split, ds in p.splits():
        if distributed.broadcast_object(p.cache.has(p.names[split], p.key)):
            continue
        feats, labels = _extractor(p, ds, cfg, device, log, sharded=True)()  # collective; all rows on rank 0
        if distributed.rank() == 0:
            p.cache.store(p.names[split], p.key, feats, labels)
    distributed.barrier()
    return p


def evaluate(spec: str, cfg: RunConfig, cache_dir: str | Path, device: str | None = None,
             log: Callable[[str], None] = print, prepared: Prepared | None = None) -> dict[str, Any]:
    """kNN (every (k, T) in ``cfg.eval.knn``) and linear-probe results for target ``spec``
    (``prepared``: what :func:`cache_features` already loaded for it, so nothing is loaded twice)."""
    t0 = time.perf_counter()
    device = device or default_device(cfg.trainer.accelerator)
    p = prepared or prepare(spec, cfg, cache_dir)
    target, train_ds, cache, key, names = p.target, p.train_ds, p.cache, p.key, p.names
    lazy_tr, ytr = cache.get_lazy(names["train"], key, _extractor(p, train_ds, cfg, device, log))  # streamed
    xte, yte = cache.get(names["test"], key, _extractor(p, p.test_ds, cfg, device, log))
    if target.kind == "pixels":  # centre on the training mean image
        mean = lazy_tr.mean()
        lazy_tr, xte = lazy_tr.centered(mean), xte - mean
    classes = train_ds.num_classes
    results: dict[str, Any] = {
        "target": spec, "label": target.label, "kind": target.kind, "dataset": cfg.data.name,
        "train_images": len(ytr), "test_images": len(yte), "feature_dim": lazy_tr.shape[1], "seed": cfg.seed,
    }
    e = cfg.eval
    opts = IndexOptions(kind=e.knn_index, exact_max=e.knn_exact_max, nlist=e.knn_nlist or None, nprobe=e.knn_nprobe,
                        codes=e.knn_ivf_codes, chunk_rows=e.knn_chunk_rows, seed=cfg.seed,
                        gpu=None if str(device).startswith("cuda") else False)
    results["knn"], results["knn_index"] = knn_evaluate_with_index(lazy_tr, ytr, xte, yte, list(e.knn), classes, opts)
    if cfg.eval.linear:
        xtr = lazy_tr.load()  # the probes need train in memory
        log(f"[eval] linear probes for {target.label} (lr x wd grid {len(cfg.eval.linear_lrs)}x"
            f"{len(cfg.eval.linear_wds)}, labelled fractions 1 {' '.join(f'{f:g}' for f in cfg.eval.low_shot)}, "
            f"{cfg.eval.probe_seeds} seeds)")
        results.update(probe_protocol(xtr, ytr, xte, yte, classes, cfg.eval.linear_lrs, cfg.eval.linear_wds,
                                      (1.0, *sorted(cfg.eval.low_shot, reverse=True)), cfg.eval.probe_seeds,
                                      cfg.eval.linear_epochs, cfg.eval.linear_batch_size,
                                      cfg.eval.linear_val_fraction, cfg.seed))
        if 0 < len(ytr) <= cfg.eval.sklearn_max_images:
            results["linear_sklearn"] = sklearn_probe(xtr, ytr, xte, yte, classes)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results
