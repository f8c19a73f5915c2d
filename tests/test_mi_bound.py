"""The InfoNCE mutual-information bound on a problem whose MI is known.

X ~ N(0, I_d) and Y = rho X + sqrt(1 - rho^2) E with E ~ N(0, I_d) independent have
I(X; Y) = -d/2 log(1 - rho^2) nats. A small separable critic f(x)^T g(y) trained with
InfoNCE on batches of N pairs gives log(N) - L <= min(I, log N) in expectation (Oord et al.
2018; Poole et al. 2019): close to I when I << log N, saturating at log N when I >> log N.

The optimal critic is known in closed form here, log p(y|x) / p(y) (up to terms in x alone,
which cancel in each query's softmax), and it is a dot product of features built from x and y
(:func:`optimal_critic_features`); with it the bound must land on min(I, log N), and no
trained critic may beat it.
"""

import math

import numpy as np
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


def gaussian_mi(d: int, rho: float) -> float:
    return -d / 2 * math.log(1 - rho**2)


def optimal_critic_features(x: torch.Tensor, y: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [n, d + 1] whose dot product q_i . k_j is log p(y_j | x_i) - log p(y_j) up to
    terms in x_i alone: rho x.y / (1 - rho^2) - rho^2 |y|^2 / (2 (1 - rho^2))."""
    q = torch.cat([rho / (1 - rho**2) * x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    k = torch.cat([y, -(rho**2) / (2 * (1 - rho**2)) * y.square().sum(1, keepdim=True)], dim=1)
    return q, k


def numpy_log_ratio(x: np.ndarray, y: np.ndarray, rho: float) -> np.ndarray:
    """S[i, j] = log N(y_j; rho x_i, (1 - rho^2) I) - log N(y_j; 0, I), every constant kept."""
    d = x.shape[1]
    var = 1 - rho**2
    diff = y[None, :, :] - rho * x[:, None, :]  # [n, n, d]
    log_cond = -0.5 * (diff**2).sum(-1) / var - d / 2 * np.log(2 * np.pi * var)
    log_marg = -0.5 * (y**2).sum(-1) - d / 2 * np.log(2 * np.pi)
    return log_cond - log_marg[None, :]


def train_critic(d: int, rho: float, n: int, g: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """A separable critic f(x)^T h(y) trained with InfoNCE for STEPS batches of n pairs."""
    torch.manual_seed(0)
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
    return f, h


def trained_and_optimal_bounds(d: int, rho: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch bounds [EVAL_BATCHES] of the trained critic and of the optimal one, on the same
    fresh batches."""
    g = torch.Generator().manual_seed(0)
    f, h = train_critic(d, rho, n, g)
    critic = InfoNCE(1.0, normalize=False)
    trained, optimal = [], []
    with torch.no_grad():
        for _ in range(EVAL_BATCHES):
            x, y = correlated_gaussians(n, d, rho, g)
            trained.append(critic(f(x), h(y)).mi_bound)
            optimal.append(critic(*optimal_critic_features(x.double(), y.double(), rho)).mi_bound)
    return torch.stack(trained).double(), torch.stack(optimal).double()


def mean_and_stderr(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


@pytest.mark.parametrize("d, rho, n", [(3, 0.7, 16), (2, 0.6, 128), (10, 0.99, 32)])
def test_bound_from_a_known_score_matrix_equals_a_numpy_evaluation(d, rho, n):
    """log N - mean_i [logsumexp_j S_ij - S_ii] with S the exact log density ratio, in numpy,
    against InfoNCE on the optimal critic's features (terms in x alone cancel per row)."""
    g = torch.Generator().manual_seed(d)
    x, y = (t.double() for t in correlated_gaussians(n, d, rho, g))
    s = numpy_log_ratio(x.numpy(), y.numpy(), rho)  # [n, n]
    top = s.max(1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(s - top).sum(1))  # logsumexp over the candidates
    want = math.log(n) - float(np.mean(log_norm - np.diag(s)))
    out = InfoNCE(1.0, normalize=False)(*optimal_critic_features(x, y, rho))
    assert out.candidates == n
    assert math.isclose(float(out.mi_bound), want, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("d, rho", [(2, 0.6), (4, 0.5)])
def test_bound_approaches_true_mi_when_it_is_small(d, rho):
    n = 128
    mi = gaussian_mi(d, rho)  # 0.45 and 0.58 nats, log N = 4.85
    trained, optimal = trained_and_optimal_bounds(d, rho, n)
    best, best_err = mean_and_stderr(optimal)
    assert abs(best - mi) <= 0.02 + 3 * best_err  # the optimal critic's bound lands on I (measured: within 0.003)
    bound, stderr = mean_and_stderr(trained)
    assert bound <= mi + 3 * stderr  # a lower bound, up to sampling noise
    assert bound >= mi - MARGIN
    gap, gap_err = mean_and_stderr(trained - optimal)  # paired on the same batches
    assert gap <= 3 * gap_err  # no critic beats the optimal one


def test_bound_saturates_at_log_n_when_mi_is_large():
    d, rho, n = 10, 0.99, 32
    assert gaussian_mi(d, rho) > 19  # 19.6 nats >> log 32 = 3.47
    trained, optimal = trained_and_optimal_bounds(d, rho, n)
    best = float(optimal.mean())
    assert math.log(n) - 1e-3 <= best  # the optimal critic saturates at log N (measured: 1e-5 below)
    assert float(trained.mean()) >= math.log(n) - MARGIN  # the trained critic gets there too, far below I
