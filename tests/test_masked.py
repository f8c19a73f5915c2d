"""Masked image modelling: patches, masks and masked losses (shared), MAE and SimMIM."""

import math
import statistics
from fractions import Fraction

import pytest
import timm
import torch

from selfsup.config import ConfigError
from selfsup.data import DataInfo
from selfsup.encoders import create_encoder
from selfsup.methods._pixels import (feature_map, mae_visible_count, masked_loss, normalise_patches, patchify,
                                     random_masking, simmim_visible_count, unpatchify, upsample_mask)
from selfsup.methods.mae import MAE, MAEConfig, sincos_pos_embed_2d
from selfsup.methods.simmim import SimMIM, SimMIMConfig, default_mask_patch_size, mask_image

from conftest import TINY_INFO as INFO  # noqa: E402
VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}
RESNET = {"channels": [8, 16, 32, 64]}


def tiny_vit(**kw):
    return create_encoder("vit_tiny_patch16_224", 1, {**VIT, **kw})


def uint8_images(b=4, c=1, s=16):
    return torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8)


# --------------------------------------------------------------------------- shared helpers


def test_patchify_layout_and_round_trip():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)  # [2, 6, 48]
    assert p.shape == (2, 6, 48)
    # patch 4 (row 1, col 1) holds the pixels x[:, :, 4:8, 4:8] laid out (row, col, channel)
    assert torch.equal(p[:, 4].view(2, 4, 4, 3), x[:, :, 4:8, 4:8].permute(0, 2, 3, 1))
    assert torch.equal(unpatchify(p, 4, 3, grid=(2, 3)), x)
    sq = torch.randn(2, 1, 16, 16)
    assert torch.equal(unpatchify(patchify(sq, 4), 4, 1), sq)


@pytest.mark.parametrize("n, k", [(16, 4), (49, 12), (49, 19), (36, 18), (64, 6)])
def test_mask_count_is_exact_in_every_sample(n, k):
    torch.manual_seed(0)
    mask, keep = random_masking(32, n, k)
    assert mask.shape == (32, n) and keep.shape == (32, k)
    assert (mask.sum(1) == n - k).all()  # every sample, not just on average
    assert (~mask.gather(1, keep)).all()  # the kept indices are exactly the visible patches
    assert (keep.diff(dim=1) > 0).all()  # sorted, no repeats
    assert len({tuple(m) for m in mask.tolist()}) > 25  # independent per sample


@pytest.mark.parametrize("k", [0, 16, -1, 0.75, 4.0])
def test_random_masking_refuses_anything_but_a_count_between_1_and_n_minus_1(k):
    with pytest.raises(ValueError, match=rf"random_masking: visible must be a whole number of patches from 1 to "
                                         rf"15 of 16, got {k}$"):
        random_masking(2, 16, k)


# The authors' counts, computed here in exact integer arithmetic on the ratio as a percentage:
# SimMIM masks ceil(G * r) of G mask patches (microsoft/SimMIM data/data_simmim.py MaskGenerator),
# MAE keeps floor(L * (1 - r)) of L patches visible (facebookresearch/mae models_mae.py random_masking).
def authors_simmim_masked(g, percent):
    return math.ceil(Fraction(g * percent, 100))


def authors_mae_visible(n, percent):
    return math.floor(Fraction(n * (100 - percent), 100))


# (G, percent): the default 0.6 on 7x7 (28 px) and 8x8 (32 px) grids, where rounding masked one
# fewer; the paper's 6x6 grid; other grids and ratios; 100 at 0.55, where the float product
# 100 * 0.55 = 55.000...01 would mask 56.
SIMMIM_CASES = [(49, 60), (64, 60), (36, 60), (16, 60), (4, 60), (49, 75), (64, 45), (25, 50), (9, 30), (100, 55)]


@pytest.mark.parametrize("g, percent", SIMMIM_CASES)
def test_simmim_masks_the_ceiling_of_grid_times_ratio(g, percent):
    masked = g - simmim_visible_count(g, percent / 100)
    assert masked == authors_simmim_masked(g, percent)
    if (g, percent) != (100, 55):  # the authors' float expression, where it has no rounding error
        assert masked == math.ceil(g * (percent / 100))


def test_simmim_default_ratio_masks_30_of_49_and_39_of_64():
    """The issue's numbers: rounding masked 29 and 38."""
    assert 49 - simmim_visible_count(49, 0.6) == 30
    assert 64 - simmim_visible_count(64, 0.6) == 39


# (L, percent): 49 at 0.6 (19.6), 14 at 0.75 (3.5) and 49 at 0.9 (4.9), where rounding kept one
# more; MAE's 196 at 0.75; 100 and 10 at 0.9, where the float product 0.0999... * L is just
# under an integer (the reference code's int() would keep 9 and 0).
MAE_CASES = [(49, 75), (49, 60), (14, 75), (49, 90), (196, 75), (64, 75), (16, 90), (50, 75), (100, 90), (10, 90)]


@pytest.mark.parametrize("n, percent", MAE_CASES)
def test_mae_keeps_the_floor_of_patches_times_one_minus_ratio(n, percent):
    visible = mae_visible_count(n, percent / 100)
    assert visible == authors_mae_visible(n, percent)
    if (n, percent) not in {(100, 90), (10, 90)}:  # the authors' float expression, where it is exact
        assert visible == int(n * (1 - percent / 100))


@pytest.mark.parametrize("count, method", [(mae_visible_count, "mae"), (simmim_visible_count, "simmim")])
def test_a_ratio_that_leaves_no_visible_patch_is_refused(count, method):
    with pytest.raises(ConfigError, match=r"method.mask_ratio=0.95 leaves 0 of 16 patches visible.*"
                                          r"use a mask_ratio <= 0.937$"):
        count(16, 0.95)
    assert count(16, 0.937) == 1  # the bound the message gives works
    with pytest.raises(ConfigError, match="a grid of 1 patch cannot be split into visible and masked patches"):
        count(1, 0.5)


def test_upsample_mask_matches_pixels():
    mask = torch.tensor([[True, False, False, True]])  # 2x2 grid
    up = upsample_mask(mask, 2, 2).view(4, 4)
    assert up.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_masked_loss_ignores_visible_patches(kind):
    torch.manual_seed(0)
    pred, target = torch.randn(3, 16, 12), torch.randn(3, 16, 12)
    mask, _ = random_masking(3, 16, 4)
    base = masked_loss(pred, target, mask, kind)
    vis = (~mask).nonzero()[0].tolist()
    hid = mask.nonzero()[0].tolist()

    changed = pred.clone()
    changed[vis[0], vis[1]] += 100.0
    assert torch.equal(masked_loss(changed, target, mask, kind), base)
    changed[vis[0], vis[1]] = float("nan")  # not even a NaN at a visible patch leaks in
    assert torch.equal(masked_loss(changed, target, mask, kind), base)

    changed = pred.clone()
    changed[hid[0], hid[1]] += 1.0
    assert masked_loss(changed, target, mask, kind) != base

    # naive reference: the mean error over the masked patches' elements
    err = (pred - target).square() if kind == "mse" else (pred - target).abs()
    assert torch.allclose(base, err[mask].mean())


def test_normalised_targets_are_per_patch():
    t = torch.randn(2, 5, 48) * 3 + 7
    n = normalise_patches(t)
    assert torch.allclose(n.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(n.var(-1), torch.ones(2, 5), atol=1e-4)


# --------------------------------------------------------------------------- MAE


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])  # 0.9: 1 of 16 visible (rounding kept 2)
def test_mae_encoder_sees_only_the_visible_tokens_and_decoder_output_unpatchifies(ratio):
    torch.manual_seed(0)
    method = MAE(MAEConfig(mask_ratio=ratio, decoder_dim=32, decoder_depth=1, decoder_heads=2), tiny_vit(), INFO)
    n = (16 // 4) ** 2
    seen, decoded = [], []
    method.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    method.decoder_pred.register_forward_hook(lambda m, args, out: decoded.append(out))
    out = method.training_step(uint8_images(4))
    prefix = method.encoder.num_prefix_tokens  # the class token
    assert seen == [(4, prefix + authors_mae_visible(n, round(ratio * 100)), 32)]
    assert decoded[0].shape == (4, n, 4 * 4 * 1)
    assert unpatchify(decoded[0], 4, 1).shape == (4, 1, 16, 16)  # the input's shape
    assert out["features"].shape == (4, 32) and torch.isfinite(out["loss"])


def test_mae_loss_is_mse_on_masked_normalised_patches():
    torch.manual_seed(0)
    method = MAE(MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2), tiny_vit(), INFO)
    x = torch.randn(3, 1, 16, 16)
    mask, keep = random_masking(3, 16, 4)
    pred = method.decode(method.encode_visible(x, keep), keep)
    target = patchify(x, 4)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    ref = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(masked_loss(pred, normalise_patches(patchify(x, 4)), mask), ref)
    # the decoder's visible-position outputs do not enter the loss: their gradient is zero
    pred.retain_grad()
    masked_loss(pred, normalise_patches(patchify(x, 4)), mask).backward()
    assert pred.grad[~mask].abs().max() == 0 and pred.grad[mask].abs().max() > 0


def naive_mae_loss(x, pred, masked, patch, norm_pix):
    """MAE's loss written out one masked patch at a time: the patch's pixels read in (row,
    column, channel) order from the image ``x`` [B, C, H, W], normalised to zero mean and unit
    (unbiased) variance with eps 1e-6 when ``norm_pix``, and the mean squared error of the
    prediction ``pred`` [B, N, p*p*C] over those pixels, averaged over every masked patch."""
    b_count, chans, side, _ = x.shape
    grid = side // patch
    errors = []
    for b in range(b_count):
        for n in masked[b]:
            row, col = divmod(n, grid)
            pixels = [float(x[b, c, row * patch + i, col * patch + j])
                      for i in range(patch) for j in range(patch) for c in range(chans)]
            if norm_pix:
                mu, var = statistics.fmean(pixels), statistics.variance(pixels)
                pixels = [(v - mu) / math.sqrt(var + 1e-6) for v in pixels]
            guess = pred[b, n].tolist()
            errors.append(sum((g - t) ** 2 for g, t in zip(guess, pixels)) / len(pixels))
    return sum(errors) / len(errors)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_training_step_loss_equals_naive_masked_patch_mse_on_a_fixed_mask(monkeypatch, norm_pix):
    """MAE.training_step itself (augment -> mask -> encode -> decode -> loss) on RGB images with a
    mask chosen here: its loss is the naive per-patch loop's, and the encoder saw exactly the
    patches the mask leaves visible."""
    import selfsup.methods.mae as mae_module

    torch.manual_seed(0)
    info = DataInfo(in_chans=3, image_size=16, num_classes=10, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    method = MAE(MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=norm_pix),
                 create_encoder("vit_tiny_patch16_224", 3, VIT), info)
    visible = [[12, 13, 14, 15], [0, 5, 10, 15], [1, 2, 8, 11]]  # 4 of 16 patches each (mask ratio 0.75)
    masked = [[n for n in range(16) if n not in keep] for keep in visible]
    calls = []

    def fixed_masking(batch, n, k, device=None, generator=None):
        calls.append((batch, n, k))
        mask = torch.ones(batch, n, dtype=torch.bool)
        for b, keep in enumerate(visible):
            mask[b, keep] = False
        return mask, torch.tensor(visible)

    monkeypatch.setattr(mae_module, "random_masking", fixed_masking)
    seen, decoded, tokens = [], [], []
    method.encoder.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    method.encoder.blocks[0].register_forward_pre_hook(lambda m, args: tokens.append(args[0].detach().clone()))
    method.decoder_pred.register_forward_hook(lambda m, args, out: decoded.append(out.detach().clone()))
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    out = method.training_step(images)
    assert calls == [(3, 16, 4)]
    x, pred = seen[0].double(), decoded[0].double()  # the augmented view [3, 3, 16, 16], predictions [3, 16, 48]
    ref = naive_mae_loss(x, pred, masked, 4, norm_pix)
    assert math.isclose(float(out["loss"].detach()), ref, rel_tol=1e-5)
    # the encoder's blocks got the class token plus the 4 visible patches, in the mask's order
    with torch.no_grad():
        embedded = method.encoder._pos_embed(method.encoder.patch_embed(seen[0]))  # [3, 1 + 16, 32]
    assert tokens[0].shape == (3, 1 + 4, 32)
    for b, keep in enumerate(visible):
        torch.testing.assert_close(tokens[0][b, 1:], embedded[b, [1 + n for n in keep]])


@pytest.mark.parametrize("ratio, visible", [(0.6, 19), (0.75, 12), (0.9, 4)])
def test_mae_on_a_7x7_grid_encodes_the_authors_count_of_visible_patches(ratio, visible):
    """28 px images, patch 4 (the Fashion-MNIST config's 49 tokens): 0.6 and 0.9 are where rounding
    kept one more patch (20 and 5)."""
    torch.manual_seed(0)
    info = DataInfo(in_chans=1, image_size=28, num_classes=10, mean=(0.3,), std=(0.3,))
    method = MAE(MAEConfig(mask_ratio=ratio, decoder_dim=32, decoder_depth=1, decoder_heads=2),
                 tiny_vit(img_size=28), info)
    seen = []
    method.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    method.training_step(uint8_images(2, s=28))
    assert seen == [(2, 1 + visible, 32)]  # the class token and the visible patches
    assert visible == authors_mae_visible(49, round(ratio * 100))
    with pytest.raises(ConfigError, match="mask_ratio=0.99 leaves 0 of 49 patches visible"):
        MAE(MAEConfig(mask_ratio=0.99, decoder_dim=32, decoder_depth=1, decoder_heads=2), tiny_vit(img_size=28), info)


def test_mae_exports_the_timm_vit_unchanged_and_rejects_convnets():
    vit = tiny_vit()
    keys = set(vit.state_dict())
    method = MAE(MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2), vit, INFO)
    assert method.exported_encoder() is vit and set(vit.state_dict()) == keys
    assert isinstance(vit, timm.models.vision_transformer.VisionTransformer)
    with pytest.raises(ValueError, match=r"'mae'.*VisionTransformer.*resnet18"):
        MAE(MAEConfig(), create_encoder("resnet18", 1, RESNET), INFO)


def test_sincos_position_embeddings():
    pe = sincos_pos_embed_2d(16, 4)
    assert pe.shape == (16, 16)
    assert len({tuple(r) for r in pe.round(decimals=5).tolist()}) == 16  # every position distinct
    assert torch.allclose(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))


# --------------------------------------------------------------------------- SimMIM


def test_default_mask_patch_size():
    assert default_mask_patch_size(192) == 32  # the paper
    assert default_mask_patch_size(224) == 32
    assert default_mask_patch_size(28) == 4
    assert default_mask_patch_size(32) == 4
    assert default_mask_patch_size(16, unit=4) == 4
    assert default_mask_patch_size(224, unit=16) == 32


def test_simmim_convnet_pastes_the_pixel_token_over_masked_squares_only():
    torch.manual_seed(0)
    method = SimMIM(SimMIMConfig(mask_patch_size=4), create_encoder("resnet18", 1, RESNET), INFO)
    assert method.mask_token.shape == (1, 1, 4, 4)
    with torch.no_grad():
        method.mask_token.copy_(torch.randn(1, 1, 4, 4))
    x = torch.randn(2, 1, 16, 16)
    mask, _ = random_masking(2, 16, 6)
    masked = mask_image(x, mask, method.mask_token)
    px, pm = patchify(masked, 4), patchify(x, 4)
    assert torch.equal(px[~mask], pm[~mask])  # visible squares untouched
    assert torch.equal(px[mask], method.mask_token.flatten().expand(int(mask.sum()), 16))
    assert (mask.sum(1) == 10).all()

    seen = []
    method.encoder.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))  # the stem
    out = method.training_step(uint8_images(2))
    assert torch.isfinite(out["loss"]) and out["features"].shape == (2, 64)
    token_squares = (patchify(seen[0], 4) == method.mask_token.flatten()).all(-1)  # [2, 16]
    assert token_squares.sum(1).tolist() == [10, 10]  # the encoder saw exactly 60% of squares masked
    out["loss"].backward()
    assert method.mask_token.grad.abs().sum() > 0 and method.decoder.proj.weight.grad is not None


def test_simmim_vit_masks_in_patch_embedding_space():
    torch.manual_seed(0)
    vit = tiny_vit()
    method = SimMIM(SimMIMConfig(mask_patch_size=8), vit, INFO)  # 2x2 mask grid over a 4x4 token grid
    assert method.mask_token.shape == (1, 1, 32)
    embedded = []
    vit.patch_embed.register_forward_hook(lambda m, args, out: embedded.append(out))
    x = torch.randn(2, 1, 16, 16)
    mask, _ = random_masking(2, 4, 2)
    tokens = method.encode(x, mask)  # [2, 1 + 16, 32]
    assert tokens.shape == (2, 17, 32)
    fmap = feature_map(vit, tokens)
    assert fmap.shape == (2, 32, 4, 4)
    assert method.decoder(fmap).shape == (2, 1, 16, 16)
    out = method.training_step(uint8_images(2))
    out["loss"].backward()
    assert method.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of the patch size"):
        SimMIM(SimMIMConfig(mask_patch_size=2), tiny_vit(), INFO)


@pytest.mark.parametrize("size, masked", [(28, 30), (32, 39)])
def test_simmim_convnet_masks_the_authors_count_on_7x7_and_8x8_grids(size, masked):
    """Fashion-MNIST (28 px) and CIFAR (32 px) with 4 px mask squares at the default ratio 0.6: the
    encoder sees ceil(G * 0.6) squares replaced by the token (rounding gave 29 and 38)."""
    torch.manual_seed(0)
    info = DataInfo(in_chans=1, image_size=size, num_classes=10, mean=(0.3,), std=(0.3,))
    method = SimMIM(SimMIMConfig(), create_encoder("resnet18", 1, RESNET), info)
    g = (size // 4) ** 2
    assert method.mask_patch == 4 and masked == authors_simmim_masked(g, 60)
    with torch.no_grad():
        method.mask_token.copy_(torch.randn(1, 1, 4, 4))
    seen = []
    method.encoder.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))  # the stem
    method.training_step(uint8_images(3, s=size))
    token_squares = (patchify(seen[0], 4) == method.mask_token.flatten()).all(-1)  # [3, G]
    assert token_squares.sum(1).tolist() == [masked] * 3


def test_simmim_vit_masks_the_authors_count_and_refuses_an_all_masked_grid():
    """A ViT with patch 4 on 28 px: 7x7 mask squares of one token each, 30 of 49 masked."""
    torch.manual_seed(0)
    info = DataInfo(in_chans=1, image_size=28, num_classes=10, mean=(0.3,), std=(0.3,))
    method = SimMIM(SimMIMConfig(mask_patch_size=4), tiny_vit(img_size=28), info)
    masks = []
    method.encode = lambda x, mask: (masks.append(mask), type(method).encode(method, x, mask))[1]
    method.training_step(uint8_images(2, s=28))
    assert masks[0].shape == (2, 49) and masks[0].sum(1).tolist() == [30, 30]
    with pytest.raises(ConfigError, match="mask_ratio=0.99 leaves 0 of 49 patches visible"):
        SimMIM(SimMIMConfig(mask_ratio=0.99, mask_patch_size=4), tiny_vit(img_size=28), info)
