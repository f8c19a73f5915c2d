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
    enc = create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64]})
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


# --------------------------------------------------------------------------- vp and flow corruptions

from selfsup.config import ConfigError, load_config  # noqa: E402
from selfsup.methods.denoise import (T_MIN, clean_estimate, flow_corruption, prediction_target,  # noqa: E402
                                     sample_t, vp_corruption)


def ddpm_alpha_bar(t: float) -> float:
    """DDPM's discrete product prod_{i <= tT} (1 - beta_i), beta linear from 1e-4 to 0.02 over T = 1000
    (Ho et al. 2020), evaluated directly."""
    steps = round(t * 1000)
    return math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(steps))


def nichol_alpha_bar(t: float, s: float = 0.008) -> float:
    """Nichol & Dhariwal 2021, eq. 17: f(t) / f(0), f(t) = cos^2(((t + s) / (1 + s)) pi / 2)."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


@pytest.mark.parametrize("t", [0.05, 0.25, 0.5, 0.75, 0.95])
def test_each_corruption_has_its_mean_and_variance(t):
    """x_t = alpha x_0 + sigma eps over 400k draws of eps: mean alpha x_0 and variance sigma^2, with
    alpha and sigma from formulas written here (DDPM's discrete product for the linear schedule)."""
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(400_000, generator=g, dtype=torch.float64)
    x0 = 0.7
    tt = torch.tensor([t], dtype=torch.float64)
    cases = {"vp-linear": (vp_corruption(tt, "linear"), math.sqrt(ddpm_alpha_bar(t)), 2e-3),
             "vp-cosine": (vp_corruption(tt, "cosine"), math.sqrt(nichol_alpha_bar(t)), 1e-9),
             "flow": (flow_corruption(tt), 1 - t, 1e-12)}
    for name, (c, alpha, tol) in cases.items():
        sigma = t if name == "flow" else math.sqrt(1 - alpha**2)
        assert abs(float(c.alpha) - alpha) < tol and abs(float(c.sigma) - sigma) < max(tol, 2e-3 * (name != "flow")), name
        x_t = c.alpha * x0 + c.sigma * eps
        assert abs(float(x_t.mean()) - alpha * x0) < 5e-3, name
        assert abs(float(x_t.var()) - sigma**2) < 5e-3 * max(sigma**2, 0.1), name
        assert abs(float(c.c_noise) - math.log(float(c.sigma) / float(c.alpha)) / 4) < 1e-12


def test_time_distributions():
    g = torch.Generator().manual_seed(0)
    t = sample_t(200_000, torch.device("cpu"), "vp", generator=g)
    assert abs(float(t.mean()) - 0.5) < 3e-3 and abs(float(t.var()) - 1 / 12) < 2e-3
    t = sample_t(200_000, torch.device("cpu"), "flow", logit_mean=0.5, logit_std=1.5, generator=g)
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean()) - 0.5) < 0.02 and abs(float(logit.std()) - 1.5) < 0.02
    assert float(t.min()) >= T_MIN and float(t.max()) <= 1 - T_MIN


@pytest.mark.parametrize("kind", ["vp-eps", "vp-v", "flow"])
def test_the_loss_at_the_ends_of_each_schedule(kind):
    """At t -> 0 x_t is x_0 and at t -> 1 it is the noise: the best prediction from x_t there has a loss
    in closed form: E[eps^2] = 1 where the target needs the unseen noise, Var(x_0) where it needs the
    unseen image, 0 where x_t gives the target away. The method's loss with those predictions matches."""
    corruption, prediction = ("flow", "eps") if kind == "flow" else ("vp", kind.split("-")[1])
    method = make_method(corruption=corruption, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0 = 0.3 + 0.8 * torch.randn(64, 1, 16, 16, generator=g)  # Var(x_0) = 0.64
    eps = torch.randn(64, 1, 16, 16, generator=g)
    var_x0 = float(x0.var())
    # (t, prediction from x_t, expected loss)
    ends = {"vp-eps": [(T_MIN, lambda x_t: torch.zeros_like(x_t), 1.0), (1 - T_MIN, lambda x_t: x_t, 0.0)],
            "vp-v": [(T_MIN, lambda x_t: torch.zeros_like(x_t), 1.0), (1 - T_MIN, lambda x_t: -x0.mean() + 0 * x_t,
                                                                         var_x0)],
            "flow": [(T_MIN, lambda x_t: -x_t, 1.0), (1 - T_MIN, lambda x_t: x_t - x0.mean(), var_x0)]}[kind]
    for t, predict, want in ends:
        seen = {}

        def network(x_t, c_noise, predict=predict, seen=seen):
            seen["x_t"] = x_t
            return predict(x_t), torch.zeros(len(x_t), 4)
        method.network = network
        loss = float(method.diffusion_terms(x0, torch.full((64,), t), eps)["loss"])
        assert abs(loss - want) < 0.03 * max(1.0, want), (t, loss, want)
    # an exact prediction scores 0 and gives x_0 back
    c = vp_corruption(torch.full((64,), 0.5)) if corruption == "vp" else flow_corruption(torch.full((64,), 0.5))
    x_t = c.alpha.view(-1, 1, 1, 1) * x0 + c.sigma.view(-1, 1, 1, 1) * eps
    target = prediction_target(x0, eps, c, method.cfg.predicts)
    torch.testing.assert_close(clean_estimate(x_t, target, c, method.cfg.predicts), x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("corruption", ["vp", "flow"])
def test_a_training_step_of_each_corruption_feeds_x_t_to_the_encoder_and_trains_it(corruption):
    torch.manual_seed(0)
    method = make_method(corruption=corruption)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    seen = []
    method.encoder.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    out = method.training_step(images)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["recon_mse"])
    assert method.encoder.conv1.weight.grad.abs().sum() > 0
    assert seen[0].shape == (8, 1, 16, 16) and float(seen[0].std()) > 0.3  # x_t unscaled: variance near 1


@pytest.mark.parametrize("corruption,key,value,needs", [
    ("vp", "target", "clean", "edm"), ("flow", "prediction", "v", "vp"), ("edm", "vp_schedule", "linear", "vp"),
    ("flow", "p_std", 2.0, "edm"), ("vp", "logit_mean", 0.5, "flow"), ("edm", "logit_std", 2.0, "flow"),
    ("flow", "sigma_data", 1.0, "edm")])
def test_corruption_options_that_do_not_apply_are_refused(corruption, key, value, needs):
    """Every key that one corruption reads, set under another, is refused rather than ignored."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=denoise", f"method.corruption={corruption}", f"method.{key}={value}"])
    assert str(err.value) == (f"config key method.{key}={value!r} applies only when method.corruption is {needs} "
                              f"(it is {corruption}), so it would be ignored: drop it, or set "
                              f"method.corruption={needs}")
    # the same value under the corruption that reads it is taken
    assert getattr(load_config(None, ["method.name=denoise", f"method.corruption={needs}",
                                      f"method.{key}={value}"]).method, key) == value


def test_a_dumped_config_with_every_key_at_its_default_loads_under_any_corruption(tmp_path):
    """A run's config.yaml lists every key (the other corruptions' at their defaults): never refused."""
    from selfsup.config import dump_yaml

    for corruption in ("edm", "vp", "flow"):
        path = tmp_path / f"{corruption}.yaml"
        path.write_text(dump_yaml(load_config(None, ["method.name=denoise", f"method.corruption={corruption}"])))
        assert load_config(path).method.corruption == corruption
