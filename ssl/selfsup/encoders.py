"""Encoders are timm models created with ``num_classes=0``: ``encoder(x)`` -> pooled ``[B, num_features]``."""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair


class EncoderError(ValueError):
    """The encoder cannot be built; the message names the problem."""


def check_timm_name(name: str) -> None:
    if name not in timm.list_models():
        import difflib

        near = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close timm names: {', '.join(near)}." if near else ""
        raise EncoderError(f"encoder.name {name!r} is not a timm model.{hint} "
                           f"List them with: python -c \"import timm; print(timm.list_models('*resnet*'))\"")


def check_kwargs_keys(kwargs: dict[Any, Any]) -> None:
    """EncoderError (one line) for an ``encoder.kwargs`` key that is no Python keyword name (YAML's
    ``{stem_width:8}``, no space, is one key with no value) or one that selfsup sets itself."""
    for key in kwargs:  # each key becomes a timm keyword argument, and one in the export's timm call
        if not (isinstance(key, str) and key.isidentifier()):
            name, sep, value = str(key).partition(":")
            hint = (f": YAML reads `{key}` as one key with no value; write `{name}: {value}` (a space after the "
                    f"colon)") if sep else "; use timm's keyword names"
            raise EncoderError(f"encoder.kwargs key {key!r} is not a Python keyword name{hint}")
    for bad in ("num_classes", "in_chans", "pretrained"):
        if bad in kwargs:
            raise EncoderError(f"encoder.kwargs.{bad} is set by selfsup; remove it from the config")


# how timm's model constructors refuse arguments: an unknown keyword (TypeError), their own checks
# (AssertionError, ValueError), an unknown layer name (KeyError), a list too short for the stages
# (IndexError), a stage count the model's code assumes (AttributeError)
BUILD_ERRORS = (TypeError, AssertionError, ValueError, KeyError, IndexError, AttributeError, RuntimeError)


def build_failure(name: str, kwargs: dict[str, Any], err: Exception) -> str:
    """The one-line message of timm refusing to build ``name`` with ``kwargs`` (a TypeError for an unknown
    keyword; an AssertionError or ValueError from the model's own checks, e.g. a BasicBlock ResNet's
    ``base_width``)."""
    said = (str(err).strip().splitlines() or [type(err).__name__])[0]  # torch's C++ errors add a stack trace
    if not str(err).strip():  # a bare assert: the failing line of timm's code says what it wants
        frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ else []
        line = frames[-1].line.strip() if frames and frames[-1].line else ""
        said = (f"timm's check `{line}` failed ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if line
                else f"{type(err).__name__} (timm's own check of its arguments)")
    return f"timm could not build {name!r} with encoder.kwargs={kwargs}: {said}; change or remove that key"


def create_encoder(name: str, in_chans: int, kwargs: dict[str, Any] | None = None,
                   fair_random_init: bool = False) -> nn.Module:
    """A timm model ``name`` with ``num_classes=0`` and ``in_chans`` input channels.

    ``fair_random_init`` disables timm's zero-initialisation of the last norm layer in
    each residual block (``zero_init_last``), which otherwise makes every block an
    identity at init and a random encoder a very weak, unfair baseline.
    """
    check_timm_name(name)
    kwargs = dict(kwargs or {})
    check_kwargs_keys(kwargs)
    if fair_random_init and "zero_init_last" not in kwargs:
        try:
            return timm.create_model(name, num_classes=0, in_chans=in_chans, zero_init_last=False, **kwargs)
        except TypeError:  # this architecture has no zero_init_last
            pass
    try:
        return timm.create_model(name, num_classes=0, in_chans=in_chans, **kwargs)
    except BUILD_ERRORS as err:
        raise EncoderError(build_failure(name, kwargs, err)) from None


# timm.create_model's own options (how to build or load, not what is built): a model equal with
# and without them is expected, so ineffective_kwargs does not judge them
_CREATE_OPTIONS = frozenset(inspect.signature(timm.create_model).parameters) - {"kwargs", "model_name"}
_PRIMITIVES = (bool, int, float, str, type(None))


def _attribute(value: Any) -> Any:
    """A module attribute as a comparable value: primitives (and tuples / lists of them) as they
    are, classes and functions by their qualified name; ``None`` for anything else (not compared)."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PRIMITIVES) for v in value):
        return tuple(value)
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return f"{value.__module__}.{value.__qualname__}"
    return None


def model_fingerprint(model: nn.Module) -> tuple[list[Any], list[torch.Tensor]]:
    """What a built model is: per submodule its path, class and plain attributes (widths, strides,
    dilations, rates, pooling types, activation classes: ``Module.__dict__`` minus the tensors and
    child modules), and every parameter and buffer (their values: an initialisation choice such as
    timm's ``zero_init_last`` changes only those). Two models with equal fingerprints are taken to
    compute the same function (a tour compared the eval outputs and every buffer of each key this
    refused, over 24 model families: all bit-identical)."""
    structure = []
    for path, module in model.named_modules():
        attrs = {k: _attribute(v) for k, v in vars(module).items()
                 if not k.startswith("_") and k != "training"}
        structure.append((path, type(module).__qualname__, sorted((k, v) for k, v in attrs.items() if v is not None)))
    return structure, [t.detach() for t in model.state_dict().values()]


def _same(a: tuple[list[Any], list[torch.Tensor]], b: tuple[list[Any], list[torch.Tensor]],
          values: bool = True) -> bool:
    """Equal fingerprints: structure, and every tensor's shape and dtype (and value with ``values``)."""
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(
        x.shape == y.shape and x.dtype == y.dtype and (not values or torch.equal(x, y)) for x, y in zip(a[1], b[1]))


def _seeded_build(name: str, in_chans: int, kwargs: dict[str, Any], meta: bool = False) -> nn.Module:
    """timm's ``name`` with ``kwargs``, initialised from seed 0 (the caller's random stream is left as
    it was); ``meta``: on the meta device (structure and shapes only, no memory, no initialisation)."""
    with torch.random.fork_rng(devices=[]), (torch.device("meta") if meta else contextlib.nullcontext()):
        torch.manual_seed(0)
        return timm.create_model(name, num_classes=0, in_chans=in_chans, **kwargs)


def _fingerprint_or_none(name: str, in_chans: int, kwargs: dict[str, Any],
                         meta: bool) -> tuple[list[Any], list[torch.Tensor]] | None:
    """:func:`model_fingerprint` of a build; None when timm cannot build it (on the meta device: a model
    whose constructor reads tensor values)."""
    try:
        return model_fingerprint(_seeded_build(name, in_chans, kwargs, meta))
    except Exception:  # noqa: BLE001 -- any failure to build: not comparable this way
        return None


def _declared_default(model: nn.Module, key: str) -> Any:
    """The default of ``key`` in the model class's constructor; a unique sentinel when it has none."""
    param = inspect.signature(type(model).__init__).parameters.get(key)
    return inspect.Parameter.empty if param is None else param.default


def _resolved(key: str, value: Any) -> Any:
    """``value`` as the model uses it, for comparing spellings: tuples as lists (YAML has no tuples), and
    a ``*_layer`` name resolved by timm (``relu`` -> ``nn.ReLU``, ``batchnorm`` -> ``nn.BatchNorm2d``)."""
    if isinstance(value, (list, tuple)):
        return [_resolved(key, v) for v in value]
    if key.endswith("_layer") and isinstance(value, str):
        from timm.layers import get_act_layer, get_norm_layer

        for resolve in (get_act_layer, get_norm_layer):
            try:
                return resolve(value)
            except (ValueError, KeyError, AssertionError, TypeError):
                continue
    return value


def constructor_kwargs(name: str, in_chans: int, kwargs: dict[str, Any], cls: type) -> dict[str, Any] | None:
    """The keyword arguments timm's entry point for ``name`` hands the model class ``cls`` when called
    with ``kwargs`` (its own architecture settings merged with them: ``vit_tiny_patch16_224`` passes
    ``embed_dim=192``, ``resnet26d`` ``stem_type='deep'``); recorded by wrapping ``cls.__init__`` for one
    build on the meta device. None when that build fails."""
    seen: dict[str, Any] = {}
    own = "__init__" in vars(cls)
    original = cls.__init__

    def recording(self: nn.Module, *args: Any, **kw: Any) -> None:
        if not seen:
            seen.update(kw, __called__=True)  # the outermost call: the model itself
        original(self, *args, **kw)

    cls.__init__ = recording  # type: ignore[method-assign]
    try:
        _seeded_build(name, in_chans, kwargs, meta=True)
    except Exception:  # noqa: BLE001 -- cannot be recorded this way
        return None
    finally:
        if own:
            cls.__init__ = original  # type: ignore[method-assign]
        else:
            del cls.__init__
    seen.pop("__called__", None)
    return seen


def _restates(name: str, in_chans: int, key: str, value: Any, without: dict[str, Any], model: nn.Module) -> bool:
    """Whether ``key: value`` only restates what the model is built with anyway: the value timm's entry
    point passes the model class without it (:func:`constructor_kwargs`), else the class's declared
    default, compared as :func:`_resolved`."""
    passed = constructor_kwargs(name, in_chans, without, type(model))
    built = passed[key] if passed is not None and key in passed else _declared_default(model, key)
    return built is not inspect.Parameter.empty and _resolved(key, built) == _resolved(key, value)


# for a ``*_layer`` name: another of its kind, to see whether the model reads the key at all
_OTHER_LAYER = {"act": ("gelu", "relu"), "norm": ("layernorm2d", "batchnorm2d")}


def another_value(key: str, value: Any) -> Any:
    """A value of ``key`` other than ``value`` and of its type, or None when there is no obvious one: a bool
    negated, a number doubled plus one (an int) or doubled (a float; 0.5 for 0), each number of a list
    changed so, another activation or norm layer for ``act_layer`` / ``norm_layer`` names. Used to tell a
    key the model ignores (no value changes it: resnet18's ``stem_width``) from one that restates the value
    it is built with (``fc_norm: false`` on a ViT, ``se_ratio: 0.25`` on a RegNetY)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 2 * value + 1
    if isinstance(value, float):
        return 2 * value if value else 0.5
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value):
        return [another_value(key, v) for v in value]
    if isinstance(value, str) and key.endswith("_layer"):
        for kind, (first, second) in _OTHER_LAYER.items():
            if kind in key:
                return second if _resolved(key, value) == _resolved(key, first) else first
    return None


def _read_by_model(name: str, in_chans: int, key: str, value: Any, kwargs: dict[str, Any],
                   full: tuple[list[Any], list[torch.Tensor]]) -> bool:
    """Whether another value of ``key`` (:func:`another_value`) builds another model than ``full`` (the
    fingerprint with ``kwargs``), or is refused by timm's checks: the model reads the key, and ``value``
    equals what it is built with anyway. False when there is no other value to try."""
    other = another_value(key, value)
    if other is None:
        return False
    changed = {**kwargs, key: other}
    fp = _fingerprint_or_none(name, in_chans, changed, meta=True)
    if fp is not None and not _same(full, fp, values=False):
        return True
    fp = _fingerprint_or_none(name, in_chans, changed, meta=False)
    return fp is None or not _same(full, fp)  # timm refusing the other value read it too


_INEFFECTIVE: dict[tuple[str, int, str], tuple[str, ...]] = {}  # ineffective_kwargs' answers in this process


def _ineffective(name: str, in_chans: int, kwargs: dict[str, Any]) -> tuple[str, ...]:
    """Two passes: on the meta device (no memory, no initialisation: a large ViT builds in under a second
    instead of 14 s) a key that changes the structure, a shape or a plain attribute is settled; only
    keys whose meta builds are the same are built for real, where the initial values decide
    (``zero_init_last`` changes nothing else). A key whose builds agree is kept when it restates the
    value the model is built with anyway (:func:`_restates`), or when another value of it builds another
    model (:func:`_read_by_model`: the model reads it, and this value is the one it uses anyway, in other
    words than the default's: ``fc_norm: false`` for a ViT's ``None``)."""
    try:
        meta_model: nn.Module | None = _seeded_build(name, in_chans, kwargs, meta=True)
    except Exception:  # noqa: BLE001 -- a constructor that reads tensor values cannot run on the meta device
        meta_model = None  # (a value timm refuses fails again in the real build below, named there)
    model = meta_model if meta_model is not None else _seeded_build(name, in_chans, kwargs)
    rest = {key: {k: v for k, v in kwargs.items() if k != key} for key in kwargs if key not in _CREATE_OPTIONS}
    if meta_model is not None:
        full_meta = model_fingerprint(meta_model)
        rest = {key: without for key, without in rest.items()
                if (fp := _fingerprint_or_none(name, in_chans, without, meta=True)) is None
                or _same(full_meta, fp, values=False)}  # a structural difference settles it: the key counts
    rest = {key: without for key, without in rest.items()
            if not _restates(name, in_chans, key, kwargs[key], without, model)}  # true either way: kept
    if not rest:
        return ()
    full = model_fingerprint(_seeded_build(name, in_chans, kwargs))
    idle = []
    for key, without in rest.items():
        fp = _fingerprint_or_none(name, in_chans, without, meta=False)
        if fp is not None and _same(full, fp):  # no build without the key: it counts (e.g. a width the heads need)
            if not _read_by_model(name, in_chans, key, kwargs[key], kwargs, full):  # restated in other words
                idle.append(key)
    return tuple(idle)


def ineffective_kwargs(name: str, kwargs: dict[str, Any], in_chans: int = 3) -> list[str]:
    """The keys of ``kwargs`` that change nothing in the model timm builds: ``name`` built with all
    of ``kwargs`` and built without that one key (same seed) have the same
    :func:`model_fingerprint`. Such a key is either the architecture's default or one that timm
    accepts and this architecture ignores (timm's resnet18 takes ``stem_width`` and builds its
    single 7x7 stem 64 wide whatever it says; only a ``'deep'`` stem reads it): a config that names it
    describes a model that was not trained. A key that restates the value the model is built with
    anyway (what timm's entry point passes its class, else the class's declared default; ``relu`` and
    ``nn.ReLU``, a list and a tuple count as equal) is kept, and so is one that another value of it
    would change (:func:`another_value`: the model reads it, and builds this value anyway, as a ViT's
    ``fc_norm: false`` against its default None), as are timm.create_model's own options
    (``scriptable``, ``exportable``, ...). Cached per (name, in_chans, kwargs).

    Raises:
        EncoderError: a malformed key (:func:`check_kwargs_keys`), or timm cannot build ``name`` with
            ``kwargs`` (as :func:`create_encoder`).
    """
    check_timm_name(name)
    check_kwargs_keys(kwargs)
    key = (name, in_chans, repr(sorted(kwargs.items())))  # values as written (lists, tuples, classes alike)
    try:
        if key not in _INEFFECTIVE:
            _INEFFECTIVE[key] = _ineffective(name, in_chans, dict(kwargs))
        return list(_INEFFECTIVE[key])
    except BUILD_ERRORS as err:
        raise EncoderError(build_failure(name, kwargs, err)) from None


def mistyped_kwargs(name: str, kwargs: dict[str, Any], in_chans: int = 3) -> list[str]:
    """One line per ``kwargs`` value whose type differs from its default in the model class's
    constructor (a number for a float or int default, a bool for a bool, a string for a string):
    timm builds ``drop_rate: [0.1]`` or ``drop_rate: '0.2'`` and fails at the first training step
    (``float()`` of a list, ``'>'`` between str and float), after the run directory was made. Keys
    the constructor does not declare, or declares with another default (None, a class), are not
    judged. Built on the meta device (nothing allocated); [] when that build fails (the build
    errors are :func:`ineffective_kwargs`'s to name)."""
    try:
        cls = type(_seeded_build(name, in_chans, kwargs, meta=True))
    except Exception:  # noqa: BLE001 -- named by the real build
        return []
    params = inspect.signature(cls.__init__).parameters
    wrong = []
    for key, value in kwargs.items():
        default = params[key].default if key in params else None
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "a bool"
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            kind = "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            wrong.append(f"{key}: {value!r} is {type(value).__name__}, and {cls.__name__} takes {kind} "
                         f"(default {default!r})")
    return wrong


def check_kwargs_take_effect(name: str, kwargs: dict[str, Any], in_chans: int = 3) -> None:
    """Refuse ``encoder.kwargs`` keys that change nothing in the built model
    (:func:`ineffective_kwargs`).

    Raises:
        EncoderError: one line naming each such key and the fix (remove it, or the key that makes
            it count, e.g. ``stem_type: deep`` for a ResNet's ``stem_width``); first, values of
            another type than the constructor's defaults (:func:`mistyped_kwargs`).
    """
    wrong = mistyped_kwargs(name, kwargs, in_chans)
    if wrong:
        raise EncoderError(f"encoder.kwargs {'; '.join(wrong)}: give {'that type' if len(wrong) == 1 else 'those types'} "
                           f"(YAML reads 0.2 as a number, '0.2' as a string)")
    idle = ineffective_kwargs(name, kwargs, in_chans)
    if idle:
        keys = ", ".join(f"{k}: {kwargs[k]!r}" for k in idle)
        one = len(idle) == 1
        hint = " (a ResNet reads stem_width only with stem_type: deep)" if "stem_width" in idle else ""
        it, them = ("it", "it") if one else ("each", "them")
        if all(another_value(k, kwargs[k]) is not None for k in idle):  # ignored: no value of it changes the model
            same = (f"the model built with {it}, without {it} and with another value of {it} is the same (this "
                    f"architecture ignores {them} with these settings)")
        else:
            same = (f"the model built with and without {it} is the same (this architecture ignores {them} with these "
                    f"settings, or {'it restates' if one else 'they restate'} what it builds anyway)")
        raise EncoderError(f"encoder.kwargs {keys} change{'s' if one else ''} nothing in timm's {name!r}: {same}; "
                           f"remove {them} from encoder.kwargs, or set what makes {them} count{hint}")


@contextlib.contextmanager
def probing(encoder: nn.Module, train: bool) -> Iterator[None]:
    """While active, ``encoder`` is in train (``train``) or eval mode for a check that must leave no trace:
    the caller's random stream forked, and on exit the mode, every buffer (BatchNorm's running statistics)
    and every parameter's ``.grad`` restored."""
    modes = [(m, m.training) for m in encoder.modules()]  # each its own: a model may be partly in eval mode
    buffers = [(b, b.clone()) for b in encoder.buffers()]
    grads = [(p, p.grad) for p in encoder.parameters()]
    for p in encoder.parameters():
        p.grad = None  # a probe's backward must not add into the caller's gradient tensors
    try:
        with torch.random.fork_rng(devices=[]):
            encoder.train(train)
            yield
    finally:
        for m, was in modes:
            m.training = was
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g


def probe_images(encoder: nn.Module, n: int, in_chans: int, image_size: int, random: bool = False) -> Tensor:
    """``[n, in_chans, image_size, image_size]`` blank (``random``: seeded standard normal) images on the
    encoder's device, for the checks below."""
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else "cpu"
    if not random:
        return torch.zeros(n, in_chans, image_size, image_size, device=device)
    return torch.randn(n, in_chans, image_size, image_size, device=device,
                       generator=torch.Generator(device=device).manual_seed(0))


def check_forward(encoder: nn.Module, in_chans: int, image_size: int, name: str, kwargs: dict[str, Any],
                  size_key: str = "data.image_size") -> None:
    """One training-mode forward of two blank ``[2, in_chans, image_size, image_size]`` images, so that
    a model timm builds but cannot run (``layers: [1, 1, 1]`` on a 4-stage ResNet, ``drop_rate`` of a
    type its forward cannot use) fails before a run directory exists, not at the first training step.
    Its output must be ``[2, D]`` with the ``D`` the model reports (:func:`pooled_width`): every
    method's heads are built for that width (``channels`` with ``layers: [0, 0, 0, 0]`` reported the
    last channel count and returned the stem's). A layer reading the images must see every pixel
    (:func:`first_layers_coverage`: a ViT's ``patch_size`` 5 on 28x28 images dropped the last 3 rows and
    columns without a word; ``size_key``: the setting the refusal's suggested sizes are for). Leaves no trace: no gradient, the random stream
    forked, every buffer (BatchNorm's running statistics) restored, the mode restored.

    Raises:
        EncoderError: one line with timm's error; one naming the layer and the rows and columns it
            leaves unseen (:func:`unseen_message`).
    """
    try:
        with probing(encoder, train=True), torch.no_grad():
            x = probe_images(encoder, 2, in_chans, image_size)  # [2, C, H, W]
            with first_layers_coverage(encoder, x) as readers:
                out = encoder(x)  # [2, D]
        width = pooled_width(encoder)
        if out.ndim != 2 or out.shape[1] != width:  # the heads are built for the width the model reports
            raise ValueError(f"it returns features of shape {list(out.shape)} but reports {width} "
                             f"(num_features): a setting that changes nothing, such as channels with no blocks")
    except Exception as err:  # noqa: BLE001 -- whatever the model's code raises, said in one line
        raise EncoderError(f"timm's {name!r} with encoder.kwargs={kwargs} builds but fails on a forward pass of "
                           f"two {in_chans}x{image_size}x{image_size} images: {type(err).__name__}: {err}; change "
                           f"or remove the key that causes it") from None
    who = f"timm's {name!r} with encoder.kwargs={kwargs}"
    if unseen := unseen_message(who, image_size, readers, encoder, in_chans, size_key):
        raise EncoderError(unseen)


def _axis_coverage(n: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> Tensor:
    """``[n]`` bool: the input positions of one axis that some window of a strided layer reads (PyTorch's
    output-size rule, with ``ceil_mode``'s last window kept only when it starts inside the input or its
    left padding)."""
    span = dilation * (kernel - 1) + 1
    if n + 2 * padding < span and not ceil_mode:
        return torch.zeros(n, dtype=torch.bool)  # (PyTorch refuses to run such a layer)
    outputs = (n + 2 * padding - span) // stride + 1
    if ceil_mode:  # a window may hang over the end (even one longer than the input)
        outputs = max(1, -(-(n + 2 * padding - span) // stride) + 1)
        if outputs > 1 and (outputs - 1) * stride >= n + padding:
            outputs -= 1
    starts = torch.arange(outputs) * stride - padding  # [O]
    read = (starts[:, None] + dilation * torch.arange(kernel)).flatten()  # [O * K] positions read
    covered = torch.zeros(n, dtype=torch.bool)
    covered[read[(read >= 0) & (read < n)]] = True
    return covered


def covered_pixels(layer: nn.Module, size: tuple[int, int]) -> Tensor:
    """``[H, W]`` bool: the pixels of an ``[..., H, W]`` input that some window of ``layer`` reads. ``layer`` is
    an ``nn.Conv2d``, ``nn.MaxPool2d`` or ``nn.AvgPool2d``; anything else, ``padding='same'`` and timm's
    "Same" layers (which pad at run time) read every pixel. A kernel of effective size ``d (k - 1) + 1`` at
    stride ``s`` over ``L + 2p`` padded positions leaves ``(L + 2p - d (k - 1) - 1) mod s`` trailing positions
    unread (a ViT's patch embedding, ``patch_size`` 5 on 28 pixels: the last 3), and a kernel smaller than its
    stride skips pixels between its windows (a 1x1 convolution at stride 2: every other row and column)."""
    every = torch.ones(size, dtype=torch.bool)
    if type(layer).__name__.endswith("Same"):
        return every
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str):  # "same" pads to cover, "valid" is no padding
            if layer.padding == "same":
                return every
            padding = (0, 0)
        else:
            padding = layer.padding
        kernel, stride, dilation, ceil = layer.kernel_size, layer.stride, layer.dilation, False
    elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        kernel, stride, padding = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size), _pair(layer.padding)
        dilation, ceil = _pair(getattr(layer, "dilation", 1)), layer.ceil_mode
    else:
        return every
    rows, cols = (_axis_coverage(n, k, st, p, d, ceil) for n, k, st, p, d in zip(size, kernel, stride, padding, dilation))
    return rows[:, None] & cols[None, :]  # [H, W]


@contextlib.contextmanager
def first_layers_coverage(encoder: nn.Module, images: Tensor) -> Iterator[list[tuple[str, nn.Module]]]:
    """While active, every ``nn.Conv2d`` / pooling layer of ``encoder`` that is handed ``images`` itself
    (``[N, C, H, W]``, the model's input: a stem's first convolution, a ViT's patch embedding, each parallel
    branch of a RepVGG / MobileOne stem) is listed as ``(name, layer)``. A layer that sees a padded or
    transformed copy (timm's ``dynamic_img_pad``) is not listed: it is not the images' first reader."""
    found: list[tuple[str, nn.Module]] = []
    hooks = []

    def hook_for(name: str) -> Callable[..., None]:
        def pre_hook(layer: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0] if inputs else None
            if isinstance(x, Tensor) and x.shape == images.shape and x.data_ptr() == images.data_ptr():
                found.append((name, layer))
        return pre_hook

    for name, layer in encoder.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            hooks.append(layer.register_forward_pre_hook(hook_for(name)))
    try:
        yield found
    finally:
        for h in hooks:
            h.remove()


def unseen_pixels(readers: Sequence[nn.Module], size: tuple[int, int]) -> Tensor:
    """``[H, W]`` bool: the pixels that none of the layers reading the images (:func:`first_layers_coverage`)
    covers (:func:`covered_pixels`); the parallel branches of a stem cover for each other. All False when
    no layer was found (a model that reads the images some other way is not judged)."""
    covered = torch.zeros(size, dtype=torch.bool) if readers else torch.ones(size, dtype=torch.bool)
    for layer in readers:
        covered |= covered_pixels(layer, size)
    return ~covered


def describe_unseen(unseen: Tensor) -> str:
    """``unseen`` ``[H, W]`` bool in words: "the last 3 rows and the last 3 columns" when they are whole
    trailing rows and columns, else "130 of the 784 pixels (rows 1, 3, 5, ..., columns ...)"."""
    h, w = unseen.shape
    rows = next((r for r in range(h, 0, -1) if bool(unseen[h - r:].all())), 0)  # wholly unseen trailing rows
    cols = next((c for c in range(w, 0, -1) if bool(unseen[:, w - c:].all())), 0)
    trailing = torch.zeros_like(unseen)
    trailing[h - rows:] = rows > 0
    trailing[:, w - cols:] |= cols > 0
    if (rows or cols) and torch.equal(trailing, unseen):
        return " and ".join(f"the last {n} {word}{'s' if n > 1 else ''}" for n, word in ((rows, "row"), (cols, "column"))
                            if n)

    def listed(indices: list[int]) -> str:
        return ", ".join(map(str, indices[:4])) + (", ..." if len(indices) > 4 else "")

    bad_rows = unseen.any(1).nonzero().flatten().tolist()
    bad_cols = unseen.any(0).nonzero().flatten().tolist()
    return f"{int(unseen.sum())} of the {h * w} pixels (in rows {listed(bad_rows)}; columns {listed(bad_cols)})"


def gradient_reaches(encoder: nn.Module, in_chans: int, image_size: int, images: int = 4) -> Tensor:
    """``[H, W]`` bool: the pixels the pooled features depend on by autograd, the gradient of a random
    projection of the features of ``images`` random normal images (eval mode) with respect to each pixel being
    nonzero in some image and channel. A nonzero gradient proves a pixel is read (a branch that reads a
    resized copy of the image, as CrossViT's second, reads every pixel); a zero one proves nothing (timm's
    zero-initialised residual blocks, a max pool's losers), so it only overrules a structural "unseen". The
    caller's random stream, the encoder's mode and its gradients are left as they were."""
    with probing(encoder, train=False), torch.enable_grad():
        x = probe_images(encoder, images, in_chans, image_size, random=True).requires_grad_(True)  # [N, C, H, W]
        out = encoder(x)  # [N, D]
        projection = torch.randn(out.shape[1:], device=out.device, generator=torch.Generator(out.device).manual_seed(1))
        (out.float() * projection).sum().backward()  # [D] a random projection of the features
    return (x.grad != 0).any(dim=1).any(dim=0).cpu()  # [H, W]


def unseen_message(who: str, image_size: int, readers: list[tuple[str, nn.Module]], encoder: nn.Module | None = None,
                   in_chans: int = 3, size_key: str = "data.image_size") -> str | None:
    """The one-line refusal, about ``who``, when the layers reading the images leave pixels unseen (:func:`unseen_pixels`)
    and the features' gradient does not reach them either (:func:`gradient_reaches`, with ``encoder``:
    a branch fed a resized copy of the image covers them), naming those layers and the nearest ``size_key``
    values they cover; None when every pixel is covered. A model with timm's ``dynamic_img_pad`` (its ViTs)
    is told of that too, and one whose patch embedding takes only its ``img_size`` (timm's
    ``strict_img_size``) that the size goes with ``encoder.kwargs img_size``."""
    layers = [layer for _, layer in readers]
    unseen = unseen_pixels(layers, (image_size, image_size))
    if unseen.any() and encoder is not None:
        unseen &= ~gradient_reaches(encoder, in_chans, image_size)
    if not unseen.any():
        return None
    short = [f"{n} (kernel {_pair(m.kernel_size)[0]}, stride {_pair(m.stride or m.kernel_size)[0]})"
             for n, m in readers if covered_pixels(m, (image_size, image_size)).logical_not().any()]
    sizes = [n for d in range(1, image_size // 2 + 1) for n in (image_size - d, image_size + d)  # near sizes only
             if n > 1 and not unseen_pixels(layers, (n, n)).any()][:2]
    fixed = encoder is not None and any(getattr(m, "strict_img_size", False) for m in encoder.modules())
    together = " with encoder.kwargs img_size the same (this model takes only its img_size)" if fixed else ""
    fixes = [f"{size_key} {' or '.join(map(str, sorted(sizes)))}{together}"] if sizes else []
    fixes.append("a patch size or stride whose windows cover every pixel")
    if encoder is not None and any(hasattr(m, "dynamic_img_pad") for m in encoder.modules()):
        fixes.append("dynamic_img_pad: true with dynamic_img_size: true (timm pads the last patches)")
    return (f"{who} never sees {describe_unseen(unseen)} of the "
            f"{image_size}x{image_size} images: no layer reading them covers those pixels ({', '.join(short)}); "
            f"use {', or '.join(fixes)}")


def check_pixels_seen(encoder: nn.Module, in_chans: int, image_size: int, label: str,
                      size_key: str = "data.image_size") -> None:
    """The unseen-pixels rule of :func:`check_forward` for an encoder about to be evaluated or adapted (an
    export, a run made before the rule, a ``random:`` baseline): one eval-mode forward of one blank
    ``[1, in_chans, image_size, image_size]`` image, no gradient, the mode restored. ``size_key``: the
    config key that sets ``image_size`` (named in the errors).

    Raises:
        EncoderError: one line naming ``label``, the layers reading the images and the pixels none covers
            (a ViT with ``patch_size`` 3 scored 16x16 images without their last row and column).
    """
    try:
        with probing(encoder, train=False), torch.no_grad():
            x = probe_images(encoder, 1, in_chans, image_size)  # [1, C, H, W]
            with first_layers_coverage(encoder, x) as readers:
                encoder(x)  # [1, D]
    except Exception as err:  # noqa: BLE001 -- whatever the model's code raises, said in one line
        fixed = next((m.img_size for m in encoder.modules() if getattr(m, "strict_img_size", False)
                      and isinstance(getattr(m, "img_size", None), tuple)), None)  # timm's fixed-size patch embedding
        takes = f"{fixed[0]}x{fixed[1]}, the only size this model takes" if fixed else "an image size it takes"
        raise EncoderError(f"{label} fails on a forward pass of a {in_chans}x{image_size}x{image_size} image: "
                           f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}; evaluate it at "
                           f"{takes} ({size_key})") from None
    said = unseen_message(label, image_size, readers, encoder, in_chans, size_key)
    if said:
        raise EncoderError(f"{said} (its features would not depend on them)")


def pooled_width(encoder: nn.Module) -> int:
    """Width D of ``encoder(x)`` -> ``[B, D]``: timm's ``head_hidden_size`` where the model has one,
    else ``num_features``. They differ when pooling or a pre-logits layer changes the width:
    ``global_pool='catavgmax'`` doubles it (a resnet18 gives 1024 from a 512-channel map), a
    MobileNetV3's ``conv_head`` gives 1024 from 576 channels; ``num_features`` is the channel
    count of the last feature map (timm's convention), not what the pooled encoder returns."""
    width = getattr(encoder, "head_hidden_size", None) or encoder.num_features
    return int(width)


def is_convnet(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "Attention"
                   for m in model.modules())
