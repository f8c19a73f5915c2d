"""The linear probe learns, chooses lr / weight decay on held-out data (also inside each
low-shot subset), is retrained on the whole training set, and refuses what it cannot score."""

import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import selfsup.eval.linear as linear
from selfsup.config import ConfigError
from selfsup.data import DataError
from selfsup.eval.linear import fit_and_score, linear_probe, probe_protocol, select_setting, sklearn_probe

GOOD, SLOW, DIVERGES = (0.5, 0.0), (1e-7, 0.0), (0.5, 100.0)  # lr * wd = 50: each step multiplies w by -49


def noisy_linear_set(classes=12, n=3000, dim=20, noise=1.5, seed=0):
    """Labels from a noisy linear rule over 12 classes: learnable, with top-5 informative (< 100)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, classes, generator=g)
    x = torch.randn(n, dim, generator=g)
    return x, (x @ w + noise * torch.randn(n, classes, generator=g)).argmax(1)


@pytest.fixture
def spy(monkeypatch):
    """Every _train_heads call as (rows, settings, heads)."""
    calls = []
    real = linear._train_heads

    def record(x, y, num_classes, settings, epochs, batch_size, seeds):
        heads = real(x, y, num_classes, settings, epochs, batch_size, seeds)
        calls.append((len(x), list(settings), heads, x, y, [seeds] if isinstance(seeds, int) else list(seeds)))
        return heads

    monkeypatch.setattr(linear, "_train_heads", record)
    return calls


def test_chooses_lr_and_wd_on_held_out_split_and_retrains_on_all(spy):
    x, y = noisy_linear_set()
    res = linear_probe(x[:2500], y[:2500], x[2500:], y[2500:], 12, lrs=[1e-7, 0.5], wds=[0.0, 100.0],
                       epochs=30, batch_size=256)
    assert (res["lr"], res["weight_decay"]) == GOOD
    # selection: the 2 x 2 grid on the 2250 rows left after holding out 10%, then one probe on all 2500
    (n_fit, grid, heads, fit_x, fit_y, _), (n_all, final, (head,), all_x, _, _) = spy
    assert n_fit == 2250 and grid == [SLOW, (1e-7, 100.0), GOOD, DIVERGES]
    assert n_all == 2500 and final == [GOOD]
    # the grid had settings that clearly fail: a tiny lr stays at chance, lr * wd = 5 diverges
    with torch.no_grad():
        fit_acc = [100 * (h(fit_x).argmax(1) == fit_y).float().mean().item() for h in heads]
    assert fit_acc[0] < 20 and fit_acc[1] < 20 and fit_acc[2] > 60
    assert not torch.isfinite(heads[3].weight).all()
    # the reported numbers are the final probe's: top-1 and top-5 recomputed from its weights in numpy
    xtr, xte = x[:2500].double().numpy(), x[2500:].double().numpy()
    z = (xte - xtr.mean(0)) / xtr.std(0, ddof=1)
    logits = z @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    order = np.argsort(-logits, axis=1)
    yte = y[2500:].numpy()
    assert res["top1"] == pytest.approx(100 * np.mean(order[:, 0] == yte), abs=0.21)  # one row of 500
    assert res["top5"] == pytest.approx(100 * np.mean((order[:, :5] == yte[:, None]).any(1)), abs=0.21)
    assert 60 < res["top1"] < res["top5"] < 100  # 12 classes: top-5 is informative
    # the same as training the chosen setting on all of train directly
    direct = fit_and_score(x[:2500], y[:2500], x[2500:], y[2500:], 12, GOOD, epochs=30, batch_size=256)
    assert direct == {k: res[k] for k in ("top1", "top5")}


def test_low_shot_chooses_its_own_setting_on_a_split_of_each_subset(spy):
    x, y = noisy_linear_set(n=2700)
    res = probe_protocol(x[:2400], y[:2400], x[2400:], y[2400:], 12, [1e-7, 0.5], [0.0], fractions=(1.0, 0.2),
                         seeds=2, epochs=30, batch_size=256)
    assert res["linear"]["lr"] == [0.5, 0.5] and res["linear_20pct"]["lr"] == [0.5, 0.5]
    n_sub = res["linear_20pct"]["train_images"]
    assert 450 < n_sub < 510
    n_val = round(0.1 * n_sub)
    sizes = [(n, settings, seeds) for n, settings, *_, seeds in spy]
    assert sizes == [
        (2400 - 240, [SLOW, GOOD], [0]), (2400, [GOOD], [0, 1]),  # all labels: one selection, one probe a seed
        (n_sub - n_val, [SLOW, GOOD], [0]), (n_sub, [GOOD], [0]),  # each seed's subset: its own selection,
        (n_sub - n_val, [SLOW, GOOD], [1]), (n_sub, [GOOD], [1])]  # then all of it
    assert not torch.equal(spy[3][4], spy[5][4])  # the two seeds drew different subsets
    # val_top1: the chosen setting's held-out top-1 (never the test split), for picking among probes
    _, held_out = select_setting(x[:2400], y[:2400], 12, [1e-7, 0.5], [0.0], epochs=30, batch_size=256)
    assert res["linear"]["val_top1"] == held_out and 60 < held_out <= 100
    assert 0 < res["linear_20pct"]["val_top1"] <= 100
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


def test_probe_protocol_reports_held_out_sizes():
    """Each fraction reports how many images chose its setting: round(0.1 x its training images)."""
    x, y = noisy_linear_set(n=2700)
    res = probe_protocol(x[:2400], y[:2400], x[2400:], y[2400:], 12, [0.5, 0.05], [0.0], fractions=(1.0, 0.1),
                         seeds=1, epochs=2, batch_size=256)
    assert res["linear"]["val_images"] == 240
    assert res["linear_10pct"]["val_images"] == round(0.1 * res["linear_10pct"]["train_images"]) == 24


def test_a_tie_on_held_out_top1_goes_to_the_lower_cross_entropy():
    """Well-separated classes: a small and a large lr both classify every held-out image, so top-1 ties;
    the choice is the confident probe (lower held-out cross-entropy) whatever the grid's order."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    x = torch.randn(400, 8, generator=g) + 6 * torch.eye(8)[y]
    for lrs in ([0.01, 1.0], [1.0, 0.01]):  # each alone: 100% held-out top-1
        setting, val = select_setting(x, y, 4, lrs, [0.0], epochs=5, batch_size=64)
        assert (setting, val) == ((1.0, 0.0), 100.0)


def test_best_candidate_prefers_top1_then_cross_entropy_and_never_a_diverged_fit():
    from selfsup.eval.linear import best_candidate

    assert best_candidate([(50.0, 1.0), (60.0, 2.0)], 10) == 1  # top-1 first
    assert best_candidate([(60.0, 1.5), (60.0, 0.5)], 10) == 1  # a tie: the lower cross-entropy, not the first
    assert best_candidate([(0.0, float("nan")), (0.0, 2.3)], 10) == 1  # a diverged fit never wins a tie
    assert best_candidate([(90.0, float("inf")), (10.0, 2.3)], 10) == 1  # nor on top-1
    # the second tour's case: a finite but absurd loss (2.2e22 nats, 27% on 30 images, chance on the test set)
    assert best_candidate([(26.67, 2.2e22), (13.33, 2.301)], 10) == 1
    assert best_candidate([(40.0, 1000 * math.log(10) * 1.01), (13.0, 2.3)], 10) == 1  # just over 1000 x ln C
    assert best_candidate([(40.0, 1000 * math.log(10) * 0.99), (13.0, 2.3)], 10) == 0  # just under: kept
    assert best_candidate([(0.0, float("nan")), (0.0, float("inf")), (30.0, 6e27)], 10) is None


def test_a_split_that_leaves_one_image_to_fit_is_refused_with_the_cause():
    """The tour's case: 1 image per class at a low-shot fraction, 2 classes, 1 held out: 1 image to fit used
    to standardise to NaN and be reported as 'every setting diverged, lower eval.linear_lrs'. The protocol
    names the fraction and the fix that applies to it, before any training."""
    x, y = torch.randn(2, 5), torch.tensor([0, 1])
    with pytest.raises(DataError, match=r"^the linear probe has 2 labelled training image\(s\); holding 1 out to "
                                        r"choose its settings leaves 1 to fit, and a fit needs at least 2"):
        select_setting(x, y, 2, [0.1, 0.01], [0.0], epochs=2)
    x6, y6 = torch.randn(6, 5), torch.tensor([0, 1] * 3)
    with pytest.raises(DataError, match=r"^the linear probe at 10% labels \(also too few at 1%\) has 2 labelled "
                                        r"training image\(s\); .* drop 0.1, 0.01 from eval.low_shot or use larger "
                                        r"fractions$"):  # every fraction that is too small, named at once
        probe_protocol(x6, y6, x6, y6, 2, [0.1, 0.01], [0.0], fractions=(1.0, 0.1, 0.01), seeds=1, epochs=2)
    with pytest.raises(DataError, match=r"^the linear probe at 100% labels has 2 .*: use more labelled images$"):
        probe_protocol(x, y, x, y, 2, [0.1], [0.0, 1e-4], fractions=(1.0,), seeds=1, epochs=2)


def test_a_column_constant_on_the_fit_rows_keeps_scale_one():
    """The last tour's regression: raw pixels of 30 images, a border pixel constant (0) on the fit rows but
    not on a held-out row. Divided by the 1e-6 floor it became 1e5 there and every setting's held-out
    cross-entropy thousands of nats ('every setting diverged'); a constant column now keeps scale 1."""
    from selfsup.eval.linear import standardise

    fit = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    held = torch.tensor([[0.1, 2.0]])
    fit_x, held_x = standardise(fit, held)
    assert torch.equal(fit_x[:, 0], torch.zeros(2)) and held_x[0, 0].item() == pytest.approx(0.1)
    assert held_x[0, 1].item() == pytest.approx(0.0) and fit_x[:, 1].tolist() == pytest.approx([-0.7071, 0.7071], abs=1e-4)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 4
    x = torch.randn(40, 6, generator=g) + 3 * torch.eye(6)[y]
    x[:, 5] = 0.0
    x[0, 5] = 1.0  # non-zero in one row only: held out or fitted, it must not blow up
    setting, val = select_setting(x, y, 4, [0.1, 0.01], [0.0], epochs=5, batch_size=16)
    assert setting[0] in (0.1, 0.01) and val > 25.0


def test_selection_warnings_name_an_inflated_fraction_and_a_tiny_held_out_split():
    """300 training images of 10 classes at 1%: one image per class makes it 10 images (3.3%), and
    12 settings chosen on 1 held-out image; with enough images, or one setting, nothing is said."""
    from selfsup.eval.linear import selection_warnings

    warns = selection_warnings("linear probe", 0.01, 10, 300, 1, 10, 12)
    assert warns == [
        "the linear probe at 1% labels trains on 10 of 300 images (3.3%): a class-balanced subset keeps at least "
        "one image per class",
        "the linear probe at 1% labels chose among 12 tried settings on 1 held-out image(s), fewer than the 10 classes, "
        "so the choice is close to arbitrary; use more labelled images or a single setting"]
    assert selection_warnings("linear probe", 0.01, 600, 60000, 60, 10, 12) == []
    assert selection_warnings("linear probe", 1.0, 30, 30, 3, 10, 1) == []  # one setting: nothing chosen
    assert len(selection_warnings("bitfit", 1.0, 30, 30, 3, 10, 2)) == 1  # all labels, 3 held out, 2 lrs


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


@pytest.mark.parametrize("probe", ["linear_probe", "probe_protocol", "select_setting", "fit_and_score",
                                   "sklearn_probe"])
def test_probes_refuse_what_they_cannot_score(probe):
    """One class in train, unlabeled (-1) or out-of-range labels, NaN/inf features: one-line errors before any work."""
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(40, 6, generator=g), torch.randn(10, 6, generator=g)
    y, yt = torch.arange(40) % 3, torch.arange(10) % 3

    def call(x, y, xt, yt, classes=3):
        if probe == "select_setting":
            return select_setting(x, y, classes, [0.1], [0.0])
        if probe == "fit_and_score":
            return fit_and_score(x, y, xt, yt, classes, (0.1, 0.0))
        if probe == "sklearn_probe":
            return sklearn_probe(x, y, xt, yt, classes)
        return getattr(linear, probe)(x, y, xt, yt, classes, [0.1], [0.0])

    one_class = r"^a linear probe needs at least two classes in its training labels, found only class 2 \(40 rows\)"
    with pytest.raises(DataError, match=one_class + ".*eval.linear=false"):
        call(x, torch.full((40,), 2), xt, yt)
    with pytest.raises(DataError, match=r"^1 of 40 train labels lie outside \[0, 3\) \(e.g. -1 at row 7"):
        call(x, torch.where(torch.arange(40) == 7, -1, y), xt, yt)
    out_of_range = r"^13 of 40 train labels lie outside \[0, 2\) \(e.g. 2 at row 2; rows 2, 5, 8, 11, 14 and 8 more\)"
    with pytest.raises(DataError, match=out_of_range):
        call(x, y, xt, yt % 2, classes=2)  # class 2 beyond num_classes = 2
    bad = x.clone()
    bad[[4, 9], 0] = float("nan")
    with pytest.raises(DataError, match=r"^2 of 40 train feature rows hold NaN or inf \(rows 4, 9\)"):
        call(bad, y, xt, yt)
    if probe != "select_setting":  # test data: only where it is used
        with pytest.raises(DataError, match=r"^1 of 10 test labels lie outside \[0, 3\) \(e.g. 5 at row 0"):
            call(x, y, xt, torch.where(torch.arange(10) == 0, 5, yt))
        inf = xt.clone()
        inf[3] = float("inf")
        with pytest.raises(DataError, match=r"^1 of 10 test feature rows hold NaN or inf \(rows 3\)"):
            call(x, y, inf, yt)


def test_a_diverging_probe_is_an_error_not_a_number(spy):
    x, y = noisy_linear_set(n=600)
    with pytest.raises(ConfigError, match=r"every linear-probe setting diverged .*lower eval.linear_lrs"):
        select_setting(x, y, 12, [0.5], [100.0, 200.0], epochs=5, batch_size=256)
    with pytest.raises(ConfigError, match=r"diverged .* at lr 0.5, weight decay 100: lower eval.linear_lrs"):
        fit_and_score(x[:500], y[:500], x[500:], y[500:], 12, DIVERGES, epochs=5, batch_size=256)


def test_protocol_checks_each_split_once_not_once_per_probe(spy, monkeypatch):
    """3 fractions x 2 seeds run 7 probes; the NaN/inf scan reads train and test once each (on
    ImageNet-size features every extra scan is a pass over gigabytes), and still refuses bad data."""
    scans = []
    real = linear.check_finite

    def counting(x, what, *args):
        scans.append((what, len(x)))
        return real(x, what, *args)

    monkeypatch.setattr(linear, "check_finite", counting)
    x, y = noisy_linear_set(n=600)
    res = probe_protocol(x[:500], y[:500], x[500:], y[500:], 12, [0.1, 0.01], [0.0], fractions=(1.0, 0.5, 0.2),
                         seeds=2, epochs=2, batch_size=256)
    assert set(res) == {"linear", "linear_50pct", "linear_20pct"}
    assert len(spy) == 1 + 1 + 2 * 2 * 2  # trainings: one selection + the 2 seeds' refits together, then 2 x (select + fit)
    assert scans == [("train", 500), ("test", 100)]
    bad = x[500:].clone()
    bad[7, 3] = float("nan")
    with pytest.raises(DataError, match=r"^1 of 100 test feature rows hold NaN or inf \(rows 7\)"):
        probe_protocol(x[:500], y[:500], bad, y[500:], 12, [0.1], [0.0], fractions=(1.0, 0.5), seeds=2, epochs=2)


def test_one_probe_seed_shows_no_spread_it_did_not_measure():
    """With eval.probe_seeds=1 the table printed `95.56 ± 0.00`, a spread of zero that nobody measured:
    one seed shows the mean alone and says so; two seeds show the sample std."""
    from selfsup.eval.report import markdown_table

    def table(per_seed):
        row = {"label": "run x", "kind": "pretrained", "dataset": "toy", "train_images": 64, "test_images": 10,
               "seed": 0, "knn": {}, "linear": linear.summarise(per_seed)}
        return markdown_table([row])

    one = table([{"top1": 95.555, "top5": 99.0, "lr": 0.1, "weight_decay": 0.0}])
    assert "| 95.56 |" in one and "95.56 ±" not in one and "± 0.00" not in one
    assert "from one seed: no spread is measured" in one
    two = table([{"top1": 95.0, "top5": 99.0, "lr": 0.1, "weight_decay": 0.0},
                 {"top1": 96.0, "top5": 99.0, "lr": 0.1, "weight_decay": 0.0}])
    assert f"95.50 ± {statistics.stdev([95.0, 96.0]):.2f}" in two and "sample standard deviation over 2" in two


def test_a_tiny_low_shot_subset_is_standardised_with_the_whole_splits_statistics():
    """helper-69's: a 1% subset of 3 images (one per class) whose feature 0 is 0.010788 and 0.010834 on the two
    images it fits on (std 3e-5) but ~N(0, 1) elsewhere: standardised by its own std, the held-out image's value
    became about 1e4 and every setting was judged diverged, aborting the whole evaluation. A subset under
    MIN_STAT_ROWS images is standardised with the whole split's mean and std (label-free), says so, and scores
    as a probe standardised that way by hand."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(330, 8, generator=g), torch.arange(330) % 3
    x[:300] += 3 * F.one_hot(y[:300], 8)[:, :8].float()  # learnable: class c lifts feature c
    idx = linear.class_balanced_subset(y[:300], 0.01, 0)
    assert len(idx) == 3
    x[idx, 0] = torch.tensor([0.010788, 0.010834, 0.010811])  # near-constant on the subset only
    train, test = x[:300], x[300:]
    own = linear.standardise(train[idx], test)[1]
    assert own[:, 0].abs().max() > 1e3  # what the subset's own statistics did to the other images
    res = probe_protocol(train, y[:300], test, y[300:], 3, [0.01, 0.1], [0.0], fractions=(0.01,), seeds=1,
                         epochs=5)
    got = res["linear_1pct"]
    assert any("fewer than 16" in w and "whole training split's mean and std" in w for w in got["warnings"])
    stats = linear.column_stats(train)
    ref = linear._linear_probe(train[idx], y[idx], test, y[300:], 3, [0.01, 0.1], [0.0], 5, 1024, 0.1, 0, stats)
    assert got["top1"] == pytest.approx(ref["top1"]) and (got["lr"], got["weight_decay"]) == ([ref["lr"]], [0.0])
    full = probe_protocol(train, y[:300], test, y[300:], 3, [0.1], [0.0], fractions=(1.0, 0.1), seeds=1, epochs=2)
    assert not any("fewer than" in w for r in full.values() for w in r["warnings"])  # 30 images: their own stats


def test_a_selection_split_of_few_rows_is_standardised_with_all_the_training_rows(monkeypatch):
    """The same fault in select_setting's own split (linear_probe on a tiny labelled set, or a low-shot subset just
    over MIN_STAT_ROWS): 5 rows left to fit, feature 0 near-constant on them (std 2e-5) and 5.0 on the held-out
    row. Standardised by the fit rows' own std the held-out row's feature 0 became about 2.5e5 and every setting
    was judged diverged; with all 6 rows' statistics (no labels used) a setting is chosen."""
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    held = torch.randperm(6, generator=torch.Generator().manual_seed(0))[:1]  # _select_setting's held-out row
    x[:, 0] = 0.0108 + 2e-5 * torch.arange(6.0)
    x[held, 0] = 5.0
    setting, val_top1 = select_setting(x, y, 3, [0.1, 0.3], [0.0])
    ref = linear._select_setting(x, y, 3, [0.1, 0.3], [0.0], 60, 1024, 0.1, 0, linear.column_stats(x))
    assert (setting, val_top1) == ref[:2]
    monkeypatch.setattr(linear, "MIN_STAT_ROWS", 0)  # the fit rows' own statistics: the fault
    with pytest.raises(ConfigError, match="every linear-probe setting diverged"):
        select_setting(x, y, 3, [0.1, 0.3], [0.0])


def test_column_stats_equal_numpy_on_float16_rows():
    x = (torch.randn(3000, 7, generator=torch.Generator().manual_seed(1)) * 50 + 1000).half()
    mean, std = linear.column_stats(x, chunk_rows=256)
    ref = x.double().numpy()
    assert np.allclose(mean.numpy(), ref.mean(0), rtol=1e-6) and np.allclose(std.numpy(), ref.std(0, ddof=1), rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 rows, got 1"):
        linear.column_stats(x[:1])


def test_top5_with_five_classes_or_fewer_is_said_to_be_100_by_construction():
    """With 5 classes or fewer a top-5 prediction names every class, so the probe's top-5 is 100 whatever the
    features: results.md says so beside the number; with 6 classes it says nothing."""
    from selfsup.eval.report import markdown_table

    x, y = noisy_linear_set(classes=3, n=260, dim=6)
    res = linear_probe(x[:200], y[:200], x[200:], y[200:], 3, [0.1], [0.0], epochs=2)
    assert res["top5"] == 100.0 and res["top1"] < 100.0  # the case the note is for

    def table(classes):
        row = {"label": "run x", "kind": "pretrained", "dataset": "toy", "num_classes": classes, "train_images": 200,
               "test_images": 60, "seed": 0, "knn": {}, "linear": linear.summarise([{**res, "lr": 0.1}])}
        return markdown_table([row])

    assert "With 3 classes a top-5 prediction holds every class: top-5 is 100 by construction" in table(3)
    assert "by construction" not in table(6)


def test_every_table_shows_one_seed_as_the_mean_alone():
    """The sibling tables had their own `mean ± sd` (the export's model card, the transfer benchmark's
    cells) and printed `± 0.00` for one seed; all three use selfsup.eval.report.mean_sd_text now."""
    import importlib.util

    from conftest import ROOT
    from selfsup.artifacts.modelcard import results_markdown
    from selfsup.eval.report import mean_sd_text

    one, two = linear.summarise([{"top1": 80.0, "top5": 99.0, "lr": 0.1, "weight_decay": 0.0}]), linear.summarise(
        [{"top1": 80.0, "top5": 99.0, "lr": 0.1, "weight_decay": 0.0},
         {"top1": 82.0, "top5": 99.0, "lr": 0.1, "weight_decay": 0.0}])
    assert (mean_sd_text(one), mean_sd_text(two)) == ("80.00", f"81.00 ± {statistics.stdev([80.0, 82.0]):.2f}")
    assert mean_sd_text({"top1": 70.0, "top1_std": 0.0, "top1_per_seed": [70.0]}) == "70.00"  # no seeds key
    assert mean_sd_text({"top1": 70.0}) == "70.00"
    card = results_markdown({"run x": {"linear": one}, "random": {"linear": two}}, "toy")
    assert "80.00" in card and "80.00 ±" not in card and "81.00 ± 1.41" in card
    assert "over each row's probe seeds (a number without ± is from one seed)" in card  # rows of 1 and 2 seeds
    assert "from one probe seed, so no spread is measured" in results_markdown({"r": {"linear": one}}, "toy")
    assert "± is the standard deviation over 2 probe seeds" in results_markdown({"r": {"linear": two}}, "toy")
    spec = importlib.util.spec_from_file_location("transfer_bench", ROOT / "benchmarks" / "transfer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.top1_text(one) == "80.00" and bench.top1_text(two) == "81.00 ± 1.41"


def per_head_reference(x, y, num_classes, settings, epochs, batch_size, seed):
    """The probe grid as it was written before the heads were stacked: one nn.Linear per
    setting, autograd, torch.optim.SGD with a param group per setting, CosineAnnealingLR."""
    g = torch.Generator().manual_seed(seed)
    heads = []
    for _ in settings:
        head = torch.nn.Linear(x.shape[1], num_classes)
        with torch.no_grad():
            head.weight.normal_(0, 0.01, generator=g)
            head.bias.zero_()
        heads.append(head)
    opt = torch.optim.SGD([{"params": h.parameters(), "lr": lr, "weight_decay": wd}
                           for h, (lr, wd) in zip(heads, settings)], lr=0.1, momentum=0.9)
    batch, epochs = linear.probe_schedule(len(x), epochs, batch_size)
    per_epoch = -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            loss = sum(torch.nn.functional.cross_entropy(h(x[idx]), y[idx]) for h in heads)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return heads


def test_stacked_heads_equal_separately_trained_heads():
    """One stacked weight with a hand-written gradient and SGD gives the numbers of separate
    heads trained by autograd and torch.optim.SGD (the code it replaced), for every setting,
    including a last batch smaller than the others and weight decay on the bias."""
    x, y = noisy_linear_set(n=700, dim=24)
    settings = [(0.01, 0.0), (0.3, 1e-4), (0.1, 1e-2), (1e-7, 0.0)]
    got = linear._train_heads(x, y, 12, settings, 4, 256, 5)  # 700 rows: batches of 88, the last of 84
    ref = per_head_reference(x, y, 12, settings, 4, 256, 5)
    for a, b in zip(got, ref):
        assert torch.allclose(a.weight, b.weight, atol=1e-5, rtol=1e-4)
        assert torch.allclose(a.bias, b.bias, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[0].weight, got[1].weight)  # the settings trained differently


def test_heads_of_several_seeds_equal_one_call_per_seed():
    """Training the probes of several seeds together (one batched step, each seed its own
    initialisation and batch order) gives each seed's heads as a call with that seed alone."""
    x, y = noisy_linear_set(n=700, dim=24)
    settings = [(0.1, 1e-4), (0.3, 0.0)]
    together = linear._train_heads(x, y, 12, settings, 3, 256, [3, 7, 11])
    alone = [h for s in (3, 7, 11) for h in linear._train_heads(x, y, 12, settings, 3, 256, s)]
    assert len(together) == len(alone) == 6
    for a, b in zip(together, alone):
        assert torch.allclose(a.weight, b.weight, atol=1e-6, rtol=1e-5)
        assert torch.allclose(a.bias, b.bias, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(together[0].weight, together[2].weight)  # the seeds differ


def test_protocol_seeds_score_as_separate_probes():
    """The all-labels probes of the protocol's seeds, trained together, report each seed's
    own fit_and_score top-1 (a probe trained alone from that seed)."""
    x, y = noisy_linear_set(n=2700)
    res = probe_protocol(x[:2400], y[:2400], x[2400:], y[2400:], 12, [0.5], [0.0], fractions=(1.0,),
                         seeds=3, epochs=10, batch_size=256, seed=4)
    alone = [fit_and_score(x[:2400], y[:2400], x[2400:], y[2400:], 12, GOOD, epochs=10, batch_size=256, seed=s)
             for s in (4, 5, 6)]
    assert res["linear"]["top1_per_seed"] == pytest.approx([a["top1"] for a in alone], abs=0.21)  # 1 row of 300
    assert len({a["top1"] for a in alone}) > 1  # the seeds are not one probe repeated


def test_softmax_last_equals_torch_softmax():
    z = torch.randn(64, 3, 10, dtype=torch.float64) * 30  # large logits: the max shift matters
    assert torch.allclose(linear.softmax_last(z), z.softmax(-1), atol=1e-12)
    assert torch.allclose(linear.softmax_last(z).sum(-1), torch.ones(64, 3, dtype=torch.float64))


def test_softmax_floor_keeps_probabilities_normal_floats():
    """The floored softmax has no subnormal float32 term where the plain one has, and differs
    from torch's by less than exp(-64) absolute (numpy's float64 softmax as the reference)."""
    z = torch.tensor([[0.0, -90.0, -200.0, -5.0], [3.0, 3.0, -150.0, 2.0]])  # gaps beyond float32's normal range
    tiny = torch.finfo(torch.float32).tiny
    plain = linear.softmax_last(z)
    assert ((plain > 0) & (plain < tiny)).any()  # exp(-90) is subnormal: the case the floor is for
    floored = linear.softmax_last(z, linear.MIN_EXPONENT)
    assert not ((floored != 0) & (floored.abs() < tiny)).any() and (floored > 0).all()
    e = np.exp(z.double().numpy() - z.double().numpy().max(-1, keepdims=True))
    assert np.allclose(floored.double().numpy(), e / e.sum(-1, keepdims=True), rtol=1e-6, atol=np.exp(-64))


def test_probe_gradients_hold_no_subnormals(monkeypatch):
    """Logit gaps of 87-103 make exp(z - max) a subnormal float32 (a subnormal operand made the
    probe's matmuls several times slower); on features this large the initial heads' gaps spread
    over that band, and the probe's floored softmax gives no step a subnormal (p - y)."""
    seen = []
    real = linear.softmax_last

    def spy(logits, min_exponent=None):
        p = real(logits, min_exponent)
        seen.append(((p != 0) & (p.abs() < torch.finfo(torch.float32).tiny)).sum().item())
        return p

    monkeypatch.setattr(linear, "softmax_last", spy)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 16, generator=g) * 3000, torch.arange(400) % 4  # init logits ~ N(0, 120)
    linear._train_heads(x, y, 4, [(1e-9, 0.0)], epochs=3, batch_size=64, seeds=0)
    assert len(seen) == 3 * 8 and sum(seen) == 0  # 8 batches of 50 an epoch (probe_schedule)
    monkeypatch.setattr(linear, "MIN_EXPONENT", None)  # without the floor the same probe meets subnormals
    seen.clear()
    linear._train_heads(x, y, 4, [(1e-9, 0.0)], epochs=3, batch_size=64, seeds=0)
    assert sum(seen) > 0


def test_probe_schedule_follows_the_data():
    """Epochs are kept; a set of fewer than 8 full batches gets smaller batches (8 steps an
    epoch), so a probe costs epochs x rows, not a fixed 1,000 full batches."""
    assert linear.probe_schedule(54_000, 60, 1024) == (1024, 60)
    assert linear.probe_schedule(8192, 60, 1024) == (1024, 60)
    assert linear.probe_schedule(1437, 60, 1024) == (180, 60)
    assert linear.probe_schedule(600, 60, 1024) == (75, 60)
    assert linear.probe_schedule(5, 60, 1024) == (1, 60)


def test_a_single_setting_holds_nothing_out_and_trains_only_the_final_probe(spy):
    """One (lr, wd) leaves nothing to choose: no held-out split, no selection probe, every image
    trains. Two images of two classes (which a held-out image would leave one to fit) are scored,
    and the probe is exactly fit_and_score on all rows."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    res = probe_protocol(x, y, x, y, 2, lrs=[0.1], wds=[0.0], fractions=(1.0,), seeds=1, epochs=5, batch_size=8)
    assert res["linear"]["val_images"] == 0 and res["linear"]["val_top1"] is None
    assert res["linear"]["train_images"] == 2 and res["linear"]["warnings"] == []
    assert [c[0] for c in spy] == [2]  # one probe, on both rows: nothing trained to choose
    assert res["linear"]["top1"] == fit_and_score(x, y, x, y, 2, (0.1, 0.0), epochs=5, batch_size=8)["top1"]
    assert linear.held_out_count(2, 0.1, choices=1) == 0 and linear.held_out_count(2, 0.1) == 1
    with pytest.raises(DataError, match="holding 1 out to choose its settings leaves 1 to fit"):
        probe_protocol(x, y, x, y, 2, lrs=[0.1, 0.01], wds=[0.0], fractions=(1.0,), seeds=1, epochs=5, batch_size=8)
    assert linear_probe(x, y, x, y, 2, lrs=[0.1], wds=[0.0], epochs=5, batch_size=8)["val_top1"] is None


def test_results_notes_say_how_the_probe_setting_was_chosen():
    """A single setting holds nothing out: the results note must not claim a held-out choice (the tour's)."""
    from selfsup.eval.report import probe_choice_note

    one = [{"linear": {"val_images": 0}, "linear_10pct": {"val_images": 0}, "linear_sklearn": {"top1": 1.0}}]
    grid = [{"linear": {"val_images": 30}, "linear_10pct": {"val_images": 3}}]
    assert probe_choice_note(one) == ("Linear probe: one lr and weight decay (eval.linear_lrs, eval.linear_wds), "
                                      "trained on every training image.")
    assert probe_choice_note(grid) == probe_choice_note([{"knn": {}}]) == \
        "Linear probe: lr and weight decay chosen on a split held out from the training set."


@pytest.mark.parametrize("threads", [1, 2])
def test_small_probe_steps_run_on_one_thread_and_give_the_same_heads(monkeypatch, threads):
    """Both branches of the thread rule, forced: a step under SMALL_STEP_MACS trains on one thread (the
    caller's count restored after), a larger one on the caller's threads; the heads are the same either
    way (to float rounding), and a caller already on one thread is left alone."""
    x, y = noisy_linear_set(n=300, dim=20)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    seen = []
    real = linear.threads_for_step

    def spy(macs):
        seen.append(macs)
        return real(macs)

    try:
        monkeypatch.setattr(linear, "threads_for_step", spy)
        inside, real_softmax = [], linear.softmax_last

        def softmax_spy(z, m=None):  # called once a step, inside the loop: the threads it runs on
            inside.append(torch.get_num_threads())
            return real_softmax(z, m)

        monkeypatch.setattr(linear, "softmax_last", softmax_spy)
        small = linear._train_heads(x, y, 12, [(0.1, 0.0), (0.01, 0.0)], 2, 64, 0)
        assert seen == [linear.probe_schedule(300, 2, 64)[0] * 20 * 2 * 12] and set(inside) == {1} and torch.get_num_threads() == threads
        inside.clear()
        monkeypatch.setattr(linear, "SMALL_STEP_MACS", 1)  # every step "large": the caller's threads
        large = linear._train_heads(x, y, 12, [(0.1, 0.0), (0.01, 0.0)], 2, 64, 0)
        assert set(inside) == {threads} and torch.get_num_threads() == threads
        for a, b in zip(small, large):
            torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(before)


def test_a_single_probe_setting_whose_weights_ran_away_is_refused():
    """The sibling of the transfer tour's silent number: a single setting (eval.linear_lrs=[1e5]) is never
    scored on held-out data, and its finite but runaway head (training cross-entropy 7e4 nats) gave a
    test top-1 with no word. The refit is now judged by its training cross-entropy, as held-out scores
    are (over 1000 x ln(classes): diverged); a sound lr is untouched."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 16, generator=g), torch.randint(0, 10, (300,), generator=g)
    with pytest.raises(ConfigError, match=r"^the linear probe diverged \(non-finite weights, or a training "
                                          r"cross-entropy of [0-9.e+]+ nats, over 1000 x ln\(classes\)\) on the whole "
                                          r"training set at lr 100000, weight decay 0: lower eval.linear_lrs$"):
        linear.linear_probe(x, y, x[:50], y[:50], 10, [1e5], [0.0], epochs=5)
    head_ce = []  # the criterion against an independent computation: the trained head's cross-entropy
    full_x, _ = linear.standardise(x, x[:50])
    heads = linear._train_heads(full_x, y, 10, [(1e5, 0.0)], 5, 1024, [0])
    head_ce.append(torch.nn.functional.cross_entropy(heads[0](full_x), y).item())
    assert head_ce[0] > 1000 * math.log(10)
    sound = linear.linear_probe(x, y, x[:50], y[:50], 10, [0.1], [0.0], epochs=5)  # a single sound setting: scored
    assert sound["top1"] == linear.fit_and_score(x, y, x[:50], y[:50], 10, (0.1, 0.0), epochs=5)["top1"]


def test_a_diverged_grid_setting_is_named_in_the_probes_warnings():
    """The sibling of the transfer protocols' diverged-lr warning, open in the frozen probe: a setting of the
    grid that diverged (lr 1e6 beside 0.1) was never chosen and said nowhere; the fraction's warnings name it."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 16, generator=g), torch.randint(0, 10, (300,), generator=g)
    res = linear.probe_protocol(x, y, x[:50], y[:50], 10, [0.1, 1e6], [0.0], fractions=(1.0,), seeds=1, epochs=5)
    assert res["linear"]["lr"] == [0.1]
    assert res["linear"]["warnings"][-1] == ("the linear probe at 100% labels: lr 1e+06, weight decay 0 diverged "
                                             "(never chosen; the reported setting is the best of the others)")
    sound = linear.probe_protocol(x, y, x[:50], y[:50], 10, [0.1, 0.3], [0.0], fractions=(1.0,), seeds=1, epochs=5)
    assert not any("diverged" in w for w in sound["linear"]["warnings"])


def test_kernel_form_heads_equal_primal_heads():
    """The kernel (dual) form W = u W_0 + A^T X trains the same heads as the primal weights, on fewer rows
    than dimensions (where it is chosen) and on more (where it is not), with weight decay moving u,
    several seeds and a last batch smaller than the others."""
    for n, dim in ((90, 300), (300, 40)):
        x, y = noisy_linear_set(n=n, dim=dim)
        x = linear.standardise(x)[0]
        settings = [(0.03, 0.0), (0.3, 1e-2), (0.1, 1e-4)]
        primal = linear._train_heads(x, y, 12, settings, 5, 256, [1, 2], form="primal")
        kernel = linear._train_heads(x, y, 12, settings, 5, 256, [1, 2], form="kernel")
        assert len(primal) == len(kernel) == 6
        for a, b in zip(primal, kernel):
            torch.testing.assert_close(b.weight, a.weight, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(b.bias, a.bias, atol=2e-5, rtol=1e-4)
        moved = [(h.weight - h0.weight).abs().max().item() for h, h0 in zip(primal, primal[1:])]
        assert max(moved) > 1e-2  # the heads differ: the equality above is not of untrained heads
    with pytest.raises(ValueError, match="form must be 'primal' or 'kernel'"):
        linear._train_heads(x, y, 12, settings, 1, 256, 0, form="dual")


def test_probe_form_takes_the_kernel_form_on_fewer_rows_than_dimensions():
    """The cheaper form by multiply-adds: 600 rows of a 9,216-dim stage and 1k rows of 2048-d features go
    kernel; 54k rows (a Gram matrix over the memory cap) and 1k rows of 512-d features stay primal."""
    steps = 480
    assert linear.probe_form(600, 9216, 75, steps, 120) == "kernel"
    assert linear.probe_form(900, 2048, 113, steps, 120) == "kernel"
    assert linear.probe_form(900, 512, 113, steps, 120) == "primal"
    assert linear.probe_form(54_000, 9216, 1024, 3180, 120) == "primal"  # 11.7 GB of Gram matrix
    # helper-68's: 1,000 classes x 12 settings on 11k rows: the Gram matrix fits, the [N, heads] state does not
    assert linear.probe_form(11_000, 9216, 1024, 660, 12_000) == "primal"
    n_cap = (math.isqrt(360**2 + linear.KERNEL_FORM_BYTES) - 360) // 2  # the largest n with 4 (n^2 + 360 n) <= cap
    assert 4 * (n_cap**2 + 360 * n_cap) <= linear.KERNEL_FORM_BYTES < 4 * ((n_cap + 1)**2 + 360 * (n_cap + 1))
    assert linear.probe_form(n_cap, 10**6, 64, 10**6, 120) == "kernel"
    assert linear.probe_form(n_cap + 1, 10**6, 64, 10**6, 120) == "primal"  # the kernel form's state over the cap


def test_the_probe_trains_wide_small_sets_in_the_kernel_form(monkeypatch):
    """linear_probe on 120 rows of 600-d features trains both its grid and its refit in the kernel form, and
    scores as the primal form does."""
    chosen = []
    real_form = linear.probe_form
    monkeypatch.setattr(linear, "probe_form", lambda *a: chosen.append(real_form(*a)) or chosen[-1])
    x, y = noisy_linear_set(n=220, dim=600)
    res = linear_probe(x[:120], y[:120], x[120:], y[120:], 12, [0.01, 0.1], [0.0, 1e-4], epochs=10)
    assert chosen == ["kernel", "kernel"]
    monkeypatch.setattr(linear, "probe_form", lambda *a: "primal")
    ref = linear_probe(x[:120], y[:120], x[120:], y[120:], 12, [0.01, 0.1], [0.0, 1e-4], epochs=10)
    assert (res["lr"], res["weight_decay"]) == (ref["lr"], ref["weight_decay"])
    assert res["top1"] == pytest.approx(ref["top1"], abs=1.01)  # at most one of 100 test rows flips
