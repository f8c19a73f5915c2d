"""Linear probe on cached frozen features (the backbone never runs again).

Features are standardised with training statistics (as MAE's BatchNorm-without-affine
probe does); a grid of learning rates and weight decays is trained at once, one
linear head per setting, the best is chosen on a seeded split held out from the
training set, then retrained on the whole training set and scored on the test split.
"""

from __future__ import annotations

import math
from itertools import product

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.eval.knn import topk_accuracy


def _train_heads(x: Tensor, y: Tensor, num_classes: int, settings: list[tuple[float, float]],
                 epochs: int, batch_size: int, seed: int) -> list[nn.Linear]:
    """One linear head per (lr, wd) setting, trained together with SGD (momentum 0.9,
    cosine schedule) on standardised features ``x`` [N, D]."""
    g = torch.Generator().manual_seed(seed)
    heads = []
    for _ in settings:
        head = nn.Linear(x.shape[1], num_classes)
        with torch.no_grad():
            head.weight.normal_(0, 0.01, generator=g)
            head.bias.zero_()
        heads.append(head)
    opt = torch.optim.SGD([{"params": h.parameters(), "lr": lr, "weight_decay": wd}
                           for h, (lr, wd) in zip(heads, settings)], lr=0.1, momentum=0.9)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            loss = sum(F.cross_entropy(h(xb), yb) for h in heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return heads


def standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                 lrs: list[float], wds: list[float], epochs: int = 60, batch_size: int = 1024,
                 val_fraction: float = 0.1, seed: int = 0) -> dict[str, float]:
    """Test top-1/top-5 (percent) of the probe whose (lr, wd) won on the held-out split."""
    train, test = train.float(), test.float()
    settings = list(product(lrs, wds))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    n_val = max(1, int(round(val_fraction * len(train))))
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    fit_x, val_x = standardise(train[fit_idx], train[val_idx])
    with torch.enable_grad():
        heads = _train_heads(fit_x, train_labels[fit_idx], num_classes, settings, epochs, batch_size, seed)
    with torch.no_grad():
        val_acc = [topk_accuracy(h(val_x), train_labels[val_idx], (1,))["top1"] for h in heads]
    best = max(range(len(settings)), key=lambda i: val_acc[i])
    full_x, test_x = standardise(train, test)
    with torch.enable_grad():
        (head,) = _train_heads(full_x, train_labels, num_classes, [settings[best]], epochs, batch_size, seed)
    with torch.no_grad():
        acc = topk_accuracy(head(test_x), test_labels)
    return {**acc, "lr": settings[best][0], "weight_decay": settings[best][1], "val_top1": val_acc[best]}
