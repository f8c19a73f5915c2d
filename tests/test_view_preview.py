"""views.png shows what each method trains on (``Method.preview_inputs``): jigsaw tiles in their
shuffled order, the four rotations, masked images, noised inputs; checked against independent
computations, and ``view_preview`` draws one named column per input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

from selfsup import plots
from selfsup.encoders import create_encoder
from selfsup.methods.cpc import CPC, CPCConfig
from selfsup.methods.denoise import Denoise, DenoiseConfig
from selfsup.methods.jigsaw import Jigsaw, JigsawConfig
from selfsup.methods.mae import MAE, MAEConfig
from selfsup.methods.pirl import PIRL, PIRLConfig
from selfsup.methods.rotation import Rotation, RotationConfig
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.methods.simmim import SimMIM, SimMIMConfig

from conftest import TINY_INFO as INFO  # noqa: E402

RESNET = {"channels": [8, 16, 32, 64]}
VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}


def resnet():
    return create_encoder("resnet18", 1, RESNET)


def vit():
    return create_encoder("vit_tiny_patch16_224", 1, VIT)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 1, 16, 16] random images (no flat regions, so every tile has a std)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)


def preview(method, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        return dict(method.preview_inputs(images(n)))


def grid_cells(x: torch.Tensor) -> list[torch.Tensor]:
    """[n, C, 3s, 3s] -> the 9 cells [n, C, s, s] in row-major order (written with slicing)."""
    s = x.shape[-1] // 3
    return [x[..., r * s:(r + 1) * s, c * s:(c + 1) * s] for r in range(3) for c in range(3)]


def standardised(t: torch.Tensor) -> torch.Tensor:
    """Each [C, s, s] tile of [n, C, s, s] to zero mean, unit (population) std."""
    flat = t.flatten(1)
    return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, unbiased=False, keepdim=True)).view_as(t)


def tile_orders(mosaic: torch.Tensor, view: torch.Tensor) -> list[tuple[int, ...]]:
    """For each sample, the order o with mosaic cell i = standardised view cell o[i] (tiles that
    fill their cells, no jitter); asserts every mosaic cell matches exactly one view cell."""
    shown, source = grid_cells(mosaic), [standardised(c) for c in grid_cells(view)]
    orders = []
    for b in range(mosaic.shape[0]):
        order = []
        for i in range(9):
            hits = [k for k in range(9) if torch.allclose(shown[i][b], source[k][b], atol=1e-3)]
            assert len(hits) == 1, (b, i, hits)
            order.append(hits[0])
        orders.append(tuple(order))
    return orders


# ---------------------------------------------------------------- jigsaw, pirl


def test_jigsaw_preview_is_the_view_tiles_in_one_of_the_methods_permutations():
    m = Jigsaw(JigsawConfig(num_permutations=10, tile_fraction=1.0, head_hidden_dim=16), resnet(), INFO)
    assert m.tile == m.cell  # tiles fill their cells: no jitter, so cells can be compared
    shown = preview(m, n=6)
    assert list(shown) == ["augmented", "jigsaw tiles"]
    view, mosaic = shown["augmented"], shown["jigsaw tiles"]
    assert mosaic.shape == (6, 1, 3 * m.tile, 3 * m.tile) and view.shape == (6, 1, 3 * m.cell, 3 * m.cell)
    orders = tile_orders(mosaic, view)
    allowed = {tuple(p) for p in m.permutations.tolist()}
    assert all(o in allowed for o in orders), orders  # the permutation set the head classifies
    assert any(o != tuple(range(9)) for o in orders)  # actually shuffled
    # un-permuting the mosaic with the order found gives back the original (standardised) cells
    cells = grid_cells(mosaic)
    for b, order in enumerate(orders):
        back = [None] * 9
        for i, k in enumerate(order):
            back[k] = cells[i][b]
        for k in range(9):
            assert torch.allclose(back[k], standardised(grid_cells(view)[k])[b], atol=1e-3)


def test_pirl_preview_shows_image_view_patch_view_and_its_shuffled_tiles():
    m = PIRL(PIRLConfig(tile_fraction=1.0, feature_dim=8, bank_size=256), resnet(), INFO)
    shown = preview(m, n=6)
    assert list(shown) == ["image view", "patch view", "jigsaw tiles"]
    assert shown["image view"].shape == (6, 1, 16, 16)
    orders = tile_orders(shown["jigsaw tiles"], shown["patch view"])
    assert all(sorted(o) == list(range(9)) for o in orders)
    assert len(set(orders)) > 1  # a random order per sample (PIRL uses all 9! orders)


# ---------------------------------------------------------------- rotation


def test_rotation_preview_is_the_view_at_each_right_angle():
    m = Rotation(RotationConfig(head_hidden_dim=16), resnet(), INFO)
    shown = preview(m)
    names = list(shown)
    assert names == [f"rotated {a}\N{DEGREE SIGN}" for a in (0, 90, 180, 270)]
    base = shown[names[0]]
    for k, name in enumerate(names):
        assert torch.equal(shown[name], torch.rot90(base, k, dims=(2, 3)))  # counter-clockwise k * 90
    # a 90 degree turn of a non-symmetric image differs from the image
    assert not torch.equal(shown[names[1]], base)


# ---------------------------------------------------------------- masked image modelling


@pytest.mark.parametrize("build", [
    lambda: MAE(MAEConfig(decoder_dim=16, decoder_depth=1, decoder_heads=2), vit(), INFO),
    lambda: SimMIM(SimMIMConfig(), resnet(), INFO),
    lambda: SimMIM(SimMIMConfig(mask_patch_size=4), vit(), INFO),
], ids=["mae", "simmim-resnet", "simmim-vit"])
def test_masked_preview_keeps_visible_patches_and_hides_the_methods_share(build):
    m = build()
    if isinstance(m, SimMIM) and not m.vit:
        torch.nn.init.constant_(m.mask_token, 0.7)  # a pixel token distinct from the data mean
    shown = preview(m)
    (name_x, x), (name_m, masked) = list(shown.items())
    assert name_x == "augmented" and name_m == f"masked {m.cfg.mask_ratio:.0%}"
    patch = m.patch if isinstance(m, MAE) else m.mask_patch
    grid = 16 // patch
    fill = 0.7 if isinstance(m, SimMIM) and not m.vit else 0.0  # the learnt pixel token; else the data mean
    visible_per_sample = m.num_visible
    for b in range(x.shape[0]):
        kept = hidden = 0
        for r, c in itertools.product(range(grid), range(grid)):
            sl = (b, slice(None), slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
            if torch.equal(masked[sl], x[sl]):
                kept += 1
            else:
                assert torch.allclose(masked[sl], torch.full_like(masked[sl], fill)), (b, r, c)
                hidden += 1
        assert kept == visible_per_sample and hidden == grid * grid - visible_per_sample


# ---------------------------------------------------------------- denoising


@pytest.mark.parametrize("corruption", ["edm", "vp", "flow"])
def test_denoise_preview_noise_has_the_named_scale(corruption):
    cfg = DenoiseConfig(corruption=corruption)
    m = Denoise(cfg, resnet(), INFO)
    shown = preview(m, n=16)
    names = list(shown)
    x0 = shown.pop("clean")
    assert names[0] == "clean" and len(shown) == 3
    for name, x_t in shown.items():
        assert name.startswith("x_t ")
        level = float(name.split("=")[1])
        if corruption == "edm":
            # x_t = x0 + sigma eps on data scaled to sigma_data; shown divided by sigma_data again
            alpha, sigma = 1.0, level / cfg.sigma_data
        elif corruption == "flow":
            alpha, sigma = 1 - level, level
        else:  # cosine VP, from Nichol & Dhariwal 2021 with s = 0.008
            s = 0.008
            abar = (math.cos((level + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)) ** 2
            alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
        noise = x_t - alpha * x0  # [16, 1, 16, 16] = sigma * eps
        assert abs(noise.mean().item()) < 0.1 * sigma
        assert noise.std().item() == pytest.approx(sigma, rel=0.08), name
    if corruption == "edm":  # the 16th/50th/84th percentiles of ln sigma ~ N(p_mean, p_std^2)
        want = [math.exp(cfg.p_mean + z * cfg.p_std) for z in (-1, 0, 1)]
        assert [float(n.split("=")[1]) for n in names[1:]] == pytest.approx(want, rel=0.05)


# ---------------------------------------------------------------- the default and view_preview


def test_cpc_preview_lays_out_the_views_half_overlapping_patches():
    """Without per-patch augmentation, mosaic cell (r, c) is the view's patch at rows r*s..r*s+2s, columns
    c*s..c*s+2s (cut here with slicing), both in the data's normalisation."""
    m = CPC(CPCConfig(grid=3, offsets=[1], context_dim=8, context_blocks=1, augment_patches=False), resnet(), INFO)
    shown = preview(m)
    assert list(shown) == ["view", "3x3 patches"]
    view, mosaic = shown["view"], shown["3x3 patches"]
    s, p = m.stride, m.patch
    assert mosaic.shape[-1] == 3 * p and view.shape[-1] == 4 * s
    for r, c in itertools.product(range(3), range(3)):
        cell = mosaic[..., r * p:(r + 1) * p, c * p:(c + 1) * p]
        assert torch.allclose(cell, view[..., r * s:r * s + p, c * s:c * s + p], atol=1e-5), (r, c)


def test_default_preview_is_the_two_views_of_a_two_view_method():
    m = SimCLR(SimCLRConfig(), resnet(), INFO)
    torch.manual_seed(3)
    want = [v(images()) for v in m.view_augments()]  # the same draws, in the same order
    shown = preview(m, seed=3)
    assert list(shown) == ["view 1", "view 2"]
    assert all(torch.equal(a, b) for a, b in zip(shown.values(), want))


def write_run(tmp_path, tiny_config, method: str, *overrides: str):
    from selfsup.config import dump_yaml
    from selfsup.rundir import RunDir

    run = RunDir(tmp_path / method)
    run.root.mkdir(parents=True)
    run.config.write_text(dump_yaml(tiny_config(*overrides, method=method)))
    run.data_info.write_text(json.dumps(dataclasses.asdict(INFO)))
    return run.root


@pytest.mark.parametrize("method,overrides,columns", [
    ("rotation", ["method.head_hidden_dim=16"], [f"rotated {a}\N{DEGREE SIGN}" for a in (0, 90, 180, 270)]),
    ("jigsaw", ["method.num_permutations=10", "method.head_hidden_dim=16"], ["augmented", "jigsaw tiles"]),
    ("denoise", [], ["clean", "x_t sigma=0.091", "x_t sigma=0.3", "x_t sigma=1"]),
    ("pirl", ["method.feature_dim=8"], ["image view", "patch view", "jigsaw tiles"]),
    ("mae", ["method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2"], ["augmented", "masked 75%"]),
    ("simclr", [], ["view 1", "view 2"]),
    ("cpc", ["method.grid=3", "method.offsets=[1]", "method.context_dim=8", "method.context_blocks=1"],
     ["view", "3x3 patches"]),
])
def test_view_preview_draws_one_named_column_per_input(tmp_path, tiny_config, monkeypatch, method, overrides,
                                                      columns):
    from PIL import Image

    seen = {}
    real = plots.augmentation_preview

    def spy(originals, views, out, names=None):
        seen["names"], seen["shapes"] = list(names), [v.shape for v in views]
        return real(originals, views, out, names)

    monkeypatch.setattr(plots, "augmentation_preview", spy)
    out = plots.view_preview(write_run(tmp_path, tiny_config, method, *overrides), tmp_path / "views.png", n=3)
    assert out is not None and out.is_file()
    assert seen["names"] == columns
    assert all(s[0] == 3 for s in seen["shapes"])
    with Image.open(out) as im:
        assert int(im.text["panels"]) == 3 * (1 + len(columns))  # the original plus each input, per row
