"""eval.knn pairs are checked when the config loads, not after hours of pretraining."""

import math
import re

import pytest

from selfsup.config import ConfigError, load_config


@pytest.mark.parametrize("override, message", [
    ("eval.knn=[[20,0]]", "the temperature must be a finite number > 0, got 0.0"),
    ("eval.knn=[[20,-0.1]]", "the temperature must be a finite number > 0, got -0.1"),
    ("eval.knn=[[0,0.1]]", "k must be a whole number >= 1, got 0"),
    ("eval.knn=[[20,0.07],[-5,0.1]]", "k must be a whole number >= 1, got -5"),
    ("eval.knn=[[20,.inf]]", "must be a finite number, got inf"),
])
def test_bad_knn_pairs_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match="eval") as err:
        load_config("configs/quickstart.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_knn_pairs_load_as_given():
    cfg = load_config("configs/quickstart.yaml", ["eval.knn=[[1,1e-4],[500,1e4]]"])
    assert [tuple(p) for p in cfg.eval.knn] == [(1, 1e-4), (500, 1e4)]


@pytest.mark.parametrize("override, message", [  # helper-37's: accepted, then a wrong probe or a crash
    ("eval.linear_lrs=[-1]", "config key 'eval.linear_lrs' must hold values > 0, got -1.0 in [-1.0]"),
    ("eval.linear_lrs=[0.1, 0]", "config key 'eval.linear_lrs' must hold values > 0, got 0.0 in [0.1, 0.0]"),
    ("eval.linear_wds=[-1e-4]", "config key 'eval.linear_wds' must hold values >= 0, got -0.0001 in [-0.0001]"),
    ("eval.linear_lrs=[]", "linear_lrs and linear_wds must each hold at least one value"),
    ("eval.low_shot=[1.5]", "config key 'eval.low_shot' must hold values < 1, got 1.5 in [1.5]"),
    # all labels always run: 1 ran the all-labels probe a second time; a repeated value was dropped silently
    ("eval.low_shot=[1]", "config key 'eval.low_shot' must hold values < 1, got 1.0 in [1.0]"),
    ("eval.low_shot=[0.5, 0.5]", "config key 'eval.low_shot' holds 0.5 twice in [0.5, 0.5]: give each value once"),
    ("eval.linear_lrs=[0.1, 0.3, 0.1]", "config key 'eval.linear_lrs' holds 0.1 twice in [0.1, 0.3, 0.1]"),
    ("eval.linear_wds=[0, 0.0]", "config key 'eval.linear_wds' holds 0.0 twice in [0.0, 0.0]"),
    # siblings the tour found: a repeated kNN setting or stage was scored once without a word
    ("eval.knn=[[20, 0.07], [200, 0.1], [20, 0.07]]", "knn: [20, 0.07] is given twice in"),
    ("eval.layers=[layer3, layer3]", "layers: 'layer3' is given twice in ['layer3', 'layer3']: give each once"),
    ("eval.low_shot=[0]", "config key 'eval.low_shot' must hold values > 0, got 0.0 in [0.0]"),
    ("eval.low_shot=[0.1, -0.1]", "config key 'eval.low_shot' must hold values > 0, got -0.1 in [0.1, -0.1]"),
])
def test_bad_probe_grids_and_fractions_are_refused_at_load(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/quickstart.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_probe_grids_and_fractions_load():
    cfg = load_config("configs/quickstart.yaml", ["eval.linear_lrs=[3e-4]", "eval.linear_wds=[0]",
                                                  "eval.low_shot=[0.99]"])
    assert (cfg.eval.linear_lrs, cfg.eval.linear_wds, cfg.eval.low_shot) == ([3e-4], [0.0], [0.99])


@pytest.mark.parametrize("override", ["optim.lr=1e300", "optim.weight_decay=1e-300", "method.temperature=1e39",
                                      "eval.linear_lrs=[0.1, 1e300]", "eval.linear_wds=[1e-50]", "optim.lr=-4e38"])
def test_a_number_float32_cannot_hold_is_refused_at_load(override):
    """`--transfer lrs=[1e300]` crashed Adam's float32 step with a traceback; 1e-300 rounds to 0 in float32 and
    trains nothing. Every float key is read as a number float32 holds, in one line naming the key."""
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^config key '{re.escape(key)}(\[\d\])?' must be a number float32 holds "
                                          r"\(0, or of size 1.4e-45 to 3.4e38: training computes in float32\), got "):
        load_config("configs/quickstart.yaml", [override])


def test_float32_holds_what_torch_keeps_in_size():
    """fits_float32 against torch's own float32 rounding: overflow to inf and a nonzero flushed to 0 are refused."""
    import torch

    from selfsup.configread import fits_float32

    for x in (0.0, -0.0, 1e-45, 2e-45, 1.2e-38, 1e-3, 3.4e38, -3.4e38, 3.41e38, 1e39, 1e-46, -1e-46, 1e300, 1e-300):
        rounded = torch.tensor(x, dtype=torch.float64).float().item()
        assert fits_float32(x) == (math.isfinite(rounded) and (rounded != 0 or x == 0)), x


def test_transfer_rates_float32_cannot_hold_are_one_line():
    from selfsup.cli_eval import transfer_options

    cfg = load_config("configs/quickstart.yaml", [])
    for pairs, key in ((["lrs=[1e-3, 1e300]"], "transfer.lrs[1]"), (["lr=1e-300"], "transfer.lr")):
        with pytest.raises(ConfigError, match=rf"^config key '{re.escape(key)}' must be a number float32 holds"):
            transfer_options("linear", pairs, cfg)
    with pytest.raises(ConfigError, match=r"^--transfer lr must be a number, got 'abc'"):
        transfer_options("linear", ["lr=abc"], cfg)


BIG = "1" + "0" * 400  # YAML reads it as a 401-digit int


@pytest.mark.parametrize("override, message", [
    # helper-52's traceback: float(10**400) overflowed inside the finiteness check
    (f"optim.lr={BIG}", r"^config key 'optim.lr' must be a number float32 holds \(0, or of size 1.4e-45 to 3.4e38: "
                        r"training computes in float32\), got 1000000000...000000 \(401 characters\)$"),
    # an int key beyond int64: refused when read, not when torch or Lightning converts it
    (f"trainer.max_epochs={BIG}", r"^config key 'trainer.max_epochs' must be a whole number int64 holds \(below "
                                  r"9.2e18 in size\), got 1000000000...000000 \(401 characters\)$"),
    # helper-52's: a key typed as a union listed its types ("must be float | None") for a number it cannot hold
    ("method.temperature=1e300", r"^config key 'method.temperature' must be a number float32 holds .*got 1e\+300$"),
    ("trainer.limit_train_batches=1e-300", r"^config key 'trainer.limit_train_batches' must be a number float32 holds"),
    ("method.temperature=nan", r"^config key 'method.temperature' must be a finite number, got 'nan'$"),
    ("method.temperature=abc", r"^config key 'method.temperature' must be float \| None, got 'abc' \(str\)$"),
    # helper-53's: an int | float key took an int beyond int64 as a float
    ("trainer.limit_train_batches=99999999999999999999", r"^config key 'trainer.limit_train_batches' must be a whole "
                                                          r"number int64 holds"),
])
def test_numbers_a_key_cannot_hold_say_so_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/mocov3-fashion-mnist.yaml", [override])
    assert load_config("configs/mocov3-fashion-mnist.yaml", ["trainer.max_epochs=9223372036854775807"])
