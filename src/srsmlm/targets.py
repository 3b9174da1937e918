"""Model targets: each frame's clean target is the noise-free image of the joint
maximum-likelihood fit of the *other* frames of its run.

The acquisition's localizations are first read out as the spectra stage reads them
(:func:`srsmlm.mle_table.read_table`: overlapping spectra fitted jointly); those in groups with
a localization in a run are read. For frame i of a run, the frames of the run that a
molecule's estimate may use (flag "" or only ``dim``, see
:data:`srsmlm.molecules.MOLECULE_FLAGS`), except i itself, give its target: those alone in
their box are fitted jointly on raw counts (shared spectral centre and width, own photons, row
and background; :func:`srsmlm.mle.fit_boxes` with groups), and those fitted jointly with a
neighbour (their box holds another spectrum) join by inverse variance, as in the molecules'
estimate. The fitted spectrum is then drawn without background at frame i's own localization:
the spot as a pixel-integrated Gaussian of the PSF width at (x_i, y_i), the spectrum at x_i
plus the run's spectral distance (fitted centre minus the mean x of the frames fitted) and row
y_i. Each part is later divided by its own maximum (:func:`srsmlm.fusion.clean_target`), so
photon counts do not enter the target. Frame i's pixels never enter its own target; where no
other frame of the run is usable, the frame has no target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from .calibration import Calibration, calibration_from_config
from .geometry import Geometry
from .mle import Camera, box_model, fit_boxes
from .mle_table import Reader, read_table, with_groups
from .molecules import MOLECULE_FLAGS, alone_in_box, inverse_variance_start
from .overlaps import JointConfig
from .readout import ReadoutConfig, gather_photons
from .stack import Stack

log = logging.getLogger(__name__)

#: the ``spectra:`` keys the model targets read (the readout's fit settings and calibration):
#: the patch stage depends on these alone, so other ``spectra:`` changes do not rerun it
SPECTRA_KEYS = (
    "nm_per_px",
    "wavelength_at_offset_nm",
    "calibration_table",
    "psf_sigma_px",
    "readout_rows",
    "readout_margin_px",
    "width_nm",
    "width_bounds_nm",
    "width_start_nm",
    "mle_max_iterations",
    "min_fit_p",
    "max_crlb_nm",
    "edge_sd",
    "crowding_rows_px",
    "max_row_shift_px",
    "molecule_estimate",
    *(f.name for f in fields(JointConfig)),
)

#: boxes fitted at once in the leave-one-out fits (bounds memory: ~5 kB a box)
_FIT_BOXES = 32768

#: localizations read out at once (:func:`srsmlm.mle_table.read_table`; bounds memory)
_READ_ROWS = 16384

#: the readout's columns the leave-one-out fits take from each localization in a run
READOUT_COLUMNS = (
    "sc_mle_flag",
    "sc_mle_crlb_nm",
    "sc_mle_width_nm",
    "spectral_photons",
    "background_photons",
    "mle_centre_px",
    "group_size",
    "extra_emitters",
)


@dataclass(frozen=True)
class TargetModel:
    """What the model targets need: the readout settings, the camera and the calibration."""

    readout: ReadoutConfig
    camera: Camera
    cal: Calibration
    joint: JointConfig

    @classmethod
    def from_config(
        cls, spectra: dict[str, Any], camera: dict[str, Any], g: Geometry, threads: int = 1
    ) -> TargetModel:
        cal = calibration_from_config(spectra, g)
        return cls(
            ReadoutConfig.from_config(spectra, cal, threads),
            Camera.from_config(camera),
            cal,
            JointConfig.from_config(spectra),
        )


def run_readout(
    stack: Stack, locs: pd.DataFrame, in_run: np.ndarray, g: Geometry, tm: TargetModel
) -> pd.DataFrame:
    """The maximum-likelihood readout (:func:`srsmlm.mle_table.read_table`) of the rows
    ``in_run`` (positions) of the acquisition's localization table ``locs`` (``frame``, ``x``,
    ``y``, ``signal``, ``pixel_x``): its ``READOUT_COLUMNS``, in the order of ``in_run``. Only the
    groups of overlapping spectra holding such a row are read."""
    r = Reader(g, tm.cal, tm.camera, tm.readout, tm.joint)
    spec_col0 = locs["pixel_x"].to_numpy() + g.spectral_offset
    table = with_groups(locs[["frame", "x", "y", "signal"]].assign(spec_col0=spec_col0), r)
    group = table["group"].to_numpy()
    wanted = table[np.isin(group, group[in_run])]
    out = read_table(stack, wanted, r, _READ_ROWS)
    return out.loc[table.index[in_run], list(READOUT_COLUMNS)]


def _groups(
    usable: np.ndarray, run_starts: np.ndarray, frames: np.ndarray, max_frames: int | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """For each frame, the usable frames of its run other than itself (indices, ascending), and
    their count; at most ``max_frames`` of them, those nearest in time (``frames``; a tie goes
    to the earlier frame), so a long run costs ``max_frames`` boxes per frame, not its length."""
    n = len(usable)
    bounds = np.append(run_starts, n)
    members: list[np.ndarray] = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        run_usable = a + np.flatnonzero(usable[a:b])
        for i in range(a, b):
            others = run_usable[run_usable != i]
            if max_frames is not None and len(others) > max_frames:
                gap = np.abs(frames[others] - frames[i])
                others = np.sort(others[np.lexsort((frames[others], gap))[:max_frames]])
            members.append(others)
    return members, np.array([len(m) for m in members], dtype=np.int64)


def _blocks(sizes: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive frames whose groups hold about ``limit`` boxes together (at least one)."""
    a, total = 0, 0
    for i, k in enumerate(sizes):
        if i > a and total + k > limit:
            yield a, i
            a, total = i, 0
        total += int(k)
    if a < len(sizes):
        yield a, len(sizes)


def leave_one_out_fits(
    stack: Stack,
    runs: pd.DataFrame,
    run_starts: np.ndarray,
    g: Geometry,
    tm: TargetModel,
    max_frames: int | None = None,
) -> pd.DataFrame:
    """Leave-one-out fits of the runs in ``runs`` (rows grouped by run, columns ``frame``,
    ``x``, ``y``, ``pixel_x`` and the ``READOUT_COLUMNS`` of :func:`run_readout`): each frame's
    fit joins the other usable frames of its run, at most ``max_frames`` of them (the nearest in
    time); those alone in their box are fitted jointly on raw counts, those read with a
    neighbour join by inverse variance. Returns per row ``distance_px`` (fitted centre of those
    frames minus their mean x), ``width_px``, ``n_others``, ``n_grouped`` (of them, frames read
    with a neighbour), ``crlb_nm``, ``p_fit`` (of the raw-count fit), ``converged`` and the
    frame's own readout ``flag``."""
    flag = runs["sc_mle_flag"].fillna("").to_numpy()
    alone = alone_in_box(runs).to_numpy()
    members, sizes = _groups(
        np.isin(flag, MOLECULE_FLAGS), np.asarray(run_starts), runs["frame"].to_numpy(), max_frames
    )
    lone = [m[alone[m]] for m in members]
    grouped = [m[~alone[m]] for m in members]
    fit = _lone_fits(stack, runs, lone, g, tm)
    w_px = 1.0 / (runs["sc_mle_crlb_nm"].to_numpy() / tm.readout.nm_per_px) ** 2
    distance = runs["mle_centre_px"].to_numpy() - runs["x"].to_numpy()
    width = runs["sc_mle_width_nm"].to_numpy() / tm.readout.nm_per_px
    n_grouped = np.array([len(m) for m in grouped], dtype=np.int64)
    ok = fit["converged"]
    w_sum = np.where(ok, 1.0 / fit["var_px2"], 0.0)
    wd = np.where(ok, w_sum * fit["distance_px"], 0.0)
    ws = np.where(ok, w_sum * fit["width_px"], 0.0)
    idx = np.concatenate(grouped) if grouped else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(grouped)), n_grouped)
    w_sum += np.bincount(owner, w_px[idx], len(grouped))
    wd += np.bincount(owner, w_px[idx] * distance[idx], len(grouped))
    ws += np.bincount(owner, w_px[idx] * width[idx], len(grouped))
    has_lone = np.array([len(m) > 0 for m in lone])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "distance_px": np.where(w_sum > 0, wd / w_sum, np.nan),
            "width_px": np.where(w_sum > 0, ws / w_sum, np.nan),
            "n_others": sizes,
            "n_grouped": n_grouped,
            "crlb_nm": np.where(w_sum > 0, tm.readout.nm_per_px / np.sqrt(w_sum), np.nan),
            "p_fit": fit["p_fit"],
            "converged": np.where(has_lone, fit["converged"], n_grouped > 0),
        }
    return pd.DataFrame(out, index=runs.index).assign(flag=flag)


def _lone_fits(
    stack: Stack, runs: pd.DataFrame, members: list[np.ndarray], g: Geometry, tm: TargetModel
) -> dict[str, np.ndarray]:
    """For each row of ``runs``, the joint fit on raw counts of the frames ``members`` (row
    positions; alone in their boxes), started from their readout: ``distance_px`` (fitted
    centre minus their mean x), ``width_px``, ``var_px2`` (CRLB of the centre), ``p_fit`` and
    ``converged`` (NaN and False where a row has no member)."""
    cfg = tm.readout
    table = runs[["frame", "x", "y"]].assign(
        spec_col0=runs["pixel_x"].to_numpy(np.int64) + g.spectral_offset
    )
    photons, row0, col0, _ = gather_photons(stack, table, g, cfg, tm.camera)
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    centre = runs["mle_centre_px"].to_numpy()
    w = 1.0 / (runs["sc_mle_crlb_nm"].to_numpy() / cfg.nm_per_px) ** 2
    s_single = runs["sc_mle_width_nm"].to_numpy() / cfg.nm_per_px
    local = np.column_stack(
        [
            runs["spectral_photons"].to_numpy(),
            table["y"].to_numpy() - row0,
            runs["background_photons"].to_numpy(),
        ]
    )
    x = table["x"].to_numpy()
    n = len(table)
    out = {key: np.full(n, np.nan) for key in ("distance_px", "width_px", "var_px2", "p_fit")}
    out["converged"] = np.zeros(n, dtype=bool)
    for a, b in _blocks(sizes, _FIT_BOXES):
        frames = np.arange(a, b)[sizes[a:b] > 0]
        if not len(frames):
            continue
        idx = np.concatenate([members[i] for i in frames])
        owner = np.repeat(frames, sizes[frames])
        starts = np.r_[0, np.cumsum(sizes[frames])][:-1]
        shared = inverse_variance_start(w[idx], centre[idx] - col0[owner], s_single[idx], starts)
        fit = fit_boxes(
            photons[idx],
            shared,
            local[idx],
            cfg.settings,
            tm.camera,
            groups=np.r_[starts, len(idx)],
            offsets=(col0[idx] - col0[owner]).astype(np.float64),
        )
        mean_x = np.add.reduceat(x[idx], starts) / sizes[frames]
        out["distance_px"][frames] = col0[frames] + fit["l0"] - mean_x
        out["width_px"][frames] = fit["s"]
        out["var_px2"][frames] = fit["var_l0"]
        out["p_fit"][frames] = fit["p_fit"]
        out["converged"][frames] = fit["converged"]
    return out


def render_targets(
    x: np.ndarray,
    y: np.ndarray,
    distance_px: np.ndarray,
    width_px: np.ndarray,
    loc_box: tuple[np.ndarray, np.ndarray],
    spec_box: tuple[np.ndarray, np.ndarray],
    g: Geometry,
    psf_sigma_px: float,
) -> np.ndarray:
    """Noise-free patches (N, height, width) float32 without background: a unit spot at (x, y)
    in the localization box (top-left ``loc_box`` = (row0, col0)) and a unit spectrum of sd
    ``width_px`` centred at column ``x + distance_px`` and row y in the spectral box
    (``spec_box``); both pixel-integrated Gaussians of row sd ``psf_sigma_px`` (frame px, a
    pixel c spans [c, c+1))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    sigma = np.full(n, float(psf_sigma_px))
    ones, zeros = np.ones(n), np.zeros(n)
    out = np.empty((n, g.height, g.width), dtype=np.float32)
    lr, lc = loc_box
    sr, sc = spec_box
    out[:, :, : g.loc_width] = box_model(
        np.column_stack([x - lc, sigma]),
        np.column_stack([ones, y - lr, zeros]),
        (g.height, g.loc_width),
        psf_sigma_px,
    )
    out[:, :, g.loc_width :] = box_model(
        np.column_stack([x + np.asarray(distance_px) - sc, np.asarray(width_px)]),
        np.column_stack([ones, y - sr, zeros]),
        (g.height, g.spectral_width),
        psf_sigma_px,
    )
    return out
