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
  average of the denominator instead (carried as its log, ``log_ema``). ``log_ema=None`` gives
  the plain DV gradient. The value is DV's on the batch either way.
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


def dv(scores: Tensor, log_ema: Tensor | None = None, momentum: float = 0.9,
       target: Tensor | None = None) -> tuple[Bound, Tensor | None]:
    """Donsker-Varadhan / MINE (module docstring). ``log_ema``: the log of the moving average of
    ``E_q[e^f]`` from the step before (a 0-d tensor; None: the plain DV gradient, no average kept).

    Returns ``(Bound, new_log_ema)``: with ``log_ema``, the loss's gradient is
    ``-(grad E_p[f] - grad E_q[e^f] / new_ema)``, where ``new_ema = momentum * ema +
    (1 - momentum) * E_q[e^f]`` (Belghazi et al. 2018, section 3.2), floored at 1e-4 as in the code
    of Song & Ermon 2020; ``new_log_ema`` (float64) is its log: pass it to the next step. Start
    MINE with ``log_ema = torch.tensor(0.0)`` (an average of 1, as MINE starts).

    The average is carried as its log: the partition ``E_q[e^f]`` of a critic with scores above
    about 88 overflows float32 and above about 709 float64, and an average held as a number turned
    inf there, so that ``E_q[e^f] / new_ema`` was 0 (or inf / inf = NaN) from then on: the partition
    term's gradient was gone and training pushed the joint scores up alone (the staircase's
    concatenated MINE critic reached scores of 6e7, an estimate of -3.4e6 nats).

    MINE's gradient, unlike DV's value, is not invariant to adding a constant to the critic: its
    component along that constant is ``1 - E_q[e^f] / new_ema`` per step (DV's gradient: 0). The
    batch is part of ``new_ema``, so the ratio is at most ``1 / (1 - momentum)``, reached on the rare
    large batches that carry the mean of a heavy-tailed ``E_q[e^f]`` (a critic of a large MI): the
    ratio's mean falls below 1 and the critic's scores drift up, step after step (the "drifting" of
    MINE's constant term, Choi & Lee 2020, "Regularized Mutual Information Neural Estimation").
    Measured on the Gaussian staircase (benchmarks/mi_bounds.py, concatenated critic 64 wide, seed
    0, MINE's critic alone, momentum 0.9, the default of Song & Ermon's ``mine_lower_bound``): the
    ratio's median per level 1.00, 0.94, 0.79, 0.17, 0.00 and its mean 1.00, 1.00, 0.98, 0.82, 0.49
    at 2 to 10 nats (its maximum 10.00 at 8 and 10); ``log E_q[e^f]`` at 197 by the end of 8 nats
    and 1.5e4 at 10; the estimate diverged at 10 nats with the average carried as its log too (mean
    -473 nats, -3.4e6 with the average that overflowed). With momentum 0.99 (ratio up to 100) the
    same critic did not drift (``log E_q[e^f]`` within -1.3 and 0.95 at each level's end) and read
    1.79, 3.67, 5.48, 7.18 and 8.96 nats; at 10 nats alone from a fresh critic, 4,000 steps,
    ``log E_q[e^f]`` reached 1.1e6 with momentum 0.5, 60 with 0.9 and stayed below 3 with 0.99.
    Song & Ermon's code has this moving-average function but trains no critic with it (their
    Figure 1: CPC, NWJ, SMILE and a flow model; its float32 average would be inf / inf = NaN once
    ``log E_q[e^f]`` passed 88, by 8 nats here)."""
    p = pairs(scores, target)
    value = dv_value(p)
    if log_ema is None:
        return Bound(-value, value.detach()), None
    log_partition = log_mean_exp(p.marginal)  # log E_q[e^f] on the batch, with its gradient
    floor = math.log(1e-4)
    prev = torch.as_tensor(log_ema, dtype=torch.float64, device=scores.device).clamp_min(floor)
    log_m, log_1m = (math.log(m) if m > 0 else -math.inf for m in (momentum, 1 - momentum))
    log_new = torch.logaddexp(prev + log_m, log_partition.detach().double() + log_1m).clamp_min(floor)  # float64
    ratio = torch.exp(log_partition - log_new.to(log_partition))  # E_q[e^f] / new_ema, with its gradient
    # value of DV, gradient of E_p[f] - E_q[e^f] / new_ema (the two partition terms cancel in value)
    surrogate = p.joint.mean() - ratio + ratio.detach() - log_partition.detach()
    return Bound(-surrogate, value.detach()), log_new


def smile(scores: Tensor, tau: float | None = 5.0, target: Tensor | None = None) -> Bound:
    """SMILE (module docstring): loss = -JS bound; MI = ``E_p[f] - log E_q[e^clip(f, -tau, tau)]``."""
    p = pairs(scores, target)
    marginal = p.marginal if tau is None else p.marginal.clamp(-tau, tau)
    mi = p.joint.mean() - log_mean_exp(marginal)
    return Bound(-js_divergence_bound(scores, target), mi.detach())


def estimate(name: str, scores: Tensor, target: Tensor | None = None, log_ema: Tensor | None = None,
             tau: float = 5.0, momentum: float = 0.9) -> tuple[Bound, Tensor | None]:
    """The bound ``name`` (one of :data:`BOUNDS`) on ``scores``: ``(Bound, new_log_ema)``; ``dv`` is
    MINE's when ``log_ema`` is given (the log of the moving average, to carry to the next step;
    see :func:`dv`; ``momentum``: its rate), the others return ``log_ema`` unchanged. ``tau``:
    SMILE's clip.

    Raises:
        ValueError: an unknown name (listing :data:`BOUNDS`), or bad scores (see :func:`pairs`).
    """
    if name == "infonce":
        return infonce(scores, target), log_ema
    if name == "nwj":
        return nwj(scores, target), log_ema
    if name == "js":
        return js(scores, target), log_ema
    if name == "dv":
        return dv(scores, log_ema, momentum, target)
    if name == "smile":
        return smile(scores, tau, target), log_ema
    raise ValueError(f"unknown MI bound {name!r}: choose from {', '.join(BOUNDS)}")


class ContrastiveBound(nn.Module):
    """A contrastive method's InfoNCE criterion with its scores read by another MI bound
    (``method.estimator``): the same critic (temperature-scaled cosine similarities of the
    method's positives and negatives: the batch, a queue, SimCLR's 2N views), the bound
    ``estimator`` for the loss and the MI estimate. ``infonce`` is the criterion itself,
    unchanged. Symmetric criteria average the two directions. ``dv`` keeps the log of MINE's
    moving average of ``E_q[e^f]`` in a buffer (``log_ema``; see :func:`dv`) that checkpoints
    leave out (a resume starts it again at log 1 = 0, as MINE starts the average; the
    checkpoints of methods without it keep loading).

    ``forward(query [B, D], key [B, D], negatives [K, D] | None) -> LossOutput``
    (``candidates``: the scored candidates per row).
    """

    def __init__(self, criterion: InfoNCE, estimator: str = "infonce", tau: float = 5.0,
                 momentum: float = 0.9) -> None:
        super().__init__()
        if estimator not in BOUNDS:
            raise ValueError(f"unknown MI bound {estimator!r}: choose from {', '.join(BOUNDS)}")
        self.criterion, self.estimator, self.tau, self.momentum = criterion, estimator, tau, momentum
        self.register_buffer("log_ema", torch.tensor(0.0), persistent=False)

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> LossOutput:
        if self.estimator == "infonce":
            return self.criterion(query, key, negatives)
        losses, mis, candidates = [], [], 0
        for scores, target in self.criterion.score_matrices(query, key, negatives):  # [B, N'], [B]
            bound, new_log_ema = estimate(self.estimator, scores, target,
                                          self.log_ema if self.estimator == "dv" else None, self.tau, self.momentum)
            if new_log_ema is not None and self.training:
                self.log_ema.copy_(new_log_ema)
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
