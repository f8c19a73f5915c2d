"""`selfsup eval TARGET --protocol NAME`: the transfer protocols through the command line."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from selfsup.cli import main
from selfsup.config import ConfigError

from conftest import one_line_error

TINY = ["data.name=digits", "data.image_size=16", "encoder.name=resnet18",
        "encoder.kwargs={channels: [8, 16, 32, 64]}", "eval.low_shot=[0.5]", "eval.probe_seeds=2",
        "trainer.progress_bar=false"]


def test_bitfit_through_the_cli_reports_each_fraction_and_exports_a_timm_classifier(tmp_path, capsys):
    out = tmp_path / "bitfit"
    assert main(["eval", "random:resnet18", "--protocol", "bitfit", "--out", str(out), "--transfer", "epochs=1",
                 "--transfer", "lr=0.003", *TINY]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in rows] == ["bitfit", "bitfit_50pct"] and [r["seeds"] for r in rows] == [2, 2]
    assert rows[0]["options"]["lrs"] == [0.003] and rows[0]["options"]["epochs"] == 1
    enc = timm.create_model("resnet18", in_chans=1, channels=[8, 16, 32, 64], num_classes=0)
    norms = [m for m in enc.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    biases_and_norms = sum(p.numel() for m in norms for p in m.parameters()) + sum(
        m.bias.numel() for m in enc.modules() if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and isinstance(getattr(m, "bias", None), torch.nn.Parameter))
    assert rows[0]["trainable_params"] == biases_and_norms  # BitFit: biases and normalisation parameters only
    table = (out / "results.md").read_text()
    assert "| bitfit | 100% |" in table and "| bitfit | 50% |" in table and table in printed
    model = timm.create_model(f"local-dir:{out / 'classifier'}", pretrained=True)
    assert model.num_classes == 10 and model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_transfer_input_errors_are_one_line(tmp_path, capsys):
    cases = [(["random:resnet18", "--protocol", "prompt"], "prompt"),
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "epoch=2"],
              "--transfer 'epoch=2': did you mean epochs? give KEY=VALUE"),
             (["random:resnet18", "--protocol", "lora", "--transfer", "lorarank=4"], "did you mean lora_rank?"),
             # helper-34's cases: lr and lrs together (lr silently won), and lr's error naming lrs[0]
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "lrs=[0.01]", "--transfer", "lr=0.002"],
              "--transfer lr=0.002 and lrs=[0.01] both set the learning rates: give lr (one) or lrs (a list), not both"),
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "lr=abc"],
              "--transfer lr must be a number, got 'abc'"),
             (["pixels", "--protocol", "finetune"], "--protocol adapts an encoder"),
             # a value of the wrong type (helper-30's case: low_shot=0.5 was a TypeError traceback)
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "low_shot=0.5"],
              "config key 'transfer.low_shot' must be list[float], got 0.5 (float)"),
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "lrs=0.001"],
              "config key 'transfer.lrs' must be list[float], got 0.001 (float)"),
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "epochs=2.5"],
              "config key 'transfer.epochs' must be int, got 2.5 (float)"),
             # helper-37's: a repeated option (the last silently won)
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "epochs=1", "--transfer", "epochs=2"],
              "--transfer epochs is given more than once: give each option once"),
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "protocol=lora"],
              "--transfer 'protocol=lora': the protocol is chosen by --protocol (e.g. --protocol lora), not --transfer")]
    for args, message in cases:
        assert main(["eval", *args, "--out", str(tmp_path / "x"), *TINY]) == 2
        assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_transfer_flags_that_do_not_apply_are_refused(tmp_path, capsys):
    cases = [(["random:resnet18", "--protocol", "finetune", "--task", "detection"],
              "--protocol adapts an encoder for classification; it does not apply to --task detection"),
             (["random:resnet18", "--transfer", "epochs=1"], "--transfer sets options of a transfer protocol"),
             # an option of another protocol, or of ViTs only, is refused rather than ignored (the tour's cases)
             (["random:resnet18", "--protocol", "bitfit", "--transfer", "partial_blocks=2"],
              "transfer option partial_blocks applies to --protocol partial only, not bitfit: drop it, or use "
              "--protocol partial"),
             (["random:resnet18", "--protocol", "partial", "--transfer", "lora_rank=4"],
              "transfer option lora_rank applies to --protocol lora only, not partial"),
             (["random:resnet18", "--protocol", "lora", "--transfer", "drop_path=0.2"],
              "transfer option drop_path applies to --protocol finetune / partial only, not lora"),
             (["random:resnet18", "--protocol", "finetune", "--transfer", "prompt_deep=true"],
              "transfer option prompt_deep applies to --protocol prompt only"),
             (["random:resnet18", "--protocol", "finetune", "--transfer", "layer_decay=0.65"],
              "transfer option layer_decay changes a ViT's training only, but the encoder (ResNet) is not a timm "
              "VisionTransformer")]
    for args, message in cases:
        assert main(["eval", *args, "--out", str(tmp_path / "y"), *TINY]) == 2
        assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "y").exists()
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'} does not exist" in one_line_error(capsys.readouterr().err)


def test_transfer_lr_in_exponent_form_is_a_number():
    """--transfer lr=3e-4 (the --help example; a string to YAML 1.1) is 3e-4, as config values read."""
    from selfsup.cli_eval import transfer_options
    from selfsup.config import load_config

    cfg = load_config(None, ["method.name=simclr"])
    assert transfer_options("finetune", ["lr=3e-4"], cfg).lrs == [3e-4]
    assert transfer_options("finetune", ["lrs=[1e-4, 3e-4]"], cfg).lrs == [1e-4, 3e-4]


def test_an_lr_whose_adam_step_overflows_float32_is_diverged_not_a_traceback(tmp_path, capsys):
    """helper-52's traceback: `--transfer lrs=[1e-3, 3e38]` (3e38 fits float32, AdamW's first step, ten times the
    lr, does not) ended the whole protocol in `RuntimeError: value cannot be converted to type float without
    overflow`. That lr is now diverged and left out of the choice, as a non-finite loss is; the other is chosen."""
    out = tmp_path / "bitfit"
    assert main(["eval", "random:resnet18", "--protocol", "bitfit", "--out", str(out), "--transfer", "epochs=1",
                 "--transfer", "lrs=[0.003, 3e38]", "--transfer", "warmup_epochs=0", *TINY[:-3], "eval.low_shot=[]",
                 "eval.probe_seeds=1", "trainer.progress_bar=false"]) == 0
    row = json.loads((out / "results.json").read_text())[0]
    assert row["diverged_lrs"] == [3e38] and row["lr"] == [0.003], row
    assert any("lr 3e+38 diverged" in w for w in row["warnings"]), row["warnings"]


def test_a_pretraining_lr_whose_adam_step_overflows_float32_is_one_line(tmp_path, capsys):
    from conftest import ROOT

    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(tmp_path / "run"), *TINY[:4],
                 "data.batch_size=32",
                 "trainer.max_steps=1", "optim.name=adamw", "optim.lr=3e38", "optim.lr_scaling=none",
                 "optim.warmup_epochs=0", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = next(line for line in err.splitlines() if "error:" in line)  # below Lightning's own start-up lines
    assert "error: the optimiser's step at learning rate 3e+38 overflows float32 at epoch 0, step 0 (an Adam step " \
           "is up to ten times the lr, lr / (1 - 0.9^t))" in line and line.endswith("Lower optim.lr."), err


def test_weights_an_update_made_non_finite_are_never_written(tmp_path, capsys):
    """helper-53's: SGD at lr 3e38 for one step (finite loss and gradients, an update that overflowed) wrote a
    checkpoint of inf weights, which the evaluation then called damaged. Non-finite weights are now refused
    when a checkpoint is saved, in one line naming the parameter and the fix; nothing is written."""
    from conftest import ROOT

    run = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), *TINY[:4],
                 "data.batch_size=32", "trainer.max_steps=1", "optim.name=sgd", "optim.lr=3e38",
                 "optim.lr_scaling=none", "optim.warmup_epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = next(line for line in err.splitlines() if "error:" in line)
    assert "error: the weights of method.encoder." in line and "hold NaN or inf at epoch 0, step 1: an optimiser " \
           "update overflowed (the loss and its gradients were finite). This checkpoint was not written" in line, line
    assert line.endswith("Lower optim.lr.") and not list(run.glob("checkpoints/*.ckpt"))


def test_a_learning_rate_its_scaling_rounds_to_zero_is_refused_before_the_run(tmp_path, capsys):
    """helper-53's: optim.lr=1.4e-45 passes the float32 check when the config loads, and linear scaling to batch
    64 (x 0.25) made it 3.5e-46, which float32 rounds to 0: a run that trains nothing. Refused before the run
    directory exists; the same lr without scaling trains."""
    from conftest import ROOT

    from selfsup.config import load_config
    from selfsup.train.optim import check_scaled_lr

    run = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), *TINY[:4],
                 "data.batch_size=64", "trainer.max_steps=1", "optim.lr=1.4e-45", "--no-eval"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "optim.lr=1.4e-45 scaled to the global batch of 64 (linear scaling from 256) is 3.5e-46, which " \
           "float32 rounds to 0: the run would train nothing; raise optim.lr, or set optim.lr_scaling=none" in line
    assert not run.exists()
    cfg = load_config(None, ["method.name=simclr", "optim.lr=1.4e-45", "optim.lr_scaling=none"]).optim
    check_scaled_lr(cfg, 64)
    check_scaled_lr(cfg, None)  # devices auto: the batch is not known yet
    # helper-54's: the other way, an lr scaling pushes past float32, is told to lower it, not raise it
    big = load_config(None, ["method.name=simclr", "optim.lr=3e38"]).optim
    with pytest.raises(ConfigError, match=r"is 6e\+38, which float32 cannot hold: the first step would overflow; lower "
                                          r"optim.lr, or set optim.lr_scaling=none$"):
        check_scaled_lr(big, 512)


def test_a_transfer_adapts_at_eval_image_size_and_exports_that_size(tmp_path, capsys):
    """eval.image_size sets the side a transfer trains at, and the exported classifier's card says it: timm's
    pretrained_cfg input_size; without it a random: target trains at the data's size (16 here)."""
    out = tmp_path / "bitfit"
    assert main(["eval", "random:resnet18", "--protocol", "bitfit", "--out", str(out), "--transfer", "epochs=1",
                 *TINY, "eval.image_size=24"]) == 0
    assert "[transfer] random:resnet18 sees the images at 24 px (eval.image_size), resized from the data's 16 px" \
        in capsys.readouterr().out
    card = json.loads((out / "classifier" / "config.json").read_text())
    assert card["pretrained_cfg"]["input_size"] == [1, 24, 24]
    vit = ["encoder.name=vit_tiny_patch16_224",
           "encoder.kwargs={img_size: 16, patch_size: 3, embed_dim: 32, depth: 1, num_heads: 2}"]
    for size, said in [(16, "use eval.image_size 15 or 18"),  # the key that was set is the one to change
                       (18, "Input height (18) doesn't match model (16).; evaluate it at 16x16, the only size "
                            "this model takes (eval.image_size)")]:
        assert main(["eval", "random:vit_tiny_patch16_224", "--protocol", "bitfit", "--out", str(tmp_path / "v"),
                     *TINY[:2], f"eval.image_size={size}", *vit]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    assert not (tmp_path / "v").exists()


def test_transfers_of_other_settings_keep_their_own_folders_and_frozen_numbers_of_their_size(tmp_path, capsys):
    """helper-55's: `eval RUN --protocol bitfit eval.image_size=20`, then the same at the run's 16 px, both wrote
    RUN/transfer-bitfit/ (the 20 px result lost), and the 20 px table showed the run's frozen 16 px numbers beside
    it. Each setting keeps its folder; frozen numbers are shown only at the transfer's own size."""
    from conftest import ROOT

    run = tmp_path / "run"
    small = ["data.name=digits", "data.image_size=16", "data.subset=300", "encoder.kwargs={channels: [8, 16, 32, 64]}",
             "trainer.progress_bar=false", "eval.low_shot=[]", "eval.probe_seeds=1", "eval.plots=false",
             "eval.linear_lrs=[0.1]", "eval.linear_wds=[0.0]", "eval.linear_epochs=5", "eval.baselines=[]"]
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "trainer.max_steps=1",
                 *small]) == 0
    frozen = json.loads((run / "results.json").read_text())[0]
    bitfit = ["eval", str(run), "--protocol", "bitfit", "--transfer", "epochs=1", "--transfer", "lrs=[0.003]"]
    capsys.readouterr()
    assert main([*bitfit, "eval.image_size=20"]) == 0
    first = run / "transfer-bitfit"
    at20 = json.loads((first / "results.json").read_text())
    assert [r["image_size"] for r in at20] == [20]
    table = (first / "results.md").read_text()
    assert table.splitlines()[4].endswith("|  |  |")  # no frozen linear / kNN at 20 px
    assert ("Frozen linear / kNN top-1 are blank: the run's frozen evaluation saw the images at 16 px and this "
            "transfer at 20 px" in table)
    assert main(bitfit) == 0
    assert json.loads((first / "results.json").read_text()) == at20  # kept
    (second,) = [d for d in run.glob("transfer-bitfit-*")]
    at16 = json.loads((second / "results.json").read_text())
    assert [r["image_size"] for r in at16] == [16]
    assert f"| {frozen['linear']['top1']:.2f} | {next(iter(frozen['knn'].values()))['top1']:.2f} |" in \
        (second / "results.md").read_text()  # the run's own frozen numbers, at its size
    assert main(bitfit) == 0  # the same settings again: their folder, no third
    assert sorted(d.name for d in run.glob("transfer-bitfit*")) == sorted([first.name, second.name])
    assert main([*bitfit, "data.subset=200"]) == 0  # other data: the run's frozen numbers are of its own data
    (other,) = run.glob("eval-digits-*/transfer-bitfit")
    table = (other / "results.md").read_text()
    assert table.splitlines()[4].endswith("|  |  |")
    assert "this transfer is on other data than" in table and "has no frozen-feature evaluation" not in table
