"""faiss weighted kNN against a brute-force numpy implementation."""

import numpy as np
import pytest
import torch

from selfsup.eval.knn import knn_evaluate


def brute_force(train, ytr, test, k, t, classes):
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    preds = []
    for q in b:
        sims = a @ q
        order = np.argsort(-sims, kind="stable")[:k]
        scores = np.zeros(classes)
        for i in order:
            scores[ytr[i]] += np.exp(sims[i] / t)
        preds.append(np.argsort(-scores, kind="stable"))
    return np.array(preds)


@pytest.mark.parametrize("k, t", [(1, 0.1), (5, 0.07), (20, 0.5)])
def test_matches_brute_force(k, t):
    rng = np.random.default_rng(k)
    classes = 4
    centers = rng.normal(size=(classes, 16))
    ytr = rng.integers(0, classes, 300)
    yte = rng.integers(0, classes, 80)
    train = centers[ytr] + rng.normal(scale=1.5, size=(300, 16))
    test = centers[yte] + rng.normal(scale=1.5, size=(80, 16))
    res = knn_evaluate(torch.tensor(train, dtype=torch.float32), torch.tensor(ytr), torch.tensor(test, dtype=torch.float32),
                       torch.tensor(yte), [(k, t), (2, 1.0)], classes)
    preds = brute_force(train, ytr, test, k, t, classes)
    top1 = 100 * np.mean(preds[:, 0] == yte)
    top5 = 100 * np.mean([yte[i] in preds[i, :5] for i in range(len(yte))])
    got = res[f"k={k},T={t:g}"]
    assert got["top1"] == pytest.approx(top1, abs=1e-4)
    assert got["top5"] == pytest.approx(top5, abs=1e-4)
    assert 40 < top1 <= 100  # the toy problem is learnable, so the comparison is not vacuous
