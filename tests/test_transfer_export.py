"""What a transfer run writes, loaded back: the LoRA adapter (with the head) through peft's own
``PeftModel.from_pretrained`` on a timm classifier, and the prompt tokens through ``load_prompted``."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import selfsup
from selfsup.safeload import LoadError
from selfsup.transfer.export import export_transfer, load_prompted, minimal_card
from selfsup.transfer.protocols import build_classifier

from test_transfer import ARCHS, INFO, make_encoder, options, train_steps

VIT = "vit_tiny_patch16_224"
# (architecture, extra kwargs, timm's head name): a ResNet, a class-token ViT, a mean-pooled ViT with fc_norm
LORA_CASES = [("resnet18", {}, "fc"), (VIT, {}, "head"), (VIT, {"global_pool": "avg"}, "head")]


def timm_kwargs(arch: str, extra: dict) -> dict:
    return {"in_chans": 1, **ARCHS[arch], **extra}


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(seed))  # [4, 1, 16, 16]


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)  # [4, 10]


@pytest.mark.parametrize("arch,extra,head", LORA_CASES)
def test_lora_adapter_rebuilds_the_scored_classifier_with_peft(tmp_path, monkeypatch, arch, extra, head):
    from peft import PeftModel

    source = {k: v.clone() for k, v in make_encoder(arch, **extra).state_dict().items()}  # the pretrained encoder
    opts = options("lora")
    clf = build_classifier(make_encoder(arch, **extra), 10, opts)
    train_steps(clf, opts)
    written = export_transfer(clf, minimal_card(arch, {**ARCHS[arch], **extra}, INFO), opts, tmp_path)
    x = inputs()
    want = logits(clf, x)

    base = timm.create_model(arch, num_classes=10, **timm_kwargs(arch, extra))  # its head random
    missing = base.load_state_dict(source, strict=False).missing_keys
    assert sorted(missing) == [f"{head}.bias", f"{head}.weight"]
    without = logits(base, x)  # source encoder, random head: not the classifier
    loaded = PeftModel.from_pretrained(base, str(written["adapter"]))
    torch.testing.assert_close(logits(loaded, x), want, rtol=0, atol=1e-5)
    assert (without - want).abs().max() > 1e-3

    merged = timm.create_model(f"local-dir:{written['classifier']}", pretrained=True)
    torch.testing.assert_close(logits(loaded, x), logits(merged, x), rtol=0, atol=1e-5)

    # LoRA moved the logits: the source encoder with the trained head is another classifier
    plain = timm.create_model(arch, num_classes=10, **timm_kwargs(arch, extra))
    plain.load_state_dict({**source, f"{head}.weight": clf.head.weight, f"{head}.bias": clf.head.bias})
    assert (logits(plain, x) - want).abs().max() > 1e-5

    config = json.loads((written["adapter"] / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] == [head]

    # the README's snippet, as written, with TARGET standing for the source encoder
    readme = (written["adapter"] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) == 4  # the import and three lines
    monkeypatch.setattr(selfsup, "load_encoder", lambda target: make_encoder(arch, **extra))
    scope = {"TARGET": "the target"}
    exec(code, scope)  # noqa: S102 - the documented snippet
    torch.testing.assert_close(logits(scope["model"], x), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("extra,deep", [({}, False), ({"global_pool": "avg"}, True)])
def test_load_prompted_gives_the_trained_classifiers_logits(tmp_path, extra, deep):
    opts = options("prompt", prompt_tokens=2, prompt_deep=deep)
    clf = build_classifier(make_encoder(VIT, **extra), 10, opts)
    train_steps(clf, opts)
    written = export_transfer(clf, minimal_card(VIT, {**ARCHS[VIT], **extra}, INFO), opts, tmp_path)
    assert "classifier" not in written and set(written) == {"prompt", "encoder"}
    x = inputs()
    want = logits(clf, x)
    for path in (tmp_path, tmp_path / "prompt.safetensors"):
        model = load_prompted(path)
        assert not model.training and model.encoder.prompts.shape == (2 if deep else 1, 2, 32)
        torch.testing.assert_close(logits(model, x), want, rtol=0, atol=1e-5)
    # encoder/ is the untouched frozen ViT, for plain timm: features, not the prompted classifier's logits
    vit = timm.create_model(f"local-dir:{written['encoder']}", pretrained=True)
    torch.testing.assert_close(logits(vit, x), logits(make_encoder(VIT, **extra), x), rtol=0, atol=0)
    assert (clf.head(logits(vit, x)) - want).abs().max() > 1e-4  # the prompts change the logits


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prompt")
    opts = options("prompt", prompt_tokens=2)
    export_transfer(build_classifier(make_encoder(VIT), 10, opts), minimal_card(VIT, ARCHS[VIT], INFO), opts, out)
    return out


def tampered(prompt_run, tmp_path, change) -> str:
    """A copy of the prompt run whose prompt.safetensors went through ``change(tensors, meta)``."""
    out = tmp_path / "run"
    shutil.copytree(prompt_run, out)
    with safe_open(str(out / "prompt.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    save_file(tensors, str(out / "prompt.safetensors"), meta)
    return str(out)


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("change,message", [
    (lambda t, m: t.update(prompts=t["prompts"][..., :16].contiguous()),
     "its prompt tokens are 16 wide but that ViT's embed_dim is 32"),
    (lambda t, m: t.update(prompts=torch.cat([t["prompts"]] * 2, -1)),
     "its prompt tokens are 64 wide but that ViT's embed_dim is 32"),
    (lambda t, m: t.update(prompts=t["prompts"][:, :1].contiguous()),
     "it holds 1 prompt tokens per layer but its metadata says num_tokens=2"),
    (lambda t, m: m.update(deep="True"), "it holds prompts for 1 layer(s) but a deep prompt of that 2-block ViT has 2"),
    (lambda t, m: t.update({"head.weight": t["head.weight"][:, :8].contiguous()}),
     "its head is [10, 8] + [10] but that ViT's pooled features are 32 wide"),
    (lambda t, m: t["prompts"].view(-1)[0].fill_(float("nan")), "hold NaN or infinite values (e.g. 'prompts')"),
    (lambda t, m: m.update(encoder=json.dumps({"architecture": "vit_small_patch16_224"})),
     "its prompts were trained on a 'vit_small_patch16_224', not the 'vit_tiny_patch16_224'"),
])
def test_a_prompt_file_that_does_not_fit_is_a_one_line_error(prompt_run, tmp_path, change, message):
    out = tampered(prompt_run, tmp_path, change)
    with pytest.raises(LoadError) as err:
        load_prompted(out)
    text = one_line(err)
    assert message in text and f"{out}/prompt.safetensors" in text and "put the prompt.safetensors and encoder/" in text


def test_missing_prompt_files_are_one_line_errors(prompt_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(prompt_run, run)
    shutil.rmtree(run / "encoder")
    with pytest.raises(LoadError) as err:
        load_prompted(run)
    assert "has prompt.safetensors but no encoder/" in one_line(err)
    (run / "prompt.safetensors").unlink()
    with pytest.raises(LoadError) as err:
        load_prompted(run)
    assert f"{str(run)!r} holds no prompt.safetensors" in one_line(err)
    (run / "classifier").mkdir()
    with pytest.raises(LoadError) as err:
        load_prompted(run)
    assert f"load it with timm.create_model('local-dir:{run / 'classifier'}'" in one_line(err)
    with pytest.raises(LoadError) as err:
        load_prompted(tmp_path / "nothing")
    assert "does not exist" in one_line(err)
    shutil.copytree(prompt_run / "encoder", run / "encoder")
    (run / "prompt.safetensors").write_text("not tensors")
    with pytest.raises(LoadError) as err:
        load_prompted(run)
    assert "should hold a prompt run's tokens as safetensors but is a text file" in one_line(err)
