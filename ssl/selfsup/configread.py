"""Reading config values: a plain dict (parsed YAML plus overrides) into typed dataclasses.

:func:`from_dict` builds a dataclass, refusing a key no field names (naming the closest valid
key), a value of another type than the field's (:func:`type_name` spells it) and a number
outside the range :func:`param` declared on the field; :func:`parse_yaml` is ``yaml.safe_load``
that refuses a key given twice; :func:`apply_override` applies one ``a.b.c=value``. Every
refusal is a one-line :class:`ConfigError`. Nothing here knows the run's sections: they are
:mod:`selfsup.config`, which builds a run's config with these.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

import yaml

from selfsup.registry import closest


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


RANGES = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))  # param's bounds and their symbols


def param(default: Any = dataclasses.MISSING, *, gt: float | None = None, ge: float | None = None,
          le: float | None = None, lt: float | None = None, help: str = "",
          default_factory: Any = dataclasses.MISSING, when: tuple[str, tuple[Any, ...]] | None = None,
          each: bool = False) -> Any:
    """A dataclass field with a range check and a help string. ``when=(field, values)``: the key applies
    only when the section's ``field`` is one of ``values``; set to anything but its default otherwise, it is
    refused (:func:`check_applies`) rather than ignored. ``each``: the bounds hold for every item of a list,
    and no item may repeat (such a list is a set of values tried: a grid, labelled fractions)."""
    meta = {"gt": gt, "ge": ge, "le": le, "lt": lt, "help": help, "when": when, "each": each}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def type_name(tp: Any) -> str:
    """A field's type as error messages and ``selfsup config`` spell it: ``float``, ``'grid' | 'avg'``,
    ``list[int] | None``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    colon = (isinstance(value, dict) and len(value) == 1 and next(iter(value.values())) is None
             and tp is not dict and typing.get_origin(tp) is not dict)  # YAML reads `random:` as {'random': None}
    hint = f"; YAML reads an unquoted `{next(iter(value))}:` as a mapping, so quote it: '{next(iter(value))}:'" \
        if colon else ""
    bad = ConfigError(f"config key {key!r} must be {type_name(tp)}, got {value!r} ({type(value).__name__}){hint}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key {key!r} must be one of {type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        said: ConfigError = bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except NumberError as err:  # the right type, a number it cannot hold: say that, not the types
                if type(value) is arg:  # an int beyond int64 is not read as a float instead
                    raise
                said = err
            except ConfigError:
                continue
        raise said
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r} must have {len(args)} items ({type_name(tp)}), got {value!r}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if not -2**63 <= value < 2**63:
            raise NumberError(f"config key {key!r} must be a whole number int64 holds (below 9.2e18 in size), got "
                              f"{_short(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise NumberError(f"config key {key!r} must be a finite number, got {value!r}")  # YAML: 'nan' is text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if isinstance(value, float) and not math.isfinite(value):
            raise NumberError(f"config key {key!r} must be a finite number, got {value!r}")
        try:
            number = float(value)  # a 400-digit int overflows here
        except OverflowError:
            number = math.inf
        if not fits_float32(number):
            raise NumberError(f"config key {key!r} must be a number float32 holds (0, or of size 1.4e-45 to 3.4e38: "
                              f"training computes in float32), got {_short(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


class NumberError(ConfigError):
    """A value of the right type that the key cannot hold (not finite, beyond float32 or int64); a key typed
    as a union (``float | None``) says this rather than listing its types."""


def _short(value: Any) -> str:
    """``repr(value)``, a long one cut to its first and last digits (a 400-digit int)."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} characters)"


def fits_float32(x: float) -> bool:
    """Whether float32 holds ``x`` as a number of its size: not overflowing to inf (above 3.4e38), not a
    nonzero rounding to 0 (below 1.4e-45). A learning rate of 1e300 crashed Adam's float32 step with a
    traceback; one of 1e-300 would train nothing."""
    try:
        rounded = struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return False
    return math.isfinite(rounded) and (rounded != 0 or x == 0)


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """The bounds of a ``param(gt=..., le=...)`` field: ``> 0, <= 1`` (``each > 0`` for a list's items);
    empty when it has none."""
    bounds = ", ".join(f"{sym} {meta[name]:g}" for name, sym in RANGES if meta.get(name) is not None)
    return f"each {bounds}" if bounds and meta.get("each") else bounds


def first_repeated(items: typing.Sequence[Any]) -> Any:
    """The first item of ``items`` that equals an earlier one (None when all differ)."""
    return next((v for i, v in enumerate(items) if v in items[:i]), None)


def check_range(value: Any, meta: typing.Mapping[str, Any], key: str, what: str = "config key") -> None:
    """ConfigError ``{what} {key!r} must be > 0, got -1.0`` when ``value`` (for ``param(each=True)``:
    any item of the list ``value``) is outside the field's bounds (``meta``: its metadata)."""
    items = list(value) if meta.get("each") and isinstance(value, (list, tuple)) else [value]
    if len(items) > 1:
        repeated = first_repeated(items)
        if repeated is not None:
            raise ConfigError(f"{what} {key!r} holds {repeated!r} twice in {value!r}: give each value once")
    ops = {"gt": lambda v, b: v > b, "ge": lambda v, b: v >= b, "lt": lambda v, b: v < b, "le": lambda v, b: v <= b}
    for v in items:
        if v is None or isinstance(v, (bool, str, list, tuple, dict)):
            continue
        for name, sym in RANGES:
            bound = meta.get(name)
            finite = not isinstance(v, float) or math.isfinite(v)  # a Python int is finite at any size
            if bound is not None and not (finite and ops[name](v, bound)):  # NaN and inf: never in range
                if meta.get("each") and isinstance(value, (list, tuple)):
                    raise ConfigError(f"{what} {key!r} must hold values {sym} {bound}, got {v!r} in {value!r}")
                raise ConfigError(f"{what} {key!r} must be {sym} {bound}, got {v!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and ranges are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            hint = closest(str(key), list(fields))
            where = f"{prefix!r}" if prefix else "the top level"
            suggestion = f"did you mean {(prefix + '.' + hint) if prefix else hint!r}? " if hint else ""
            raise ConfigError(f"unknown config key {full!r}: {suggestion}"
                              f"valid keys in {where}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config key {(prefix + '.' if prefix else '') + name!r} is required")
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = coerce(data[name], hints[name], key)
        check_range(value, f.metadata, key)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except ConfigError:  # already names its key (check_applies in a __post_init__)
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config section {prefix or 'top level'!r}: {err}") from None
    check_applies(obj, prefix)
    return obj


def check_applies(obj: Any, prefix: str = "") -> None:
    """Refuse a key of ``obj`` (a config dataclass) set away from its default while the setting it depends on
    (``param(when=...)``) makes it unused, e.g. ``method.smile_tau=2`` with ``method.estimator=infonce``: such
    a value would be ignored silently. A key left at its default is never refused (a run's dumped config.yaml
    lists every key).

    Raises:
        ConfigError: (one line) naming the key, the setting it needs and the fix.
    """
    for f in dataclasses.fields(obj):
        when = f.metadata.get("when")
        if not when:
            continue
        field_name, values = when
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(obj, field_name) in values or getattr(obj, f.name) == default:
            continue
        key, need = (f"{prefix}.{n}" if prefix else n for n in (f.name, field_name))
        raise ConfigError(f"config key {key}={getattr(obj, f.name)!r} applies only when {need} is "
                          f"{' or '.join(map(str, values))} (it is {getattr(obj, field_name)}), so it would be "
                          f"ignored: drop it, or set {need}={values[0]}")


def _check_unique_keys(node: yaml.Node, loader: yaml.SafeLoader, where: str, path: str = "",
                       seen_nodes: set[int] | None = None) -> None:
    """ConfigError when a mapping anywhere under ``node`` names a key twice (YAML keeps
    only the later value, so a repeated section would replace the earlier one wholesale).
    Keys merged in with ``<<`` may be overridden; that is what merging is for."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias of a node already checked (or a recursive one)
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, loader, where, f"{path}[{i}]", seen_nodes)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            _check_unique_keys(value_node, loader, where, path, seen_nodes)
            continue
        try:
            key = loader.construct_object(key_node, deep=True)
            hash(key)
        except (TypeError, yaml.YAMLError):
            key = (key_node.tag, getattr(key_node, "value", None)) if isinstance(key_node, yaml.ScalarNode) \
                else id(key_node)
        line = key_node.start_mark.line + 1
        full = f"{path}.{key}" if path else str(key)
        if key in seen:
            raise ConfigError(f"{where}: key {full!r} is given twice (lines {seen[key]} and {line}); YAML would "
                              f"keep only the later one and silently drop the first: merge them into one")
        seen[key] = line
        _check_unique_keys(value_node, loader, where, full, seen_nodes)


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error on one line: the problem and where (line and column counted from 1)."""
    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    if not isinstance(err, yaml.MarkedYAMLError):
        return " ".join(str(err).split())
    text = err.problem or "invalid YAML"
    if err.problem_mark is not None:
        text += f" at {at(err.problem_mark)}"
    if err.context:
        text += f" ({err.context}" + (f" at {at(err.context_mark)}" if err.context_mark is not None else "") + ")"
    return " ".join(text.split())


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in any mapping (ConfigError naming
    the key, its full path and both line numbers, counted from 1 in ``text``); raises
    yaml.YAMLError for text that is not YAML."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, loader, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override to the raw dict; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    path, _, text = override.partition("=")
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = parse_yaml(text, f"override {override!r}") if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({yaml_problem(err)}); if the "
                          f"shell split it at a space, quote the whole override: 'key=[1, 2]'") from None
    node = raw
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(keys[:i + 1])!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def has_key(raw: dict[str, Any], keys: typing.Sequence[str]) -> bool:
    """Whether the nested dict ``raw`` holds the key path ``keys`` (``["method", "name"]``)."""
    node: Any = raw
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def check_repeated_overrides(overrides: typing.Sequence[str]) -> None:
    """Refuse ``key=value`` overrides of which one would silently undo another: the same key twice
    (``eval.probe_seeds=1 eval.probe_seeds=2``), or a section replaced after a key inside it was set
    (``encoder.kwargs.stem_width=8 encoder.kwargs={...}``). A key set inside a section after the section
    (``encoder.kwargs={...} encoder.kwargs.stem_width=8``) changes it and is kept. Raises ConfigError
    (one line) naming both overrides."""
    seen: dict[tuple[str, ...], str] = {}
    for override in overrides:
        if "=" not in override:
            continue  # apply_override names the problem
        keys = tuple(override.partition("=")[0].strip().split("."))
        for earlier_keys, earlier in seen.items():
            if earlier_keys == keys:
                raise ConfigError(f"override key {'.'.join(keys)!r} is given twice ({earlier!r}, then {override!r}): "
                                  f"the first would be lost; keep one")
            if earlier_keys[:len(keys)] == keys:
                raise ConfigError(f"override {override!r} replaces the section {'.'.join(keys)!r} and would lose the "
                                  f"earlier {earlier!r}: put that key inside the section's value, or after it")
        seen[keys] = override


def plain(obj: Any) -> Any:
    """``obj`` with tuples as lists (YAML-safe), recursively."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
