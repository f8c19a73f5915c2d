"""Deep InfoMax (local): the per-position JS / InfoNCE bounds against loops over images and
positions, the local map and the global feature the step scores, training, config errors."""

import math

import pytest
import torch

from selfsup.config import ConfigError
from selfsup.methods.dim import default_local_stage, dim_bound, local_global_scores
from selfsup.train.module import PretrainModule

from conftest import TINY_INFO as INFO  # noqa: E402

RESNET = ["encoder.name=resnet18", "encoder.kwargs={channels: [8, 16, 32, 64], zero_init_last: false}"]


def loop_scores(g, local, scale):
    """``s[p][i][j] = scale * sum_u g[i, u] * local[j, p, u]`` as nested Python lists."""
    b, p, u = local.shape
    return [[[scale * sum(float(g[i, k]) * float(local[j, q, k]) for k in range(u)) for j in range(b)]
             for i in range(b)] for q in range(p)]


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def loop_js(s):
    """Mean over positions of each position's JS loss and NWJ(f + 1) estimate, from the formulas."""
    losses, mis = [], []
    for sp in s:
        b = len(sp)
        joint = [sp[i][i] for i in range(b)]
        marg = [sp[i][j] for i in range(b) for j in range(b) if i != j]
        losses.append(sum(softplus(-x) for x in joint) / b + sum(softplus(x) for x in marg) / len(marg))
        mis.append(sum(joint) / b + 1 - sum(math.exp(x) for x in marg) / len(marg))  # E_p[f+1] - e^-1 E_q[e^(f+1)]
    return sum(losses) / len(s), sum(mis) / len(s)


def loop_infonce(s):
    """Mean over positions and images of -log softmax of the own patch among the B patches at that position."""
    terms = []
    for sp in s:
        for i, row in enumerate(sp):
            terms.append(-(row[i] - math.log(sum(math.exp(x) for x in row))))
    loss = sum(terms) / len(terms)
    return loss, math.log(len(s[0])) - loss


@pytest.mark.parametrize("estimator,reference", [("js", loop_js), ("infonce", loop_infonce)])
@pytest.mark.parametrize("b,p,u,scale", [(3, 4, 5, 1.0), (4, 1, 3, 0.5), (2, 6, 4, 5 ** -0.5)])
def test_bound_on_per_position_scores_matches_loops_over_images_and_positions(estimator, reference, b, p, u, scale):
    gen = torch.Generator().manual_seed(b * 100 + p)
    g = torch.randn(b, u, generator=gen, dtype=torch.float64)
    local = torch.randn(b, p, u, generator=gen, dtype=torch.float64)
    scores = local_global_scores(g, local, scale)  # [P, B, B]
    s = loop_scores(g, local, scale)
    assert torch.allclose(scores, torch.tensor(s, dtype=torch.float64))
    bound = dim_bound(scores, estimator)
    loss, mi = reference(s)
    assert bound.loss.item() == pytest.approx(loss, rel=1e-9)
    assert bound.mi.item() == pytest.approx(mi, rel=1e-9, abs=1e-12)
    assert not bound.mi.requires_grad


def test_infonce_estimate_is_at_most_log_batch_and_js_gradient_separates_pairs():
    torch.manual_seed(0)
    scores = torch.randn(5, 4, 4) * 10
    assert dim_bound(scores, "infonce").mi <= math.log(4) + 1e-6
    scores.requires_grad_(True)
    dim_bound(scores, "js").loss.backward()
    eye = torch.eye(4, dtype=torch.bool).expand(5, 4, 4)
    assert (scores.grad[eye] < 0).all() and (scores.grad[~eye] > 0).all()  # positives up, negatives down


def test_bound_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        dim_bound(torch.zeros(3, 1, 1), "js")
    with pytest.raises(ValueError, match="unknown estimator 'dv'; choose js or infonce"):
        dim_bound(torch.zeros(3, 2, 2), "dv")


def test_default_local_stage_is_the_deepest_map_at_the_papers_stride():
    assert default_local_stage([2, 4, 8, 16, 32]) == 1  # a ResNet: layer1
    assert default_local_stage([4, 8, 16, 32]) == 0  # a ConvNeXt: stage 0
    assert default_local_stage([2, 4, 4, 8]) == 2
    with pytest.raises(ConfigError, match="no feature map at stride <= 4 .*set method.local_stage"):
        default_local_stage([8, 16, 32])


def test_step_scores_resnet_layer1_against_the_pooled_feature(tiny_config):
    """The step's bound is the bound of the global net on encoder(x) against the local net on
    layer1's map of the same views (hooked independently of forward_intermediates)."""
    torch.manual_seed(0)
    module = PretrainModule(tiny_config(*RESNET, "method.augment.hflip=0", "method.mi_units=16", method="dim"), INFO)
    method = module.method
    seen = {}
    method.encoder.layer1.register_forward_hook(lambda m, i, o: seen.setdefault("layer1", o.detach()))
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    out = method.training_step(images)
    with torch.no_grad():
        x = method.augment(images)  # deterministic: whole image, no flip, no colour change
        h = method.encoder(x)
        local = seen["layer1"].flatten(2).transpose(1, 2)  # [B, 16, 8] of a 16 px image at stride 4
        assert local.shape == (6, 16, 8)
        scores = local_global_scores(method.global_net(h), method.local_net(local), 16 ** -0.5)
    torch.testing.assert_close(out["features"], h)
    s = loop_scores(method.global_net(h).detach(), method.local_net(local).detach(), 16 ** -0.5)
    torch.testing.assert_close(scores, torch.tensor(s), rtol=1e-4, atol=1e-5)
    loss, mi = loop_js(s)
    assert out["loss"].item() == pytest.approx(loss, rel=1e-4)
    assert out["mi_bound"].item() == pytest.approx(mi, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("estimator", ["js", "infonce"])
def test_training_raises_the_mi_estimate_and_moves_the_encoder(estimator, tiny_config):
    torch.manual_seed(0)
    module = PretrainModule(tiny_config(*RESNET, f"method.estimator={estimator}", "method.mi_units=64",
                                        method="dim"), INFO)
    method = module.method
    before = {k: p.detach().clone() for k, p in method.encoder.named_parameters()}
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mis = []
    for _ in range(10):
        out = method.training_step(images)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        mis.append(out["mi_bound"].item())
    assert sum(mis[-3:]) / 3 > sum(mis[:3]) / 3 + 0.1, mis
    if estimator == "infonce":
        assert max(mis) <= math.log(16) + 1e-5
    moved = [k for k, p in method.encoder.named_parameters() if not torch.equal(p, before[k])]
    assert len(moved) == len(before)  # every encoder tensor, layer1 and below included


def test_a_transformer_encoder_is_a_one_line_config_error(tiny_config):
    cfg = tiny_config("encoder.name=vit_tiny_patch16_224",
                      "encoder.kwargs={img_size: 16, patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}",
                      method="dim")
    with pytest.raises(ConfigError, match="dim needs a convolutional encoder .*set encoder.name to a convnet") as err:
        PretrainModule(cfg, INFO)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("method.local_stage=5", r"method.local_stage=5 is out of range for the encoder's 5 feature maps"),
    ("method.local_stage=-6", r"method.local_stage=-6 is out of range"),
    ("method.estimator=dv", r"estimator"),
    ("method.mi_units=0", r"mi_units"),
])
def test_bad_settings_are_config_errors(override, message, tiny_config):
    with pytest.raises(ConfigError, match=message) as err:
        PretrainModule(tiny_config(*RESNET, override, method="dim"), INFO)
    assert "\n" not in str(err.value)


def test_a_negative_local_stage_counts_from_the_end(tiny_config):
    method = PretrainModule(tiny_config(*RESNET, "method.local_stage=-2", method="dim"), INFO).method
    assert method.local_stage == 3 and method.local_net.shortcut.in_features == 32  # layer3 of [8, 16, 32, 64]


def test_a_single_image_batch_is_refused(tiny_config):
    method = PretrainModule(tiny_config(*RESNET, method="dim"), INFO).method.eval()
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        method.training_step(torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8))


def test_mi_network_starts_near_the_identity_where_it_can():
    from selfsup.methods.dim import MINetwork

    net = MINetwork(3, 5)
    w = net.shortcut.weight.detach()
    assert torch.equal(torch.diagonal(w[:3]), torch.ones(3)) and w[3:].abs().max() <= 0.01
    x = torch.randn(2, 4, 3)
    assert net(x).shape == (2, 4, 5)
    torch.testing.assert_close(net.eval()(x)[1], net(x[1:])[0])  # per position, like a 1x1 convolution
    torch.testing.assert_close(net(x).mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)  # LayerNorm last
