"""End to end through the command line: pretrain -> eval -> export on sklearn digits."""

import json
import statistics

import pytest

from selfsup.cli import main

TINY = ["data.name=digits", "data.image_size=16", "data.batch_size=64",
        "encoder.kwargs={channels: [8, 16, 32, 64], stem_width: 8}", "trainer.progress_bar=false",
        "eval.linear_epochs=5", "eval.linear_lrs=[0.1]", "eval.linear_wds=[0.0]", "eval.low_shot=[0.1]",
        "eval.probe_seeds=2"]


def test_pretrain_eval_export(tmp_path, capsys):
    from conftest import ROOT

    run_dir = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run_dir),
                 "trainer.max_epochs=1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "| SimCLR resnet18 (pretrained) |" in out and "| raw pixels |" in out and "| random-init resnet18 |" in out
    rows = json.loads((run_dir / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["pretrained", "random", "pixels"]
    for r in rows:
        assert 0 < r["knn"]["k=20,T=0.07"]["top1"] <= 100 and 0 < r["linear"]["top1"] <= 100
        low = r["linear_10pct"]  # class-balanced 10% subsets, two seeds
        assert low["seeds"] == 2 and len(low["top1_per_seed"]) == 2 and low["fraction"] == 0.1
        assert abs(low["top1_std"] - statistics.stdev(low["top1_per_seed"])) < 1e-9
        assert "linear_sklearn" in r  # digits is small enough for the scikit-learn cross-check
    assert "linear top-1, 10% labels" in (run_dir / "results.md").read_text()
    assert rows[2]["knn"]["k=20,T=0.07"]["top1"] > 90  # pixels on digits are a strong baseline
    assert (run_dir / "results.md").is_file() and (run_dir / "export" / "model.safetensors").is_file()
    card = json.loads((run_dir / "export" / "config.json").read_text())
    assert "SimCLR resnet18 (pretrained)" in card["results"]

    assert main(["eval", str(run_dir / "export"), "--out", str(tmp_path / "ev"), "--baseline", "pixels", *TINY[:3]]) == 0
    ev = json.loads((tmp_path / "ev" / "results.json").read_text())
    # the export is the same encoder as the run: identical kNN result
    assert ev[0]["knn"] == rows[0]["knn"]
    assert main(["export", str(run_dir), str(tmp_path / "exp2")]) == 0
    assert (tmp_path / "exp2" / "config.json").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="give a config file"):
        main(["pretrain", "--run-dir", str(tmp_path / "r"), "method.name=simclr"])
    from conftest import ROOT

    assert main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "method.temprature=0.1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'method.temperature'" in err
    assert main(["eval", "nothing-here"]) == 2
    assert "neither a path" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["pretrain", "eval", "export", "list"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: selfsup" in capsys.readouterr().out
