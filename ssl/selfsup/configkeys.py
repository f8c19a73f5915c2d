"""Every config key with its type, default, range and help string: what ``selfsup config`` prints.

The keys are read from the config dataclasses (:mod:`selfsup.config`) and, under ``method``, from
each registered method's config class (:data:`selfsup.config.METHOD_CONFIGS`, which imports the
methods, and so torch, only when a ``method`` key is asked for). ``selfsup config method.simclr``
lists one method's keys. The ``--transfer KEY=VALUE`` options of ``selfsup eval TARGET --protocol NAME``
(:class:`selfsup.transfer.options.TransferOptions`) follow under a ``# transfer`` heading (``selfsup config
transfer`` lists them alone), from the static table :data:`TRANSFER_OPTIONS`: importing ``selfsup.transfer``
would import torch, and this module sits below it."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from selfsup.config import METHOD_CONFIGS, RunConfig
from selfsup.configread import ConfigError, plain, type_name
from selfsup.registry import close_matches

REQUIRED = "(required)"
RANGES = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
TRANSFER = "transfer"  # the group of the --transfer options: ``selfsup config transfer`` lists them
TRANSFER_HEADING = ("# transfer: selfsup eval TARGET --protocol finetune|partial|lora|prompt|bitfit --transfer "
                    "KEY=VALUE (VALUE as YAML; repeat --transfer for more)")
# The --transfer options: name -> (type, default, range, help). The fields of selfsup.transfer.options.TransferOptions
# (its ranges are check_options'), less ``protocol`` (--protocol) and the internal ``given``, plus ``lr`` (the CLI's
# shorthand); low_shot, seeds and seed default to the eval config's keys. tests/test_compare_transfer.py checks
# this table against the dataclass: a new option must be added here.
TRANSFER_OPTIONS: dict[str, tuple[str, str, str, str]] = {
    "epochs": ("int", "20", ">= 1", "training epochs of each run (per labelled fraction, seed and lr)"),
    "batch_size": ("int", "64", ">= 1", "images per step"),
    "lrs": ("list[float]", "[0.001]", "each > 0", "peak learning rates tried; the best on the held-out split is kept"),
    "lr": ("float", "(unset)", "> 0", "one learning rate: shorthand for lrs=[lr]"),
    "weight_decay": ("float", "0.05", ">= 0", "AdamW weight decay (MAE fine-tuning)"),
    "layer_decay": ("float", "0.75", "> 0, <= 1", "layer-wise lr decay of ViT blocks, 1: none (finetune, partial; "
                    "ViTs only)"),
    "warmup_epochs": ("float", "1.0", ">= 0", "linear warmup epochs, at most half the run, then cosine decay"),
    "min_lr_ratio": ("float", "0.0", ">= 0, < 1", "final lr of the cosine schedule as a fraction of the peak"),
    "label_smoothing": ("float", "0.1", ">= 0, < 1", "label smoothing of the cross-entropy"),
    "drop_path": ("float", "0.1", ">= 0, < 1", "stochastic depth rate (finetune, partial only)"),
    "partial_blocks": ("int", "1", ">= 1", "K: the last K stages / blocks trained (partial only)"),
    "lora_rank": ("int", "8", ">= 1", "LoRA rank r (lora only)"),
    "lora_alpha": ("float", "16.0", "> 0", "LoRA scale alpha: the update is (alpha / r) B A (lora only)"),
    "lora_dropout": ("float", "0.0", ">= 0, < 1", "dropout on the LoRA branch's input (lora only)"),
    "prompt_tokens": ("int", "10", ">= 1", "learnable prompt tokens, at the input or before each block "
                      "(prompt only; ViTs)"),
    "prompt_deep": ("bool", "false", "", "VPT-deep: new prompt tokens before every block, else at the input only "
                    "(prompt only)"),
    "low_shot": ("list[float]", "eval.low_shot", "each > 0, <= 1", "labelled fractions run besides all labels"),
    "seeds": ("int", "eval.probe_seeds", ">= 1", "seeds per labelled fraction (mean ± sd)"),
    "seed": ("int", "seed", "", "first seed (subsets, held-out split, head init)"),
    "val_fraction": ("float", "0.1", "> 0, < 1", "share of the training images held out to choose the lr"),
}


@dataclass(frozen=True)
class KeyInfo:
    """One config key: its dotted path, type, default (YAML, as an override would spell it), range,
    help string, and for a method's key the method whose section holds it."""

    key: str
    type: str
    default: str
    range: str
    help: str
    method: str | None = None
    group: str | None = None  # keys outside the run config (:data:`TRANSFER`): selected as GROUP.KEY

    @property
    def path(self) -> str:
        """The dotted name a prefix selects: the key, or ``transfer.epochs`` for a --transfer option."""
        return f"{self.group}.{self.key}" if self.group else self.key

    def line(self) -> str:
        """``optim.lr: float = 0.3 (> 0)  peak learning rate``."""
        bounds = f" ({self.range})" if self.range else ""
        return f"{self.key}: {self.type} = {self.default}{bounds}" + (f"  {self.help}" if self.help else "")


def yaml_value(value: Any) -> str:
    """``value`` as YAML on one line: ``0.3``, ``[0.2, 1.0]``, ``null``, ``fashion-mnist``."""
    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """The bounds of a ``param(gt=..., le=...)`` field: ``> 0, <= 1``; empty when it has none."""
    return ", ".join(f"{sym} {meta[name]:g}" for name, sym in RANGES if meta.get(name) is not None)


def _default(f: dataclasses.Field, owner: Any) -> Any:
    if owner is not None:
        return getattr(owner, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def section_keys(cls: type, prefix: str, owner: Any = None, method: str | None = None) -> list[KeyInfo]:
    """The keys of dataclass ``cls`` under ``prefix``, nested sections expanded; defaults are read
    from ``owner`` (an instance: a section's defaults as its parent builds it) or the fields."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        default = _default(f, owner)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += section_keys(hints[f.name], key, None if default is dataclasses.MISSING else default, method)
            continue
        shown = REQUIRED if default is dataclasses.MISSING else yaml_value(default)
        keys.append(KeyInfo(key, type_name(hints[f.name]), shown, describe_range(f.metadata),
                            f.metadata.get("help", ""), method))
    return keys


def method_keys(name: str) -> list[KeyInfo]:
    """The ``method.*`` keys of method ``name`` (its config class's fields)."""
    cls = METHOD_CONFIGS.get(name)
    return section_keys(cls, "method", cls(), name)


def run_keys(with_methods: bool = True) -> list[KeyInfo]:
    """Every key of a run config: ``method.name``, each method's keys (``with_methods``), then the sections."""
    keys = [KeyInfo("method.name", "str", REQUIRED, "", "the method (selfsup list shows them)")]
    if with_methods:
        keys += [k for name in METHOD_CONFIGS.names() for k in method_keys(name)]
    return keys + [k for k in section_keys(RunConfig, "") if k.key != "method"]


def transfer_keys() -> list[KeyInfo]:
    """The ``--transfer KEY=VALUE`` options of ``selfsup eval --protocol`` (:data:`TRANSFER_OPTIONS`)."""
    return [KeyInfo(name, *row, group=TRANSFER) for name, row in TRANSFER_OPTIONS.items()]


def _under(key: str, prefix: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + ".")


def _sections(keys: list[str]) -> set[str]:
    """Every key and every section above one: ``optim.lr`` -> ``optim``, ``optim.lr``."""
    return {".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 2)}


def select_keys(prefix: str = "") -> list[KeyInfo]:
    """The keys under ``prefix`` (a key or a section, e.g. ``optim`` or ``method.temperature``;
    ``method.NAME`` or ``method.NAME.KEY``: one method's keys). Methods (torch) are imported only
    for a ``method`` prefix or none.

    Raises:
        ConfigError: no key is under ``prefix``; one line naming the closest keys.
    """
    parts = prefix.split(".")
    wants_methods = not prefix or parts[0] == "method"
    keys = transfer_keys() if parts[0] == TRANSFER else run_keys(with_methods=wants_methods) + transfer_keys()
    if wants_methods and len(parts) > 1 and parts[1] in METHOD_CONFIGS:
        keys, prefix = method_keys(parts[1]), ".".join(["method", *parts[2:]])
    found = [k for k in keys if _under(k.path, prefix)]
    if not found:
        near = close_matches(prefix, sorted(_sections([k.path for k in keys])))
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ConfigError(f"no config key under {prefix!r}: {hint}`selfsup config` with no prefix lists every key")
    return found


def keys_text(keys: list[KeyInfo]) -> str:
    """One line per key; a method's keys under a ``# method.name=NAME`` heading, the --transfer options under
    :data:`TRANSFER_HEADING`."""
    lines, method, group = [], None, None
    for k in keys:
        if k.method != method and k.method is not None:
            lines.append(f"# method.name={k.method}")
        if k.group != group and k.group == TRANSFER:
            lines.append(TRANSFER_HEADING)
        method, group = k.method, k.group
        lines.append(k.line())
    return "\n".join(lines) + "\n"


def resolved_section(resolved: dict[str, Any], prefix: str) -> Any:
    """The part of a resolved config (:func:`selfsup.config.to_dict`) under ``prefix``.

    Raises:
        ConfigError: no key ``prefix``; one line naming the closest keys.
    """
    node: Any = resolved
    for i, part in enumerate(prefix.split(".") if prefix else []):
        if not isinstance(node, dict) or part not in node:
            near = close_matches(prefix, sorted(_sections(_leaves(resolved))))
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ConfigError(f"the resolved config has no key {prefix!r}: {hint}`selfsup config --file FILE` with "
                              f"no prefix shows all of it")
        node = node[part]
    return node


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict's values that are not sections."""
    out = []
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        out += _leaves(value, key) if isinstance(value, dict) and value else [key]
    return out
