"""The feature cache: what float16 cannot hold is stored as float32; entries belong to their data."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.data import TensorImages
from selfsup.data.base import ImageDataset, Subset
from selfsup.data.imagefiles import FolderImages
from selfsup.eval.features import (FLOAT16_RTOL, FeatureCache, FeatureFile, dataset_fingerprint, float16_faithful,
                                   labels_agree)
from selfsup.eval.knn import knn_evaluate


def faithful_reference(x: np.ndarray) -> bool:
    """Independent reference of the storage rule, in numpy: every value finite, and its
    float16 rounding (numpy's) within 2^-11 of the largest |value| of its row and of its column."""
    if not np.isfinite(x).all():
        return False
    with np.errstate(over="ignore"):
        err = np.abs(x.astype(np.float16).astype(np.float64) - x.astype(np.float64))
    a = np.abs(x.astype(np.float64))
    scale = np.minimum(a.max(axis=1, keepdims=True), a.max(axis=0, keepdims=True))
    std = x.astype(np.float64).std(axis=0)  # each column's spread, which the probe's standardisation sees
    constant = x.min(axis=0) == x.max(axis=0)
    spread_ok = constant | (err.max(axis=0) <= 2.0 ** -3 * std)
    return bool((err <= 2.0 ** -11 * scale).all() and spread_ok.all())


def round_trip(tmp_path, x: torch.Tensor, name: str = "split") -> FeatureFile:
    cache = FeatureCache(tmp_path)
    cache.store(name, "key", x, torch.zeros(len(x), dtype=torch.long))
    return FeatureFile(cache.path(name))


# --------------------------------------------------------------------------- storage at the extremes


def test_values_up_to_float16_max_stay_float16_within_the_stated_tolerance(tmp_path):
    x = torch.tensor([[65504.0, 65000.0, 1.0], [-65519.0, 60000.0, 3.0], [0.5, 2.0, 40000.0]])
    lazy = round_trip(tmp_path, x)
    assert lazy.dtype == "F16"
    got = lazy.load()
    expect = torch.from_numpy(x.numpy().astype(np.float16).astype(np.float32))  # numpy's float16 rounding
    assert torch.equal(got, expect) and got[1, 0] == -65504.0  # -65519 rounds to float16's largest value
    a = x.abs()
    scale = torch.minimum(a.amax(1, keepdim=True), a.amax(0, keepdim=True))
    assert ((got - x).abs() <= FLOAT16_RTOL * scale).all()


@pytest.mark.parametrize("big", [65520.0, 70000.0, 1.4e5, 3.0e38])
def test_values_beyond_float16_range_are_stored_exactly_as_float32(tmp_path, big):
    x = torch.tensor([[big, 1.0, -2.0], [0.25, -big / 3, 7.0]])
    assert torch.isinf(x.half()).any()  # float16 would turn them into inf
    lazy = round_trip(tmp_path, x)
    assert lazy.dtype == "F32" and torch.equal(lazy.load(), x)
    assert torch.equal(torch.cat(list(lazy.chunks(1))), x) and torch.equal(lazy.rows(1, 2), x[1:])


def test_tiny_rows_or_columns_are_float32_a_tiny_value_among_large_ones_float16(tmp_path):
    base = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    tiny_row = base.clone()
    tiny_row[1] = torch.tensor([1e-6, 3e-7, 2e-6])  # a whole row in float16's subnormal range
    tiny_col = base.clone()
    tiny_col[:, 2] = torch.tensor([1e-6, 5e-7, 4e-6])  # a whole column in it
    one_tiny = base.clone()
    one_tiny[0, 1] = 1e-7  # subnormal in float16, negligible next to its row's and column's values
    for i, (x, dtype) in enumerate([(tiny_row, "F32"), (tiny_col, "F32"), (one_tiny, "F16")]):
        lazy = round_trip(tmp_path, x, f"s{i}")
        assert lazy.dtype == dtype
        got = lazy.load()
        if dtype == "F32":
            assert torch.equal(got, x)
        else:
            assert got[0, 1] != x[0, 1] and abs(got[0, 1] - x[0, 1]) <= FLOAT16_RTOL * 2.0


def test_non_finite_values_are_kept_exactly(tmp_path):
    x = torch.tensor([[1.0, float("nan"), 2.0], [float("inf"), 3.0, -float("inf")], [0.5, 0.25, 0.125]])
    lazy = round_trip(tmp_path, x)
    got = lazy.load()
    assert lazy.dtype == "F32"
    assert torch.equal(got.isnan(), x.isnan()) and torch.equal(got[~x.isnan()], x[~x.isnan()])


@pytest.mark.parametrize("scale", [1e-9, 1e-5, 1.0, 300.0, 3e4, 1e5])
def test_storage_rule_matches_a_numpy_reference(scale):
    g = torch.Generator().manual_seed(int(scale * 7) % 1000)
    for trial in range(4):
        x = torch.randn(64, 16, generator=g) * scale
        if trial == 1:
            x = F.relu(x)  # zeros and a right tail, as pooled ReLU features
        if trial == 2:
            x[:, 3] *= 1e-6  # one column far smaller than the rest
        if trial == 3:
            x[5] *= 1e-6  # one row far smaller than the rest
        assert float16_faithful(x) == faithful_reference(x.numpy()), (scale, trial)
        assert float16_faithful(x, chunk_elements=100) == float16_faithful(x)  # chunking changes nothing


def test_a_column_varying_little_around_a_large_value_is_float32(tmp_path):
    """helper-55's random-init efficientvit_b0: features one vector dominates (spread 1e-9 of their size). A
    column 1e4 +- 1e-2 rounds to float16 in steps of 8, within 2^-11 of its largest value (the old rule), but
    those steps are 800x its variation, which the probe's standardisation then reads. Stored in float32, exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    x[:, 2] = 1e4 + 1e-2 * torch.randn(200, generator=g)
    assert not float16_faithful(x) and not faithful_reference(x.numpy())
    lazy = round_trip(tmp_path, x)
    assert lazy.dtype == "F32" and torch.equal(lazy.load(), x)
    x[:, 2] = 1e4 + 1  # constant (and not a float16 value: it rounds to 10000): float16 keeps it constant
    assert float16_faithful(x) and faithful_reference(x.numpy())
    x[:, 2] = 1e4 + 1000 * torch.randn(200, generator=g)  # a spread float16 steps (8) resolve
    assert float16_faithful(x) and faithful_reference(x.numpy())


def test_typical_features_stay_float16():
    g = torch.Generator().manual_seed(0)
    x = F.relu(torch.randn(500, 64, generator=g)) * 3  # pooled ReLU features: zeros, small and large values
    assert float16_faithful(x)


def test_two_class_toy_set_with_huge_features_scores_100(tmp_path):
    # the fair random resnet152 gives features up to 1.4e5 on Fashion-MNIST; these are as large
    g = torch.Generator().manual_seed(0)
    d = 32
    direction = F.normalize(torch.randn(2, d, generator=g), dim=1)  # [2, D], one per class
    labels = torch.arange(64) % 2
    x = direction[labels] + 0.05 * torch.randn(64, d, generator=g)  # [64, D]
    mag = torch.full((64,), 1.0e4)
    mag[torch.randperm(64, generator=g)[:46]] = 1.4e5  # 46 of 64 rows beyond float16's range
    x = x / x.abs().amax(1, keepdim=True) * mag[:, None]
    assert (~x.half().isfinite()).any(1).sum() == 46  # the old float16 cache turned these rows into inf
    cache = FeatureCache(tmp_path)
    tr, te = torch.arange(0, 48), torch.arange(48, 64)
    feats, y = cache.get("train", "k", lambda: (x[tr], labels[tr]))
    qfeats, qy = cache.get("test", "k", lambda: (x[te], labels[te]))
    assert torch.equal(feats, x[tr]) and torch.equal(qfeats, x[te])  # both hold huge rows: float32, exact
    res = knn_evaluate(FeatureFile(cache.path("train")), y, qfeats, qy, [(3, 0.07)], 2)
    assert res["k=3,T=0.07"]["top1"] == 100.0


def test_feature_file_streams_float32_like_float16(tmp_path):
    x = torch.randn(300, 8) * 1e5
    lazy = round_trip(tmp_path, x)
    assert lazy.dtype == "F32" and lazy.shape == (300, 8)
    torch.testing.assert_close(lazy.mean(chunk_rows=7), x.double().mean(0).float(), rtol=1e-6, atol=1e-2)
    m = lazy.mean()
    torch.testing.assert_close(lazy.centered(m).rows(3, 9), x[3:9] - m, rtol=0, atol=0)


# --------------------------------------------------------------------------- entries belong to their data


def test_labels_agree():
    y = torch.tensor([0, 1, 1, 2, 0])
    assert labels_agree(y, y.clone())
    assert not labels_agree(torch.tensor([0, 1, 2, 1, 0]), y)  # same counts, other order
    assert labels_agree(torch.tensor([0, 1, 0]), y)  # unreadable files left out: rows 0, 1(or 2), 4
    assert not labels_agree(torch.tensor([2, 1]), y)  # not in this order
    assert not labels_agree(torch.tensor([0, 1, 1, 2, 0, 0]), y)  # more rows than the data has


def test_stale_labels_are_recomputed_never_used(tmp_path):
    cache = FeatureCache(tmp_path)
    x, old, new = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([1, 0, 1, 0, 1, 0])
    cache.store("split", "key", x, old)
    calls = []

    def compute():
        calls.append(1)
        return x + 1, new

    lazy, labels = cache.get_lazy("split", "key", compute, labels=old)  # the same labels: used
    assert not calls and torch.equal(labels, old)
    assert cache.has("split", "key", old) and not cache.has("split", "key", new) and cache.has("split", "key")
    feats, labels = cache.get("split", "key", compute, labels=new)  # the data's labels changed: recomputed
    assert calls == [1] and torch.equal(labels, new) and torch.equal(feats, (x + 1).half().float())
    cache.get("split", "key", compute, labels=new)
    assert calls == [1]  # and cached from then on


@pytest.mark.parametrize("damage", ["cut", "empty", "garbage", "no labels"])
def test_a_damaged_cache_file_is_recomputed_not_a_traceback(tmp_path, damage):
    """helper-64's: a cache entry cut short (a full disk, a copy stopped half-way) raised safetensors' "incomplete
    metadata" traceback from every later evaluation. It counts as stale: recomputed and written over."""
    from safetensors.torch import save_file

    cache = FeatureCache(tmp_path)
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 1, 1])
    cache.store("split", "key", x, y)
    path = cache.path("split")
    data = path.read_bytes()
    if damage == "no labels":  # readable, but not what the cache writes
        save_file({"features": x}, str(path), metadata={"key": "key"})
    else:
        path.write_bytes({"cut": data[:len(data) // 2], "empty": b"", "garbage": b"\x00" * 64}[damage])
    assert not cache.has("split", "key", y) and not cache.has("split", "key")
    feats, labels = cache.get("split", "key", lambda: (x * 2, y), labels=y)
    assert torch.equal(labels, y) and torch.allclose(feats, x * 2, rtol=2 ** -10)
    assert cache.has("split", "key", y)  # written over whole


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kwargs", [{"output_stride": 8}, {"global_pool": "max"}, {"act_layer": "gelu"}])
def test_encoders_with_the_same_weights_that_compute_otherwise_have_other_cache_keys(kwargs):
    """helper-64's: the feature cache was keyed by the weights alone, so a random-init resnet18 built with
    output_stride 8 (or max pooling) read the cached features of the plain one from a shared --out folder
    (kNN 42.22 where its own features give 50.28). The key covers the encoder's structure; the same build, or
    the same weights loaded into another instance, keeps one key."""
    import timm

    from selfsup.eval.features import fingerprint

    def build(**kw):
        torch.manual_seed(0)
        return timm.create_model("resnet18", num_classes=0, in_chans=1, **kw).eval()

    plain, other = build(), build(**kwargs)
    x = torch.rand(2, 1, 64, 64)  # layer4 at 2x2 (4x4 strided): max and average pooling differ
    assert [t.shape for t in plain.state_dict().values()] == [t.shape for t in other.state_dict().values()]
    assert not torch.allclose(plain(x), other(x))  # another function of the image...
    assert fingerprint(plain) != fingerprint(other)  # ...so another cache entry
    again = build()
    again.load_state_dict(plain.state_dict())
    assert fingerprint(again) == fingerprint(plain)


def test_a_shared_out_folder_keeps_random_baselines_of_other_kwargs_apart(tmp_path, capsys):
    """The same through the CLI: two random-init baselines of one name and other kwargs, evaluated into one
    --out folder, each scored on its own features (the second as in a fresh folder)."""
    import json

    from conftest import ROOT
    from selfsup.cli import main

    common = ["--config", str(ROOT / "configs" / "quickstart.yaml"), "data.name=digits", "data.image_size=16",
              "data.subset=200", "eval.probe_seeds=1", "eval.low_shot=[]", "eval.knn=[[5,0.07]]", "eval.plots=false",
              "eval.linear=false"]
    strided = "encoder.kwargs={channels: [8, 16, 32, 64], output_stride: 8}"
    assert main(["eval", "random:resnet18", "--out", str(tmp_path / "shared"), *common,
                 "encoder.kwargs={channels: [8, 16, 32, 64]}"]) == 0
    assert main(["eval", "random:resnet18", "--out", str(tmp_path / "shared"), *common, strided]) == 0
    assert main(["eval", "random:resnet18", "--out", str(tmp_path / "fresh"), *common, strided]) == 0
    capsys.readouterr()
    knn = [json.loads((tmp_path / d / "results.json").read_text())[0]["knn"] for d in ("shared", "fresh")]
    assert knn[0] == knn[1]


def test_fingerprint_of_images_in_memory_follows_bytes_and_labels():
    imgs, y = _images(10, 0), torch.arange(10) % 3
    a = dataset_fingerprint(TensorImages(imgs, y, 3))
    assert a == dataset_fingerprint(TensorImages(imgs.clone(), y.clone(), 3))
    changed = imgs.clone()
    changed[7, 0, 2, 1] ^= 1  # one bit of one pixel
    assert dataset_fingerprint(TensorImages(changed, y, 3)) != a
    assert dataset_fingerprint(TensorImages(imgs, y.flip(0), 3)) != a  # same images, other labels
    # a subset of images in memory depends on its own rows only
    sub = dataset_fingerprint(Subset(TensorImages(imgs, y, 3), [0, 2, 4]))
    assert sub == dataset_fingerprint(Subset(TensorImages(changed, y, 3), [0, 2, 4]))  # row 7 not in it
    assert sub != dataset_fingerprint(Subset(TensorImages(changed, y, 3), [0, 2, 7]))
    assert sub != dataset_fingerprint(Subset(TensorImages(imgs, y, 3), [0, 4, 2]))  # order matters


class _Generated(ImageDataset):
    """A dataset type the fingerprint knows nothing about: it reads the images."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.labels = images, torch.zeros(len(images), dtype=torch.long)
        self.num_classes, self.in_chans, self.image_size = 1, 1, 4

    def __getitem__(self, i):
        return self.images[i], 0


def test_fingerprint_of_other_dataset_types_reads_the_images():
    imgs = _images(300, 1)
    changed = imgs.clone()
    changed[299, 0, 0, 0] ^= 4
    assert dataset_fingerprint(_Generated(imgs)) == dataset_fingerprint(_Generated(imgs.clone()))
    assert dataset_fingerprint(_Generated(imgs)) != dataset_fingerprint(_Generated(changed))


def test_fingerprint_of_image_folder_follows_files_and_labels(tmp_path):
    files = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        p.write_bytes(b"x" * (10 + i))
        files.append(str(p))
    a = dataset_fingerprint(FolderImages(files, [0, 1, 1], 2, 8, 1))
    assert a == dataset_fingerprint(FolderImages(list(files), [0, 1, 1], 2, 8, 1))
    assert a != dataset_fingerprint(FolderImages(files, [1, 0, 1], 2, 8, 1))  # labels
    assert a != dataset_fingerprint(FolderImages(files, [0, 1, 1], 2, 16, 1))  # image size
    assert a != dataset_fingerprint(FolderImages(files, [0, 1, 1], 2, 8, 3))  # channels
    st = os.stat(files[1])
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was replaced
    assert a != dataset_fingerprint(FolderImages(files, [0, 1, 1], 2, 8, 1))
