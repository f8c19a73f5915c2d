"""No path in selfsup unpickles code: a checkpoint whose pickle would run code (it creates
a marker file when unpickled) is refused with a clear error, and the marker never appears."""

from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.export import LoadError, load_checkpoint, load_encoder


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling calls open(marker, "w"): the file appears


@pytest.fixture()
def evil_run(tmp_path):
    marker = tmp_path / "code-ran"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "selfsup": _RunsCodeWhenUnpickled(marker)}, ckpt)
    # the pickle really does run code when loaded without weights_only
    torch.load(ckpt, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return run, ckpt, marker


def test_load_checkpoint_refuses_code(evil_run):
    run, ckpt, marker = evil_run
    with pytest.raises(LoadError, match=r"refusing to load .*last.ckpt': its pickle would import and call "
                                        r"\S*open\. selfsup only loads checkpoints that need no code to unpickle"):
        load_checkpoint(ckpt)
    with pytest.raises(LoadError, match="need no code"):
        load_encoder(run)
    assert not marker.exists()


def test_cli_refuses_code(evil_run, capsys):
    run, ckpt, marker = evil_run
    assert main(["eval", str(ckpt)]) == 2
    assert main(["export", str(run), str(run.parent / "export")]) == 2
    err = capsys.readouterr().err
    assert "need no code to unpickle" in err and "weights_only" not in err  # not torch's advice to disable the check
    assert not marker.exists()
