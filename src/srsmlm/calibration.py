"""The linear calibration from camera column to wavelength.

Conventions: pixel column c spans x in [c, c+1), so its centre is c + 0.5. A spectral pixel at
distance d (px, from the localization's sub-pixel x to the pixel centre) has wavelength
``wavelength_at_offset_nm + (d - spectral_offset) * nm_per_px``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .geometry import Geometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Linear px -> nm calibration: wavelength at distance ``spectral_offset`` and dispersion."""

    wavelength_at_offset_nm: float
    nm_per_px: float
    residual_rms_nm: float | None = None
    n_points: int | None = None

    def wavelength(self, distance_px: np.ndarray, spectral_offset: int) -> np.ndarray:
        return (
            self.wavelength_at_offset_nm
            + (np.asarray(distance_px) - spectral_offset) * self.nm_per_px
        )


def fit_calibration(table: pd.DataFrame | str | Path, spectral_offset: int) -> Calibration:
    """Least-squares line through bead (``distance_px``, ``wavelength_nm``) pairs."""
    path = table if not isinstance(table, pd.DataFrame) else None
    if path is not None:
        if not Path(path).is_file():
            raise InputError(
                path, "calibration table not found", "set spectra.calibration_table to a CSV file"
            )
        table = pd.read_csv(path)
    missing = {"distance_px", "wavelength_nm"} - set(table.columns)
    if missing:
        raise InputError(
            path,
            f"calibration table lacks column(s) {sorted(missing)}",
            "give columns distance_px,wavelength_nm",
        )
    d = pd.to_numeric(table["distance_px"], errors="coerce").to_numpy(float)
    lam = pd.to_numeric(table["wavelength_nm"], errors="coerce").to_numpy(float)
    if np.isnan(d).any() or np.isnan(lam).any() or len(d) < 2 or np.ptp(d) == 0:
        raise InputError(
            path,
            "calibration needs at least two numeric points at different distances",
            "measure beads of at least two wavelengths",
        )
    slope, intercept = np.polyfit(d, lam, 1)
    resid = lam - (intercept + slope * d)
    return Calibration(
        float(intercept + slope * spectral_offset),
        float(slope),
        float(np.sqrt(np.mean(resid**2))),
        int(len(d)),
    )


def calibration_from_config(section: dict[str, Any], geometry: Geometry) -> Calibration:
    """The calibration of the ``spectra:`` section: fitted to ``calibration_table`` (beads)
    when one is given, else its ``wavelength_at_offset_nm`` and ``nm_per_px``."""
    if section.get("calibration_table"):
        cal = fit_calibration(section["calibration_table"], geometry.spectral_offset)
        log.info(
            "calibration fit on %d beads: %.4f nm/px, %.2f nm at the offset, residual RMS %.3f nm",
            cal.n_points,
            cal.nm_per_px,
            cal.wavelength_at_offset_nm,
            cal.residual_rms_nm,
        )
        return cal
    return Calibration(float(section["wavelength_at_offset_nm"]), float(section["nm_per_px"]))
