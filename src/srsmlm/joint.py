"""Poisson maximum-likelihood joint fit of overlapping spectra in one box.

Localizations of one frame whose readout boxes overlap are fitted together in one region of the
frame covering all their boxes (a *group*; ``srsmlm.readout`` forms them):

    mu_ij = sum_k N_k g(i; y_k, sigma_y) g(j; c_k + l_k, s_k) + b

with the pixel-integrated Gaussians, camera model and Fisher-scoring iteration of
:mod:`srsmlm.mle`. ``c_k`` is the column where emitter k's own readout box starts (in region
coordinates), so ``l_k`` is read like a single fit's ``l0``; ``y_k`` is bounded to a band around
the localization's row. The bound of each ``l_k`` is ``[I^-1]_{l_k,l_k}`` of the whole group's
Fisher information: what the overlap costs raises it honestly. Parameters: ``b`` first, then
``(N, l, s, y)`` per emitter (``P = 1 + 4 K``); the system is solved dense (``K`` is capped by
``spectra.max_group_size``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numba
import numpy as np
from scipy.special import chdtrc

from .mle import _FAST, Camera, FitSettings, _gauss_pixels, _in_threads, _solve

#: the per-emitter parameters, in their order after the shared background
EMITTER = ("N", "l", "s", "y")


@numba.njit(cache=True, nogil=True)
def _emitter_pixels(theta, k, c, sy, h, w, pix):  # pragma: no cover - compiled
    """Row and column pixel integrals of emitter ``k`` and their derivatives into ``pix[k]``
    (rows: gy, dgy; columns: gl, dgl, dgs)."""
    base = 1 + 4 * k
    _gauss_pixels(theta[base + 3], sy, pix[k, 0, :h], pix[k, 1, :h], pix[k, 5, :h])
    _gauss_pixels(theta[base + 1] + c[k], theta[base + 2], pix[k, 2, :w], pix[k, 3, :w],
                  pix[k, 4, :w])  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _joint_terms(x, theta, c, sy, gamma, ef, want, grad, info, pix, d):  # pragma: no cover
    """Log-likelihood of a region ``x`` (h, w; photons) under the group's model; with ``want``
    also the gradient (P) and Fisher information (P x P)."""
    h, w = x.shape
    n_em = c.shape[0]
    p = 1 + 4 * n_em
    for k in range(n_em):
        _emitter_pixels(theta, k, c, sy, h, w, pix)
    if want:
        grad[:p] = 0.0
        info[:p, :p] = 0.0
    ll = 0.0
    b = theta[0]
    d[0] = 1.0
    for i in range(h):
        for j in range(w):
            mu = b + gamma
            for k in range(n_em):
                mu += theta[1 + 4 * k] * pix[k, 0, i] * pix[k, 2, j]
            xv = x[i, j] + gamma
            ll += (xv * math.log(mu / ef) - mu) / ef
            if not want:
                continue
            for k in range(n_em):
                n, gy, gl = theta[1 + 4 * k], pix[k, 0, i], pix[k, 2, j]
                d[1 + 4 * k] = gy * gl
                d[2 + 4 * k] = n * gy * pix[k, 3, j]
                d[3 + 4 * k] = n * gy * pix[k, 4, j]
                d[4 + 4 * k] = n * pix[k, 1, i] * gl
            r = (xv / mu - 1.0) / ef
            wg = 1.0 / (ef * mu)
            for a in range(p):
                grad[a] += r * d[a]
                da = wg * d[a]
                for e in range(a, p):
                    info[a, e] += da * d[e]
    if want:
        for a in range(p):
            for e in range(a):
                info[a, e] = info[e, a]
    return ll


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _joint_deviance(x, theta, c, sy, gamma, ef, pix):  # pragma: no cover - compiled
    """2 sum [x' log(x'/mu') - (x' - mu')] over the region (see ``mle._box_deviance``)."""
    h, w = x.shape
    n_em = c.shape[0]
    for k in range(n_em):
        _emitter_pixels(theta, k, c, sy, h, w, pix)
    dev = 0.0
    for i in range(h):
        for j in range(w):
            mu = theta[0]
            for k in range(n_em):
                mu += theta[1 + 4 * k] * pix[k, 0, i] * pix[k, 2, j]
            mu = (mu + gamma) / ef
            xv = (x[i, j] + gamma) / ef
            dev += mu - xv
            if xv > 0:
                dev += xv * math.log(xv / mu)
    return 2.0 * dev


@numba.njit(cache=True, nogil=True)
def _damped_step(grad, info, lam, fix_s, p, lhs, rhs, step):  # pragma: no cover - compiled
    """Solve (I + lam diag(I)) step = grad; a fixed width takes no step."""
    for a in range(p):
        for e in range(p):
            lhs[a, e] = info[a, e]
        lhs[a, a] += lam * info[a, a] + 1e-300
        rhs[a] = grad[a]
    if fix_s:
        for k in range((p - 1) // 4):
            a = 3 + 4 * k
            for e in range(p):
                lhs[a, e] = 0.0
                lhs[e, a] = 0.0
            lhs[a, a] = 1.0
            rhs[a] = 0.0
    return _solve(lhs, rhs, step)


@numba.njit(cache=True, nogil=True)
def _fit_region(x, theta, c, lo, hi, sy, gamma, ef, fix_s, max_iter, tol):  # pragma: no cover
    """Damped Fisher scoring of one group, ``theta`` in place, clipped to ``[lo, hi]``.
    Returns (log-likelihood, iterations, converged)."""
    n_em = c.shape[0]
    p = 1 + 4 * n_em
    m = max(x.shape[0], x.shape[1])
    pix = np.empty((n_em, 6, m))
    d = np.empty(p)
    grad, info = np.empty(p), np.empty((p, p))
    tgrad, tinfo = np.empty(p), np.empty((p, p))
    lhs, rhs, step, trial = np.empty((p, p)), np.empty(p), np.zeros(p), np.empty(p)
    ll = _joint_terms(x, theta, c, sy, gamma, ef, True, grad, info, pix, d)
    lam = 1e-3
    for it in range(1, max_iter + 1):
        if not np.isfinite(ll):
            return ll, it, False
        accepted = False
        moved = 0.0
        while lam < 1e10:
            if _damped_step(grad, info, lam, fix_s, p, lhs, rhs, step):
                for a in range(p):
                    trial[a] = min(max(theta[a] + step[a], lo[a]), hi[a])
                tll = _joint_terms(x, trial, c, sy, gamma, ef, True, tgrad, tinfo, pix, d)
                if np.isfinite(tll) and tll >= ll:
                    moved = 0.0
                    for k in range(n_em):
                        for a in (2 + 4 * k, 3 + 4 * k, 4 + 4 * k):
                            moved = max(moved, abs(trial[a] - theta[a]))
                    theta[:] = trial
                    grad[:] = tgrad
                    info[:, :] = tinfo
                    ll = tll
                    lam = max(lam * 0.1, 1e-7)
                    accepted = True
                    break
            lam *= 10.0
        if not accepted or moved < tol:
            return ll, it, True
    return ll, max_iter, False


@numba.njit(cache=True, nogil=True)
def _centre_variances(info, fix_s, p, var, rho):  # pragma: no cover - compiled
    """``[I^-1]`` of every emitter's centre, photons and row (``var[k]``: l, N, y; inf where the
    information is singular) and the largest correlation of its centre with another emitter's
    parameters (``rho``: near 1 where the two spectra cannot be told apart)."""
    n_em = (p - 1) // 4
    inv = np.empty((p, p))
    lhs, rhs, sol = np.empty((p, p)), np.empty(p), np.empty(p)
    ok = True
    for col in range(p):
        for a in range(p):
            for e in range(p):
                lhs[a, e] = info[a, e]
            rhs[a] = 1.0 if a == col else 0.0
        if fix_s:
            for q in range(n_em):
                a = 3 + 4 * q
                for e in range(p):
                    lhs[a, e] = 0.0
                    lhs[e, a] = 0.0
                lhs[a, a] = 1.0
        ok = ok and _solve(lhs, rhs, sol)
        for a in range(p):
            inv[a, col] = sol[a]
    for k in range(n_em):
        for slot, q in enumerate((2 + 4 * k, 1 + 4 * k, 4 + 4 * k)):
            v = inv[q, q]
            var[k, slot] = v if ok and v > 0 and np.isfinite(v) else np.inf
        a = 2 + 4 * k
        v = inv[a, a]
        rho[k] = 1.0 if not np.isfinite(var[k, 0]) else 0.0
        for q in range(1, p):
            if (q - 1) // 4 == k or not inv[q, q] > 0:
                continue
            rho[k] = max(rho[k], abs(inv[a, q]) / math.sqrt(v * inv[q, q]))


@numba.njit(cache=True, nogil=True)
def _fit_regions(
    g0, g1, data, regions, starts, theta, cols, lo, hi, sy, gamma, ef, fix_s, max_iter, tol,
    ll, iters, conv, dev, var, rho,
):  # pragma: no cover - compiled  # fmt: skip
    """Fit groups g0..g1-1 (one thread's share; released GIL): each group's region of its
    padded box, its parameters ``theta[g]`` in place, then the bounds and the deviance."""
    for g in range(g0, g1):
        r0, c0, h, w = regions[g, 0], regions[g, 1], regions[g, 2], regions[g, 3]
        a, b = starts[g], starts[g + 1]
        n_em = b - a
        p = 1 + 4 * n_em
        x = data[g, r0 : r0 + h, c0 : c0 + w]
        th = theta[g, :p]
        c = cols[a:b]
        ll[g], iters[g], conv[g] = _fit_region(
            x, th, c, lo[g, :p], hi[g, :p], sy, gamma, ef, fix_s, max_iter, tol
        )
        pix = np.empty((n_em, 6, max(h, w)))
        grad, info, d = np.empty(p), np.empty((p, p)), np.empty(p)
        _joint_terms(x, th, c, sy, gamma, ef, True, grad, info, pix, d)
        _centre_variances(info, fix_s, p, var[a:b], rho[a:b])
        dev[g] = _joint_deviance(x, th, c, sy, gamma, ef, pix)


def fit_groups(
    data: np.ndarray,
    regions: np.ndarray,
    starts: np.ndarray,
    cols: np.ndarray,
    start: np.ndarray,
    y_band: float | np.ndarray,
    l_bounds: tuple[float, float],
    settings: FitSettings,
    camera: Camera,
) -> dict[str, np.ndarray]:
    """Joint fit of groups of emitters, one region each.

    ``data`` (G, H, W): photons of each group's padded box; ``regions`` (G, 4): the fitted region
    (row0, col0, height, width) inside it; ``starts`` (G + 1,): each group's first emitter;
    ``cols`` (E,): each emitter's own box column in its group's region (``c_k``); ``start``
    (E, 5): (N, l, s, y, b) per emitter, ``y`` in region rows, ``b`` averaged per group.
    ``y`` is bounded to ``start y +- y_band`` (px; one for all, or one per emitter), ``l`` to
    ``l_bounds`` (px of the emitter's own box: a spectrum is looked for where its own readout
    would see it). Returns per group ``loglik``, ``deviance``,
    ``dof``, ``p_fit``, ``iterations``, ``converged``, ``b``; per emitter ``N``, ``l0``, ``s``,
    ``y0``, ``var_l0`` (CRLB, px^2), ``var_N`` and ``var_y0`` (the bounds of the photons and
    the row) and ``rho``, the largest correlation of the centre with
    another emitter's parameters.
    """
    data = np.maximum(np.ascontiguousarray(data, dtype=np.float64), -camera.gamma)
    regions = np.ascontiguousarray(regions, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.float64)
    sizes = np.diff(starts)
    n_groups, width = len(sizes), int(np.max(sizes, initial=1))
    theta, lo, hi = _packed_start(start, starts, sizes, width, y_band, l_bounds, settings)
    ll, dev = np.empty(n_groups), np.empty(n_groups)
    iters, conv = np.zeros(n_groups, np.int64), np.zeros(n_groups, np.bool_)
    var, rho = np.empty((len(cols), 3)), np.empty(len(cols))
    fix_s = settings.fixed_s is not None
    _in_threads(
        _fit_regions, starts, settings.threads, data, regions, starts, theta, cols, lo, hi,
        settings.sigma_y, camera.gamma, camera.excess_factor, fix_s, settings.max_iterations,
        settings.tolerance, ll, iters, conv, dev, var, rho,
    )  # fmt: skip
    emitters = _unpack(theta, starts, sizes)
    dof = regions[:, 2] * regions[:, 3] - (1 + sizes * (3 if fix_s else 4))
    return emitters | {
        "var_l0": var[:, 0].copy(),
        "var_N": var[:, 1].copy(),
        "var_y0": var[:, 2].copy(),
        "rho": rho,
        "loglik": ll,
        "deviance": dev,
        "dof": dof,
        "p_fit": chdtrc(np.maximum(dof, 1), dev),
        "iterations": iters,
        "converged": conv & np.isfinite(ll),
        "b": theta[:, 0].copy(),
    }


def bounds_at(
    shapes: np.ndarray,
    starts: np.ndarray,
    cols: np.ndarray,
    emitters: np.ndarray,
    b: np.ndarray,
    settings: FitSettings,
    camera: Camera,
) -> dict[str, np.ndarray]:
    """The bounds :func:`fit_groups` reports, at given parameters instead of at a fit: each
    group's Fisher information at (``b``, ``emitters``) and ``[I^-1]`` of every emitter's centre,
    photons and row (the expected information does not depend on the data).

    ``shapes`` (G, 2): each group's region (height, width); ``starts`` (G + 1,) and ``cols`` (E,)
    as in :func:`fit_groups`; ``emitters`` (E, 4): (N, l, s, y) per emitter, ``l`` in its own box
    (region column ``cols + l``), ``y`` in region rows; ``b`` (G,) photons/px. A fixed width
    (``settings.fixed_s``) replaces ``s`` and is not a parameter. Returns per emitter ``var_l0``
    (px^2), ``var_N``, ``var_y0`` and ``rho``; inf where the information is singular. A fit of
    no iterations: the parameters are not moved, bounded only as a fit bounds them (N > 0,
    ``s`` within ``settings.s_bounds``)."""
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 2)
    starts = np.asarray(starts, dtype=np.int64)
    emitters = np.asarray(emitters, dtype=np.float64).reshape(-1, 4)
    sizes = np.diff(starts)
    height, width = (int(v) for v in shapes.max(axis=0, initial=1))
    data = np.zeros((len(shapes), height, width))
    regions = np.column_stack([np.zeros((len(shapes), 2), np.int64), shapes])
    member = np.repeat(np.arange(len(sizes)), sizes)
    start = np.column_stack([emitters, np.asarray(b, dtype=np.float64)[member]])
    still = replace(settings, max_iterations=0)
    fit = fit_groups(data, regions, starts, cols, start, np.inf, (-np.inf, np.inf), still, camera)
    return {key: fit[key] for key in ("var_l0", "var_N", "var_y0", "rho")}


def _packed_start(
    start: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    width: int,
    y_band: float | np.ndarray,
    l_bounds: tuple[float, float],
    settings: FitSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group parameter vectors (G, 1 + 4 max K) from per-emitter starts, and their bounds."""
    start = np.asarray(start, dtype=np.float64)
    group = np.repeat(np.arange(len(sizes)), sizes)
    slot = np.arange(len(start)) - starts[group]
    p = 1 + 4 * width
    theta = np.zeros((len(sizes), p))
    lo = np.full((len(sizes), p), -np.inf)
    hi = np.full((len(sizes), p), np.inf)
    theta[:, 0] = np.bincount(group, start[:, 4], len(sizes)) / np.maximum(sizes, 1)
    lo[:, 0] = 1e-6
    s_lo, s_hi = settings.s_bounds
    s = np.full(len(start), settings.fixed_s) if settings.fixed_s is not None else start[:, 2]
    bounds = {
        0: (start[:, 0], 1e-3, np.inf),
        1: (start[:, 1], l_bounds[0], l_bounds[1]),
        2: (s, s_lo, s_hi),
        3: (start[:, 3], start[:, 3] - y_band, start[:, 3] + y_band),
    }
    for q, (value, low, high) in bounds.items():
        col = 1 + 4 * slot + q
        lo[group, col], hi[group, col] = low, high
        theta[group, col] = np.clip(value, low, high)
    return theta, lo, hi


def _unpack(theta: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Per-emitter columns of the packed parameters."""
    group = np.repeat(np.arange(len(sizes)), sizes)
    slot = np.arange(int(sizes.sum())) - starts[group]
    names = {"N": 0, "l0": 1, "s": 2, "y0": 3}
    return {name: theta[group, 1 + 4 * slot + q] for name, q in names.items()}
