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


LAUNCH_VARS = ("MASTER_ADDR", "NODE_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK",
               "LOCAL_WORLD_SIZE", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID")
NODES = (r"^trainer.num_nodes=2 asks for 2 machines, and no launcher started this process as one of them \(torchrun, "
         r"SLURM's srun, LSF's jsrun, MPI; or NODE_RANK and MASTER_ADDR set by hand\), so it would wait for the others "
         r"without end: start one process per device on each machine .*, or set trainer.num_nodes=1$")


@pytest.fixture
def no_launcher(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_several_machines_without_a_launcher_are_refused_not_waited_for(no_launcher, tmp_path, capsys):
    """trainer.num_nodes=2 started by hand on one machine: Lightning waited for the second machine without end
    (no output, no error). Refused in one line before anything is written, for pretraining and transfer."""
    from selfsup.cli_eval import transfer_trainer
    from selfsup.train.resume import check_nodes, node_launcher

    assert node_launcher() is None
    check_nodes(1)
    with pytest.raises(ConfigError, match=NODES):
        check_nodes(2)
    run = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "data.name=digits",
                 "data.image_size=16", "trainer.max_steps=1", "--no-eval", "trainer.num_nodes=2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "trainer.num_nodes=2 asks for 2 machines" in err, err
    assert not run.exists()
    cfg = load_config(None, ["method.name=simclr", "trainer.num_nodes=2"])
    with pytest.raises(ConfigError, match=NODES):
        transfer_trainer(cfg, SimpleNamespace(batch_size=8, protocol="finetune"), say=lambda m: None)


@pytest.mark.parametrize("env, launcher", [
    ({"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "1"}, "NODE_RANK and MASTER_ADDR"),  # Lightning's own, by hand
    ({"MASTER_ADDR": "10.0.0.1", "GROUP_RANK": "0"}, "NODE_RANK and MASTER_ADDR"),
    # torchrun's variables (torch.distributed.is_torchelastic_launched reads TORCHELASTIC_RUN_ID)
    ({"TORCHELASTIC_RUN_ID": "abc", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"},
     "TorchElasticEnvironment"),
    ({"LSB_JOBID": "1", "LSB_DJOB_RANKFILE": "/f", "JSM_NAMESPACE_LOCAL_RANK": "0", "JSM_NAMESPACE_SIZE": "2"},
     "LSFEnvironment"),
])
def test_a_launcher_lets_several_machines_through(no_launcher, env, launcher):
    from selfsup.train.resume import check_nodes, node_launcher

    for var, value in env.items():
        no_launcher.setenv(var, value)
    assert node_launcher() == launcher
    check_nodes(2)
    no_launcher.delenv("MASTER_ADDR", raising=False)  # NODE_RANK alone names no machine to meet at
    if launcher == "NODE_RANK and MASTER_ADDR":
        assert node_launcher() is None
