"""Real multi-process pretraining on the CPU: Lightning's DDP strategy over gloo, launched
by `selfsup pretrain` itself, against one process on the same global batch.

MoCo v2 on a ViT (no BatchNorm anywhere, since SyncBatchNorm needs a GPU): every image,
augmentation draw, queue entry and gradient of two processes of batch b is the one
process's of batch 2b (see selfsup.distributed), so the final weights agree to float
tolerance (the gradient all-reduce sums in another order). A run killed on one process
and resumed on two continues the same way.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spy_pretrain import SCRIPT as SPY, SPY_ENV, assert_resumed_from

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
ENV.pop("SELFSUP_RUN_DIR", None)

BASE = ["data.name=digits", "data.image_size=16", "data.subset=512", "encoder.name=vit_tiny_patch16_224",
        "encoder.kwargs={img_size: 16, patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
        "method.queue_size=128", "method.bn_splits=1", "method.proj_hidden_dim=64", "method.proj_dim=32",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.progress_bar=false",
        "trainer.log_every_n_steps=4", "seed=3"]
ONE = ["trainer.devices=1", "data.batch_size=32"]
TWO = ["trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=16"]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfsup.cli", "pretrain", *args]  # -m: Lightning re-launches it per rank


def _train(run_dir: Path, *extra: str, epochs: int = 3, evaluate: bool = False) -> str:
    res = subprocess.run(_cmd(str(ROOT / "configs/moco-fashion-mnist.yaml"), "--run-dir", str(run_dir),
                              *([] if evaluate else ["--no-eval"]), *BASE, f"trainer.max_epochs={epochs}", *extra),
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["state_dict"], ckpt["global_step"]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k  # queue pointer, step counters


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one")
    _train(run, *ONE)
    return run


def test_two_processes_match_one_process_on_the_same_global_batch(single, tmp_path):
    printed = _train(tmp_path / "two", *TWO, "eval.linear=false", "eval.baselines=[random]", evaluate=True)
    (one, steps1), (two, steps2) = _weights(single), _weights(tmp_path / "two")
    assert steps1 == steps2 == 3 * (512 // 32)
    assert (one["method.queue.keys"] != 0).any()  # the queue was filled (by gathered keys on two ranks)
    _assert_close(one, two)
    # the key encoder starts as a copy of the query encoder and trails it (momentum 0.99): training
    # moved the weights several times further than the tolerance allows the two runs to differ
    q, k = one["method.encoder.blocks.0.attn.qkv.weight"], one["method.teacher.encoder.blocks.0.attn.qkv.weight"]
    assert (q - k).abs().max() > 1e-3

    # after training both processes extracted features (a share each), rank 0 scored and exported once
    import json

    from selfsup.artifacts.load import load_encoder
    from selfsup.eval.evaluate import evaluate
    from selfsup.train.workdir import load_run_config

    assert printed.count("run directory:") == 1 and printed.count("[export] encoder written") == 1
    assert printed.count("[eval] extracting features for run two") == 2  # train and test, logged by rank 0
    rows = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["pretrained", "random"]
    cfg = load_run_config(tmp_path / "two")
    alone = evaluate(str(tmp_path / "two"), cfg, tmp_path / "features-one-process", log=lambda s: None,
                     load=load_encoder)
    assert rows[0]["knn"] == alone["knn"]  # the sharded features score like one process's
    assert (tmp_path / "two" / "export" / "config.json").is_file()


def test_run_killed_on_one_process_resumes_on_two(single, tmp_path):
    run = tmp_path / "resumed"
    proc = subprocess.Popen(_cmd(str(ROOT / "configs/moco-fashion-mnist.yaml"), "--run-dir", str(run), "--no-eval",
                                 *BASE, "trainer.max_epochs=3", *ONE),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    while not last.exists():  # kill after the first epoch's checkpoint
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = torch.load(last, weights_only=True)
    assert cut["epoch"] < 2  # cut short of the three epochs
    spy = tmp_path / "spy"
    spy.mkdir()
    # the spy script runs `selfsup pretrain` (Lightning re-runs it for rank 1) recording each step
    res = subprocess.run([sys.executable, str(SPY), "pretrain", "--resume", str(run), "--no-eval", *TWO],
                         env={**ENV, SPY_ENV: str(spy)}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (one, steps1), (two, steps2) = _weights(single), _weights(run)
    assert steps1 == steps2
    # both processes trained only the steps after the checkpoint, from its weights and queue: a
    # restart from step 0 on two processes ends at the same step with the same weights
    assert_resumed_from(spy, cut, final_step=steps2, ranks=2)
    _assert_close(one, two)


# --------------------------------------------------------------------------- the pieces, in one process


def _as_rank(monkeypatch, r: int, world: int) -> None:
    import torch.distributed as dist

    from selfsup import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: r)
    monkeypatch.setattr(dist, "get_rank", lambda *a: r)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: world)


def test_each_rank_draws_its_slice_of_the_global_draw(monkeypatch):
    from selfsup.data.augment import crop_flip_theta
    from selfsup.distributed import draw_local

    torch.manual_seed(0)
    whole = crop_flip_theta(12, (0.2, 1.0), (0.75, 1.33), 0.5, torch.device("cpu"))  # one process, batch 12
    parts = []
    for r in range(3):
        _as_rank(monkeypatch, r, 3)
        torch.manual_seed(0)  # every rank runs the same stream
        parts.append(crop_flip_theta(4, (0.2, 1.0), (0.75, 1.33), 0.5, torch.device("cpu")))
        assert torch.equal(draw_local(lambda m: torch.arange(m), 4), torch.arange(4 * r, 4 * r + 4))
    assert torch.equal(torch.cat(parts), whole)


def test_sampler_gives_each_rank_a_contiguous_slice_of_every_global_batch(monkeypatch):
    from selfsup.data import EpochShuffle

    data = list(range(50))
    one = EpochShuffle(data, batch_size=8, seed=5)
    one.set_epoch(2)
    order = list(one)  # one process, batch 8: six full batches and a dropped remainder of 2
    shards = []
    for r in range(2):
        _as_rank(monkeypatch, r, 2)
        s = EpochShuffle(data, batch_size=4, seed=5)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == 6 * 4
    for step in range(6):  # global batch `step`: rank 0's four images, then rank 1's
        assert shards[0][4 * step:4 * step + 4] + shards[1][4 * step:4 * step + 4] == order[8 * step:8 * step + 8]
    _as_rank(monkeypatch, 0, 16)
    with pytest.raises(ValueError, match="fewer than one global batch .* lower data.batch_size"):
        list(EpochShuffle(data, batch_size=4))


def test_several_launched_processes_need_one_run_dir(monkeypatch, tiny_config):
    from selfsup.train.workdir import new_run_dir

    monkeypatch.delenv("SELFSUP_RUN_DIR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="pass the same --run-dir to every process"):
        new_run_dir(tiny_config())
    monkeypatch.setenv("SELFSUP_RUN_DIR", "/shared/runs/x")
    assert new_run_dir(tiny_config()) == Path("/shared/runs/x")


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_auto_is_float32_on_every_cpu(monkeypatch, native_bf16):
    """CPUs get 32-true from auto, with native bf16 (AVX512-BF16, AMX: forced on) or without
    (forced off): bf16 autocast measured no faster and not stable there
    (benchmarks/results/precision.md). bf16 asked for explicitly is honoured, with one warning
    line that says why and names the fix."""
    from selfsup.train import precision as run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(run, "cpu_has_bf16", lambda: native_bf16)
    said = []
    for accelerator in ("auto", "cpu"):
        assert run.resolve_precision("auto", accelerator, warn=said.append) == "32-true"
        assert run.resolve_precision("32-true", accelerator, warn=said.append) == "32-true"
    assert said == []
    assert run.resolve_precision("bf16-mixed", "cpu", warn=said.append) == "bf16-mixed"
    assert run.resolve_precision("bf16-true", "auto", warn=said.append) == "bf16-true"
    assert len(said) == 2 and not any("\n" in line for line in said)
    assert said[0].startswith("trainer.precision=bf16-mixed on a CPU: oneDNN's bf16 convolution weight-gradient")
    assert said[1].startswith("trainer.precision=bf16-true on a CPU:")
    assert said[0].endswith("trainer.precision=32-true (what auto picks on CPUs) avoids both")
    assert ("1.02x the float32 rate" in said[0]) == native_bf16 and ("emulated" in said[0]) != native_bf16
    with pytest.warns(run.PrecisionWarning, match=r"^trainer\.precision=bf16-mixed on a CPU: .*32-true"):
        assert run.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_precision_auto_on_gpus(monkeypatch):
    """GPUs keep bf16 autocast where they support it (Ampere and later) and fp16 with loss
    scaling before; the CPU's bf16 support plays no part, and nothing is warned."""
    from selfsup.train import precision as run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    said = []
    for native_bf16 in (True, False):
        monkeypatch.setattr(run, "cpu_has_bf16", lambda: native_bf16)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        assert run.resolve_precision("auto", warn=said.append) == "bf16-mixed"
        assert run.resolve_precision("auto", "gpu", warn=said.append) == "bf16-mixed"
        assert run.resolve_precision("bf16-mixed", "cuda", warn=said.append) == "bf16-mixed"
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        assert run.resolve_precision("auto", "gpu", warn=said.append) == "16-mixed"
        assert run.resolve_precision("32-true", "gpu", warn=said.append) == "32-true"
    assert said == []
    # a CPU run on a machine that has a GPU is a CPU run
    assert run.resolve_precision("auto", "cpu", warn=said.append) == "32-true"
    assert run.resolve_precision("bf16-mixed", "cpu", warn=said.append) == "bf16-mixed" and len(said) == 1


def test_fsdp_wraps_each_vit_block_and_refuses_momentum_teachers(tiny_config):
    from timm.models.vision_transformer import Block

    from selfsup.config import ConfigError
    from selfsup.train.module import PretrainModule
    from selfsup.train.run import fsdp_strategy

    from conftest import TINY_INFO

    mae = tiny_config("trainer.strategy=fsdp", method="mae")
    strategy = fsdp_strategy(PretrainModule(mae, TINY_INFO), mae)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    moco = tiny_config("trainer.strategy=fsdp", method="moco")
    with pytest.raises(ConfigError, match="momentum teacher .* use trainer.strategy=ddp"):
        fsdp_strategy(PretrainModule(moco, TINY_INFO), moco)
