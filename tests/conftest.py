"""Shared fixtures: small simulated acquisitions and hand-made files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from srsmlm.geometry import Geometry
from srsmlm.simulate import SimulationParams, simulate_acquisition

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def tiny_params(**overrides) -> SimulationParams:
    """A small but physical acquisition: 64 x 320 px frames (fits the default geometry)."""
    base = dict(
        frames=120,
        height=64,
        width=320,
        n_molecules=40,
        mean_photons=4000.0,
        spot_region_x=(12.0, 50.0),
        margin_px=10.0,
        mean_run_length=14.0,
    )
    base.update(overrides)
    return SimulationParams(geometry=Geometry(16, 16, 48, 230), **base)


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
