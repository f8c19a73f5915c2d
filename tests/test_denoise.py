"""Denoising (EDM parametrisation): preconditioning, loss weighting, the sigma -> 0 limits,
per-sample noise."""

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


@pytest.mark.parametrize("target", ["edm", "clean"])
def test_loss_equals_naive_weighted_denoiser_error(target):
    torch.manual_seed(0)
    x0 = torch.randn(6, 3, 8, 8, dtype=torch.float64) * SD
    eps = torch.randn_like(x0)
    out = torch.randn_like(x0)  # any network output F
    sigma = torch.tensor([0.002, 0.05, 0.3, 1.0, 5.0, 80.0], dtype=torch.float64)
    pc = edm_precond(sigma, SD, target)
    b = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    x_t = x0 + b(sigma) * eps
    denoised = b(pc.c_skip) * x_t + b(pc.c_out) * out  # D(x_t; sigma)
    naive = (b(pc.weight) * (denoised - x0) ** 2).mean()
    assert torch.allclose(edm_loss(out, x0, eps, sigma, SD, target).double(), naive, rtol=1e-5)
    assert torch.allclose(pc.weight * pc.c_out ** 2, torch.ones_like(sigma, dtype=torch.float64))
    if target == "edm":
        lam = (sigma ** 2 + SD ** 2) / (sigma * SD) ** 2  # lambda(sigma) as the paper writes it
        assert torch.allclose(pc.weight, lam)
        assert torch.allclose(pc.c_in, 1 / (sigma ** 2 + SD ** 2).sqrt())
        assert torch.allclose(pc.c_noise, sigma.log() / 4)


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
