"""Shared fixtures. Tests run on CPU with few threads so the suite fits on 2 cores."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ssl"
if str(SRC) not in sys.path:  # tests also run without `pip install -e .`
    sys.path.insert(0, str(SRC))

torch.set_num_threads(2)

import lightning.pytorch  # noqa: E402,F401
from selfsup.data import DataInfo  # noqa: E402

# (Lightning gives its logger a StreamHandler on the sys.stderr of its first import: first imported inside a test
# that captures with capsys, the handler kept that test's stream, closed after it, and every later Lightning line
# printed a "Logging error" traceback into the next test's stderr; imported here, it binds the session's stream.)

# What a method sees of tiny 16x16 grayscale data (256 training images).
TINY_INFO = DataInfo(in_chans=1, image_size=16, num_classes=10, mean=(0.3,), std=(0.3,), num_samples=256)


@pytest.fixture
def tiny_config():
    """A RunConfig for fast runs on sklearn's digits (8x8, resized to 16): a tiny ResNet-18,
    or a tiny ViT (patch 4, 2 blocks, 32 wide) for methods that require one (``requires_vit``)."""
    from selfsup.config import load_config
    from selfsup.methods import METHODS

    def make(*overrides: str, method: str = "simclr"):
        if method in METHODS and METHODS.get(method).requires_vit:
            encoder = ["encoder.name=vit_tiny_patch16_224",
                       "encoder.kwargs={img_size: 16, patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}"]
        else:
            encoder = ["encoder.name=resnet18", "encoder.kwargs={channels: [8, 16, 32, 64]}"]
        return load_config(None, [
            f"method.name={method}", "data.name=digits", "data.image_size=16", "data.batch_size=64",
            *encoder, "trainer.max_epochs=1", "trainer.progress_bar=false", "eval.linear_epochs=5",
            "eval.linear_lrs=[0.1]", "eval.linear_wds=[0.0]", "eval.low_shot=[]", "eval.probe_seeds=1", *overrides])

    return make


def one_line_error(err: str) -> str:
    """The one line a CLI error writes to stderr (fails on a traceback or on several lines)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def with_overrides(base: list[str], *extra: str) -> list[str]:
    """``base`` overrides with those of ``extra`` in place of the ones setting the same key (the CLI
    refuses a key given twice)."""
    keys = {e.partition("=")[0] for e in extra}
    return [b for b in base if b.partition("=")[0] not in keys] + list(extra)


@contextlib.contextmanager
def lock_held_elsewhere(run: Path) -> Iterator[int]:
    """Run directory ``run``'s lock held by another process (as `selfsup pretrain` training it holds it) for
    the block; yields that process's pid, which is killed at the end."""
    import subprocess

    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom selfsup.fileio import file_lock\n"
        f"with file_lock({str(Path(run) / '.lock')!r}):\n    print('held', flush=True)\n    time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
