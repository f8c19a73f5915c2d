"""eval.knn pairs are checked when the config loads, not after hours of pretraining."""

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
