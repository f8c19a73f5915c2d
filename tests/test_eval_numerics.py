"""Weighted-kNN votes exp(sim / T) stay finite and rank classes correctly for every T > 0
(eval.knn accepts any finite positive T), against exact sums in ``decimal``."""

import decimal
import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch

from selfsup.eval.knn import knn_evaluate, topk_accuracy, vote

CLASSES = 10


def exact_totals(sims, labels, t, prec=80):
    """Per query {class: sum of exp(sim / t)} in exact-enough decimal arithmetic (no overflow:
    decimal exponents reach 10**(10**18))."""
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = prec, decimal.MAX_EMAX, decimal.MIN_EMIN
        out = []
        for row_s, row_c in zip(sims.tolist(), labels.tolist()):
            totals = {}
            for s, c in zip(row_s, row_c):
                if c >= 0:
                    totals[c] = totals.get(c, Decimal(0)) + (Decimal(s) / Decimal(t)).exp()
            out.append(totals)
    return out


def ranked(totals):
    return sorted(totals, key=lambda c: (totals[c], -c), reverse=True)  # ties: lower class first


def sims_and_labels(q=200, k=30, seed=0):
    """float32 similarities in [-1, 1] and slightly beyond (float32 rounding of unit vectors), best first,
    with repeated values (a duplicated train row); labels with some -1 (no neighbour)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(q, k, generator=g, dtype=torch.float64) * 2 - 1).float()
    s[:, 0] = 1.0 + 1.2e-7  # the rounding of a unit vector's self-similarity
    s[:, -1] = -1.0 - 1.2e-7
    s = s.sort(dim=1, descending=True).values
    labels = torch.randint(0, CLASSES, (q, k), generator=g)
    s[::7, 3], labels[::7, 3] = s[::7, 2], labels[::7, 2]  # a train row present twice
    labels[::5, -4:] = -1  # missing neighbours at the tail, as faiss returns them
    return s, labels


@pytest.mark.parametrize("t", [1e-4, 1e-3, 0.01, 0.07, 0.5, 1.0, 2.0, 100.0, 1e4])
def test_vote_is_finite_and_ranks_as_exact_sums(t):
    """Exact decimal sums are the reference; at T = 1e-4 exp(1 / T) is 10^4343, far beyond float64."""
    sims, labels = sims_and_labels()
    scores = vote(sims, labels, sims.shape[1], t, CLASSES)  # [Q, C]
    ref = exact_totals(sims, labels, t)
    for q, totals in enumerate(ref):
        voted = torch.isfinite(scores[q])
        assert not scores[q].isnan().any() and not (scores[q] == math.inf).any()
        assert voted.nonzero().squeeze(1).tolist() == sorted(totals)  # -inf exactly where no vote
        order = torch.argsort(scores[q], descending=True, stable=True)[:len(totals)].tolist()
        assert order == ranked(totals), q
    # the naive float32 form overflows here (the fault), so the comparison above is not vacuous at small T
    if t <= 0.01:
        assert torch.isinf((sims / t).exp()).any()


@pytest.mark.parametrize("t", [5e-324, 1e-300, 1e-15])
def test_vote_at_vanishing_temperature_ranks_by_best_similarity(t):
    """As T -> 0 the class with the most similar neighbour wins, then the next best: exact sums
    agree (where decimal can still hold them), and the scores stay finite."""
    sims = torch.tensor([[0.9, 0.8, 0.8, 0.7, 0.1, -0.5]], dtype=torch.float32)
    labels = torch.tensor([[4, 1, 1, 7, 2, -1]])
    scores = vote(sims, labels, 6, t, CLASSES)[0]
    assert torch.isfinite(scores[[4, 1, 7, 2]]).all() and (scores[[0, 3, 5, 6, 8, 9]] == -math.inf).all()
    assert torch.argsort(scores, descending=True, stable=True)[:4].tolist() == [4, 1, 7, 2]
    if t >= 1e-15:
        assert ranked(exact_totals(sims.double(), labels, t)[0]) == [4, 1, 7, 2]


@pytest.mark.parametrize("t", [1e8, 1e300, 1.7e308])
def test_vote_at_huge_temperature_ranks_by_vote_count(t):
    """As T -> inf every vote weighs 1: the class with the most neighbours wins; scores stay finite."""
    sims = torch.tensor([[0.99, 0.2, 0.1, 0.0, -0.1, -0.3, -0.9]], dtype=torch.float32)
    labels = torch.tensor([[5, 2, 3, 3, 3, 2, -1]])
    scores = vote(sims, labels, 7, t, CLASSES)[0]
    assert torch.isfinite(scores[[3, 2, 5]]).all() and not scores.isnan().any()
    assert torch.argsort(scores, descending=True, stable=True)[:3].tolist() == [3, 2, 5]
    if t <= 1e8:
        assert ranked(exact_totals(sims.double(), labels, t)[0]) == [3, 2, 5]


def test_vote_uses_only_the_first_k_neighbours_and_refuses_bad_input():
    sims = torch.tensor([[0.9, 0.5, 0.4]])
    labels = torch.tensor([[1, 2, 2]])
    assert vote(sims, labels, 1, 0.1, 3)[0].isfinite().tolist() == [False, True, False]
    assert vote(sims, labels, 3, 10.0, 3)[0].argmax().item() == 2  # two votes beat one at high T
    for t in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            vote(sims, labels, 3, t, 3)
    with pytest.raises(ValueError, match="not below num_classes"):
        vote(sims, labels, 3, 0.1, 2)


def test_topk_accuracy_never_counts_a_class_without_score():
    scores = torch.tensor([[-math.inf, 0.5, -math.inf, -math.inf],  # only class 1 voted; label 0
                           [math.nan, 0.1, 0.2, 0.3],  # a NaN score is no prediction
                           [1.0, 3.0, 2.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    assert topk_accuracy(scores, labels, (1, 3)) == pytest.approx({"top1": 0.0, "top3": 100 / 3})
    with pytest.raises(ValueError, match="no rows"):
        topk_accuracy(scores[:0], labels[:0])


@pytest.mark.parametrize("t", [1e-4, 1e4])
def test_knn_evaluate_at_extreme_temperatures_matches_exact_reference(t):
    """End to end at the extremes: neighbours by float64 numpy, votes summed in decimal."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(CLASSES, 12))
    ytr, yte = rng.integers(0, CLASSES, 500), rng.integers(0, CLASSES, 120)
    train = centres[ytr] + rng.normal(scale=1.2, size=(500, 12))
    test = centres[yte] + rng.normal(scale=1.2, size=(120, 12))
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = b @ a.T  # [Q, N], float64
    order = np.argsort(-sims, axis=1, kind="stable")[:, :40]  # [Q, 40]
    ref = exact_totals(torch.from_numpy(np.take_along_axis(sims, order, 1)), torch.from_numpy(ytr[order]), t)
    top1 = 100 * np.mean([yte[q] in ranked(r)[:1] for q, r in enumerate(ref)])
    top5 = 100 * np.mean([yte[q] in ranked(r)[:5] for q, r in enumerate(ref)])
    got = knn_evaluate(torch.tensor(train, dtype=torch.float32), torch.tensor(ytr),
                       torch.tensor(test, dtype=torch.float32), torch.tensor(yte), [(40, t)], CLASSES)
    assert got[f"k=40,T={t:g}"] == pytest.approx({"top1": top1, "top5": top5}, abs=1e-4)
    assert 20 < top1 < top5 < 100
