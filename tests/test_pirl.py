"""PIRL: the two-term NCE loss against a direct computation from the memory bank and the
projected features, the bank's momentum update, the jigsaw view, training and config errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import ConfigError
from selfsup.methods.pirl import scaled_negatives
from selfsup.train.module import PretrainModule

from conftest import TINY_INFO as INFO  # noqa: E402

RESNET = ["encoder.name=resnet18", "encoder.kwargs={channels: [8, 16, 32, 64], zero_init_last: false}"]


def direct_nce(v, bank, own, negatives, tau, z):
    """Misra & van der Maaten eq. 3-4 with NPID's Z, one image: ``h(s) = e^(s/tau) / (e^(s/tau) +
    Z m / n)``; ``-log h(own row) - sum_neg log(1 - h(neg row))``."""
    n, m = len(bank), len(negatives)
    noise = z * m / n

    def h(row):
        e = math.exp(sum(a * b for a, b in zip(v, row)) / tau)
        return e / (e + noise)

    return -math.log(h(bank[own])) - sum(math.log(1 - h(bank[k])) for k in negatives)


def record(method, monkeypatch):
    """Capture f, g and the negatives a step uses."""
    seen = {}
    for name in ("image_features", "jigsaw_features"):
        real = getattr(method, name)

        def spy(*args, _real=real, _name=name):
            out = _real(*args)
            seen[_name] = out
            return out

        monkeypatch.setattr(method, name, spy)
    real_sample = method.bank.sample

    def sample(*args, **kwargs):
        seen["negatives"] = real_sample(*args, **kwargs)
        return seen["negatives"]

    monkeypatch.setattr(method.bank, "sample", sample)
    return seen


@pytest.mark.parametrize("lam", [0.5, 0.2])
def test_step_loss_is_the_papers_mix_computed_directly_from_the_bank(lam, tiny_config, monkeypatch):
    torch.manual_seed(0)
    method = PretrainModule(tiny_config(*RESNET, f"method.loss_lambda={lam}", method="pirl"), INFO).method
    seen = record(method, monkeypatch)
    bank = method.bank.bank.clone().tolist()
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    indices = torch.tensor([5, 0, 200, 17])
    out = method.step(images, indices=indices)
    f = seen["image_features"][1].detach().tolist()
    g = seen["jigsaw_features"].detach().tolist()
    negatives = seen["negatives"].tolist()
    assert len(negatives[0]) == 6 == scaled_negatives(0, 256)  # the paper's 2.5% of 256 rows
    tau, n = 0.07, 256
    # Z: n * the mean of e^(s / tau) over both terms' negatives, estimated on this first batch
    exps = [math.exp(sum(a * b for a, b in zip(v, bank[k])) / tau) for feats in (g, f)
            for v, neg in zip(feats, negatives) for k in neg]
    z = n * sum(exps) / len(exps)
    assert out["log_z"].item() == pytest.approx(math.log(z), rel=1e-5)
    jig = sum(direct_nce(v, bank, int(i), neg, tau, z) for v, i, neg in zip(g, indices, negatives)) / 4
    img = sum(direct_nce(v, bank, int(i), neg, tau, z) for v, i, neg in zip(f, indices, negatives)) / 4
    assert out["loss_jigsaw"].item() == pytest.approx(jig, rel=1e-4)
    assert out["loss_image"].item() == pytest.approx(img, rel=1e-4)
    assert out["loss"].item() == pytest.approx(lam * jig + (1 - lam) * img, rel=1e-4)


def test_infonce_objective_is_the_mixed_cross_entropy_among_the_candidates(tiny_config, monkeypatch):
    torch.manual_seed(0)
    method = PretrainModule(tiny_config(*RESNET, "method.objective=infonce", "method.loss_lambda=0.3",
                                        "method.num_negatives=5", method="pirl"), INFO).method
    assert method.nce is None
    seen = record(method, monkeypatch)
    bank = method.bank.bank.clone().tolist()
    indices = torch.tensor([8, 1, 30])
    out = method.step(torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8), indices=indices)
    assert "log_z" not in out

    def cross_entropy(feats):
        total = 0.0
        for v, i, neg in zip(feats, indices.tolist(), seen["negatives"].tolist()):
            logits = [sum(a * b for a, b in zip(v, bank[k])) / 0.07 for k in [i, *neg]]
            total += math.log(sum(math.exp(x) for x in logits)) - logits[0]
        return total / len(feats)

    jig, img = cross_entropy(seen["jigsaw_features"].tolist()), cross_entropy(seen["image_features"][1].tolist())
    assert out["loss"].item() == pytest.approx(0.3 * jig + 0.7 * img, rel=1e-4)
    assert out["mi_bound_image"].item() == pytest.approx(math.log(6) - img, rel=1e-4, abs=1e-5)


def test_the_bank_moves_halfway_to_the_image_feature_after_scoring(tiny_config, monkeypatch):
    torch.manual_seed(0)
    method = PretrainModule(tiny_config(*RESNET, method="pirl"), INFO).method
    seen = record(method, monkeypatch)
    before = method.bank.bank.clone()
    indices = torch.tensor([3, 9, 4])
    method.step(torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8), indices=indices)
    f = seen["image_features"][1].detach()
    expected = F.normalize(0.5 * before[indices] + 0.5 * f, dim=1)  # the paper's momentum 0.5, f(v_I) not g
    torch.testing.assert_close(method.bank.bank[indices], expected)
    others = torch.ones(256, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(method.bank.bank[others], before[others])


def test_the_jigsaw_view_embeds_nine_tiles_with_the_shared_encoder_in_shuffled_order(tiny_config, monkeypatch):
    torch.manual_seed(0)
    method = PretrainModule(tiny_config(*RESNET, method="pirl"), INFO).method
    shapes = []
    method.encoder.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    tiles, perms = [], []
    real = method.jigsaw_features
    monkeypatch.setattr(method, "jigsaw_features", lambda t: tiles.append(t) or real(t))
    import selfsup.methods.pirl as pirl

    real_shuffle = pirl.shuffle_tiles
    monkeypatch.setattr(pirl, "shuffle_tiles", lambda t, p: perms.append((t, p)) or real_shuffle(t, p))
    method.step(torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8), indices=torch.arange(5))
    grid, p = perms[0]
    assert torch.equal(p.sort(1).values, torch.arange(9).expand(5, 9))  # a permutation per image
    assert len({tuple(r) for r in p.tolist()}) > 1  # drawn per image, not one for the batch
    for b in range(5):  # position i shows tile p[b, i]
        assert all(torch.equal(tiles[0][b, i], grid[b, p[b, i]]) for i in range(9))
    assert shapes == [(5, 1, 16, 16), (45, 1, 16, 16)]  # the images, then 9 tiles each (16 px tiles)
    t = tiles[0]
    assert t.shape == (5, 9, 1, 16, 16)
    flat = t.flatten(2)
    torch.testing.assert_close(flat.mean(-1), torch.zeros(5, 9), atol=1e-4, rtol=0)  # each tile normalised
    # g depends on the order of the tiles: the concatenation is ordered
    with torch.no_grad():
        method.eval()
        swapped = t[:, [1, 0, *range(2, 9)]]
        assert not torch.allclose(real(t), real(swapped))


def test_training_moves_the_encoder_and_reports_the_mixed_bound(tiny_config):
    torch.manual_seed(0)
    module = PretrainModule(tiny_config(*RESNET, method="pirl"), INFO)
    method = module.method
    before = {k: p.detach().clone() for k, p in method.encoder.named_parameters()}
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        out = method.step(images, indices=torch.arange(8))
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    moved = [k for k, p in method.encoder.named_parameters() if not torch.equal(p, before[k])]
    assert len(moved) == len(before)
    assert set(out) >= {"mi_bound", "mi_bound_jigsaw", "mi_bound_image", "loss_jigsaw", "loss_image", "log_z"}
    lam = method.cfg.loss_lambda
    torch.testing.assert_close(out["mi_bound"], lam * out["mi_bound_jigsaw"] + (1 - lam) * out["mi_bound_image"])
    assert out["mi_bound_jigsaw"] <= math.log(6 + 1) + 1e-5  # InfoNCE among 1 + m candidates


def test_scaled_negatives_keep_the_papers_fraction_of_the_bank():
    assert scaled_negatives(0, 1281167) == 32000  # the paper's ImageNet setting
    assert scaled_negatives(0, 60000) == 1499  # Fashion-MNIST: 32000 * 60000 / 1281167 = 1498.6
    assert scaled_negatives(0, 50000) == 1249  # CIFAR-10: 1248.9
    assert scaled_negatives(0, 10) == 1
    assert scaled_negatives(4096, 60000) == 4096


@pytest.mark.parametrize("override,error,message", [
    ("method.bank_size=20", ValueError, "pirl: method.bank_size=20 but the training set has 256 images"),
    ("method.loss_lambda=1.5", ConfigError, "loss_lambda"),
    ("method.bank_momentum=1.0", ConfigError, "bank_momentum"),
    ("method.objective=softmax", ConfigError, "objective"),
])
def test_bad_settings_are_one_line_errors(override, error, message, tiny_config):
    with pytest.raises(error, match=message) as err:
        PretrainModule(tiny_config(*RESNET, override, method="pirl"), INFO)
    assert "\n" not in str(err.value)


def test_a_step_without_indices_or_with_indices_outside_the_bank_is_refused(tiny_config):
    method = PretrainModule(tiny_config(*RESNET, method="pirl"), INFO).method
    images = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    with pytest.raises(ValueError, match="pirl needs the dataset index of every image"):
        method.training_step(images)
    with pytest.raises(IndexError, match=r"must lie in \[0, 256\)"):
        method.training_step(images, indices=torch.tensor([0, 256]))
