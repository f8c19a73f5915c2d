"""Transfer protocols (selfsup.transfer): freeze masks, LoRA through peft, visual prompts, timm exports."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import timm
import torch
from torch import nn

from selfsup.config import ConfigError
from selfsup.data import DataInfo, TensorImages, make_loader
from selfsup.transfer import TransferOptions, run_protocol
from selfsup.transfer.export import export_transfer, minimal_card
from selfsup.transfer.lora import merged_encoder
from selfsup.transfer.prompt import PromptedViT
from selfsup.transfer.protocols import build_classifier, encoder_param_groups, set_drop_path
from selfsup.transfer.train import train_module, transfer_module

ARCHS = {
    "resnet18": {"channels": [8, 16, 32, 64]},
    "vit_tiny_patch16_224": {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2},
}
INFO = DataInfo(1, 16, 10, (0.5,), (0.25,))


def make_encoder(arch: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    if arch == "resnet18":  # timm zero-initialises each block's last BatchNorm; frozen at 0 (LoRA) it would
        extra.setdefault("zero_init_last", False)  # cut the block's convolutions off from any gradient
    return timm.create_model(arch, num_classes=0, in_chans=1, **ARCHS[arch], **extra)


def images(n: int = 16, seed: int = 0) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)  # [N, 1, 16, 16]
    return TensorImages(x, torch.arange(n) % 10, 10)


def options(protocol: str, **kw) -> TransferOptions:
    return TransferOptions(protocol=protocol, epochs=1, batch_size=8, warmup_epochs=0, lrs=[1e-2], **kw)


def train_steps(classifier: nn.Module, opts: TransferOptions, n: int = 16) -> None:
    """n / batch_size real training steps (Lightning, the protocol's optimiser and schedule)."""
    loader = make_loader(images(n), opts.batch_size, train=True, seed=0)
    train_module(transfer_module(classifier, INFO, opts, opts.lrs[0], len(loader)), loader, opts.epochs)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def expected_trainable(arch: str, protocol: str, names: list[str]) -> set[str]:
    """The classifier's trainable parameters per protocol, written out by hand from the papers' definitions
    (independently of selfsup.transfer.protocols)."""
    head = {"head.weight", "head.bias"}
    if protocol == "finetune":
        return {n for n in names if n.startswith("encoder.")} | head
    if protocol == "partial":  # K=1: the last stage and what follows it
        last = ("encoder.layer4.",) if arch == "resnet18" else ("encoder.blocks.1.", "encoder.norm.")
        return {n for n in names if n.startswith(last)} | head
    if protocol == "bitfit":
        norms = ("bn1", "bn2", "downsample.1", "norm1", "norm2", "encoder.norm")
        return {n for n in names if n.endswith(".bias") or any(f"{m}." in n for m in norms)} | head
    if protocol == "lora":
        return {n for n in names if ".lora_A." in n or ".lora_B." in n} | head
    return {"encoder.prompts"} | head


CASES = [(a, p) for a in ARCHS for p in ("finetune", "partial", "bitfit", "lora", "prompt")
         if not (a == "resnet18" and p == "prompt")]


@pytest.mark.parametrize("arch,protocol", CASES)
def test_only_declared_parameters_change(arch, protocol):
    opts = options(protocol, partial_blocks=1)
    clf = build_classifier(make_encoder(arch), 10, opts)
    names = [n for n, _ in clf.named_parameters()]
    want = expected_trainable(arch, protocol, names)
    assert {n for n, p in clf.named_parameters() if p.requires_grad} == want
    before = snapshot(clf)
    train_steps(clf, opts)  # two steps: LoRA's A and zero-init-last blocks get a gradient only at the second
    after = snapshot(clf)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = set(names)
    assert changed & params == want  # every declared parameter moved, no other did
    # buffers (BatchNorm statistics) move only in norm layers that train (frozen ones stay in eval mode)
    moved_buffers = {k.rsplit(".", 1)[0] for k in changed - params}
    training_norms = {n.rsplit(".", 1)[0] for n in want
                      if n.endswith(".weight") and (".bn" in n or ".downsample.1." in n)}  # BatchNorms (ResNet)
    assert moved_buffers == training_norms


@pytest.mark.parametrize("arch", list(ARCHS))
def test_lora_starts_as_the_frozen_encoder(arch):
    frozen = make_encoder(arch).eval()
    clf = build_classifier(copy.deepcopy(frozen), 10, options("lora")).eval()
    lora_b = [p for n, p in clf.named_parameters() if ".lora_B." in n]
    assert lora_b and all(bool((b == 0).all()) for b in lora_b)  # peft's default: B zero, A random
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(clf.encoder(x), frozen(x), rtol=0, atol=1e-6)
        for b in lora_b:  # a non-zero B changes the output: the comparison above can fail
            b.normal_()
        assert (clf.encoder(x) - frozen(x)).abs().max() > 1e-3


def naive_merge(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B A for linear ([out, in]) and conv ([out, in, k, k]; A [r, in, k, k], B [out, r, 1, 1])."""
    return weight + scale * (b.flatten(1) @ a.flatten(1)).view_as(weight)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_merged_lora_equals_adapted_model(arch):
    opts = options("lora", lora_rank=4, lora_alpha=8.0)
    clf = build_classifier(make_encoder(arch), 10, opts)
    train_steps(clf, opts)
    clf.eval()
    merged = merged_encoder(clf.encoder).eval()
    assert type(merged).__module__.startswith("timm.")  # a plain timm encoder, not a peft wrapper
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), clf.encoder(x), rtol=1e-4, atol=1e-5)
    layer = "blocks.0.attn.qkv" if arch != "resnet18" else "layer1.0.conv1"
    params = dict(clf.encoder.named_parameters())
    prefix = f"base_model.model.{layer}"
    want = naive_merge(params[f"{prefix}.base_layer.weight"], params[f"{prefix}.lora_A.default.weight"],
                       params[f"{prefix}.lora_B.default.weight"], 8.0 / 4)
    torch.testing.assert_close(merged.get_submodule(layer).weight, want.detach(), rtol=1e-5, atol=1e-6)


def test_lora_leaves_out_convolutions_peft_cannot_mirror():
    """A ResNet at output stride 16 dilates its last stage; peft's A convolution would not (wrong map size)."""
    enc = make_encoder("resnet18", output_stride=16)
    dilated = {n for n, m in enc.named_modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)}
    plain = {n for n, m in enc.named_modules() if isinstance(m, nn.Conv2d) and m.dilation == (1, 1)
             and n.startswith("layer")}
    assert dilated  # the case exists
    clf = build_classifier(enc, 10, options("lora")).eval()
    adapted = {n.split(".lora_A.")[0].removeprefix("encoder.base_model.model.") for n, _ in clf.named_parameters()
               if ".lora_A." in n}
    assert adapted == plain
    with torch.no_grad():
        for n, p in clf.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)  # a trained-sized update
        x = torch.randn(2, 1, 16, 16)
        torch.testing.assert_close(merged_encoder(clf.encoder).eval()(x), clf.encoder(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool,deep", [("token", False), ("avg", True)])
def test_prompt_tokens_change_the_output_and_are_removed_before_pooling(pool, deep):
    vit = make_encoder("vit_tiny_patch16_224", global_pool=pool).eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        plain = vit(x)  # [4, 32]
        torch.testing.assert_close(PromptedViT(vit, 0, deep)(x), plain, rtol=0, atol=1e-6)
        prompted = PromptedViT(vit, 3, deep)
        assert prompted.prompts.shape == (2 if deep else 1, 3, 32)
        assert prompted(x).shape == plain.shape
        assert (prompted(x) - plain).abs().max() > 1e-3


def test_prompt_on_a_convnet_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"ViT-only protocols are prompt") as err:
        build_classifier(make_encoder("resnet18"), 10, options("prompt"))
    assert "\n" not in str(err.value) and "ResNet" in str(err.value)


@pytest.mark.parametrize("arch,protocol", [("vit_tiny_patch16_224", "finetune"), ("resnet18", "finetune"),
                                           ("resnet18", "lora"), ("vit_tiny_patch16_224", "bitfit")])
def test_export_loads_in_plain_timm_with_identical_logits(tmp_path, arch, protocol):
    opts = options(protocol)
    clf = build_classifier(make_encoder(arch), 10, opts)
    train_steps(clf, opts)
    written = export_transfer(clf, minimal_card(arch, ARCHS[arch], INFO), opts, tmp_path)
    model = timm.create_model(f"local-dir:{written['classifier']}", pretrained=True).eval()
    assert model.num_classes == 10 and type(model).__module__.startswith("timm.")
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), clf.eval()(x), rtol=1e-4, atol=1e-5)
    if protocol == "lora":
        import json

        cfg = json.loads((written["adapter"] / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == opts.lora_rank
        assert (written["adapter"] / "adapter_model.safetensors").is_file()


def test_prompt_export_holds_tokens_and_head(tmp_path):
    from safetensors.torch import load_file

    opts = options("prompt", prompt_tokens=2)
    clf = build_classifier(make_encoder("vit_tiny_patch16_224"), 10, opts)
    written = export_transfer(clf, minimal_card("vit_tiny_patch16_224", ARCHS["vit_tiny_patch16_224"], INFO), opts,
                              tmp_path)
    saved = load_file(written["prompt"])
    torch.testing.assert_close(saved["prompts"], clf.encoder.prompts.detach(), rtol=0, atol=0)
    torch.testing.assert_close(saved["head.weight"], clf.head.weight.detach(), rtol=0, atol=0)
    assert "classifier" not in written  # a prompted ViT is not a timm model


def test_missing_peft_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install peft") as err:
        build_classifier(make_encoder("vit_tiny_patch16_224"), 10, options("lora"))
    assert "\n" not in str(err.value)


def test_peft_is_a_listed_dependency():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("peft") for d in extras["transfer"]) and any(d.startswith("peft") for d in extras["test"])


@pytest.mark.parametrize("kw,match", [({"protocol": "lorra"}, "unknown transfer protocol 'lorra'"),
                                      ({"lora_rank": 0}, "^transfer option 'lora_rank' must be >= 1, got 0$"),
                                      ({"epochs": 2.5}, "^transfer option 'epochs' must be a whole number, got 2.5$"),
                                      ({"lrs": []}, "'lrs' must hold at least one learning rate"),
                                      ({"lrs": [1e-3, float("inf")]}, r"'lrs' must hold values > 0, got inf in"),
                                      ({"layer_decay": 0.0}, "^transfer option 'layer_decay' must be > 0, got 0.0$"),
                                      ({"layer_decay": 1.5}, "^transfer option 'layer_decay' must be <= 1, got 1.5$"),
                                      ({"low_shot": [0.0]}, r"'low_shot' must hold values > 0, got 0.0 in \[0.0\]"),
                                      ({"low_shot": [1.0]}, r"'low_shot' must hold values < 1, got 1.0 in \[1.0\]"),
                                      ({"lrs": [1e-3, 1e-3]}, r"^transfer option 'lrs' holds 0.001 twice in "
                                                              r"\[0.001, 0.001\]: give each value once$")])
def test_bad_options_are_one_line_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        TransferOptions(**kw)


@pytest.mark.parametrize("arch,stages", [("resnet18", 4), ("vit_tiny_patch16_224", 2)])
def test_partial_beyond_the_stages_names_them(arch, stages):
    build_classifier(make_encoder(arch), 10, options("partial", partial_blocks=stages))  # all stages: fine
    with pytest.raises(ConfigError, match=f"the encoder has {stages}"):
        build_classifier(make_encoder(arch), 10, options("partial", partial_blocks=stages + 1))


def test_layer_decay_scales_follow_depth():
    """timm's layer decay of a ViT with L blocks: embeddings decay^L, block i decay^(L - 1 - i), final norm
    (grouped with the last block) and head 1."""
    decay = 0.5
    opts = options("finetune", layer_decay=decay)
    clf = build_classifier(make_encoder("vit_tiny_patch16_224"), 10, opts)
    scale = {id(p): g["lr_scale"] for g in encoder_param_groups(clf, opts) for p in g["params"]}
    params = dict(clf.named_parameters())
    want = {"encoder.patch_embed.proj.weight": decay ** 2, "encoder.cls_token": decay ** 2,
            "encoder.blocks.0.attn.qkv.weight": decay ** 1, "encoder.blocks.1.mlp.fc1.weight": 1.0,
            "encoder.norm.weight": 1.0, "head.weight": 1.0}
    assert {k: scale[id(params[k])] for k in want} == pytest.approx(want)
    assert len(scale) == len(params)  # every trainable parameter in exactly one group


def test_drop_path_rises_linearly_and_leaves_eval_outputs():
    vit = make_encoder("vit_tiny_patch16_224").eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = vit(x)
    assert set_drop_path(vit, 0.2) == 4  # drop_path1 and drop_path2 of 2 blocks
    rates = [vit.blocks[i].drop_path1.drop_prob for i in range(2)]
    assert rates == pytest.approx([0.0, 0.2])
    with torch.no_grad():
        torch.testing.assert_close(vit(x), before, rtol=0, atol=0)


def test_run_protocol_low_shot_rows(tmp_path):
    train, test = images(60, seed=1), images(20, seed=2)
    enc = make_encoder("vit_tiny_patch16_224")
    opts = TransferOptions(protocol="bitfit", epochs=1, batch_size=16, lrs=[1e-3, 1e-2], seeds=2, low_shot=[0.5])
    rows = run_protocol(enc, minimal_card("vit_tiny_patch16_224", ARCHS["vit_tiny_patch16_224"], INFO), train, test,
                        opts, tmp_path, log=lambda m: None)
    assert [r["key"] for r in rows] == ["bitfit", "bitfit_50pct"]
    assert [r["train_images"] for r in rows] == [60, 10 * 3]  # 6 images per class, half of each kept
    for r in rows:
        assert r["seeds"] == 2 and len(r["top1_per_seed"]) == 2 and set(r["lr"]) <= {1e-3, 1e-2}
        assert 0 <= r["top1"] <= 100 and r["top1"] <= r["top5"]
    n_enc = sum(p.numel() for p in enc.parameters())
    n_bitfit = sum(p.numel() for n, p in enc.named_parameters() if n.endswith(".bias") or "norm" in n)
    assert rows[0]["trainable_params"] == n_bitfit
    assert rows[0]["trainable_pct"] == pytest.approx(100 * n_bitfit / n_enc)
    assert (tmp_path / "classifier" / "model.safetensors").is_file()
    assert all(p.requires_grad for p in enc.parameters())  # the target encoder itself is left as it was


def test_layer_decay_given_for_a_vit_trains_with_it_and_is_refused_for_a_convnet():
    """A ViT-only option is used for a ViT (the encoder's groups get lr scales below 1) and refused for a convnet."""
    from selfsup.transfer.protocols import encoder_param_groups

    vit = build_classifier(make_encoder("vit_tiny_patch16_224"), 10,
                           options("finetune", layer_decay=0.5, given=["layer_decay"]))
    scales = sorted({g["lr_scale"] for g in encoder_param_groups(vit, options("finetune", layer_decay=0.5))})
    # timm: with L=2 blocks the embeddings get decay^L, block 0 decay^1, the last block, norm and head 1
    assert scales == pytest.approx([0.5 ** 2, 0.5, 1.0])
    with pytest.raises(ConfigError, match=r"^transfer option layer_decay changes a ViT's training only"):
        build_classifier(make_encoder("resnet18"), 10, options("finetune", layer_decay=0.5, given=["layer_decay"]))
    # not given: the default applies silently to a convnet (no layer decay), as documented
    build_classifier(make_encoder("resnet18"), 10, options("finetune"))


def test_held_out_tie_goes_to_the_lower_cross_entropy_and_tiny_splits_are_named(monkeypatch):
    """one_seed's lr choice: two lrs with equal held-out top-1 -> the one whose held-out cross-entropy is lower,
    whatever their order (the first used to win); run_protocol's rows carry the held-out size and a warning
    when fewer held-out images than classes chose among several lrs."""
    from types import SimpleNamespace

    import selfsup.transfer.train as train

    def fake_fit(encoder, ds, info, num_classes, opts, lr, seed, trainer=None):
        return SimpleNamespace(lr=lr, diverged_at=None, last_epoch_loss=0.5,
                               classifier=SimpleNamespace(encoder=nn.Linear(2, 2), head=nn.Linear(2, 2))), 0.0

    def fake_predict(module, ds, batch_size, device):  # argmax right on every image; confidence set by the lr
        return torch.nn.functional.one_hot(ds.labels, 10).float() * (5.0 if module.lr == 0.1 else 1.0)

    monkeypatch.setattr(train, "fit", fake_fit)
    monkeypatch.setattr(train, "predict", fake_predict)
    data = images(30)
    for lrs in ([0.1, 0.01], [0.01, 0.1]):
        opts = TransferOptions(protocol="bitfit", epochs=1, lrs=lrs, seeds=1, low_shot=[])
        run, module = train.one_seed(None, data, data, INFO, opts, 1.0, 0, {}, lambda m: None)
        assert (run["lr"], run["val_top1"], run["val_images"]) == (0.1, 100.0, 3)
    logs, seen = [], []
    opts = TransferOptions(protocol="bitfit", epochs=1, lrs=[0.1, 0.01], seeds=1, low_shot=[0.5])
    rows = run_protocol(make_encoder("resnet18"), minimal_card("resnet18", ARCHS["resnet18"], INFO), data, data,
                        opts, None, log=logs.append, on_row=seen.append)
    assert seen == rows and [r["fraction"] for r in seen] == [1.0, 0.5]  # each row handed over when done
    assert rows[0]["val_images"] == 3
    assert rows[0]["warnings"] == ["the bitfit at 100% labels chose among 2 tried settings on 3 held-out image(s), fewer "
                                   "than the 10 classes, so the choice is close to arbitrary; use more labelled "
                                   "images or a single setting"]
    assert any(m.startswith("[bitfit] warning: the bitfit at 100% labels chose") for m in logs)


def test_a_diverged_lr_is_never_chosen_and_all_diverged_is_refused(monkeypatch):
    """The tour's case: lrs [1e4, 1e-3] on a tiny set, both 0% held-out top-1, the first's cross-entropy NaN.
    The diverged lr used to win the tie (a comparison with NaN is never true); now it is left out, and a
    seed whose every lr diverged is a one-line error. Also: a split leaving one image to fit is refused."""
    from types import SimpleNamespace

    import selfsup.data
    import selfsup.transfer.train as train

    def fake_fit(encoder, ds, info, num_classes, opts, lr, seed, trainer=None):
        return SimpleNamespace(lr=lr, diverged_at=None, last_epoch_loss=0.5), 0.0

    def fake_predict(module, ds, batch_size, device):  # every image scored as the wrong class
        wrong = torch.nn.functional.one_hot((ds.labels + 1) % 10, 10).float()
        return wrong * float("nan") if module.lr >= 1.0 else wrong

    monkeypatch.setattr(train, "fit", fake_fit)
    monkeypatch.setattr(train, "predict", fake_predict)
    data = images(30)
    for lrs in ([1e4, 1e-3], [1e-3, 1e4]):
        opts = TransferOptions(protocol="finetune", epochs=1, lrs=lrs, seeds=1, low_shot=[])
        logs = []
        run, _ = train.one_seed(None, data, data, INFO, opts, 1.0, 0, {}, logs.append)
        assert (run["lr"], run["val_top1"], run["diverged_lrs"]) == (1e-3, 0.0, [1e4])
        assert [m.endswith("; diverged, not a candidate") for m in logs] == [lr >= 1.0 for lr in lrs]
    # the results say it too: the row's warnings (results.md) and diverged_lrs (results.json), per seed
    monkeypatch.setattr(train, "fit", lambda encoder, ds, info, num_classes, opts, lr, seed, trainer=None: (
        SimpleNamespace(lr=lr, diverged_at=None, last_epoch_loss=0.5,
                        classifier=SimpleNamespace(encoder=nn.Linear(2, 2), head=nn.Linear(2, 2))), 0.0))
    logs = []
    opts = TransferOptions(protocol="finetune", epochs=1, lrs=[1e4, 1e-3], seeds=2, low_shot=[])
    row, = run_protocol(make_encoder("resnet18"), minimal_card("resnet18", ARCHS["resnet18"], INFO), data, data,
                        opts, None, log=logs.append)
    assert row["diverged_lrs"] == [1e4] and row["lr"] == [1e-3, 1e-3]
    assert row["warnings"][1:] == ["the finetune at 100% labels: lr 10000 diverged at seeds 0, 1 of 2 (never chosen; "
                                   "the reported lr is the best of the others)"]  # [0]: 3 held-out images, 10 classes
    assert "[finetune] warning: the finetune at 100% labels: lr 10000 diverged at seeds 0, 1 of 2 (never chosen; " \
           "the reported lr is the best of the others)" in logs
    assert train.diverged_warnings([{"diverged_lrs": []}, {"diverged_lrs": [0.5]}], 3, "the lora at 10% labels") == [
        "the lora at 10% labels: lr 0.5 diverged at seed 4 of 2 (never chosen; the reported lr is the best of the "
        "others)"]
    opts = TransferOptions(protocol="finetune", epochs=1, lrs=[10.0, 1e4], seeds=1, low_shot=[])
    with pytest.raises(ConfigError, match=r"^--protocol finetune: every lr in \[10.0, 10000.0\] diverged \(training "
                                          r"loss not finite, or the held-out cross-entropy over 1000 x "
                                          r"ln\(classes\) or not finite\) .*lower --transfer lrs$"):
        train.one_seed(None, data, data, INFO, opts, 1.0, 0, {}, lambda m: None)
    with pytest.raises(selfsup.data.DataError, match=r"has 2 labelled training image\(s\); holding 1 out to choose "
                                                     r"its settings leaves 1 to fit"):
        train.one_seed(None, images(2), data, INFO, opts, 1.0, 0, {}, lambda m: None)
    # run_protocol names the fraction before training anything: 2 classes x 3 images at 10%: 1 each, 1 held out
    two = TensorImages(torch.zeros(6, 1, 16, 16, dtype=torch.uint8), torch.arange(6) % 2, 2)
    opts = TransferOptions(protocol="bitfit", epochs=1, lrs=[1e-3, 1e-2], seeds=1, low_shot=[0.1])
    with pytest.raises(selfsup.data.DataError, match=r"^--protocol bitfit at 10% labels has 2 labelled .*: drop 0.1 "
                                                     r"from --transfer low_shot=\[...\] \(default: eval.low_shot\) or use larger fractions$"):
        run_protocol(make_encoder("resnet18"), minimal_card("resnet18", ARCHS["resnet18"], INFO), two, two,
                     opts, None, log=lambda m: None)


def test_a_single_lr_holds_nothing_out(monkeypatch):
    """One lr leaves nothing to choose: it trains on every image (a held-out share would be lost to
    training for nothing), nothing is predicted before the test split, and the row says so (val_images 0,
    val_top1 None). Two images of two classes, refused with two lrs, train with one."""
    from types import SimpleNamespace

    import selfsup.transfer.train as train

    fitted, predicted = [], []

    def fake_fit(encoder, ds, info, num_classes, opts, lr, seed, trainer=None):
        fitted.append(sorted(ds.indices))
        return SimpleNamespace(lr=lr, diverged_at=None, last_epoch_loss=0.5), 0.0

    def fake_predict(module, ds, batch_size, device):
        predicted.append(len(ds))
        return torch.nn.functional.one_hot(ds.labels, 10).float()

    monkeypatch.setattr(train, "fit", fake_fit)
    monkeypatch.setattr(train, "predict", fake_predict)
    data = images(30)
    opts = TransferOptions(protocol="bitfit", epochs=1, lrs=[0.01], seeds=1, low_shot=[])
    run, _ = train.one_seed(None, data, data, INFO, opts, 1.0, 0, {}, lambda m: None)
    assert fitted == [list(range(30))] and predicted == [30]  # all 30 train; only the test split is predicted
    assert (run["val_images"], run["val_top1"], run["lr"], run["top1"]) == (0, None, 0.01, 100.0)
    two = images(2)
    assert train.one_seed(None, two, data, INFO, opts, 1.0, 0, {}, lambda m: None)[0]["val_images"] == 0


def test_an_lr_whose_training_loss_is_not_finite_is_left_out_and_the_others_kept(monkeypatch):
    """The tour's: --transfer lrs=[0.001,100000] stopped the whole evaluation at the NaN training loss of
    1e5 and lost 0.001's results. Real Lightning fits: the lr whose loss turns NaN (forced here at step 2)
    stops there with no update after it, is logged as diverged and never chosen; the other lr is kept.
    Every lr diverged (a single lr too) is the one-line error."""
    import selfsup.transfer.train as train

    real_forward, modules = train.TransferModule.forward, []

    def forward(self, x):
        out = real_forward(self, x)
        return out * float("nan") if self.lr == 100.0 and self.training and self.global_step >= 2 else out

    real_fit = train.fit

    def fit(*args, **kwargs):
        module, secs = real_fit(*args, **kwargs)
        modules.append(module)
        return module, secs

    monkeypatch.setattr(train.TransferModule, "forward", forward)
    monkeypatch.setattr(train, "fit", fit)
    data, logs = images(40), []
    opts = TransferOptions(protocol="bitfit", epochs=2, batch_size=8, warmup_epochs=0, lrs=[100.0, 1e-3], seeds=1,
                           low_shot=[])
    run, kept = train.one_seed(make_encoder("resnet18"), data, data, INFO, opts, 1.0, 0, {}, logs.append)
    assert run["lr"] == 1e-3 and kept is modules[1] and run["diverged_lrs"] == [100.0]
    assert logs[0] == "[bitfit] 100% of labels, seed 0, lr 100: training loss not finite at step 2; diverged, not a " \
                      "candidate"
    assert logs[1].startswith("[bitfit] 100% of labels, seed 0, lr 0.001: held-out top-1")
    # stopped at once: steps 0 and 1 updated, step 2's NaN loss was skipped (no backward, no update), none ran after
    assert modules[0].diverged_at == 2 and modules[0].global_step == 3
    assert all(p.isfinite().all() for p in modules[0].parameters())  # a NaN update would have spread into them
    assert modules[1].diverged_at is None and modules[1].global_step == 2 * (36 // 8)  # 36 fit images, full batches
    for lrs in ([100.0], [100.0, 100.0 + 0.0]):
        with pytest.raises(ConfigError, match=r"every lr in \[100.0\] diverged \(training loss not finite, or the "):
            train.one_seed(make_encoder("resnet18"), data, data, INFO,
                           TransferOptions(protocol="bitfit", epochs=1, batch_size=8, lrs=lrs[:1], seeds=1,
                                           low_shot=[]), 1.0, 0, {}, lambda m: None)


def test_a_single_lr_table_does_not_claim_a_held_out_choice():
    from selfsup.transfer.report import transfer_markdown

    row = {"protocol": "bitfit", "fraction": 1.0, "train_images": 30, "val_images": 0, "top1": 50.0, "top1_std": 0.0,
           "top5": 90.0, "top5_std": 0.0, "seeds": 1, "trainable_params": 10, "trainable_pct": 1.0, "minutes": 0.1}
    md = transfer_markdown("random:resnet18", [row], [])
    assert "(one learning rate, trained on every training image)" in md and "held-out" not in md
    md = transfer_markdown("random:resnet18", [{**row, "val_images": 3}], [])
    assert "(the learning rate chosen on a split held out from the training images)" in md
    assert "less a held-out share (100%: 3 images) that chooses the lr" in md


def test_lightnings_device_lines_are_said_once_not_per_fit(capfd):
    """Each fit built a Trainer and Lightning printed its four device lines ("GPU available: ...") per lr,
    seed and fraction; run_protocol now says once where the runs train, and the fits print none."""
    logs = []
    opts = TransferOptions(protocol="bitfit", epochs=1, batch_size=8, lrs=[1e-3, 1e-2], seeds=2, low_shot=[])
    run_protocol(make_encoder("resnet18"), minimal_card("resnet18", ARCHS["resnet18"], INFO), images(24), images(8),
                 opts, None, log=logs.append, trainer={"accelerator": "cpu", "precision": "32-true"})
    printed = capfd.readouterr()
    assert "GPU available" not in printed.out + printed.err and "TPU available" not in printed.out + printed.err
    assert logs.count("[bitfit] each run trains on cpu (1 process, precision 32-true; Lightning's own device lines "
                      "are left out)") == 1


def test_a_single_lr_whose_loss_ran_away_is_diverged_not_scored(monkeypatch):
    """The tour's silent wrong number: --transfer lrs=[100000] alone (nothing held out) trained to weights of
    3e15 with a finite loss, and the table showed its chance-level top-1 with no warning. A single lr is now
    judged by its last epoch's training loss, as several are by their held-out cross-entropy: over
    1000 x ln(classes) it diverged, and a seed whose every lr diverged is the one-line error."""
    import math

    import selfsup.transfer.train as train

    real_fit = train.fit

    def fit(*args, **kwargs):
        module, secs = real_fit(*args, **kwargs)
        module.last_epoch_loss = 1e9 if module.lr == 1e5 else module.last_epoch_loss  # a finite runaway loss
        return module, secs

    monkeypatch.setattr(train, "fit", fit)
    data, logs = images(24), []
    one = TransferOptions(protocol="bitfit", epochs=1, batch_size=8, lrs=[1e5], seeds=1, low_shot=[])
    with pytest.raises(ConfigError, match=r"^--protocol bitfit: every lr in \[100000.0\] diverged \(training loss not "
                                          r"finite, or the last epoch's training loss over 1000 x ln\(classes\) or "
                                          r"not finite\) at 100% of labels, seed 0: lower --transfer lrs$"):
        train.one_seed(make_encoder("resnet18"), data, data, INFO, one, 1.0, 0, {}, logs.append)
    assert logs == ["[bitfit] 100% of labels, seed 0, lr 100000: last epoch's training loss 1e+09 nats (over 1000 x "
                    "ln(classes), or not finite); diverged"]
    sound = TransferOptions(protocol="bitfit", epochs=2, batch_size=8, lrs=[1e-3], seeds=1, low_shot=[])
    run, module = train.one_seed(make_encoder("resnet18"), data, data, INFO, sound, 1.0, 0, {}, lambda m: None)
    # the recorded loss is the mean of the last epoch's steps (3 steps of 8 images), a sound fit's near ln(10)
    assert run["lr"] == 1e-3 and run["diverged_lrs"] == [] and 0 < module.last_epoch_loss < 10 * math.log(10)


def test_a_data_parallel_table_says_so():
    """The tour's: trainer.devices=2 gave another top-1 than one process (BatchNorm statistics per
    process) and neither results.md nor results.json said how many processes trained."""
    from selfsup.transfer.report import transfer_markdown

    row = {"key": "bitfit", "protocol": "bitfit", "fraction": 1.0, "train_images": 100, "seeds": 1, "top1": 10.0,
           "top1_std": 0.0, "top5": 50.0, "top5_std": 0.0, "trainable_params": 10, "trainable_pct": 0.5,
           "minutes": 0.1, "lr": [1e-3], "val_images": 0, "val_top1": None}
    one = transfer_markdown("export x", [{**row, "processes": 1}], [])
    two = transfer_markdown("export x", [{**row, "processes": 2}], [])
    assert "data-parallel" not in one and "data-parallel" not in transfer_markdown("export x", [row], [])  # older
    assert "- Trained data-parallel on 2 processes (trainer.devices x trainer.num_nodes)" in two


def test_a_reported_lr_worse_than_a_uniform_guess_is_warned(monkeypatch):
    """The second tour's: a single lr of 10 ended at a training loss of 232 nats (under the 1000 x ln(classes)
    divergence limit) and 4% top-1 on 10 classes, below chance, with no word. A reported lr whose last epoch's
    training loss is above 2 x ln(classes) is now a warning in the row (the numbers kept); a sound one is not."""
    import math
    from types import SimpleNamespace

    import selfsup.transfer.train as train

    losses = {1e-3: 0.9, 10.0: 232.0}
    monkeypatch.setattr(train, "fit", lambda encoder, ds, info, num_classes, opts, lr, seed, trainer=None: (
        SimpleNamespace(lr=lr, diverged_at=None, last_epoch_loss=losses[lr],
                        classifier=SimpleNamespace(encoder=nn.Linear(2, 2), head=nn.Linear(2, 2))), 0.0))
    monkeypatch.setattr(train, "predict", lambda module, ds, batch_size, device: torch.zeros(len(ds), 10))
    card = minimal_card("resnet18", ARCHS["resnet18"], INFO)
    for lr, warned in ((10.0, True), (1e-3, False)):
        opts = TransferOptions(protocol="bitfit", epochs=1, lrs=[lr], seeds=2, low_shot=[])
        row, = run_protocol(make_encoder("resnet18"), card, images(24), images(8), opts, None, log=lambda m: None)
        expected = [f"the bitfit at 100% labels: the reported lr ended its last epoch at a training loss above 2 x "
                    f"ln(classes) = {2 * math.log(10):.3g} nats at seeds 0 (232 nats), 1 (232 nats), worse than a "
                    f"uniform guess on its own training images: the fit may have diverged; try lower --transfer lrs "
                    f"(several are chosen on held-out images)"]
        assert row["warnings"] == (expected if warned else []), lr
