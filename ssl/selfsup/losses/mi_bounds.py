"""Variational bounds on mutual information from one critic score matrix.

Every bound reads ``scores`` ``[B, B]``: ``scores[i, j] = f(x_i, y_j)``, the critic of sample
``x_i`` against ``y_j``; the diagonal holds the B pairs drawn from the joint p(x, y), the
B(B-1) off-diagonal entries stand for pairs from the product of marginals p(x)p(y). Each returns
a :class:`Bound`: ``loss`` (what a training step minimises; its gradient is the bound's, or
the one the method prescribes) and ``mi`` (the estimate in nats, detached). The estimators and
their names follow Poole et al. 2019 ("On Variational Bounds of Mutual Information", ICML;
section 2) and Song & Ermon 2020 ("Understanding the Limitations of Variational Mutual
Information Estimators", ICLR):

- :func:`infonce`: ``log B + mean_i [f_ii - logsumexp_j f_ij]`` (Oord et al. 2018; Poole eq. 12),
  at most ``log B``. The same cross entropy as :class:`selfsup.losses.InfoNCE`
  (:func:`selfsup.losses.infonce.cross_entropy_bound` is the one implementation).
- :func:`nwj`: ``E_p[f] - e^-1 E_q[e^f]`` (Nguyen, Wainwright & Jordan 2010; Poole's I_NWJ),
  tight at ``f = 1 + log p(x,y)/(p(x)p(y))``; unbiased but high-variance.
- :func:`js`: trains the critic on the Jensen-Shannon f-GAN bound (Nowozin et al. 2016), the
  objective of Deep InfoMax (Hjelm et al. 2019), and reads MI as NWJ on the same critic
  (Poole et al. section 2.3). The JS optimum is ``f = log ratio``, NWJ's is ``1 + log ratio``,
  so the MI is read as ``NWJ(f + 1)``, which equals the MI at the JS optimum. (The code
  accompanying Song & Ermon 2020 reads ``NWJ(f)``, which is ``1/e`` nats lower there;
  ``nwj_offset=0`` gives that reading.)
- :func:`dv`: Donsker-Varadhan ``E_p[f] - log E_q[e^f]``, with MINE's bias-corrected gradient
  (Belghazi et al. 2018, section 3.2): the gradient of ``log E_q[e^f]`` is
  ``grad E_q[e^f] / E_q[e^f]``, whose minibatch estimate is biased; MINE divides by a moving
  average of the denominator instead. ``ema=None`` gives the plain DV gradient. The value is
  DV's on the batch either way.
- :func:`smile`: DV's value with the partition term computed on ``clip(f, -tau, tau)``, trained
  with JS's gradient (Song & Ermon 2020, eq. 17); ``tau=None`` (no clip) gives DV's value.

Tensor shapes: ``scores`` ``[B, B]`` with ``B >= 2``, any float dtype (computed in float32 or
float64). Raises ``ValueError`` for a score matrix that is not square or has fewer than 2 rows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.infonce import cross_entropy_bound, full_precision

BOUNDS = ("infonce", "nwj", "js", "dv", "smile")


class Bound(NamedTuple):
    loss: Tensor  # scalar, minimised by training (carries the gradient)
    mi: Tensor  # scalar, the MI estimate in nats (detached)


def _check(scores: Tensor) -> Tensor:
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise ValueError(f"scores must be a square [B, B] matrix with B >= 2 (row i: x_i against every y_j), "
                         f"got shape {tuple(scores.shape)}")
    return full_precision(scores)


def off_diagonal(scores: Tensor) -> Tensor:
    """The B(B-1) off-diagonal entries of ``scores`` ``[B, B]`` as a vector ``[B(B-1)]``."""
    b = scores.shape[0]
    return scores.masked_select(~torch.eye(b, dtype=torch.bool, device=scores.device))


def log_mean_exp_marginal(scores: Tensor) -> Tensor:
    """``log mean_{i != j} exp(scores_ij)``: the log of the critic's exponential averaged over
    the product of marginals (the off-diagonal pairs)."""
    off = off_diagonal(scores)  # [B(B-1)]
    return torch.logsumexp(off, 0) - math.log(off.numel())


def infonce(scores: Tensor) -> Bound:
    """InfoNCE (module docstring): loss = the cross entropy of picking y_i for x_i among the B
    candidates of row i; MI = ``log B - loss``."""
    s = _check(scores)
    out = cross_entropy_bound(s, torch.arange(s.shape[0], device=s.device))
    return Bound(out.loss, out.mi_bound)


def nwj_value(scores: Tensor, offset: float = 0.0) -> Tensor:
    """``E_p[f + offset] - e^-1 E_q[e^(f + offset)]`` on ``scores`` (with its gradient)."""
    s = scores + offset
    return s.diagonal().mean() - torch.exp(log_mean_exp_marginal(s) - 1.0)


def nwj(scores: Tensor) -> Bound:
    """NWJ (module docstring): loss = -I_NWJ, MI = I_NWJ."""
    value = nwj_value(_check(scores))
    return Bound(-value, value.detach())


def js_divergence_bound(scores: Tensor) -> Tensor:
    """The f-GAN lower bound on the Jensen-Shannon divergence (Nowozin et al. 2016), as Deep
    InfoMax trains it: ``E_p[-softplus(-f)] - E_q[softplus(f)]`` (with its gradient)."""
    return -F.softplus(-scores.diagonal()).mean() - F.softplus(off_diagonal(scores)).mean()


def js(scores: Tensor, nwj_offset: float = 1.0) -> Bound:
    """JS-trained critic, MI read by NWJ (module docstring): loss = -JS bound;
    MI = ``I_NWJ(f + nwj_offset)``."""
    s = _check(scores)
    return Bound(-js_divergence_bound(s), nwj_value(s.detach(), nwj_offset))


def dv_value(scores: Tensor) -> Tensor:
    """Donsker-Varadhan ``E_p[f] - log E_q[e^f]`` on ``scores`` (with its gradient)."""
    return scores.diagonal().mean() - log_mean_exp_marginal(scores)


def dv(scores: Tensor, ema: Tensor | None = None, momentum: float = 0.9) -> tuple[Bound, Tensor | None]:
    """Donsker-Varadhan / MINE (module docstring). ``ema``: the moving average of ``E_q[e^f]``
    from the step before (a 0-d tensor; None: the plain DV gradient, no average kept).

    Returns ``(Bound, new_ema)``: with ``ema``, the loss's gradient is
    ``-(grad E_p[f] - grad E_q[e^f] / new_ema)``, where ``new_ema = momentum * ema +
    (1 - momentum) * E_q[e^f]`` (Belghazi et al. 2018, section 3.2); pass ``new_ema`` to the
    next step. Start MINE with ``ema = torch.tensor(1.0)``."""
    s = _check(scores)
    value = dv_value(s)
    if ema is None:
        return Bound(-value, value.detach()), None
    partition = torch.exp(log_mean_exp_marginal(s))  # E_q[e^f] on the batch, with its gradient
    new_ema = (momentum * ema.to(partition) + (1 - momentum) * partition.detach()).clamp_min(1e-4)
    # value of DV, gradient of E_p[f] - E_q[e^f] / new_ema (the two partition terms cancel in value)
    surrogate = s.diagonal().mean() - partition / new_ema + (partition / new_ema).detach() \
        - log_mean_exp_marginal(s).detach()
    return Bound(-surrogate, value.detach()), new_ema


def smile(scores: Tensor, tau: float | None = 5.0) -> Bound:
    """SMILE (module docstring): loss = -JS bound; MI = ``E_p[f] - log E_q[e^clip(f, -tau, tau)]``."""
    s = _check(scores)
    clipped = s if tau is None else s.clamp(-tau, tau)
    mi = s.diagonal().mean() - log_mean_exp_marginal(clipped)
    return Bound(-js_divergence_bound(s), mi.detach())


# --------------------------------------------------------------------------- critics


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """``in_dim -> hidden`` (ReLU) ``-> hidden`` (ReLU) x ``layers`` ``-> out_dim``: the critic
    network of Poole et al. 2019 and Song & Ermon 2020 (hidden 256, layers 2 there)."""
    blocks: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.ReLU()]
    for _ in range(layers):
        blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(hidden, out_dim))


class SeparableCritic(nn.Module):
    """``f(x, y) = g(x) . h(y)``: two embeddings and an inner product, the critic of every
    contrastive method. ``forward(x [B, Dx], y [B, Dy]) -> scores [B, B]``."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 256, embed: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.g = mlp(x_dim, hidden, embed, layers)
        self.h = mlp(y_dim, hidden, embed, layers)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.g(x) @ self.h(y).T  # [B, B]


class ConcatCritic(nn.Module):
    """``f(x, y) = MLP([x, y])``: one network on every concatenated pair (B^2 evaluations; more
    expressive than a separable critic). ``forward(x [B, Dx], y [B, Dy]) -> scores [B, B]``.
    The first layer is applied to x and y separately and summed per pair, which equals the
    layer on the concatenation and costs O(B) instead of O(B^2)."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.x_in = nn.Linear(x_dim, hidden)
        self.y_in = nn.Linear(y_dim, hidden, bias=False)
        # the layers after the first: [Linear(H, H), ReLU] x layers, Linear(H, 1), as in mlp()
        self.out = mlp(hidden, hidden, 1, layers - 1) if layers > 0 else nn.Linear(hidden, 1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        pair = self.x_in(x)[:, None, :] + self.y_in(y)[None, :, :]  # [B, B, H]: W [x_i, y_j] + b
        return self.out(torch.relu(pair)).squeeze(-1)  # [B, B]
