"""Denoising (EDM parametrisation): preconditioning, loss weighting, the sigma -> 0 limits,
per-sample noise."""

import math

import pytest
import torch

from selfsup.data import AugmentConfig
from selfsup.encoders import create_encoder
from selfsup.methods.denoise import Denoise, DenoiseConfig, edm_loss, edm_precond, network_target, sample_noise

from conftest import TINY_INFO as INFO  # noqa: E402
SD = 0.5


def make_method(**kw):
    enc = create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64], "stem_width": 8})
    return Denoise(DenoiseConfig(**kw), enc, INFO)


def karras_table1(sigma, sd, target="edm"):
    """EDM's preconditioning for one noise level, written from Karras et al. 2022, Table 1:
    c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
    c_noise = ln(s) / 4, loss weight lambda = (s^2 + sd^2) / (s sd)^2. ``clean`` (Chen et al.
    2024's clean-image prediction) drops the skip: c_skip = 0, c_out = sd, lambda = 1 / sd^2."""
    s = float(sigma)
    c_in = 1 / math.sqrt(s * s + sd * sd)
    if target == "edm":
        c_skip = sd * sd / (s * s + sd * sd)
        c_out = s * sd / math.sqrt(s * s + sd * sd)
        weight = (s * s + sd * sd) / (s * sd) ** 2
    else:
        c_skip, c_out, weight = 0.0, sd, 1 / (sd * sd)
    return {"c_in": c_in, "c_skip": c_skip, "c_out": c_out, "c_noise": math.log(s) / 4, "weight": weight}


def naive_edm_loss(out, x0, eps, sigma, sd, target="edm"):
    """lambda(sigma) ||D(x_t; sigma) - x_0||^2 averaged over every element, one sample at a time,
    with D = c_skip x_t + c_out F and every coefficient from :func:`karras_table1`."""
    total, count = 0.0, 0
    for i in range(len(sigma)):
        c = karras_table1(sigma[i], sd, target)
        x_t = x0[i] + float(sigma[i]) * eps[i]
        denoised = c["c_skip"] * x_t + c["c_out"] * out[i]
        total += c["weight"] * float(((denoised - x0[i]) ** 2).sum())
        count += x0[i].numel()
    return total / count


SIGMAS = [0.002, 0.05, 0.3, 1.0, 5.0, 80.0]


@pytest.mark.parametrize("target", ["edm", "clean"])
def test_loss_equals_naive_weighted_denoiser_error(target):
    torch.manual_seed(0)
    x0 = torch.randn(6, 3, 8, 8, dtype=torch.float64) * SD
    eps = torch.randn_like(x0)
    out = torch.randn_like(x0)  # any network output F
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    pc = edm_precond(sigma, SD, target)
    for i, s in enumerate(SIGMAS):  # every factor against Table 1, written here
        for name, want in karras_table1(s, SD, target).items():
            assert math.isclose(float(getattr(pc, name)[i]), want, rel_tol=1e-9), (name, s)
    got = float(edm_loss(out, x0, eps, sigma, SD, target))
    assert math.isclose(got, naive_edm_loss(out, x0, eps, sigma, SD, target), rel_tol=1e-5)


@pytest.mark.parametrize("target", ["edm", "clean"])
def test_method_step_feeds_c_in_x_t_and_c_noise_and_scores_the_naive_loss(target):
    """Through the real network: the encoder receives c_in * (x_0 + sigma * eps), the decoder's
    conditioning receives c_noise, and the loss is the naive EDM loss of the decoder's output."""
    torch.manual_seed(0)
    method = make_method(target=target)
    with torch.no_grad():
        method.noise_embed.mlp[-1].weight.normal_()  # the conditioning matters
    x0 = torch.randn(4, 1, 16, 16) * SD
    eps = torch.randn_like(x0)
    sigma = torch.tensor([0.01, 0.4, 2.0, 30.0])
    encoder_in, decoded, c_noise = [], [], []
    method.encoder.conv1.register_forward_pre_hook(lambda m, args: encoder_in.append(args[0].detach().clone()))
    method.decoder.register_forward_hook(lambda m, args, out: decoded.append(out.detach().clone()))
    method.noise_embed.register_forward_pre_hook(lambda m, args: c_noise.append(args[0].detach().clone()))
    loss = method.loss_terms(x0, sigma, eps)["loss"]
    coeffs = [karras_table1(s, SD, target) for s in sigma.tolist()]
    want_in = torch.stack([c["c_in"] * (x0[i].double() + float(sigma[i]) * eps[i].double())
                           for i, c in enumerate(coeffs)])
    torch.testing.assert_close(encoder_in[0].double(), want_in, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_noise[0].double(), torch.tensor([c["c_noise"] for c in coeffs], dtype=torch.float64))
    ref = naive_edm_loss(decoded[0].double(), x0.double(), eps.double(), sigma.double(), SD, target)
    assert math.isclose(float(loss.detach()), ref, rel_tol=1e-4)


def test_every_noise_level_has_a_unit_variance_target():
    torch.manual_seed(0)
    x0 = torch.randn(64, 1, 16, 16) * SD
    eps = torch.randn_like(x0)
    for s in (1e-3, 0.1, 0.5, 3.0, 80.0):
        t = network_target(x0, eps, torch.full((64,), s), SD)
        assert abs(float(t.std()) - 1) < 0.03, s


def test_at_sigma_to_zero_edm_loss_is_the_plain_mse_of_the_network_against_the_noise():
    """With EDM's skip, D(x_t) -> x_t as sigma -> 0; lambda * c_out^2 = 1, so the loss is
    the unweighted MSE of F on the clean image (c_in * x_0 = x_0 / sigma_data) against -eps."""
    torch.manual_seed(0)
    method = make_method().eval()
    with torch.no_grad():
        method.noise_embed.mlp[-1].weight.normal_()  # make the decoder depend on c_noise
    x0 = torch.randn(4, 1, 16, 16) * SD
    eps = torch.randn_like(x0)
    sigma = torch.full((4,), 1e-6)
    with torch.no_grad():
        loss = method.loss_terms(x0, sigma, eps)["loss"]
        out, _ = method.network(x0 / SD, sigma.log() / 4)  # no noise, EDM's c_in at sigma = 0
        plain = ((out + eps) ** 2).mean()
        far = method.loss_terms(x0, torch.full((4,), 0.5), eps)["loss"]
    assert torch.allclose(loss, plain, rtol=1e-4)
    assert not torch.allclose(far, plain, rtol=1e-2)  # it is a limit, not the loss everywhere


def test_at_sigma_to_zero_clean_target_loss_is_the_plain_reconstruction_loss():
    """Without the skip (``target: clean``), sigma -> 0 leaves an autoencoder:
    lambda ||D(x_t) - x_0||^2 -> ||D(x_0) - x_0||^2 / sigma_data^2 with D = sigma_data * F."""
    torch.manual_seed(0)
    method = make_method(target="clean").eval()
    x0 = torch.randn(4, 1, 16, 16) * SD
    eps = torch.randn_like(x0)
    with torch.no_grad():
        loss = method.loss_terms(x0, torch.full((4,), 1e-6), eps)["loss"]
        out, _ = method.network(x0 / SD, torch.full((4,), 1e-6).log() / 4)
        reconstruction = ((SD * out - x0) ** 2).mean() / SD ** 2
    assert torch.allclose(loss, reconstruction, rtol=1e-4)


def test_noise_is_independent_per_sample():
    torch.manual_seed(0)
    x0 = torch.zeros(512, 1, 8, 8)  # identical images
    sigma, eps = sample_noise(x0, -1.2, 1.2)
    assert sigma.shape == (512,) and len(set(sigma.tolist())) == 512
    assert abs(float(sigma.log().mean()) + 1.2) < 0.15 and abs(float(sigma.log().std()) - 1.2) < 0.15
    e = eps.flatten(1)  # [512, 64]
    corr = torch.corrcoef(e[:64])  # between samples
    off = corr[~torch.eye(64, dtype=torch.bool)]
    assert off.abs().mean() < 0.15 and off.abs().max() < 0.6
    assert abs(float(e.std()) - 1) < 0.05

    # inside the method: identical images without augmentation reach the encoder with
    # different noise and different noise levels
    fixed = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, jitter_p=0.0, grayscale_p=0.0)
    method = make_method(augment=fixed)
    seen = []
    method.encoder.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    images = torch.full((8, 1, 16, 16), 128, dtype=torch.uint8)
    out = method.training_step(images)
    x = seen[0].flatten(1)  # [8, 256] encoder inputs c_in * (x_0 + sigma * eps)
    assert len({round(float(s), 4) for s in x.std(1)}) == 8  # a different noise level per sample
    assert all(not torch.allclose(x[i], x[j]) for i in range(8) for j in range(i))
    assert out["features"].shape == (8, 64) and torch.isfinite(out["loss"])


def test_decoder_is_conditioned_on_the_noise_level_and_the_encoder_is_not():
    torch.manual_seed(0)
    method = make_method().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        same = [method.network(x, torch.full((2,), c)) for c in (-1.0, 1.0)]
        assert torch.equal(same[0][0], same[1][0])  # the last MLP layer starts at zero
        method.noise_embed.mlp[-1].weight.normal_()
        out = [method.network(x, torch.full((2,), c)) for c in (-1.0, 1.0)]
    assert not torch.allclose(out[0][0], out[1][0])  # decoder output depends on c_noise
    assert torch.equal(out[0][1], out[1][1])  # encoder features do not
    assert make_method(condition_decoder=False).noise_embed is None
