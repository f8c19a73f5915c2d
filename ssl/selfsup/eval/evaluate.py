"""Evaluate a frozen encoder: a run, an export, ``random:<timm-name>`` or ``pixels``.

An evaluator never needs the method, only an encoder and the data. Features are
extracted once per split and cached, keyed by the encoder's weights and by the data
(:func:`data_key`: dataset, root, split, the images and labels themselves, the transform),
and a cached entry is used only when its labels are the data's; kNN and the linear probe
read the cache. Only labelled images are scored: unlabeled training images (label -1) are
left out and counted, and what cannot be scored (no labels, one class, unlabeled test
images, an encoder of other channels than the images) is refused before any feature is
extracted.

Layer-wise evaluation (``eval.layers``: ``all`` or stage names; :mod:`selfsup.eval.layers`)
scores every asked-for stage of the encoder the same way, one result row each
(:func:`evaluate_layers`); the stages come from one extraction pass and are cached per stage,
the final stage under the same entry as ``eval.layers=last`` (the encoder's pooled output).

A target that is a path (run, export, checkpoint) is read by the ``load`` function the caller
passes (:data:`EncoderLoader`; the CLI and :mod:`selfsup.pipeline` pass
:func:`selfsup.artifacts.load.load_encoder`): reading a run needs the training code, which
evaluation never imports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import RunConfig
from selfsup.data import DataError, DataInfo, ImageDataset, build_dataset, subset
from selfsup.data.datasets import Subset
from selfsup.encoders import create_encoder
from selfsup.monitors import rankme, uniformity
from selfsup.eval.features import FeatureCache, dataset_fingerprint, extract_features, extract_stages, fingerprint
from selfsup.eval.layers import Stage, encoder_stages, select_stages, stage_tag
from selfsup.eval.knn import IndexOptions, knn_evaluate_with_index
from selfsup.eval.linear import probe_protocol, sklearn_probe
from selfsup.rundir import is_export_dir
from selfsup.safeload import LoadError


STORAGE = {"F16": "float16", "F32": "float32"}  # safetensors dtype code -> name in results.json


@dataclass
class Target:
    """What is evaluated: an encoder (raw pixels: a flatten), with a label for tables."""

    label: str
    kind: str  # "pretrained" | "random" | "pixels"
    info: DataInfo  # input size and normalisation the encoder expects
    encoder: nn.Module


LABEL_FREE_ROWS = 2048  # test rows RankMe and uniformity are measured on (a seeded sample)

# path of a run, export or checkpoint -> its encoder in eval mode, with ``selfsup_info`` (a DataInfo) attached
EncoderLoader = Callable[[Path], nn.Module]


def resolve_target(spec: str, cfg: RunConfig, data_info: Callable[[], DataInfo],
                   load: EncoderLoader | None = None) -> Target:
    """Turn a CLI target string into a Target; ``data_info()`` describes the evaluation data
    (called only for pixels and random encoders, which carry no input metadata); ``load`` reads a
    path target (selfsup.artifacts.load.load_encoder).

    Raises:
        LoadError: ``spec`` is neither an existing path, ``pixels`` nor ``random:<timm-name>``, or a
            path given without ``load``.
    """
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
    if load is None:
        raise LoadError(f"evaluation target {spec!r} is a path: pass load=selfsup.artifacts.load.load_encoder "
                        f"(selfsup.eval reads no run or export itself)")
    encoder = load(path)
    label = f"{'export' if is_export_dir(path) else 'run'} {path.name or spec}"
    return Target(label, "pretrained", encoder.selfsup_info, encoder)


def default_device(accelerator: str = "auto") -> str:
    """"cuda" when a GPU is present and the config allows it, else "cpu"."""
    return "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"


@dataclass
class Prepared:
    """A target with its evaluation data and where its features are cached."""

    target: Target
    train_ds: ImageDataset  # labelled training images only
    test_ds: ImageDataset
    cache: FeatureCache
    key: str  # the encoder's fingerprint
    names: dict[str, str]  # split -> cache entry
    keys: dict[str, str] = field(default_factory=dict)  # split -> cache key: encoder and data fingerprints
    unlabeled_left_out: int = 0  # training images with label -1 left out of kNN and the probes
    stages: list[Stage] = field(default_factory=list)  # eval.layers' stages; empty: the encoder's output only
    pool: str = "grid"  # eval.layer_pool: how stages before the last are pooled

    def splits(self) -> list[tuple[str, ImageDataset]]:
        return [("train", self.train_ds), ("test", self.test_ds)]

    def entry(self, stage: Stage | None, split: str) -> tuple[str, str]:
        """Cache entry name and key of ``stage``'s features on ``split``: the final stage (or
        None) is the encoder's pooled output, today's entry (so ``eval.layers=last`` and
        ``all`` share it); another stage's name and key add the stage and its pooling."""
        if stage is None or stage.last:
            return self.names[split], self.keys[split]
        tag = stage_tag(stage, self.pool)
        return f"{self.names[split]}-{tag}", f"{self.keys[split]}/{tag}"


class NotScorable(DataError):
    """The training data cannot score kNN or a probe at all (no labels, or one class):
    ``reason`` says why; the message adds how to evaluate on labelled data."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}; {fix}")
        self.reason = reason


def describe_data(cfg: RunConfig) -> str:
    """``dataset 'image-folder' at '/photos'``: the data named in one-line messages."""
    return f"dataset {cfg.data.name!r}" + (f" at {cfg.data.root!r}" if cfg.data.root else "")


def labelled_part(ds: ImageDataset) -> tuple[ImageDataset, int]:
    """``ds`` without its unlabeled images (label -1, e.g. STL-10's unlabeled split inside
    "train") and how many were left out; ``ds`` itself when every image has a label."""
    keep = ds.labels >= 0  # [N]
    dropped = int((~keep).sum())
    if dropped == 0:
        return ds, 0
    return Subset(ds, keep.nonzero().squeeze(1).tolist()), dropped


def evaluation_data(cfg: RunConfig) -> tuple[ImageDataset, ImageDataset, int]:
    """The labelled training images (``cfg.data.subset`` of them when set), the test split,
    and how many unlabeled training images were left out.

    Everything is checked before any feature is extracted: :class:`NotScorable` (one line)
    when the training split has no labels or labelled images of fewer than two classes, a
    DataError when the test split holds unlabeled images.
    """
    full = build_dataset(cfg.data, "train")
    if full.num_classes == 0 or not (full.labels >= 0).any():
        raise NotScorable(f"the training split of {describe_data(cfg)} has no labels, so kNN and linear probes "
                          f"cannot be scored", "evaluate on labelled data, e.g. `selfsup eval RUN "
                          "data.root=LABELLED_FOLDER` (a folder of class subfolders) or data.name=...")
    labelled, dropped = labelled_part(full)
    train_ds = subset(labelled, cfg.data.subset, cfg.seed)
    classes = train_ds.labels.unique()
    if len(classes) < 2:
        names = getattr(full, "class_names", ())
        which = repr(names[int(classes[0])]) if names and len(classes) else str(classes.tolist()[0])
        raise NotScorable(f"a linear probe / kNN evaluation needs at least two classes, but the training split "
                          f"of {describe_data(cfg)} has labelled images of one class only ({which})",
                          "add images of another class (a class subfolder for image-folder) or evaluate on "
                          "other labelled data (data.root=... or data.name=...)")
    test_ds = build_dataset(cfg.data, "test")
    unlabeled = int((test_ds.labels < 0).sum())
    if unlabeled:
        raise DataError(f"the test split of {describe_data(cfg)} has {unlabeled} unlabeled image(s) (label -1) "
                        f"of {len(test_ds)}; kNN and probes are scored on labelled test images only: give every "
                        f"test image a class (a class subfolder for image-folder)")
    return train_ds, test_ds, dropped


def check_channels(target: Target, ds: ImageDataset, cfg: RunConfig) -> None:
    """A DataError (one line) when the encoder and the images disagree on channels,
    before anything runs through the encoder."""
    want, got = target.info.in_chans, ds.in_chans
    if want != got:
        raise DataError(f"the encoder of {target.label} takes {want}-channel images but {describe_data(cfg)} "
                        f"gives {got}-channel images; set data.in_chans={want} (image folders) or evaluate "
                        f"on data with {want} channel(s)")


def data_key(cfg: RunConfig, split: str, ds: ImageDataset, info: DataInfo) -> str:
    """The identity of the features' data: dataset name, root, split, the images and labels
    themselves (:func:`selfsup.eval.features.dataset_fingerprint`), their size and channels,
    and the transform (side length and normalisation) the encoder sees them through."""
    root = str(Path(cfg.data.root).expanduser().resolve()) if cfg.data.root else None
    about = {"dataset": cfg.data.name, "root": root, "split": split, "image_size": ds.image_size,
             "in_chans": ds.in_chans, "transform": [info.image_size, list(info.mean), list(info.std)]}
    h = hashlib.blake2b(json.dumps(about, sort_keys=True).encode(), digest_size=12)
    h.update(dataset_fingerprint(ds).encode())
    return h.hexdigest()


# the data.* keys that decide which images and labels an evaluation sees
DATA_IDENTITY = ("name", "root", "image_size", "in_chans", "subset", "holdout_fraction", "holdout_seed")


def data_identity(cfg: RunConfig) -> dict[str, Any]:
    """The config keys that decide which images and labels an evaluation sees (``data.root``
    resolved; ``seed`` when ``data.subset`` draws a seeded subset)."""
    out = {f"data.{k}": getattr(cfg.data, k, None) for k in DATA_IDENTITY}
    if cfg.data.root:
        out["data.root"] = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.data.subset is not None:
        out["seed"] = cfg.seed
    return out


def changed_data_keys(before: RunConfig, after: RunConfig) -> list[str]:
    """The keys of :func:`data_identity` whose values differ between two configs, sorted."""
    a, b = data_identity(before), data_identity(after)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def data_tag(cfg: RunConfig) -> str:
    """A directory name that says which data: ``<dataset name>-<8 hex digits of its identity>``."""
    digest = hashlib.blake2b(json.dumps(data_identity(cfg), sort_keys=True).encode(), digest_size=4).hexdigest()
    return f"{cfg.data.name}-{digest}"


def prepare(spec: str, cfg: RunConfig, cache_dir: str | Path, load: EncoderLoader | None = None) -> Prepared:
    """Build and check the evaluation data (:func:`evaluation_data`), resolve the target (a path
    with ``load``: :func:`resolve_target`), check that it takes the data's channels, and name each
    split's cache entry by the encoder's and the data's fingerprints."""
    train_ds, test_ds, dropped = evaluation_data(cfg)
    target = resolve_target(spec, cfg, train_ds.info, load)
    check_channels(target, train_ds, cfg)
    check_channels(target, test_ds, cfg)
    key = fingerprint(target.encoder)
    names, keys = {}, {}
    for split, ds in (("train", train_ds), ("test", test_ds)):
        dkey = data_key(cfg, split, ds, target.info)
        names[split] = f"{target.kind}-{key}-{cfg.data.name}{target.info.image_size}-{split}-{len(ds)}-{dkey[:12]}"
        keys[split] = f"{key}/{dkey}"
    return Prepared(target, train_ds, test_ds, FeatureCache(cache_dir), key, names, keys, dropped,
                    target_stages(target, cfg), cfg.eval.layer_pool)


def layer_wise(cfg: RunConfig) -> bool:
    """Whether ``eval.layers`` asks for stages (one result row each) rather than ``last``."""
    return cfg.eval.layers != "last"


def target_stages(target: Target, cfg: RunConfig) -> list[Stage]:
    """The stages of ``target`` that ``eval.layers`` asks for (:func:`selfsup.eval.layers.select_stages`):
    none for ``last`` and for raw pixels (no stages: one row). ConfigError (one line) for a model
    without timm's feature API or a stage name it does not have, before anything is extracted."""
    if not layer_wise(cfg) or target.kind == "pixels":
        return []
    return select_stages(cfg.eval.layers, encoder_stages(target.encoder, target.label), target.label)


def check_layers(cfg: RunConfig, encoder: nn.Module) -> None:
    """Refuse ``eval.layers`` naming stages ``encoder`` (built from ``cfg.encoder``) does not have,
    e.g. before pretraining (the untrained encoder has the trained one's stages). ConfigError, one line."""
    if layer_wise(cfg):
        select_stages(cfg.eval.layers, encoder_stages(encoder, f"encoder {cfg.encoder.name!r}"),
                      f"encoder {cfg.encoder.name!r}")


def _extractor(p: Prepared, ds: ImageDataset, cfg: RunConfig, device: str, log: Callable[[str], None],
               sharded: bool = False, stage: Stage | None = None) -> Callable[[], tuple[Tensor, Tensor]]:
    """What computes a cache entry when it is missing: the encoder's pooled output (``stage``
    None or the final one), else that one stage (loaded whole: only when a stage's entry went
    missing after :func:`fill_stage_cache` wrote it)."""
    def run() -> tuple[Tensor, Tensor]:
        log(f"[eval] extracting features for {p.target.label} ({len(ds)} images)")
        return extract_features(p.target.encoder, ds, p.target.info, cfg.data.eval_batch_size, device,
                                cfg.data.num_workers, sharded=sharded)

    def run_stage() -> tuple[Tensor, Tensor]:
        log(f"[eval] extracting stage {stage.name} of {p.target.label} ({len(ds)} images)")
        rows, labels = extract_stages(p.target.encoder, ds, p.target.info, [stage], p.pool, p.cache.directory,
                                      cfg.data.eval_batch_size, device, cfg.data.num_workers, label=p.target.label)
        return rows.features(stage.name).clone(), labels
    return run if stage is None or stage.last else run_stage


def cache_features(spec: str, cfg: RunConfig, cache_dir: str | Path, device: str | None = None,
                   log: Callable[[str], None] = print, load: EncoderLoader | None = None) -> Prepared:
    """Extract and cache the features :func:`evaluate` needs, sharded over the ranks of a
    distributed run: a collective, every rank calls it (and reads the run directory, so it
    must be on a disk all ranks share); rank 0 decides what is missing and writes the cache.
    Returns the prepared target, for rank 0 to pass on to :func:`evaluate`. ``load``: as in :func:`prepare`."""
    device = device or default_device(cfg.trainer.accelerator)
    p = prepare(spec, cfg, cache_dir, load)
    if p.stages:
        fill_stage_cache(p, cfg, device, log, sharded=True)
        return p
    for split, ds in p.splits():
        if distributed.broadcast_object(p.cache.has(p.names[split], p.keys[split], ds.labels)):
            continue
        feats, labels = _extractor(p, ds, cfg, device, log, sharded=True)()  # collective; all rows on rank 0
        if distributed.rank() == 0:
            p.cache.store(p.names[split], p.keys[split], feats, labels)
    distributed.barrier()
    return p


def fill_stage_cache(p: Prepared, cfg: RunConfig, device: str, log: Callable[[str], None] = print,
                     sharded: bool = False) -> None:
    """Cache every stage of ``p.stages`` missing on each split, all from ONE extraction pass
    (:func:`extract_stages`), streamed to the cache a stage at a time: the rows wait in float32
    (in memory when they fit :func:`selfsup.eval.features.memory_budget`, else in scratch files),
    and each stage is written to the cache (float16 where faithful) in turn. ``sharded``: a collective, as in :func:`cache_features` (one stage at a time is
    gathered on rank 0)."""
    for split, ds in p.splits():
        missing = [s for s in p.stages if not p.cache.has(*p.entry(s, split), ds.labels)]
        missing = distributed.broadcast_object(missing) if sharded else missing
        if not missing:
            continue
        cached = [s.name for s in p.stages if s not in missing]
        log(f"[eval] extracting {len(missing)} stage(s) of {p.target.label} in one pass "
            f"({', '.join(s.name for s in missing)}; {len(ds)} {split} images)"
            + (f"; {', '.join(cached)} from the cache" if cached else ""))
        rows, labels = extract_stages(p.target.encoder, ds, p.target.info, missing, p.pool, p.cache.directory,
                                      cfg.data.eval_batch_size, device, cfg.data.num_workers, sharded,
                                      p.target.label)
        labels = distributed.gather_to_rank0(labels) if sharded else labels
        for stage in missing:
            feats = rows.features(stage.name)  # [n, D]: a view of the scratch file
            feats = distributed.gather_to_rank0(feats.contiguous()) if sharded else feats
            if distributed.rank() == 0:
                p.cache.store(*p.entry(stage, split), feats, labels)
        del rows
    if sharded:
        distributed.barrier()


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


def _score(p: Prepared, spec: str, cfg: RunConfig, stage: Stage | None, about: dict[str, Any] | None,
           warnings: list[str], device: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The result row of one stage (None: the encoder's pooled output) of a prepared target;
    ``about`` (layer, pooling) goes after ``kind`` when given."""
    target, train_ds, test_ds, cache = p.target, p.train_ds, p.test_ds, p.cache
    (name_tr, key_tr), (name_te, key_te) = p.entry(stage, "train"), p.entry(stage, "test")
    lazy_tr, ytr = cache.get_lazy(name_tr, key_tr, _extractor(p, train_ds, cfg, device, log, stage=stage),
                                  train_ds.labels)  # streamed
    lazy_te, yte = cache.get_lazy(name_te, key_te, _extractor(p, test_ds, cfg, device, log, stage=stage),
                                  test_ds.labels)
    xte = lazy_te.load()
    if target.kind == "pixels":  # centre on the training mean image
        mean = lazy_tr.mean()
        lazy_tr, xte = lazy_tr.centered(mean), xte - mean
    classes = train_ds.num_classes
    results: dict[str, Any] = {"target": spec, "label": target.label, "kind": target.kind, **(about or {})}
    results.update({
        "dataset": cfg.data.name,
        "data_root": cfg.data.root, "train_images": len(ytr), "test_images": len(yte),
        "train_unlabeled_left_out": p.unlabeled_left_out, "feature_dim": lazy_tr.shape[1],
        "feature_storage": {"train": STORAGE.get(lazy_tr.dtype, lazy_tr.dtype),
                            "test": STORAGE.get(lazy_te.dtype, lazy_te.dtype)}, "seed": cfg.seed,
        "warnings": list(warnings),
        # where the test features are cached (the embedding picture reads them; checked against the key)
        "test_features": {"directory": str(cache.directory), "name": name_te, "key": key_te},
    })
    if len(xte) >= 2:  # label-free signals of the test features (selfsup.monitors), on a seeded sample
        pick = torch.randperm(len(xte), generator=torch.Generator().manual_seed(cfg.seed))[:LABEL_FREE_ROWS]
        sample = xte[pick].float()  # [n, D]
        results["label_free"] = {"rankme": rankme(sample), "uniformity": uniformity(sample), "rows": len(sample)}
    shown = target.label if stage is None else f"{target.label} [{stage.name}]"
    e = cfg.eval
    opts = IndexOptions(kind=e.knn_index, exact_max=e.knn_exact_max, nlist=e.knn_nlist or None, nprobe=e.knn_nprobe,
                        codes=e.knn_ivf_codes, chunk_rows=e.knn_chunk_rows, seed=cfg.seed,
                        gpu=None if str(device).startswith("cuda") else False)
    results["knn"], results["knn_index"] = knn_evaluate_with_index(lazy_tr, ytr, xte, yte, list(e.knn), classes, opts)
    for warning in results["knn_index"].get("warnings", []):  # also under the results.md table
        log(f"[eval] warning ({shown}): {warning}")
    if cfg.eval.linear:
        xtr = lazy_tr.load()  # the probes need train in memory
        log(f"[eval] linear probes for {shown} (lr x wd grid {len(cfg.eval.linear_lrs)}x"
            f"{len(cfg.eval.linear_wds)}, labelled fractions {' '.join(f'{f:g}' for f in [1, *cfg.eval.low_shot])}, "
            f"{cfg.eval.probe_seeds} seed{'s' if cfg.eval.probe_seeds != 1 else ''})")
        results.update(probe_protocol(xtr, ytr, xte, yte, classes, cfg.eval.linear_lrs, cfg.eval.linear_wds,
                                      (1.0, *sorted(cfg.eval.low_shot, reverse=True)), cfg.eval.probe_seeds,
                                      cfg.eval.linear_epochs, cfg.eval.linear_batch_size,
                                      cfg.eval.linear_val_fraction, cfg.seed))
        if 0 < len(ytr) <= cfg.eval.sklearn_max_images:
            results["linear_sklearn"] = sklearn_probe(xtr, ytr, xte, yte, classes)
    return results
