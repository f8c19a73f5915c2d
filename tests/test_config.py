"""Config errors name the key; overrides reach nested keys; the resolved config round-trips."""

import pytest
import yaml

from conftest import ROOT
from selfsup.config import ConfigError, dump_yaml, load_config
from selfsup.methods.simclr import SimCLRConfig


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_misspelled_key_names_key_and_closest(tmp_path):
    p = write(tmp_path, "method: {name: simclr, temprature: 0.2}\n")
    with pytest.raises(ConfigError, match=r"'method.temprature'.*did you mean 'method.temperature'"):
        load_config(p)


def test_misspelled_section_and_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'optimm'.*did you mean 'optim'"):
        load_config(write(tmp_path, "method: {name: simclr}\noptimm: {lr: 0.1}\n"))
    with pytest.raises(ConfigError, match=r"'trainer.max_epoch'.*'trainer.max_epochs'"):
        load_config(None, ["method.name=simclr", "trainer.max_epoch=3"])


@pytest.mark.parametrize("override, key", [
    ("optim.lr=-0.1", "optim.lr"),
    ("method.temperature=0", "method.temperature"),
    ("trainer.max_epochs=abc", "trainer.max_epochs"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs"),
    ("data.batch_size=true", "data.batch_size"),
    ("optim.name=adam", "optim.name"),
    ("optim.lr=1e", "optim.lr"),
    ("optim.lr=e-3", "optim.lr"),
    ("method.augment.crop_scale=[0.5]", "method.augment.crop_scale"),
    ("eval.knn=[]", "eval"),  # was refused only after pretraining and extraction
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["method.name=simclr", override])


def test_inconsistent_section_is_an_error():
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(None, ["method.name=simclr", "method.augment.crop_scale=[0.9, 0.2]"])


def test_unknown_method_suggests():
    with pytest.raises(ConfigError, match="(?i)did you mean 'simclr'"):
        load_config(None, ["method.name=simclrr"])


def test_overrides_apply_and_types_are_checked(tmp_path):
    p = write(tmp_path, "method: {name: simclr}\ntrainer: {max_epochs: 10}\n")
    cfg = load_config(p, ["method.temperature=0.2", "trainer.max_epochs=3", "method.augment.crop_scale=[0.2, 1]",
                          "encoder.kwargs.drop_rate=0.1"])
    assert isinstance(cfg.method, SimCLRConfig)
    assert cfg.method.temperature == 0.2
    assert cfg.trainer.max_epochs == 3
    assert cfg.method.augment.crop_scale == (0.2, 1.0)
    assert cfg.encoder.kwargs == {"drop_rate": 0.1}
    assert cfg.optim.lr == 0.3  # untouched default


def test_exponent_floats_that_yaml_reads_as_strings_are_floats(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 without a dot as a string; float keys accept it."""
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"
    p = write(tmp_path, "method: {name: simclr}\noptim: {lr: 1e-3, weight_decay: 5E-4}\n")
    cfg = load_config(p, ["method.temperature=2e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.method.temperature) == (0.001, 0.0005, 0.2)
    with pytest.raises(ConfigError, match=r"'optim.lr' must be > 0, got -0.001"):
        load_config(None, ["method.name=simclr", "optim.lr=-1e-3"])
    with pytest.raises(ConfigError, match=r"'data.batch_size' must be int"):  # only float keys
        load_config(None, ["method.name=simclr", "data.batch_size=1e3"])
    for huge in ("1e999", ".inf", ".nan", "nan", "-inf", "Infinity"):  # overflow, YAML's inf and NaN, and the
        # spellings YAML reads as text (they used to get "must be float, got 'nan' (str)")
        with pytest.raises(ConfigError, match=r"'optim.lr' must be a finite number"):
            load_config(None, ["method.name=simclr", f"optim.lr={huge}"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["method.name=simclr", "method.temperature=0.3", "eval.knn=[[10, 0.05]]"])
    text = dump_yaml(cfg)
    assert yaml.safe_load(text)["method"]["name"] == "simclr"
    again = load_config(write(tmp_path, text))
    assert again == cfg


def test_shipped_configs_load():
    from conftest import ROOT

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_a_method_override_on_another_methods_file_names_where_the_key_came_from():
    """The tour's case: `selfsup pretrain configs/quickstart.yaml method.name=rotation` said only
    "unknown config key 'method.temperature'", a key the user never typed."""
    quickstart = ROOT / "configs" / "quickstart.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(quickstart, ["method.name=rotation"])
    message = str(err.value)
    assert message.startswith("unknown config key 'method.temperature': valid keys in 'method': ")
    assert f"That key comes from {quickstart}, a simclr config: method.name=rotation keeps its method section" in message
    assert "configs/rotation-*.yaml" in message and "\n" not in message
    # a key the override itself got wrong is not blamed on the file
    with pytest.raises(ConfigError) as err:
        load_config(quickstart, ["method.temperatur=0.1"])
    assert "comes from" not in str(err.value)
    # the same method with keys that fit loads
    assert load_config(quickstart, ["method.name=simclr"]).method.temperature == 0.2


def test_a_directory_given_as_the_config_file_says_so(tmp_path):
    """The tour's case: `selfsup pretrain RUN_DIR` said the (existing) path does not exist."""
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value) == (f"config file {str(tmp_path)!r} is a directory: give a YAML file (a run's own is "
                              f"{str(tmp_path / 'config.yaml')!r}), or continue that run with --resume {tmp_path}")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_an_unquoted_trailing_colon_is_told_to_be_quoted():
    """helper-56's: `eval.baselines=[random:resnet18, random:]` said "must be str, got {'random': None} (dict)":
    YAML reads `random:` as a one-key mapping. The message says so and how to quote it; a real mapping where a
    string belongs keeps the plain message."""
    with pytest.raises(ConfigError) as info:
        load_config(None, ["method.name=simclr", "eval.baselines=[random:resnet18, random:]"])
    assert str(info.value) == ("config key 'eval.baselines[1]' must be str, got {'random': None} (dict); YAML reads an "
                               "unquoted `random:` as a mapping, so quote it: 'random:'")
    assert load_config(None, ["method.name=simclr", "eval.baselines=['random:']"]).eval.baselines == ["random:"]
    with pytest.raises(ConfigError) as info:
        load_config(None, ["method.name=simclr", "eval.baselines=[{a: 1}]"])
    assert "YAML reads" not in str(info.value)
