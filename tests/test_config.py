"""The config schema: defaults fill every key; bad values are named."""

import copy
import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from srsmlm.errors import ConfigKeyError
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


def _simulation(section, cfg):
    """SimulationParams as the simulate rule builds them (its camera is the config's)."""
    from srsmlm.simulate import SimulationParams

    sim = {**section, "camera": cfg["camera"]}
    return SimulationParams.from_config(sim, Geometry.from_config(cfg), 2000.0)


def _from_section(module, name):
    def build(section, cfg):
        return getattr(importlib.import_module(module), name).from_config(section)

    return build


#: (config section, how the pipeline builds its dataclass from (section, whole config), the
#: dataclass's fields that are no key of the section, the section's keys that are no field)
DATACLASSES = [
    pytest.param(
        "patches", _from_section("srsmlm.patches", "PatchParams"), set(), set(), id="patches"
    ),
    pytest.param(
        "model",
        _from_section("srsmlm.model", "ModelConfig"),
        set(),
        set(),
        id="model",
        marks=pytest.mark.tf,
    ),
    pytest.param(
        "training",
        _from_section("srsmlm.training", "TrainingConfig"),
        set(),
        set(),
        id="training",
        marks=pytest.mark.tf,
    ),
    pytest.param(
        "simulation",
        _simulation,
        {"geometry", "mean_photons", "camera_type", "gain", "offset_adu", "read_noise_adu"},
        {"acquisitions", "pixel_size_nm"},  # the simulate rule reads these itself
        id="simulation",
    ),
]


def _schema_keys(section):
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    return set(schema["properties"][section]["properties"])


@pytest.mark.parametrize("section, build, not_keys, not_fields", DATACLASSES)
def test_config_dataclasses_take_every_key_from_their_section(section, build, not_keys, not_fields):
    if section in ("model", "training"):
        pytest.importorskip("keras")
    defaults = {}
    validate(defaults, SCHEMA, set_default=True)
    configured = load_default()
    validate(configured, SCHEMA, set_default=True)
    built = build(defaults[section], defaults)
    assert built == build(configured[section], configured)
    fields = {f.name for f in dataclasses.fields(built)}
    keys = _schema_keys(section)
    assert fields - not_keys == keys - not_fields  # each field a key of the section, and back
    assert not_keys <= fields and not (not_keys & keys) and not_fields <= keys
    if section == "simulation":  # the camera fields are the camera: section's keys
        from srsmlm.simulate import CAMERA_FIELDS

        assert set(CAMERA_FIELDS.values()) == _schema_keys("camera")
        assert {k: getattr(built, f) for f, k in CAMERA_FIELDS.items()} == defaults["camera"]


@pytest.mark.parametrize("section, build, not_keys, not_fields", DATACLASSES)
def test_a_missing_key_is_named_on_one_line(section, build, not_keys, not_fields):
    if section in ("model", "training"):
        pytest.importorskip("keras")
    cfg = {}
    validate(cfg, SCHEMA, set_default=True)
    built = build(cfg[section], cfg)
    for key in sorted(_schema_keys(section) - not_fields):
        values = {k: v for k, v in cfg[section].items() if k != key}
        with pytest.raises(ConfigKeyError) as info:
            build(values, cfg)
        message = str(info.value)
        assert isinstance(info.value, KeyError) and "\n" not in message
        assert message.startswith(f"{section}.{key} missing from the config section")
    # no defaults of their own: the schema holds them all
    for field in dataclasses.fields(built):
        assert field.default is field.default_factory is dataclasses.MISSING, field.name


def test_simulation_needs_the_camera_section():
    from srsmlm.simulate import SimulationParams

    cfg = {}
    validate(cfg, SCHEMA, set_default=True)
    camera = {k: v for k, v in cfg["camera"].items() if k != "offset_adu"}
    with pytest.raises(ConfigKeyError, match=r"^camera\.offset_adu missing"):
        SimulationParams.from_config(
            {**cfg["simulation"], "camera": camera}, Geometry.from_config(cfg), 1.0
        )
    with pytest.raises(ConfigKeyError, match=r"^camera\.type, camera\.gain_adu_per_photon"):
        SimulationParams.from_config(cfg["simulation"], Geometry.from_config(cfg), 1.0)


def test_every_patch_target_is_described_for_model_json():
    """model.json records patches.target with its description (workflow/rules/common.smk)."""
    from srsmlm.plan import TARGETS

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert set(TARGETS) == set(schema["properties"]["patches"]["properties"]["target"]["enum"])
    assert all(TARGETS.values())
