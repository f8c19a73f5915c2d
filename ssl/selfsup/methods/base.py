"""What every method is: its config, the modules it adds to the encoder, its views and its step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from selfsup.config import METHOD_CONFIGS
from selfsup.data import DataInfo
from selfsup.encoders import pooled_width
from selfsup.registry import Registry


def _register_config(name: str, method: type[Method]) -> None:
    """``method.name: NAME`` in a config then selects the method's ``Config`` (selfsup.config, a layer below)."""
    METHOD_CONFIGS.register(name)(method.Config)


METHODS: Registry[type[Method]] = Registry("method", on_register=_register_config)


class Method(nn.Module):
    """Base class of a self-supervised method.

    A subclass sets ``Config`` (a dataclass with the paper's defaults) and implements
    ``training_step``. It never sees the dataset's name, the optimiser or the logger.

    Args:
        cfg: an instance of ``Config``.
        encoder: a timm model with ``num_classes=0`` (pooled ``[B, num_features]`` output).
        info: image channels, size, normalisation and number of classes.
    """

    Config: ClassVar[type]
    #: True when the method only works on a timm VisionTransformer encoder (MAE);
    #: the shared tests then build it on a tiny ViT instead of the tiny ResNet.
    requires_vit: ClassVar[bool] = False
    #: True when ``training_step`` needs each image's dataset index (a memory bank, npid):
    #: it is then called as ``training_step(images, indices=..., labels=...)`` with
    #: ``indices`` a LongTensor [B] and ``labels`` [B] (-1 when unknown).
    needs_indices: ClassVar[bool] = False
    #: True when ``training_step`` needs the images' class labels (supervised): it is then
    #: called as ``training_step(images, labels=...)`` with ``labels`` a LongTensor [B] (-1 when unknown).
    needs_labels: ClassVar[bool] = False

    def __init__(self, cfg: Any, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__()
        self.cfg, self.encoder, self.info = cfg, encoder, info
        self.num_features: int = pooled_width(encoder)  # [B, D] of encoder(x), not timm's map channels

    def encoder_input_sizes(self) -> list[int]:
        """The sides of the square inputs this method hands its encoder while training, each checked before
        the run starts (:func:`selfsup.encoders.check_forward`): the image by default; jigsaw its tiles,
        PIRL the image and its tiles, CPC its patches (a ViT whose patch size divides the image but not a
        tile failed at the first step, after the run directory was made)."""
        return [self.info.image_size]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 images ``[B, C, H, W]`` -> ``{"loss": scalar, "features": [B, D] detached, ...}``.

        ``features`` (optional) are the encoder's pooled features of one view, used
        by the online linear probe; other entries are logged as scalars.
        """
        raise NotImplementedError

    def step(self, images: Tensor, labels: Tensor | None = None,
             indices: Tensor | None = None) -> dict[str, Tensor]:
        """:meth:`training_step` called with what this method declares it needs
        (``needs_indices``, ``needs_labels``): the one place that dispatch lives."""
        if self.needs_indices:
            if indices is None:
                raise ValueError(f"{type(self).__name__} needs dataset indices: build the loader with "
                                 f"make_loader(..., with_indices=True)")
            return self.training_step(images, indices=indices, labels=labels)
        if self.needs_labels:
            if labels is None:
                raise ValueError(f"{type(self).__name__} needs the images' class labels")
            return self.training_step(images, labels=labels)
        return self.training_step(images)

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (momentum updates, schedules)."""

    def exported_encoder(self) -> nn.Module:
        """The encoder to evaluate and export (a momentum teacher may override this)."""
        return self.encoder

    def view_augments(self) -> list[Callable[[Tensor], Tensor]]:
        """The augmentations of the two views a two-view method compares (uint8 images
        ``[B, C, H, W]`` -> normalised views), for the alignment monitor (selfsup.monitors);
        empty for methods that do not train on pairs of views."""
        return []

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """What the method feeds its encoder / loss, to draw (selfsup.plots.view_preview): uint8
        images ``[n, C, S, S]`` -> ``(name, tensor [n, C, S', S'])`` pairs in the data's
        normalisation (``t * std + mean`` is in [0, 1]). Random like training (the caller seeds
        torch). Default: the two views of :meth:`view_augments`, else the one ``augment``, else
        nothing; pretext methods override it to show their transform (tiles, rotations, masks, noise)."""
        views = self.view_augments() or ([self.augment] if callable(getattr(self, "augment", None)) else [])
        names = [f"view {i + 1}" for i in range(len(views))] if len(views) > 1 else ["augmented"]
        return [(name, view(images)) for name, view in zip(names, views)]
