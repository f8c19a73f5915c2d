"""`selfsup eval TARGET --protocol finetune` on two processes (Lightning's DDP over gloo, started by the
command itself: Lightning re-runs `python -m selfsup.cli eval ...` for rank 1) against one process on the
same global batch.

A tiny ViT (no BatchNorm: each process would normalise by its own half of the batch) without stochastic
depth (drawn per process): the seeded sampler gives each rank its contiguous half of every global batch and
DDP averages the two half-batch gradients, which is the gradient of the mean loss over the global batch, so
the trained classifier agrees with one process's to float tolerance (the gradient sum runs in another
order). Held-out and test images are predicted in shares and scored on rank 0; rank 0 alone prints,
exports and writes results.json.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from selfsup.cli import main

from conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
ENV.pop("SELFSUP_RUN_DIR", None)

VIT = "vit_tiny_patch16_224"
KWARGS = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}
CONFIG = ["data.name=digits", "data.image_size=16", "data.subset=256", f"encoder.name={VIT}",
          "encoder.kwargs={img_size: 16, patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
          "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.progress_bar=false", "seed=3"]
# 256 images, 26 held out to choose between 2 lrs: 230 to fit, 7 global batches of 32 a run (6 images dropped),
# 2 epochs; the choice is made on rank 0's scores of both ranks' predictions and shared
TRANSFER = [f"random:{VIT}", "--protocol", "finetune", *(a for o in ("epochs=2", "lrs=[0.003, 0.001]", "drop_path=0",
                                                                       "seeds=1",
                                                                       "low_shot=[]") for a in ("--transfer", o))]
TWO = ["trainer.devices=2", "trainer.strategy=ddp"]


def _one_process(out: Path, *extra: str) -> None:
    """The eval in this process, on one thread like each launched process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["eval", *TRANSFER, "--out", str(out), *CONFIG, *extra]) == 0
    finally:
        torch.set_num_threads(threads)


def test_two_processes_train_and_score_like_one_on_the_same_global_batch(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process(one, "--transfer", "batch_size=32", "trainer.devices=1")
    alone = capsys.readouterr().out
    res = subprocess.run([sys.executable, "-m", "selfsup.cli", "eval", *TRANSFER, "--transfer", "batch_size=32",
                          "--out", str(two), *CONFIG, *TWO], env=ENV, capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = res.stdout
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in res.stderr  # rank 1 joined: the run trained on two processes
    assert "[finetune] each run trains data-parallel on 2 processes, 16 images each of every global batch of 32" \
           in printed and "data-parallel" not in alone
    # everything rank 0 prints, printed once: rank 1 re-ran the command but prints, exports and writes nothing
    assert printed.count("held-out top-1") == alone.count("held-out top-1") == 2  # one line per lr
    assert printed.count("results written to") == 1 and printed.count("| finetune | 100% |") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == \
           ["classifier", "results.json", "results.md"]
    assert sorted(p.name for p in (two / "classifier").iterdir()) == sorted(p.name for p in (one / "classifier").iterdir())

    rows1, rows2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert len(rows1) == len(rows2) == 1 and rows1[0].keys() == rows2[0].keys()
    differ = ("minutes", "processes")  # the training time, and the process count the row records
    same = {k: v for k, v in rows1[0].items() if k not in differ}
    assert {k: v for k, v in rows2[0].items() if k not in differ} == same
    assert (rows1[0]["processes"], rows2[0]["processes"]) == (1, 2)
    assert (same["train_images"], same["val_images"], same["lr"]) == (256, 26, [0.001])  # both runs chose the same lr of the two

    w1, w2 = (load_file(d / "classifier" / "model.safetensors") for d in (one, two))
    assert w1.keys() == w2.keys()
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert diff < 1e-5  # measured 1.7e-6 at 3 epochs, lr 3e-3 (Adam's normalised steps carry the float differences of the gradients)
    # training moved the weights far beyond that: the random init (seed 3) as the command builds it
    from selfsup.encoders import create_encoder

    torch.manual_seed(3)
    init = create_encoder(VIT, 1, KWARGS, fair_random_init=True).state_dict()
    moved = max((w1[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3 and w1["head.weight"].abs().max() > 1e-3  # 0.0072 moved at lr 1e-3, 2 epochs: 700x the 1e-5

    # the exported timm classifiers give the same logits
    x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [timm.create_model(f"local-dir:{d / 'classifier'}", pretrained=True).eval()(x) for d in (one, two)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)


def test_a_global_batch_the_processes_cannot_split_is_refused_before_any_data_is_read(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["eval", *TRANSFER, "--transfer", "batch_size=33", "--out", str(out), *CONFIG, *TWO]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "selfsup eval: error: --transfer batch_size=33 is the global batch of every step, which 2 processes "
        "(trainer.devices x trainer.num_nodes) must split evenly: give --transfer batch_size=32 or 34, or "
        "trainer.devices=1")
    # a divisible batch, but main() called from pytest: Lightning would start rank 1 by re-running pytest
    assert main(["eval", *TRANSFER, "--transfer", "batch_size=32", "--out", str(out), *CONFIG, *TWO]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        "by re-running this program, which is not the selfsup command line: run `selfsup eval ...` or "
        "`python -m selfsup.cli eval ...`, or set trainer.devices=1")
    assert not out.exists()


def test_several_processes_need_a_global_batch_in_every_fit_and_no_fsdp():
    from selfsup.config import ConfigError
    from selfsup.transfer import TransferOptions
    from selfsup.transfer.train import check_processes, per_process_batch, process_count

    two = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    assert process_count(two) == 2 and process_count({"accelerator": "cpu", "devices": 1, "strategy": "fsdp"}) == 1
    assert process_count({"accelerator": "cpu", "devices": 2, "num_nodes": 2, "strategy": "ddp"}) == 4
    with pytest.raises(ConfigError, match=r"^trainer.strategy=fsdp shards pretraining's large ViTs; .* use "
                                          r"trainer.strategy=ddp \(or auto\)$"):
        process_count({**two, "strategy": "fsdp"})
    assert per_process_batch(64, 4) == 16
    with pytest.raises(ConfigError, match=r"give --transfer batch_size=4, or trainer.devices=1$"):
        per_process_batch(3, 4)
    # 300 labels of 10 classes: 10% is 30 images, 27 left to fit after 3 held out: less than one global batch
    # of 32, which one process takes as one short batch
    labels = torch.arange(300) % 10
    encoder = timm.create_model(VIT, in_chans=1, num_classes=0, **KWARGS)
    said = []
    options = TransferOptions(protocol="finetune", batch_size=32, low_shot=[0.1], lrs=[1e-3, 1e-2])
    with pytest.raises(ConfigError, match=r"^--protocol finetune at 10% labels fits 27 images, fewer than one global "
                                          r"batch of 32 .*: lower --transfer batch_size to at most 26, drop 0.1 from "
                                          r"--transfer low_shot=\[...\] \(default: eval.low_shot\), or use trainer.devices=1$"):
        check_processes(encoder, labels, options, two, said.append)
    assert check_processes(encoder, labels, TransferOptions(protocol="finetune", batch_size=16, low_shot=[0.1],
                                                            lrs=[1e-3, 1e-2]), two, said.append) == 2
    one_lr = TransferOptions(protocol="finetune", batch_size=32, low_shot=[0.1], lrs=[1e-3])  # nothing held out
    with pytest.raises(ConfigError, match=r"^--protocol finetune at 10% labels fits 30 images, fewer .* at most 30"):
        check_processes(encoder, labels, one_lr, two, said.append)
    both = TransferOptions(protocol="finetune", batch_size=32, low_shot=[0.1, 0.01], lrs=[1e-3, 1e-2])
    with pytest.raises(ConfigError, match=r"^--protocol finetune at 10% labels \(also too few at 1%\) fits 27 images, "
                                          r".*: lower --transfer batch_size to at most 8, drop 0.1, 0.01 from "):
        check_processes(encoder, labels, both, two, said.append)  # 1%: 10 images, 9 to fit: the fix covers both
    assert said == ["[finetune] each run trains data-parallel on 2 processes, 8 images each of every global batch "
                    "of 16"]
    # one process trains the 27 images as one short batch per epoch, and says so (all labels fit 270: no note)
    assert check_processes(encoder, labels, options, {"accelerator": "cpu", "devices": 1}, said.append) == 1
    assert said[1:] == ["[finetune] note: 10% labels fits 27 images, fewer than one batch of 32 (--transfer "
                        "batch_size): each epoch is one step of 27 images (lower batch_size to compare at equal batch)"]
    del said[1:]
    # a convnet's BatchNorm that trains: per-process statistics, said
    resnet = timm.create_model("resnet18", in_chans=1, num_classes=0, channels=[8, 16, 32, 64])
    check_processes(resnet, labels, TransferOptions(protocol="bitfit", batch_size=16, low_shot=[]), two, said.append)
    assert said[-1].startswith("[bitfit] note: the BatchNorm layers that train normalise by each process's 8 images")


def test_sync_batchnorm_on_cpu_processes_is_refused_before_any_process_starts(tmp_path):
    """The tour's: trainer.sync_batchnorm=true (which the BatchNorm note suggests, on GPUs) on 2 CPU processes
    ended in a traceback per process ('SyncBatchNorm layers only work with GPU modules'). It is one line now,
    for transfer and pretraining, before Lightning launches anything; one process keeps the setting harmlessly."""
    from selfsup.config import ConfigError, load_config
    from selfsup.train.run import pretrain
    from selfsup.transfer.train import process_count

    cpu2 = {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "sync_batchnorm": True}
    with pytest.raises(ConfigError, match=r"^trainer.sync_batchnorm=true .* runs on GPUs only, and these 2 processes "
                                          r"run on CPU: set trainer.sync_batchnorm=false"):
        process_count(cpu2)
    assert process_count({**cpu2, "devices": 1}) == 1
    cfg = load_config(None, [*CONFIG, "method.name=simclr", "trainer.devices=2", "trainer.strategy=ddp",
                             "trainer.sync_batchnorm=true", "trainer.max_epochs=1", "data.batch_size=32"])
    with pytest.raises(ConfigError, match=r"^trainer.sync_batchnorm=true .* 2 processes run on CPU"):
        pretrain(cfg, tmp_path / "run")


def test_a_diverging_lr_on_two_processes_is_left_out_like_on_one(tmp_path):
    """The second tour's: on two processes the diverged lr's stop (a step returning None) was refused by
    Lightning and the whole run died. Both processes now stop that lr at the same step and keep the other."""
    kw = "encoder.kwargs={channels: [8, 16, 32, 64]}"
    cmd = [sys.executable, "-m", "selfsup.cli", "eval", "random:resnet18", "--protocol", "finetune",
           *(a for o in ("batch_size=10", "epochs=1", "seeds=1", "low_shot=[]", "lrs=[0.001, 100000]")
             for a in ("--transfer", o)), "--out", str(tmp_path / "out"), "data.name=digits", "data.image_size=16",
           "data.subset=300", "encoder.name=resnet18", kw, "trainer.accelerator=cpu", "trainer.progress_bar=false",
           *TWO]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if "lr 100000: training loss not finite at step" in line]
    assert len(lines) == 1 and lines[0].endswith("; diverged, not a candidate")  # said once, by rank 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rows[0]["lr"] == [0.001]
