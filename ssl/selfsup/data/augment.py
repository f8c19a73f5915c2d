"""Batched image augmentation on the device, with per-sample random parameters.

``torchvision.transforms.v2`` applied to a batch tensor draws one set of parameters
for the whole batch; self-supervised views need independent parameters per image.
So the random resized crop and the horizontal flip are one batched affine resample
(``affine_grid`` + ``grid_sample``), and the photometric transforms are closed-form
per-sample blends; ``torchvision.transforms.v2.functional`` supplies the
per-batch pieces (grayscale conversion, normalisation). On 2 CPU cores this costs a
few percent of a ResNet-18 step (benchmarks/speed.py).

Defaults follow SimCLR (Chen et al. 2020, appendix A): crop scale (0.08, 1), ratio
(3/4, 4/3), flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from selfsup.config import param
from selfsup.distributed import draw_local


@dataclass
class AugmentConfig:
    """One view's augmentation (SimCLR's defaults)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = param(0.5, ge=0, le=1)
    jitter_p: float = param(0.8, ge=0, le=1, help="probability of colour jitter")
    brightness: float = param(0.4, ge=0)
    contrast: float = param(0.4, ge=0)
    saturation: float = param(0.4, ge=0)
    hue: float = param(0.1, ge=0, le=0.5)
    grayscale_p: float = param(0.2, ge=0, le=1)
    blur_p: float = param(0.0, ge=0, le=1, help="probability of Gaussian blur")
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = param(0.0, ge=0, le=1)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")


def uniform(n: int, lo: float, hi: float, device: torch.device) -> Tensor:
    """``[n]`` uniform in [lo, hi), this rank's rows of a draw for the global batch."""
    return draw_local(lambda m: torch.empty(m, device=device).uniform_(lo, hi), n)


def rand(n: int, device: torch.device) -> Tensor:
    """``[n]`` uniform in [0, 1), this rank's rows of a draw for the global batch."""
    return draw_local(lambda m: torch.rand(m, device=device), n)


def crop_flip_theta(n: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: float,
                    device: torch.device) -> Tensor:
    """Affine matrices ``[n, 2, 3]`` of random resized crops (area fraction in ``scale``,
    aspect ratio in ``ratio``), mirrored with probability ``hflip``.

    Width and height are clipped to the image, so very elongated crops are slightly
    smaller than asked (torchvision re-samples them instead).
    """
    area = uniform(n, *scale, device)
    log_r = uniform(n, math.log(ratio[0]), math.log(ratio[1]), device)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # fraction of the width
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (rand(n, device) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (rand(n, device) * 2 - 1) * (1 - h)
    flip = torch.where(rand(n, device) < hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def resample(x: Tensor, theta: Tensor, size: int) -> Tensor:
    """Crop/flip/resize ``x`` [B, C, H, W] float by ``theta`` [B, 2, 3] -> [B, C, size, size]."""
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """``ratio * a + (1 - ratio) * b`` clamped to [0, 1]; ratio is [B]."""
    r = ratio.view(-1, 1, 1, 1)
    return (r * a + (1 - r) * b).clamp_(0, 1)


def _factor(n: int, strength: float, device: torch.device) -> Tensor:
    return uniform(n, max(0.0, 1 - strength), 1 + strength, device)


def rotate_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Hue rotation by ``shift`` [B] turns (in [-0.5, 0.5]) as a rotation of the
    chroma plane in YIQ space: a per-sample 3x3 colour matrix, exact for luma."""
    rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                           device=x.device, dtype=x.dtype)
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    ang = shift * 2 * math.pi
    cos, sin = ang.cos(), ang.sin()
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = yiq2rgb @ rot @ rgb2yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x).clamp_(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` [B] (pixels); kernel ~10% of the side."""
    b, c, h, w = x.shape
    k = max(3, int(0.1 * h) // 2 * 2 + 1)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    ker = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))  # [B, k]
    ker = ker / ker.sum(1, keepdim=True)
    ker = ker.repeat_interleave(c, 0)  # [B*C, k]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


class BatchAugment(nn.Module):
    """uint8 or [0,1] float images ``[B, C, H, W]`` -> normalised views ``[B, C, size, size]``."""

    def __init__(self, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
        super().__init__()
        self.cfg, self.size = cfg, size
        self.mean, self.std = list(mean), list(std)

    def forward(self, images: Tensor) -> Tensor:
        cfg = self.cfg
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        theta = crop_flip_theta(x.shape[0], cfg.crop_scale, cfg.crop_ratio, cfg.hflip, x.device)
        x = resample(x, theta, self.size)  # [B, C, S, S]
        x = self.photometric(x)
        return TF.normalize(x, self.mean, self.std)

    def photometric(self, x: Tensor) -> Tensor:
        """Colour jitter (brightness, contrast, saturation, hue, in that order), grayscale,
        blur, solarisation, each applied to a random subset of the batch."""
        cfg, b, c, dev = self.cfg, x.shape[0], x.shape[1], x.device

        def chosen(p: float) -> Tensor:
            return (rand(b, dev) < p).view(-1, 1, 1, 1)

        if cfg.jitter_p > 0:
            jit = chosen(cfg.jitter_p)
            y = x
            if cfg.brightness > 0:
                y = _blend(y, torch.zeros_like(y), _factor(b, cfg.brightness, dev))
            if cfg.contrast > 0:
                gray_mean = (TF.rgb_to_grayscale(y) if c == 3 else y).mean(dim=(1, 2, 3), keepdim=True)
                y = _blend(y, gray_mean.expand_as(y), _factor(b, cfg.contrast, dev))
            if c == 3 and cfg.saturation > 0:
                y = _blend(y, TF.rgb_to_grayscale(y, num_output_channels=3), _factor(b, cfg.saturation, dev))
            if c == 3 and cfg.hue > 0:
                y = rotate_hue(y, uniform(b, -cfg.hue, cfg.hue, dev))
            x = torch.where(jit, y, x)
        if c == 3 and cfg.grayscale_p > 0:
            x = torch.where(chosen(cfg.grayscale_p), TF.rgb_to_grayscale(x, num_output_channels=3), x)
        if cfg.blur_p > 0:
            x = torch.where(chosen(cfg.blur_p), gaussian_blur(x, uniform(b, *cfg.blur_sigma, dev)), x)
        if cfg.solarize_p > 0:
            x = torch.where(chosen(cfg.solarize_p), torch.where(x >= 0.5, 1 - x, x), x)
        return x


class CleanTransform(nn.Module):
    """The evaluation transform: uint8 -> float, resize to the encoder's size, normalise."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
        super().__init__()
        self.mean, self.std, self.size = list(mean), list(std), size

    def forward(self, images: Tensor) -> Tensor:
        x = TF.to_dtype(images, torch.float32, scale=True) if images.dtype == torch.uint8 else images.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = TF.resize(x, [self.size, self.size], antialias=True)
        return TF.normalize(x, self.mean, self.std)
