"""selfsup: self-supervised representation learning on timm encoders.

Layers, bottom first. A module imports only from its own layer and the layers below it, at module
level or inside a function alike (tests/test_layering.py checks it with ``ast``, and imports every
module first in a fresh interpreter, which exposes an import circle):

1. ``registry``, ``fileio``, ``distributed``, ``version``, ``rundir``, ``safeload``, ``statedict``,
   ``schedules``, ``progress``, ``memory``: no selfsup imports besides each other. ``rundir`` owns the
   layout of a run directory (config.yaml, checkpoints/last.ckpt, results.json, export/, ...) and the
   export directory's file names; ``safeload`` says what a file is and reads checkpoints and safetensors
   without unpickling code (``LoadError``); ``statedict`` compares a state dict with a model's;
   ``progress``: progress bars; ``memory``: large feature buffers.
2. ``configread``, ``config``, ``transferconfig``, ``configkeys``: typed run configs from YAML and
   ``a.b=c`` overrides (``configread``: a value checked against its field, YAML without repeated keys, an
   override; ``config``: every section's dataclass and loading a run's config; ``transferconfig``: the
   ``--transfer`` options of ``selfsup eval --protocol``); every key's type, default, range and help
   (``selfsup config``). A method's config class is looked up by name in
   ``config.METHOD_CONFIGS``, which ``methods`` fills as it registers each method: config never
   imports methods.
3. ``data``: datasets, batching, augmentation.
4. ``encoders``, ``heads``, ``losses``, ``monitors``: timm encoders, small MLP heads, objectives (no
   config; ``NonFiniteLossError``), label-free embedding statistics.
5. ``methods``: one file per method: its config dataclass, modules and training step.
6. ``train``: the LightningModule, optimisers, a training run (``train.run.pretrain``: training only),
   its run directory (``train.workdir``: checks, lock, stopped attempts), what a resume may change
   (``train.resume``), its step count (``train.steps``), precision (``train.precision``), its loggers,
   rebuilding a run from its checkpoint (``train.checkpoint``).
7. ``eval``, ``plots``, ``detection``: features, kNN, linear probes, layer-wise evaluation, detection
   transfer, result tables and plots. Evaluation never imports ``train``: it needs an encoder, not the
   training code; a target that is a path is read by the ``load`` function its caller passes
   (``artifacts.load.load_encoder``).
8. ``artifacts`` (and ``export``, its public names in one module), ``compare``, ``pipeline``, ``transfer``:
   the export card and config.json in timm's schema, export directories, TorchScript / ONNX / torchvision,
   the README model card, ``load_encoder`` for any path; one table across runs and exports; pretrain ->
   evaluate -> export in order, and the config any run, checkpoint or export was trained with
   (``pipeline``); fine-tuning protocols that adapt an encoder and export the result (``transfer``).
9. ``cli``, ``cli_eval`` (``selfsup eval``), ``clihelp`` (and this package, which installs the loader of ``config.METHOD_CONFIGS``:
   ``import selfsup.methods`` at the first lookup): the command line; what its help and ``selfsup list``
   show without importing torch.

Lazy (function-level) imports exist only to keep ``import selfsup``, ``selfsup --help`` and ``selfsup list``
fast (no torch), to keep loading an export free of ``train`` (Lightning), or for optional dependencies
(onnx, onnxruntime, sklearn); each says so, and each still obeys the order.
"""

from __future__ import annotations

from selfsup.config import METHOD_CONFIGS
from selfsup.version import __version__


def _register_methods() -> None:
    """Import every method, which registers its config class in selfsup.config.METHOD_CONFIGS."""
    import selfsup.methods  # noqa: F401 - lazy: `import selfsup` and `selfsup --help` stay light (no torch)


METHOD_CONFIGS.set_loader(_register_methods)  # config (layer 2) resolves method.name without importing methods


def load_encoder(path):  # noqa: ANN001, ANN201 - lazy: `import selfsup` stays light
    """An encoder from an export directory, a run directory or a checkpoint (see selfsup.artifacts.load)."""
    from selfsup.artifacts.load import load_encoder as _load

    return _load(path)


__all__ = ["__version__", "load_encoder"]
