"""Label-free quality signals (selfsup.monitors) against direct numpy computations of their formulas."""

import itertools
import math

import numpy as np
import pytest
import torch

from selfsup.monitors import alignment, collapse_warning, rankme, relative_spread, uniformity


def numpy_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    s = np.linalg.svd(z, compute_uv=False)
    p = s / np.abs(s).sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def unit(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_rankme_of_identity_is_full_and_of_rank_one_is_one():
    assert rankme(torch.eye(64)) == pytest.approx(64, rel=1e-4)  # every singular value equal
    u, v = torch.randn(200, 1), torch.randn(1, 32)
    assert rankme(u @ v) == pytest.approx(1.0, abs=1e-3)  # one non-zero singular value
    assert rankme(torch.zeros(10, 4)) == 1.0


def test_rankme_matches_numpy_on_a_random_matrix_with_decaying_spectrum():
    g = np.random.default_rng(0)
    z = g.normal(size=(300, 40)) * np.linspace(3, 0.01, 40)  # columns of decaying scale
    assert rankme(torch.from_numpy(z).float()) == pytest.approx(numpy_rankme(z), rel=1e-4)
    assert 1 < rankme(torch.from_numpy(z)) < 40


def test_alignment_and_uniformity_match_their_formulas():
    g = np.random.default_rng(1)
    a, b = g.normal(size=(20, 8)), g.normal(size=(20, 8))
    ua, ub = unit(a), unit(b)
    expected_align = np.mean([np.sum((ua[i] - ub[i]) ** 2) for i in range(20)])
    assert alignment(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected_align, rel=1e-9)
    pairs = [np.exp(-2 * np.sum((ua[i] - ua[j]) ** 2)) for i, j in itertools.combinations(range(20), 2)]
    assert uniformity(torch.from_numpy(a)) == pytest.approx(math.log(np.mean(pairs)), rel=1e-9)
    assert alignment(torch.from_numpy(a), torch.from_numpy(3 * a)) == pytest.approx(0, abs=1e-12)  # scale-free
    assert uniformity(torch.ones(5, 3)) == pytest.approx(0, abs=1e-12)  # one point: the maximum


def test_relative_spread_against_its_formula_and_at_its_ends():
    g = np.random.default_rng(2)
    z = g.normal(loc=3.0, size=(50, 6))
    centred = z - z.mean(0)
    want = np.mean(np.sum(centred ** 2, 1)) / np.mean(np.sum(z ** 2, 1))  # mean squared distance to the mean / size
    assert relative_spread(torch.from_numpy(z)) == pytest.approx(want, rel=1e-12)
    assert relative_spread(torch.from_numpy(centred)) == pytest.approx(1.0, rel=1e-12)  # centred rows: all spread
    assert relative_spread(torch.randn(1, 8).expand(30, 8)) == 0.0  # one vector for every row
    assert relative_spread(torch.zeros(4, 3)) == 0.0
    one = torch.randn(1, 64) * 100  # one vector plus float32 rounding-size jitter: still one vector
    assert relative_spread(one + 1e-5 * torch.randn(200, 64)) < 1e-8
    with pytest.raises(ValueError, match="NaN or inf"):
        relative_spread(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))


def test_monitors_refuse_bad_embeddings():
    with pytest.raises(ValueError, match="NaN or inf"):
        rankme(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"N >= 2"):
        uniformity(torch.ones(1, 4))
    with pytest.raises(ValueError, match="same images"):
        alignment(torch.ones(4, 3), torch.ones(5, 3))


def test_collapse_warning_measures_against_the_rank_the_rows_can_reach():
    """RankMe of N embeddings is at most N: 30 test images of a 4,096-d stage (RankMe 21.9, helper-69's) were
    called collapsed against 1% of 4,096; against the 30 they can reach they are not, while 1.2 still is. The
    reach is checked against numpy: the rank of 30 random 4,096-d rows is 30."""
    z = torch.randn(30, 4096, generator=torch.Generator().manual_seed(0))
    assert np.linalg.matrix_rank(z.numpy()) == 30 and rankme(z) <= 30
    assert "collapsed" in collapse_warning(21.9, 4096)  # without the rows: the old verdict
    assert collapse_warning(21.9, 4096, rows=30) is None
    assert "RankMe 1.20 of the 30 that 30 embeddings of 4096 dimensions can reach (below 1.5" in collapse_warning(
        1.2, 4096, rows=30)
    assert "RankMe 10.00 of 2048 dimensions (below 1%)" in collapse_warning(10.0, 2048, rows=5000)  # rows beyond D


def test_collapse_warning_below_one_percent_of_the_width():
    assert "collapsed" in collapse_warning(2.0, 2048)  # < 20.48
    assert collapse_warning(30.0, 2048) is None
    assert "RankMe 1.20 of 64 dimensions (below 1.5, hardly more than one direction)" in collapse_warning(1.2, 64)
    assert "RankMe 2.00 of 2048 dimensions (below 1%)" in collapse_warning(2.0, 2048)  # the floor or the share
    assert collapse_warning(5.0, 64) is None


def test_pretraining_logs_the_monitors_and_restores_train_mode(tmp_path, monkeypatch):
    """A tiny SimCLR run logs RankMe, uniformity and alignment every step on its held batch; the
    values are the monitors of the encoder (eval mode, clean images) and training mode comes back."""
    import csv

    from conftest import ROOT
    from selfsup.config import load_config
    from selfsup.monitors import rankme as rank_of
    from selfsup.train.monitors import LabelFreeMonitor
    from selfsup.train.run import pretrain

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        "data.name=digits", "data.image_size=16", "data.batch_size=64", "trainer.max_steps=3",
        "encoder.kwargs={channels: [8, 16, 32, 64]}", "trainer.progress_bar=false",
        "trainer.monitor_every_n_steps=1", "trainer.monitor_images=48", "trainer.online_probe=false"])
    # the collapse warning reaches the run's log once, through a real Trainer (Lightning replaces every
    # callback's `log` attribute with the LightningModule's, which once crashed the run here)
    import selfsup.train.monitors as monitors

    monkeypatch.setattr(monitors, "collapse_warning",
                        lambda rank, width, rows=None: f"RankMe {rank:.1f} of {width} (forced)")
    lines: list[str] = []
    run = pretrain(cfg, run_dir=tmp_path / "run", log=lines.append)
    warned = [line for line in lines if line.startswith("[monitor] step ")]
    assert len(warned) == 1 and warned[0].endswith("of 64 (forced)")
    rows = [r for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("monitor/rankme")]
    assert len(rows) == 3  # steps 0, 1, 2
    for r in rows:
        assert 1 <= float(r["monitor/rankme"]) <= 48  # at most min(N, D)
        assert -8 <= float(r["monitor/uniformity"]) <= 0 and 0 <= float(r["monitor/alignment"]) <= 4

    from selfsup.data import build_dataset
    from selfsup.train.module import PretrainModule

    ds = build_dataset(cfg.data, "train")
    module = PretrainModule(cfg, ds.info())
    monitor = LabelFreeMonitor(1, 32)
    monitor.held = torch.stack([ds[i][0] for i in range(32)])  # uint8 [32, C, H, W]
    module.train()
    got = monitor.measure(module)
    assert module.method.encoder.training  # restored
    module.method.encoder.eval()
    with torch.no_grad():
        z = module.method.encoder(module.clean(monitor.held))
    assert got["rankme"] == pytest.approx(rank_of(z), rel=1e-6) and set(got) == {"rankme", "uniformity", "alignment"}
