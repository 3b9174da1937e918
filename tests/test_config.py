"""The config schema: defaults fill every key; bad values are named."""

import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from srsmlm.geometry import Geometry

from .conftest import REPO

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def load_default():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_complete():
    cfg = load_default()
    validate(cfg, SCHEMA, set_default=True)
    assert Geometry.from_config(cfg).shape == (16, 64)
    assert cfg["clustering"] == {"eps": 0.001, "min_samples": 3, "min_run_length": 9}


def test_empty_config_gets_defaults():
    cfg = {}
    validate(cfg, SCHEMA, set_default=True)
    assert cfg["geometry"]["spectral_offset"] == 230
    assert cfg["patches"]["amp_factor"] == 0.5
    assert cfg["training"]["batch_size"] == 80


def test_config_yaml_matches_schema_defaults():
    """Every key in config.yaml is also defaulted in the schema, to the same value."""
    cfg = load_default()
    defaults = {}
    validate(defaults, SCHEMA, set_default=True)
    for section, values in cfg.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert defaults[section][key] == value, f"{section}.{key}"
        else:
            assert defaults[section] == values, section


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("clustering", "min_samples", 0),
        ("geometry", "height", "sixteen"),
        ("patches", "offset_jitter", [1]),
        ("model", "output_activation", "softmax"),
        ("filter", "bogus_key", 1),
    ],
)
def test_invalid_values_name_the_key(section, key, value):
    cfg = copy.deepcopy(load_default())
    cfg[section][key] = value
    with pytest.raises(WorkflowError) as info:
        validate(cfg, SCHEMA, set_default=True)
    assert key in str(info.value)


def test_geometry_rejects_bad_values():
    with pytest.raises(ValueError):
        Geometry(16, 16, 48, 4)
    with pytest.raises(ValueError):
        Geometry(1, 16, 48, 230)
