"""``encoder.kwargs`` that change nothing in the model timm builds are refused before a run starts.

timm's ResNet accepts ``stem_width`` but builds its plain (single 7x7) stem 64 wide whatever it
says; selfsup's Fashion-MNIST configs and quickstart carried ``stem_width: 32`` for that reason-less
claim, and their exports recorded it. The kind: any key timm accepts and the chosen architecture
ignores. Checked by building the model with and without the key (same seed) and comparing
structure, plain attributes and every tensor; a key equal to the constructor's declared default is
true either way and kept."""

import re
from pathlib import Path

import pytest
import timm
import torch
import yaml
from torch import nn

from selfsup.cli import main
from selfsup.encoders import EncoderError, check_kwargs_take_effect, ineffective_kwargs

from conftest import ROOT, one_line_error


def test_stem_width_on_a_plain_resnet_stem_is_ineffective_and_refused():
    # the independent fact: timm's conv1 is 64 wide with or without it
    assert timm.create_model("resnet18", stem_width=8).conv1.out_channels == 64
    assert ineffective_kwargs("resnet18", {"stem_width": 8}) == ["stem_width"]
    assert ineffective_kwargs("resnet18", {"channels": [8, 16, 32, 64], "stem_width": 8}) == ["stem_width"]
    with pytest.raises(EncoderError, match=r"^encoder.kwargs stem_width: 8 changes nothing in timm's 'resnet18': the "
                                           r"model built with it, without it and with another value of it is the same "
                                           r"\(this architecture ignores it with these settings\); remove it from encoder.kwargs, or set what makes it count \(a ResNet "
                                           r"reads stem_width only with stem_type: deep\)$"):
        check_kwargs_take_effect("resnet18", {"stem_width": 8})


def test_two_ineffective_keys_are_named_together(monkeypatch):
    import selfsup.encoders as encoders

    # block_reduce_first: 1 is ResNet's declared default, so only stem_width is judged ineffective
    assert ineffective_kwargs("resnet18", {"stem_width": 8, "block_reduce_first": 1}) == ["stem_width"]
    monkeypatch.setattr(encoders, "ineffective_kwargs", lambda name, kwargs, in_chans=3: ["a", "b"])
    with pytest.raises(EncoderError, match=r"^encoder.kwargs a: 1, b: 'x' change nothing in timm's 'resnet18': the "
                                           r"model built with and without each is the same \(this architecture "
                                           r"ignores them with these settings, or they restate what it builds "
                                           r"anyway\); remove them from encoder.kwargs, or set what makes them "
                                           r"count$"):  # the ResNet stem hint only for stem_width
        check_kwargs_take_effect("resnet18", {"a": 1, "b": "x"})


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {"stem_width": 8, "stem_type": "deep"}),  # a deep stem reads stem_width: 8, 8, 16 wide
    ("resnet18", {"channels": [8, 16, 32, 64]}),  # stage widths
    ("resnet18", {"output_stride": 16}),  # dilation, an attribute of the convs
    ("resnet18", {"drop_rate": 0.1}),  # a plain attribute read in forward_head
    ("resnet18", {"zero_init_last": False}),  # only the initial values differ
    ("resnet18", {"act_layer": "gelu"}),  # module classes
    ("resnet18", {"global_pool": "avgmax"}),  # the pooling's type
    ("resnet18", {"drop_rate": 0.0}),  # the declared default: true either way
    ("resnet18", {"scriptable": True}),  # timm.create_model's own option
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "depth": 2}),
    ("convnext_atto", {"ls_init_value": 0.5}),
    # the tour's: keys that restate what timm's entry point builds anyway (true claims) are kept
    ("resnet26d", {"stem_type": "deep", "avg_down": True, "stem_width": 32}),
    ("vit_tiny_patch16_224", {"embed_dim": 192, "num_heads": 3, "depth": 12}),
    ("convnext_atto", {"conv_mlp": True, "depths": [2, 2, 6, 2], "dims": [40, 80, 160, 320]}),
    ("convnext_tiny", {"depths": [3, 3, 9, 3]}),  # a YAML list for the class's tuple default
    ("resnet18", {"layers": [2, 2, 2, 2], "act_layer": "relu"}),  # relu: the class's nn.ReLU
    # the tour's false refusals: the model reads these keys (another value changes it), and the value given is
    # the one it is built with anyway, spelled otherwise than the default (None, a layer class, a config object's)
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "depth": 2, "fc_norm": False}),
    ("efficientnet_b0", {"norm_layer": "batchnorm"}),
    ("regnety_002", {"se_ratio": 0.25}),
])
def test_keys_that_change_the_model_or_restate_it_are_kept(name, kwargs):
    assert ineffective_kwargs(name, kwargs) == []
    check_kwargs_take_effect(name, kwargs)


@pytest.mark.parametrize("kwargs, said", [
    # the tour's traceback: a BasicBlock ResNet asserts on base_width with a message
    ({"base_width": 32}, r"BasicBlock does not support changing base width"),
    # a bare assert has no message: the failing line of timm's code is quoted instead of "AssertionError"
    ({"output_stride": 7}, r"timm's check `assert output_stride in \(8, 16, 32\)` failed \(resnet.py line \d+\)"),
])
def test_what_timm_cannot_build_is_one_line(kwargs, said):
    """timm's own argument checks: the same one line as an unknown keyword, at the check and at the build."""
    from selfsup.encoders import create_encoder

    for call in (lambda: check_kwargs_take_effect("resnet18", kwargs), lambda: create_encoder("resnet18", 1, kwargs)):
        with pytest.raises(EncoderError, match=rf"^timm could not build 'resnet18' with encoder.kwargs="
                                               rf"{re.escape(str(kwargs))}: {said}; change or remove that key$"):
            call()


def test_the_deep_stem_really_reads_stem_width():
    """The fix the message names does what it says (independent of the fingerprint)."""
    stem = timm.create_model("resnet18", stem_type="deep", stem_width=8).conv1
    assert [m.out_channels for m in stem if isinstance(m, torch.nn.Conv2d)] == [8, 8, 16]


def test_the_check_leaves_the_callers_random_stream_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    ineffective_kwargs("resnet18", {"channels": [4, 8, 8, 8], "drop_rate": 0.2})
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_no_shipped_config_claims_a_key_its_encoder_ignores(config):
    enc = yaml.safe_load((ROOT / "configs" / config).read_text()).get("encoder") or {}
    if enc.get("kwargs"):
        assert ineffective_kwargs(enc.get("name", "resnet18"), enc["kwargs"]) == [], config


def test_pretrain_refuses_it_in_one_line_before_writing(tmp_path: Path, capsys):
    run = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "data.name=digits",
                 "data.image_size=16", "trainer.max_steps=1", "--no-eval", "encoder.kwargs.stem_width=16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("selfsup pretrain: error: encoder.kwargs stem_width: 16 changes nothing in timm's "
                          "'resnet18'"), err
    assert not run.exists()


def test_only_keys_the_meta_device_cannot_settle_are_built_for_real(monkeypatch):
    """Structure, shapes and plain attributes are compared on the meta device (no memory, no
    initialisation: a ViT-L builds in under a second there, 14 s for real); only a key whose meta
    builds agree (zero_init_last: initial values only) costs real builds (the model with and without it, and
    when those agree, with another value of it)."""
    import selfsup.encoders as encoders

    real = []
    build = encoders._seeded_build

    def counting(name, in_chans, kwargs, meta=False):
        if not meta:
            real.append(dict(kwargs))
        return build(name, in_chans, kwargs, meta)

    monkeypatch.setattr(encoders, "_seeded_build", counting)
    assert ineffective_kwargs("resnet18", {"channels": [4, 8, 8, 8], "output_stride": 16, "drop_rate": 0.3}) == []
    assert real == []
    assert ineffective_kwargs("resnet18", {"channels": [4, 8, 8, 8], "zero_init_last": False}) == []
    assert real == [{"channels": [4, 8, 8, 8], "zero_init_last": False}, {"channels": [4, 8, 8, 8]}]
    real.clear()
    assert ineffective_kwargs("resnet18", {"channels": [4, 8, 8, 8], "stem_width": 4}) == ["stem_width"]
    # with and without it agree, so it is built once more with another value (9): the same again, so ignored
    assert real == [{"channels": [4, 8, 8, 8], "stem_width": 4}, {"channels": [4, 8, 8, 8]},
                    {"channels": [4, 8, 8, 8], "stem_width": 9}]


@pytest.mark.parametrize("name, kwargs, said", [
    ("resnet18", {"channels": [8, 16, 32, 64], "act_layer": "nonexistent"}, r"'nonexistent'"),  # a KeyError in timm
    ("convnext_atto", {"depths": [2, 2, 6]}, r"list index out of range"),  # an IndexError
])
def test_every_way_timm_refuses_a_build_is_one_line(name, kwargs, said):
    """The second tour's tracebacks: timm refuses arguments with KeyError and IndexError too."""
    with pytest.raises(EncoderError, match=rf"^timm could not build '{name}' with encoder.kwargs=.*: {said}; change "
                                           r"or remove that key$"):
        check_kwargs_take_effect(name, kwargs)


@pytest.mark.parametrize("name, kwargs, said", [
    ("resnet18", {"drop_rate": [0.1]}, "drop_rate: [0.1] is list, and ResNet takes a number (default 0.0)"),
    ("efficientnet_b0", {"drop_rate": "0.2"}, "drop_rate: '0.2' is str, and EfficientNet takes a number (default 0.0)"),
    ("vit_tiny_patch16_224", {"qkv_bias": "yes"}, "qkv_bias: 'yes' is str, and VisionTransformer takes a bool "
                                                  "(default True)"),
])
def test_a_value_of_another_type_than_the_default_is_refused(name, kwargs, said):
    """timm built these and failed at the first training step (float() of a list, str > float), after the
    run directory was made; an int for a float default and keys without a plain default are not judged."""
    from selfsup.encoders import mistyped_kwargs

    assert mistyped_kwargs(name, kwargs) == [said]
    with pytest.raises(EncoderError, match=r"^encoder.kwargs " + re.escape(said) + r": give that type \(YAML reads "
                                           r"0.2 as a number, '0.2' as a string\)$"):
        check_kwargs_take_effect(name, kwargs)
    assert mistyped_kwargs("resnet18", {"drop_rate": 0, "act_layer": "gelu", "output_stride": 16}) == []


def test_a_model_that_builds_but_cannot_run_is_refused_before_the_run(tmp_path: Path, capsys):
    """resnet18 with layers: [1, 1, 1] builds (3 stages) and its forward asks for layer4: refused by one
    forward pass before anything is written, which leaves no trace on a model that works."""
    from selfsup.encoders import check_forward, create_encoder

    broken = create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64], "layers": [1, 1, 1]})
    with pytest.raises(EncoderError, match=r"^timm's 'resnet18' with encoder.kwargs=\{'layers': \[1, 1, 1\]\} builds but "
                                           r"fails on a forward pass of two 1x16x16 images: AttributeError: 'ResNet' "
                                           r"object has no attribute 'layer4'.*; change or remove the key that causes it$"):
        check_forward(broken, 1, 16, "resnet18", {"layers": [1, 1, 1]})
    torch.manual_seed(5)
    sound = create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64], "drop_rate": 0.5}).eval()
    before = [b.clone() for b in sound.buffers()]
    rng = torch.random.get_rng_state()
    check_forward(sound, 1, 16, "resnet18", {})
    assert not sound.training and torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(before, sound.buffers()))  # BatchNorm's statistics untouched
    run = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "data.name=digits",
                 "data.image_size=16", "trainer.max_steps=1", "--no-eval",
                 "encoder.kwargs={channels: [8, 16, 32, 64], layers: [1, 1, 1]}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "builds but fails on a forward pass" in err, err
    assert not run.exists()


def test_features_of_another_width_than_the_model_reports_are_refused():
    """The third tour's: channels with layers [0, 0, 0, 0] reports num_features 128 and returns the stem's 64
    features; every head is built for 128, so training crashed at its first step after the run directory
    was made. The forward check compares the two; a negative width is timm's RuntimeError, one line."""
    from selfsup.encoders import check_forward, create_encoder

    kwargs = {"channels": [8, 16, 32, 128], "layers": [0, 0, 0, 0]}
    enc = create_encoder("resnet18", 1, kwargs)
    with pytest.raises(EncoderError, match=r"builds but fails on a forward pass of two 1x16x16 images: ValueError: it "
                                           r"returns features of shape \[2, 64\] but reports 128 \(num_features\)"):
        check_forward(enc, 1, 16, "resnet18", kwargs)
    with pytest.raises(EncoderError, match=r"^timm could not build 'resnet18' .*: Trying to create tensor with "
                                           r"negative dimension -64: \[-64, 32, 1, 1\]; change or remove that key$"):
        check_kwargs_take_effect("resnet18", {"channels": [8, 16, 32, -64]})


def _covered_by_gradient(layer: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """The reference for covered_pixels, by autograd: ``[H, W]``, where the gradient of a positive input
    through ``layer`` (all-one weights, summed output) is nonzero."""
    x = torch.rand(1, 1, *size, requires_grad=True) + 0.5
    x.retain_grad()
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(1.0)
    layer(x).sum().backward()
    return x.grad[0, 0] != 0


@pytest.mark.parametrize("layer", [
    nn.Conv2d(1, 1, 5, stride=5), nn.Conv2d(1, 1, 7, stride=2, padding=3), nn.Conv2d(1, 1, 3, stride=2),
    nn.Conv2d(1, 1, 4, stride=4), nn.Conv2d(1, 1, (3, 5), stride=(2, 3), padding=(0, 1)),
    nn.Conv2d(1, 1, 3, stride=3, dilation=2), nn.Conv2d(1, 1, 3, stride=4, padding=1), nn.Conv2d(1, 1, 3, padding="same"),
    nn.Conv2d(1, 1, 4, stride=3, padding="valid"), nn.Conv2d(1, 1, 1, stride=2), nn.MaxPool2d(3, 2),
    nn.MaxPool2d(3, 2, padding=1), nn.MaxPool2d(2, 3, ceil_mode=True), nn.AvgPool2d(3, 4), nn.AvgPool2d(2),
    nn.AvgPool2d(2, 3, padding=1, ceil_mode=True), nn.MaxPool2d(3, 3, dilation=2),
    nn.AvgPool2d(5, 5, ceil_mode=True), nn.AvgPool2d(7, 3, padding=2, ceil_mode=True)],  # windows past a small input
    ids=lambda m: repr(m))
@pytest.mark.parametrize("size", [(28, 28), (29, 31), (13, 16)])
def test_covered_pixels_match_the_gradient_of_the_layer(layer: nn.Module, size: tuple[int, int]):
    """The pixels a strided window reads, by the formula, against autograd on the layer itself: trailing rows
    and columns no window reaches, and the gaps of a kernel smaller than its stride (max pooling's gradient
    reaches only its winners, so its reference is an average pool or a convolution of the same windows)."""
    from selfsup.encoders import covered_pixels

    reference = layer
    if isinstance(layer, nn.MaxPool2d) and layer.dilation in (1, (1, 1)):
        reference = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
    elif isinstance(layer, nn.MaxPool2d):  # a dilated max pool: a dilated convolution covers the same pixels
        reference = nn.Conv2d(1, 1, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=False)
    assert torch.equal(covered_pixels(layer, size), _covered_by_gradient(reference, size))


@pytest.mark.parametrize("layer", [nn.AvgPool2d(5, 5, ceil_mode=True), nn.AvgPool2d(7, 3, padding=2, ceil_mode=True),
                                   nn.AvgPool2d(6, 4, padding=1, ceil_mode=True)], ids=lambda m: repr(m))
def test_a_ceil_mode_window_longer_than_the_input_covers_it(layer: nn.Module):
    """helper-53's fuzzing: a ceil-mode pooling still runs one window on an input shorter than the window, which
    the formula had as covering nothing."""
    from selfsup.encoders import covered_pixels

    for size in ((4, 4), (4, 6), (3, 5)):
        assert torch.equal(covered_pixels(layer, size), _covered_by_gradient(layer, size)), size


class TwoBranchStem(nn.Module):
    """A RepVGG / MobileOne-like stem: a 3x3 and a 1x1 convolution, both at stride 2, read the images."""

    def __init__(self, with_3x3: bool = True) -> None:
        super().__init__()
        self.conv_3x3 = nn.Conv2d(1, 4, 3, stride=2, padding=1) if with_3x3 else None
        self.conv_1x1 = nn.Conv2d(1, 4, 1, stride=2)
        self.num_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_1x1(x) + (self.conv_3x3(x) if self.conv_3x3 is not None else 0)
        return y.mean((2, 3))


def test_parallel_branches_reading_the_images_cover_for_each_other():
    """helper-52's false refusal: repvgg_a0, mobileone_s0 and fastvit_t8 were refused at every even size
    because their 1x1 stride-2 stem branch alone skips the last row; the 3x3 branch beside it reads it. A
    pixel is unseen only when no layer reading the images covers it. The 1x1 branch alone skips every other
    row and column (interior gaps, not only trailing ones) and is refused."""
    from selfsup.encoders import check_forward, create_encoder

    for side in (16, 17):
        check_forward(TwoBranchStem(), 1, side, "two-branch", {})
    with pytest.raises(EncoderError, match=r"never sees 192 of the 256 pixels \(in rows 0, 1, 2, 3, ...; columns 0, 1, "
                                           r"2, 3, ...\) of the 16x16 images: no layer reading them covers those "
                                           r"pixels \(conv_1x1 \(kernel 1, stride 2\)\); use a patch size or stride"):
        check_forward(TwoBranchStem(with_3x3=False), 1, 16, "one-branch", {})
    for name in ("repvgg_a0", "mobileone_s0"):
        check_forward(create_encoder(name, 1, {}), 1, 32, name, {})
    # helper-53's: CrossViT's first branch reads the 18x18 images in 12x12 patches (the last 6 rows structurally
    # unseen), its second a resized copy, which reads every pixel: the features' gradient reaches them, so kept
    check_forward(create_encoder("crossvit_tiny_240", 1, {"img_size": 18}), 1, 18, "crossvit_tiny_240", {})


def test_a_patch_size_that_leaves_pixels_unseen_is_refused_before_the_run(tmp_path: Path, capsys):
    """A ViT with patch_size 5 on 28x28 images built, trained and scored features that never saw the last 3
    rows and columns (timm's patch embedding is an unpadded convolution, stride = kernel). Refused in one line
    naming the layer and the nearest sizes it covers; a dividing patch size, and timm's own padding of the
    last patches, pass."""
    from selfsup.encoders import check_forward, create_encoder

    kwargs = {"img_size": 28, "patch_size": 5, "embed_dim": 32, "depth": 1, "num_heads": 2}
    enc = create_encoder("vit_tiny_patch16_224", 1, kwargs)
    with pytest.raises(EncoderError, match=r"^timm's 'vit_tiny_patch16_224' with encoder.kwargs=.* never sees the last "
                                           r"3 rows and the last 3 columns of the 28x28 images: no layer reading them "
                                           r"covers those pixels \(patch_embed.proj \(kernel 5, stride 5\)\); use "
                                           r"data.image_size 25 or 30 with encoder.kwargs img_size the same \(this "
                                           r"model takes only its img_size\), or a patch size or stride whose windows cover "
                                           r"every pixel, or dynamic_img_pad: true with dynamic_img_size: true"):
        check_forward(enc, 1, 28, "vit_tiny_patch16_224", kwargs)
    for fix in ({"patch_size": 4}, {"dynamic_img_pad": True, "dynamic_img_size": True}):
        check_forward(create_encoder("vit_tiny_patch16_224", 1, {**kwargs, **fix}), 1, 28, "vit_tiny_patch16_224", {})
    # a convnet's padded strided stem covers every pixel of an odd size; ConvNeXt's 4x4 patchify stem does not,
    # and it has no dynamic_img_pad to suggest
    check_forward(create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64]}), 1, 13, "resnet18", {})
    with pytest.raises(EncoderError, match=r"never sees the last 2 rows and the last 2 columns of the 34x34 images: "
                                           r"no layer reading them covers those pixels \(stem.0 \(kernel 4, stride 4\)\); "
                                           r"use data.image_size 32 or 36, or a patch size or stride whose windows "
                                           r"cover every pixel$"):
        check_forward(create_encoder("convnext_atto", 1, {"dims": [8, 16, 32, 64]}), 1, 34, "convnext_atto", {})
    run = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "data.name=digits",
                 "data.image_size=16", "trainer.max_steps=1", "--no-eval", "encoder.name=vit_tiny_patch16_224",
                 "encoder.kwargs={img_size: 16, patch_size: 3, embed_dim: 32, depth: 1, num_heads: 2}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "never sees the last 1 row and the last 1 column of the 16x16" in err, err
    assert not run.exists()


def test_another_value_of_a_key_is_of_its_kind():
    """The probe value that tells an ignored key from a restated one: a bool negated, a number changed, each
    number of a list changed, another layer of the same kind; None where no other value is obvious."""
    from timm.layers import get_act_layer, get_norm_layer

    from selfsup.encoders import another_value

    assert [another_value("k", v) for v in (True, False, 0, 32, 0.0, 0.25, [32, 64], (1, 2.0))] == [
        False, True, 1, 65, 0.5, 0.5, [65, 129], [3, 4.0]]
    assert get_act_layer(another_value("act_layer", "relu")) is not get_act_layer("relu")
    assert get_act_layer(another_value("act_layer", "gelu")) is not get_act_layer("gelu")
    assert get_norm_layer(another_value("norm_layer", "batchnorm")) is not get_norm_layer("batchnorm")
    assert [another_value("global_pool", "avg"), another_value("k", None), another_value("k", [])] == [None, None, None]


NATIVE = {"fashion-mnist": (1, 28), "cifar10": (3, 32), "image-folder": (3, 224)}  # (channels, side) of the data


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_passes_the_forward_check(config):
    """No false refusal of a shipped config by the forward check (every pixel seen, the width the model
    reports): its encoder at its data's image size."""
    from selfsup.config import load_config
    from selfsup.encoders import check_forward, create_encoder

    cfg = load_config(ROOT / "configs" / config, [])
    chans, side = NATIVE[cfg.data.name]
    side = cfg.data.image_size or side
    chans = cfg.data.in_chans or chans
    check_forward(create_encoder(cfg.encoder.name, chans, cfg.encoder.kwargs), chans, side, cfg.encoder.name,
                  cfg.encoder.kwargs)


def test_a_resume_of_a_run_the_check_would_refuse_says_only_a_new_run_helps(tmp_path: Path, capsys, monkeypatch):
    """helper-52's dead end: a run made before the unseen-pixels check, resumed, was told to change patch_size,
    which a resume refuses. The refusal now says a resume keeps its encoder and only a new run takes the fix."""
    import selfsup.train.run as run_module

    run = tmp_path / "run"
    argv = ["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "data.name=digits",
            "data.image_size=16", "data.subset=64", "data.batch_size=32", "trainer.max_steps=1", "--no-eval",
            "encoder.name=vit_tiny_patch16_224",
            "encoder.kwargs={img_size: 16, patch_size: 3, embed_dim: 32, depth: 1, num_heads: 2}"]
    with monkeypatch.context() as m:  # as before the check existed
        m.setattr(run_module, "check_forward", lambda *args: None)
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "trainer.max_steps=2", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never sees the last 1 row and the last 1 column of the 16x16 images" in err, err
    assert err.rstrip().endswith("(this run was trained with that encoder, and a resume cannot change encoder.kwargs "
                                 "or the images: start a new run with the fix)"), err


@pytest.mark.parametrize("extra, label", [([], "random-init vit_tiny_patch16_224"),
                                          (["--protocol", "bitfit", "--transfer", "epochs=1"], "random:vit_tiny_patch16_224")])
def test_evaluation_and_transfer_refuse_an_encoder_that_leaves_pixels_unseen(tmp_path: Path, capsys, monkeypatch,
                                                                              extra, label):
    """helper-52's: pretrain refused a ViT with patch_size 3 on 16x16 images, while `selfsup eval` of the same
    encoder (a random: baseline, an export, a run made before the check) scored it (kNN 43.61) and the bitfit
    protocol trained it. Both now refuse it in one line before any feature or step, naming the target."""
    monkeypatch.chdir(tmp_path)
    vit = ["encoder.name=vit_tiny_patch16_224",
           "encoder.kwargs={img_size: 16, patch_size: 3, embed_dim: 32, depth: 1, num_heads: 2}"]
    assert main(["eval", "random:vit_tiny_patch16_224", *extra, "data.name=digits", "data.image_size=16", *vit]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"error: {label} never sees the last 1 row and the last 1 column of the 16x16 images: no layer reading " \
           "them covers those pixels (patch_embed.proj (kernel 3, stride 3)); use data.image_size 15 or 18 with " \
           "encoder.kwargs img_size the same" in err, err
    assert err.rstrip().endswith("(its features would not depend on them)"), err
    assert not any(tmp_path.rglob("results.json"))


def test_the_tiles_a_method_feeds_its_encoder_are_checked_before_the_run(tmp_path: Path, capsys):
    """helper-52's traceback after the run directory was made: jigsaw hands its encoder 5x5 tiles, and a ViT with
    patch_size 4 (which divides the 16x16 images the check used) fails on them at the first step. Each method
    names the inputs its encoder sees (jigsaw its tiles, PIRL image and tiles, CPC its patches)."""
    from selfsup.config import load_config
    from selfsup.data import DataInfo
    from selfsup.encoders import create_encoder
    from selfsup.methods import METHODS

    info = DataInfo(1, 16, 10, (0.5,), (0.5,), 64)
    enc = lambda: create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64]})  # noqa: E731
    sizes = {}
    for name, extra in (("jigsaw", ["method.tile_size=5"]), ("pirl", ["method.tile_size=5"]), ("cpc", []),
                        ("rotation", []), ("simclr", [])):
        cfg = load_config(None, [f"method.name={name}", *extra]).method
        sizes[name] = METHODS.get(name)(cfg, enc(), info).encoder_input_sizes()
    assert sizes["jigsaw"] == [5] and sizes["pirl"] == [16, 5] and sizes["rotation"] == sizes["simclr"] == [16]
    assert len(sizes["cpc"]) == 1 and sizes["cpc"][0] < 16  # its patches, a quarter of the view at grid 7
    run = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "configs" / "jigsaw-fashion-mnist.yaml"), "--run-dir", str(run),
                 "data.name=digits", "data.image_size=16", "method.tile_size=5", "trainer.max_steps=1", "--no-eval",
                 "encoder.name=vit_tiny_patch16_224",
                 "encoder.kwargs={img_size: 16, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2, "
                 "dynamic_img_size: true}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fails on a forward pass of two 1x5x5 images" in err, err
    assert err.rstrip().endswith("(the 5x5 inputs are jigsaw's tiles or patches, which its method.* settings size)")
    assert not run.exists()


def test_a_diverged_encoders_evaluation_is_one_line(tmp_path: Path, capsys, monkeypatch):
    """helper-53's traceback: a run whose last steps diverged (finite loss, weights overflowed by the update)
    reached the evaluation, where RankMe raised a ValueError traceback on the non-finite test features before
    the kNN's check. The features are checked when they are loaded: one line naming the fix."""
    import selfsup.eval.target as target_module

    real = target_module.create_encoder

    def diverged(*args, **kwargs):
        enc = real(*args, **kwargs)
        with torch.no_grad():
            next(p for n, p in enc.named_parameters() if n.endswith("weight") and p.dim() == 4).fill_(float("inf"))
        return enc

    monkeypatch.setattr(target_module, "create_encoder", diverged)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "random:resnet18", "data.name=digits", "data.image_size=16",
                 "encoder.kwargs={channels: [8, 16, 32, 64]}", "eval.linear=false", "eval.plots=false"]) == 2
    err = capsys.readouterr().err
    line = one_line_error(err)
    assert "test feature rows hold NaN or inf" in line and "a run that diverged" in line, line


def test_the_checks_leave_the_callers_gradients_and_modes_alone():
    """helper-54's: the gradient probe added into the caller's .grad tensors (restored as the same, changed
    objects), and every submodule came back in the encoder's mode (a model partly in eval mode was flattened)."""
    from selfsup.encoders import check_forward, check_pixels_seen, create_encoder, gradient_reaches

    enc = create_encoder("vit_tiny_patch16_224", 1, {"img_size": 16, "patch_size": 3, "embed_dim": 32, "depth": 1,
                                                     "num_heads": 2})
    enc(torch.randn(2, 1, 16, 16)).sum().backward()
    enc.blocks.eval()  # a caller's own mix of modes
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    modes = {n: m.training for n, m in enc.named_modules()}
    gradient_reaches(enc, 1, 16)
    for check in (lambda: check_forward(enc, 1, 16, "vit", {}), lambda: check_pixels_seen(enc, 1, 16, "vit")):
        with pytest.raises(EncoderError, match="never sees the last 1 row"):
            check()
    assert all(torch.equal(p.grad, grads[n]) for n, p in enc.named_parameters() if n in grads)
    assert {n: m.training for n, m in enc.named_modules()} == modes


def test_a_target_that_cannot_run_at_the_evaluation_size_is_one_line(tmp_path: Path, capsys, monkeypatch):
    """helper-54's traceback: random:convnext_atto at 18 px (its stages shrink the map below a kernel) crashed in
    the pixel check of `selfsup eval` instead of a one-line refusal."""
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "random:convnext_atto", "data.name=digits", "data.image_size=18", "eval.plots=false"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "random-init convnext_atto fails on a forward pass of a 1x18x18 image: RuntimeError: Calculated padded " \
           "input size" in line and line.endswith("evaluate it at an image size it takes (data.image_size)"), line
