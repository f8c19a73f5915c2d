"""Everything selfsup writes for others to load, one job per module:

- ``card``: the export card and ``config.json`` in timm's schema (both formats read);
- ``validate``: checking a hand-edited ``config.json`` (:func:`read_card`);
- ``exportdir``: writing and reading an export directory (``config.json``, ``model.safetensors``, ``README.md``);
- ``interop``: TorchScript and ONNX; ``torchvision``: the torchvision ResNet conversion;
- ``modelcard``: the README model card and results markdown;
- ``load``: :func:`load_encoder` / :func:`export_encoder` for any path (export, run, checkpoint).

What a file is and how a checkpoint is read safely is :mod:`selfsup.safeload` (bottom layer, used by
``train`` to resume too); rebuilding a method from a checkpoint is :mod:`selfsup.train.checkpoint`.
This package imports nothing on import, so that importing one module loads only what it needs.
"""
