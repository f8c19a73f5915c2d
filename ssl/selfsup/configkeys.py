"""Every config key with its type, default, range and help string: what ``selfsup config`` prints.

The keys are read from the config dataclasses (:mod:`selfsup.config`) and, under ``method``, from
each registered method's config class (:data:`selfsup.config.METHOD_CONFIGS`, which imports the
methods, and so torch, only when a ``method`` key is asked for). ``selfsup config method.simclr``
lists one method's keys. The ``--transfer KEY=VALUE`` options of ``selfsup eval TARGET --protocol NAME``
follow under a ``# transfer`` heading (``selfsup config transfer`` lists them alone), read from the fields of
:class:`selfsup.transferconfig.TransferOptions`, which sits in this layer for that reason."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from selfsup.config import METHOD_CONFIGS, RunConfig
from selfsup.transferconfig import INTERNAL, TransferOptions
from selfsup.configread import ConfigError, describe_range, plain, type_name
from selfsup.registry import close_matches

REQUIRED = "(required)"
TRANSFER = "transfer"  # the group of the --transfer options: ``selfsup config transfer`` lists them
TRANSFER_HEADING = ("# transfer: selfsup eval TARGET --protocol finetune|partial|lora|prompt|bitfit --transfer "
                    "KEY=VALUE (VALUE as YAML; repeat --transfer for more)")
# --transfer options whose default comes from the run's config (selfsup eval reads them there)
TRANSFER_DEFAULTS = {"low_shot": "eval.low_shot", "seeds": "eval.probe_seeds", "seed": "seed"}
LR_OPTION = ("float", "(unset)", "> 0", "one learning rate: shorthand for lrs=[lr]")  # the CLI's --transfer lr


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
    """The ``--transfer KEY=VALUE`` options of ``selfsup eval --protocol``: the fields of
    :class:`selfsup.transferconfig.TransferOptions` (less ``protocol`` and ``given``), with ``lr`` (one
    learning rate) after ``lrs``; ``low_shot``, ``seeds`` and ``seed`` default to the run config's keys."""
    keys = []
    for k in section_keys(TransferOptions, ""):
        if k.key in INTERNAL:
            continue
        keys.append(dataclasses.replace(k, default=TRANSFER_DEFAULTS.get(k.key, k.default), group=TRANSFER))
        if k.key == "lrs":
            keys.append(KeyInfo("lr", *LR_OPTION, group=TRANSFER))
    return keys


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
    if not found and parts[0] == "method" and len(parts) == 2:  # method.X: X is neither a method nor a method key
        near = [f"method.{n}" for n in close_matches(parts[1], list(METHOD_CONFIGS.names()))]
        near += close_matches(prefix, sorted(_sections([k.path for k in keys])))
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ConfigError(f"{parts[1]!r} is neither a method nor a key of one: {hint}`selfsup list` shows the "
                          f"methods, `selfsup config method` every method key")
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
