"""selfsup: self-supervised representation learning on timm encoders.

Layers, bottom first. A module imports only from its own layer and the layers below it, at module
level or inside a function alike (tests/test_layering.py checks it with ``ast``, and imports every
module first in a fresh interpreter, which exposes an import circle):

1. ``registry``, ``fileio``, ``distributed``, ``version``, ``rundir``, ``safeload``, ``statedict``,
   ``schedules``: no selfsup imports besides each other. ``rundir`` owns the layout of a run directory (config.yaml,
   checkpoints/last.ckpt, results.json, export/, ...) and the export directory's file names; ``safeload``
   says what a file is and reads checkpoints and safetensors without unpickling code (``LoadError``);
   ``statedict`` compares a state dict with a model's.
2. ``config``: typed run configs from YAML and ``a.b=c`` overrides.
3. ``data``: datasets, batching, augmentation.
4. ``encoders``, ``heads``, ``losses``, ``monitors``: timm encoders, small MLP heads, objectives (no
   config; ``NonFiniteLossError``), label-free embedding statistics.
5. ``methods``: one file per method: its config dataclass, modules and training step.
6. ``train``: the LightningModule, optimisers, a training run, rebuilding a run from its checkpoint
   (``train.checkpoint``).
7. ``eval``, ``plots``: features, kNN, linear probes, layer-wise and detection evaluation, result tables
   and plots. Evaluation never imports ``train``: it needs an encoder, not the training code.
8. ``artifacts`` (and ``export``, its public names in one module), ``compare``: the export card and
   config.json in timm's schema, export directories, TorchScript / ONNX / torchvision, the README model
   card, ``load_encoder`` for any path; one table across runs and exports.
9. ``cli`` (and this package's ``load_encoder``): the command line.

Lazy (function-level) imports exist only to keep ``import selfsup`` and ``selfsup --help`` fast, to keep
loading an export free of ``train`` (Lightning), or for optional dependencies (onnx, onnxruntime,
sklearn); each says so, and each still obeys the order.
"""

from __future__ import annotations

from selfsup.version import __version__


def load_encoder(path):  # noqa: ANN001, ANN201 - lazy: `import selfsup` stays light
    """An encoder from an export directory, a run directory or a checkpoint (see selfsup.artifacts.load)."""
    from selfsup.artifacts.load import load_encoder as _load

    return _load(path)


__all__ = ["__version__", "load_encoder"]
