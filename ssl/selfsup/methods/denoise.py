"""Denoising as a pretext, in the parametrisation of EDM (Karras, Aittala, Aila, Laine
2022, "Elucidating the Design Space of Diffusion-Based Generative Models"): each image is
corrupted as x_t = x_0 + sigma * eps with its own log-normal noise level, and the encoder
plus a light decoder predict the clean image. Denoising for representation learning
follows Chen, Liu, Xie, He 2024, "Deconstructing Denoising Diffusion Models for
Self-Supervised Learning" (a denoising autoencoder on a plain encoder, no generation).

Scale. x_0 is the normalised view times ``sigma_data``, so its standard deviation is about
``sigma_data`` as EDM assumes (0.5, images in [-1, 1]), and at zero noise the encoder's
input c_in * x_0 is exactly the normalised image it is evaluated on.

Preconditioning (EDM, Table 1). D(x_t; sigma) = c_skip * x_t + c_out * F(c_in * x_t, c_noise)
with c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2) and c_noise = ln(sigma) / 4; the
loss is lambda(sigma) * ||D - x_0||^2 with lambda = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2
= 1 / c_out^2, computed in the equivalent, numerically stable form ||F - F_target||^2 with
F_target = (sigma * x_0 - sigma_data^2 * eps) / (sigma_data * sqrt(sigma^2 + sigma_data^2)).
Every noise level has a unit-variance target: the clean image x_0 / sigma_data at large
sigma, the negated noise -eps as sigma -> 0 (where D is x_t itself through the skip). With
``target: clean`` the skip is dropped (c_skip = 0, c_out = sigma_data, lambda = 1/sigma_data^2,
Chen et al.'s clean-image prediction), and as sigma -> 0 the loss becomes the plain
autoencoder reconstruction loss ||D(x_0) - x_0||^2 / sigma_data^2.

Noise level. The encoder gets sigma only through c_in (it stays a plain timm model that
is evaluated and exported without a noise input); the decoder is conditioned on c_noise:
a sinusoidal embedding of c_noise and a two-layer MLP (its last layer zero-initialised)
give a per-channel bias added to the encoder's feature map before the decoder
(``condition_decoder``, default on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from selfsup.config import param
from selfsup.distributed import draw_local
from selfsup.data import AugmentConfig, BatchAugment, DataInfo
from selfsup.methods._pixels import PixelDecoder, feature_map
from selfsup.methods.base import METHODS, Method


class Precond(NamedTuple):
    """EDM's preconditioning factors, each ``[B]``."""

    c_in: Tensor
    c_skip: Tensor
    c_out: Tensor
    c_noise: Tensor
    weight: Tensor  # lambda(sigma), the loss weight of ||D - x_0||^2


def edm_precond(sigma: Tensor, sigma_data: float, target: Literal["edm", "clean"] = "edm") -> Precond:
    """Preconditioning for noise levels ``sigma`` [B] (EDM, Table 1; ``clean``: no skip)."""
    s2, d2 = sigma.square(), sigma_data ** 2
    c_in = (s2 + d2).rsqrt()
    if target == "edm":
        c_skip = d2 / (s2 + d2)
        c_out = sigma * sigma_data * c_in
        weight = (s2 + d2) / (sigma * sigma_data).square()
    else:
        c_skip = torch.zeros_like(sigma)
        c_out = torch.full_like(sigma, sigma_data)
        weight = torch.full_like(sigma, 1 / d2)
    return Precond(c_in, c_skip, c_out, sigma.log() / 4, weight)


def sample_noise(x0: Tensor, p_mean: float, p_std: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Independent noise per sample: sigma [B] with ln(sigma) ~ N(p_mean, p_std^2), and
    standard normal eps shaped like ``x0`` [B, C, H, W]."""
    b, shape = x0.shape[0], x0.shape[1:]
    z = draw_local(lambda rows: torch.randn(rows, device=x0.device, generator=generator), b)  # [B]
    eps = draw_local(lambda rows: torch.randn(rows, *shape, device=x0.device, dtype=x0.dtype, generator=generator),
                     b)  # [B, C, H, W]
    return (p_mean + p_std * z).exp(), eps


def _bcast(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def network_target(x0: Tensor, eps: Tensor, sigma: Tensor, sigma_data: float,
                   target: Literal["edm", "clean"] = "edm") -> Tensor:
    """What F must output for D to equal x_0, ``[B, C, H, W]``: (x_0 - c_skip x_t) / c_out in
    a form without cancellation at small sigma."""
    if target == "clean":
        return x0 / sigma_data
    s = _bcast(sigma)
    return (s * x0 - sigma_data ** 2 * eps) / (sigma_data * (s.square() + sigma_data ** 2).sqrt())


def edm_loss(out: Tensor, x0: Tensor, eps: Tensor, sigma: Tensor, sigma_data: float,
             target: Literal["edm", "clean"] = "edm") -> Tensor:
    """lambda(sigma) * mean ||D - x_0||^2 for the network output ``out`` = F [B, C, H, W],
    averaged over samples; equal to mean ||F - F_target||^2 since lambda * c_out^2 = 1."""
    t = network_target(x0, eps, sigma, sigma_data, target)
    return (out.float() - t.float()).square().mean()


class NoiseEmbedding(nn.Module):
    """c_noise [B] -> a per-channel bias [B, dim]: sinusoidal features and a 2-layer MLP
    whose last layer starts at zero (the decoder starts unconditioned)."""

    def __init__(self, dim: int, freqs: int = 32) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), freqs)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * freqs, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, c_noise: Tensor) -> Tensor:
        a = c_noise.float()[:, None] * self.freqs[None]  # [B, freqs]
        return self.mlp(torch.cat([a.sin(), a.cos()], dim=1))  # [B, dim]


def denoise_augment() -> AugmentConfig:
    """Random resized crops (scale 0.2-1) and flips, as for MAE; no colour changes."""
    return AugmentConfig(crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0)


@dataclass
class DenoiseConfig:
    """Denoising hyper-parameters; defaults are EDM's training noise distribution
    (ln sigma ~ N(-1.2, 1.2^2)) and data scale (sigma_data = 0.5)."""

    p_mean: float = param(-1.2, help="mean of ln(sigma)")
    p_std: float = param(1.2, gt=0, help="standard deviation of ln(sigma)")
    sigma_data: float = param(0.5, gt=0, help="standard deviation of the clean data x_0")
    target: Literal["edm", "clean"] = param("edm", help="edm: EDM's skip preconditioning; clean: predict x_0 "
                                            "directly (c_skip = 0)")
    condition_decoder: bool = param(True, help="add an embedding of c_noise = ln(sigma)/4 to the features "
                                    "before the decoder (the encoder never gets sigma)")
    augment: AugmentConfig = field(default_factory=denoise_augment)


@METHODS.register("denoise")
class Denoise(Method):
    Config = DenoiseConfig

    def __init__(self, cfg: DenoiseConfig, encoder: nn.Module, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        self.augment = BatchAugment(cfg.augment, info.mean, info.std, info.image_size)
        self.decoder = PixelDecoder.for_encoder(encoder, info.in_chans, info.image_size)
        dim = self.decoder.proj.in_channels
        self.noise_embed = NoiseEmbedding(dim) if cfg.condition_decoder else None

    def network(self, x_in: Tensor, c_noise: Tensor) -> tuple[Tensor, Tensor]:
        """F: encoder input c_in * x_t ``[B, C, H, W]`` and c_noise ``[B]`` -> (output
        ``[B, C, H, W]``, pooled encoder features ``[B, D]``)."""
        feats = self.encoder.forward_features(x_in)
        fmap = feature_map(self.encoder, feats)  # [B, F, h, w]
        if self.noise_embed is not None:
            fmap = fmap + self.noise_embed(c_noise).to(fmap.dtype)[:, :, None, None]
        return self.decoder(fmap), self.encoder.forward_head(feats, pre_logits=True)

    def loss_terms(self, x0: Tensor, sigma: Tensor, eps: Tensor) -> dict[str, Tensor]:
        """The loss for clean images ``x0`` [B, C, H, W], noise levels ``sigma`` [B] and noise ``eps``."""
        cfg = self.cfg
        pc = edm_precond(sigma, cfg.sigma_data, cfg.target)
        x_t = x0 + _bcast(sigma) * eps  # [B, C, H, W]
        out, features = self.network(_bcast(pc.c_in) * x_t, pc.c_noise)  # [B, C, H, W], [B, D]
        loss = edm_loss(out, x0, eps, sigma, cfg.sigma_data, cfg.target)
        with torch.no_grad():
            denoised = _bcast(pc.c_skip) * x_t + _bcast(pc.c_out) * out  # D(x_t; sigma)
            recon = (denoised.float() - x0.float()).square().mean() / cfg.sigma_data ** 2
        return {"loss": loss, "recon_mse": recon, "features": features.detach()}

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        x0 = self.augment(images) * self.cfg.sigma_data  # [B, C, S, S], std about sigma_data
        sigma, eps = sample_noise(x0, self.cfg.p_mean, self.cfg.p_std)  # [B], [B, C, S, S]
        return self.loss_terms(x0, sigma, eps)
