"""``trainer.devices`` that Lightning refuses with a traceback (0, -2, a word, repeated indices; -1 or
GPU indices on the CPU) are one-line ConfigErrors before anything is written, for pretraining and
for the transfer protocols."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT
from selfsup.cli import main
from selfsup.config import ConfigError, load_config
from selfsup.train.resume import check_devices, runs_on_cpu

FORM = (r"^config section 'trainer': devices must be a process count >= 1, 'auto', -1 \(every GPU\) or distinct "
        r"GPU indices like '0,1', got ")


@pytest.mark.parametrize("devices", ["0", "-2", "abc", "0,x", "0,0", "' '", "',1'", "'1,,'"])
def test_malformed_devices_are_refused_when_the_config_loads(devices):
    with pytest.raises(ConfigError, match=FORM):
        load_config(None, ["method.name=simclr", f"trainer.devices={devices}"])


@pytest.mark.parametrize("devices", ["1.5", "true"])
def test_devices_of_another_type_name_the_key(devices):
    with pytest.raises(ConfigError, match=r"^config key 'trainer.devices' must be int \| str, got "):
        load_config(None, ["method.name=simclr", f"trainer.devices={devices}"])


@pytest.mark.parametrize("devices, expected", [("1", 1), ("2", 2), ("auto", "auto"), ("-1", -1), ("'0,1'", "0,1"),
                                               ("'3'", "3"), ("'1,'", "1,")])  # '1,': Lightning's GPU 1
def test_valid_forms_load_unchanged(devices, expected):
    assert load_config(None, ["method.name=simclr", f"trainer.devices={devices}"]).trainer.devices == expected


@pytest.mark.parametrize("devices, named", [(-1, "every GPU"), ("-1", "every GPU"), ("0,1", "GPU indices"),
                                            ("1,", "GPU indices")])
def test_gpu_devices_on_the_cpu_are_refused(devices, named):
    with pytest.raises(ConfigError, match=rf"^trainer.devices={devices} names GPUs \({named}\) and this run is on the "
                                          r"CPU \(trainer.accelerator=cpu\): set trainer.devices to a process count"):
        check_devices(devices, "cpu")
    check_devices(devices, "gpu")  # Lightning's to judge on a GPU accelerator
    for fine in (1, 2, "2", "auto"):
        check_devices(fine, "cpu")


def test_auto_accelerator_is_the_cpu_only_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runs_on_cpu("auto") and runs_on_cpu("cpu") and not runs_on_cpu("gpu")
    with pytest.raises(ConfigError, match=r"CPU \(no GPU was found\)"):
        check_devices(-1, "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not runs_on_cpu("auto")
    check_devices(-1, "auto")


@pytest.mark.parametrize("devices", ["0", "-1", "0,1"])
def test_pretrain_refuses_in_one_line_and_writes_nothing(tmp_path: Path, capsys, devices, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "data.name=digits",
                 "data.image_size=16", "trainer.max_steps=1", "--no-eval", f"trainer.devices={devices}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "trainer" in err, err
    assert not run.exists()


def test_transfer_trainer_checks_devices_before_any_data(monkeypatch):
    from selfsup.cli_eval import transfer_trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, ["method.name=simclr", "trainer.devices=-1"])
    with pytest.raises(ConfigError, match=r"^trainer.devices=-1 names GPUs"):
        transfer_trainer(cfg, SimpleNamespace(batch_size=8, protocol="finetune"), say=lambda m: None)
