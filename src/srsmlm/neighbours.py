"""Unlocalized neighbours: one more emitter where a readout box still fits badly.

A box (a lone localization's readout box, or the region of a group fitted jointly) whose fit
fails the deviance test or the row test (``bad_fit``) most often holds the spectrum of a
neighbour the localizer missed; so may one whose fit ran to the box edge (``truncated``), did
not converge, or whose joint fit failed. Such a box is fitted again with one more emitter, started at
the maximum of the smoothed residual (data minus the fitted model), by the same joint fit
(:func:`srsmlm.joint.fit_groups`: camera likelihood, kernels, bounds). The extra emitter is kept
when the likelihood-ratio test rejects the smaller model: ``2 (loglik_{K+1} - loglik_K)`` is
chi-square distributed with as many degrees of freedom as the extra emitter has parameters
(N, l, s, y; 3 with a fixed width), and ``p < spectra.neighbour_p`` keeps it (ThunderSTORM's
multi-emitter fitting does the same). Kept, the members take the K+1 fit's values and bounds
(the bound includes what the neighbour costs) and their flags are judged again; the extra
emitter is counted (``extra_emitters``), never written as a localization.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from scipy.special import chdtrc

from .calibration import Calibration
from .geometry import Geometry
from .joint import fit_groups
from .mle import Camera
from .overlaps import (
    Regions,
    close_members,
    gather_regions,
    region_model,
    start_from_readout,
)
from .readout import ReadoutConfig, flag_fits, readout_table
from .stack import Stack

log = logging.getLogger(__name__)

#: the extra emitter's row is bounded to this many px around the residual maximum's row
EXTRA_ROW_BAND_PX = 3.0

#: the fits of a tested box may take this many times ``spectra.mle_max_iterations``: a spectrum
#: fitted as one where two lie (wide, between them) takes long to split
ITERATIONS_FACTOR = 4

#: flags of a fit a missed neighbour can cause: its spectrum in the box fails the deviance or
#: row test, or pulls the fit to the box edge or keeps it from converging (the flags whose fits
#: the readout also retries from a second start)
SUSPECT_FLAGS = ("not_converged", "truncated", "bad_fit")

#: the columns the neighbour test adds to a readout: extra emitters fitted in the box, and
#: whether the box was tested
NEIGHBOUR_COLUMNS = ("extra_emitters", "neighbour_tested")


def failed_fits(flag: np.ndarray, p_fit: np.ndarray, min_fit_p: float) -> np.ndarray:
    """Fits a missed neighbour may have spoiled: flagged ``SUSPECT_FLAGS``, or ``crowded``
    with a failed deviance test (a group whose joint fit failed keeps its members' single
    fits, flagged ``crowded``)."""
    flag = np.asarray(flag)
    return np.isin(flag, SUSPECT_FLAGS) | ((flag == "crowded") & ~(p_fit >= min_fit_p))


def units_to_test(failed: np.ndarray, eligible: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Per row, whether its unit (rows of one unit consecutive, ``units`` their labels) is
    tested: some member's fit ``failed`` and every member is ``eligible``."""
    if not len(units):
        return np.zeros(0, bool)
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    sizes = np.diff(np.r_[starts, len(units)])
    bad = np.logical_or.reduceat(failed, starts)
    return np.repeat(bad & np.logical_and.reduceat(eligible, starts), sizes)


def residual_peaks(
    boxes: Regions, mu: np.ndarray, sy: float, s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column (padded px) and photons of the largest excess over the model in each
    region: the residual smoothed by the shape of a spectrum (sds ``sy`` x ``s`` px), whose
    maximum ``N / (4 pi sy s)`` over a spectrum of N photons gives the photons' start."""
    n_units, h, w = boxes.data.shape
    i, j = np.arange(h)[None, :], np.arange(w)[None, :]
    r0, c0, rh, rw = (boxes.regions[:, k : k + 1] for k in range(4))
    inside = ((i >= r0) & (i < r0 + rh))[:, :, None] & ((j >= c0) & (j < c0 + rw))[:, None, :]
    residual = np.where(inside, boxes.data - mu, 0.0)
    smooth = gaussian_filter(residual, (0.0, sy, s), mode="constant")
    smooth = np.where(inside, smooth, -np.inf).reshape(n_units, -1)
    peak = np.argmax(smooth, axis=1)
    height = smooth[np.arange(n_units), peak]
    return peak // w, peak % w, np.maximum(height, 0.0) * 4.0 * np.pi * sy * s


def with_extra(
    boxes: Regions, start: np.ndarray, y_band: float, peaks: tuple, width: int, s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The starts of the K+1 fits: each unit's members (``start`` (E, 5): N, l, s, y, b) then
    one extra emitter at its residual peak (``peaks`` from :func:`residual_peaks`), its own
    box of ``width`` columns centred there within the region, its row bounded to
    ``EXTRA_ROW_BAND_PX`` around the peak's. Returns starts (U + 1,), cols, start, the rows'
    bands per emitter and where each member went."""
    row, col, photons = peaks
    member = boxes.member
    moved = np.arange(len(member)) + member
    new_starts = boxes.starts + np.arange(len(boxes.starts))
    extra = new_starts[1:] - 1
    n = len(member) + len(extra)
    cols, out, band = np.empty(n), np.empty((n, 5)), np.full(n, y_band)
    cols[moved], out[moved] = boxes.cols, start
    r0, c0, rw = boxes.regions[:, 0], boxes.regions[:, 1], boxes.regions[:, 3]
    cols[extra] = np.clip(col - c0 - width // 2, 0, np.maximum(rw - width, 0))
    out[extra, 0] = np.maximum(photons, 10.0)
    out[extra, 1] = col - c0 + 0.5 - cols[extra]
    out[extra, 2] = s
    out[extra, 3] = row - r0 + 0.5
    out[extra, 4] = np.bincount(member, start[:, 4], len(extra)) / np.diff(boxes.starts)
    band[extra] = EXTRA_ROW_BAND_PX
    return new_starts, cols, out, band, moved


def likelihood_ratio_p(ll_small: np.ndarray, ll_large: np.ndarray, dof: int) -> np.ndarray:
    """p-value of the likelihood-ratio test of the smaller model against the larger
    (``dof`` more parameters); 1 where the larger fits no better or either is not finite."""
    stat = 2.0 * (ll_large - ll_small)
    ok = np.isfinite(stat) & (stat > 0)
    return np.where(ok, chdtrc(dof, np.where(ok, stat, 0.0)), 1.0)


def _fit(
    boxes: Regions,
    starts: np.ndarray,
    cols: np.ndarray,
    start: np.ndarray,
    y_band: float | np.ndarray,
    width: int,
    cfg: ReadoutConfig,
    camera: Camera,
) -> dict[str, np.ndarray]:
    """:func:`srsmlm.joint.fit_groups` of the boxes with these emitters (``starts`` kept), with
    ``ITERATIONS_FACTOR`` times the readout's iterations."""
    its = ITERATIONS_FACTOR * cfg.settings.max_iterations
    settings = replace(cfg.settings, max_iterations=its)
    fit = fit_groups(
        boxes.data, boxes.regions, starts, cols, start, y_band, (0.0, float(width)),
        settings, camera,
    )  # fmt: skip
    return fit | {"starts": starts}


def neighbour_fits(
    boxes: Regions, start: np.ndarray, width: int, cfg: ReadoutConfig, camera: Camera, p_max: float
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The K fit of each box (members from ``start``, rows bounded like the joint readout's),
    the K+1 fit with an extra emitter at the residual maximum, and per unit whether the extra
    emitter is kept (likelihood-ratio p < ``p_max``) and whether a fit failed. The K+1 fit
    starts its members at the start width and without the extra emitter's photons, so that a
    spectrum fitted as one over two can split. A K fit that does not converge (it wanders where
    its model lacks a spectrum) still gives the highest K likelihood it found; only a failed
    K+1 fit fails the test. Returns the members' values of the K+1 fit (``b``, ``p_fit``,
    ``converged`` per member; ``extra_y0``: the row of their unit's extra emitter), keep,
    failed."""
    y_band = 2.0 * cfg.max_row_shift_px
    small = _fit(boxes, boxes.starts, boxes.cols, start, y_band, width, cfg, camera)
    s = cfg.settings.fixed_s if cfg.settings.fixed_s is not None else cfg.s_start
    mu = region_model(boxes, small, cfg.settings.sigma_y)
    peaks = residual_peaks(boxes, mu, cfg.settings.sigma_y, s)
    member = boxes.member
    found = np.column_stack(
        [
            np.maximum(small["N"] - peaks[2][member], 0.5 * small["N"]),
            small["l0"],
            np.full(len(member), s),
            start[:, 3],
            small["b"][member],
        ]
    )
    starts, cols, begin, band, moved = with_extra(boxes, found, y_band, peaks, width, s)
    large = _fit(boxes, starts, cols, begin, band, width, cfg, camera)
    dof = 3 if cfg.settings.fixed_s is not None else 4
    p = likelihood_ratio_p(small["loglik"], large["loglik"], dof)
    failed = ~large["converged"]
    values = {k: large[k][moved] for k in ("N", "l0", "s", "y0", "var_l0")}
    values |= {k: large[k][member] for k in ("b", "p_fit", "converged")}
    values["extra_y0"] = large["y0"][starts[1:] - 1][member]
    finite = np.logical_and.reduceat(np.isfinite(values["var_l0"]), boxes.starts[:-1])
    keep = ~failed & finite & (p < p_max)
    return values, keep, failed


def neighbour_readout(
    stack: Stack,
    table: pd.DataFrame,
    readout: pd.DataFrame,
    units: np.ndarray,
    g: Geometry,
    cal: Calibration,
    camera: Camera,
    cfg: ReadoutConfig,
    p_max: float,
    min_row_separation: float,
) -> pd.DataFrame:
    """``readout`` (:func:`srsmlm.readout.mle_readout` or
    :func:`srsmlm.overlaps.joint_readout` of ``table``; ``units``: the box of each row, rows
    of one box consecutive) with the ``NEIGHBOUR_COLUMNS`` added: each box whose fit failed
    (:func:`failed_fits`) tested for one unlocalized neighbour (:func:`neighbour_fits`); where
    the extra emitter is kept, its members take the K+1 fit's values and are flagged again
    (``crowded`` where two, or a member and the extra emitter, are closer than
    ``min_row_separation`` rows). A box whose test fails (a failed fit, non-finite coordinates)
    keeps its readout; so does a localization of a group too large to be fitted jointly
    (``crowded`` column of ``table``)."""
    out = readout.assign(extra_emitters=0, neighbour_tested=False)
    units = np.asarray(units)
    x, y = table["x"].to_numpy(float), table["y"].to_numpy(float)
    crowded = table["crowded"].to_numpy(bool) if "crowded" in table else np.zeros(len(x), bool)
    eligible = np.isfinite(x) & np.isfinite(y) & ~crowded
    failed = failed_fits(out["sc_mle_flag"].to_numpy(), out["mle_p_fit"].to_numpy(), cfg.min_fit_p)
    rows = np.flatnonzero(units_to_test(failed, eligible, units))
    if not len(rows):
        return out
    sub, tested = out.iloc[rows], table.iloc[rows]
    starts = np.flatnonzero(np.r_[True, units[rows][1:] != units[rows][:-1], True])
    width = g.spectral_width + 2 * cfg.margin_px
    row0 = sub["mle_box_row0"].to_numpy(np.int64)
    col0 = sub["mle_box_col0"].to_numpy(np.int64)
    frame = tested["frame"].to_numpy()
    boxes = gather_regions(stack, frame, row0, col0, starts, cfg.rows, width, camera)
    member = boxes.member
    y_region = y[rows] - boxes.origin[member, 0]
    start = start_from_readout(sub, col0, y_region, width, cfg)
    fit, keep, failed = neighbour_fits(boxes, start, width, cfg, camera, p_max)
    left = boxes.origin[member, 1] - col0
    right = left + boxes.regions[member, 3]
    # a member as close to the extra emitter's row as to a localized neighbour's: the extra
    # emitter has no localization to tell their spectra apart
    beside = np.abs(fit["extra_y0"] - y_region) < min_row_separation
    close = close_members(y[rows], starts, min_row_separation) | beside
    flag = flag_fits(fit, right, y_region, close, cfg, left)
    new = readout_table(fit, flag, tested, row0, col0, g, cal, cfg, boxes.origin[member, 0])
    kept = keep[member]
    out.iloc[rows, out.columns.get_loc("neighbour_tested")] = True
    out.iloc[rows[kept], out.columns.get_loc("extra_emitters")] = 1
    for name in new.columns:
        out.iloc[rows[kept], out.columns.get_loc(name)] = new[name].to_numpy()[kept]
    log.debug(
        "neighbour test: %d boxes, %d with an extra emitter, %d fits failed",
        len(keep), int(keep.sum()), int(failed.sum()),
    )  # fmt: skip
    return out
