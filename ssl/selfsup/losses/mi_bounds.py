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
float64). A contrastive method's scores are rectangular, ``[B, N]`` with the positive of row i
in column ``target[i]`` (a queue or memory bank of negatives, or SimCLR's 2N views): pass
``target`` ``[B]``; the other entries of each row are its marginal pairs, and entries equal to
-inf are no candidates (an anchor against itself). Raises ``ValueError`` for a square matrix
with fewer than 2 rows, a non-square one without ``target``, or a row with no marginal pair.

:func:`estimate` picks a bound by name (``method.estimator`` of the contrastive methods).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.infonce import InfoNCE, LossOutput, cross_entropy_bound, full_precision

BOUNDS = ("infonce", "nwj", "js", "dv", "smile")


class Bound(NamedTuple):
    loss: Tensor  # scalar, minimised by training (carries the gradient)
    mi: Tensor  # scalar, the MI estimate in nats (detached)


class Pairs(NamedTuple):
    """The scores of one critic split by where the pair was drawn from."""

    scores: Tensor  # [B, N], full precision
    target: Tensor  # [B], the positive's column per row
    joint: Tensor  # [B], scores of the pairs from p(x, y)
    marginal: Tensor  # [M], scores of the pairs from p(x) p(y) (the finite non-positive entries)
    candidates: int  # N': the finite entries of each row, the positive included (the same in every row)


def pairs(scores: Tensor, target: Tensor | None = None) -> Pairs:
    """Split ``scores`` ``[B, N]`` into joint and marginal pairs (module docstring)."""
    if target is None and (scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2):
        raise ValueError(f"scores must be a square [B, B] matrix with B >= 2 (row i: x_i against every y_j), "
                         f"got shape {tuple(scores.shape)}; pass target for a [B, N] matrix")
    s = full_precision(scores)
    target = torch.arange(s.shape[0], device=s.device) if target is None else target
    if s.ndim != 2 or target.shape != (s.shape[0],) or s.shape[1] < 2:
        raise ValueError(f"scores must be [B, N] with N >= 2 and target [B], got {tuple(s.shape)} and "
                         f"{tuple(target.shape)}")
    positive = torch.zeros_like(s, dtype=torch.bool)
    positive[torch.arange(s.shape[0], device=s.device), target] = True
    joint = s[positive]  # [B]
    marginal = s[~positive & (s != float("-inf"))]  # [M]
    if marginal.numel() == 0:
        raise ValueError("scores hold no marginal pair (every entry besides the positives is -inf)")
    per_row = (s != float("-inf")).sum(1)  # [B]
    if bool((per_row != per_row[0]).any()):  # InfoNCE's log N would be wrong for some rows
        raise ValueError(f"every row must have the same number of candidates (non -inf entries), got "
                         f"{sorted(set(per_row.tolist()))}")
    return Pairs(s, target, joint, marginal, int(per_row[0]))


def log_mean_exp(values: Tensor) -> Tensor:
    """``log mean exp(values)`` of a vector: with the marginal pairs, the log of the critic's
    exponential averaged over the product of marginals."""
    return torch.logsumexp(values, 0) - math.log(values.numel())


def infonce(scores: Tensor, target: Tensor | None = None) -> Bound:
    """InfoNCE (module docstring): loss = the cross entropy of picking the positive among the
    candidates of its row; MI = ``log N - loss`` (N: the finite candidates of a row)."""
    p = pairs(scores, target)
    out = cross_entropy_bound(p.scores, p.target, p.scores.shape[1] - p.candidates)
    return Bound(out.loss, out.mi_bound)


def nwj_value(p: Pairs, offset: float = 0.0) -> Tensor:
    """``E_p[f + offset] - e^-1 E_q[e^(f + offset)]`` (with its gradient)."""
    return p.joint.mean() + offset - torch.exp(log_mean_exp(p.marginal) + offset - 1.0)


def nwj(scores: Tensor, target: Tensor | None = None) -> Bound:
    """NWJ (module docstring): loss = -I_NWJ, MI = I_NWJ."""
    value = nwj_value(pairs(scores, target))
    return Bound(-value, value.detach())


def js_divergence_bound(scores: Tensor, target: Tensor | None = None) -> Tensor:
    """The f-GAN lower bound on the Jensen-Shannon divergence (Nowozin et al. 2016), as Deep
    InfoMax trains it: ``E_p[-softplus(-f)] - E_q[softplus(f)]`` (with its gradient)."""
    p = pairs(scores, target)
    return -F.softplus(-p.joint).mean() - F.softplus(p.marginal).mean()


def js(scores: Tensor, target: Tensor | None = None, nwj_offset: float = 1.0) -> Bound:
    """JS-trained critic, MI read by NWJ (module docstring): loss = -JS bound;
    MI = ``I_NWJ(f + nwj_offset)``."""
    p = pairs(scores, target)
    detached = p._replace(joint=p.joint.detach(), marginal=p.marginal.detach())
    return Bound(-js_divergence_bound(scores, target), nwj_value(detached, nwj_offset))


def dv_value(p: Pairs) -> Tensor:
    """Donsker-Varadhan ``E_p[f] - log E_q[e^f]`` (with its gradient)."""
    return p.joint.mean() - log_mean_exp(p.marginal)


def dv(scores: Tensor, ema: Tensor | None = None, momentum: float = 0.9,
       target: Tensor | None = None) -> tuple[Bound, Tensor | None]:
    """Donsker-Varadhan / MINE (module docstring). ``ema``: the moving average of ``E_q[e^f]``
    from the step before (a 0-d tensor; None: the plain DV gradient, no average kept).

    Returns ``(Bound, new_ema)``: with ``ema``, the loss's gradient is
    ``-(grad E_p[f] - grad E_q[e^f] / new_ema)``, where ``new_ema = momentum * ema +
    (1 - momentum) * E_q[e^f]`` (Belghazi et al. 2018, section 3.2); pass ``new_ema`` to the
    next step. Start MINE with ``ema = torch.tensor(1.0)``.

    The average is updated in log space and returned in float64, and ``E_q[e^f] / new_ema`` is
    ``exp(log E_q[e^f] - log new_ema)``: a critic whose ``E_q[e^f]`` overflows float32 (f above
    about 88) would otherwise give inf / inf = NaN and end training."""
    p = pairs(scores, target)
    value = dv_value(p)
    if ema is None:
        return Bound(-value, value.detach()), None
    log_partition = log_mean_exp(p.marginal)  # log E_q[e^f] on the batch, with its gradient
    prev = torch.as_tensor(ema, dtype=torch.float64, device=scores.device).clamp_min(1e-4)
    log_m, log_1m = (math.log(m) if m > 0 else -math.inf for m in (momentum, 1 - momentum))
    log_new = torch.logaddexp(prev.log() + log_m, log_partition.detach().double() + log_1m)
    log_new = log_new.clamp_min(math.log(1e-4))  # log new_ema, float64
    ratio = torch.exp(log_partition - log_new.to(log_partition))  # E_q[e^f] / new_ema, with its gradient
    # value of DV, gradient of E_p[f] - E_q[e^f] / new_ema (the two partition terms cancel in value)
    surrogate = p.joint.mean() - ratio + ratio.detach() - log_partition.detach()
    return Bound(-surrogate, value.detach()), torch.exp(log_new)


def smile(scores: Tensor, tau: float | None = 5.0, target: Tensor | None = None) -> Bound:
    """SMILE (module docstring): loss = -JS bound; MI = ``E_p[f] - log E_q[e^clip(f, -tau, tau)]``."""
    p = pairs(scores, target)
    marginal = p.marginal if tau is None else p.marginal.clamp(-tau, tau)
    mi = p.joint.mean() - log_mean_exp(marginal)
    return Bound(-js_divergence_bound(scores, target), mi.detach())


def estimate(name: str, scores: Tensor, target: Tensor | None = None, ema: Tensor | None = None,
             tau: float = 5.0) -> tuple[Bound, Tensor | None]:
    """The bound ``name`` (one of :data:`BOUNDS`) on ``scores``: ``(Bound, new_ema)``; ``dv`` is
    MINE's when ``ema`` is given (the moving average to carry to the next step), the others
    return ``ema`` unchanged. ``tau``: SMILE's clip.

    Raises:
        ValueError: an unknown name (listing :data:`BOUNDS`), or bad scores (see :func:`pairs`).
    """
    if name == "infonce":
        return infonce(scores, target), ema
    if name == "nwj":
        return nwj(scores, target), ema
    if name == "js":
        return js(scores, target), ema
    if name == "dv":
        return dv(scores, ema, target=target)
    if name == "smile":
        return smile(scores, tau, target), ema
    raise ValueError(f"unknown MI bound {name!r}: choose from {', '.join(BOUNDS)}")


class ContrastiveBound(nn.Module):
    """A contrastive method's InfoNCE criterion with its scores read by another MI bound
    (``method.estimator``): the same critic (temperature-scaled cosine similarities of the
    method's positives and negatives: the batch, a queue, SimCLR's 2N views), the bound
    ``estimator`` for the loss and the MI estimate. ``infonce`` is the criterion itself,
    unchanged. Symmetric criteria average the two directions. ``dv`` keeps MINE's moving
    average of ``E_q[e^f]`` in a buffer that checkpoints leave out (a resume starts it again
    at 1, as MINE starts it; the checkpoints of methods without it keep loading).

    ``forward(query [B, D], key [B, D], negatives [K, D] | None) -> LossOutput``
    (``candidates``: the scored candidates per row).
    """

    def __init__(self, criterion: InfoNCE, estimator: str = "infonce", tau: float = 5.0,
                 momentum: float = 0.9) -> None:
        super().__init__()
        if estimator not in BOUNDS:
            raise ValueError(f"unknown MI bound {estimator!r}: choose from {', '.join(BOUNDS)}")
        self.criterion, self.estimator, self.tau, self.momentum = criterion, estimator, tau, momentum
        self.register_buffer("ema", torch.tensor(1.0), persistent=False)

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> LossOutput:
        if self.estimator == "infonce":
            return self.criterion(query, key, negatives)
        losses, mis, candidates = [], [], 0
        for scores, target in self.criterion.score_matrices(query, key, negatives):  # [B, N'], [B]
            bound, new_ema = estimate(self.estimator, scores, target, self.ema if self.estimator == "dv" else None,
                                      self.tau)
            if new_ema is not None and self.training:
                self.ema.copy_(new_ema)
            losses.append(bound.loss)
            mis.append(bound.mi)
            candidates = pairs(scores, target).candidates
        return LossOutput(torch.stack(losses).mean(), torch.stack(mis).mean(), candidates)


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
