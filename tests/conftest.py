"""Shared fixtures: small simulated acquisitions and hand-made files."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from srsmlm.geometry import Geometry
from srsmlm.simulate import SimulationParams, simulate_acquisition

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def _default_config() -> dict[str, Any]:
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(cfg, str(SCHEMA), set_default=True)
    return cfg


def default_config() -> dict[str, Any]:
    """config/config.yaml as the pipeline's scripts see it (validated against the schema, its
    defaults filled in); a fresh copy on every call."""
    return copy.deepcopy(_default_config())


def section(name: str, **overrides: Any) -> dict[str, Any]:
    """One section of :func:`default_config`, with ``overrides`` (keys of that section only)."""
    values = default_config()[name]
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise KeyError(f"{name} has no key(s) {', '.join(unknown)}")
    return {**values, **overrides}


def tiny_params(**overrides) -> SimulationParams:
    """A small but physical acquisition: 64 x 320 px frames (fits the default geometry); the
    rest of the ``simulation:`` and ``camera:`` sections as configured. ``overrides`` are
    SimulationParams fields."""
    sim = {**section("simulation"), "camera": section("camera")}
    params = SimulationParams.from_config(sim, Geometry.from_config(section("geometry")), 4000.0)
    small = dict(
        frames=120,
        height=64,
        width=320,
        n_molecules=40,
        spot_region_x=(12.0, 50.0),
        margin_px=10.0,
        mean_run_length=14.0,
    )
    return dataclasses.replace(params, **{**small, **overrides})


@pytest.fixture(scope="session")
def tiny_acquisition(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    paths = {
        "stack": out / "stack.ome.tif",
        "peakfit": out / "peakfit.results.xls",
        "thunderstorm": out / "thunderstorm.csv",
        "truth": out / "truth.csv",
    }
    simulate_acquisition(
        tiny_params(),
        7,
        "tiny",
        paths["stack"],
        paths["peakfit"],
        paths["thunderstorm"],
        paths["truth"],
        107.0,
    )
    return paths


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The whole workflow, run once on a tiny simulated acquisition in a temp directory."""
    from .pipeline import make_workdir, snakemake

    wd = make_workdir(tmp_path_factory.mktemp("pipeline"))
    snakemake(wd, "--cores", "2")
    return wd
