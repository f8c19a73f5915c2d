"""``selfsup pretrain`` with every training step recorded, for the resume tests.

Run as a script, ``python tests/spy_pretrain.py pretrain ...`` with ``SELFSUP_SPY_DIR`` set:
each process (Lightning's DDP launcher re-runs this same script for the other ranks) appends
the ``global_step`` of each ``PretrainModule.training_step`` call to
``$SELFSUP_SPY_DIR/steps-rank<r>.txt`` and saves the module's state_dict as it is at its
first call to ``first-rank<r>.pt``. A resumed run then shows which steps it trained and
from which weights, which the final checkpoint alone cannot: a run restarted from step 0
with the same seed ends at the same step with the same weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

SPY_ENV = "SELFSUP_SPY_DIR"
SCRIPT = Path(__file__).resolve()


def install(out: Path) -> None:
    from selfsup.train.module import PretrainModule

    real = PretrainModule.training_step

    def spy(self, batch, batch_idx):
        steps = out / f"steps-rank{self.global_rank}.txt"
        if not steps.exists():
            state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
            torch.save(state, out / f"first-rank{self.global_rank}.pt")
        with steps.open("a") as f:
            f.write(f"{self.global_step}\n")
        return real(self, batch, batch_idx)

    PretrainModule.training_step = spy


def recorded(out: Path, rank: int = 0) -> tuple[list[int], dict[str, torch.Tensor]]:
    """The global steps that ``rank`` trained, in order, and its state at the first one."""
    steps = [int(s) for s in (out / f"steps-rank{rank}.txt").read_text().split()]
    return steps, torch.load(out / f"first-rank{rank}.pt", weights_only=True)


def assert_resumed_from(out: Path, checkpoint: dict, final_step: int, ranks: int = 1) -> None:
    """Every rank of the resumed run trained exactly the steps from the checkpoint's
    ``global_step`` to ``final_step``, starting from the checkpoint's weights and buffers."""
    for rank in range(ranks):
        steps, first = recorded(out, rank)
        assert steps == list(range(checkpoint["global_step"], final_step)), (
            f"rank {rank} trained steps {steps[0]}..{steps[-1]} ({len(steps)} calls), expected "
            f"{checkpoint['global_step']}..{final_step - 1}")
        assert first.keys() == checkpoint["state_dict"].keys()
        for key, value in checkpoint["state_dict"].items():
            assert torch.equal(first[key], value), f"rank {rank}: {key} differs from the checkpoint"


if __name__ == "__main__":
    install(Path(os.environ[SPY_ENV]))
    from selfsup.cli import main

    sys.exit(main(sys.argv[1:]))
