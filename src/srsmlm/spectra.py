"""Spectral readout per localization: calibration, profiles, centroid, Gaussian fit, precision,
dye classification.

Conventions: pixel column c spans x in [c, c+1), so its centre is c + 0.5. A spectral pixel at
distance d (px, from the localization's sub-pixel x to the pixel centre) has wavelength
``wavelength_at_offset_nm + (d - spectral_offset) * nm_per_px``.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
from sklearn.mixture import GaussianMixture

from .errors import InputError
from .geometry import Geometry
from .io import chunk_slices, read_patches
from .mle import _FAST, _solve
from .stack import NORMALISATION

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


def calibration_from_config(section: dict, geometry: Geometry) -> Calibration:
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


def profile_rows(y: np.ndarray, spec_row0: np.ndarray, n_rows: int, height: int) -> np.ndarray:
    """First patch row of the ``n_rows`` rows centred on each localization's y (px)."""
    start = np.floor(np.asarray(y) - np.asarray(spec_row0) - n_rows / 2 + 0.5).astype(np.int64)
    return np.clip(start, 0, height - n_rows)


def spectral_profiles(
    patches: np.ndarray, geometry: Geometry, row_start: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Background-subtracted spectral profiles (N, spectral_width) and the background per px.

    The profile sums ``n_rows`` rows around the spot; the background is the median of the
    spectral box's rows outside that band (the patch's outer rows), per patch.
    """
    spec = np.asarray(patches, dtype=np.float64)[:, :, geometry.loc_width :]
    n, h, w = spec.shape
    rows = np.arange(h)[None, :]
    band = (rows >= row_start[:, None]) & (rows < row_start[:, None] + n_rows)  # (N, h)
    summed = np.einsum("nhw,nh->nw", spec, band.astype(np.float64))
    bg = _outer_median(spec, band) if h > n_rows else np.zeros(n)
    return summed - n_rows * bg[:, None], bg


def _outer_median(spec: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Median of each patch's pixels outside its band of rows (every band has the same number of
    rows, so every patch the same number of outer pixels): a partition, not ``np.nanmedian``
    (same values, faster)."""
    n, h, w = spec.shape
    k = (h - int(band[0].sum())) * w
    outer = np.where(~band[:, :, None], spec, np.inf).reshape(n, -1)  # band pixels sort last
    lo, hi = (k - 1) // 2, k // 2
    part = np.partition(outer, [lo, hi], axis=1)
    bg = 0.5 * (part[:, lo] + part[:, hi])
    return np.where(np.isfinite(bg), bg, 0.0)


def centroid(profiles: np.ndarray, wavelengths: np.ndarray) -> np.ndarray:
    """Spectral centroid sum(lambda I+) / sum(I+) with negative values clipped; NaN if empty."""
    p = np.clip(profiles, 0, None)
    total = p.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (p * wavelengths).sum(axis=1) / total, np.nan)


#: default tolerance of :func:`gaussian_fit` on each step (relative, see there)
FIT_TOLERANCE = 1e-10


def gaussian_fit(
    profiles: np.ndarray,
    wavelengths: np.ndarray,
    iterations: int = 30,
    tolerance: float = FIT_TOLERANCE,
) -> dict[str, np.ndarray]:
    """Levenberg-Marquardt fit of ``A exp(-(l - mu)^2 / (2 s^2)) + c`` to each profile.

    wavelengths: (N, W) nm. Returns centre, width (sd), amplitude, offset, NaN where the fit
    fails or ends outside the measured window, and the iterations each profile ran.

    Start: offset = the profile's 20th percentile, centre and sd = the centroid and spread of
    what lies above it, amplitude = max - offset. Each iteration solves the damped normal
    equations ``(J^T J + d diag(J^T J + 1e-12)) step = J^T r`` (d starts at 1e-2) and keeps the
    step only if it lowers the sum of squares (then d / 3, else d * 4).

    A profile stops after ``iterations`` iterations, or once converged: a kept step below
    ``tolerance`` in every parameter, relative to its natural scale (amplitude and offset:
    ``|A|``; centre and sd: ``s``), or a rejected step below 100 ``tolerance`` (too small for
    the float64 sum of squares to tell from round-off: from there on, more iterations only
    shuffle the last digits). ``tolerance=0`` runs every iteration.

    Profiles are fitted one by one in a compiled loop (Numba, no GIL). The values are those of
    the former batched NumPy fit (every profile 30 iterations) to float round-off, the NaN
    pattern identical: converged centres within 1e-6 nm except on dim, broad profiles, where
    float64 itself pins the least-squares minimum down only to ~1e-7 standard errors (on the
    demo's 7,952 raw and denoised profiles at most 1.4e-6 nm, while the former fit moves by
    up to 2.4e-6 nm when the profiles change by one ulp; ``benchmarks/bench_profile_fit.py``).
    One difference: a singular step system zeroes that profile's step only (the former fit then
    zeroed the step of every profile in the batch for that iteration).
    """
    p = np.ascontiguousarray(profiles, dtype=np.float64)
    lam = np.ascontiguousarray(wavelengths, dtype=np.float64)
    n = len(p)
    if n == 0:
        empty = {k: np.zeros(0) for k in ("centre", "width", "amplitude", "offset")}
        return empty | {"iterations": np.zeros(0, np.int64)}
    step = np.abs(lam[:, 1] - lam[:, 0])
    c0 = np.percentile(p, 20, axis=1)
    pos = np.clip(p - c0[:, None], 0, None)
    tot = pos.sum(1)
    mu0 = np.where(tot > 0, (pos * lam).sum(1) / np.where(tot > 0, tot, 1), lam.mean(1))
    var0 = np.where(
        tot > 0, (pos * (lam - mu0[:, None]) ** 2).sum(1) / np.where(tot > 0, tot, 1), 100.0
    )
    theta = np.column_stack(
        [np.maximum(p.max(1) - c0, 1e-12), mu0, np.sqrt(np.clip(var0, 4 * step**2, None)), c0]
    )
    used = np.zeros(n, dtype=np.int64)
    _lm_profiles(p, lam, theta, int(iterations), float(tolerance), used)
    amp, centre, width, off = theta.T
    bad = (amp <= 0) | (centre < lam.min(1)) | (centre > lam.max(1)) | (width > np.ptp(lam, axis=1))
    out = {"centre": centre, "width": width, "amplitude": amp, "offset": off}
    return {k: np.where(bad, np.nan, v) for k, v in out.items()} | {"iterations": used}


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _gaussian_cost(p, lam, a, mu, s, c, g):  # pragma: no cover - compiled
    """Sum of squared residuals of ``a g + c``, with ``g`` (the unit Gaussian) filled in."""
    h = 1.0 / (2.0 * s * s)
    cost = 0.0
    for k in range(p.shape[0]):
        d = lam[k] - mu
        g[k] = math.exp(-(d * d) * h)
        r = p[k] - (a * g[k] + c)
        cost += r * r
    return cost


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _lm_profiles(p, lam, theta, iterations, tolerance, used):  # pragma: no cover - compiled
    """Levenberg-Marquardt iterations of :func:`gaussian_fit`, profile by profile; ``theta``
    (N, 4: amplitude, centre, sd, offset) holds the starts and is overwritten with the fits,
    ``used`` receives the iterations run."""
    w = p.shape[1]
    g = np.empty(w)
    tg = np.empty(w)
    lhs = np.empty((4, 4))
    rhs = np.empty(4)
    delta = np.empty(4)
    jtj = np.empty((4, 4))
    for i in range(p.shape[0]):
        pi, li = p[i], lam[i]
        a, mu, s, c = theta[i, 0], theta[i, 1], theta[i, 2], theta[i, 3]
        cost = _gaussian_cost(pi, li, a, mu, s, c, g)
        if not math.isfinite(cost):  # no step is ever kept
            continue
        damping = 1e-2
        for it in range(iterations):
            # J^T J and J^T r; the columns of J: g, a g (l - mu) / s^2, that (l - mu) / s, 1
            s00 = s01 = s02 = s03 = s11 = s12 = s13 = s22 = s23 = 0.0
            r0 = r1 = r2 = r3 = 0.0
            inv_s = 1.0 / s
            inv_s2 = inv_s * inv_s
            for k in range(w):
                gk = g[k]
                d = li[k] - mu
                j1 = a * gk * d * inv_s2
                j2 = j1 * d * inv_s
                r = pi[k] - (a * gk + c)
                s00 += gk * gk
                s01 += gk * j1
                s02 += gk * j2
                s03 += gk
                s11 += j1 * j1
                s12 += j1 * j2
                s13 += j1
                s22 += j2 * j2
                s23 += j2
                r0 += gk * r
                r1 += j1 * r
                r2 += j2 * r
                r3 += r
            jtj[0, 0], jtj[0, 1], jtj[0, 2], jtj[0, 3] = s00, s01, s02, s03
            jtj[1, 1], jtj[1, 2], jtj[1, 3] = s11, s12, s13
            jtj[2, 2], jtj[2, 3] = s22, s23
            jtj[3, 3] = float(w)
            for u in range(4):
                for v in range(u):
                    jtj[u, v] = jtj[v, u]
            for u in range(4):
                for v in range(4):
                    lhs[u, v] = jtj[u, v]
                lhs[u, u] += damping * (jtj[u, u] + 1e-12)
            rhs[0], rhs[1], rhs[2], rhs[3] = r0, r1, r2, r3
            if _solve(lhs, rhs, delta):
                size = max(
                    abs(delta[0]) / abs(a),
                    abs(delta[1]) / s,
                    abs(delta[2]) / s,
                    abs(delta[3]) / abs(a),
                )
            else:  # singular: no step this iteration
                delta[:] = 0.0
                size = np.inf
            ta, tmu, tc = a + delta[0], mu + delta[1], c + delta[3]
            ts = abs(s + delta[2]) + 1e-9
            tcost = _gaussian_cost(pi, li, ta, tmu, ts, tc, tg)
            used[i] = it + 1
            if math.isfinite(tcost) and tcost < cost:
                a, mu, s, c, cost = ta, tmu, ts, tc, tcost
                g, tg = tg, g
                damping /= 3.0
                if size < tolerance:
                    break
            else:
                damping *= 4.0
                if size < 100.0 * tolerance:  # too small a step for the cost to tell: round-off
                    break
        theta[i, 0], theta[i, 1], theta[i, 2], theta[i, 3] = a, mu, s, c


def readout(
    patches: np.ndarray,
    table: pd.DataFrame,
    geometry: Geometry,
    cal: Calibration,
    n_rows: int,
    fit: bool = True,
) -> dict[str, np.ndarray]:
    """Centroid, Gaussian fit and photon proxy for patches whose boxes are in ``table``
    (columns ``x``, ``y``, ``spec_row0``, ``spec_col0``). ``fit=False`` skips the Gaussian fit
    (no ``fit_*`` keys; the other values are the same)."""
    row_start = profile_rows(
        table["y"].to_numpy(), table["spec_row0"].to_numpy(), n_rows, geometry.height
    )
    prof, bg = spectral_profiles(patches, geometry, row_start, n_rows)
    cols = (
        table["spec_col0"].to_numpy()[:, None] + np.arange(geometry.spectral_width)[None, :] + 0.5
    )
    lam = cal.wavelength(cols - table["x"].to_numpy()[:, None], geometry.spectral_offset)
    out = {"sc": centroid(prof, lam)}
    if fit:
        fitted = gaussian_fit(prof, lam)
        out.update(
            fit_centre=fitted["centre"],
            fit_width=fitted["width"],
            fit_amplitude=fitted["amplitude"],
        )
    out.update(sum=np.clip(prof, 0, None).sum(1), background=bg)
    return out


def relative_residual(profiles: np.ndarray, positions: np.ndarray, fit: dict) -> np.ndarray:
    """RMS of each profile's residual from its fitted Gaussian + offset, over the fitted
    amplitude: ~0 for one clean spectrum, large for two spectra, a cut-off one or noise."""
    a, mu, s = fit["amplitude"][:, None], fit["centre"][:, None], fit["width"][:, None]
    model = a * np.exp(-((positions - mu) ** 2) / (2 * s**2)) + fit["offset"][:, None]
    return np.sqrt(np.mean((profiles - model) ** 2, axis=1)) / fit["amplitude"]


def shift_fits(
    denoised: np.ndarray,
    ok: np.ndarray,
    y: np.ndarray,
    spec_row0: np.ndarray,
    shifts: np.ndarray,
    geometry: Geometry,
    n_rows: int,
) -> dict[str, np.ndarray]:
    """Least-squares Gaussian fit of each localization's spectral profile in every shifted
    prediction (``denoised``: (len(shifts), N, height, width), the spectral box moved by each
    shift; ``ok``: the shifts to use), combined per localization (cycle spinning): centre and
    width in px of the *unshifted* box (column j spans [j, j + 1)) averaged over the shifts,
    their spread (sd) of centres, mean amplitude, the largest relative residual
    (:func:`relative_residual`) and the number of shifts used. The centre is NaN where a used
    shift's fit fails."""
    shifts = np.asarray(shifts, dtype=np.int64)
    k, n = ok.shape
    rows = profile_rows(y, spec_row0, n_rows, geometry.height)
    fits = {key: np.full((k, n), np.nan) for key in ("centre", "width", "amplitude", "residual")}
    for i, shift in enumerate(shifts):
        prof, _ = spectral_profiles(denoised[i], geometry, rows, n_rows)
        pos = np.broadcast_to(np.arange(geometry.spectral_width) + 0.5 + shift, prof.shape)
        fit = gaussian_fit(prof, pos)
        for key in ("centre", "width", "amplitude"):
            fits[key][i] = fit[key]
        fits["residual"][i] = relative_residual(prof, pos, fit)
    used = ok.sum(axis=0)
    failed = (ok & np.isnan(fits["centre"])).any(axis=0)

    def mean(key: str) -> np.ndarray:
        total = np.where(ok, fits[key], 0.0).sum(axis=0)
        return np.where(failed, np.nan, total / np.maximum(used, 1))

    centre = mean("centre")
    spread = np.sqrt(np.where(ok, (fits["centre"] - centre) ** 2, 0.0).sum(axis=0) / used)
    residual = np.where(ok, fits["residual"], -np.inf).max(axis=0)
    return {
        "centre_px": centre,
        "centre_sd_px": spread,
        "width_px": mean("width"),
        "amplitude": mean("amplitude"),
        "residual": np.where(failed, np.nan, residual),
        "shifts": used,
    }


def classify_dyes(
    sc: np.ndarray, n_dyes: int | None, seed: int, max_dyes: int = 5
) -> tuple[np.ndarray, np.ndarray, int]:
    """Gaussian mixture on spectral centroids (nm): class (0 = shortest wavelength) and its
    probability per value; NaN centroids get class -1. ``n_dyes`` None = chosen by BIC."""
    sc = np.asarray(sc, dtype=float)
    ok = np.isfinite(sc)
    cls = np.full(len(sc), -1, dtype=np.int64)
    prob = np.full(len(sc), np.nan)
    if ok.sum() < 2:
        return cls, prob, 0
    data = sc[ok, None]
    if n_dyes is None:
        fits = [
            GaussianMixture(k, random_state=seed).fit(data)
            for k in range(1, min(max_dyes, ok.sum()) + 1)
        ]
        gmm = min(fits, key=lambda m: m.bic(data))
    else:
        gmm = GaussianMixture(min(n_dyes, int(ok.sum())), random_state=seed).fit(data)
    order = np.argsort(gmm.means_[:, 0])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    post = gmm.predict_proba(data)
    cls[ok] = rank[post.argmax(1)]
    prob[ok] = post.max(1)
    return cls, prob, gmm.n_components


def precision_by_signal(df: pd.DataFrame, columns: dict[str, str], n_bins: int) -> pd.DataFrame:
    """Spectral precision: std of each estimate across the frames of one run (one molecule),
    summarised (median over runs) per bin of the run's mean signal."""
    runs = df[df["cluster"] >= 0]
    if runs.empty:
        return pd.DataFrame(
            columns=["signal_bin", "signal_min", "signal_max", "runs"] + list(columns)
        )
    agg = runs.groupby("cluster").agg(
        signal=("signal", "mean"),
        n=("signal", "size"),
        **{k: (v, "std") for k, v in columns.items()},
    )
    agg = agg[agg["n"] >= 2]
    bins = pd.qcut(agg["signal"], q=min(n_bins, max(len(agg), 1)), duplicates="drop")
    out = agg.groupby(bins, observed=True).agg(
        runs=("n", "size"), **{k: (k, "median") for k in columns}
    )
    out.insert(0, "signal_min", [iv.left for iv in out.index])
    out.insert(1, "signal_max", [iv.right for iv in out.index])
    out.insert(0, "signal_bin", np.arange(len(out)))
    return out.reset_index(drop=True)


#: columns of the denoised patch table the stage reads (the others are not needed)
TABLE_COLUMNS = ("localization_index", "frame", "x", "y", "signal", "spec_row0", "spec_col0")
#: the denoise stage's cycle-spun fit of each denoised patch (:func:`shift_fits`)
DENOISED_FIT_COLUMNS = (
    "denoised_centre_px",
    "denoised_centre_sd_px",
    "denoised_width_px",
    "denoised_amplitude",
    "denoised_residual",
)

#: spectral precision: output column -> spectra.csv column whose spread over a run it measures
PRECISION_COLUMNS = {
    "sc_raw_std_nm": "sc_raw_nm",
    "sc_denoised_std_nm": "sc_denoised_nm",
    "fit_raw_std_nm": "fit_raw_centre_nm",
    "fit_denoised_std_nm": "fit_denoised_centre_nm",
    "sc_fused_std_nm": "sc_fused_nm",
    "sc_mle_std_nm": "sc_mle_nm",
}

#: columns of the localizations in runs kept in memory for the precision and the molecules
RUN_COLUMNS = (
    "cluster",
    "frame",
    "x",
    "y",
    "signal",
    *PRECISION_COLUMNS.values(),
    "sc_mle_crlb_nm",
    "sc_mle_width_nm",
    "spectral_photons",
    "background_photons",
    "sc_mle_flag",
    "mle_centre_px",
    "mle_box_row0",
    "mle_box_col0",
)

#: estimates classified into dyes (``dye_{name}``) from their ``sc_{name}_nm`` column
DYE_ESTIMATES = ("raw", "denoised", "mle")


#: glibc ``mallopt`` parameter M_MMAP_THRESHOLD and the value the stage fixes it to: blocks of
#: this size and more are mapped on their own and unmapped when freed
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES = -3, 1 << 20


def fix_mmap_threshold() -> None:
    """Fix glibc's mmap threshold (no-op without glibc). Left dynamic, glibc raises it (up to
    32 MiB) after the first large free, so each chunk's large temporaries come from the
    per-thread heaps, which fragment around the small arrays kept between chunks: the peak RSS
    then grows with the number of chunks instead of staying at one chunk's working set."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def run_blocks(bounds: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive blocks of whole runs, about ``size`` rows each and at least one run each:
    (first run, end run) pairs. ``bounds``: the row where each run starts, then the row count."""
    blocks, a, n = [], 0, len(bounds) - 1
    while a < n:
        b = min(n, max(a + 1, int(np.searchsorted(bounds, bounds[a] + size, side="right")) - 1))
        blocks.append((a, b))
        a = b
    return blocks


def patch_readouts(
    table: pd.DataFrame,
    sl: slice,
    paths: dict[str, str | Path],
    geometry: Geometry,
    cal: Calibration,
    n_rows: int,
    max_residual: float = math.inf,
    pool: Executor | None = None,
) -> dict[str, np.ndarray]:
    """Centroid, Gaussian fit and positive sum of the raw and denoised patches of the rows
    ``sl`` of ``table`` (the patch TIFFs' pages, in the table's order); the TIFFs are read out
    concurrently in ``pool`` when given (same values). The denoised fit is the cycle-spun one
    of the table's ``denoised_*`` columns (:func:`denoised_fit`), not a fit of the TIFF."""

    def one(name: str, path: str | Path) -> dict[str, np.ndarray]:
        fit = name != "denoised"
        return readout(read_patches(path, sl), table.iloc[sl], geometry, cal, n_rows, fit=fit)

    done = {name: pool.submit(one, name, path) for name, path in paths.items()} if pool else {}
    cols: dict[str, np.ndarray] = {}
    for name, path in paths.items():
        r = done[name].result() if pool else one(name, path)
        if name == "denoised":
            r.update(denoised_fit(table.iloc[sl], geometry, cal, max_residual))
        cols[f"sc_{name}_nm"] = r["sc"]
        cols[f"fit_{name}_centre_nm"] = r["fit_centre"]
        cols[f"fit_{name}_width_nm"] = r["fit_width"]
        cols[f"fit_{name}_amplitude"] = r["fit_amplitude"]
        if name == "denoised":
            cols["fit_denoised_spread_nm"] = r["fit_spread"]
            cols["fit_denoised_residual"] = r["fit_residual"]
        cols[f"sum_{name}"] = r["sum"]
    return cols


def denoised_fit(
    table: pd.DataFrame, geometry: Geometry, cal: Calibration, max_residual: float
) -> dict[str, np.ndarray]:
    """The denoised least-squares fit in nm from the denoise stage's cycle-spun fits in px
    (:func:`shift_fits`): centre, width, amplitude and spread of the centre over the shifts, NaN
    where the fit failed or the denoised profile is not one spectrum (relative residual above
    ``max_residual``: two spectra, a cut-off one, or noise the network turned into a bump); the
    residual itself is always given."""
    residual = table["denoised_residual"].to_numpy(dtype=float)
    good = residual <= max_residual
    step = abs(cal.nm_per_px)
    centre = cal.wavelength(
        table["spec_col0"].to_numpy() + table["denoised_centre_px"].to_numpy() - table["x"],
        geometry.spectral_offset,
    )
    return {
        "fit_centre": np.where(good, centre, np.nan),
        "fit_width": np.where(good, table["denoised_width_px"].to_numpy() * step, np.nan),
        "fit_amplitude": np.where(good, table["denoised_amplitude"].to_numpy(), np.nan),
        "fit_spread": np.where(good, table["denoised_centre_sd_px"].to_numpy() * step, np.nan),
        "fit_residual": residual,
    }


def fused_readout(
    table: pd.DataFrame,
    raw_tif: str | Path,
    geometry: Geometry,
    cal: Calibration,
    n_rows: int,
    chunk_size: int,
    threads: int = 1,
) -> pd.Series:
    """Centroid of each run localization's leave-one-out SF-fused patch (NaN outside runs),
    whole runs at a time, about ``chunk_size`` patches per step, ``threads`` steps at once."""
    from .fusion import leave_one_out_fusion

    sc = pd.Series(np.nan, index=table.index)
    in_run = np.flatnonzero(table["cluster"].to_numpy() >= 0)
    if not len(in_run):
        return sc
    cl, fr = table["cluster"].to_numpy()[in_run], table["frame"].to_numpy()[in_run]
    order = in_run[np.lexsort((fr, cl))]
    runs = table["cluster"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
    bounds = np.r_[starts, len(order)]
    steps = [
        (order[bounds[a] : bounds[b]], starts[a:b] - bounds[a])
        for a, b in run_blocks(bounds, chunk_size)
    ]

    def one(step: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        idx, run_starts = step
        fused, _ = leave_one_out_fusion(read_patches(raw_tif, idx), run_starts)
        return readout(fused, table.iloc[idx], geometry, cal, n_rows, fit=False)["sc"]

    with ThreadPoolExecutor(max(1, int(threads))) as pool:  # results are one value a patch
        for (idx, _), values in zip(steps, pool.map(one, steps), strict=True):
            sc.iloc[idx] = values
    return sc


def molecules(
    spectra: pd.DataFrame,
    stack_path: str | Path,
    geometry: Geometry,
    cal: Calibration,
    camera: Any,
    cfg: Any,
    chunk_size: int,
    n_dyes: int | None,
    seed: int,
) -> pd.DataFrame:
    """Per-molecule spectra (:func:`srsmlm.readout.molecule_table`), joint fits whole runs at a
    time, and a Gaussian-mixture dye class per molecule. ``spectra`` needs only the
    localizations in runs (``RUN_COLUMNS``), in the order of spectra.csv."""
    from .readout import joint_fits, molecule_groups, molecule_table
    from .stack import Stack

    trusted = molecule_groups(spectra)
    clusters = trusted["cluster"].to_numpy()
    starts = np.r_[np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]]), len(trusted)]
    starts = starts if len(trusted) else starts[:0]  # no usable frame: no joint fit
    with Stack(stack_path) as stack:
        parts = [
            joint_fits(stack, trusted.iloc[starts[a] : starts[b]], geometry, camera, cfg)
            for a, b in run_blocks(starts, chunk_size)
        ]
    joint = pd.concat(parts) if parts else None
    out = molecule_table(spectra, joint, geometry, cal, cfg)
    cls, prob, _ = classify_dyes(out["sc_nm"].to_numpy(), n_dyes, seed)
    return out.assign(dye=cls, dye_probability=prob)


def load_patch_table(
    denoised_table: str | Path,
    clusters_csv: str | Path,
    patch_tifs: tuple[str | Path, ...],
    geometry: Geometry,
) -> pd.DataFrame:
    """The columns of the denoised patch table the stage needs (``TABLE_COLUMNS`` and
    ``DENOISED_FIT_COLUMNS``), with each localization's run (``cluster``, -1 outside runs);
    checks the TIFFs hold one patch a row."""
    wanted = (*TABLE_COLUMNS, *DENOISED_FIT_COLUMNS)
    header = pd.read_csv(denoised_table, nrows=0).columns
    missing = [c for c in wanted if c not in header]
    if missing:
        raise InputError(
            denoised_table,
            f"the denoised patch table lacks column(s) {missing} (written by an older version)",
            "rerun denoise_acquisition (snakemake --forcerun denoise_acquisition)",
        )
    table = pd.read_csv(denoised_table, usecols=list(wanted))
    for path in patch_tifs:
        n_pages = _page_count(path, geometry)
        if n_pages != len(table):
            raise InputError(
                path, f"{n_pages} patches for {len(table)} table rows", "rerun denoise_acquisition"
            )
    clusters = pd.read_csv(clusters_csv, usecols=["localization_index", "cluster"])
    table = table.merge(clusters, on="localization_index", how="left")
    table["cluster"] = table["cluster"].fillna(-1).astype(np.int64)
    return table


def spectra_chunk(
    table: pd.DataFrame,
    sl: slice,
    sc_fused: np.ndarray,
    paths: dict[str, str | Path],
    stack: Any,
    geometry: Geometry,
    cal: Calibration,
    camera: Any,
    cfg: Any,
    n_rows: int,
    max_residual: float,
    pool: Executor,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The spectra.csv columns (all but the dye classes) of the rows ``sl`` of ``table``, and
    the extra maximum-likelihood columns the molecules need (box and centre). The
    maximum-likelihood readout (Numba, no GIL) runs in ``pool`` beside the patch readouts."""
    from .readout import MLE_COLUMNS, mle_readout

    part = table.iloc[sl]
    fit = pool.submit(mle_readout, stack, part, geometry, cal, camera, cfg)
    out = part[["localization_index", "frame", "x", "y", "signal", "cluster"]].copy()
    readouts = patch_readouts(table, sl, paths, geometry, cal, n_rows, max_residual, pool)
    for name, values in readouts.items():
        out[name] = values
    out["photons_proxy_adu"] = out["sum_raw"] * NORMALISATION
    out["sc_fused_nm"] = sc_fused[sl]
    mle = fit.result()
    out = out.join(mle[list(MLE_COLUMNS)])
    return out, mle[["mle_centre_px", "mle_box_row0", "mle_box_col0"]]


@dataclass
class _Kept:
    """What the global steps need of every chunk: the estimates the dye classes are fitted on
    and the CRLB (preallocated, one value a localization), the flag counts (summary), and the
    localizations in runs (spooled to disk a chunk at a time: only the molecules and the precision
    read them, after the readout pass)."""

    sc: dict[str, np.ndarray]
    crlb: np.ndarray
    flags: dict[str, int]
    runs: list[Path]
    max_residual: float = math.inf
    denoised_rejected: int = 0

    @classmethod
    def empty(cls, n: int, max_residual: float = math.inf) -> _Kept:
        sc = {name: np.empty(n) for name in DYE_ESTIMATES}
        return cls(sc, np.empty(n), {}, [], max_residual)

    def add(self, sl: slice, out: pd.DataFrame, extra: pd.DataFrame, runs_file: Path) -> None:
        for name, values in self.sc.items():
            values[sl] = out[f"sc_{name}_nm"].to_numpy()
        self.crlb[sl] = out["sc_mle_crlb_nm"].to_numpy()
        for flag, n in out["sc_mle_flag"].fillna("").replace("", "trusted").value_counts().items():
            self.flags[flag] = self.flags.get(flag, 0) + int(n)
        self.denoised_rejected += int((out["fit_denoised_residual"] > self.max_residual).sum())
        in_run = out["cluster"].to_numpy() >= 0
        out.join(extra).loc[in_run, list(RUN_COLUMNS)].to_pickle(runs_file)
        self.runs.append(runs_file)

    def runs_table(self) -> pd.DataFrame:
        if not self.runs:
            return pd.DataFrame(columns=list(RUN_COLUMNS))
        return pd.concat([pd.read_pickle(f) for f in self.runs])


def readout_pass(
    table: pd.DataFrame,
    sc_fused: np.ndarray,
    paths: dict[str, str | Path],
    stack_path: str | Path,
    spool: Path,
    geometry: Geometry,
    cal: Calibration,
    camera: Any,
    cfg: Any,
    n_rows: int,
    chunk_size: int,
    max_residual: float = math.inf,
) -> tuple[list[Path], _Kept]:
    """Read out ``table`` ``chunk_size`` rows at a time: each chunk's spectra.csv columns are
    pickled into ``spool`` (exact values and types); only what the global steps need stays in
    memory. ``max_residual``: see :func:`denoised_fit`."""
    from .stack import Stack

    kept = _Kept.empty(len(table), max_residual)
    files = []
    with Stack(stack_path) as stack, ThreadPoolExecutor(len(paths) + 1) as pool:
        for k, sl in enumerate(chunk_slices(len(table), chunk_size)):
            out, extra = spectra_chunk(
                table,
                sl,
                sc_fused,
                paths,
                stack,
                geometry,
                cal,
                camera,
                cfg,
                n_rows,
                max_residual,
                pool,
            )
            kept.add(sl, out, extra, spool / f"runs_{k:06d}.pkl")
            files.append(spool / f"chunk_{k:06d}.pkl")
            out.to_pickle(files[-1])
            log.info("read out %d / %d localizations", sl.stop, len(table))
    return files, kept


def write_spectra(
    files: list[Path], dyes: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path
) -> None:
    """spectra.csv, atomically, one spooled chunk at a time, with the dye classes appended (the
    same bytes as writing the whole table at once)."""
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        start = 0
        for k, file in enumerate(files):
            out = pd.read_pickle(file)
            sl = slice(start, start + len(out))
            for name, (cls, prob) in dyes.items():
                out[f"dye_{name}"] = cls[sl]
                out[f"dye_{name}_probability"] = prob[sl]
            out.to_csv(fh, header=k == 0, index=False)
            start = sl.stop


def spectra_stage(
    denoised_table: str | Path,
    raw_tif: str | Path,
    denoised_tif: str | Path,
    clusters_csv: str | Path,
    stack_path: str | Path,
    geometry: Geometry,
    section: dict[str, Any],
    camera: dict[str, Any],
    seed: int,
    spectra_csv: str | Path,
    precision_csv: str | Path,
    molecules_csv: str | Path,
    threads: int = 1,
) -> dict[str, Any]:
    """Spectra of every denoised localization: centroid and least-squares fit of the raw and
    denoised patches, the leave-one-out SF-fused centroid (runs), the maximum-likelihood readout
    on raw counts with its CRLB and flag, dye classes, spectral precision, and one row per
    molecule (run). Streams ``spectra.chunk_size`` localizations at a time: each chunk's columns
    are spooled beside the output, and spectra.csv is written from the spool once the dye classes
    (fitted on all estimates) are known; memory holds only the few columns of the global steps."""
    import shutil

    from .io import spool_dir, write_csv
    from .mle import Camera
    from .readout import ReadoutConfig, crowded

    fix_mmap_threshold()
    table = load_patch_table(denoised_table, clusters_csv, (raw_tif, denoised_tif), geometry)
    if table.empty:
        raise InputError(
            denoised_table,
            "no localization to read out: every filtered localization's box leaves the frame "
            "(listed in skipped.csv beside it)",
            "check geometry.spectral_offset / spectral_width against the frame width and narrow "
            "filter.x_range to the spots' side of the camera",
        )
    cal = calibration_from_config(section, geometry)
    cfg = ReadoutConfig.from_config(section, cal, threads=int(threads))
    cam = Camera.from_config(camera)
    n_rows, chunk = int(section["profile_rows"]), int(section["chunk_size"])
    max_residual = section.get("max_denoised_residual")
    max_residual = math.inf if max_residual is None else float(max_residual)
    sc_fused = fused_readout(table, raw_tif, geometry, cal, n_rows, chunk, threads).to_numpy()
    table["crowded"] = crowded(
        table["frame"].to_numpy(),
        table["x"].to_numpy(),
        table["y"].to_numpy(),
        cfg.crowding_rows_px,
        geometry.spectral_width + 2 * cfg.margin_px,
    )
    n = len(table)
    spool = spool_dir(spectra_csv)
    try:
        paths = {"raw": raw_tif, "denoised": denoised_tif}
        files, kept = readout_pass(
            table,
            sc_fused,
            paths,
            stack_path,
            spool,
            geometry,
            cal,
            cam,
            cfg,
            n_rows,
            chunk,
            max_residual,
        )
        del table, sc_fused
        dyes = {}
        for name, sc in kept.sc.items():
            dyes[name] = classify_dyes(sc, section.get("n_dyes"), seed)[:2]
        runs = kept.runs_table()
        mols = molecules(
            runs, stack_path, geometry, cal, cam, cfg, chunk, section.get("n_dyes"), seed
        )
        precision = precision_by_signal(runs, PRECISION_COLUMNS, int(section["signal_bins"]))
        write_spectra(files, dyes, spectra_csv)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    write_csv(precision, precision_csv)
    write_csv(mols, molecules_csv)
    return stage_summary(n, len(mols), cal, kept, precision)


def stage_summary(
    n: int, n_molecules: int, cal: Calibration, kept: _Kept, precision: pd.DataFrame
) -> dict[str, Any]:
    """The stage's summary (logged): counts, calibration, MLE flags, median CRLB."""
    summary = {
        "localizations": n,
        "molecules": n_molecules,
        "calibration": cal.__dict__,
        "mle_flags": dict(sorted(kept.flags.items(), key=lambda kv: -kv[1])),
        "median_sc_mle_crlb_nm": float(np.nanmedian(kept.crlb)) if n else None,
        "denoised_fits_rejected": kept.denoised_rejected,
    }
    log.info(
        "spectra of %d localizations (%d molecules); calibration %.4f nm/px, %.2f nm at the "
        "offset; MLE flags %s; median CRLB %.2f nm; %d denoised fits rejected (residual above "
        "spectra.max_denoised_residual = %s: not one spectrum); precision:\n%s",
        n,
        n_molecules,
        cal.nm_per_px,
        cal.wavelength_at_offset_nm,
        summary["mle_flags"],
        summary["median_sc_mle_crlb_nm"] or float("nan"),
        kept.denoised_rejected,
        kept.max_residual,
        precision.to_string(),
    )
    return summary


def _page_count(path: str | Path, geometry: Geometry) -> int:
    """Number of patches in a patch TIFF (pages of one patch, or one contiguous series)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape = tif.series[0].shape if tif.series else (0,)
    n = int(np.prod(shape)) // int(np.prod(geometry.shape)) if len(shape) else 0
    return n
