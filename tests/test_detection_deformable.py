"""detection.deformable: modulated deformable convolutions (DCNv2) in the FPN output convs and
the RPN head. The block with zero offsets is a plain convolution; a converted detector computes
what the plain one does at init (outputs and losses); the offsets train and the encoder does not;
exactly the named convolutions are converted; the offset/modulation predictors train at a tenth of
the detector's lr (the DCNv2 authors' lr_mult), in the optimizer train_detector builds; the config
key reaches the results of a CLI run."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import ConfigError, DetectionConfig
from selfsup.data import DataInfo
from selfsup.detection.boxes import DetectionDataset, DetectionSample
from selfsup.detection.deformable import ModulatedDeformConv, make_deformable, offset_lr_groups
from selfsup.detection.model import build_detector
from selfsup.detection.train import train_detector
from selfsup.encoders import create_encoder

TINY_RESNET = {"channels": [8, 16, 32, 64]}
TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}
INFO = DataInfo(1, 64, 3, (0.5,), (0.25,))
# 4 pyramid levels (strides 4..32, or 1..8 for the ViT): 4 FPN output convs, then the RPN head's conv
CONVERTED = [f"backbone.fpn.layer_blocks.{i}.0" for i in range(4)] + ["rpn.head.conv.0.0"]


def cfg(**kw):
    return DetectionConfig(image_size=64, fpn_channels=16, box_head_dim=32, rois_per_image=32, **kw)


# --------------------------------------------------------------------------- the block


# (in, out, kernel, stride, padding, dilation, groups, bias): the FPN's 3x3 and other members of the kind
CONVS = [(6, 8, 3, 1, 1, 1, 1, True), (6, 4, 3, 2, 1, 1, 1, False), (4, 6, 3, 1, 2, 2, 2, True),
         (5, 7, (3, 5), 1, (1, 2), 1, 1, True), (3, 3, 1, 1, 0, 1, 1, True)]


@pytest.mark.parametrize("spec", CONVS)
def test_block_with_zero_offsets_is_the_plain_convolution(spec):
    cin, cout, k, stride, pad, dil, groups, bias = spec
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, pad, dil, groups, bias)
    block = ModulatedDeformConv.from_conv(conv)
    x = torch.randn(2, cin, 9, 11)  # [B, C, H, W]
    expected = F.conv2d(x, conv.weight, conv.bias, stride, pad, dil, groups)
    assert torch.allclose(block(x), expected, atol=1e-5)
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    offset, mask = block.offsets_and_mask(x)
    assert offset.shape == (2, 2 * kk, *expected.shape[-2:]) and mask.shape == (2, kk, *expected.shape[-2:])
    assert torch.equal(offset, torch.zeros_like(offset)) and torch.equal(mask, torch.ones_like(mask))
    conv.weight.data.zero_()  # a copy, not a view: the block keeps its weights
    assert not torch.equal(block.weight, conv.weight)


def test_offsets_shift_the_taps_and_the_mask_scales_them():
    """Eq. 3 of DCNv2 checked against a shifted plain convolution: every tap moved one pixel right
    (offset (dy, dx) = (0, 1)) and modulated by 2*sigmoid(-log 3) = 0.5."""
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    block = ModulatedDeformConv.from_conv(conv)
    with torch.no_grad():
        block.offset_mask.bias[1:18:2] = 1.0  # channels 2i+1: dx of tap i; 2i: dy
        block.offset_mask.bias[18:] = -torch.log(torch.tensor(3.0))  # sigmoid = 1/4
    x = torch.randn(2, 4, 7, 8)
    # y(i, j) = sum_ab w_ab x(i + a, j + b + 1), x zero outside: column j + 1 of a convolution of x padded
    # one pixel on each side and one more on the right
    expected = 0.5 * F.conv2d(F.pad(x, (1, 2, 1, 1)), conv.weight)[..., 1:] + conv.bias[:, None, None]
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_unconvertible_convolutions_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="padding_mode='reflect'.*detection.deformable=false"):
        ModulatedDeformConv.from_conv(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ConfigError, match="padding='same'"):
        ModulatedDeformConv.from_conv(nn.Conv2d(2, 2, 3, padding="same"))
    with pytest.raises(ConfigError, match="found no kxk convolution .*detection.deformable=false"):
        make_deformable(nn.Sequential(nn.Conv2d(2, 2, 3)))


# --------------------------------------------------------------------------- the detector


def pair(name, kwargs):
    """The plain and the deformable detector over the same encoder, each built after seeding 0."""
    encoder = create_encoder(name, 1, kwargs)
    models = []
    for deformable in (False, True):
        torch.manual_seed(0)
        models.append(build_detector(encoder, INFO, 3, cfg(deformable=deformable)))
    return models


def fixed_batch():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(1, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 30, 40], [20, 22, 60, 50]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[10.0, 8, 44, 36]]), "labels": torch.tensor([3])}]
    return images, targets


@pytest.mark.parametrize("name,kwargs", [("resnet18", TINY_RESNET), ("vit_tiny_patch16_224", TINY_VIT)])
def test_exactly_the_named_convolutions_become_deformable(name, kwargs):
    plain, deform = pair(name, kwargs)
    assert plain.deformable == [] and deform.deformable == CONVERTED
    converted = [n for n, m in deform.named_modules() if isinstance(m, ModulatedDeformConv)]
    assert converted == CONVERTED
    assert not any(isinstance(m, ModulatedDeformConv) for m in plain.modules())
    # every other module is of the plain detector's type: laterals, RPN predictors, encoder, ViT deconvs
    plain_types = {n: type(m) for n, m in plain.named_modules()}
    deform_types = {n: type(m) for n, m in deform.named_modules() if not n.startswith(tuple(CONVERTED))}
    assert {n: t for n, t in plain_types.items() if n not in CONVERTED} == deform_types
    # the same weights under the same names; only the offset/modulation predictors are new, and zero
    ps, ds = plain.state_dict(), deform.state_dict()
    extra = {f"{n}.offset_mask.{p}" for n in CONVERTED for p in ("weight", "bias")}
    assert set(ds) - set(ps) == extra and set(ps) <= set(ds)
    assert all(torch.equal(ps[k], ds[k]) for k in ps)
    assert all(not ds[k].any() for k in extra)
    assert ds["rpn.head.conv.0.0.offset_mask.weight"].shape == (27, 16, 3, 3)  # 2*3*3 offsets + 3*3 masks
    with pytest.raises(ConfigError, match="already converted"):
        make_deformable(deform)


def test_deformable_detector_equals_the_plain_one_at_init():
    plain, deform = pair("resnet18", TINY_RESNET)
    images, targets = fixed_batch()
    with torch.no_grad():
        p_out, d_out = plain.eval()(images), deform.eval()(images)
        assert [len(o["boxes"]) for o in p_out] == [len(o["boxes"]) for o in d_out] and len(p_out[0]["boxes"]) > 0
        for p, d in zip(p_out, d_out):
            assert torch.equal(p["labels"], d["labels"])
            assert torch.allclose(p["boxes"], d["boxes"], atol=1e-3) and torch.allclose(p["scores"], d["scores"],
                                                                                         atol=1e-5)
        losses = []
        for model in (plain, deform):
            torch.manual_seed(5)  # the RPN and RoI samplers draw the same proposals
            losses.append(model.train()(images, targets))
    assert list(losses[0]) == list(losses[1]) and len(losses[0]) == 4
    for k in losses[0]:
        assert torch.allclose(losses[0][k], losses[1][k], rtol=1e-5, atol=1e-6), k


def test_offsets_train_and_the_frozen_encoder_does_not():
    _, model = pair("resnet18", TINY_RESNET)
    encoder_before = {k: v.clone() for k, v in model.backbone.body.encoder.state_dict().items()}
    blocks = {n: model.get_submodule(n) for n in CONVERTED}
    before = {n: b.offset_mask.weight.detach().clone() for n, b in blocks.items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images, targets = fixed_batch()
    torch.manual_seed(5)
    loss = sum(model.train()(images, targets).values())
    loss.backward()
    opt.step()
    for n, b in blocks.items():
        assert b.offset_mask.weight.requires_grad and b.offset_mask.weight.grad.abs().sum() > 0, n
        assert not torch.equal(b.offset_mask.weight, before[n]), n
    x = torch.randn(1, 16, 8, 8)
    offset, mask = blocks[CONVERTED[0]].offsets_and_mask(x)
    assert offset.abs().sum() > 0 and not torch.equal(mask, torch.ones_like(mask))  # no longer a plain conv
    encoder_after = model.backbone.body.encoder.state_dict()
    assert all(torch.equal(v, encoder_after[k]) for k, v in encoder_before.items())


# --------------------------------------------------------------------------- the offsets' learning rate


def weight_decay_groups(model):
    import timm.optim

    return timm.optim.param_groups_weight_decay(model, 1e-4)


def test_offset_predictors_get_a_tenth_of_the_lr_and_nothing_else_does():
    plain, deform = pair("resnet18", TINY_RESNET)
    groups = offset_lr_groups(weight_decay_groups(deform), deform, lr=0.04)
    names = {id(p): n for n, p in deform.named_parameters()}
    by_lr = {}
    for g in groups:
        by_lr.setdefault(round(g["lr"], 12), set()).update(names[id(p)] for p in g["params"])
    # the predictors of exactly the converted convolutions, weight and bias, at 0.04 / 10
    offsets = {f"{n}.offset_mask.{p}" for n in CONVERTED for p in ("weight", "bias")}
    assert set(by_lr) == {0.04, 0.004} and by_lr[0.004] == offsets
    trainable = {n for n, p in deform.named_parameters() if p.requires_grad}
    assert by_lr[0.04] == trainable - offsets
    assert sum(len(g["params"]) for g in groups) == len(trainable)  # each parameter once
    # weight decay kept: the predictor's weight decays, its bias does not (as for every conv)
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert all(decay[f"{n}.offset_mask.weight"] == 1e-4 and decay[f"{n}.offset_mask.bias"] == 0 for n in CONVERTED)
    assert all(g.get("lr_mult") == 0.1 for g in groups if g["lr"] != 0.04)
    # the plain detector: one lr for all, no multiplier
    plain_groups = offset_lr_groups(weight_decay_groups(plain), plain, lr=0.04)
    assert {g["lr"] for g in plain_groups} == {0.04} and not any("lr_mult" in g for g in plain_groups)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_a_bad_offset_lr_multiplier_is_refused(bad):
    _, deform = pair("resnet18", TINY_RESNET)
    with pytest.raises(ConfigError, match="offset learning-rate multiplier must be positive and finite"):
        offset_lr_groups(weight_decay_groups(deform), deform, lr=0.04, lr_mult=bad)


def test_one_step_moves_the_offsets_a_tenth_as_far():
    """Two identical detectors take one SGD step on the same batch, one with the multiplier at 1 and
    one at 0.1. The predictors start at zero, so after the step each predicts -lr * mult * (its
    gradient applied to x): the offsets and mask logits of the second are 0.1 times the first's,
    and each predictor's weight moved by exactly -lr * mult * grad."""
    images, targets = fixed_batch()
    _, start = pair("resnet18", TINY_RESNET)
    models, grads = [], []
    for mult in (1.0, 0.1):
        model = copy.deepcopy(start)
        opt = torch.optim.SGD(offset_lr_groups(weight_decay_groups(model), model, lr=0.5, lr_mult=mult),
                              lr=0.5, momentum=0.9)
        torch.manual_seed(5)
        sum(model.train()(images, targets).values()).backward()
        grads.append({n: model.get_submodule(n).offset_mask.weight.grad.clone() for n in CONVERTED})
        opt.step()
        for n in CONVERTED:  # zero weights: no decay on the first step, momentum buffer = grad
            expected = -0.5 * mult * grads[-1][n]
            assert torch.allclose(model.get_submodule(n).offset_mask.weight, expected, atol=1e-7), n
        models.append(model)
    x = torch.randn(2, 16, 8, 8)  # [B, C_fpn, H, W]
    for n in CONVERTED:
        assert torch.allclose(grads[0][n], grads[1][n])  # same state, same batch: same gradient
        (off1, mask1), (off01, mask01) = (m.get_submodule(n).offsets_and_mask(x) for m in models)
        assert off1.abs().max() > 0
        assert torch.allclose(off01, 0.1 * off1, rtol=1e-4, atol=1e-6), n
        logits1, logits01 = torch.logit(mask1 / 2), torch.logit(mask01 / 2)  # mask = 2 * sigmoid(logits)
        assert torch.allclose(logits01, 0.1 * logits1, rtol=1e-3, atol=1e-5), n


def test_train_detector_gives_the_offsets_a_tenth_of_its_lr(monkeypatch):
    """What the optimizer train_detector builds receives: its groups' initial lr (before the
    schedule) is cfg.lr * batch / 16, a tenth of it for the predictors, and the row records 0.1."""
    built = []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    images, targets = fixed_batch()
    samples = [DetectionSample(f"img{i}", (img * 255).to(torch.uint8), 64, 64, t["boxes"], t["labels"])
               for i, (img, t) in enumerate(zip(images, targets))]
    ds = DetectionDataset("fixed", samples, ["a", "b", "c"])
    fits = {}
    for deformable in (False, True):
        torch.manual_seed(0)
        dcfg = cfg(deformable=deformable, lr=0.04, batch_size=2, epochs=1)
        model = build_detector(create_encoder("resnet18", 1, TINY_RESNET), INFO, 3, dcfg)
        fits[deformable] = train_detector(model, ds, dcfg, 1, "cpu", seed=0, log=lambda s: None)
        names = {id(p): n for n, p in model.named_parameters()}
        base = 0.04 * 2 / 16  # cfg.lr at batch 16, scaled to batch 2
        lrs = {names[id(p)]: g["initial_lr"] for g in built[-1].param_groups for p in g["params"]}
        assert set(lrs) == {n for n, p in model.named_parameters() if p.requires_grad}
        for n, lr in lrs.items():
            assert lr == pytest.approx(base * (0.1 if ".offset_mask." in n else 1.0)), n
        assert any(".offset_mask." in n for n in lrs) == deformable
    assert fits[True]["offset_lr_mult"] == 0.1 and "offset_lr_mult" not in fits[False]
    dcfg = cfg(deformable=True, lr=0.04, batch_size=2, epochs=1, offset_lr_mult=0.5)  # the config key reaches it
    model = build_detector(create_encoder("resnet18", 1, TINY_RESNET), INFO, 3, dcfg)
    assert train_detector(model, ds, dcfg, 1, "cpu", seed=0, log=lambda s: None)["offset_lr_mult"] == 0.5
    assert sorted({round(g["initial_lr"], 9) for g in built[-1].param_groups}) == [0.0025, 0.005]


def test_offset_lr_mult_is_refused_without_deformable_and_when_not_positive():
    from selfsup.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="offset_lr_mult"):
        load_config(None, ["method.name=simclr", "detection.offset_lr_mult=0.5"])  # nothing deformable to train
    with pytest.raises(ConfigError, match=r"'detection.offset_lr_mult' must be > 0, got 0.0"):
        load_config(None, ["method.name=simclr", "detection.deformable=true", "detection.offset_lr_mult=0"])
    assert load_config(None, ["method.name=simclr", "detection.deformable=true",
                              "detection.offset_lr_mult=0.5"]).detection.offset_lr_mult == 0.5


# --------------------------------------------------------------------------- end to end


def test_cli_detection_with_deformable_convolutions(tmp_path):
    from test_detection import TINY_RUN

    from selfsup.cli import main

    out = tmp_path / "det"
    assert main(["eval", "random:resnet18", "--task", "detection", "--dataset", "synthetic-fmnist", "--out", str(out),
                 "eval.plots=false",
                 *[a for a in TINY_RUN if not a.startswith("detection.synthetic_test=")],  # a key once
                 "detection.synthetic_test=4", "detection.deformable=true", "detection.offset_lr_mult=0.5"]) == 0
    row = json.loads((out / "results.json").read_text())[0]
    assert row["deformable"] is True and row["deformable_convs"] == CONVERTED and row["offset_lr_mult"] == 0.5
    plain = build_detector(create_encoder("resnet18", 1, TINY_RESNET), INFO, 10, cfg())
    offsets = len(CONVERTED) * (16 * 27 * 9 + 27)  # 16 FPN channels in, 27 = 3*3*3 out, 3x3 kernel, bias
    assert row["detector_trainable_params"] == sum(p.numel() for p in plain.parameters() if p.requires_grad) + offsets
    table = (out / "results.md").read_text()
    assert "| random-init resnet18 + DCNv2 | synthetic-fmnist |" in table and "2*sigmoid" in table
    assert "detection.offset_lr_mult (0.5) x the lr" in table  # the run's own multiplier, not the default
