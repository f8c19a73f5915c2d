"""faiss weighted kNN against a naive reference: neighbours by numpy, votes summed exactly
(``decimal``) in a python loop; what is refused (NaN/inf rows, bad labels) and what is warned."""

from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch

import selfsup.eval.knn as knn
from selfsup.config import ConfigError
from selfsup.data import DataError
from selfsup.eval.knn import knn_evaluate, knn_evaluate_with_index
from selfsup.eval.report import markdown_table


def naive_rank(sims, labels, t):
    """Classes that got a vote, best first: each neighbour (similarity, class) votes exp(sim / t),
    summed exactly; ties by class number. ``labels`` -1: no neighbour, no vote."""
    with localcontext() as ctx:
        ctx.prec = 60
        scores = {}
        for s, c in zip(sims, labels):
            if c >= 0:
                scores[c] = scores.get(c, Decimal(0)) + (Decimal(float(s)) / Decimal(t)).exp()
    return sorted(scores, key=lambda c: (-scores[c], c))


def naive_accuracy(neighbours, ytr, yte, k, t):
    """(top-1, top-5) in percent from ``neighbours`` = per query a list of (similarity, train row or -1)."""
    hits1 = hits5 = 0
    for q, pairs in enumerate(neighbours):
        pairs = pairs[:k]
        ranked = naive_rank([s for s, _ in pairs], [ytr[i] if i >= 0 else -1 for _, i in pairs], t)
        hits1 += yte[q] in ranked[:1]
        hits5 += yte[q] in ranked[:5]
    return 100 * hits1 / len(yte), 100 * hits5 / len(yte)


def brute_neighbours(train, test, k):
    """Per query the k most similar train rows by float64 cosine similarity: [(sim, row), ...]."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = []
    for q in b:
        sims = a @ q
        order = np.argsort(-sims, kind="stable")[:k]
        out.append([(sims[i], int(i)) for i in order])
    return out


def toy(classes=12, n_train=400, n_test=100, dim=16, noise=1.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    ytr, yte = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    train = centres[ytr] + rng.normal(scale=noise, size=(n_train, dim))
    test = centres[yte] + rng.normal(scale=noise, size=(n_test, dim))
    return train, ytr, test, yte


def tensors(*arrays):
    return [torch.tensor(a, dtype=torch.float32 if a.dtype.kind == "f" else torch.long) for a in arrays]


PAIRS = [(1, 0.1), (5, 0.07), (20, 0.5), (50, 0.01), (50, 10.0)]


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_reference_for_every_k_and_t(seed):
    """12 classes, so top-5 is informative; every (k, T) of one call gives that (k, T)'s reference value."""
    train, ytr, test, yte = toy(seed=seed)
    res = knn_evaluate(*tensors(train, ytr, test, yte), PAIRS, 12)
    neighbours = brute_neighbours(train, test, 50)
    refs = {}
    for k, t in PAIRS:
        top1, top5 = naive_accuracy(neighbours, ytr, yte, k, t)
        got = res[f"k={k},T={t:g}"]
        assert got["top1"] == pytest.approx(top1, abs=1e-4)
        assert got["top5"] == pytest.approx(top5, abs=1e-4)
        refs[k, t] = (top1, top5)
        if k == 1:  # one class gets a vote, and a class without a vote is no prediction
            assert 15 < top1 == top5 < 100
        else:  # learnable, and top-5 is neither top-1 nor 100 by definition
            assert 15 < top1 < top5 < 100
    # the settings give different numbers, so a (k, T) mixed up with another would fail above
    assert len(set(refs.values())) == len(PAIRS)


def neighbours_with_holes(train, test, k, drop):
    """The exact top-k with the positions ``drop[q]`` of query q's list replaced by -1 ids (a
    similarity of 1.0 there: a missing neighbour must not vote whatever faiss put beside it)."""
    sims, idx = knn.search(torch.tensor(train, dtype=torch.float32), torch.tensor(test, dtype=torch.float32), k)
    for q, cols in drop.items():
        idx[q, cols] = -1
        sims[q, cols] = 1.0
    return sims, idx


def patch_search(monkeypatch, sims, idx):
    def fake(train, queries, k, options=None):
        plan = knn.plan_index(train.shape[0], train.shape[1], k, options)
        return sims[:, :plan.k], idx[:, :plan.k], plan
    monkeypatch.setattr(knn, "search_with_plan", fake)


def test_issue_case_query_without_neighbours_is_a_miss(monkeypatch):
    """12 train rows, 3 queries, k=3; query 0 (true label 0) gets no neighbour back (-1 ids):
    it used to be scored as class 0, a hit (100.0); it is a miss: 66.67."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(12, 4, generator=g)
    ytr = torch.arange(12) % 3
    test = torch.stack([train[0] + 0.01, train[4], train[8]])  # nearest rows: classes 0, 1, 2
    yte = torch.tensor([0, 1, 2])
    sims, idx = neighbours_with_holes(train.numpy(), test.numpy(), 3, {0: [0, 1, 2]})
    assert knn_evaluate(train, ytr, test, yte, [(3, 0.07)], 3)["k=3,T=0.07"]["top1"] == 100.0  # unpatched
    patch_search(monkeypatch, sims, idx)
    res, info = knn_evaluate_with_index(train, ytr, test, yte, [(3, 0.07)], 3)
    assert res["k=3,T=0.07"]["top1"] == pytest.approx(200 / 3) and res["k=3,T=0.07"]["top5"] == pytest.approx(200 / 3)
    assert info["short_queries"] == 1
    assert any("1 of 3 queries got fewer than k=3 neighbours" in w and "1 none at all" in w for w in info["warnings"])


def test_missing_neighbours_anywhere_match_naive_loop(monkeypatch):
    """Holes at the front, middle and tail of neighbour lists, and whole lists empty: each
    query votes with the neighbours it has and is counted; one with none is a miss."""
    train, ytr, test, yte = toy(n_train=300, n_test=60, seed=3)
    rng = np.random.default_rng(0)
    drop = {q: list(rng.choice(30, size=rng.integers(1, 30), replace=False)) for q in range(0, 60, 2)}
    odd = np.arange(1, 60, 2)
    empty = [*odd[yte[odd] == 0][:2], odd[yte[odd] != 0][0]]  # two of class 0: what an empty query used to get
    assert len(empty) == 3
    drop.update({q: list(range(30)) for q in empty})  # no neighbour at all
    sims, idx = neighbours_with_holes(train, test, 30, drop)
    patch_search(monkeypatch, sims, idx)
    pairs = [(3, 0.1), (30, 0.07), (30, 1.0)]
    res, info = knn_evaluate_with_index(*tensors(train, ytr, test, yte), pairs, 12)
    neighbours = [list(zip(sims[q].tolist(), idx[q].tolist())) for q in range(60)]
    for k, t in pairs:
        top1, top5 = naive_accuracy(neighbours, ytr, yte, k, t)
        assert res[f"k={k},T={t:g}"] == pytest.approx({"top1": top1, "top5": top5}, abs=1e-4)
    assert info["short_queries"] == len(drop)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_issue_case_nonfinite_features_are_refused(bad):
    """12 train rows with one NaN row, 3 queries of which one is all-NaN (true label 0), k=3:
    scored 100.0 before; now refused, naming the rows (train first, then test)."""
    g = torch.Generator().manual_seed(0)
    train, ytr = torch.randn(12, 4, generator=g), torch.arange(12) % 3
    test, yte = torch.stack([torch.full((4,), bad), train[4], train[8]]), torch.tensor([0, 1, 2])
    train[5, 2] = bad
    with pytest.raises(DataError, match=r"^1 of 12 train feature rows hold NaN or inf \(rows 5\).*weights"):
        knn_evaluate(train, ytr, test, yte, [(3, 0.07)], 3)
    train[5] = 1.0
    with pytest.raises(DataError, match=r"^1 of 3 test feature rows hold NaN or inf \(rows 0\)"):
        knn_evaluate(train, ytr, test, yte, [(3, 0.07)], 3)


def test_nonfinite_rows_of_a_lazy_source_are_listed():
    """A lazy source read chunk by chunk (as a float16 cache file is): every bad row counted, the first five named."""
    x = torch.randn(100, 6)
    bad = [3, 40, 41, 64, 65, 99]
    x[bad, 1] = float("inf")

    class Lazy:
        shape = (100, 6)

        def rows(self, a, b):
            return x[a:b].clone()

    with pytest.raises(DataError, match=r"6 of 100 train feature rows .*rows 3, 40, 41, 64, 65 and 1 more"):
        knn_evaluate_with_index(Lazy(), torch.zeros(100, dtype=torch.long), torch.randn(4, 6),
                                torch.zeros(4, dtype=torch.long), [(5, 0.1)], 2, knn.IndexOptions(chunk_rows=16))
    assert knn.nonfinite_rows(Lazy(), 7).tolist() == bad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nonfinite_rows_are_exact_where_a_row_sum_overflows_or_cancels(dtype):
    """Every kind of non-finite row is found and no finite one is: NaN, +inf, -inf, +inf beside -inf
    (a sum of NaN), and finite rows whose sum overflows the dtype (or float32) are kept; checked against
    an element-by-element reference."""
    big = torch.finfo(dtype).max
    x = torch.randn(40, 9, dtype=torch.float64).to(dtype)
    x[2, 0] = float("nan")
    x[5, 8] = float("inf")
    x[11, 3] = -float("inf")
    x[17, 1], x[17, 2] = float("inf"), -float("inf")
    x[20, :] = big  # finite: its sum overflows
    x[23, :4] = -big
    x[31, 0], x[31, 1] = big, float("nan")
    expected = (~x.isfinite()).any(1).nonzero().squeeze(1).tolist()
    assert expected == [2, 5, 11, 17, 31]
    assert knn.nonfinite_rows(x, 7).tolist() == expected
    assert knn.nonfinite_rows(x[:, :0], 7).tolist() == []  # no columns: nothing is non-finite


def test_nonfinite_rows_of_complex_features_see_the_imaginary_part():
    z = torch.tensor([[1 + 0j, complex(2, float("nan"))], [1 + 0j, 2 + 0j], [complex(float("inf"), 0), 0j]],
                     dtype=torch.complex64)
    assert knn.nonfinite_rows(z).tolist() == [0, 2]


@pytest.mark.parametrize("where, labels, message", [
    ("train", [0, 1, -1, 2, 1, 0], r"1 of 6 train labels lie outside \[0, 3\) \(e.g. -1 at row 2"),
    ("train", [0, 1, 3, 2, 1, 0], r"1 of 6 train labels lie outside \[0, 3\) \(e.g. 3 at row 2"),
    ("test", [-1, -1],
     r"2 of 2 test labels lie outside \[0, 3\) \(e.g. -1 at row 0; rows 0, 1\): -1 marks an unlabeled"),
])
def test_labels_outside_the_classes_are_refused(where, labels, message):
    train, test = torch.randn(6, 4), torch.randn(2, 4)
    ytr, yte = torch.tensor([0, 1, 2, 2, 1, 0]), torch.tensor([0, 1])
    if where == "train":
        ytr = torch.tensor(labels)
    else:
        yte = torch.tensor(labels)
    with pytest.raises(DataError, match=message):
        knn_evaluate(train, ytr, test, yte, [(3, 0.1)], 3)


def test_bad_pairs_and_float_labels_are_refused():
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    for pairs in ([], [(5, 0.0)], [(5, -1.0)], [(5, float("inf"))], [(5, float("nan"))], [(0, 0.1)], [(2.5, 0.1)]):
        with pytest.raises(ConfigError, match="eval.knn must be a non-empty list of .* T > 0"):
            knn_evaluate(x, y, x, y, pairs, 2)
    with pytest.raises(DataError, match="integer class numbers"):
        knn_evaluate(x, y.float(), x, y, [(3, 0.1)], 2)
    with pytest.raises(DataError, match="no test rows"):
        knn_evaluate(x, y, x[:0], y[:0], [(3, 0.1)], 2)


def test_k_beyond_the_smallest_class_or_the_train_set_warns_in_the_report():
    g = torch.Generator().manual_seed(0)
    ytr = torch.tensor([0] * 30 + [1] * 30 + [2] * 4)  # class 2 has 4 train rows
    train, test = torch.randn(64, 8, generator=g), torch.randn(10, 8, generator=g)
    yte = torch.arange(10) % 3
    res, info = knn_evaluate_with_index(train, ytr, test, yte, [(3, 0.1), (20, 0.07), (20, 0.1), (100, 0.1)], 3)
    assert info["warnings"] == [
        "kNN k=20 exceeds the 4 train rows of the smallest class (class 2): it fills at most 4 of the k votes, "
        "so larger classes outvote it; choose k <= 4 in eval.knn",
        "kNN k=100 exceeds the 64 train rows: every query votes with all 64 of them; choose k < 64 in eval.knn"]
    # k beyond the train set votes with every row: the same as k = N
    assert res["k=100,T=0.1"] == knn_evaluate(train, ytr, test, yte, [(64, 0.1)], 3)["k=64,T=0.1"]
    # a class without train rows cannot be predicted: said, not hidden
    _, info4 = knn_evaluate_with_index(train, ytr, test, torch.full((10,), 3), [(3, 0.1)], 4)
    assert info4["warnings"] == ["10 of 10 test rows belong to classes without train rows (class 3): "
                                 "kNN can never predict them"]
    # an image folder's class names are said beside the numbers (helper-69: "class 2" named no folder)
    _, named = knn_evaluate_with_index(train, ytr, test, yte, [(20, 0.07)], 3, class_names=("cat", "dog", "emu"))
    assert named["warnings"][0].startswith("kNN k=20 exceeds the 4 train rows of the smallest class (class 2 'emu')")
    _, named4 = knn_evaluate_with_index(train, ytr, test, torch.full((10,), 3), [(3, 0.1)], 4,
                                        class_names=("cat", "dog", "emu", "fox"))
    assert "(class 3 'fox'): kNN can never predict them" in named4["warnings"][0]
    _, quiet = knn_evaluate_with_index(train, ytr, test, yte, [(3, 0.1)], 3)
    assert quiet["warnings"] == []
    row = {"label": "run x", "kind": "pretrained", "dataset": "toy", "train_images": 64, "test_images": 10,
           "seed": 0, "knn": res, "knn_index": info, "warnings": ["kNN and probes skipped 5 unlabeled rows"]}
    table = markdown_table([row, {**row, "label": "raw pixels", "kind": "pixels", "knn_index": quiet,
                                  "warnings": []}])
    lines = table.splitlines()
    body_end = max(i for i, line in enumerate(lines) if line.startswith("|"))
    warned = [line for line in lines[body_end + 1:] if "**Warning**" in line]
    expected = ["kNN and probes skipped 5 unlabeled rows", *info["warnings"]]  # the row's own, then kNN's
    assert warned == [f"- **Warning** (run x): {w}" for w in expected]
    assert "warnings" not in next(line for line in lines if line.startswith("- kNN search"))
    assert "seed 0; the weights of the last training step, no epoch" in table
    # helper-64's: an evaluation of baselines alone spoke of "the weights of the last training step"
    alone = markdown_table([{**row, "label": "raw pixels", "kind": "pixels", "knn_index": quiet, "warnings": []}])
    assert "seed 0; no trained weights (baselines only), no epoch" in alone and "last training step" not in alone


def test_votes_in_query_blocks_equal_one_block(monkeypatch):
    train, ytr, test, yte = toy(n_test=101, seed=4)
    whole = knn_evaluate(*tensors(train, ytr, test, yte), PAIRS, 12)
    monkeypatch.setattr(knn, "VOTE_CELLS", 7 * 13)  # blocks of 7 queries (12 classes + a spare), the last of 3
    assert knn_evaluate(*tensors(train, ytr, test, yte), PAIRS, 12) == whole


def test_the_knn_search_note_says_each_rows_width_where_rows_differ():
    """results.md's kNN search note printed the first row's index settings, so a 64-d run beside 784-d raw pixels
    read "dim 64" for both. Settings that agree are said once; those that differ, per row (stage rows named)."""
    base = {"kind": "pretrained", "dataset": "toy", "train_images": 64, "test_images": 10, "seed": 0,
            "knn": {"k=3,T=0.1": {"top1": 50.0, "top5": 90.0}}}
    index = {"kind": "exact", "rows": 64, "dim": 64, "k": 3, "device": "cpu", "seconds": 0.1, "warnings": []}
    rows = [{**base, "label": "run x", "knn_index": index},
            {**base, "label": "run x", "layer": "layer1", "pooling": "grid", "feature_dim": 1568,
             "knn_index": {**index, "dim": 1568, "seconds": 0.3}},
            {**base, "label": "raw pixels", "kind": "pixels", "knn_index": {**index, "dim": 784}},
            {**base, "label": "random-init resnet18", "kind": "random", "knn_index": index,
             "encoder_kwargs": {"channels": [8, 16, 32, 64]}}]
    note = next(line for line in markdown_table(rows).splitlines() if line.startswith("- kNN search"))
    assert note == ("- kNN search: faiss, kind exact, rows 64, k 3, device cpu; dim: run x 64, run x [layer1] 1568, "
                    "raw pixels 784, random-init resnet18 64.")
    same = next(line for line in markdown_table(rows[:1]).splitlines() if line.startswith("- kNN search"))
    assert same == "- kNN search: faiss, kind exact, rows 64, dim 64, k 3, device cpu."
    said = markdown_table(rows)
    timm_default = markdown_table([{**rows[3], "label": "random-init resnet34", "encoder_kwargs": {}}])
    assert "- random-init resnet34: random init with timm's zero_init_last disabled (a fair baseline: no block starts " \
        "as identity), built with timm's default kwargs." in timm_default
    assert ("- random-init resnet18: random init with timm's zero_init_last disabled (a fair baseline: no block "
            "starts as identity), built with encoder.kwargs {'channels': [8, 16, 32, 64]}.") in said


def test_an_ivf_cell_count_capped_by_the_data_is_said():
    """helper-64's: eval.knn_nlist=14 on 200 rows was capped at 5 cells (faiss's 39 rows per centroid) with no
    word; the warning under the table named "5 cells" as if chosen. The cap is a warning; no cap, no warning."""
    from selfsup.eval.search import IndexOptions

    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 8, generator=g), torch.randn(20, 8, generator=g)
    ytr, yte = torch.arange(200) % 4, torch.arange(20) % 4
    _, info = knn_evaluate_with_index(train, ytr, test, yte, [(5, 0.1)], 4,
                                      IndexOptions(kind="ivf", nlist=14, nprobe=5))
    assert info["nlist"] == 200 // 39 == 5
    assert ("eval.knn_nlist=14 was capped at 5 IVF cells: faiss's k-means needs at least 39 training rows per cell "
            "and there are 200; set eval.knn_nlist <= 5, or eval.knn_index=exact for a set this small"
            ) in info["warnings"]
    _, info = knn_evaluate_with_index(train, ytr, test, yte, [(5, 0.1)], 4, IndexOptions(kind="ivf", nlist=4))
    assert info["nlist"] == 4 and not any("capped" in w for w in info["warnings"])
