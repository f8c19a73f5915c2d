"""The Gaussian staircase of Song & Ermon 2020 (Figure 1; after Poole et al. 2019, Figure 2):
the MI estimators of :mod:`selfsup.losses.mi_bounds` read critics trained while the true MI
steps through 2, 4, 6, 8 and 10 nats: one critic per training objective (InfoNCE, NWJ, JS, MINE),
JS's also read by SMILE at tau 1, 5 and infinity (SMILE trains on JS: :data:`CRITICS`).

Data: X, Y in 20 dimensions, componentwise correlated Gaussians, ``y = rho x + sqrt(1 - rho^2) e``
with ``I(X; Y) = -10 log(1 - rho^2)``; ``--cubic`` replaces y by y^3 (the MI is unchanged, the
critic's job harder). Batch 64; ``--steps`` per level (4,000 in the paper); Adam, lr 5e-4.
Critics as in the paper: separable (two MLPs, 256 wide, 2 hidden layers, 32-d embeddings,
an inner product) and concatenated (one MLP on [x, y], 2 hidden layers, ``--concat-hidden``
wide: the paper's 256 costs about 16 times the default's compute on the 64 x 64 pairs, so the
default here is 64 and the table says so).

Estimators: InfoNCE (CPC), NWJ, JS (critic trained on Jensen-Shannon, MI read by NWJ),
MINE (DV with the moving-average gradient, momentum 0.9, the default of Song & Ermon's
``mine_lower_bound``), SMILE with tau = 1, 5 and infinity. MINE's gradient, unlike DV's value,
moves a constant added to the critic; each critic's section of the md gives MINE's measured
gradient weight on its partition term and the critic's drift per level (:func:`mine_diagnostics`;
why it diverged with the concatenated critic at 10 nats: :func:`selfsup.losses.mi_bounds.dv`).

Speed: the four critics train together as one batch of networks (until 2026-12-01 seven, one per
estimator, the three SMILE critics trained as JS's: 4/7 of the compute now; a step, one thread,
memory kept: separable 14.3 -> 8.8 ms, concatenated 28.7 -> 17.6 ms): each
layer's weights of the critics are one ``[C, in, out]`` tensor (the separable critic's
two towers: ``[2C, in, out]``) applied with one ``baddbmm``; the four objectives and seven readouts
are computed on the ``[C, B, B]`` score matrix at once (:func:`objective`); one Adam steps the stacked
parameters (Adam is elementwise, so this equals separate Adams); a level's Gaussian
samples are drawn before its steps. The concatenated critics' B x B pairs go through
:class:`PairMLP` (the first layer on x and on y once, summed per pair; the later layers one
critic at a time with a hand-written backward): ``--time-step`` measured a step at 41.8 ms
through autograd against 29.4 ms through it (1.42x; median thread CPU time, one thread, in turns
in one process, load average 0.3; before freed memory was kept); with memory kept, 33.8 against
28.7 ms (1.18x, load average 1.5; the matrix products, the same in both, are most of what is
left). Freed memory is kept for reuse (:func:`keep_freed_memory`): the ``[E, B B, H]``
activations of each step came from fresh pages, which the kernel zeroes on first touch (300 to
6,000 page faults a step, 0 now). In one process, glibc's default and then memory kept: 35.0 ->
21.8 and 39.8 -> 25.6 ms a step, in two processes (PairMLP; median thread CPU time of 8 blocks of
20 steps, one thread, load average about 2 on 2 cores; the same without the change: 35.2 -> 32.8
and 33.3 -> 36.9). Each piece equals its per-estimator reference to float precision: the critics of
:mod:`selfsup.losses.mi_bounds` (and a plain concatenated critic, one ``nn.Linear`` on
``[x_i, y_j]``) and the bound functions there (tests/test_mi_bounds.py checks them, and an Adam
step).

Per level, from the estimates after the first 20% of its steps (the critic's catch-up after a
jump is left out): bias (mean - true), variance and MSE, as in Song & Ermon's Figure 3. The
published findings are checked in the output, each with its criterion stated
(:func:`findings`).

    python benchmarks/mi_bounds.py [--steps 4000] [--critics separable,concat] [--cubic] [--seed 0]
                                   [--jobs N] [--threads N] [--out DIR]

By default each critic trains in its own process (up to the cores) and the cores are shared among
them: on 2 cores, the two critics side by side at one thread each (``--jobs 2 --threads 1``).
    python benchmarks/mi_bounds.py --recheck benchmarks/results/mi_bounds.json
    python benchmarks/mi_bounds.py --time-step [--threads 1]

Prints JSON; writes benchmarks/results/mi_bounds{,-cubic}.{json,md,png,npz} (after each critic;
the npz: the estimates as computed, float32, for the figure; a local file the repository does not
carry, which a later run of the other critic reads to redraw both rows). A run of one critic keeps the other critic's
results already there when they ran the same ``--steps``, ``--seed`` (and ``--concat-hidden``);
each critic's section names its command. ``--recheck`` applies the current criteria to a
finished run's statistics.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ssl"), str(ROOT / "benchmarks")]  # selfsup; machine.py

from machine import cpu_name  # noqa: E402
from selfsup.losses.mi_bounds import ConcatCritic, SeparableCritic  # noqa: E402

DIM, BATCH, LR, MOMENTUM = 20, 64, 5e-4, 0.9
LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)
BURN_IN = 0.2
KINDS = ("separable", "concat")


def mi_to_rho(mi: float, dim: int = DIM) -> float:
    """The componentwise correlation whose ``dim`` pairs carry ``mi`` nats: I = -dim/2 log(1 - rho^2)."""
    return math.sqrt(1 - math.exp(-2 * mi / dim))


def level_samples(rho: float, steps: int, g: torch.Generator, cubic: bool) -> tuple[Tensor, Tensor]:
    """A level's batches, drawn at once: x, y ``[steps, BATCH, DIM]`` with corr(x_k, y_k) = rho;
    y cubed with ``cubic``."""
    x = torch.randn(steps, BATCH, DIM, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(steps, BATCH, DIM, generator=g)
    return x, y**3 if cubic else y


class Estimator(NamedTuple):
    """An estimator: the objective its critic trains on and the bound its MI is read by.

    ``loss``: ``infonce`` | ``nwj`` | ``js`` (the JS divergence bound) | ``mine`` (DV's value,
    MINE's moving-average gradient). ``readout``: ``infonce`` | ``nwj`` | ``js`` (NWJ at f + 1) |
    ``smile`` (DV with the partition term on clip(f, -tau, tau); ``tau=None``: DV)."""

    name: str
    loss: str
    readout: str
    tau: float | None = None


ESTIMATORS = (Estimator("InfoNCE", "infonce", "infonce"), Estimator("NWJ", "nwj", "nwj"),
              Estimator("JS", "js", "js"), Estimator("MINE", "mine", "smile"),
              Estimator("SMILE (tau=1)", "js", "smile", 1.0), Estimator("SMILE (tau=5)", "js", "smile", 5.0),
              Estimator("SMILE (tau=inf)", "js", "smile"))
# One critic per training objective. JS and the three SMILE readouts train the same objective (SMILE is DV's
# readout of a critic trained on JS: the value of Song & Ermon's smile_lower_bound is the clipped DV, its
# gradient JS's), on the same batches, so one critic serves all four: what four critics trained alike would
# give up to their random initialisation, at 4/7 of the compute, and the readouts compared on one critic.
CRITICS = tuple(dict.fromkeys(est.loss for est in ESTIMATORS))  # ("infonce", "nwj", "js", "mine")


def critic_index(est: Estimator, critics: tuple[str, ...] = CRITICS) -> int:
    """Which critic (row of the ``[C, B, B]`` scores) ``est`` reads: the one trained on its loss."""
    return critics.index(est.loss)


def _log_mean_exp(v: Tensor) -> Tensor:
    """``log mean exp`` over the last dimension: ``[..., M] -> [...]``."""
    return torch.logsumexp(v, -1) - math.log(v.shape[-1])


def _off_diagonal(scores: Tensor) -> Tensor:
    """The marginal pairs of each matrix, row by row: ``[E, B, B] -> [E, B(B-1)]`` (the entries
    between consecutive diagonal entries of the flattened matrix)."""
    e, b = scores.shape[0], scores.shape[1]
    return scores.flatten(1)[:, 1:].view(e, b - 1, b + 1)[:, :, :b].reshape(e, b * (b - 1))


def objective(scores: Tensor, log_ema: Tensor, ests: tuple[Estimator, ...] = ESTIMATORS,
              critics: tuple[str, ...] = CRITICS) -> tuple[Tensor, Tensor, Tensor]:
    """The training objectives of ``critics`` and the MI estimates of ``ests`` at once.

    ``scores`` ``[C, B, B]`` (row c: the critic trained on objective ``critics[c]``; diagonals: the
    joint pairs), ``log_ema`` ``[R]``: the logs of MINE's moving averages of ``E_q[e^f]`` (one per
    ``mine`` critic, in order; start at 0, an average of 1). Returns ``(loss, mi, new_log_ema)``:
    ``loss`` the sum of the critics' losses (the critics are disjoint, so each gets its own
    objective's gradient), ``mi`` ``[E]`` (detached; estimator e read off its critic,
    :func:`critic_index`), ``new_log_ema`` ``[R]`` (float64). Each equals
    :mod:`selfsup.losses.mi_bounds`'s function on its critic's matrix (infonce, nwj, js, dv with
    ``log_ema``, smile), which tests/test_mi_bounds.py checks, values and gradients.
    """
    joint_pairs = scores.diagonal(dim1=1, dim2=2)  # [C, B]
    marginal = _off_diagonal(scores)  # [C, B(B-1)]
    joint, lme = joint_pairs.mean(1), _log_mean_exp(marginal)  # [C], [C]
    rows = {kind: [c for c, loss in enumerate(critics) if loss == kind] for kind in ("infonce", "nwj", "js", "mine")}
    # each objective only on its own rows: an objective's overflow elsewhere (NWJ's e^f on a
    # JS-trained critic) must not reach another critic's gradient as 0 * inf
    loss = scores.new_zeros(())
    if r := rows["infonce"]:
        loss = loss + (torch.logsumexp(scores[r], 2) - joint_pairs[r]).mean(1).sum()  # the cross entropy
    if r := rows["nwj"]:
        loss = loss - (joint[r] - torch.exp(lme[r] - 1.0)).sum()
    if r := rows["js"]:  # minus the JS divergence bound
        loss = loss + (F.softplus(-joint_pairs[r]).mean(1) + F.softplus(marginal[r]).mean(1)).sum()
    new_log_ema = log_ema
    if r := rows["mine"]:
        # the library's update, the average carried as its log: E_q[e^f] overflows float32 above
        # scores of about 88 and float64 above 709 (an average held as a number turned inf there)
        floor = math.log(1e-4)
        new_log_ema = torch.logaddexp(log_ema.double().clamp_min(floor) + math.log(MOMENTUM),
                                      lme[r].detach().double() + math.log1p(-MOMENTUM)).clamp_min(floor)  # [R]
        ratio = torch.exp(lme[r] - new_log_ema.to(lme))  # [R], E_q[e^f] / new_ema, with its gradient
        loss = loss - (joint[r] - ratio + ratio.detach() - lme[r].detach()).sum()
    with torch.no_grad():
        read = [critic_index(est, critics) for est in ests]  # [E]: each estimator's critic
        mi = readouts(scores.detach()[read], joint.detach()[read], lme.detach()[read], marginal.detach()[read], ests)
    return loss, mi, new_log_ema


def readouts(scores: Tensor, joint: Tensor, lme: Tensor, marginal: Tensor, ests: tuple[Estimator, ...]) -> Tensor:
    """Each estimator's MI estimate from its critic's ``scores`` ``[E, B, B]``: ``joint`` ``[E]``
    the mean joint score, ``lme`` ``[E]`` the log mean exp of the marginal pairs ``marginal``
    ``[E, M]``. Returns ``[E]``."""
    infonce = math.log(scores.shape[1]) + (joint - torch.logsumexp(scores, 2).mean(1))
    by_kind = {"infonce": infonce, "nwj": joint - torch.exp(lme - 1.0), "js": joint + 1.0 - torch.exp(lme)}
    for tau in {est.tau for est in ests if est.readout == "smile"}:
        by_kind[f"smile{tau}"] = joint - (lme if tau is None else _log_mean_exp(marginal.clamp(-tau, tau)))
    keys = [est.readout + (str(est.tau) if est.readout == "smile" else "") for est in ests]
    return torch.stack([by_kind[k][i] for i, k in enumerate(keys)])  # [E]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks up to 32 MiB for reuse (``mallopt``: no ``mmap`` below
    32 MiB, no trimming of the heap below 1 GiB); returns whether it did (False off glibc).

    A concatenated-critic step allocates its ``[E, B B, H]`` activations afresh (7 MiB each at
    E = 7, B = H = 64); above glibc's mmap threshold each came from new pages, zeroed by the kernel
    on first touch: 300 to 6,000 page faults a step, 0 with this. The numbers computed do not change
    (only where the memory comes from)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1)


def make_critic(kind: str, concat_hidden: int) -> nn.Module:
    if kind == "separable":
        return SeparableCritic(DIM, DIM, hidden=256, embed=32, layers=2)
    return ConcatCritic(DIM, DIM, hidden=concat_hidden, layers=2)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _stack(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """The same layer of several networks: weight ``[n, in, out]``, bias ``[n, 1, out]`` (or None)."""
    weight = torch.stack([lin.weight.detach().T for lin in linears]).contiguous()
    bias = None if linears[0].bias is None else torch.stack([lin.bias.detach()[None] for lin in linears])
    return weight, bias


def stack_critics(kind: str, critics: list[nn.Module]) -> dict[str, Tensor]:
    """The weights of E critics of one kind (modules of :mod:`selfsup.losses.mi_bounds`) as
    stacked leaf tensors, copies: separable ``tower.{i}.weight`` ``[2E, in, out]`` (the x towers
    g of the E critics, then their y towers h) and ``tower.{i}.bias`` ``[2E, 1, out]``; concat
    ``x_in.*``, ``y_in.weight`` ``[E, D, H]`` and ``out.{i}.*``."""
    groups: dict[str, list[nn.Linear]] = {}
    if kind == "separable":
        towers = [c.g for c in critics] + [c.h for c in critics]
        for i, layer in enumerate(zip(*[_linears(t) for t in towers])):
            groups[f"tower.{i}"] = list(layer)
    else:
        groups["x_in"], groups["y_in"] = [c.x_in for c in critics], [c.y_in for c in critics]
        for i, layer in enumerate(zip(*[_linears(c.out) for c in critics])):
            groups[f"out.{i}"] = list(layer)
    params = {}
    for name, linears in groups.items():
        weight, bias = _stack(linears)
        params[f"{name}.weight"] = weight.requires_grad_(True)
        if bias is not None:
            params[f"{name}.bias"] = bias.requires_grad_(True)
    return params


def _mlp(params: dict[str, Tensor], prefix: str, h: Tensor) -> Tensor:
    """The stacked MLP ``{prefix}.{i}``: ``h`` ``[n, N, in] -> [n, N, out]``, ReLU between layers."""
    n_layers = sum(1 for k in params if k.startswith(prefix + ".") and k.endswith(".weight"))
    for i in range(n_layers):
        h = torch.baddbmm(params[f"{prefix}.{i}.bias"], h, params[f"{prefix}.{i}.weight"])  # [n, N, out]
        if i < n_layers - 1:
            h = torch.relu_(h)
    return h


class PairMLP(torch.autograd.Function):
    """The concatenated critics after their first layer, on every pair, with a hand-written
    backward: ``apply(ax, ay, w_1, b_1, ..., w_n, b_n) -> scores [E, B, B']``, ``scores[e, i, j] =
    mlp_e(relu(ax[e, i] + ay[e, j]))`` where ``ax`` ``[E, B, H]`` is the first layer on x (with its
    bias), ``ay`` ``[E, B', H]`` on y, and ``w_k`` ``[E, in, out]``, ``b_k`` ``[E, 1, out]`` the
    later layers (ReLU between them; the last ``out`` is 1).

    The maths of autograd through ``baddbmm`` and ``relu`` (the same ReLU gradient, 0 at 0), in
    fewer passes over the ``[B B', H]`` activations: one critic at a time (a critic's activations,
    1 MiB at B = H = 64, stay in the core's cache between a layer and its ReLU), the bias and ReLU
    in place, the ReLU masks of the backward taken from the saved activations in place (their
    sign) instead of fresh mask tensors. On one thread a concatenated-critic step was about 1.4x
    faster than autograd with every activation on fresh pages, 1.2x with freed memory kept
    (:func:`keep_freed_memory`; the matrix products, the same in both, are most of what is left).

    Raises:
        RuntimeError: a second backward through the same forward (its saved activations were
            overwritten by the first; autograd's check of saved tensors).
    """

    @staticmethod
    def forward(ctx: Any, ax: Tensor, ay: Tensor, *layers: Tensor) -> Tensor:
        e_n, b, h = ax.shape
        b2 = ay.shape[1]
        weights, biases = layers[0::2], layers[1::2]
        acts = [ax.new_empty(e_n, b * b2, w.shape[1]) for w in weights]  # each hidden layer's ReLU output [E, BB', H]
        scores = ax.new_empty(e_n, b * b2, 1)  # [E, BB', 1]
        for e in range(e_n):
            torch.add(ax[e, :, None], ay[e, None], out=acts[0][e].view(b, b2, h)).clamp_min_(0)  # relu(W [x_i, y_j] + b)
            for k in range(len(weights) - 1):
                torch.mm(acts[k][e], weights[k][e], out=acts[k + 1][e]).add_(biases[k][e]).clamp_min_(0)
            torch.addmm(biases[-1][e], acts[-1][e], weights[-1][e], out=scores[e])
        ctx.save_for_backward(*acts, *weights)
        return scores.view(e_n, b, b2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        saved = ctx.saved_tensors
        acts, weights = saved[:len(saved) // 2], saved[len(saved) // 2:]
        e_n, b, b2 = grad.shape
        g = grad.reshape(e_n, b * b2, 1)  # [E, BB', 1]
        d_weights = [torch.empty_like(w) for w in weights]
        d_biases = [grad.new_empty(e_n, 1, w.shape[2]) for w in weights]
        d_ax, d_ay = grad.new_empty(e_n, b, acts[0].shape[2]), grad.new_empty(e_n, b2, acts[0].shape[2])
        for e in range(e_n):
            torch.mm(acts[-1][e].T, g[e], out=d_weights[-1][e])
            torch.sum(g[e], 0, keepdim=True, out=d_biases[-1][e])
            dz = acts[-1][e].sign_().mul_(g[e]).mul_(weights[-1][e].T)  # [BB', H]: the last ReLU's input gradient
            for k in range(len(weights) - 2, -1, -1):
                torch.mm(acts[k][e].T, dz, out=d_weights[k][e])
                torch.sum(dz, 0, keepdim=True, out=d_biases[k][e])
                dz = torch.mm(dz, weights[k][e].T).mul_(acts[k][e].sign_())  # [BB', H]
            pair = dz.view(b, b2, -1)  # [B, B', H]: the gradient of W [x_i, y_j] + b
            torch.sum(pair, 1, out=d_ax[e])
            torch.sum(pair, 0, out=d_ay[e])
        return (d_ax, d_ay, *[t for pair in zip(d_weights, d_biases) for t in pair])


def stacked_scores(kind: str, params: dict[str, Tensor], x: Tensor, y: Tensor, pair_mlp: bool = True) -> Tensor:
    """Every critic's score matrix: ``x``, ``y`` ``[B, D]`` -> ``[E, B, B]`` (critic e: its
    ``f(x_i, y_j)``, as the critic module's forward). The concatenated critics' pairs go through
    :class:`PairMLP`; ``pair_mlp=False``: through autograd (``baddbmm`` and ``relu`` on the
    ``[E, B B, H]`` activations), the reference :func:`step_times` measures it against."""
    if kind == "separable":
        e = params["tower.0.weight"].shape[0] // 2
        inputs = torch.cat([x.expand(e, *x.shape), y.expand(e, *y.shape)])  # [2E, B, D]
        emb = _mlp(params, "tower", inputs)  # [2E, B, K]
        return torch.bmm(emb[:e], emb[e:].transpose(1, 2))  # [E, B, B]
    e = params["x_in.weight"].shape[0]
    ax = torch.baddbmm(params["x_in.bias"], x.expand(e, *x.shape), params["x_in.weight"])  # [E, B, H]
    ay = torch.bmm(y.expand(e, *y.shape), params["y_in.weight"])  # [E, B, H]
    if not pair_mlp:
        pair = torch.relu_(ax[:, :, None, :] + ay[:, None, :, :])  # [E, B, B, H]: relu(W [x_i, y_j] + b)
        return _mlp(params, "out", pair.view(e, x.shape[0] * y.shape[0], -1)).view(e, x.shape[0], y.shape[0])
    n_layers = sum(1 for k in params if k.startswith("out.") and k.endswith(".weight"))
    return PairMLP.apply(ax, ay, *[params[f"out.{i}.{w}"] for i in range(n_layers) for w in ("weight", "bias")])


def run(kind: str, steps: int, cubic: bool, seed: int, concat_hidden: int) -> dict[str, Any]:
    """Train every estimator's critic through the staircase; returns the estimates ``[T, E]``
    (``T = 5 steps``), the true MI per step ``[T]``, the seconds, the 1-minute load average
    sampled at each level's start and at the end, and MINE's gradient diagnostics per level
    (:func:`mine_diagnostics`, from its critic's ``log E_q[e^f]`` and the log moving average per
    step)."""
    torch.manual_seed(seed)
    params = stack_critics(kind, [make_critic(kind, concat_hidden) for _ in CRITICS])
    opt = torch.optim.Adam(list(params.values()), lr=LR, fused=True)  # one kernel per tensor group
    g = torch.Generator().manual_seed(seed)
    mine = [c for c, loss in enumerate(CRITICS) if loss == "mine"]  # MINE's critic
    log_ema = torch.zeros(len(mine), dtype=torch.float64)  # [R]: log 1, MINE's start
    out = torch.zeros(len(LEVELS) * steps, len(ESTIMATORS))  # [T, E]
    log_partition, log_average = (torch.zeros(len(LEVELS) * steps, len(mine), dtype=torch.float64) for _ in range(2))
    start, load = time.perf_counter(), []
    for level, mi in enumerate(LEVELS):
        load.append(os.getloadavg()[0])
        xs, ys = level_samples(mi_to_rho(mi), steps, g, cubic)  # [steps, B, D]
        for t in range(steps):
            i = level * steps + t
            scores = stacked_scores(kind, params, xs[t], ys[t])  # [C, B, B]
            loss, out[i], log_ema = objective(scores, log_ema)
            log_partition[i], log_average[i] = _log_mean_exp(_off_diagonal(scores.detach()[mine])), log_ema
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {"critic": kind, "names": [est.name for est in ESTIMATORS], "truth": np.repeat(LEVELS, steps),
            "estimates": out.numpy().astype(np.float64), "seconds": time.perf_counter() - start,
            "load": load + [os.getloadavg()[0]],
            "mine": mine_diagnostics(log_partition[:, 0].numpy(), log_average[:, 0].numpy(), steps)}


RATIO_LOW = 0.1  # MINE's partition-gradient weight below this: that step trains the joint term almost alone


def mine_diagnostics(log_partition: np.ndarray, log_average: np.ndarray, steps: int) -> list[dict[str, float]]:
    """Per level, MINE's gradient weight on the partition term, ``ratio = E_q[e^f] / new_ema``
    (``exp(log_partition - log_average)``; DV's gradient has 1 on every step, MINE's drives the
    critic's scores up by ``1 - ratio`` along a constant added to them, see
    :func:`selfsup.losses.mi_bounds.dv`): its median, mean and the share of steps below
    :data:`RATIO_LOW`; and the batch's ``log E_q[e^f]`` at the level's end (the critic's drift;
    0 for a critic whose mean marginal ``e^f`` is 1). ``log_partition``, ``log_average`` ``[T]``:
    per step, the batch's ``log E_q[e^f]`` and the log of the moving average after the step."""
    ratio = np.exp(log_partition - log_average)
    rows = []
    for i, level in enumerate(LEVELS):
        seg = slice(i * steps, (i + 1) * steps)
        rows.append({"true_mi": level, "ratio_median": float(np.median(ratio[seg])),
                     "ratio_mean": float(ratio[seg].mean()), "ratio_low_share": float((ratio[seg] < RATIO_LOW).mean()),
                     "log_partition_end": float(log_partition[(i + 1) * steps - 1])})
    return rows


def step_times(concat_hidden: int, repeats: int = 9, steps: int = 20, seed: int = 0) -> dict[str, Any]:
    """Milliseconds per training step of the concatenated critics (scores, objective, backward,
    Adam), through autograd (``stacked_scores(pair_mlp=False)``) and through :class:`PairMLP`,
    measured in this process in turns (``repeats`` timings of ``steps`` steps each, after a warm-up;
    the same weights and batches at 6 nats): the median and the spread of each, in this thread's
    CPU time (``time.thread_time``: other jobs' share of the CPU is left out) and in wall time, and
    the minor page faults per step (``--time-step`` runs it after :func:`keep_freed_memory`, as a
    training run has it)."""
    import resource

    def make(pair_mlp: bool) -> Any:
        torch.manual_seed(seed)
        params = stack_critics("concat", [make_critic("concat", concat_hidden) for _ in CRITICS])
        opt = torch.optim.Adam(list(params.values()), lr=LR, fused=True)
        xs, ys = level_samples(mi_to_rho(6.0), steps, torch.Generator().manual_seed(seed), cubic=False)
        ema = [torch.zeros(CRITICS.count("mine"), dtype=torch.float64)]  # log averages

        def train() -> None:
            for t in range(steps):
                loss, _, ema[0] = objective(stacked_scores("concat", params, xs[t], ys[t], pair_mlp), ema[0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        train()  # warm-up
        return train

    trains = {"autograd": make(False), "PairMLP": make(True)}
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": [], "faults": []} for name in trains}
    for _ in range(repeats):
        for name, train in trains.items():
            faults, cpu, wall = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time(), time.perf_counter()
            train()
            times[name]["cpu"].append(1e3 * (time.thread_time() - cpu) / steps)
            times[name]["wall"].append(1e3 * (time.perf_counter() - wall) / steps)
            times[name]["faults"].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps)
    summary = {name: {clock: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}
                      for clock, v in clocks.items()} for name, clocks in times.items()}
    return {"concat_hidden": concat_hidden, "threads": torch.get_num_threads(), "repeats": repeats, "steps": steps,
            "ms_per_step": summary, "speedup_cpu": summary["autograd"]["cpu"]["median"] / summary["PairMLP"]["cpu"]["median"],
            "load": os.getloadavg()[0], "cpu": cpu_name()}


def level_stats(truth: np.ndarray, est: np.ndarray, steps: int) -> list[dict[str, float]]:
    """Bias, variance and MSE per level over its steps after the burn-in; ``max``: the level's
    largest estimate (all its steps)."""
    rows = []
    for i, level in enumerate(LEVELS):
        seg = est[i * steps + int(BURN_IN * steps):(i + 1) * steps]
        rows.append({"true_mi": level, "mean": float(seg.mean()), "bias": float(seg.mean() - level),
                     "variance": float(seg.var()), "mse": float(((seg - level) ** 2).mean()),
                     "max": float(est[i * steps:(i + 1) * steps].max())})
    return rows


# the criteria of the published findings (stated in the output)
SATURATION_MARGIN = 0.25  # nats: InfoNCE's mean at 10 nats within this of log B, and its rise from 8 to 10 below it
VARIANCE_GROWTH = 10.0  # "grows quickly": variance at 10 nats at least this many times that at 2 nats
SMILE_VARIANCE_RATIO = 0.5  # "much lower": SMILE (tau=5)'s variance at most this fraction of MINE's, 6 nats up
SMILE_BIAS = (0.5, 0.1)  # "small": |bias| at most max(0.5 nats, 10% of the true MI) at every level
FLOAT_TOLERANCE = 1e-4  # float32 rounding of an estimate that equals log B


def _num(v: float, digits: int, sign: str = "") -> str:
    """``v`` with ``digits`` decimals, or in e-notation from 10^5 on (a diverged critic's numbers)."""
    return f"{v:{sign}.{digits}f}" if not math.isfinite(v) or abs(v) < 1e5 else f"{v:{sign}.2e}"


DIVERGED_NATS = 100.0  # a level's mean estimate this far from the truth (of 2 to 10 nats): its critic diverged


def findings(stats: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """The published qualitative findings (Poole et al. 2019; Song & Ermon 2020), each tested on
    these numbers by a stated criterion: ``{finding, criterion, holds, evidence}``; ``holds`` is
    None (cannot be checked) when a number it reads is not finite (that critic diverged).
    ``stats``: per estimator name, :func:`level_stats` rows (with ``max``, the largest single
    estimate)."""
    def at(name: str, level: float, key: str) -> float:
        return next(r[key] for r in stats[name] if r["true_mi"] == level)

    log_b = math.log(BATCH)
    nce_mean = {lv: at("InfoNCE", lv, "mean") for lv in LEVELS}
    nce_max = max(r["max"] for r in stats["InfoNCE"])
    variance = {n: [at(n, lv, "variance") for lv in LEVELS] for n in ("NWJ", "MINE")}
    growth = {n: v[-1] / max(v[0], 1e-12) for n, v in variance.items()}
    high = [lv for lv in LEVELS if lv >= 6.0]
    smile_var = {lv: (at("SMILE (tau=5)", lv, "variance"), at("MINE", lv, "variance")) for lv in high}
    smile_bias = {lv: at("SMILE (tau=5)", lv, "bias") for lv in LEVELS}
    bias_limit = {lv: max(SMILE_BIAS[0], SMILE_BIAS[1] * lv) for lv in LEVELS}
    mse = {lv: (at("SMILE (tau=5)", lv, "mse"), at("MINE", lv, "mse")) for lv in high}

    def verdict(ok: bool, *numbers: float) -> bool | None:
        """None (cannot be checked) when a number read is not finite: a critic diverged."""
        return ok if all(math.isfinite(v) for v in numbers) else None

    return [
        {"finding": f"InfoNCE saturates at log {BATCH} = {log_b:.2f} nats",
         "criterion": f"every estimate <= log {BATCH}; at true MI 10 (2.4 x log {BATCH}) the mean is within "
                      f"{SATURATION_MARGIN} nats of log {BATCH} and rose by less than {SATURATION_MARGIN} from 8 nats "
                      f"(the truth rose 2)",
         "holds": verdict(nce_max <= log_b + FLOAT_TOLERANCE and nce_mean[10.0] >= log_b - SATURATION_MARGIN
                          and nce_mean[10.0] - nce_mean[8.0] < SATURATION_MARGIN, nce_max, *nce_mean.values()),
         "evidence": f"largest estimate {nce_max:.3f}; mean at true MI 6/8/10: "
                     + ", ".join(f"{nce_mean[lv]:.2f}" for lv in (6.0, 8.0, 10.0))},
        {"finding": "NWJ's and MINE's variance grow quickly with the MI",
         "criterion": f"the variance rises at every level and is at least {VARIANCE_GROWTH:g} x larger at 10 nats "
                      f"than at 2, for both",
         "holds": verdict(all(growth[n] >= VARIANCE_GROWTH and all(b > a for a, b in zip(v, v[1:]))
                              for n, v in variance.items()), *variance["NWJ"], *variance["MINE"]),
         "evidence": "; ".join(f"{n} variance at 2/4/6/8/10: " + ", ".join(_num(x, 3) for x in v)
                               + f" ({_num(growth[n], 1)}x"
                               + ("" if all(b > a for a, b in zip(v, v[1:])) else ", not rising at every level") + ")"
                               for n, v in variance.items())},
        {"finding": "SMILE (tau=5) has a small bias",
         "criterion": f"|bias| <= max({SMILE_BIAS[0]} nats, {SMILE_BIAS[1]:.0%} of the true MI) at every level",
         "holds": verdict(all(abs(b) <= bias_limit[lv] for lv, b in smile_bias.items()), *smile_bias.values()),
         "evidence": "bias at 2/4/6/8/10: " + ", ".join(f"{b:+.2f}" for b in smile_bias.values())},
        {"finding": "SMILE (tau=5) has a much lower variance than MINE",
         "criterion": f"SMILE (tau=5)'s variance <= {SMILE_VARIANCE_RATIO} x MINE's at every level from 6 nats",
         "holds": verdict(all(s <= SMILE_VARIANCE_RATIO * m for s, m in smile_var.values()),
                          *(v for pair in smile_var.values() for v in pair)),
         "evidence": "variance SMILE-5 vs MINE at " + ", ".join(f"{lv:g}: {_num(s, 3)} vs {_num(m, 3)} "
                                                                  f"({_num(s / m, 2)}x)"
                                                                  for lv, (s, m) in smile_var.items())
                     + "; MINE's bias there " + ", ".join(_num(at("MINE", lv, "bias"), 2, "+") for lv in high)
                     + "; MSE SMILE-5 vs MINE " + ", ".join(f"{_num(s, 2)} vs {_num(m, 2)}" for s, m in mse.values())},
    ]


def plot(results: list[dict[str, Any]], out: Path) -> None:
    """One panel per estimator (rows: critics): raw estimates, their moving average, the true staircase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results[0]["names"]
    fig, axes = plt.subplots(len(results), len(names), figsize=(2.6 * len(names), 2.4 * len(results)),
                             squeeze=False, sharey=True)
    for r, res in enumerate(results):
        for e, name in enumerate(names):
            ax = axes[r][e]
            est = res["estimates"][:, e]
            window = max(1, min(100, len(est) // 20))
            smooth = np.convolve(est, np.ones(window) / window, mode="valid")  # trailing mean of `window` steps
            ax.plot(est, color="tab:blue", alpha=0.25, lw=0.5)
            ax.plot(np.arange(window - 1, len(est)), smooth, color="tab:blue", lw=1.0)
            ax.plot(res["truth"], color="black", lw=1.0)
            ax.axhline(math.log(BATCH), color="grey", ls=":", lw=0.8)
            ax.set_ylim(-1, 14)
            ax.set_title(name if r == 0 else "", fontsize=9)
            ax.set_xticks([])
            if e == 0:
                ax.set_ylabel(f"{res['critic']} critic\nMI (nats)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def mine_note(rows: list[dict[str, float]], diverged: bool) -> str:
    """The md paragraph on MINE's gradient (:func:`mine_diagnostics` rows), with the reason for a
    divergence (``diverged``) as measured on the staircase."""
    at = "/".join(f"{r['true_mi']:g}" for r in rows)
    text = (f"MINE's gradient weight on its partition term (the batch's E_q[e^f] / its moving average; DV's gradient: 1 "
            f"at every step) at {at} nats: median " + ", ".join(f"{r['ratio_median']:.2f}" for r in rows)
            + "; mean " + ", ".join(f"{r['ratio_mean']:.2f}" for r in rows) + f"; steps below {RATIO_LOW:g}: "
            + ", ".join(f"{100 * r['ratio_low_share']:.0f}%" for r in rows)
            + ". The batch's log E_q[e^f] at each level's end (0 for a critic whose marginal e^f averages 1): "
            + ", ".join(_num(r["log_partition_end"], 1) for r in rows) + ". DV's value does not change when a "
            "constant is added to the critic, MINE's gradient does: it moves the constant up by 1 - ratio per step, so "
            "a ratio mostly below 1 (a heavy-tailed batch partition: the average is set by rare large batches) lifts "
            "every score step after step (the drift of MINE's constant term that Choi & Lee 2020, \"Regularized "
            "Mutual Information Neural Estimation\", describe). The moving average is carried as its log "
            "(selfsup.losses.mi_bounds.dv), so the drift no longer overflows it (held as a number in float64, it "
            "turned inf past e^709 and the partition term's gradient was gone for good).")
    if diverged:
        text += (" The divergence above is this drift, the method's (at this momentum): with a ratio near 0 on most "
                 "steps the critic trains on E_p[f] alone and its scores run away; with momentum 0.99 the same critic "
                 "did not drift (measured in selfsup.losses.mi_bounds.dv's docstring). Song & Ermon 2020's code has "
                 "MINE's moving average but trains no critic with it (their Figure 1: CPC, NWJ, SMILE and a flow "
                 "model).")
    return text


VERDICTS = {True: "holds", False: "does not hold", None: "cannot be checked (a number it reads is not finite)"}


def command(args: argparse.Namespace) -> str:
    # --jobs always: its default follows the cores, so a command without it reruns differently elsewhere
    return (f"python benchmarks/mi_bounds.py --steps {args.steps} --critics {args.critics} --concat-hidden "
            f"{args.concat_hidden}{' --cubic' if args.cubic else ''} --seed {args.seed} --threads {args.threads}"
            f" --jobs {getattr(args, 'jobs', 1)}")


def parallel_plan(critics: int, cores: int, jobs: int | None, threads: int | None) -> tuple[int, int]:
    """``(jobs, threads)`` where ``--jobs`` / ``--threads`` were left out (None): one process per critic,
    up to ``cores`` (the critics are independent, and a small critic's step gains less from a second
    thread than from a second process: side by side on 2 cores the staircase took 6.4 min, one after
    the other about 8.8), and the cores shared among the processes that train at once. A value
    given is kept as given (:func:`oversubscribed` warns when they exceed the cores)."""
    jobs = max(1, min(critics, cores)) if jobs is None else jobs
    threads = max(1, cores // max(1, min(jobs, critics))) if threads is None else threads
    return jobs, threads


def oversubscribed(jobs: int, critics: int, threads: int, cores: int) -> str | None:
    """A warning when the processes that train at once (``min(jobs, critics)``) times ``threads`` exceed
    ``cores``: OpenMP threads then wait for a core (measured: 703 ms a step against 30 with --jobs 2
    --threads 2 on 2 cores); None when they fit."""
    at_once = min(jobs, critics)
    if at_once * threads <= cores:
        return None
    return (f"warning: --jobs {jobs} x --threads {threads} = {at_once * threads} threads on {cores} cores: the "
            f"critics' threads will wait for each other (a step took 20x longer); use --threads "
            f"{max(1, cores // at_once)}")


def train_critic(kind: str, steps: int, cubic: bool, seed: int, concat_hidden: int, threads: int) -> dict[str, Any]:
    """:func:`run` in this process at ``threads`` torch threads, with freed memory kept
    (:func:`keep_freed_memory`): what each ``--jobs`` worker process runs, and the sequential path."""
    torch.set_num_threads(threads)
    keep_freed_memory()
    return run(kind, steps, cubic, seed, concat_hidden)


def trained_critics(kinds: list[str], args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Each critic's :func:`run` result as it finishes: one after the other in this process, or with
    ``--jobs`` > 1 in that many worker processes at once (spawned, not forked: a forked child of a
    process whose OpenMP pool has started can hang), each at ``--threads`` threads. The critics are
    independent (own seeded data stream, own networks), so a critic's numbers are the same either way;
    only the wall time changes."""
    options = (args.steps, args.cubic, args.seed, args.concat_hidden, args.threads)
    if args.jobs <= 1 or len(kinds) == 1:
        for kind in kinds:
            yield train_critic(kind, *options)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    with ProcessPoolExecutor(max_workers=min(args.jobs, len(kinds)), mp_context=multiprocessing.get_context("spawn")) \
            as pool:
        for done in as_completed([pool.submit(train_critic, kind, *options) for kind in kinds]):
            yield done.result()


def markdown(results: list[dict[str, Any]], stats: dict[str, dict[str, list[dict[str, float]]]],
             checks: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = [f"# MI estimators on the Gaussian staircase{' (cubic y)' if args.cubic else ''}", "",
             f"On {cpu_name()} ({os.cpu_count()} cores), seed {args.seed} (one seed). X, Y in {DIM} dimensions"
             f"{', y cubed (the MI unchanged)' if args.cubic else ''}, "
             f"batch {BATCH}, {args.steps} Adam steps (lr {LR}) per level; separable critic 256 wide, 2 hidden "
             f"layers, 32-d embeddings; concatenated critic {args.concat_hidden} wide, 2 hidden layers"
             f"{' (the paper: 256; narrower to fit the CPU)' if args.concat_hidden != 256 else ''}. Four critics, one "
             f"per training objective (InfoNCE, NWJ, JS, MINE; the SMILE readouts read the JS-trained critic), "
             f"train together as one batch of networks (stacked weights, one Adam). Statistics per level over its "
             f"last {100 - int(100 * BURN_IN)}% of steps. Each critic's section names the command that ran it.", ""]
    unplotted = [res["critic"] for res in results if not res.get("plotted", True)]
    if unplotted:
        lines += [f"The figure leaves out the {' and '.join(unplotted)} critic (its run's estimates were not kept).", ""]
    for res in results:
        kind = res["critic"]
        load = res["load"]
        beside = (f"; trained in its own process beside the other critic (--jobs), done {res['wall'] / 60:.1f} min "
                  f"after the command started" if res.get("wall") else "")
        expected = res["threads"] * (2 if res.get("wall") else 1)  # with --jobs: the other critic's process too
        busy = (f"this run's {res['threads']} thread(s) and the other critic's process included" if res.get("wall")
                else f"this run's {res['threads']} thread(s) included")
        lines += [f"## {kind} critic ({res['seconds'] / 60:.1f} min, {1e3 * res['seconds'] / (len(LEVELS) * args.steps):.1f} "
                  f"ms/step{beside})", "", f"`{res['command']}`, {res['threads']} torch thread(s). 1-minute load average sampled "
                  f"at each level's start and at the end: mean {np.mean(load):.2f} (min {min(load):.2f}, max "
                  f"{max(load):.2f}) on {os.cpu_count()} cores, {busy}; above {expected}, other jobs shared the CPU.",
                  "",
                  "| estimator | " + " | ".join(f"bias @{lv:g}" for lv in LEVELS) + " | "
                  + " | ".join(f"var @{lv:g}" for lv in LEVELS) + " | " + " | ".join(f"MSE @{lv:g}" for lv in LEVELS)
                  + " |", "|---|" + "---:|" * (3 * len(LEVELS))]
        for name in res["names"]:
            rows = stats[kind][name]
            lines.append(f"| {name} | " + " | ".join(_num(r["bias"], 2) for r in rows) + " | "
                         + " | ".join(_num(r["variance"], 3) for r in rows) + " | "
                         + " | ".join(_num(r["mse"], 2) for r in rows) + " |")
        nan = {name: [r["true_mi"] for r in rows if not math.isfinite(r["mean"])] for name, rows in stats[kind].items()}
        far = {name: [r for r in rows if math.isfinite(r["mean"]) and abs(r["bias"]) > DIVERGED_NATS]
               for name, rows in stats[kind].items()}
        lines += [line for name, levels in nan.items() if levels
                  for line in ("", f"{name}'s estimates are not finite (its critic diverged) at true MI "
                                   f"{', '.join(f'{lv:g}' for lv in levels)}: nan in the table.")]
        for name, rows in far.items():
            if rows:
                levels, means = ", ".join(f"{r['true_mi']:g}" for r in rows), ", ".join(_num(r["mean"], 2) for r in rows)
                lines += ["", f"{name}'s critic diverged at true MI {levels}: mean estimate {means} nats (more than "
                              f"{DIVERGED_NATS:g} from the truth)."]
        if res.get("mine"):
            lines += ["", mine_note(res["mine"], diverged=bool(far["MINE"] or nan["MINE"]))]
        lines += ["", "Published findings (Poole et al. 2019; Song & Ermon 2020), each checked by the criterion "
                  "in brackets:", ""]
        lines += [f"- {c['finding']} [{c['criterion']}]: **{VERDICTS[c['holds']]}** ({c['evidence']})"
                  for c in checks[kind]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000, help="steps per MI level (the paper: 4000)")
    ap.add_argument("--critics", default="separable,concat")
    ap.add_argument("--concat-hidden", type=int, default=64, help="width of the concatenated critic (paper: 256)")
    ap.add_argument("--cubic", action="store_true", help="y -> y^3 (MI unchanged)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per critic's process (default: the cores shared among the critics "
                         "trained at once, at least 1)")
    ap.add_argument("--jobs", type=int, default=None, help="critics trained at once, each in its own process at "
                    "--threads threads (default: one per critic, up to the cores; on 2 cores both critics "
                    "side by side at 1 thread each)")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results; with --recheck: "
                                                "the folder of the json read)")
    ap.add_argument("--recheck", metavar="JSON", help="no training: the tables and findings of a finished run's "
                    "results json again, with the current criteria (its figure is kept), written to --out")
    ap.add_argument("--time-step", action="store_true", help="no training: milliseconds per step of the "
                    "concatenated critics through autograd and through PairMLP, in turns in this process; prints JSON")
    args = ap.parse_args()
    if args.recheck:
        recheck(Path(args.recheck), Path(args.out) if args.out else None)
        return
    if args.time_step:
        args.threads = args.threads if args.threads is not None else torch.get_num_threads()
        if args.threads < 1 or args.concat_hidden < 1:
            ap.error("--threads and --concat-hidden must be at least 1")
        torch.set_num_threads(args.threads)
        keep_freed_memory()
        print(json.dumps(step_times(args.concat_hidden, seed=args.seed), indent=1), flush=True)
        return
    if args.out is not None and not args.out.strip():
        ap.error("--out '' is empty: give a folder, or leave --out out for benchmarks/results")
    args.out = args.out or str(ROOT / "benchmarks" / "results")
    kinds = [k for k in args.critics.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        ap.error(f"--critics: choose from {', '.join(KINDS)} (got {args.critics!r})")
    if args.steps < 10:
        ap.error("--steps must be at least 10")
    args.jobs, args.threads = parallel_plan(len(kinds), os.cpu_count() or 1, args.jobs, args.threads)
    if args.threads < 1 or args.concat_hidden < 1 or args.jobs < 1:
        ap.error("--threads, --concat-hidden and --jobs must be at least 1")
    warning = oversubscribed(args.jobs, len(kinds), args.threads, os.cpu_count() or 1)
    if warning:
        print(warning, file=sys.stderr)
    results, stats, checks = kept_results(args, kinds)
    start = time.perf_counter()
    for trained in trained_critics(kinds, args):
        kind = trained["critic"]
        res = {**trained, "command": command(args), "threads": args.threads,
               "wall": time.perf_counter() - start if args.jobs > 1 and len(kinds) > 1 else None}
        results = sorted([r for r in results if r["critic"] != kind] + [res], key=lambda r: KINDS.index(r["critic"]))
        stats[kind] = {n: level_stats(res["truth"], res["estimates"][:, e], args.steps)
                       for e, n in enumerate(res["names"])}
        checks[kind] = findings(stats[kind])
        print(json.dumps({"critic": kind, "seconds": round(res["seconds"], 1), "threads": args.threads,
                          "load": res["load"], "stats": stats[kind], "findings": checks[kind]}), flush=True)
        write(results, stats, checks, args)  # after each critic: a long run's first critic is kept


def _results_from_json(data: dict[str, Any], kinds: list[str]) -> list[dict[str, Any]]:
    """The per-critic entries (``critic``, ``names``, ``seconds``, ``load``, ``command``, ``threads``,
    ``plotted``: in the figure) of ``kinds`` in a results json of this script (one written before
    per-critic commands: its one command)."""
    return [{"critic": kind, "names": list(data["stats"][kind]), "seconds": data["seconds"][kind],
             "load": data["load"][kind], "command": data.get("commands", {}).get(kind, data["command"]),
             "threads": data.get("threads", {}).get(kind, data["settings"]["threads"]),
             "plotted": kind in data.get("plotted", kinds), "mine": data.get("mine_diagnostics", {}).get(kind),
             "wall": data.get("wall", {}).get(kind)}
            for kind in kinds]


def kept_results(args: argparse.Namespace, kinds: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                       dict[str, Any]]:
    """The results already in ``args.out`` of the critics this run does not train, so that a run of
    one critic keeps the other's: from its ``mi_bounds{,-cubic}.json`` (statistics, findings, seconds,
    load, command) and ``.npz`` (the estimates, for the figure), when that run had the same
    ``--steps``, ``--seed`` and (for the concatenated critic) ``--concat-hidden``; otherwise nothing
    (and a note on stderr). Returns ``(results, stats, checks)`` as :func:`main` builds them."""
    stem = Path(args.out) / ("mi_bounds-cubic" if args.cubic else "mi_bounds")
    path = stem.with_suffix(".json")
    if not path.exists():
        return [], {}, {}
    try:
        data = json.loads(path.read_text())
        settings = data["settings"]
        others = [k for k in KINDS if k in data["stats"] and k not in kinds]
        same = {k: settings["steps"] == args.steps and settings["seed"] == args.seed
                and (k != "concat" or settings["concat_hidden"] == args.concat_hidden) for k in others}
        results = _results_from_json(data, [k for k in others if same[k]])
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"note: {path} is not a results json of this script ({err!r}); not kept", file=sys.stderr)
        return [], {}, {}
    for k in others:
        if not same[k]:
            print(f"note: the {k} critic's results in {path} ran other settings; not kept", file=sys.stderr)
    estimates = np.load(stem.with_suffix(".npz")) if stem.with_suffix(".npz").exists() else {}
    for res in results:
        if res["critic"] not in estimates:
            continue
        kept = estimates[res["critic"]]
        if kept.shape != (len(LEVELS) * args.steps, len(res["names"])):  # another run's npz: not this json's
            print(f"note: {stem.with_suffix('.npz')} holds {kept.shape[0]} estimates of the {res['critic']} critic, "
                  f"not the {len(LEVELS) * args.steps} of {path}; its figure is left out", file=sys.stderr)
            continue
        res["estimates"] = kept.astype(np.float64)
        res["truth"] = np.repeat(LEVELS, args.steps)
        print(f"note: keeping the {res['critic']} critic's results of {path} ({res['command']})", file=sys.stderr)
    return results, {r["critic"]: data["stats"][r["critic"]] for r in results}, \
        {r["critic"]: findings(data["stats"][r["critic"]]) for r in results}


def recheck(path: Path, out: Path | None = None) -> None:
    """Write the json and md of ``path`` (a results json of this script) again, to ``out`` (default:
    beside ``path``), with the findings computed again from its statistics; the figure (it needs
    every estimate) is not redrawn. Prints the findings as JSON.

    Raises:
        SystemExit: ``path`` is missing or holds no results of this script.
    """
    try:
        data = json.loads(path.read_text())
        args = argparse.Namespace(**{**data["settings"], "out": str(out or path.parent), "recheck": None})
        stats = data["stats"]
        results = _results_from_json(data, [k for k in KINDS if k in stats])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"--recheck {path}: not a results json of benchmarks/mi_bounds.py ({err!r}); "
                         f"pass the mi_bounds.json or mi_bounds-cubic.json a run wrote") from None
    checks = {kind: findings(stats[kind]) for kind in stats}
    write(results, stats, checks, args, figure=False)
    print(json.dumps({"recheck": str(path), "out": args.out, "findings": checks}), flush=True)


def write(results: list[dict[str, Any]], stats: dict[str, dict[str, list[dict[str, float]]]],
          checks: dict[str, list[dict[str, Any]]], args: argparse.Namespace, figure: bool = True) -> None:
    """benchmarks/results/mi_bounds{,-cubic}.{json,md,png,npz} (in ``args.out``) of the critics run
    so far and those kept from an earlier run (:func:`kept_results`); the png (of the critics
    whose estimates are at hand) and the npz (those estimates, float32, for the figure of a later
    run that keeps them) only with ``figure``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "mi_bounds-cubic" if args.cubic else "mi_bounds"
    plotted = [r for r in results if "estimates" in r]
    if figure:  # else (a recheck) the figure stays as it is
        results = [{**r, "plotted": "estimates" in r} for r in results]
    stats, checks = {r["critic"]: stats[r["critic"]] for r in results}, {r["critic"]: checks[r["critic"]] for r in results}
    (out / f"{stem}.json").write_text(json.dumps({"settings": vars(args), "command": command(args), "cpu": cpu_name(),
                                                  "stats": stats, "findings": checks,
                                                  "seconds": {r["critic"]: r["seconds"] for r in results},
                                                  "load": {r["critic"]: r["load"] for r in results},
                                                  "commands": {r["critic"]: r["command"] for r in results},
                                                  "threads": {r["critic"]: r["threads"] for r in results},
                                                  "wall": {r["critic"]: r.get("wall") for r in results},
                                                  "plotted": [r["critic"] for r in results if r["plotted"]],
                                                  "mine_diagnostics": {r["critic"]: r["mine"] for r in results
                                                                       if r.get("mine")}},
                                                 indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results, stats, checks, args) + "\n")
    if figure and plotted:
        plot(plotted, out / f"{stem}.png")
        np.savez_compressed(out / f"{stem}.npz", **{r["critic"]: r["estimates"].astype(np.float32) for r in plotted})


if __name__ == "__main__":
    main()
