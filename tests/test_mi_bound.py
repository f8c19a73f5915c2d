"""The InfoNCE mutual-information bound on a problem whose MI is known.

X ~ N(0, I_d) and Y = rho X + sqrt(1 - rho^2) E with E ~ N(0, I_d) independent have
I(X; Y) = -d/2 log(1 - rho^2) nats. A small separable critic f(x)^T g(y) trained with
InfoNCE on batches of N pairs gives log(N) - L <= min(I, log N) in expectation (Oord et al.
2018; Poole et al. 2019): close to I when I << log N, saturating at log N when I >> log N.
"""

import math

import pytest
import torch
from torch import nn

from selfsup.losses import InfoNCE

STEPS = 300
EVAL_BATCHES = 200
MARGIN = 0.1  # nats: how close the trained critic's bound comes to I (when I << log N); measured
# here: 0.426 vs I = 0.446 (d=2, rho=0.6) and 0.553 vs 0.575 (d=4, rho=0.5) at N = 128


@pytest.fixture(autouse=True)
def one_thread():
    """Hundreds of tiny steps: one thread avoids thread hand-offs (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def correlated_gaussians(n: int, d: int, rho: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)
    return x, y


def trained_bound(d: int, rho: float, n: int) -> tuple[float, float]:
    """Train the critic for STEPS batches of n pairs; return the mean bound on fresh batches
    and its standard error."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    f = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 32))
    h = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 32))
    critic = InfoNCE(1.0, normalize=False)  # scores f(x)^T h(y), candidates: the batch's y
    opt = torch.optim.Adam([*f.parameters(), *h.parameters()], lr=3e-3)
    for _ in range(STEPS):
        x, y = correlated_gaussians(n, d, rho, g)
        loss = critic(f(x), h(y)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        bounds = torch.stack([critic(f(x), h(y)).mi_bound
                              for x, y in (correlated_gaussians(n, d, rho, g) for _ in range(EVAL_BATCHES))])
    return float(bounds.mean()), float(bounds.std() / math.sqrt(EVAL_BATCHES))


@pytest.mark.parametrize("d, rho", [(2, 0.6), (4, 0.5)])
def test_bound_approaches_true_mi_when_it_is_small(d, rho):
    n = 128
    mi = -d / 2 * math.log(1 - rho**2)  # 0.45 and 0.58 nats, log N = 4.85
    bound, stderr = trained_bound(d, rho, n)
    assert bound <= min(mi, math.log(n)) + 3 * stderr  # a lower bound, up to sampling noise
    assert bound >= mi - MARGIN


def test_bound_saturates_at_log_n_when_mi_is_large():
    d, rho, n = 10, 0.99, 32
    mi = -d / 2 * math.log(1 - rho**2)  # 19.6 nats >> log 32 = 3.47
    bound, _ = trained_bound(d, rho, n)
    assert bound <= math.log(n)  # never above log N, whatever the critic
    assert bound >= math.log(n) - MARGIN
    assert bound < mi
