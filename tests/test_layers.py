"""Layer-wise evaluation (eval.layers): stages from timm's feature API, pooled as in Goyal et al. 2019 /
VISSL, all from one forward pass, cached per stage, one result row per stage, the last equal to today's."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import selfsup.eval.evaluate as ev
import selfsup.eval.prepare as prep
from selfsup.config import ConfigError
from selfsup.data import DataInfo, TensorImages
from selfsup.eval.evaluate import evaluate, evaluate_layers
from selfsup.eval.features import FeatureFile, extract_features, extract_stages
from selfsup.eval.layers import TARGET_DIM, encoder_stages, grid_side, pool_map, select_stages, stage_vectors
from selfsup.eval.report import markdown_table

TINY_RESNET = {"channels": [8, 16, 32, 64]}
TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2}
INFO16 = DataInfo(in_chans=1, image_size=16, num_classes=3, mean=(0.5,), std=(0.25,), num_samples=40)


def model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=0, in_chans=1, **kwargs).eval()


def images(n: int, size: int = 16, seed: int = 0) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return TensorImages(x, torch.arange(n) % 3, num_classes=3)


def quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- pooling rule


@pytest.mark.parametrize("channels,side,dims", [(64, 112, 9216), (256, 56, 9216), (512, 28, 8192),
                                                (1024, 14, 9216), (2048, 7, 8192)])
def test_grid_rule_gives_vissl_resnet50_dims(channels, side, dims):
    """VISSL's ResNet-50 per-layer benchmark (LINEAR_EVAL_FEAT_POOL_OPS_MAP, eval_mlp dims): conv1 9216,
    res2 9216, res3 8192, res4 9216, res5 8192 values at 224 px."""
    gh, gw = grid_side(channels, side, side)
    assert channels * gh * gw == dims


@pytest.mark.parametrize("channels,h,w,want", [(64, 7, 7, (7, 7)), (64, 3, 20, (3, 12)), (100000, 5, 5, (1, 1))])
def test_grid_is_capped_by_the_map(channels, h, w, want):
    assert grid_side(channels, h, w) == want


def hwc(grid: torch.Tensor) -> torch.Tensor:
    """A pooled grid [B, C, gh, gw] flattened position-major, written independently of pool_map."""
    b, c, gh, gw = grid.shape
    return torch.stack([grid[:, :, i, j] for i in range(gh) for j in range(gw)], 1).reshape(b, -1)


def test_grid_pooling_is_the_mean_of_each_block_position_major():
    """576 channels at 8x8 -> grid sqrt(9216 / 576) = 4: the mean of each 2x2 block, position-major
    (cell (0, 0)'s 576 channels first); 32 channels at 8x8 -> grid 17, capped to 8: the map itself."""
    x = torch.randn(2, 576, 8, 8)
    assert grid_side(576, 8, 8) == (4, 4)
    blocks = x.reshape(2, 576, 4, 2, 4, 2).mean((3, 5))  # [2, 576, 4, 4] block means
    torch.testing.assert_close(pool_map(x, "grid"), hwc(blocks))
    torch.testing.assert_close(pool_map(x, "grid")[:, :576], x[:, :, :2, :2].mean((2, 3)))  # cell (0, 0)
    z = torch.randn(2, 64, 14, 14)  # grid 12: overlapping bins, as adaptive average pooling makes them
    torch.testing.assert_close(pool_map(z, "grid"), hwc(F.adaptive_avg_pool2d(z, 12)))
    y = torch.randn(2, 32, 8, 8)
    assert torch.equal(pool_map(y, "grid"), hwc(y))
    torch.testing.assert_close(pool_map(x, "avg"), x.reshape(2, 576, -1).mean(2))


def test_pooling_into_given_rows_writes_them_in_place_with_the_same_numbers():
    """pool_map(..., out=rows) fills the rows' slice (no intermediate grid for a channels_last map) with
    exactly what it returns without out, for every kind of map and both poolings; a map on another
    dtype is converted on the way."""
    z = torch.randn(3, 64, 14, 14)
    maps = [z, z.contiguous(memory_format=torch.channels_last), torch.randn(3, 32, 8, 8),
            torch.randn(3, 32, 8, 8).contiguous(memory_format=torch.channels_last)]
    for fmap in maps:
        for pool in ("grid", "avg"):
            want = pool_map(fmap, pool)
            rows = torch.full((5, want.shape[1]), float("nan"))
            got = pool_map(fmap, pool, out=rows[1:4])
            assert got.data_ptr() == rows[1:4].data_ptr() and torch.equal(rows[1:4], want)
            assert rows[0].isnan().all() and rows[4].isnan().all()  # nothing written outside the slice
    half = maps[1].double()
    rows = torch.empty(3, 9216)
    torch.testing.assert_close(pool_map(half, "grid", out=rows), pool_map(maps[1], "grid"))


def test_stage_rows_hand_out_slots_only_in_memory_after_the_first_batch(tmp_path):
    from selfsup.eval.features import StageRows

    rows = StageRows(tmp_path, 6)
    assert rows.slots(2) is None  # widths unknown before the first batch
    rows.append({"a": torch.ones(2, 3), "b": torch.zeros(2, 1)})
    slots = rows.slots(2)
    assert {k: v.shape for k, v in slots.items()} == {"a": (2, 3), "b": (2, 1)}
    slots["a"].fill_(7.0)
    rows.append({"a": slots["a"], "b": torch.full((2, 1), 5.0)})  # in place for a, copied for b
    assert rows.features("a")[2:].eq(7.0).all() and rows.features("b")[2:].eq(5.0).all() and rows.n == 4
    assert rows.slots(3) is None  # past the end
    disk = StageRows(tmp_path, 6, budget=1)
    disk.append({"a": torch.ones(2, 3)})
    assert disk.slots(2) is None  # rows on disk are written to their file


def test_the_position_major_order_is_a_permutation_that_leaves_distances_and_norms_alone():
    """The grid vector holds the channel-major vector's values in another fixed order: sorted, they
    are equal, and so are Gram matrices (what kNN and a standardised probe see)."""
    z = torch.randn(5, 64, 14, 14, dtype=torch.float64)
    ours, channel_major = pool_map(z, "grid"), F.adaptive_avg_pool2d(z, 12).reshape(5, -1)
    torch.testing.assert_close(ours.sort(1).values, channel_major.sort(1).values)
    torch.testing.assert_close(ours @ ours.T, channel_major @ channel_major.T)


# --------------------------------------------------------------------------- stages from timm's feature API


@pytest.mark.parametrize("name,kwargs,size", [
    ("resnet18", TINY_RESNET, 32),
    ("resnet18", {**TINY_RESNET, "output_stride": 16}, 28),  # the quickstart's layout: layer4 dilated
    ("convnext_atto", {}, 32),
    ("vit_tiny_patch16_224", {**TINY_VIT, "img_size": 32}, 32),
])
def test_stage_shapes_follow_feature_info(name, kwargs, size):
    """Each stage's map has feature_info's channels and side ceil(size / reduction); with avg pooling its
    vector has `channels` values, with grid pooling channels * min(round(sqrt(9216 / C)), side)^2."""
    enc = model(name, **kwargs)
    stages = encoder_stages(enc, name)
    assert [s.name for s in stages] == [f["module"] for f in enc.feature_info]
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        avg = stage_vectors(enc, x, stages, "avg")
        grid = stage_vectors(enc, x, stages, "grid")
    for s in stages[:-1]:
        side = math.ceil(size / s.reduction)
        g = min(side, max(1, math.floor(math.sqrt(TARGET_DIM / s.channels) + 0.5)))
        assert avg[s.name].shape == (2, s.channels), s.name
        assert grid[s.name].shape == (2, s.channels * g * g), s.name
    with torch.no_grad():
        assert torch.equal(grid[stages[-1].name], enc(x))  # the final stage: the encoder's pooled output


def test_a_stage_is_that_module_output_pooled():
    """The vector named layer2 is layer2's output (read by an independent forward hook) pooled to its grid."""
    enc = model("resnet18", **TINY_RESNET)
    seen = {}
    enc.layer2.register_forward_hook(lambda m, i, o: seen.setdefault("layer2", o))
    stages = select_stages(["layer2"], encoder_stages(enc, "resnet18"), "resnet18")
    with torch.no_grad():
        got = stage_vectors(enc, torch.randn(3, 1, 32, 32), stages, "grid")
    fmap = seen["layer2"]  # [3, 16, 4, 4]
    assert list(got) == ["layer2"]
    assert torch.equal(got["layer2"], hwc(F.adaptive_avg_pool2d(fmap, grid_side(16, 4, 4))))


def test_unknown_stage_name_lists_the_valid_ones():
    stages = encoder_stages(model("resnet18", **TINY_RESNET), "resnet18")
    with pytest.raises(ConfigError) as err:
        select_stages(["layer2", "layer9"], stages, "random-init resnet18")
    msg = str(err.value)
    assert "\n" not in msg and "'layer9'" in msg and "act1, layer1, layer2, layer3, layer4" in msg
    assert "layer2'" not in msg.split("are")[0]  # only the unknown name is named as unknown
    vit = encoder_stages(model("vit_tiny_patch16_224", **TINY_VIT), "vit")
    with pytest.raises(ConfigError, match=r"no stage named 'layer4'.*blocks\.0, blocks\.1, blocks\.2"):
        select_stages("layer4", vit, "vit")


def test_a_model_without_timm_feature_api_is_refused_on_one_line():
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError) as err:
        encoder_stages(plain, "my-encoder")
    msg = str(err.value)
    assert "\n" not in msg and "my-encoder" in msg and "feature_info" in msg and "eval.layers=last" in msg


# --------------------------------------------------------------------------- one pass, equal last stage


@pytest.mark.parametrize("name,kwargs", [("resnet18", TINY_RESNET), ("vit_tiny_patch16_224", TINY_VIT)])
def test_one_pass_gives_every_stage_and_the_last_equals_todays_features(tmp_path, name, kwargs):
    enc = model(name, **kwargs)
    stem = enc.conv1 if name == "resnet18" else enc.patch_embed
    calls = []
    stem.register_forward_hook(lambda *a: calls.append(1))
    ds = images(40)
    today, y_today = extract_features(enc, ds, INFO16, batch_size=16)
    assert len(calls) == 3  # 40 images, batches of 16
    calls.clear()
    stages = encoder_stages(enc, name)
    rows, labels = extract_stages(enc, ds, INFO16, stages, "grid", tmp_path, batch_size=16)
    assert len(calls) == 3  # one forward pass per batch gives every stage
    assert torch.equal(labels, y_today)
    assert torch.equal(rows.features(stages[-1].name), today)
    for s in stages:
        assert rows.features(s.name).shape[0] == 40 and rows.features(s.name).isfinite().all()
    assert list(tmp_path.iterdir()) == []  # the scratch files are unlinked at once


def test_a_channels_last_map_pools_as_the_contiguous_one():
    """A channels_last map (pooled by adaptive average pooling in that layout) gives the contiguous
    map's numbers in the same position-major order (overlapping bins, and the grid that is the map
    itself), and its vector is a view of the pooled grid, not a copy."""
    z = torch.randn(3, 64, 14, 14)
    cl = z.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(pool_map(cl, "grid"), pool_map(z, "grid"))
    torch.testing.assert_close(pool_map(cl, "grid"), hwc(F.adaptive_avg_pool2d(z, 12)))
    y = torch.randn(2, 32, 8, 8)
    ycl = y.contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool_map(ycl, "grid"), hwc(y))
    assert pool_map(ycl, "grid").data_ptr() == ycl.data_ptr()  # the map itself, as it lies in memory


@pytest.mark.parametrize("name,kwargs", [("resnet18", TINY_RESNET), ("vit_tiny_patch16_224", TINY_VIT)])
def test_channels_last_extraction_gives_the_same_features_and_leaves_the_encoder_trainable(tmp_path, name, kwargs):
    """channels_last=True (a convnet runs in that layout; a ViT is left alone) gives the contiguous
    extraction's features up to float rounding, every stage too; afterwards the encoder's weights are
    contiguous again and not inference tensors (made under inference mode they could never train)."""
    enc = model(name, **kwargs)
    ds = images(24)
    plain, _ = extract_features(enc, ds, INFO16, batch_size=16)
    fast, _ = extract_features(enc, ds, INFO16, batch_size=16, channels_last=True)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    stages = encoder_stages(enc, name)
    rows_cl, _ = extract_stages(enc, ds, INFO16, stages, "grid", tmp_path, batch_size=16, channels_last=True)
    rows, _ = extract_stages(enc, ds, INFO16, stages, "grid", tmp_path, batch_size=16)
    for s in stages:
        torch.testing.assert_close(rows_cl.features(s.name), rows.features(s.name), rtol=1e-4, atol=1e-5)
    assert torch.equal(rows_cl.features(stages[-1].name), fast)
    assert all(p.is_contiguous() and not p.is_inference() for p in enc.parameters())
    enc.train()(torch.randn(4, 1, 16, 16)).square().mean().backward()  # trains as before
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


def test_stage_rows_in_memory_and_on_disk_hold_the_same_rows(tmp_path, monkeypatch):
    """Rows that fit the memory budget stay in memory; a budget they exceed sends every stage to
    unlinked scratch files; both give the same features, and so does extract_stages either way."""
    import selfsup.eval.features as feats

    g = torch.Generator().manual_seed(0)
    batches = [{"a": torch.randn(5, 3, generator=g), "b": torch.randn(5, 7, generator=g)} for _ in range(3)]
    need = 4 * 15 * (3 + 7)  # float32 bytes of every stage's 15 rows
    small, large = feats.StageRows(tmp_path, 15, budget=need - 1), feats.StageRows(tmp_path, 15, budget=need)
    for batch in batches:
        small.append(batch)
        large.append(batch)
    assert small.on_disk is True and large.on_disk is False
    assert set(small._files) == {"a", "b"} and not small._maps and set(large._maps) == {"a", "b"} and not large._files
    for name in ("a", "b"):
        expected = torch.cat([b[name] for b in batches])  # [15, D]
        assert torch.equal(small.features(name), expected) and torch.equal(large.features(name), expected)
    assert list(tmp_path.iterdir()) == []
    enc = model("resnet18", **TINY_RESNET)
    stages = encoder_stages(enc, "resnet18")
    in_memory, _ = extract_stages(enc, images(12), INFO16, stages, "grid", tmp_path, batch_size=8)
    monkeypatch.setattr(feats, "memory_budget", lambda: 0)
    on_disk, _ = extract_stages(enc, images(12), INFO16, stages, "grid", tmp_path, batch_size=8)
    assert in_memory.on_disk is False and on_disk.on_disk is True
    for s in stages:
        assert torch.equal(in_memory.features(s.name), on_disk.features(s.name))


def test_memory_budget_is_an_eighth_of_memory_at_most_2_gib(monkeypatch):
    import selfsup.eval.features as feats

    sizes = {"SC_PHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(feats.os, "sysconf", lambda key: sizes[key])
    assert feats.memory_budget() == 1000 * 4096 // 8
    sizes["SC_PHYS_PAGES"] = 64 << 20  # 256 GiB of 4 KiB pages
    assert feats.memory_budget() == 2 << 30


def test_stages_before_the_last_stop_early(tmp_path):
    """Without the final stage, the pass stops after the deepest stage asked for (layer4 never runs)."""
    enc = model("resnet18", **TINY_RESNET)
    ran = []
    enc.layer4.register_forward_hook(lambda *a: ran.append(1))
    stages = select_stages(["layer1", "layer2"], encoder_stages(enc, "resnet18"), "resnet18")
    rows, _ = extract_stages(enc, images(8), INFO16, stages, "avg", tmp_path, batch_size=8)
    assert ran == [] and rows.features("layer2").shape == (8, 16)


# --------------------------------------------------------------------------- evaluation rows and caching


@pytest.fixture
def small_cfg(tiny_config):
    def make(*overrides):
        return tiny_config("data.subset=300", "eval.knn=[[5, 0.1]]", "eval.sklearn_max_images=0",
                           "eval.linear_epochs=1", *overrides)
    return make


def _spy(monkeypatch):
    calls = {"features": 0, "stages": []}
    real_f, real_s = prep.extract_features, prep.extract_stages

    def f(*a, **k):
        calls["features"] += 1
        return real_f(*a, **k)

    def s(enc, ds, info, stages, *a, **k):
        calls["stages"].append([st.name for st in stages])
        return real_s(enc, ds, info, stages, *a, **k)
    monkeypatch.setattr(prep, "extract_features", f)  # what selfsup.eval.prepare extracts with
    monkeypatch.setattr(prep, "extract_stages", s)
    return calls


def _same(a: dict, b: dict) -> None:
    """Rows equal but for wall-clock times."""
    drop = lambda r: {k: ({**v, "seconds": 0} if k == "knn_index" else v) for k, v in r.items()
                      if k not in ("seconds", "layer", "pooling")}
    assert drop(a) == drop(b)


def test_one_row_per_stage_the_last_equal_to_layers_last(tmp_path, small_cfg, monkeypatch):
    """kNN only here (the probes' rows are compared in the next test, on two small stages)."""
    calls = _spy(monkeypatch)
    small_cfg = (lambda make: lambda *o: make("eval.linear=false", *o))(small_cfg)
    last = evaluate_layers("random:resnet18", small_cfg(), tmp_path, log=quiet)
    assert len(last) == 1 and "layer" not in last[0]
    assert calls == {"features": 2, "stages": []}  # today's path: one extraction per split
    rows = evaluate_layers("random:resnet18", small_cfg("eval.layers=all"), tmp_path, log=quiet)
    # the final stage was cached by `last` and reused; the rest came from one pass per split
    assert calls["stages"] == [["act1", "layer1", "layer2", "layer3"]] * 2 and calls["features"] == 2
    assert [r["layer"] for r in rows] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [r["pooling"] for r in rows] == ["grid"] * 4 + ["encoder"]
    assert list(rows[-1]) == [*list(last[0])[:3], "layer", "pooling", *list(last[0])[3:]]
    _same(rows[-1], last[0])
    assert len({r["feature_dim"] for r in rows}) > 1
    again = evaluate_layers("random:resnet18", small_cfg("eval.layers=all"), tmp_path, log=quiet)
    assert calls["stages"] == [["act1", "layer1", "layer2", "layer3"]] * 2 and calls["features"] == 2  # all cached
    for a, b in zip(rows, again):
        _same(a, b)
    table = markdown_table(rows)
    assert "| stage |" in table and "| layer4 (pooled output, 64-d) |" in table and "Layer-wise evaluation" in table


def digest_probe(xtr, ytr, xte, yte, *args):
    """Stands in for the probe protocol (tested in test_linear.py; 2000 SGD steps per call): a digest of
    exactly the features and labels each row's probe is given."""
    return {"linear": {"fraction": 1.0, "top1": float(xtr.double().sum()), "top5": float(xte.double().sum()),
                       "dim": xtr.shape[1], "labels": int(ytr.sum() + yte.sum())}}


def test_layers_last_is_todays_evaluate_and_stages_never_share_a_cache_entry(tmp_path, small_cfg, monkeypatch):
    monkeypatch.setattr(ev, "probe_protocol", digest_probe)
    one = evaluate("random:resnet18", small_cfg(), tmp_path, log=quiet)
    rows = evaluate_layers("random:resnet18", small_cfg("eval.layers=[layer1, layer4]"), tmp_path, log=quiet)
    assert [r["layer"] for r in rows] == ["layer1", "layer4"]
    _same(rows[-1], one)  # kNN, and the probe saw the same features and labels
    layer1 = FeatureFile(next(tmp_path.glob("*-train-*-layer1-gridhwc9216.safetensors"))).load()  # [N, 128]
    assert rows[0]["linear"]["dim"] == 128 and rows[0]["linear"]["top1"] == float(layer1.double().sum())
    calls = _spy(monkeypatch)
    knn_only = (lambda *o: small_cfg("eval.linear=false", *o))  # noqa: E731
    avg = evaluate_layers("random:resnet18", knn_only("eval.layers=[layer1]", "eval.layer_pool=avg"), tmp_path,
                          log=quiet)
    assert calls["stages"] == [["layer1"]] * 2  # another pooling is another entry, never the grid one
    assert avg[0]["feature_dim"] == 8 and rows[0]["feature_dim"] == 8 * 4 * 4  # 8 channels at 4x4 (16 px / 4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert sum("-layer1-gridhwc9216" in n for n in names) == 2 and sum("-layer1-avg" in n for n in names) == 2
    # evaluate() is the final stage whatever eval.layers says
    _same(evaluate("random:resnet18", knn_only("eval.layers=all"), tmp_path, log=quiet),
          evaluate_layers("random:resnet18", knn_only(), tmp_path, log=quiet)[0])


def test_unknown_stage_is_refused_before_any_extraction(tmp_path, small_cfg, monkeypatch):
    calls = _spy(monkeypatch)
    with pytest.raises(ConfigError, match=r"no stage named 'layer9'; its stages .* are act1, layer1, layer2, "
                                          r"layer3, layer4"):
        evaluate_layers("random:resnet18", small_cfg("eval.layers=[layer1, layer9]"), tmp_path, log=quiet)
    assert calls == {"features": 0, "stages": []} and not list(tmp_path.glob("*.safetensors"))


def test_pixels_have_one_row_random_gets_stages(tmp_path, small_cfg):
    cfg = small_cfg("eval.layers=all", "eval.linear=false")
    pix = evaluate_layers("pixels", cfg, tmp_path, log=quiet)
    assert len(pix) == 1 and pix[0]["layer"] is None
    _same(pix[0], evaluate("pixels", small_cfg("eval.linear=false"), tmp_path, log=quiet))
    rand = evaluate_layers("random:resnet18", cfg, tmp_path, log=quiet)
    table = markdown_table(rand + pix)
    assert "| raw pixels | no stages |" in table and "Raw pixels have no stages: one row." in table
    assert len(rand) == 5


def test_cache_features_fills_every_stage_for_evaluate_layers(tmp_path, small_cfg, monkeypatch):
    cfg = small_cfg("eval.layers=[act1, layer4]", "eval.linear=false")
    p = ev.cache_features("random:resnet18", cfg, tmp_path, log=quiet)
    calls = _spy(monkeypatch)
    rows = evaluate_layers("random:resnet18", cfg, tmp_path, log=quiet, prepared=p)
    assert calls == {"features": 0, "stages": []} and [r["layer"] for r in rows] == ["act1", "layer4"]


@pytest.mark.parametrize("value,fix", [("[]", "non-empty list"), ("[all, layer1]", "stand alone")])
def test_bad_layers_values_are_config_errors(tiny_config, value, fix):
    with pytest.raises(ConfigError, match=fix):
        tiny_config(f"eval.layers={value}")


def test_check_layers_names_the_stages_the_encoder_has(tiny_config):
    """(pretraining calls it on its untrained encoder: tests/test_eval_data.py checks no step runs)"""
    enc = model("resnet18", **TINY_RESNET)
    ev.check_layers(tiny_config("eval.layers=[layer3]"), enc)
    with pytest.raises(ConfigError, match=r"'layer5'.*act1, layer1, layer2, layer3, layer4"):
        ev.check_layers(tiny_config("eval.layers=layer5"), enc)


# 64 rows of this many float32 values: 64 MiB, above glibc's largest mmap threshold (32 MiB), so each buffer is a
# fresh mapping (a smaller one may reuse heap memory that an earlier numpy array advised)
WIDE = 1 << 18


def _vm_flags(array) -> set[str]:
    """The kernel's VmFlags of every mapping that holds part of ``array``'s bytes (/proc/self/smaps;
    numpy advises only the 2 MiB-aligned part of its buffer, so the mapping of the first byte may not
    carry its advice)."""
    lo_a = array.__array_interface__["data"][0]
    hi_a = lo_a + array.nbytes
    flags, inside, found = set(), False, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo < hi_a and lo_a < hi
                found |= inside
            elif inside and head == "VmFlags:":
                flags.update(line.split()[1:])
    assert found, f"no mapping holds addresses {lo_a:#x}-{hi_a:#x}"
    return flags


def test_large_row_buffers_are_not_advised_huge_pages_as_numpy_arrays_are():
    # numpy advises huge pages on arrays of 4 MiB or more; on a fragmented machine each first touch
    # then stalls in the kernel's compaction (0.1-1.7 s for 368 MiB of stage rows, erratic); the
    # buffers of stage rows and of the kNN's normalised copies come from torch's allocator instead
    import numpy as np

    from selfsup.eval.search import load_unit
    from selfsup.memory import empty_float32

    numpy_rows = np.empty((64, WIDE), np.float32)  # 64 MiB
    ours = empty_float32(64, WIDE)
    assert ours.dtype == np.float32 and ours.shape == (64, WIDE) and ours.flags.c_contiguous and ours.flags.writeable
    assert "hg" in _vm_flags(numpy_rows)  # what numpy asks for: the check below can tell the two apart
    assert "hg" not in _vm_flags(ours)
    feats = torch.randn(64, WIDE)
    unit = load_unit(feats)
    assert "hg" not in _vm_flags(unit)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    for bad in ((3, -1), (2, 3.5), (True, 2)):
        with pytest.raises(ValueError, match="dimensions must be whole numbers >= 0"):
            empty_float32(*bad)
    assert empty_float32(2, 3.0).shape == (2, 3)


def test_stage_rows_in_memory_are_not_advised_huge_pages(tmp_path):
    from selfsup.eval.features import StageRows

    rows = StageRows(tmp_path, 64, budget=1 << 30)
    batch = {"a": torch.randn(64, WIDE)}
    rows.append(batch)
    got = rows.features("a")
    assert torch.equal(got, batch["a"])
    assert "hg" not in _vm_flags(got.numpy())


def test_layerwise_warnings_name_their_stages():
    """helper-69's: results.md showed each layer-wise warning as the target's, without its stage (26 stage warnings
    became 12 bullets, none saying which stage's probe diverged). Each warning names the stages it came from, once
    per target; one that every stage of the target has says so."""
    from selfsup.eval.report import markdown_table

    def row(label, layer, warnings):
        return {"label": label, "kind": "pretrained", "layer": layer, "pooling": "grid", "feature_dim": 8,
                "dataset": "toy", "train_images": 10, "test_images": 5, "seed": 0,
                "knn": {"k=5,T=0.07": {"top1": 50.0}}, "warnings": warnings}

    data = "3 unreadable images were left out"
    rows = [row("run a", "act1", [data, "lr 0.3 diverged at 1% labels"]), row("run a", "layer1", [data]),
            row("run a", "layer2", [data, "lr 0.3 diverged at 1% labels", "k beyond the smallest class"]),
            row("random-init resnet18", "act1", [data]), row("random-init resnet18", "layer1", []),
            {**row("raw pixels", None, [data]), "kind": "pixels"}]  # pixels: no stages
    notes = [line for line in markdown_table(rows).splitlines() if line.startswith("- **Warning**")]
    assert notes == [f"- **Warning** (run a, every stage): {data}",
                     "- **Warning** (run a, stages act1, layer2): lr 0.3 diverged at 1% labels",
                     "- **Warning** (run a, stage layer2): k beyond the smallest class",
                     f"- **Warning** (random-init resnet18, stage act1): {data}",
                     f"- **Warning** (raw pixels): {data}"]
