"""Typed configuration: YAML files and ``a.b=c`` overrides loaded into dataclasses.

Every section is a dataclass; a key that no dataclass field names is an error that
names the key and the closest valid key, and every value is checked against the
field's type and range. The method section's dataclass is chosen by ``method.name`` from
:data:`METHOD_CONFIGS`, so each method keeps its own config dataclass in its own file:
``selfsup.methods`` (a layer above this one, never imported here) registers each method's
``Config`` there as it registers the method, and ``selfsup/__init__.py`` installs the loader
that imports ``selfsup.methods`` at the first lookup.

Ranges are declared on the field: ``lr: float = param(0.3, gt=0)``. This module is the schema
(every section's dataclass) and loading a whole run's config; how a value is checked against
its field, YAML parsed and an override applied is :mod:`selfsup.configread`, whose names stay
importable from here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from selfsup.configread import ConfigError, apply_override, first_repeated, from_dict, has_key, param, parse_yaml, \
    plain, type_name, yaml_problem
from selfsup.registry import Registry

__all__ = ["METHOD_CONFIGS", "ConfigError", "DataConfig", "DetectionConfig", "EncoderConfig", "EvalConfig",
           "OptimConfig", "RunConfig", "TrainerConfig", "apply_override", "build_config", "dump_yaml", "from_dict",
           "load_config", "method_config_class", "method_name", "param", "parse_yaml", "plain", "to_dict",
           "type_name", "yaml_problem"]

METHOD_CONFIGS: Registry[type] = Registry("method")  # method name -> its config dataclass (filled by selfsup.methods)


# --------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Which images to train and evaluate on, and how to load them.

    Image folders (``name: image-folder``): ``root`` holds class subfolders (labelled) or
    loose images (unlabeled), optionally under ``train/`` and ``test/`` (or ``val/``). A
    labelled folder without ``test/`` or ``val/`` is split: ``holdout_fraction`` of each
    class's images (at least one, at most all but one, when the class has two or more) is
    the test split and the rest the training split, chosen by a hash of ``holdout_seed``
    and each file's path inside the folder, so the split is the same in every process and
    for any listing order, and does not depend on the run's ``seed`` (runs with different
    seeds are scored on the same images). ``holdout_fraction: 0`` trains on every image
    and leaves no test split. An unlabeled folder is never split (it has nothing to score).
    ``splits: flat`` reads every subfolder of ``root`` as a class, even one named like a split
    (``car/ bus/ train/``: Pascal VOC has a class "train"), and holds out ``holdout_fraction``.
    """

    name: str = param("fashion-mnist", help="dataset name (selfsup list shows them)")
    root: str | None = param(None, help="where the data is; each dataset has its own default")
    download: bool = param(False, help="allow downloading when the data is not found")
    image_size: int | None = param(None, gt=0, help="resize to this side length; None keeps the dataset's")
    batch_size: int = param(256, gt=0, help="pretraining batch size (per device)")
    eval_batch_size: int = param(512, gt=0)
    num_workers: int = param(0, ge=0, help="decoding workers (image folders); in-memory sets need none")
    subset: int | None = param(None, gt=0, help="use a seeded random subset of this many training images")
    in_chans: int | None = param(None, gt=0, help="image folders: 1 (grayscale) or 3 (RGB); default 3")
    on_bad_file: Literal["skip", "error"] = param("skip", help="image folders: leave unreadable files out "
                                                  "(counted, listed in the run's bad_files.txt) or stop")
    max_image_pixels: int | None = param(None, ge=0, help="image folders: Pillow's decompression-bomb limit "
                                         "(PIL.Image.MAX_IMAGE_PIXELS: Pillow warns above it and refuses an image "
                                         "of more than twice it); None: Pillow's own (89,478,485), 0: no limit "
                                         "(trusted files only)")
    cache: Literal["none", "uint8"] = param("none", help="image folders: decode every image once into a "
                                           "memory-mapped uint8 file (N x C x S x S bytes) and train from it")
    cache_dir: str | None = param(None, help="where data.cache=uint8 keeps its files (default ~/.cache/selfsup/decoded)")
    holdout_fraction: float = param(0.2, ge=0, lt=1, help="image folders without test/ or val/: share of each "
                                    "class held out (seeded, stratified) as the test split; 0: none")
    holdout_seed: int = param(0, ge=0, help="seed of that held-out split (independent of the run's seed)")
    splits: Literal["auto", "flat"] = param("auto", help="image folders: auto: train/ and test/ (val/, ...) "
                                            "subfolders are the splits; flat: every subfolder is a class (a class "
                                            "named train/), the test split held out by holdout_fraction")

    def __post_init__(self) -> None:
        if self.in_chans not in (None, 1, 3):  # images are decoded as grayscale or RGB, nothing else
            raise ConfigError(f"data.in_chans must be 1 (grayscale) or 3 (RGB), got {self.in_chans}: images are "
                              f"decoded as one or the other (an alpha channel is dropped)")
        # a path as the user typed it means the folder they see now: ~ and $VARS expanded, a relative path made
        # absolute, so the run's config.yaml names the same folder from any working directory (a relative
        # root stored as typed made `selfsup eval RUN` elsewhere read another folder without a word)
        for key in ("root", "cache_dir"):
            value = getattr(self, key)
            if isinstance(value, str) and value:
                path = os.path.expanduser(value)
                if not os.path.exists(path):  # a folder named "a$b" is itself; else $NAME is a variable
                    unset = [m[0] or m[1] for m in re.findall(r"\$\{(\w+)\}|\$(\w+)", path)
                             if (m[0] or m[1]) not in os.environ]
                    if unset:  # expandvars would keep "$NAME" as part of a path that then "does not exist"
                        raise ConfigError(f"data.{key} {value!r}: the environment variable {unset[0]} is not set; "
                                          f"set it or give the path itself")
                    path = os.path.expandvars(path)
                setattr(self, key, os.path.abspath(path))


@dataclass
class EncoderConfig:
    """The timm encoder: any timm model name, created with num_classes=0."""

    name: str = param("resnet18", help="timm model name")
    kwargs: dict[str, Any] = param(default_factory=dict, help="passed through to timm.create_model")
    channels_last: bool = param(True, help="channels_last memory format for convnets")


@dataclass
class OptimConfig:
    """Optimiser and schedule: cosine decay after a linear warmup, per step."""

    name: Literal["sgd", "lars", "adamw"] = "lars"
    lr: float = param(0.3, gt=0, help="peak learning rate at batch size 256 (scaled linearly)")
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    weight_decay: float = param(1e-6, ge=0)
    momentum: float = param(0.9, ge=0, lt=1)
    warmup_epochs: float = param(1.0, ge=0, help="linear warmup; never more than half the run's steps")
    min_lr_ratio: float = param(0.0, ge=0, le=1, help="final lr as a fraction of the peak")
    probe_lr: float = param(0.1, gt=0, help="learning rate of the online linear probe")


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer."""

    max_epochs: int = param(100, gt=0)
    max_steps: int = param(-1, ge=-1, help="stop after this many optimiser steps; the schedule spans them (-1: max_epochs)")
    accelerator: str = param("auto", help="cpu, gpu, mps or auto (Lightning's names)")
    devices: Union[int, str] = param(1, help="devices per node: a count, 'auto', or a list string like '0,1'")
    num_nodes: int = param(1, gt=0, help="machines; each runs `devices` processes (torchrun or SLURM)")
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true", "fsdp"] = param(
        "auto", help="Lightning strategy: ddp for several devices, fsdp to shard large ViTs")
    sync_batchnorm: bool = param(False, help="BatchNorm statistics over the global batch (SyncBatchNorm)")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"] = param(
        "auto", help="auto: bf16-mixed on GPUs with bf16, 16-mixed (loss scaling) on older GPUs, "
                     "32-true on CPUs (benchmarks/results/precision.md)")
    accumulate_grad_batches: int = param(1, gt=0, help="batches per optimiser step (the lr scales with "
                                                        "batch_size x devices x nodes x this)")
    compile: bool = param(False, help="torch.compile the encoder (in place; checkpoints keep plain names)")
    grad_checkpointing: bool = param(False, help="recompute activations in backward (timm "
                                                 "set_grad_checkpointing): less memory, about 30% slower")
    log_every_n_steps: int = param(20, gt=0)
    limit_train_batches: Union[int, float] = param(1.0, gt=0, help="fraction or number of batches per epoch")
    online_probe: bool = param(True, help="train a linear probe on detached features when labels exist")
    val_every_n_epochs: int = param(1, gt=0, help="online-probe validation frequency")
    progress_bar: bool = True
    logger: Union[list[Literal["csv", "tensorboard", "wandb", "mlflow"]], Literal["csv", "tensorboard", "wandb",
                                                                                   "mlflow"]] = param(
        default_factory=lambda: ["csv"], help="where the training metrics go: csv (logs/metrics.csv, always "
        "written: the plots read it) plus any of tensorboard, wandb, mlflow (Lightning's loggers)")
    logger_project: str = param("selfsup", help="wandb project / mlflow experiment name (the run is named after "
                                                "its run directory)")
    wandb_mode: Literal["online", "offline"] = param("online", help="offline: W&B writes to RUN_DIR/wandb only "
                                                     "(no network; `wandb sync` uploads it later)")
    mlflow_tracking_uri: str = param("", help="MLflow tracking server or store; empty: a file store in "
                                              "RUN_DIR/mlruns (no server, no network)")
    monitor_every_n_steps: int = param(50, ge=0, help="log RankMe, uniformity and (two-view methods) alignment of a "
                                       "held batch every N steps (0: off)")
    monitor_images: int = param(256, ge=2, help="images in the held batch of the label-free monitors")

    def __post_init__(self) -> None:
        if isinstance(self.logger, str):  # trainer.logger=wandb: one logger, as a list
            self.logger = [self.logger]
        if len(set(self.logger)) != len(self.logger):
            raise ValueError(f"logger lists a logger twice: {self.logger}")
        text = str(self.devices).strip()
        indices = [p.strip() for p in text.split(",")]
        if len(indices) > 1 and indices[-1] == "":  # '1,': Lightning's list of one GPU index
            indices = indices[:-1]
        if not (text in ("auto", "-1") or (text.isdigit() and int(text) >= 1)
                or ("," in text and all(p.isdigit() for p in indices) and len(set(map(int, indices))) == len(indices))):
            raise ValueError(f"devices must be a process count >= 1, 'auto', -1 (every GPU) or distinct GPU indices "
                             f"like '0,1', got {self.devices!r}")


@dataclass
class EvalConfig:
    """Frozen-encoder evaluation: weighted kNN (faiss) and a linear probe on cached features."""

    knn: list[tuple[int, float]] = param(default_factory=lambda: [(20, 0.07), (200, 0.1)],
                                         help="(k, temperature) pairs; one search answers all")
    knn_index: Literal["auto", "exact", "ivf"] = param("auto", help="faiss index: exact up to knn_exact_max "
                                                                   "train rows, IVF beyond")
    knn_exact_max: int = param(2_000_000, gt=0)
    knn_nlist: int = param(0, ge=0, help="IVF cells; 0: round(sqrt(N) / 2)")
    knn_nprobe: int = param(8, gt=0, help="IVF cells scanned per query: higher recall, linearly slower")
    knn_ivf_codes: Literal["fp16", "flat"] = param("fp16", help="IVF storage: float16 (half the memory) or float32")
    knn_chunk_rows: int = param(65536, gt=0, help="train feature rows read from the cache at a time")
    linear: bool = True
    linear_epochs: int = param(60, gt=0)
    linear_batch_size: int = param(1024, gt=0)
    linear_lrs: list[float] = param(default_factory=lambda: [0.01, 0.03, 0.1, 0.3], gt=0, each=True,
                                    help="the probe's learning rates tried (the grid's first axis)")
    linear_wds: list[float] = param(default_factory=lambda: [0.0, 1e-5, 1e-4], ge=0, each=True,
                                    help="the probe's weight decays tried (the grid's second axis)")
    linear_val_fraction: float = param(0.1, gt=0, lt=1, help="training data held out to choose lr/wd")
    low_shot: list[float] = param(default_factory=lambda: [0.01, 0.1], gt=0, lt=1, each=True,
                                  help="labelled fractions (class-balanced, seeded) probed besides all labels "
                                       "(which always run)")
    probe_seeds: int = param(3, gt=0, help="seeds per probe; every probe number is their mean +- std")
    sklearn_max_images: int = param(20000, ge=0, help="cross-check the probe with scikit-learn's logistic "
                                                       "regression when train has at most this many images (0: off)")
    baselines: list[str] = param(default_factory=lambda: ["random", "pixels"],
                                 help="evaluated beside the pretrained encoder after pretraining")
    after_pretrain: bool = param(True, help="evaluate and export when pretraining ends")
    plots: bool = param(True, help="draw the run's pictures (RUN_DIR/plots/*.png) after pretraining and evaluation")
    layers: Union[str, list[str]] = param("last", help="stages scored, one result row each: last (the pooled "
                                          "encoder output), all, or stage names from timm's feature_info "
                                          "(layer1..layer4 for a ResNet, blocks.N for a ViT)")
    image_size: int | None = param(None, gt=0, help="side length every evaluated encoder sees the images at; "
                                   "None: a trained encoder its training size, the baselines the data's")
    layer_pool: Literal["grid", "avg"] = param("grid", help="stages before the last: grid = average-pooled to "
                                               "about 9k values as in Goyal et al. 2019 / VISSL; avg = global "
                                               "average (C values, cheaper); selfsup.eval.layers says why")

    def __post_init__(self) -> None:
        if not self.linear_lrs or not self.linear_wds:
            raise ValueError(f"linear_lrs and linear_wds must each hold at least one value (the probe's grid), got "
                             f"{self.linear_lrs!r} and {self.linear_wds!r}")
        names = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        if not names or any(not n.strip() for n in names):
            raise ValueError(f"layers must be 'last', 'all', a stage name or a non-empty list of stage names, "
                             f"got {self.layers!r}")
        if not isinstance(self.layers, str) and {"all", "last"} & set(names):
            raise ValueError(f"layers: 'all' and 'last' stand alone (layers=all), not inside a list: {self.layers!r}")
        for key, items in (("layers", names), ("knn", [tuple(p) for p in self.knn])):  # each scored once
            repeated = first_repeated(items)
            if repeated is not None:
                raise ValueError(f"{key}: {list(repeated) if isinstance(repeated, tuple) else repeated!r} is given "
                                 f"twice in {getattr(self, key)!r}: give each once")
        if not self.knn:  # the kNN search needs a (k, T) pair: refused here, not after pretraining
            raise ValueError("knn must hold at least one (k, T) pair, e.g. [[20, 0.07]]")
        for k, t in self.knn:  # refused when the config loads, not after pretraining
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"knn: k must be a whole number >= 1, got {k!r} in ({k!r}, {t!r})")
            if not math.isfinite(t) or t <= 0:
                raise ValueError(f"knn: the temperature must be a finite number > 0, got {t!r} in ({k!r}, {t!r})")


SYNTHETIC = ("dataset", ("synthetic-fmnist",))  # detection keys that only the synthetic set reads
DEEPFOREST = ("dataset", ("deepforest",))  # and those only the deepforest tiles read


@dataclass
class DetectionConfig:
    """Downstream detection on a frozen encoder (``selfsup eval --task detection``): torchvision's
    Faster R-CNN (Ren et al. 2015) on an FPN (Lin et al. 2017) over the encoder's feature maps
    (ViTs: ViTDet's simple pyramid, Li et al. 2022), small images and a short SGD schedule."""

    dataset: str = param("synthetic-fmnist", help="synthetic-fmnist | deepforest | voc:DIR | coco:IMAGES,ANN.json")
    test_dataset: str | None = param(None, help="voc:DIR or coco:IMAGES,ANN.json scored instead of a split of dataset")
    test_fraction: float = param(0.25, gt=0, lt=1, help="held-out share of sets without their own split (seeded)")
    data_seed: int = param(0, ge=0, help="seed of the synthetic images and of the train/test splits")
    image_size: int = param(128, gt=0, help="detector input side: images are resized to image_size x image_size")
    epochs: int = param(8, gt=0)
    batch_size: int = param(8, gt=0)
    lr: float = param(0.02, gt=0, help="SGD peak learning rate at batch size 16 (scaled linearly)")
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(1e-4, ge=0, help="not applied to norms and biases")
    warmup_steps: int = param(50, ge=0, help="linear warmup, then cosine decay to 0 over the remaining steps")
    trainable_layers: int = param(0, ge=0, help="encoder stages trained, deepest first (0: frozen); "
                                                "BatchNorm statistics and affines stay frozen")
    fpn_channels: int = param(128, gt=0)
    box_head_dim: int = param(256, gt=0, help="width of the two-layer box head")
    deformable: bool = param(False, help="FPN output convs and RPN head conv as modulated deformable convs "
                                         "(DCNv2, zero-initialised offsets: training starts from the plain detector)")
    offset_lr_mult: float = param(0.1, gt=0, when=("deformable", (True,)),
                                  help="the deformable offset/modulation predictors' lr, times detection.lr (the DCNv2 "
                                       "authors' 0.1; at 1 the offsets diverged on synthetic-fmnist)")
    rois_per_image: int = param(128, gt=0, help="proposals sampled per image to train the box head")
    anchor_sizes: list[int] = param(default_factory=list, help="one anchor side per pyramid level, finest first; "
                                                               "empty: image_size/16, doubling per level")
    hflip: bool = param(True, help="random horizontal flips while training")
    score_threshold: float = param(0.01, ge=0, lt=1, help="detections below this score are not scored")
    num_workers: int = param(0, ge=0, help="image decoding workers (voc/coco folders)")
    synthetic_train: int = param(1000, gt=0, help="synthetic-fmnist training canvases", when=SYNTHETIC)
    synthetic_test: int = param(300, gt=0, help="synthetic-fmnist test canvases", when=SYNTHETIC)
    synthetic_canvas: int = param(128, gt=0, help="synthetic-fmnist canvas side", when=SYNTHETIC)
    synthetic_objects: tuple[int, int] = param((2, 5), help="synthetic-fmnist objects per canvas (min, max)",
                                               when=SYNTHETIC)
    synthetic_object_size: tuple[int, int] = param((20, 56), help="synthetic-fmnist object side in pixels "
                                                   "(min, max)", when=SYNTHETIC)
    deepforest_root: str | None = param(None, help="tree-crown images + VOC XML; default: the deepforest wheel's "
                                        "data/", when=DEEPFOREST)
    tile_size: int = param(200, gt=0, help="deepforest: side of the square tiles cut from the large images",
                           when=DEEPFOREST)
    min_visible: float = param(0.4, gt=0, le=1, help="deepforest: keep a box cut by a tile border when this share "
                               "of its area is inside the tile", when=DEEPFOREST)

    def __post_init__(self) -> None:
        lo, hi = self.synthetic_objects
        if not 1 <= lo <= hi:
            raise ValueError(f"synthetic_objects must satisfy 1 <= min <= max, got {self.synthetic_objects}")
        lo, hi = self.synthetic_object_size
        if not 4 <= lo <= hi <= self.synthetic_canvas:
            raise ValueError(f"synthetic_object_size must satisfy 4 <= min <= max <= synthetic_canvas "
                             f"({self.synthetic_canvas}), got {self.synthetic_object_size}")
        if any(s <= 0 for s in self.anchor_sizes):
            raise ValueError(f"anchor_sizes must be positive, got {self.anchor_sizes}")


@dataclass
class RunConfig:
    """A whole run: everything `selfsup pretrain` needs."""

    method: Any  # a registered method's config dataclass, chosen by method.name
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)


# --------------------------------------------------------------------------- loading


def method_config_class(name: str) -> type:
    """The config dataclass of method ``name`` (:data:`METHOD_CONFIGS`); ConfigError naming the closest
    registered method for an unknown one."""
    if not isinstance(name, str):
        raise ConfigError(f"method.name must be a method name (a string; selfsup list shows them), got {name!r}")
    try:
        return METHOD_CONFIGS.get(name)
    except KeyError as err:  # RegistryError: unknown name, with the closest registered one
        raise ConfigError(f"method.name: {err.args[0]}") from None


def build_config(raw: dict[str, Any]) -> RunConfig:
    """Turn a plain dict (parsed YAML plus overrides) into a validated RunConfig."""
    raw = copy.deepcopy(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    method_raw = raw.pop("method", None)
    if not isinstance(method_raw, dict) or "name" not in method_raw:
        raise ConfigError("config key 'method.name' is required (selfsup list shows the methods)")
    method_raw = dict(method_raw)
    method_name = method_raw.pop("name")
    try:
        mcls = method_config_class(method_name)
    except KeyError as err:
        raise ConfigError(f"config key 'method.name': {err}") from None
    method_cfg = from_dict(mcls, method_raw, prefix="method")
    return from_dict(RunConfig, {**raw, "method": method_cfg})


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = (),
                defaults: typing.Sequence[str] = ()) -> RunConfig:
    """Load a YAML config file, apply ``key=value`` overrides, validate everything. ``defaults``
    (``key=value`` too) fill keys the file leaves out, before the overrides: an evaluation reads
    ``method.name=simclr`` so, since its config (data and eval sections) needs no method."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            if path.is_dir():  # a run directory, most likely
                raise ConfigError(f"config file {str(path)!r} is a directory: give a YAML file (a run's own is "
                                  f"{str(path / 'config.yaml')!r}), or continue that run with --resume {path}")
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = parse_yaml(path.read_bytes().decode("utf-8"), f"config file {str(path)!r}")
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                              f"give a YAML file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {yaml_problem(err)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, "
                              f"got {type(loaded).__name__}")
        raw = loaded
    file_method = (raw.get("method") or {}).get("name") if isinstance(raw.get("method"), dict) else None
    for default in defaults:
        if not has_key(raw, default.partition("=")[0].strip().split(".")):
            apply_override(raw, default)
    for ov in overrides:
        apply_override(raw, ov)
    try:
        return build_config(raw)
    except ConfigError as err:
        method = (raw.get("method") or {}).get("name") if isinstance(raw.get("method"), dict) else None
        if path is None or file_method is None or method == file_method or "unknown config key 'method." not in str(err):
            raise
        raise ConfigError(f"{err}. That key comes from {path}, a {file_method} config: method.name={method} keeps "
                          f"its method section, so start from a {method} config (configs/{method}-*.yaml) or remove "
                          f"the {file_method} keys from the method section") from None


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain YAML-safe types (``method.name`` included)."""
    out = plain(dataclasses.asdict(cfg))
    out["method"] = {"name": method_name(cfg), **out["method"]}
    return out


def method_name(cfg: RunConfig) -> str:
    """The registered name of the method whose config ``cfg.method`` is."""
    return next(n for n in METHOD_CONFIGS.names() if METHOD_CONFIGS.get(n) is type(cfg.method))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
