"""Modulated deformable convolutions (DCNv2) for the detector's trainable convolutions
(``detection.deformable: true``).

A deformable convolution (Dai et al. 2017, "Deformable Convolutional Networks") samples its
k x k taps at learned fractional offsets from the regular grid; the modulated version (Zhu et
al. 2019, "Deformable ConvNets v2: More Deformable, Better Results", eq. 3) also weighs each
tap by a learned modulation scalar:

    y(p) = sum_k  w_k * x(p + p_k + dp_k) * dm_k

where ``p_k`` are the k*k grid taps, and the offsets ``dp_k`` (2*k*k channels) and the
modulation ``dm_k`` (k*k channels) are predicted at every output location by a plain
convolution over the same input, with the same kernel, stride, padding and dilation. That
convolution is zero-initialised, so at init every offset is 0.

Two choices follow the DCNv2 authors' released example (``DCNv2_op/example_symbol.py`` in
msracver/Deformable-ConvNets: offset conv zero-initialised, ``lr_mult=0.1``, mask ``2 * sigmoid``):

- the modulation is ``dm_k = MASK_SCALE * sigmoid(.)`` with ``MASK_SCALE = 2`` (range (0, 2)), not
  the paper's ``sigmoid(.)`` (range (0, 1), also mmcv's ``ModulatedDeformConv2dPack`` and
  Detectron2's): ``2 * sigmoid(0) = 1``, so with the zero-initialised predictor the
  converted convolution computes exactly what the plain one did (``sigmoid(0) = 0.5`` would halve
  every tap at init) and training starts from the plain detector (same outputs, same losses);
- the predictor's weight and bias train at ``OFFSET_LR_MULT = 0.1`` times the detector's learning
  rate (the authors' ``lr_mult=0.1``; :func:`offset_lr_groups` builds the optimizer's groups).
  Its input here is the FPN's unnormalised sum of lateral and top-down maps (mean |x| about 4 for
  the methods table's SimCLR resnet18), which scales both its weight's gradient and the offsets a
  given weight change makes: at the detector's lr the finest level's (stride 4, a 32x32 map)
  offsets reached a mean of 3 pixels (max 40) within 20 steps and its modulation saturated,
  which cut synthetic-fmnist mAP from 5.99 (plain) to 0.92; at 0.1 the offsets stay within a few
  pixels and the mAP is 5.08 (3.93 vs 6.57 plain at seed 1: still behind at that short
  budget; benchmarks/results/detection-deformable.md). mmcv's default
  ``dcn_offset_lr_mult`` is 1; :func:`offset_lr_groups` takes another multiplier.

:func:`make_deformable` converts the FPN's 3x3 output convolutions (``backbone.fpn.layer_blocks``)
and the RPN head's 3x3 convolution (``rpn.head.conv``) of a built torchvision detector; the
frozen encoder, the FPN's 1x1 lateral convolutions, the ViT pyramid's deconvolutions and the
1x1 RPN predictors stay as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from selfsup.config import ConfigError

#: the modulation is MASK_SCALE * sigmoid(.): 1 for a zero prediction, so the block starts as a plain conv
MASK_SCALE = 2.0

#: learning-rate multiplier of the offset/modulation predictors (the DCNv2 authors' lr_mult=0.1)
OFFSET_LR_MULT = 0.1

#: module-name prefixes (in a torchvision FasterRCNN) whose k x k convolutions (k > 1) become deformable
DEFORMABLE_PARENTS = ("backbone.fpn.layer_blocks.", "rpn.head.conv.")


class ModulatedDeformConv(DeformConv2d):
    """A modulated deformable convolution v2 (Zhu et al. 2019, eq. 3) with its own offset and
    modulation predictor ``offset_mask``: a zero-initialised ``nn.Conv2d`` with the same kernel,
    stride, padding and dilation giving ``3*k*k`` channels, the first ``2*k*k`` the (dy, dx)
    offsets of the ``k*k`` taps and the last ``k*k`` the modulation, ``MASK_SCALE * sigmoid``
    (see the module docstring: 1 at init, so the block equals a plain convolution).

    The weight and bias are torchvision's ``DeformConv2d`` parameters, named as ``nn.Conv2d``
    names them (``weight`` ``[C_out, C_in/groups, k, k]``, ``bias`` ``[C_out]``), so a plain
    convolution's weights load into it; :meth:`from_conv` copies them from one.

    ``forward(x [B, C_in, H, W])`` -> ``[B, C_out, H', W']`` with the plain convolution's output size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_mask = nn.Conv2d(in_channels, 3 * taps, self.kernel_size, self.stride, self.padding,
                                     self.dilation)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "ModulatedDeformConv":
        """The deformable twin of ``conv``: same shape and hyper-parameters, its weight and bias copied
        (same device and dtype), offsets and modulation predicted by a zero-initialised conv.

        Raises:
            ConfigError: for a convolution DCNv2 cannot reproduce (string padding, non-zero padding mode).
        """
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ConfigError(f"detection.deformable cannot convert {conv} (padding={conv.padding!r}, "
                              f"padding_mode={conv.padding_mode!r}): only zero-padded convolutions with integer "
                              f"padding have a deformable twin; set detection.deformable=false")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None)  # type: ignore[arg-type]
        new.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)  # [C_out, C_in/groups, k, k]
            if conv.bias is not None:
                new.bias.copy_(conv.bias)  # [C_out]
        new.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            new.bias.requires_grad_(conv.bias.requires_grad)
        return new

    def offsets_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, C_in, H, W]`` -> offsets ``[B, 2*k*k, H', W']`` and modulation ``[B, k*k, H', W']`` in (0, 2)."""
        taps = self.kernel_size[0] * self.kernel_size[1]
        out = self.offset_mask(x)  # [B, 3*k*k, H', W']
        offset, logits = out.split([2 * taps, taps], dim=1)  # [B, 2*k*k, H', W'], [B, k*k, H', W']
        return offset, MASK_SCALE * torch.sigmoid(logits)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        offset, mask = self.offsets_and_mask(x)
        return super().forward(x, offset, mask)  # [B, C_out, H', W']


def deformable_targets(model: nn.Module) -> list[str]:
    """Names of the convolutions :func:`make_deformable` converts: every ``nn.Conv2d`` with a kernel
    larger than 1x1 under :data:`DEFORMABLE_PARENTS` (the FPN output convs and the RPN head conv),
    never the offset predictor inside an already converted block."""
    inner = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, ModulatedDeformConv))
    return [name for name, m in model.named_modules()
            if type(m) is nn.Conv2d and name.startswith(DEFORMABLE_PARENTS) and max(m.kernel_size) > 1
            and not (inner and name.startswith(inner))]


def make_deformable(model: nn.Module) -> list[str]:
    """Replace, in place, each convolution named by :func:`deformable_targets` with its
    :class:`ModulatedDeformConv` twin (weights copied: the model's outputs are unchanged at init).

    Returns the names of the converted modules.

    Raises:
        ConfigError: when the model has no such convolution (nothing would be deformable), or one
            cannot be converted.
    """
    names = deformable_targets(model)
    if not names:
        raise ConfigError(f"detection.deformable found no kxk convolution (k > 1) under "
                          f"{', '.join(DEFORMABLE_PARENTS)} in this {type(model).__name__} (already converted?); set detection.deformable=false")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, ModulatedDeformConv.from_conv(getattr(parent, child)))
    return names


def offset_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters of every :class:`ModulatedDeformConv`'s offset/modulation predictor
    (``<block>.offset_mask.weight`` ``[3*k*k, C_in, k, k]`` and ``.bias`` ``[3*k*k]``), by name."""
    blocks = tuple(f"{name}.offset_mask." for name, m in model.named_modules() if isinstance(m, ModulatedDeformConv))
    return {name: p for name, p in model.named_parameters() if blocks and name.startswith(blocks) and p.requires_grad}


def offset_lr_groups(groups: list[dict], model: nn.Module, lr: float,
                     lr_mult: float = OFFSET_LR_MULT) -> list[dict]:
    """Optimizer param groups from ``groups`` (each a dict with ``params`` and its own settings, e.g.
    timm's weight-decay groups of ``model``) with every group's ``lr`` set to ``lr``, except that the
    offset/modulation predictor parameters (:func:`offset_parameters`) move to a twin group with the
    same settings and ``lr * lr_mult``, ``lr_mult`` recorded in it (see the module docstring).
    Groups left without parameters are dropped; a model without deformable blocks gets ``groups``
    unchanged apart from ``lr``.

    Raises:
        ConfigError: for ``lr_mult`` that is not positive and finite.
    """
    if not 0 < lr_mult < float("inf"):
        raise ConfigError(f"the deformable offset learning-rate multiplier must be positive and finite, got {lr_mult}")
    offsets = {id(p) for p in offset_parameters(model).values()}
    out = []
    for group in groups:
        params = list(group["params"])
        plain = [p for p in params if id(p) not in offsets]
        moved = [p for p in params if id(p) in offsets]
        out += [{**group, "params": plain, "lr": lr}] if plain else []
        out += [{**group, "params": moved, "lr": lr * lr_mult, "lr_mult": lr_mult}] if moved else []
    return out
