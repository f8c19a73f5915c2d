"""Features an evaluation reads, extracted once per split and cached, keyed by the encoder's
weights and by the data (:func:`selfsup.eval.evaldata.data_key`: dataset, root, split, the
images and labels themselves, the transform); a cached entry is used only when its labels
are the data's.

Layer-wise evaluation (``eval.layers``: ``all`` or stage names; :mod:`selfsup.eval.layers`)
caches every asked-for stage of the encoder from one extraction pass, one entry per stage
(:func:`fill_stage_cache`), the final stage under the same entry as ``eval.layers=last``
(the encoder's pooled output). :func:`cache_features` fills the cache sharded over the
ranks of a distributed run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import RunConfig
from selfsup.data import ImageDataset
from selfsup.encoders import check_pixels_seen
from selfsup.eval.evaldata import check_channels, data_key, evaluation_data
from selfsup.eval.features import FeatureCache, extract_features, extract_stages, fingerprint
from selfsup.eval.layers import Stage, encoder_stages, select_stages, stage_tag
from selfsup.eval.target import EncoderLoader, Target, at_size, default_device, resolve_target


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


def prepare(spec: str, cfg: RunConfig, cache_dir: str | Path, load: EncoderLoader | None = None) -> Prepared:
    """Build and check the evaluation data (:func:`evaluation_data`), resolve the target (a path
    with ``load``: :func:`resolve_target`), check that it takes the data's channels, and name each
    split's cache entry by the encoder's and the data's fingerprints."""
    train_ds, test_ds, dropped = evaluation_data(cfg)
    target = at_size(resolve_target(spec, cfg, train_ds.info, load), cfg.eval.image_size)
    check_channels(target, train_ds, cfg)
    check_channels(target, test_ds, cfg)
    check_pixels_seen(target.encoder, target.info.in_chans, target.info.image_size, target.label, size_key(target, cfg))
    key = fingerprint(target.encoder)
    names, keys = {}, {}
    for split, ds in (("train", train_ds), ("test", test_ds)):
        dkey = data_key(cfg, split, ds, target.info)
        names[split] = f"{target.kind}-{key}-{cfg.data.name}{target.info.image_size}-{split}-{len(ds)}-{dkey[:12]}"
        keys[split] = f"{key}/{dkey}"
    return Prepared(target, train_ds, test_ds, FeatureCache(cache_dir), key, names, keys, dropped,
                    target_stages(target, cfg), cfg.eval.layer_pool)


def size_key(target: Target, cfg: RunConfig) -> str:
    """The config key that sets the side length ``target`` sees: ``eval.image_size`` when it is set or
    for a trained encoder (which sees its training size whatever the data's), else ``data.image_size``."""
    return "eval.image_size" if cfg.eval.image_size or target.kind == "pretrained" else "data.image_size"


def same_weights(prepared: list[Prepared]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``j < i``, of prepared targets with the same weight fingerprint (``key``): ``j`` the
    first target holding them. A run and its export or checkpoint, ``random:`` and ``random:NAME``."""
    first: dict[str, int] = {}
    pairs = []
    for i, p in enumerate(prepared):
        if p.key in first:
            pairs.append((i, first[p.key]))
        first.setdefault(p.key, i)
    return pairs


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


def feature_extractor(p: Prepared, ds: ImageDataset, cfg: RunConfig, device: str, log: Callable[[str], None],
                      sharded: bool = False, stage: Stage | None = None) -> Callable[[], tuple[Tensor, Tensor]]:
    """What computes a cache entry when it is missing: the encoder's pooled output (``stage``
    None or the final one), else that one stage (loaded whole: only when a stage's entry went
    missing after :func:`fill_stage_cache` wrote it)."""
    def run() -> tuple[Tensor, Tensor]:
        log(f"[eval] extracting features for {p.target.label} ({len(ds)} images)")
        return extract_features(p.target.encoder, ds, p.target.info, cfg.data.eval_batch_size, device,
                                cfg.data.num_workers, sharded=sharded, channels_last=cfg.encoder.channels_last)

    def run_stage() -> tuple[Tensor, Tensor]:
        log(f"[eval] extracting stage {stage.name} of {p.target.label} ({len(ds)} images)")
        rows, labels = extract_stages(p.target.encoder, ds, p.target.info, [stage], p.pool, p.cache.directory,
                                      cfg.data.eval_batch_size, device, cfg.data.num_workers, label=p.target.label,
                                      channels_last=cfg.encoder.channels_last)
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
        feats, labels = feature_extractor(p, ds, cfg, device, log, sharded=True)()  # collective; all rows on rank 0
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
                                      p.target.label, cfg.encoder.channels_last)
        labels = distributed.gather_to_rank0(labels) if sharded else labels
        for stage in missing:
            feats = rows.features(stage.name)  # [n, D]: a view of the scratch file
            feats = distributed.gather_to_rank0(feats.contiguous()) if sharded else feats
            if distributed.rank() == 0:
                p.cache.store(*p.entry(stage, split), feats, labels)
        del rows
    if sharded:
        distributed.barrier()
