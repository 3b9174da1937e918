"""Readout of overlapping spectra: localizations of one frame whose spectra overlap form groups,
and each group is fitted jointly (:mod:`srsmlm.joint`) in one region covering its members'
readout boxes, started from their single fits (:mod:`srsmlm.readout`); checks keep swapped
spectra out of the trusted values. The same columns and flags as the single readout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import ndtr

from .calibration import Calibration
from .geometry import Geometry
from .joint import fit_groups
from .labelling import LabelRules, close_pairs, members_of, resolve_labelling
from .mle import Camera
from .readout import (
    ReadoutConfig,
    fit_readout,
    flag_fits,
    gather_photons,
    overlap_pairs,
    readout_table,
)
from .stack import Stack


@dataclass(frozen=True)
class JointConfig:
    """The ``spectra:`` keys of the joint fit of overlapping spectra, of the labelling of its
    spectra (:class:`srsmlm.labelling.LabelRules`) and of the test for an unlocalized neighbour
    (:mod:`srsmlm.neighbours`). ``ambiguous_loglik``: a group whose two labellings of its
    spectra have log-likelihoods closer than this fits both about equally well, its spectra
    cannot be assigned to their localizations."""

    max_group_size: int
    group_rows_px: float
    min_row_separation_px: float
    neighbour_p: float
    label_odds: float
    label_consistency_p: float
    same_row_px: float
    ambiguous_loglik: float

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> JointConfig:
        return cls(
            max_group_size=int(section["max_group_size"]),
            group_rows_px=float(section["group_rows_px"]),
            min_row_separation_px=float(section["min_row_separation_px"]),
            neighbour_p=float(section["neighbour_p"]),
            label_odds=float(section["label_odds"]),
            label_consistency_p=float(section["label_consistency_p"]),
            same_row_px=float(section["same_row_px"]),
            ambiguous_loglik=float(section["ambiguous_loglik"]),
        )

    @property
    def labels(self) -> LabelRules:
        """The labelling's rules."""
        return LabelRules(
            self.min_row_separation_px, self.label_odds, self.label_consistency_p, self.same_row_px
        )


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


def joint_readout(
    stack: Stack,
    table: pd.DataFrame,
    g: Geometry,
    cal: Calibration,
    camera: Camera,
    cfg: ReadoutConfig,
    joint: JointConfig,
) -> pd.DataFrame:
    """:func:`mle_readout` of the localizations of groups of two or more
    (``table`` holds whole groups, consecutive, in a ``group`` column): each group fitted
    jointly in the region covering its members' readout boxes (:func:`srsmlm.joint.fit_groups`),
    started from the single fits; a group whose joint fit fails keeps its single fits, flagged
    ``crowded``. Members closer than ``joint.min_row_separation_px`` in y have their spectra
    assigned by rows and photons (:func:`srsmlm.labelling.resolve_labelling`; ambiguous:
    ``crowded``).
    Flags are judged per emitter from the joint fit, ``bad_fit`` by the group's deviance test.
    Adds ``group_size`` and ``mle_joint`` (the values are the joint fit's)."""
    boxes = gather_photons(stack, table, g, cfg, camera)
    single = fit_readout(boxes, table.assign(crowded=True), g, cal, camera, cfg)
    groups = table["group"].to_numpy()
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1], True])
    fit, region = _fit_jointly(stack, table, single, starts, g, cfg, camera, joint)
    row0, col0 = boxes[1], boxes[2]
    signal = table["signal"].to_numpy(float) if "signal" in table else np.full(len(table), np.nan)
    width = g.spectral_width + 2 * cfg.margin_px
    y = table["y"].to_numpy(float)
    fit, unresolved = resolve_labelling(
        fit, y, signal, col0, region[:, 0], starts, joint.labels, width
    )
    left = region[:, 1] - col0  # the region's columns in each emitter's own box
    right = left + region[:, 3]
    y_expected = y - row0
    own = fit | {"y0": fit["y0"] + region[:, 0] - row0}
    flag = flag_fits(own, right, y_expected, np.zeros(len(table), bool), cfg, left)
    joint = readout_table(fit, flag, table, row0, col0, g, cal, cfg, region[:, 0])
    joint.loc[unresolved & (joint["sc_mle_flag"] == ""), "sc_mle_flag"] = "crowded"
    failed = ~fit["converged"]
    joint[failed] = single[failed]
    sizes = np.diff(starts)
    return joint.assign(group_size=np.repeat(sizes, sizes), mle_joint=~failed)


def _fit_jointly(
    stack: Stack,
    table: pd.DataFrame,
    single: pd.DataFrame,
    starts: np.ndarray,
    g: Geometry,
    cfg: ReadoutConfig,
    camera: Camera,
    joint: JointConfig,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The joint fits of the groups starting at ``starts`` (per emitter: ``l0`` in its own box,
    ``s``, ``N``, ``y0`` in region rows, ``var_l0``; per emitter, repeated from its group:
    ``b``, ``p_fit``, ``converged``), and each emitter's group region (frame row0, col0, height,
    width)."""
    width = g.spectral_width + 2 * cfg.margin_px
    row0 = single["mle_box_row0"].to_numpy(np.int64)
    col0 = single["mle_box_col0"].to_numpy(np.int64)
    frames = table["frame"].to_numpy()
    cut = gather_regions(stack, frames, row0, col0, starts, cfg.rows, width, camera)
    member = cut.member
    y_region = table["y"].to_numpy() - cut.origin[member, 0]
    start = start_from_readout(single, col0, y_region, width, cfg)
    cols = cut.cols
    args = (cut.data, cut.regions, starts, cols)
    limits = (2.0 * cfg.max_row_shift_px, (0.0, float(width)), cfg.settings, camera)
    fit = fit_groups(*args, start, *limits)
    found = np.column_stack([fit["N"], fit["l0"], fit["s"], start[:, 3], fit["b"][member]])
    near = close_members(table["y"].to_numpy(), starts, 2.0 * joint.min_row_separation_px)
    close = np.logical_or.reduceat(near, starts[:-1])
    other = _refit_some(close, args, _rotated(found, cols, starts), limits, fit)
    fit = _better_or_ambiguous(fit, other, member, joint.ambiguous_loglik)
    region = np.column_stack([cut.origin, cut.regions[:, 2:]])[member]
    return fit, region


@dataclass(frozen=True)
class Regions:
    """The regions of units of localizations (a group, or a lone localization's readout box),
    one each: ``data`` (U, H, W) photons of a padded frame cut, ``regions`` (U, 4) the fitted
    region in it (row0, col0, h, w), ``origin`` (U, 2) the region's frame row and column,
    ``starts`` (U + 1,) each unit's first member, ``cols`` (E,) each member's own box column
    in its region."""

    data: np.ndarray
    regions: np.ndarray
    origin: np.ndarray
    starts: np.ndarray
    cols: np.ndarray

    @property
    def member(self) -> np.ndarray:
        """The unit of each member."""
        sizes = np.diff(self.starts)
        return np.repeat(np.arange(len(sizes)), sizes)


def gather_regions(
    stack: Stack,
    frame: np.ndarray,
    row0: np.ndarray,
    col0: np.ndarray,
    starts: np.ndarray,
    rows: int,
    width: int,
    camera: Camera,
) -> Regions:
    """The region covering each unit's readout boxes (own boxes at frame ``row0``, ``col0``,
    ``rows`` x ``width`` px, inside the frame), cut from the stack in photons, padded to one
    shape (the cut moved inward where the frame ends)."""
    first = starts[:-1]
    lo_r, lo_c = np.minimum.reduceat(row0, first), np.minimum.reduceat(col0, first)
    hi_r = np.maximum.reduceat(row0, first) + rows
    hi_c = np.maximum.reduceat(col0, first) + width
    frame_h, frame_w = stack.frame_shape
    pad_h, pad_w = int((hi_r - lo_r).max()), int((hi_c - lo_c).max())
    top = np.clip(lo_r, 0, frame_h - pad_h)
    side = np.clip(lo_c, 0, frame_w - pad_w)
    (data,) = stack.gather(frame[first], [(top, side, pad_h, pad_w)])
    regions = np.column_stack([lo_r - top, lo_c - side, hi_r - lo_r, hi_c - lo_c])
    cols = (col0 - np.repeat(lo_c, np.diff(starts))).astype(np.float64)
    origin = np.column_stack([lo_r, lo_c])
    return Regions(camera.photons(data), regions, origin, starts, cols)


def region_model(boxes: Regions, fit: dict[str, np.ndarray], sy: float) -> np.ndarray:
    """Expected photons (U, H, W) of each padded cut under a fit of its members (per member
    ``N``, ``l0`` in its own box, which starts at region column ``boxes.cols``, ``s``, ``y0`` in
    region px; per unit ``b``): ``b + sum_k N_k g(i; y_k, sy) g(j; c_k + l_k, s_k)``,
    pixel-integrated Gaussians."""
    _, h, w = boxes.data.shape
    member = boxes.member
    y = fit["y0"] + boxes.regions[member, 0]
    x = fit["l0"] + boxes.cols + boxes.regions[member, 1]
    gy = np.diff(ndtr((np.arange(h + 1)[None, :] - y[:, None]) / sy), axis=1)
    edges = (np.arange(w + 1)[None, :] - x[:, None]) / fit["s"][:, None]
    gl = np.diff(ndtr(edges), axis=1)
    mu = np.repeat(fit["b"][:, None, None], h, axis=1).repeat(w, axis=2)
    np.add.at(mu, member, fit["N"][:, None, None] * gy[:, :, None] * gl[:, None, :])
    return mu


def start_from_readout(
    readout: pd.DataFrame, col0: np.ndarray, y_region: np.ndarray, width: int, cfg: ReadoutConfig
) -> np.ndarray:
    """Starts (E, 5) of a joint fit from a readout's values: photons, the centre in each own
    box (frame column ``col0``), the width in px, the row (``y_region``, region px) and the
    background; a missing value becomes a neutral start."""
    return np.column_stack(
        [
            finite_or(readout["spectral_photons"].to_numpy(float), 100.0),
            finite_or(readout["mle_centre_px"].to_numpy(float) - col0, width / 2),
            finite_or(readout["sc_mle_width_nm"].to_numpy(float) / cfg.nm_per_px, cfg.s_start),
            y_region,
            finite_or(readout["background_photons"].to_numpy(float), 1.0),
        ]
    )


def close_members(y: np.ndarray, starts: np.ndarray, rows: float) -> np.ndarray:
    """Members of a group with another member closer than ``rows`` in y (members of a group
    are within a readout box of each other in x, so each one's spectrum could lie in the
    other's box)."""
    return members_of(close_pairs(y, starts, rows), len(y))


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
    fit: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    member: np.ndarray,
    ambiguous_loglik: float,
) -> dict[str, np.ndarray]:
    """Per group, the fit with the higher likelihood; a group whose two labellings fit about
    equally well (log-likelihoods within ``ambiguous_loglik``) but place a spectrum differently
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
    close = np.abs(fit["loglik"] - other["loglik"]) < ambiguous_loglik
    best["converged"] = best["converged"] & ~(close & apart)
    for key in ("b", "p_fit", "converged"):
        best[key] = best[key][member]
    best["converged"] = best["converged"] & np.isfinite(best["var_l0"])
    return best


def finite_or(values: np.ndarray, fallback: float) -> np.ndarray:
    """``values`` with non-finite entries replaced by ``fallback``."""
    return np.where(np.isfinite(values), values, fallback)
