"""Maximum-likelihood spectral readout of localizations on raw camera counts and the flags that
say which values to trust (the model and the fit are in :mod:`srsmlm.mle`; overlapping spectra
are read together in :mod:`srsmlm.overlaps`).

Coordinates: frame pixel column c spans x in [c, c+1). A readout box is the localization's
spectral box widened by ``readout_margin_px`` on each side (moved inward where the frame ends);
a fitted centre ``l0`` (box px) lies at frame x ``col0 + l0`` and its wavelength follows the
linear calibration from its distance to the localization's x.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .calibration import Calibration
from .geometry import Geometry
from .mle import FLAGS, Camera, FitSettings, fit_boxes, starts_from_data
from .stack import Stack

log = logging.getLogger(__name__)

#: columns added to spectra.csv by the readout (units in the names; flag empty = trusted)
MLE_COLUMNS = (
    "sc_mle_nm",
    "sc_mle_crlb_nm",
    "sc_mle_width_nm",
    "spectral_photons",
    "background_photons",
    "sc_mle_flag",
)


@dataclass(frozen=True)
class ReadoutConfig:
    """The ``spectra:`` keys of the maximum-likelihood readout, converted to px."""

    margin_px: int
    rows: int
    settings: FitSettings
    s_start: float
    min_fit_p: float
    max_crlb_nm: float
    edge_sd: float
    max_row_shift_px: float
    crowding_rows_px: float
    molecule_estimate: str
    nm_per_px: float

    @classmethod
    def from_config(
        cls, section: dict[str, Any], cal: Calibration, threads: int = 1
    ) -> ReadoutConfig:
        d = abs(cal.nm_per_px)
        fixed = section.get("width_nm")
        lo, hi = section["width_bounds_nm"]
        return cls(
            margin_px=int(section["readout_margin_px"]),
            rows=int(section["readout_rows"]),
            settings=FitSettings(
                sigma_y=float(section["psf_sigma_px"]),
                s_bounds=(lo / d, hi / d),
                fixed_s=None if fixed is None else float(fixed) / d,
                max_iterations=int(section["mle_max_iterations"]),
                threads=threads,
            ),
            s_start=float(section["width_start_nm"]) / d,
            min_fit_p=float(section["min_fit_p"]),
            max_crlb_nm=float(section["max_crlb_nm"]),
            edge_sd=float(section["edge_sd"]),
            max_row_shift_px=float(section["max_row_shift_px"]),
            crowding_rows_px=float(section["crowding_rows_px"]),
            molecule_estimate=str(section["molecule_estimate"]),
            nm_per_px=d,
        )


def readout_boxes(
    table: pd.DataFrame, g: Geometry, cfg: ReadoutConfig, frame_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-left corner (row0, col0) and width of each localization's readout box: ``cfg.rows``
    rows centred on the localization's y, and the columns of its spectral box (``spec_col0``)
    widened by ``cfg.margin_px`` on each side; moved inward to stay in the frame."""
    width = g.spectral_width + 2 * cfg.margin_px
    if width > frame_shape[1] or cfg.rows > frame_shape[0]:
        raise ValueError(
            f"readout box of {cfg.rows} x {width} px does not fit the {frame_shape} frame"
        )
    col0 = np.clip(table["spec_col0"].to_numpy(np.int64) - cfg.margin_px, 0, frame_shape[1] - width)
    row0 = np.floor(table["y"].to_numpy()).astype(np.int64) - cfg.rows // 2
    return np.clip(row0, 0, frame_shape[0] - cfg.rows), col0, width


def overlap_pairs(
    frame: np.ndarray, row: np.ndarray, col: np.ndarray, rows_px: float, cols_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of localizations of one frame closer than ``rows_px`` in ``row`` and
    ``cols_px`` in ``col``. Vectorised over neighbours in (frame, row) order; non-finite
    coordinates pair with nothing."""
    frame, row, col = np.asarray(frame), np.asarray(row, float), np.asarray(col, float)
    order = np.lexsort((row, frame))
    f, rs, cs = frame[order], row[order], col[order]
    first, second = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for k in range(1, len(f)):
        near = (f[k:] == f[:-k]) & (rs[k:] - rs[:-k] < rows_px)
        if not near.any():
            break
        hit = np.flatnonzero(near & (np.abs(cs[k:] - cs[:-k]) < cols_px))
        first.append(order[hit])
        second.append(order[hit + k])
    return np.concatenate(first), np.concatenate(second)


def crowded(
    frame: np.ndarray, x: np.ndarray, y: np.ndarray, rows_px: float, cols_px: float
) -> np.ndarray:
    """Localizations with another one in the same frame closer than ``rows_px`` in y and
    ``cols_px`` in x (px): their spectra overlap."""
    i, j = overlap_pairs(frame, y, x, rows_px, cols_px)
    out = np.zeros(len(np.asarray(frame)), dtype=bool)
    out[i] = out[j] = True
    return out


def flag_fits(
    fit: dict[str, np.ndarray],
    width: float | np.ndarray,
    y_expected: np.ndarray,
    is_crowded: np.ndarray,
    cfg: ReadoutConfig,
    left: float | np.ndarray = 0.0,
) -> np.ndarray:
    """One reason per fit not to trust it (first that applies, in the order of ``FLAGS``), or
    "" when trusted: ``not_converged``; ``truncated``: centre within ``edge_sd`` widths of the
    fitted region's edge (or outside; the region spans box columns ``left`` to ``width``);
    ``crowded``: another localization's spectrum overlaps the box and could not be fitted
    with it;
    ``bad_fit``: deviance test p < ``min_fit_p``, or (for spectra not ``dim``, bright enough to
    place their row) the spectrum's row centre more than ``max_row_shift_px`` from the
    localization's (overlapping emitters, a wrong model);
    ``dim``: CRLB above ``max_crlb_nm``. ``fit`` as returned by :func:`fit_boxes`."""
    l0, s = fit["l0"], fit["s"]
    crlb_nm = np.sqrt(fit["var_l0"]) * cfg.nm_per_px
    dim = ~(crlb_nm <= cfg.max_crlb_nm)
    shifted = ~(np.abs(fit["y0"] - y_expected) <= cfg.max_row_shift_px)
    tests = [
        ~fit["converged"] | ~np.isfinite(l0) | ~np.isfinite(crlb_nm),
        (l0 - cfg.edge_sd * s < left) | (l0 + cfg.edge_sd * s > width),
        np.asarray(is_crowded, dtype=bool),
        ~(fit["p_fit"] >= cfg.min_fit_p) | (shifted & ~dim),
        dim,
    ]
    flag = np.full(len(l0), "", dtype=object)
    for name, bad in zip(reversed(FLAGS), reversed(tests), strict=True):
        flag[bad] = name
    return flag


def _fit_with_second_start(
    x: np.ndarray, y0: np.ndarray, width: int, cfg: ReadoutConfig, camera: Camera
) -> dict[str, np.ndarray]:
    """Fit from the profile's centroid; boxes whose fit fails a check are fitted again from the
    smoothed profile's maximum, and the better likelihood is kept."""
    first, second, local = starts_from_data(x, y0, cfg.settings, cfg.s_start)
    fit = fit_boxes(x, first, local, cfg.settings, camera)
    flag = flag_fits(fit, width, y0, np.zeros(len(x), dtype=bool), cfg)
    retry = np.flatnonzero(np.isin(flag, ("not_converged", "truncated", "bad_fit")))
    if len(retry):
        again = fit_boxes(x[retry], second[retry], local[retry], cfg.settings, camera)
        better = retry[(again["loglik"] > fit["loglik"][retry]) | ~fit["converged"][retry]]
        take = np.isin(retry, better)
        for key, values in again.items():
            fit[key][better] = values[take]
    return fit


def mle_readout(
    stack: Stack,
    table: pd.DataFrame,
    g: Geometry,
    cal: Calibration,
    camera: Camera,
    cfg: ReadoutConfig,
) -> pd.DataFrame:
    """Maximum-likelihood readout of the localizations in ``table`` (columns ``frame``, ``x``,
    ``y``, ``spec_col0``, ``crowded``) from the raw stack. Returns the ``MLE_COLUMNS`` plus
    ``mle_centre_px`` (frame x of the centre), ``mle_box_row0``, ``mle_box_col0``,
    ``mle_row_px`` (frame y of the spectrum), ``mle_p_fit``."""
    boxes = gather_photons(stack, table, g, cfg, camera)
    return fit_readout(boxes, table, g, cal, camera, cfg)


def gather_photons(
    stack: Stack, table: pd.DataFrame, g: Geometry, cfg: ReadoutConfig, camera: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Each localization's readout box (:func:`readout_boxes`) read from the stack, in photons,
    and the boxes' (row0, col0, width)."""
    row0, col0, width = readout_boxes(table, g, cfg, stack.frame_shape)
    (boxes,) = stack.gather(table["frame"].to_numpy(), [(row0, col0, cfg.rows, width)])
    return camera.photons(boxes), row0, col0, width


def fit_readout(
    boxes: tuple[np.ndarray, np.ndarray, np.ndarray, int],
    table: pd.DataFrame,
    g: Geometry,
    cal: Calibration,
    camera: Camera,
    cfg: ReadoutConfig,
) -> pd.DataFrame:
    """:func:`mle_readout` of readout boxes already gathered (:func:`gather_photons`)."""
    x, row0, col0, width = boxes
    y_expected = table["y"].to_numpy() - row0
    fit = _fit_with_second_start(x, y_expected, width, cfg, camera)
    flag = flag_fits(fit, width, y_expected, table["crowded"].to_numpy(), cfg)
    return readout_table(fit, flag, table, row0, col0, g, cal, cfg)


def readout_table(
    fit: dict[str, np.ndarray],
    flag: np.ndarray,
    table: pd.DataFrame,
    row0: np.ndarray,
    col0: np.ndarray,
    g: Geometry,
    cal: Calibration,
    cfg: ReadoutConfig,
    y_origin: np.ndarray | None = None,
) -> pd.DataFrame:
    """The ``MLE_COLUMNS`` and the box columns of fits (``l0`` in each localization's own box
    starting at column ``col0``; ``y0`` in rows from ``y_origin``, the frame row of the fitted
    region, by default the box's ``row0``) with their flags; a value that did not converge is
    NaN. ``mle_row_px`` is the frame row of the spectrum, as the localizations' ``y``."""
    centre = col0 + fit["l0"]
    origin = row0 if y_origin is None else y_origin
    out = pd.DataFrame(
        {
            "sc_mle_nm": cal.wavelength(centre - table["x"].to_numpy(), g.spectral_offset),
            "sc_mle_crlb_nm": np.sqrt(fit["var_l0"]) * cfg.nm_per_px,
            "sc_mle_width_nm": fit["s"] * cfg.nm_per_px,
            "spectral_photons": fit["N"],
            "background_photons": fit["b"],
            "sc_mle_flag": flag,
            "mle_centre_px": centre,
            "mle_box_row0": row0,
            "mle_box_col0": col0,
            "mle_row_px": origin + fit["y0"],
            "mle_p_fit": fit["p_fit"],
        },
        index=table.index,
    )
    out.loc[out["sc_mle_flag"] == "not_converged", ["sc_mle_nm", "sc_mle_crlb_nm"]] = np.nan
    return out
