"""Seeded random generators: one global ``seed`` drives every random choice of the pipeline."""

from __future__ import annotations

import zlib

import numpy as np


def acquisition_seed(seed: int, name: str, stage: str) -> np.random.Generator:
    """A random generator derived from the global seed, the acquisition name and the stage."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(stage.encode())])
