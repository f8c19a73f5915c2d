"""The linear probe learns a linearly separable set and chooses its lr on held-out data."""

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
