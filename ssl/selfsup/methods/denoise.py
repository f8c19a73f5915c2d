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

Corruptions (``corruption``), one form x_t = alpha(t) x_0 + sigma(t) eps (Kingma et al. 2021,
"Variational Diffusion Models"; Karras et al. 2022, section 2):

- ``edm`` (default): alpha = 1, ln sigma ~ N(p_mean, p_std^2), the preconditioning above.
- ``vp``: variance preserving, alpha^2 + sigma^2 = 1, t ~ U(0, 1): DDPM's ``linear`` schedule in
  continuous time (Ho et al. 2020, beta 1e-4 to 0.02 over 1000 steps, i.e. the VP SDE of
  Song et al. 2021 with beta_min 0.1, beta_max 20: alpha^2 = exp(-beta_min t - (beta_max -
  beta_min) t^2 / 2)) or the ``cosine`` schedule (Nichol & Dhariwal 2021, s = 0.008:
  alpha^2 = cos^2((t + s) / (1 + s) pi/2) / cos^2(s / (1 + s) pi/2)); the network predicts
  ``eps`` (Ho et al.'s simple loss) or ``v`` = alpha eps - sigma x_0 (Salimans & Ho 2022).
- ``flow``: flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023), alpha = 1 - t,
  sigma = t, the velocity target eps - x_0, t logit-normal (Esser et al. 2024, m = 0, s = 1).

For ``vp`` and ``flow``, x_0 is the normalised view itself (unit variance, so x_t keeps a
variance near 1 and x_0 at t = 0 is the evaluation input), x_t goes to the encoder as it is
(their models take x_t unscaled), and the loss is the unweighted mean squared error of the
prediction. The decoder's noise input is c_noise = ln(sigma / alpha) / 4 (-log-SNR / 8), which
is EDM's ln(sigma) / 4 when alpha = 1; t is kept within [1e-4, 1 - 1e-4] so that it stays finite.

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
from selfsup.configread import check_applies
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
    z = draw_local(lambda rows: torch.randn(rows, device=x0.device, generator=generator), x0.shape[0])  # [B]
    return (p_mean + p_std * z).exp(), noise_like(x0, generator)


def noise_like(x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal eps shaped like ``x0`` [B, C, H, W], drawn for the global batch (``draw_local``)."""
    return draw_local(lambda rows: torch.randn(rows, *x0.shape[1:], device=x0.device, dtype=x0.dtype,
                                               generator=generator), x0.shape[0])


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


T_MIN = 1e-4  # t is drawn within [T_MIN, 1 - T_MIN]: alpha and sigma stay > 0, ln(sigma / alpha) finite
VP_BETA = (0.1, 20.0)  # DDPM's beta_1 = 1e-4, beta_T = 0.02 times T = 1000 (Song et al. 2021, VP SDE)
COSINE_S = 0.008  # Nichol & Dhariwal 2021, eq. 17


class Corruption(NamedTuple):
    """x_t = alpha x_0 + sigma eps at times t, each ``[B]``; ``c_noise`` conditions the decoder."""

    alpha: Tensor
    sigma: Tensor
    c_noise: Tensor


def _corruption(alpha: Tensor, sigma: Tensor) -> Corruption:
    return Corruption(alpha, sigma, (sigma / alpha).log() / 4)


def vp_alpha_bar(t: Tensor, schedule: Literal["cosine", "linear"]) -> Tensor:
    """alpha(t)^2 of the VP schedules (module docstring) for t ``[B]`` in [0, 1]."""
    if schedule == "linear":
        lo, hi = VP_BETA
        return torch.exp(-lo * t - (hi - lo) * t.square() / 2)
    f = torch.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2).square()
    return f / math.cos(COSINE_S / (1 + COSINE_S) * math.pi / 2) ** 2


def vp_corruption(t: Tensor, schedule: Literal["cosine", "linear"] = "cosine") -> Corruption:
    """Variance-preserving: alpha = sqrt(alpha_bar(t)), sigma = sqrt(1 - alpha_bar(t))."""
    a2 = vp_alpha_bar(t, schedule)
    return _corruption(a2.sqrt(), (1 - a2).sqrt())


def flow_corruption(t: Tensor) -> Corruption:
    """Flow matching / rectified flow: alpha = 1 - t, sigma = t."""
    return _corruption(1 - t, t)


def sample_t(b: int, device: torch.device, corruption: Literal["vp", "flow"], logit_mean: float = 0.0,
             logit_std: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Times ``[B]`` within [T_MIN, 1 - T_MIN]: uniform for ``vp``; logit-normal for ``flow``
    (logit t ~ N(logit_mean, logit_std^2)). Drawn for the global batch (``draw_local``)."""
    if corruption == "vp":
        u = draw_local(lambda rows: torch.rand(rows, device=device, generator=generator), b)  # [B]
    else:
        z = draw_local(lambda rows: torch.randn(rows, device=device, generator=generator), b)  # [B]
        u = torch.sigmoid(logit_mean + logit_std * z)
    return u.clamp(T_MIN, 1 - T_MIN)


def prediction_target(x0: Tensor, eps: Tensor, c: Corruption, kind: Literal["eps", "v", "velocity"]) -> Tensor:
    """What the network predicts, ``[B, C, H, W]``: the noise ``eps``; ``v`` = alpha eps - sigma x_0;
    the flow ``velocity`` d x_t / dt = eps - x_0."""
    if kind == "eps":
        return eps
    if kind == "v":
        return _bcast(c.alpha) * eps - _bcast(c.sigma) * x0
    return eps - x0


def clean_estimate(x_t: Tensor, out: Tensor, c: Corruption, kind: Literal["eps", "v", "velocity"]) -> Tensor:
    """x_0 implied by the prediction ``out`` at x_t (for the reconstruction error that is logged)."""
    a, s = _bcast(c.alpha), _bcast(c.sigma)
    if kind == "eps":
        return (x_t - s * out) / a
    if kind == "v":
        return a * x_t - s * out  # alpha^2 + sigma^2 = 1
    return x_t - s * out  # x_t - t v


def denoise_augment() -> AugmentConfig:
    """Random resized crops (scale 0.2-1) and flips, as for MAE; no colour changes."""
    return AugmentConfig(crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0)


# the keys that only one corruption reads (param(when=...): set under another corruption, they are refused)
EDM, VP, FLOW = ("corruption", ("edm",)), ("corruption", ("vp",)), ("corruption", ("flow",))


@dataclass
class DenoiseConfig:
    """Denoising hyper-parameters; defaults are EDM's training noise distribution
    (ln sigma ~ N(-1.2, 1.2^2)) and data scale (sigma_data = 0.5)."""

    p_mean: float = param(-1.2, when=EDM, help="corruption=edm: mean of ln(sigma)")
    p_std: float = param(1.2, gt=0, when=EDM, help="corruption=edm: standard deviation of ln(sigma)")
    sigma_data: float = param(0.5, gt=0, when=EDM, help="corruption=edm: standard deviation of the clean data x_0")
    target: Literal["edm", "clean"] = param("edm", when=EDM, help="corruption=edm: edm: EDM's skip "
                                            "preconditioning; clean: predict x_0 directly (c_skip = 0)")
    condition_decoder: bool = param(True, help="add an embedding of c_noise = ln(sigma)/4 to the features "
                                    "before the decoder (the encoder never gets sigma)")
    corruption: Literal["edm", "vp", "flow"] = param("edm", help="x_t = alpha x_0 + sigma eps: edm (alpha 1, "
                                                     "log-normal sigma), vp (DDPM), flow (rectified flow)")
    vp_schedule: Literal["cosine", "linear"] = param("cosine", when=VP, help="corruption=vp: the alpha(t) schedule")
    prediction: Literal["eps", "v"] = param("eps", when=VP, help="corruption=vp: predict the noise or v = alpha "
                                            "eps - sigma x_0 (flow always predicts the velocity eps - x_0)")
    logit_mean: float = param(0.0, when=FLOW, help="corruption=flow: mean of logit(t)")
    logit_std: float = param(1.0, gt=0, when=FLOW, help="corruption=flow: standard deviation of logit(t)")
    augment: AugmentConfig = field(default_factory=denoise_augment)

    def __post_init__(self) -> None:
        check_applies(self, "method")  # a key of another corruption, set, would be ignored

    @property
    def predicts(self) -> Literal["eps", "v", "velocity"]:
        """The prediction target of the vp and flow corruptions."""
        return "velocity" if self.corruption == "flow" else self.prediction


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

    def diffusion_terms(self, x0: Tensor, t: Tensor, eps: Tensor) -> dict[str, Tensor]:
        """The vp / flow loss for clean images ``x0`` [B, C, H, W] at times ``t`` [B] with noise ``eps``:
        mean squared error of the prediction against :func:`prediction_target`."""
        cfg = self.cfg
        c = vp_corruption(t, cfg.vp_schedule) if cfg.corruption == "vp" else flow_corruption(t)
        x_t = _bcast(c.alpha) * x0 + _bcast(c.sigma) * eps  # [B, C, H, W]
        out, features = self.network(x_t, c.c_noise)  # [B, C, H, W], [B, D]
        target = prediction_target(x0, eps, c, cfg.predicts)
        loss = (out.float() - target.float()).square().mean()
        with torch.no_grad():
            recon = (clean_estimate(x_t, out, c, cfg.predicts).float() - x0.float()).square().mean()
        return {"loss": loss, "recon_mse": recon, "features": features.detach()}

    def preview_levels(self) -> list[tuple[str, Corruption]]:
        """Three noise levels to draw, each a :class:`Corruption` of one element: edm's sigma at
        the 16th, 50th and 84th percentiles of its training distribution (alpha 1); t = 0.25,
        0.5, 0.75 for vp and flow."""
        cfg = self.cfg
        if cfg.corruption == "edm":
            sigmas = [math.exp(cfg.p_mean + z * cfg.p_std) for z in (-1.0, 0.0, 1.0)]
            return [(f"sigma={s:.2g}", _corruption(torch.ones(1), torch.tensor([s]))) for s in sigmas]
        corrupt = (lambda t: vp_corruption(t, cfg.vp_schedule)) if cfg.corruption == "vp" else flow_corruption
        return [(f"t={t:g}", corrupt(torch.tensor([t]))) for t in (0.25, 0.5, 0.75)]

    def preview_inputs(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """uint8 ``[n, C, S, S]`` -> the clean view x_0 and the corrupted x_t = alpha x_0 + sigma eps at
        :meth:`preview_levels` (one eps for all levels), ``[n, C, S, S]`` each, in the data's
        normalisation: edm's x_t (data scaled to sigma_data) is divided by sigma_data again."""
        x = self.augment(images)  # [n, C, S, S], normalised
        scale = self.cfg.sigma_data if self.cfg.corruption == "edm" else 1.0
        x0 = x * scale  # what training corrupts
        eps = noise_like(x0)  # [n, C, S, S]
        shown = [(f"x_t {name}", (_bcast(c.alpha) * x0 + _bcast(c.sigma) * eps) / scale)
                 for name, c in self.preview_levels()]
        return [("clean", x), *shown]

    def training_step(self, images: Tensor) -> dict[str, Tensor]:
        if self.cfg.corruption != "edm":
            x0 = self.augment(images)  # [B, C, S, S], the normalised view (unit variance)
            t = sample_t(x0.shape[0], x0.device, self.cfg.corruption, self.cfg.logit_mean, self.cfg.logit_std)
            return self.diffusion_terms(x0, t, noise_like(x0))  # eps [B, C, S, S]
        x0 = self.augment(images) * self.cfg.sigma_data  # [B, C, S, S], std about sigma_data
        sigma, eps = sample_noise(x0, self.cfg.p_mean, self.cfg.p_std)  # [B], [B, C, S, S]
        return self.loss_terms(x0, sigma, eps)
