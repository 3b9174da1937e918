"""Readouts of spectral profiles: the profile of a patch (rows summed about the spot, background
subtracted), its centroid, the compiled least-squares Gaussian fit, and the cycle-spun fit of the
denoised patches (one fit per shifted prediction, mapped back to the planned box).

Conventions as in :mod:`srsmlm.calibration`: pixel column c spans x in [c, c+1).
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from .calibration import Calibration
from .geometry import Geometry
from .io import read_patches
from .mle import _FAST, _solve

#: the denoise stage's cycle-spun fit of each denoised patch (:func:`shift_fits`)
DENOISED_FIT_COLUMNS = (
    "denoised_centre_px",
    "denoised_centre_sd_px",
    "denoised_width_px",
    "denoised_amplitude",
    "denoised_residual",
)


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
    ``used`` receives the iterations run. One compiled loop on purpose: the normal equations are
    summed in scalars, which a split into helper functions would turn into array traffic."""
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


def profile_readout(
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
        return profile_readout(
            read_patches(path, sl), table.iloc[sl], geometry, cal, n_rows, fit=fit
        )

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
