"""Linear probes on cached frozen features (the backbone never runs again).

Features are standardised with training statistics (as MAE's BatchNorm-without-affine
probe does); a grid of learning rates and weight decays is trained at once, one
linear head per setting, the best is chosen on a seeded split held out from the
training set, then retrained on the whole training set and scored on the test split.

:func:`probe_protocol` adds the low-shot protocol of the semi-supervised evaluations
(SimCLR, Chen et al. 2020, sec. 4.2; VISSL's 1% / 10% ImageNet subsets): probes on
class-balanced, seeded 1% and 10% subsets of the labelled training set, and every
number as the mean and standard deviation over several seeds. :func:`sklearn_probe`
is scikit-learn's multinomial logistic regression on the same standardised features,
a cross-check of the SGD probe on small data.

Every probe refuses features with NaN or inf, labels outside ``[0, num_classes)``
(-1: unlabeled) and training labels of fewer than two classes (:func:`check_probe_data`);
a setting whose probe diverges (non-finite weights) is never chosen, and a chosen
probe that diverges on the whole training set is an error.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError
from selfsup.data.datasets import DataError
from selfsup.progress import Bar
from selfsup.eval.knn import check_finite, check_labels, topk_accuracy


CONSTANT_STD = 1e-6  # a feature whose training std is below this is constant to the probe (standardise)
STEPS_PER_EPOCH = 8  # a training set smaller than this many batches gets smaller batches


def probe_schedule(n: int, epochs: int, batch_size: int) -> tuple[int, int]:
    """(batch, epochs) of a probe on ``n`` rows: ``epochs`` passes over the data, in batches of
    ``batch_size`` rows, or of ``ceil(n / STEPS_PER_EPOCH)`` when that is smaller, so a small
    (low-shot) set still takes :data:`STEPS_PER_EPOCH` SGD steps per epoch. The step count
    follows the data: a probe costs ``epochs * n`` rows whatever ``n`` (a fixed minimum of
    1,000 steps made a 1,437-image probe cost as much as a 60k-row one;
    benchmarks/results/probe.md)."""
    return max(1, min(batch_size, math.ceil(n / STEPS_PER_EPOCH))), epochs


# exp(-64) = 1.6e-28: with at most 1,000 classes and batches of 65,536 rows, (p - y) / B stays
# above float32's smallest normal number (1.2e-38), so the probe's matmuls never read subnormals
MIN_EXPONENT = -64.0


def softmax_last(logits: Tensor, min_exponent: float | None = None) -> Tensor:
    """Softmax over the last dim of ``logits`` ``[..., C]``, overwriting a fresh copy: ``exp(z - max)
    / sum``, as ``Tensor.softmax(-1)``. Written out because torch's CPU softmax is slow over a
    short last dim: on ``[1024, 12, 10]`` (a probe batch of 12 heads, 10 classes) 2.3 ms
    against 0.44 ms for these three ops (1 thread, torch 2.14, Xeon), a third of a probe's time.

    ``min_exponent`` (e.g. :data:`MIN_EXPONENT`) floors ``z - max`` before the exp, so no
    probability is a subnormal float: once a probe separates the classes, the wrong classes'
    ``exp(z - max)`` fall below 1.2e-38, and a subnormal operand makes the CPU's matmuls several
    times slower (the probe's gradient matmul took 580 us a step instead of 160 us on 1k rows,
    benchmarks/results/probe.md). A floored term changes a probability by less than
    ``exp(min_exponent)`` (1.6e-28 at -64), far below float32's rounding of the others."""
    z = logits - logits.amax(-1, keepdim=True)  # [..., C]; every row's largest term is exp(0) = 1
    if min_exponent is not None:
        z.clamp_(min=min_exponent)
    e = z.exp_()
    return e.div_(e.sum(-1, keepdim=True))


# multiply-adds of one probe step's logits matmul below which the probe runs on one thread. Measured on
# the 2-core Xeon, idle (benchmarks/results/probe.md): the 1k-row 512-d grid (113 x 512 x 120 = 6.9M a
# step) took 0.39 s on one thread against 0.48 s on two, and on two threads beside another busy process
# 21 s (OpenMP threads waiting for a core that is not free); the 2048-d grid (27.8M a step) gains from two
SMALL_STEP_MACS = 1 << 24


@contextlib.contextmanager
def threads_for_step(macs: int) -> Iterator[int]:
    """Run the enclosed probe loop on one torch thread when a step's matmul is under
    :data:`SMALL_STEP_MACS` multiply-adds; yields the thread count used, and the caller's count is
    restored after. Small steps gain nothing from a second thread and lose badly to a busy core."""
    before = torch.get_num_threads()
    if macs >= SMALL_STEP_MACS or before == 1:
        yield before
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(before)


# bytes the kernel form holds (its [N, N] Gram matrix and three [N, heads] tensors): above this, the primal form
KERNEL_FORM_BYTES = 512 << 20
# one elementwise pass over a float32 tensor costs about as much as this many multiply-adds of a small matmul per
# element (2-core Xeon, 1 thread: a [900, 120] addcmul_ with a per-column factor about 15 us, a 113 x 900 x 120
# baddbmm about 210 us)
PASS_MACS = 8
KERNEL_MARGIN = 0.75  # the kernel form is taken only when its estimate is below this share of the primal one's


def probe_form(n: int, dim: int, batch: int, steps: int, heads: int) -> str:
    """``"kernel"`` when training ``heads`` stacked linear heads on ``n`` rows of ``dim`` features
    is estimated to cost clearly less in the kernel form (:class:`KernelHeads`) than in the primal
    one (:class:`PrimalHeads`), and its state (the ``[n, n]`` Gram matrix and three ``[n, heads]`` tensors)
    fits :data:`KERNEL_FORM_BYTES`; else
    ``"primal"``. Estimates in multiply-adds: a primal step does two ``batch x dim x heads`` matmuls
    (logits, gradient) and three passes over the ``heads x dim`` weights (momentum, weight decay,
    update); a kernel step one ``batch x n x heads`` matmul and three passes over the ``n x heads``
    coefficients, after the Gram matrix (``n^2 dim``) and the heads' projections (``2 n dim heads``,
    with the final weights). The kernel form wins on fewer rows than dimensions: the low-shot
    probes of wide stages (600 rows of a 9,216-dim stem) and 1k-row sets of 2048-d features
    (benchmarks/results/probe.md)."""
    if 4 * (n * n + 3 * n * heads) > KERNEL_FORM_BYTES:  # the Gram matrix, the coefficients, their momentum, P
        return "primal"
    primal = steps * heads * dim * (2 * batch + 3 * PASS_MACS)
    kernel = n * n * dim + 2 * n * dim * heads + steps * heads * n * (batch + 3 * PASS_MACS)
    return "kernel" if kernel < KERNEL_MARGIN * primal else "primal"


class PrimalHeads:
    """The heads' weights ``W`` ``[G, S, C, D]`` themselves (G seeds, S settings, C classes): a step's
    logits ``x_b W^T`` and weight gradient ``delta^T x_b``."""

    def __init__(self, x: Tensor, weight: Tensor) -> None:
        self.x, self.weight = x, weight  # [N, D], [G, S, C, D]
        self.params = [self.weight]
        self._xb = x.new_empty(0)

    def per_setting(self, v: Tensor) -> list[Tensor]:
        """A per-setting value ``v`` ``[..., S]`` (a learning rate, a weight decay) laid out to broadcast
        over each parameter: ``[..., 1, S, 1, 1]`` over ``W``."""
        return [v.unsqueeze(-2)[..., None, None]]

    def logits(self, idx: Tensor, bias: Tensor) -> Tensor:
        """``idx`` ``[G * B]`` (each seed's batch), ``bias`` ``[G, S, C]`` -> ``[G, B, S * C]``."""
        g, s, c, d = self.weight.shape
        self._xb = self.x.index_select(0, idx).view(g, -1, d)  # [G, B, D]; twice x[idx]'s speed
        return torch.baddbmm(bias.view(g, 1, s * c), self._xb, self.weight.view(g, s * c, d).transpose(1, 2))

    def add_grads(self, bufs: list[Tensor], delta: Tensor, idx: Tensor) -> None:
        """Add the weights' gradient ``delta^T x_b`` (``delta`` ``[G, B, S, C]``: d loss / d logits) to
        ``bufs[0]`` ``[G, S, C, D]`` in place."""
        g, b, s, c = delta.shape
        bufs[0].view(g, s * c, -1).baddbmm_(delta.view(g, b, s * c).transpose(1, 2), self._xb)

    def final_weight(self) -> Tensor:
        """The trained weights ``[G, S, C, D]``."""
        return self.weight


class KernelHeads:
    """The heads' weights in the kernel (dual) form: ``W = u W_0 + A^T X``, with ``W_0`` the
    initial weights ``[G, S, C, D]``, ``u`` ``[G, S]`` one scalar per head and ``A`` ``[G, N, S * C]``
    one coefficient per training row and head output. Every SGD step keeps this form exactly: the cross-entropy's
    weight gradient ``delta^T x_b`` is a combination of training rows (``delta`` in the batch's
    rows of ``A``), and weight decay and momentum are linear, so they act on ``u`` and ``A`` as on
    ``W`` (the representer theorem, step by step). A step's logits are
    ``u (x_b W_0^T) + (x_b X^T) A``: rows of the Gram matrix ``K = X X^T`` ``[N, N]`` and of the
    projections ``P = X W_0^T`` ``[N, G S C]``, both computed once. The same heads as
    :class:`PrimalHeads` up to float rounding (tests/test_linear.py), at ``batch x N`` instead of
    ``2 batch x D`` multiply-adds per head a step (:func:`probe_form`)."""

    def __init__(self, x: Tensor, weight: Tensor) -> None:
        g, s, c, d = weight.shape
        n = len(x)
        self.x, self.weight0 = x, weight  # [N, D], [G, S, C, D]
        self.gram = x @ x.T  # [N, N]
        self.proj = (x @ weight.view(g * s * c, d).T).view(n, g, s * c).transpose(0, 1).contiguous()  # [G, N, S * C]
        self.coef = x.new_zeros(g, n, s * c)  # [G, N, S * C]: A
        self.scale = x.new_ones(g, s)  # [G, S]: u
        self.params = [self.coef, self.scale]
        self.classes = c
        self._rows = torch.arange(g)[:, None] * n  # [G, 1]: each seed's offset in the flattened rows

    def per_setting(self, v: Tensor) -> list[Tensor]:
        """A per-setting value ``v`` ``[..., S]`` laid out to broadcast over ``A`` (``[..., 1, 1, S * C]``:
        a contiguous last dimension, which elementwise kernels run several times faster than a
        broadcast over the 10 classes of ``[..., S, C]``) and over ``u`` (``[..., 1, S]``)."""
        return [v.repeat_interleave(self.classes, -1)[..., None, None, :], v.unsqueeze(-2)]

    def logits(self, idx: Tensor, bias: Tensor) -> Tensor:
        """``idx`` ``[G * B]`` (each seed's batch), ``bias`` ``[G, S, C]`` -> ``[G, B, S * C]``."""
        g, n, sc = self.coef.shape
        kb = self.gram.index_select(0, idx).view(g, -1, n)  # [G, B, N]: x_b X^T
        z = torch.baddbmm(bias.view(g, 1, sc), kb, self.coef)  # [G, B, S * C]
        rows = (idx.view(g, -1) + self._rows).view(-1)  # [G * B]: rows of each seed's projections
        pb = self.proj.view(g * n, sc).index_select(0, rows).view(g, -1, sc)  # [G, B, S * C]: x_b W_0^T
        return z.addcmul_(pb, self.scale.repeat_interleave(self.classes, -1)[:, None])  # + u x_b W_0^T

    def add_grads(self, bufs: list[Tensor], delta: Tensor, idx: Tensor) -> None:
        """Add ``A``'s gradient to ``bufs[0]`` ``[G, N, S * C]`` in place: ``delta`` ``[G, B, S, C]`` in the
        batch's rows (a batch holds each row at most once); ``u``'s gradient is 0 (the loss's gradient
        has no ``W_0`` part: only weight decay moves ``u``)."""
        g, n, sc = self.coef.shape
        rows = (idx.view(g, -1) + self._rows).view(-1)  # [G * B]
        bufs[0].view(g * n, sc).index_add_(0, rows, delta.reshape(-1, sc))

    def final_weight(self) -> Tensor:
        """``u W_0 + A^T X``: ``[G, S, C, D]``."""
        g, s = self.scale.shape
        span = torch.matmul(self.coef.transpose(1, 2), self.x)  # [G, S * C, D]
        return span.view(self.weight0.shape).addcmul_(self.weight0, self.scale.view(g, s, 1, 1))


def _train_heads(x: Tensor, y: Tensor, num_classes: int, settings: list[tuple[float, float]],
                 epochs: int, batch_size: int, seeds: int | Sequence[int], form: str | None = None) -> list[nn.Linear]:
    """One linear head per (seed, (lr, wd) setting), trained together with SGD (momentum 0.9,
    weight decay on weight and bias, cosine schedule: ``torch.optim.SGD`` with
    ``CosineAnnealingLR``) on standardised features ``x`` [N, D], for ``epochs`` in batches of
    at most ``batch_size`` (:func:`probe_schedule`). Returned seed-major: the S settings of
    ``seeds[0]``, then those of ``seeds[1]``, ...; a seed fixes its heads' initialisation and
    its batch order (its own generator, drawn as when it is trained alone).

    The G x S heads are one stacked weight [G, S, C, D], so a step is one batched matmul over
    every seed's batch instead of one small matmul per head: the probe is bound by reading ``x``
    (9k-dim stage features of 60k images are 2 GB), a grid of 12 settings otherwise reads it 12
    times, and on small features the per-step overhead dominates, so training 3 seeds' probes
    in one loop costs far less than three loops. The gradient (softmax minus one-hot, the
    cross-entropy's) and the optimiser are written out, because the settings' learning rates
    and weight decays are slices of one tensor and autograd's bookkeeping cost more than the
    arithmetic on small sets; the heads' numbers equal separate heads trained by autograd and
    ``torch.optim.SGD`` up to float rounding (tests/test_linear.py). ``form``: ``"primal"``
    (:class:`PrimalHeads`) or ``"kernel"`` (:class:`KernelHeads`, the same heads, cheaper on fewer
    rows than dimensions); None chooses by :func:`probe_form`."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    n_grp, n_set, dim, c = len(seeds), len(settings), x.shape[1], num_classes
    weight = torch.stack([torch.stack([torch.empty(c, dim).normal_(0, 0.01, generator=g) for _ in settings])
                          for g in gens])  # [G, S, C, D]
    bias = torch.zeros(n_grp, n_set, c)  # [G, S, C]
    base_lr = torch.tensor([lr for lr, _ in settings], dtype=torch.float64)  # [S]
    wd = torch.tensor([w for _, w in settings])  # [S]
    batch_size, epochs = probe_schedule(len(x), epochs, batch_size)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    form = form or probe_form(len(x), dim, batch_size, total, n_grp * n_set * c)
    if form not in ("primal", "kernel"):
        raise ValueError(f"form must be 'primal' or 'kernel', got {form!r}")
    heads_form = PrimalHeads(x, weight) if form == "primal" else KernelHeads(x, weight)
    params = heads_form.params + [bias]
    cosine = (1 + torch.cos(math.pi * torch.arange(total, dtype=torch.float64) / total)) / 2  # [T], CosineAnnealingLR's
    lrs = (cosine[:, None] * base_lr).float()  # [T, S]: every step's learning rates, computed once
    # each parameter's lr (every step's) and wd laid out over it; the bias [G, S, C] last
    step_lrs = heads_form.per_setting(lrs) + [lrs[:, None, :, None]]  # each [T, ...]
    wds = heads_form.per_setting(wd) + [wd[None, :, None]]
    momentum = [torch.zeros_like(p) for p in params]
    one_hot = F.one_hot(y, c).to(x.dtype)  # [N, C]
    step = 0
    bar = Bar(f"linear probe: {n_set} setting(s) x {n_grp} seed(s), {len(x)} rows", total, unit="step")
    width = dim if form == "primal" else len(x)  # the inner size of a step's logits matmul
    macs = n_grp * min(batch_size, len(x)) * width * n_set * c  # one step's logits matmul
    with threads_for_step(macs):  # small steps on one thread (SMALL_STEP_MACS)
        for _ in range(epochs):
            perms = torch.stack([torch.randperm(len(x), generator=g) for g in gens])  # [G, N]
            for i in range(steps_per_epoch):
                idx = perms[:, i * batch_size:(i + 1) * batch_size].reshape(-1)  # [G * B]: each seed's own batch
                b = len(idx) // n_grp
                logits = heads_form.logits(idx, bias)  # [G, B, S * C]
                # gradient of the sum over heads of each head's mean cross-entropy: (softmax - one-hot) / B
                delta = softmax_last(logits.view(n_grp, b, n_set, c), MIN_EXPONENT)  # [G, B, S, C]; no subnormals
                delta -= one_hot.index_select(0, idx).view(n_grp, b, 1, c)  # the label's one-hot, over the settings
                delta /= b
                # SGD with momentum as torch.optim.SGD: buf = 0.9 buf + (grad + wd * p), p -= lr * buf (buf starts
                # at 0, so the first step's buf is its d_p); the gradients are added into the buffers in place
                for p, buf, wd_p in zip(params, momentum, wds):
                    buf.mul_(0.9).addcmul_(wd_p, p)
                heads_form.add_grads(momentum, delta, idx)
                momentum[-1].add_(delta.sum(1))  # [G, S, C]: the bias's gradient
                for p, buf, lr_p in zip(params, momentum, step_lrs):
                    p.addcmul_(lr_p[step], buf, value=-1)  # p -= lr * buf
                step += 1
                bar.update()
    bar.close()
    weight = heads_form.final_weight()
    heads = []
    for w, b_ in zip(weight.reshape(-1, c, dim), bias.view(-1, c)):  # seed-major, as documented
        head = nn.Linear(dim, c)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b_)
        heads.append(head)
    return heads


def check_probe_data(train: Tensor, train_labels: Tensor, num_classes: int, test: Tensor | None = None,
                     test_labels: Tensor | None = None) -> None:
    """Refuse what a probe cannot score faithfully: rows and labels that do not match
    (ValueError); NaN or inf features, labels outside ``[0, num_classes)``, fewer than two
    classes in ``train_labels``, an empty test split (DataError). ``train`` ``[N, D]``,
    ``test`` ``[Q, D]``, labels ``[N]`` and ``[Q]``."""
    splits = [("train", train, train_labels)] + ([("test", test, test_labels)] if test is not None else [])
    for what, x, y in splits:
        if y is None or len(y) != len(x):
            raise ValueError(f"{what} labels ({None if y is None else len(y)}) do not match the {len(x)} "
                             f"{what} feature rows")
        check_labels(y, num_classes, what)
        check_finite(x, what)
    present = train_labels.unique()
    if len(present) < 2:
        found = f"only class {int(present[0])}" if len(present) else "no labelled rows"
        raise DataError(f"a linear probe needs at least two classes in its training labels, found {found} "
                        f"({len(train_labels)} rows): evaluate on labelled data with two or more classes, "
                        f"or set eval.linear=false")
    if test is not None and len(test) == 0:
        raise DataError("no test rows to score the linear probe on: the test split is empty")


def diverged(head: nn.Linear) -> bool:
    """True when training left NaN or inf in the head's weights or bias."""
    return not all(bool(p.isfinite().all()) for p in head.parameters())


def standardise(train: Tensor, *others: Tensor, stats: tuple[Tensor, Tensor] | None = None) -> list[Tensor]:
    """``train`` [N, D] and ``others`` [M, D] centred on train's column means and divided by its column
    standard deviations; a column constant on train (std below 1e-6: a border pixel, a dead channel)
    keeps scale 1. Dividing it by 1e-6, as before, turned any other split's small deviation there into
    a value near 1e5 and the held-out loss of every setting into thousands of nats. ``stats``: the
    ``(mean, std)`` ``[D]`` to use instead of train's (:func:`column_stats` of a larger set)."""
    mean, std = (train.mean(0), train.std(0)) if stats is None else stats  # [D], [D]
    std = torch.where(std < CONSTANT_STD, torch.ones_like(std), std)
    return [(t - mean).div_(std) for t in (train, *others)]  # one fresh [N, D] each


# a probe trained on fewer images than this is standardised with the whole training split's statistics (no labels):
# a column's std from a handful of rows is near 0 by chance for some columns (from 2 rows, 1% of columns fall below
# 1% of their spread), and standardising then multiplies those columns of every other image by up to 1e4
MIN_STAT_ROWS = 16


def column_stats(x: Tensor, chunk_rows: int = 1024) -> tuple[Tensor, Tensor]:
    """Column means and sample standard deviations (float32 ``[D]`` each) of ``x`` ``[N, D]`` (any float
    dtype, e.g. a float16 cache), accumulated in float64 over chunks of rows (no float32 copy of ``x``).
    ValueError for fewer than 2 rows."""
    n = len(x)
    if n < 2:
        raise ValueError(f"column statistics need at least 2 rows, got {n}")
    total = torch.zeros(x.shape[1], dtype=torch.float64)  # [D]
    for a in range(0, n, chunk_rows):
        total += x[a:a + chunk_rows].double().sum(0)
    mean = total / n
    squares = torch.zeros_like(total)  # [D]
    for a in range(0, n, chunk_rows):
        squares += (x[a:a + chunk_rows].double() - mean).pow_(2).sum(0)
    return mean.float(), (squares / (n - 1)).sqrt_().float()


def select_setting(train: Tensor, train_labels: Tensor, num_classes: int, lrs: list[float], wds: list[float],
                   epochs: int = 60, batch_size: int = 1024, val_fraction: float = 0.1,
                   seed: int = 0) -> tuple[tuple[float, float], float | None]:
    """The (lr, wd) whose probe scores best on a seeded split held out from ``train``
    [N, D]; returns it and its held-out top-1 (percent; None for a single setting, which is
    returned untried: there is nothing to choose). A setting whose probe diverged
    (non-finite weights) is never chosen; ConfigError when every one did. DataError: see
    :func:`check_probe_data`."""
    check_probe_data(train, train_labels, num_classes)
    return _select_setting(train, train_labels, num_classes, lrs, wds, epochs, batch_size, val_fraction, seed)[:2]


def _select_setting(train: Tensor, train_labels: Tensor, num_classes: int, lrs: list[float], wds: list[float],
                    epochs: int, batch_size: int, val_fraction: float, seed: int,
                    stats: tuple[Tensor, Tensor] | None = None) -> tuple[tuple[float, float], float | None,
                                                                       list[tuple[float, float]]]:
    """:func:`select_setting` on data already checked (the protocol checks once, not per probe), and the
    settings whose probes diverged (never chosen; :func:`probe_protocol` says so in its warnings). Fewer than
    :data:`MIN_STAT_ROWS` rows left to fit are standardised with the statistics of all of ``train`` (no labels
    used) unless ``stats`` gives others."""
    train = train.float()
    settings = list(product(lrs, wds))
    if len(settings) == 1:  # nothing to choose: no probe trained, no image held out
        return settings[0], None, []
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    n_val = held_out_count(len(train), val_fraction)
    check_fit_split(len(train), n_val, "the linear probe")
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    if stats is None and len(fit_idx) < MIN_STAT_ROWS:  # too few to standardise by: the rows held out count too
        stats = column_stats(train)
    fit_x, val_x = standardise(train[fit_idx], train[val_idx], stats=stats)
    with torch.no_grad():
        heads = _train_heads(fit_x, train_labels[fit_idx], num_classes, settings, epochs, batch_size, seed)
    val_y = train_labels[val_idx]  # [V]
    scores = []  # (held-out top-1, held-out cross-entropy) per setting; a diverged head's loss is inf
    with torch.no_grad():
        for head in heads:
            z = head(val_x)  # [V, C]
            scores.append((topk_accuracy(z, val_y, (1,))["top1"], math.inf if diverged(head)
                           else F.cross_entropy(z, val_y).item()))
    best = best_candidate(scores, num_classes)
    if best is None:
        raise ConfigError(f"every linear-probe setting diverged (non-finite weights, or a held-out cross-entropy over "
                          f"{DIVERGED_NATS:g} x ln(classes)) with lr in {lrs} and weight decay in {wds}: lower "
                          f"eval.linear_lrs (and eval.linear_wds)")
    return settings[best], scores[best][0], [settings[i] for i, (_, loss) in enumerate(scores)
                                             if diverged_loss(loss, num_classes)]


def fit_and_score(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                  setting: tuple[float, float], epochs: int = 60, batch_size: int = 1024,
                  seed: int = 0) -> dict[str, float]:
    """Test top-1/top-5 (percent) of one probe at ``setting`` = (lr, wd) trained on all of ``train``.
    ConfigError when it diverges (non-finite weights, or a cross-entropy on ``train`` over
    :data:`DIVERGED_NATS` x ln(classes), as :func:`best_candidate` judges held-out scores); DataError:
    see :func:`check_probe_data`."""
    check_probe_data(train, train_labels, num_classes, test, test_labels)
    return _fit_and_score(train, train_labels, test, test_labels, num_classes, setting, epochs, batch_size, seed)


def _fit_and_score(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                   setting: tuple[float, float], epochs: int, batch_size: int, seed: int,
                   stats: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
    """:func:`fit_and_score` on data already checked (``stats``: as :func:`standardise`'s)."""
    return _fit_and_score_seeds(train, train_labels, test, test_labels, num_classes, setting, epochs, batch_size,
                                [seed], stats)[0]


def _fit_and_score_seeds(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor,
                         num_classes: int, setting: tuple[float, float], epochs: int, batch_size: int,
                         seeds: Sequence[int], stats: tuple[Tensor, Tensor] | None = None) -> list[dict[str, float]]:
    """:func:`_fit_and_score` from each of ``seeds``, the probes trained together (one loop, one
    batched matmul a step: :func:`_train_heads`); the same numbers as one call per seed."""
    full_x, test_x = standardise(train.float(), test.float(), stats=stats)
    with torch.no_grad():
        heads = _train_heads(full_x, train_labels, num_classes, [setting], epochs, batch_size, seeds)
    with torch.no_grad():  # a single setting is never held-out scored: its training cross-entropy judges it
        losses = [math.inf if diverged(head) else F.cross_entropy(head(full_x), train_labels).item() for head in heads]
    if any(diverged_loss(loss, num_classes) for loss in losses):
        raise ConfigError(f"the linear probe diverged (non-finite weights, or a training cross-entropy of "
                          f"{max(losses):.4g} nats, over {DIVERGED_NATS:g} x ln(classes)) on the whole training set "
                          f"at lr {setting[0]:g}, weight decay {setting[1]:g}: lower eval.linear_lrs")
    with torch.no_grad():
        return [topk_accuracy(head(test_x), test_labels) for head in heads]


def linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                 lrs: list[float], wds: list[float], epochs: int = 60, batch_size: int = 1024,
                 val_fraction: float = 0.1, seed: int = 0) -> dict[str, float]:
    """Test top-1/top-5 (percent) of the probe whose (lr, wd) won on the held-out split
    (:func:`select_setting`), retrained on all of ``train`` (:func:`fit_and_score`)."""
    check_probe_data(train, train_labels, num_classes, test, test_labels)
    return _linear_probe(train, train_labels, test, test_labels, num_classes, lrs, wds, epochs, batch_size,
                         val_fraction, seed)


def _linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                  lrs: list[float], wds: list[float], epochs: int, batch_size: int, val_fraction: float,
                  seed: int, stats: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
    """:func:`linear_probe` on data already checked (``stats``: as :func:`standardise`'s)."""
    setting, val_acc, gone = _select_setting(train, train_labels, num_classes, lrs, wds, epochs, batch_size,
                                             val_fraction, seed, stats)
    acc = _fit_and_score(train, train_labels, test, test_labels, num_classes, setting, epochs, batch_size, seed,
                         stats)
    return {**acc, "lr": setting[0], "weight_decay": setting[1], "val_top1": val_acc, "diverged": gone}


def held_out_count(n: int, fraction: float, choices: int = 2) -> int:
    """How many of ``n`` training images are held out to choose one of ``choices`` settings:
    ``round(fraction * n)``, at least 1 and at most ``n - 1``; none when there is a single setting
    (nothing to choose, so every image trains). The probe and the transfer protocols share it."""
    if choices <= 1:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


DIVERGED_NATS = 1000.0  # a held-out cross-entropy above this many times ln(classes) marks a diverged fit


def best_candidate(scores: Sequence[tuple[float, float]], num_classes: int) -> int | None:
    """The index of the best of several candidate settings scored ``(held-out top-1 %, held-out
    cross-entropy in nats)``: the highest top-1, a tie going to the lower cross-entropy (not to the
    first tried). A candidate whose fit diverged is never chosen: its cross-entropy is not finite,
    or above :data:`DIVERGED_NATS` x ln(``num_classes``) (chance is ln C; a transfer lr of 1e4 gave
    2.2e22 nats and 27% held-out top-1 on 30 images, then chance on the test set; an overconfident
    but sound fit stays in the tens of nats). None when every
    one diverged. The linear probe's grid and the transfer protocols' lrs both use it."""
    alive = [i for i, (_, loss) in enumerate(scores) if not diverged_loss(loss, num_classes)]
    return max(alive, key=lambda i: (scores[i][0], -scores[i][1])) if alive else None


def diverged_loss(loss: float, num_classes: int) -> bool:
    """Whether a cross-entropy (nats) marks a diverged fit: not finite, or above :data:`DIVERGED_NATS`
    x ln(``num_classes``). The one criterion for a held-out score (:func:`best_candidate`), a single
    setting's training cross-entropy (the probe's refit) and a single transfer lr's training loss."""
    return not math.isfinite(loss) or loss > DIVERGED_NATS * math.log(max(2, num_classes))


def check_fit_split(n: int, n_val: int, what: str, fix: str = "use more labelled images") -> None:
    """DataError (one line) naming ``what`` and ``fix`` when holding ``n_val`` of ``n`` training images
    out to choose a setting leaves fewer than 2 to fit (one image standardises to NaN and cannot fill
    a BatchNorm batch)."""
    if n - n_val < 2:
        raise DataError(f"{what} has {n} labelled training image(s); holding {n_val} out to choose its "
                        f"settings leaves {n - n_val} to fit, and a fit needs at least 2: {fix}")


def fit_sizes(labels: Tensor, fractions: Sequence[float], val_fraction: float, seed: int,
              choices: int = 2) -> dict[float, tuple[int, int]]:
    """``{fraction: (labelled images, images left to fit)}`` of each labelled fraction of ``labels``
    (the class-balanced subset of :func:`class_balanced_subset`, less the held-out share of
    :func:`held_out_count` for ``choices`` settings): what the probe's and the transfer protocols'
    checks before training read."""
    out = {}
    for f in fractions:
        n = len(labels) if f >= 1 else len(class_balanced_subset(labels, f, seed))
        out[f] = (n, n - held_out_count(n, val_fraction, choices))
    return out


def name_fractions(short: Sequence[float]) -> str:
    """``X% labels`` of the first of ``short`` fractions, ``(also too few at Y%, Z%)`` for the others."""
    also = f" (also too few at {', '.join(f'{f * 100:g}%' for f in short[1:])})" if len(short) > 1 else ""
    return f"{short[0] * 100:g}% labels{also}"


def check_fraction_splits(labels: Tensor, fractions: Sequence[float], val_fraction: float, seed: int,
                          what: str, low_shot_key: str, choices: int = 2) -> None:
    """:func:`check_fit_split` for every labelled fraction before any training, each named (``what``
    at ``X%`` labels) with the fix that applies: more images for all labels, else dropping or raising
    that fraction of ``low_shot_key``. ``choices``: the settings to choose among (one holds nothing
    out, :func:`held_out_count`)."""
    sizes = fit_sizes(labels, fractions, val_fraction, seed, choices)
    short = [f for f, (_, n_fit) in sizes.items() if n_fit < 2]
    if not short:
        return
    first = short[0]
    if first >= 1:
        fix = "use more labelled images"
    else:
        low = ", ".join(f"{f:g}" for f in short if f < 1)
        fix = f"drop {low} from {low_shot_key} or use larger fractions"
    n, n_fit = sizes[first]
    check_fit_split(n, n - n_fit, f"{what} at {name_fractions(short)}", fix)


def selection_warnings(what: str, fraction: float, train_images: int, total_images: int, val_images: int,
                       num_classes: int, choices: int) -> list[str]:
    """One-line warnings for numbers a reader could take for what they are not: a low-shot subset of
    ``train_images`` that is over 1.5x the nominal ``fraction`` of ``total_images`` (the class-balanced
    subset keeps at least one image per class), and a choice among ``choices`` settings made on fewer
    held-out images (``val_images``) than there are classes, where the choice is close to arbitrary
    (ties go to the lower held-out cross-entropy). ``what`` names the probe, e.g. ``linear probe``."""
    out = []
    if fraction < 1 and train_images > 1.5 * fraction * total_images:
        out.append(f"the {what} at {fraction * 100:g}% labels trains on {train_images} of {total_images} images "
                   f"({100 * train_images / total_images:.1f}%): a class-balanced subset keeps at least one image "
                   f"per class")
    if choices > 1 and val_images < num_classes:
        out.append(f"the {what} at {fraction * 100:g}% labels chose among {choices} tried settings on {val_images} held-out "
                   f"image(s), fewer than the {num_classes} classes, so the choice is close to arbitrary; use more "
                   f"labelled images or a single setting")
    return out


def class_balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a seeded subset holding ``round(fraction * n_c)`` (at least one)
    of the ``n_c`` images of every class c, so class proportions are kept."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a labelled fraction must lie in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)  # [n_c]
        n = max(1, round(fraction * len(members)))
        picks.append(members[torch.randperm(len(members), generator=g)[:n]])
    return torch.cat(picks).sort().values


def fraction_key(fraction: float) -> str:
    """Result key of a labelled fraction: "linear" for all labels, else e.g. "linear_1pct"."""
    return "linear" if fraction >= 1 else f"linear_{fraction * 100:g}pct"


def summarise(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and (sample) standard deviation of top-1/top-5 over seeds, plus the per-seed values."""
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for key in ("top1", "top5"):
        vals = torch.tensor([r[key] for r in per_seed], dtype=torch.float64)
        out[key] = vals.mean().item()
        out[f"{key}_std"] = vals.std().item() if len(vals) > 1 else 0.0
        out[f"{key}_per_seed"] = vals.tolist()
    out["lr"] = [r["lr"] for r in per_seed]
    out["weight_decay"] = [r["weight_decay"] for r in per_seed]
    return out


def probe_protocol(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                   lrs: list[float], wds: list[float], fractions: tuple[float, ...] = (1.0, 0.1, 0.01),
                   seeds: int = 3, epochs: int = 60, batch_size: int = 1024, val_fraction: float = 0.1,
                   seed: int = 0) -> dict[str, dict[str, Any]]:
    """Linear probes on every labelled fraction, each as mean +- std over ``seeds`` seeds, with
    ``val_top1``: the chosen setting's top-1 on the split held out from training (the mean over
    seeds for a low-shot fraction), a score that never looked at the test split, ``val_images``
    (that split's size) and ``warnings`` (:func:`selection_warnings`). A grid of one setting has
    nothing to choose: it holds no image out (``val_images`` 0, ``val_top1`` None) and trains on all.

    A fraction below 1 draws a class-balanced subset per seed and chooses (lr, wd) on a
    split held out from that subset. With all labels the choice is made once (at
    ``seed``) and the chosen probe is retrained from each seed (initialisation and
    batch order), which costs one grid instead of ``seeds``. Raises as :func:`linear_probe`;
    the data is checked once here (a class-balanced subset of checked data keeps every
    class, so it needs no check of its own).
    """
    check_probe_data(train, train_labels, num_classes, test, test_labels)
    choices = len(lrs) * len(wds)
    check_fraction_splits(train_labels, fractions, val_fraction, seed, "the linear probe", "eval.low_shot", choices)
    results: dict[str, dict[str, Any]] = {}
    full_stats: tuple[Tensor, Tensor] | None = None  # the whole split's, for subsets under MIN_STAT_ROWS
    fits = sum(seeds + (f >= 1) for f in fractions)  # the grid once for all labels, then one fit per seed
    bar = Bar(f"linear probes ({len(fractions)} label fraction(s) x {seeds} seed(s))", fits, unit="fit")
    for fraction in fractions:
        runs, few = [], []  # few: the sizes of subsets under MIN_STAT_ROWS
        if fraction >= 1:
            setting, val_acc, gone = _select_setting(train, train_labels, num_classes, lrs, wds, epochs,
                                                     batch_size, val_fraction, seed)
            val = [val_acc]
            bar.update()
            accs = _fit_and_score_seeds(train, train_labels, test, test_labels, num_classes, setting, epochs,
                                        batch_size, range(seed, seed + seeds))  # every seed's probe in one loop
            runs += [{**acc, "lr": setting[0], "weight_decay": setting[1], "diverged": gone} for acc in accs]
            bar.update(seeds)
            n_train = len(train_labels)
        else:
            for s in range(seed, seed + seeds):
                idx = class_balanced_subset(train_labels, fraction, s)  # [n]
                n_train = len(idx)
                if n_train < MIN_STAT_ROWS:  # standardised with the whole split's statistics
                    few.append(n_train)
                    full_stats = full_stats or column_stats(train)
                runs.append(_linear_probe(train[idx], train_labels[idx], test, test_labels, num_classes, lrs,
                                          wds, epochs, batch_size, val_fraction, s,
                                          full_stats if n_train < MIN_STAT_ROWS else None))
                bar.update()
            val = [r["val_top1"] for r in runs]
        n_val = held_out_count(n_train, val_fraction, choices)
        results[fraction_key(fraction)] = {
            **summarise(runs), "fraction": fraction, "train_images": n_train,
            "val_top1": None if n_val == 0 else sum(val) / len(val),  # a single setting held nothing out
            "val_images": n_val, "warnings": selection_warnings("linear probe", fraction, n_train, len(train_labels),
                                                                n_val, num_classes, choices)
            + diverged_setting_warnings(runs, fraction)
            + ([f"the linear probe at {fraction * 100:g}% labels trains on {max(few)} images, fewer than "
                f"{MIN_STAT_ROWS}: too few to measure each feature's spread (from a handful of images some features "
                f"are near-constant by chance, and standardising multiplied them on other images by up to 1e4), so "
                f"it is standardised with the whole training split's mean and std (no labels used)"]
               if few else [])}
    bar.close()
    return results


def diverged_setting_warnings(runs: list[dict[str, Any]], fraction: float) -> list[str]:
    """One line per (lr, wd) setting whose probe diverged while the grid was chosen, in any seed of
    ``runs`` (each with its ``diverged`` settings): never chosen, so the reported setting is the best of
    the others, as the transfer protocols say of a diverged lr."""
    gone = sorted({tuple(s) for r in runs for s in r.get("diverged", [])})
    return [f"the linear probe at {fraction * 100:g}% labels: lr {lr:g}, weight decay {wd:g} diverged (never "
            f"chosen; the reported setting is the best of the others)" for lr, wd in gone]


def sklearn_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                  c: float = 1.0, max_iter: int = 1000) -> dict[str, float]:
    """Top-1/top-5 (percent) of scikit-learn's multinomial logistic regression (L-BFGS,
    inverse regularisation ``c``) on the same standardised features as the SGD probe.
    DataError: see :func:`check_probe_data`."""
    check_probe_data(train, train_labels, num_classes, test, test_labels)
    from sklearn.linear_model import LogisticRegression

    x, xt = standardise(train.float(), test.float())
    model = LogisticRegression(C=c, max_iter=max_iter)
    model.fit(x.numpy(), train_labels.numpy())
    with warnings.catch_warnings():  # log(0) = -inf for a class the model rules out: a valid score, not a fault
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = torch.from_numpy(model.predict_log_proba(xt.numpy()))  # [Q, classes seen in train]
    classes = torch.from_numpy(model.classes_)
    full = torch.full((len(xt), num_classes), float("-inf"), dtype=scores.dtype)  # classes absent from train: -inf
    full[:, classes] = scores
    return topk_accuracy(full, test_labels)
