"""Maximum-likelihood spectral readout of localizations on raw camera counts and the flags that
say which values to trust (the model and the fit are in :mod:`srsmlm.mle`).

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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .calibration import Calibration
from .geometry import Geometry
from .joint import fit_groups
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


#: a group whose two labellings of its spectra have log-likelihoods closer than this fits both
#: about equally well: its spectra cannot be assigned to their localizations
AMBIGUOUS_LOGLIK = 3.0


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


@dataclass(frozen=True)
class JointConfig:
    """The ``spectra:`` keys of the joint fit of overlapping spectra."""

    max_group_size: int
    group_rows_px: float
    min_row_separation_px: float

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> JointConfig:
        return cls(
            max_group_size=int(section["max_group_size"]),
            group_rows_px=float(section["group_rows_px"]),
            min_row_separation_px=float(section["min_row_separation_px"]),
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


def overlap_groups(
    table: pd.DataFrame, g: Geometry, cfg: ReadoutConfig, joint: JointConfig
) -> np.ndarray:
    """Group label of each localization: those of one frame closer than
    ``joint.group_rows_px`` in y and than a readout box in x (their spectra overlap), directly
    or through others (connected components); each label's members are fitted together. A lone
    localization is a group of one."""
    n = len(table)
    row0 = np.floor(table["y"].to_numpy(float)) - cfg.rows // 2
    col0 = table["spec_col0"].to_numpy(float) - cfg.margin_px
    width = g.spectral_width + 2 * cfg.margin_px
    i, j = overlap_pairs(table["frame"].to_numpy(), row0, col0, joint.group_rows_px, width)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


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
    ``mle_p_fit``."""
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
    crlb_nm = np.sqrt(fit["var_l0"]) * cfg.nm_per_px
    centre = col0 + fit["l0"]
    out = pd.DataFrame(
        {
            "sc_mle_nm": cal.wavelength(centre - table["x"].to_numpy(), g.spectral_offset),
            "sc_mle_crlb_nm": crlb_nm,
            "sc_mle_width_nm": fit["s"] * cfg.nm_per_px,
            "spectral_photons": fit["N"],
            "background_photons": fit["b"],
            "sc_mle_flag": flag_fits(fit, width, y_expected, table["crowded"].to_numpy(), cfg),
            "mle_centre_px": centre,
            "mle_box_row0": row0,
            "mle_box_col0": col0,
            "mle_p_fit": fit["p_fit"],
        },
        index=table.index,
    )
    out.loc[out["sc_mle_flag"] == "not_converged", ["sc_mle_nm", "sc_mle_crlb_nm"]] = np.nan
    return out


def joint_readout(
    stack: Stack,
    table: pd.DataFrame,
    g: Geometry,
    cal: Calibration,
    camera: Camera,
    cfg: ReadoutConfig,
    min_row_separation: float,
) -> pd.DataFrame:
    """:func:`mle_readout` of the localizations of groups of two or more
    (``table`` holds whole groups, consecutive, in a ``group`` column): each group fitted
    jointly in the region covering its members' readout boxes (:func:`srsmlm.joint.fit_groups`),
    started from the single fits; a group whose joint fit fails keeps its single fits, flagged
    ``crowded``. Flags are judged per emitter from the joint fit, ``bad_fit`` by the group's
    deviance test. Adds ``group_size``."""
    boxes = gather_photons(stack, table, g, cfg, camera)
    single = fit_readout(boxes, table.assign(crowded=True), g, cal, camera, cfg)
    groups = table["group"].to_numpy()
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1], True])
    fit, region = _fit_jointly(stack, table, single, starts, g, cfg, camera, min_row_separation)
    row0, col0 = boxes[1], boxes[2]
    left = region[:, 1] - col0  # the region's columns in each emitter's own box
    right = left + region[:, 3]
    y_expected = table["y"].to_numpy() - row0
    own = fit | {"y0": fit["y0"] + region[:, 0] - row0}
    flag = flag_fits(own, right, y_expected, np.zeros(len(table), bool), cfg, left)
    centre = col0 + fit["l0"]
    joint = pd.DataFrame(
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
            "mle_p_fit": fit["p_fit"],
        },
        index=table.index,
    )
    joint.loc[joint["sc_mle_flag"] == "not_converged", ["sc_mle_nm", "sc_mle_crlb_nm"]] = np.nan
    unresolved = _unresolved(
        table["y"].to_numpy(),
        col0,
        col0 + fit["l0"],
        starts,
        g.spectral_width + 2 * cfg.margin_px,
        min_row_separation,
    )
    joint.loc[unresolved & (joint["sc_mle_flag"] == ""), "sc_mle_flag"] = "crowded"
    failed = ~fit["converged"]
    joint[failed] = single[failed]
    sizes = np.diff(starts)
    return joint.assign(group_size=np.repeat(sizes, sizes), rho=fit["rho"])


def _fit_jointly(
    stack: Stack,
    table: pd.DataFrame,
    single: pd.DataFrame,
    starts: np.ndarray,
    g: Geometry,
    cfg: ReadoutConfig,
    camera: Camera,
    min_row_separation: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The joint fits of the groups starting at ``starts`` (per emitter: ``l0`` in its own box,
    ``s``, ``N``, ``y0`` in region rows, ``var_l0``; per emitter, repeated from its group:
    ``b``, ``p_fit``, ``converged``), and each emitter's group region (frame row0, col0, height,
    width)."""
    sizes = np.diff(starts)
    member = np.repeat(np.arange(len(sizes)), sizes)
    width = g.spectral_width + 2 * cfg.margin_px
    row0 = single["mle_box_row0"].to_numpy(np.int64)
    col0 = single["mle_box_col0"].to_numpy(np.int64)
    lo_r, lo_c = np.minimum.reduceat(row0, starts[:-1]), np.minimum.reduceat(col0, starts[:-1])
    hi_r = np.maximum.reduceat(row0, starts[:-1]) + cfg.rows
    hi_c = np.maximum.reduceat(col0, starts[:-1]) + width
    frame_h, frame_w = stack.frame_shape
    pad_h, pad_w = int((hi_r - lo_r).max()), int((hi_c - lo_c).max())
    top = np.clip(lo_r, 0, frame_h - pad_h)
    side = np.clip(lo_c, 0, frame_w - pad_w)
    frames = table["frame"].to_numpy()[starts[:-1]]
    (data,) = stack.gather(frames, [(top, side, pad_h, pad_w)])
    regions = np.column_stack([lo_r - top, lo_c - side, hi_r - lo_r, hi_c - lo_c])
    start = np.column_stack(
        [
            _finite_or(single["spectral_photons"].to_numpy(), 100.0),
            _finite_or(single["mle_centre_px"].to_numpy() - col0, width / 2),
            _finite_or(single["sc_mle_width_nm"].to_numpy() / cfg.nm_per_px, cfg.s_start),
            table["y"].to_numpy() - lo_r[member],
            _finite_or(single["background_photons"].to_numpy(), 1.0),
        ]
    )
    cols = (col0 - lo_c[member]).astype(np.float64)
    args = (camera.photons(data), regions, starts, cols)
    limits = (2.0 * cfg.max_row_shift_px, (0.0, float(width)), cfg.settings, camera)
    fit = fit_groups(*args, start, *limits)
    found = np.column_stack([fit["N"], fit["l0"], fit["s"], start[:, 3], fit["b"][member]])
    close = _pairs_within(table["y"].to_numpy(), starts, 2.0 * min_row_separation).any(axis=1)
    other = _refit_some(close, args, _rotated(found, cols, starts), limits, fit)
    fit = _better_or_ambiguous(fit, other, member, cfg)
    region = np.column_stack([lo_r, lo_c, hi_r - lo_r, hi_c - lo_c])[member]
    return fit, region


def _pairs_within(y: np.ndarray, starts: np.ndarray, rows: float) -> np.ndarray:
    """Per group (rows) and offset k (columns, 1 to the largest group - 1): whether a member
    and the k-th next one of the same group are closer than ``rows`` in y."""
    sizes = np.diff(starts)
    member = np.repeat(np.arange(len(sizes)), sizes)
    width = max(int(sizes.max(initial=1)) - 1, 1)
    out = np.zeros((len(sizes), width), dtype=bool)
    for k in range(1, width + 1):
        hit = (member[k:] == member[:-k]) & (np.abs(y[k:] - y[:-k]) < rows)
        np.logical_or.at(out[:, k - 1], member[:-k][hit], True)
    return out


def _refit_some(
    groups: np.ndarray,
    args: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    start: np.ndarray,
    limits: tuple,
    fit: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """:func:`srsmlm.joint.fit_groups` of the ``groups`` (mask) from ``start``; the other
    groups keep ``fit``. Rows farther apart than twice the minimum separation cannot trade
    spectra, so only close ones are refitted from the other labelling."""
    out = {k: v.copy() for k, v in fit.items()}
    if not groups.any():
        return out
    data, regions, starts, cols = args
    sizes = np.diff(starts)
    pick = np.flatnonzero(groups)
    emitters = np.repeat(groups, sizes)
    sub = fit_groups(
        data[pick],
        regions[pick],
        np.r_[0, np.cumsum(sizes[pick])],
        cols[emitters],
        start[emitters],
        *limits,
    )
    for key, values in sub.items():
        if len(values) == len(pick) and len(out[key]) == len(sizes):
            out[key][pick] = values
        else:
            out[key][emitters] = values
    return out


def _rotated(start: np.ndarray, cols: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The starts (N, l, s, y, b) with each group's spectra (photons, centre in frame columns,
    width) handed on to the next member, cyclically, the rows kept: another labelling of the
    group's spectra."""
    absolute = start[:, 1] + cols
    sizes = np.diff(starts)
    member = np.repeat(np.arange(len(sizes)), sizes)
    slot = np.arange(len(cols)) - starts[member]
    nxt = starts[member] + (slot + 1) % sizes[member]
    out = start.copy()
    out[:, 1] = absolute[nxt] - cols
    out[:, 0], out[:, 2] = start[nxt, 0], start[nxt, 2]
    return out


def _better_or_ambiguous(
    fit: dict[str, np.ndarray], other: dict[str, np.ndarray], member: np.ndarray, cfg: ReadoutConfig
) -> dict[str, np.ndarray]:
    """Per group, the fit with the higher likelihood; a group whose two labellings fit about
    equally well (log-likelihoods within ``AMBIGUOUS_LOGLIK``) but place a spectrum differently
    (by more than twice its bound) is not converged: its spectra cannot be told apart."""
    take = other["loglik"] > fit["loglik"]
    per_emitter = take[member]
    best = {
        k: np.where(per_emitter if len(v) == len(member) else take, other[k], v)
        for k, v in fit.items()
    }
    bound = 2.0 * np.sqrt(np.maximum(fit["var_l0"], other["var_l0"]))
    apart = np.zeros(len(take), bool)
    np.logical_or.at(apart, member, ~(np.abs(fit["l0"] - other["l0"]) <= bound))
    close = np.abs(fit["loglik"] - other["loglik"]) < AMBIGUOUS_LOGLIK
    best["converged"] = best["converged"] & ~(close & apart)
    for key in ("b", "p_fit", "converged"):
        best[key] = best[key][member]
    best["converged"] = best["converged"] & np.isfinite(best["var_l0"])
    return best


def _unresolved(
    y: np.ndarray,
    col0: np.ndarray,
    centre: np.ndarray,
    starts: np.ndarray,
    box_width: int,
    min_row_separation: float,
) -> np.ndarray:
    """Members of a group with another member closer than ``cfg.min_row_separation_px`` in y
    whose spectra could as well be each other's: each fitted centre (frame columns) also lies
    inside the other's readout box. Their rows cannot tell which spectrum is whose, so neither
    value is trusted."""
    sizes = np.diff(starts)
    member = np.repeat(np.arange(len(sizes)), sizes)
    out = np.zeros(len(y), dtype=bool)
    for k in range(1, int(sizes.max(initial=1))):
        a, b = slice(None, -k), slice(k, None)
        same = member[b] == member[a]
        near = np.abs(y[b] - y[a]) < min_row_separation
        swap_a = centre[b] - col0[a]  # a's box column of b's spectrum
        swap_b = centre[a] - col0[b]
        inside = (swap_a >= 0) & (swap_a <= box_width) & (swap_b >= 0) & (swap_b <= box_width)
        hit = same & near & inside
        out[b] |= hit
        out[a] |= hit
    return out


def _finite_or(values: np.ndarray, fallback: float) -> np.ndarray:
    """``values`` with non-finite entries replaced by ``fallback``."""
    return np.where(np.isfinite(values), values, fallback)
