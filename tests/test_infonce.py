"""NT-Xent against a naive per-anchor loop written from the paper's definition."""

import math

import pytest
import torch

from selfsup.losses import NTXent


def naive_nt_xent(z1, z2, tau):
    """SimCLR eq. (1), averaged over all 2N anchors, one anchor at a time."""
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        def sim(a, b):
            return torch.dot(z[a], z[b]) / (z[a].norm() * z[b].norm())
        num = torch.exp(sim(i, j) / tau)
        den = sum(torch.exp(sim(i, k) / tau) for k in range(n2) if k != i)
        total = total - torch.log(num / den)
    return total / n2


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_matches_naive_loop_with_gradients(n, tau):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, 7, generator=g, dtype=torch.float64, requires_grad=True)
    out = NTXent(tau)(a, b)
    ref = naive_nt_xent(a, b, tau)
    assert torch.allclose(out.loss.double(), ref, rtol=1e-5, atol=1e-6)
    ga, gb = torch.autograd.grad(out.loss, (a, b))
    ra, rb = torch.autograd.grad(ref, (a, b))
    assert torch.allclose(ga.double(), ra, rtol=1e-4, atol=1e-6)
    assert torch.allclose(gb.double(), rb, rtol=1e-4, atol=1e-6)
    assert math.isclose(float(out.mi_bound), math.log(2 * n - 1) - float(ref.detach()), rel_tol=1e-5, abs_tol=1e-5)


def test_identical_views_give_low_loss_and_bound_near_log_candidates():
    z = torch.eye(8)  # orthogonal embeddings: positives are far more similar than negatives
    out = NTXent(0.05)(z, z)
    assert out.loss < 1e-6
    assert math.isclose(float(out.mi_bound), math.log(15), rel_tol=1e-4)


def test_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        NTXent(0.0)
