"""CPC v2: the patch lattice, the causal context network, the pairing of predictions with
their targets k rows below, and the one batched encoder forward."""

import math

import pytest
import torch

from selfsup.losses import InfoNCE
from selfsup.methods.cpc import ContextNetwork, extract_patches, offset_pairs, patch_geometry

from conftest import TINY_INFO as INFO  # noqa: E402


@pytest.mark.parametrize("size, grid, expected", [(16, 7, (2, 4, 16)), (32, 7, (4, 8, 32)), (28, 7, (4, 8, 32)),
                                                  (64, 3, (16, 32, 64))])
def test_patch_geometry_is_half_overlapping(size, grid, expected):
    s, p, view = patch_geometry(size, grid)
    assert (s, p, view) == expected
    assert (grid - 1) * s + p == view  # the lattice covers the view exactly


def test_patches_are_cut_where_the_lattice_says():
    x = torch.randn(2, 3, 16, 16)
    patches = extract_patches(x, 7)  # stride 2, patch 4
    assert patches.shape == (2, 49, 3, 4, 4)
    for r, c in [(0, 0), (0, 6), (3, 2), (6, 6)]:
        assert torch.equal(patches[:, r * 7 + c], x[:, :, 2 * r:2 * r + 4, 2 * c:2 * c + 4])
    with pytest.raises(ValueError, match="multiple of 8"):
        extract_patches(torch.randn(1, 1, 15, 15), 7)


@pytest.mark.parametrize("kernel", [2, 3])
def test_context_above_row_r_never_sees_rows_from_r_down(kernel):
    """Perturbing rows >= r leaves the context of rows < r unchanged (the context that predicts
    row r), and does change the context from row r on (the network does look at rows above)."""
    torch.manual_seed(0)
    net = ContextNetwork(in_dim=6, dim=8, blocks=3, kernel=kernel)
    z = torch.randn(2, 6, 7, 7)
    base = net(z)
    for r in range(7):
        z2 = z.clone()
        z2[:, :, r:] = torch.randn_like(z2[:, :, r:])
        out = net(z2)
        assert torch.equal(out[:, :, :r], base[:, :, :r]), r
        assert not torch.allclose(out[:, :, r], base[:, :, r]), r


def test_predictions_never_depend_on_their_targets(tiny_config):
    """Through the whole method: the prediction for offset k made at row r has zero gradient
    with respect to every patch embedding in rows > r (its target included)."""
    from selfsup.train.module import PretrainModule

    torch.manual_seed(0)
    cpc = PretrainModule(tiny_config("method.context_dim=16", "method.offsets=[1, 3]", method="cpc"), INFO).method
    z = torch.randn(2, cpc.num_features, 7, 7, requires_grad=True)
    c = cpc.context(z)
    for k, predictor in zip(cpc.cfg.offsets, cpc.predictors):
        pred = predictor(c)
        for r in range(7 - k):
            grad = torch.autograd.grad(pred[:, :, r].sum(), z, retain_graph=True)[0]
            assert grad[:, :, r + 1:].abs().max() == 0, (k, r)
            assert grad[:, :, :r + 1].abs().max() > 0, (k, r)


def test_offset_pairs_score_each_prediction_against_the_patch_k_rows_below():
    b, d, g, k = 2, 3, 4, 2
    # code every position in the embedding: z[b, :, r, c] = (b, r, c)
    coords = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(g), torch.arange(g), indexing="ij"))
    z = coords.permute(1, 0, 2, 3).float()  # [B, 3, g, g]
    pred = z.clone()  # "predictions" coded with the position they are made at
    queries, keys, others = offset_pairs(pred, z, k)
    assert queries.shape == keys.shape == (b * (g - k) * g, d) and others.shape == (b * k * g, d)
    assert torch.equal(keys[:, 0], queries[:, 0])  # same image
    assert torch.equal(keys[:, 1], queries[:, 1] + k)  # k rows below
    assert torch.equal(keys[:, 2], queries[:, 2])  # same column
    every = torch.cat([keys, others])
    assert torch.unique(every, dim=0).shape[0] == b * g * g  # positives + others = all patches once


def test_perfect_predictions_win_and_shifted_ones_lose():
    torch.manual_seed(0)
    z = torch.randn(3, 16, 5, 5)
    k = 2
    crit = InfoNCE(0.05, batch_negatives=True)
    perfect = torch.zeros_like(z)
    perfect[:, :, : 5 - k] = z[:, :, k:]  # the prediction at row r is the embedding at row r + k
    out = crit(*offset_pairs(perfect, z, k))
    assert out.candidates == 3 * 5 * 5
    assert out.loss < 1e-3 and math.isclose(float(out.mi_bound), math.log(75), abs_tol=1e-3)
    wrong = torch.zeros_like(z)
    wrong[:, :, : 5 - k - 1] = z[:, :, k + 1:]  # predicts k + 1 rows below instead
    assert crit(*offset_pairs(wrong, z, k)).loss > 5


def test_cpc_step_embeds_every_patch_in_one_forward(tiny_config):
    from selfsup.train.module import PretrainModule

    torch.manual_seed(0)
    cpc = PretrainModule(tiny_config("method.context_dim=16", "method.offsets=[1, 2]", method="cpc"), INFO).method
    calls = []
    cpc.encoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    out = cpc.training_step(torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8))
    assert calls == [torch.Size([3 * 49, 1, 4, 4])]
    assert set(out) >= {"loss", "mi_bound", "mi_bound_k1", "mi_bound_k2", "features"}
    assert out["features"].shape == (3, cpc.num_features)
    assert float(out["mi_bound_k1"]) <= math.log(3 * 49)


def test_cpc_rejects_bad_offsets():
    from selfsup.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="offsets"):
        load_config(None, ["method.name=cpc", "method.offsets=[7]"])
