"""The linear probe learns a linearly separable set and chooses its lr on held-out data."""

import statistics

import pytest
import torch

from selfsup.eval.linear import linear_probe


def test_learns_linearly_separable_toy_set():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 5, generator=g)
    x = torch.randn(3000, 20, generator=g)
    y = (x @ w).argmax(1)  # labels given by a linear rule
    res = linear_probe(x[:2500], y[:2500], x[2500:], y[2500:], 5, lrs=[0.001, 0.5], wds=[0.0],
                       epochs=30, batch_size=256)
    assert res["top1"] >= 95.0
    assert res["lr"] == 0.5  # the tiny lr cannot fit in 30 epochs; the held-out split must reject it
    assert res["top5"] == 100.0


def test_random_labels_stay_near_chance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 10, generator=g)
    y = torch.randint(0, 4, (2000,), generator=g)
    res = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], 4, lrs=[0.1], wds=[0.0], epochs=5)
    assert res["top1"] < 35.0


def test_class_balanced_subset_keeps_class_proportions():
    from selfsup.eval.linear import class_balanced_subset

    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([500, 300, 120, 7])])[torch.randperm(927)]
    idx = class_balanced_subset(labels, 0.1, seed=3)
    counts = torch.bincount(labels[idx], minlength=4).tolist()
    assert counts == [50, 30, 12, 1]  # round(0.1 * n_c), at least one per class
    assert len(set(idx.tolist())) == len(idx)  # no image twice
    assert torch.equal(idx, class_balanced_subset(labels, 0.1, seed=3))  # seeded
    assert not torch.equal(idx, class_balanced_subset(labels, 0.1, seed=4))
    with pytest.raises(ValueError, match="fraction"):
        class_balanced_subset(labels, 0.0, seed=0)


def test_probe_protocol_reports_seed_statistics_and_low_shot():
    from selfsup.eval.linear import probe_protocol

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 4, generator=g)
    x = torch.randn(3000, 16, generator=g)
    y = (x @ w + 0.8 * torch.randn(3000, 4, generator=g)).argmax(1)  # a noisy linear rule
    res = probe_protocol(x[:2400], y[:2400], x[2400:], y[2400:], 4, [0.1], [0.0], fractions=(1.0, 0.1, 0.01),
                         seeds=3, epochs=10, batch_size=256)
    assert list(res) == ["linear", "linear_10pct", "linear_1pct"]
    assert [res[k]["train_images"] for k in res] == [2400, 240, 24]
    for r in res.values():
        assert r["seeds"] == 3 and len(r["top1_per_seed"]) == 3
        assert abs(r["top1"] - statistics.mean(r["top1_per_seed"])) < 1e-9
        assert abs(r["top1_std"] - statistics.stdev(r["top1_per_seed"])) < 1e-9
    # fewer labels give a worse probe, and different subsets give different scores
    assert res["linear"]["top1"] > res["linear_10pct"]["top1"] > res["linear_1pct"]["top1"]
    assert res["linear_1pct"]["top1_std"] > 0


def test_sgd_probe_agrees_with_sklearn_logistic_regression():
    """The cross-check on small data: sklearn digits pixels, the two probes within 3 points."""
    from sklearn.datasets import load_digits

    from selfsup.eval.linear import linear_probe, sklearn_probe

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    ours = linear_probe(x[tr], y[tr], x[te], y[te], 10, lrs=[0.01, 0.1], wds=[0.0, 1e-4], epochs=60, batch_size=256)
    ref = sklearn_probe(x[tr], y[tr], x[te], y[te], 10)
    assert ref["top1"] > 90 and ours["top1"] > 90
    assert abs(ours["top1"] - ref["top1"]) <= 3.0
