"""Poisson maximum-likelihood fit of spectral boxes, with the Cramér-Rao bound of each fit.

Model of one spectral box (rows i along y, columns j along the dispersion, photons per px):

    mu_ij = N * g(i; y0, sigma_y) * g(j; l0, s) + b

with pixel-integrated Gaussians ``g(k; m, s) = Phi((k + 1 - m) / s) - Phi((k - m) / s)`` (pixel k
spans [k, k+1) in box coordinates). ``sigma_y`` (the PSF's sd, px) is known; N (photons in the
whole spectrum), l0 (centre, px), s (spectral sd, px), y0 (row centre, px) and b (background,
photons/px) are fitted. ``s`` can be fixed.

Noise (``Camera``): data are converted to photons, ``x = (ADU - offset) / gain``. sCMOS/CCD: read
noise (and the ADU rounding, 1/12 ADU^2) enter as the usual Poisson approximation, data and model
both shifted by ``gamma = (read_noise^2 + 1/12) / gain^2`` (Huang et al., Nat Methods 10, 653,
2013). EMCCD: the excess-noise factor F = 2 halves the information; ``x / F`` is fitted as Poisson
with mean ``mu / F``. Fisher information ``F_kl = sum_ij d_k mu d_l mu / (F (mu + gamma))``.

Groups of boxes can share ``l0`` and ``s`` (the frames of one molecule's run): each box keeps its
own N, y0 and b. The update is a Levenberg-Marquardt-damped Fisher-scoring step solved by the
Schur complement over the shared parameters, so a single box is the group of size one and a run
of K frames costs K single fits per iteration. Kernels are Numba-compiled (``nogil``, parallel
over groups); the CRLB of l0 is ``[I^-1]_{l0,l0}`` at the fit (Smith et al., Nat Methods 7, 373,
2010; Chao, Ward & Ober, JOSA A 33, B36, 2016).

One module on purpose (over 500 lines): the compiled kernels share the pixel integrals, the
small dense solver and the Schur-complement step, and Numba compiles them as one unit; the
joint fit of overlapping spectra (:mod:`srsmlm.joint`) reuses them.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from scipy.special import chdtrc, ndtr

_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)

#: fastmath flags for the pixel loops: reassociation lets LLVM vectorise the sums; no flag that
#: assumes finite values (NaN and inf must still be detected)
_FAST = {"reassoc", "contract", "arcp", "nsz"}

#: order of the shared and the per-box parameters in the outputs
SHARED = ("l0", "s")
LOCAL = ("N", "y0", "b")

#: the flags, in the order they are checked; an empty flag means trusted
FLAGS = ("not_converged", "truncated", "crowded", "bad_fit", "dim")


@dataclass(frozen=True)
class Camera:
    """Camera noise model. ``type``: ``emccd``, ``scmos`` or ``ccd``; gain in ADU per photon
    (for an EMCCD, the total gain including the EM gain); offset and read noise in ADU."""

    type: str = "scmos"
    gain_adu_per_photon: float = 2.0
    offset_adu: float = 100.0
    read_noise_adu: float = 1.6

    def __post_init__(self) -> None:
        if self.type not in ("emccd", "scmos", "ccd"):
            raise ValueError(f"camera.type must be emccd, scmos or ccd, got {self.type!r}")
        if self.gain_adu_per_photon <= 0:
            raise ValueError("camera.gain_adu_per_photon must be > 0")

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> Camera:
        return cls(
            type=str(section["type"]),
            gain_adu_per_photon=float(section["gain_adu_per_photon"]),
            offset_adu=float(section["offset_adu"]),
            read_noise_adu=float(section["read_noise_adu"]),
        )

    @property
    def excess_factor(self) -> float:
        """Variance / mean of the photon signal: 2 for an EMCCD at high gain, else 1."""
        return 2.0 if self.type == "emccd" else 1.0

    @property
    def gamma(self) -> float:
        """Read-noise variance in photons^2 (with ADU rounding); 0 for an EMCCD (divided by the
        EM gain)."""
        if self.type == "emccd":
            return 0.0
        return (self.read_noise_adu**2 + 1.0 / 12.0) / self.gain_adu_per_photon**2

    def photons(self, adu: np.ndarray) -> np.ndarray:
        """Camera counts (ADU) -> photons, float64."""
        return (np.asarray(adu, dtype=np.float64) - self.offset_adu) / self.gain_adu_per_photon


@dataclass(frozen=True)
class FitSettings:
    """Model constants and bounds (px, photons)."""

    sigma_y: float
    s_bounds: tuple[float, float]
    fixed_s: float | None = None
    max_iterations: int = 50
    tolerance: float = 1e-4  # px, on the shared parameters' step
    threads: int = 1


def _in_threads(kernel: Any, groups: np.ndarray, threads: int, *args: Any) -> None:
    """Run ``kernel(g0, g1, *args)`` over blocks of groups of about equal box counts on
    ``threads`` threads (the kernels release the GIL and write disjoint outputs)."""
    n = len(groups) - 1
    if n <= 0:
        return
    parts = max(1, min(int(threads), n))
    if parts == 1:
        kernel(0, n, *args)
        return
    cuts = np.searchsorted(groups, np.linspace(0, groups[-1], 4 * parts + 1)[1:-1])
    bounds = np.unique(np.r_[0, np.clip(cuts, 0, n), n])
    with ThreadPoolExecutor(parts) as pool:
        jobs = [
            pool.submit(kernel, a, b, *args) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        for job in jobs:
            job.result()


# --------------------------------------------------------------------------- kernels (Numba)


@numba.njit(cache=True, nogil=True)
def _gauss_pixels(m, s, g, dgm, dgs):  # pragma: no cover - compiled
    """Pixel integrals of N(m, s^2) over [k, k+1) and their derivatives in m and s."""
    u0 = (0.0 - m) / s
    c0 = 0.5 * math.erfc(-u0 / _SQRT2)
    p0 = _INV_SQRT2PI * math.exp(-0.5 * u0 * u0)
    for k in range(g.shape[0]):
        u1 = (k + 1.0 - m) / s
        c1 = 0.5 * math.erfc(-u1 / _SQRT2)
        p1 = _INV_SQRT2PI * math.exp(-0.5 * u1 * u1)
        g[k] = c1 - c0
        dgm[k] = -(p1 - p0) / s
        dgs[k] = -(u1 * p1 - u0 * p0) / s
        u0, c0, p0 = u1, c1, p1


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _box_terms(x, shared, off, local, sy, gamma, ef, want, grad, info, scratch):  # pragma: no cover
    """Log-likelihood of one box; with ``want``, also its gradient (5) and Fisher information
    (5 x 5) in the order (l0, s, N, y0, b). ``x``: photons, clipped so that x + gamma >= 0;
    the box's own centre is ``l0 - off``.

    The model is separable: d mu / d theta_a = row_a(i) * col_a(j) with columns dgl (l0),
    dgs (s), gl (N, y0) and 1 (b), so each row accumulates 4 residual sums and 10 weighted
    column products (vectorised), multiplied by the row factors once per row."""
    h, w = x.shape
    n, b = local[0], local[2]
    gy, dgy, dgys = scratch[0, :h], scratch[1, :h], scratch[2, :h]
    gl, dgl, dgs = scratch[3, :w], scratch[4, :w], scratch[5, :w]
    _gauss_pixels(local[1], sy, gy, dgy, dgys)
    _gauss_pixels(shared[0] - off, shared[1], gl, dgl, dgs)
    ll = 0.0
    if not want:
        for i in range(h):
            for j in range(w):
                mu = n * gy[i] * gl[j] + b + gamma
                ll += ((x[i, j] + gamma) * math.log(mu / ef) - mu) / ef
        return ll
    grad[:] = 0.0
    info[:, :] = 0.0
    # column type of each parameter: 0 dgl, 1 dgs, 2 gl, 3 one
    kind = (0, 1, 2, 2, 3)
    rs = np.empty(4)
    ws = np.empty((4, 4))
    rf = np.empty(5)
    for i in range(h):
        ng = n * gy[i]
        r_l = r_s = r_g = r_1 = 0.0
        w_ll = w_ls = w_lg = w_l1 = w_ss = w_sg = w_s1 = w_gg = w_g1 = w_11 = 0.0
        for j in range(w):
            mu = ng * gl[j] + b + gamma
            xv = x[i, j] + gamma
            ll += (xv * math.log(mu / ef) - mu) / ef
            r = (xv / mu - 1.0) / ef
            wg = 1.0 / (ef * mu)
            cl, cs, cg = dgl[j], dgs[j], gl[j]
            r_l += r * cl
            r_s += r * cs
            r_g += r * cg
            r_1 += r
            w_ll += wg * cl * cl
            w_ls += wg * cl * cs
            w_lg += wg * cl * cg
            w_l1 += wg * cl
            w_ss += wg * cs * cs
            w_sg += wg * cs * cg
            w_s1 += wg * cs
            w_gg += wg * cg * cg
            w_g1 += wg * cg
            w_11 += wg
        rs[0], rs[1], rs[2], rs[3] = r_l, r_s, r_g, r_1
        ws[0, 0], ws[0, 1], ws[0, 2], ws[0, 3] = w_ll, w_ls, w_lg, w_l1
        ws[1, 1], ws[1, 2], ws[1, 3] = w_ss, w_sg, w_s1
        ws[2, 2], ws[2, 3], ws[3, 3] = w_gg, w_g1, w_11
        rf[0], rf[1], rf[2], rf[3], rf[4] = ng, ng, gy[i], n * dgy[i], 1.0
        for a in range(5):
            grad[a] += rf[a] * rs[kind[a]]
            for c in range(a, 5):
                ka, kc = kind[a], kind[c]
                wv = ws[ka, kc] if ka <= kc else ws[kc, ka]
                info[a, c] += rf[a] * rf[c] * wv
    for a in range(5):
        for c in range(a):
            info[a, c] = info[c, a]
    return ll


@numba.njit(cache=True, nogil=True)
def _solve(a, rhs, out):  # pragma: no cover - compiled
    """Solve a small dense system by Gaussian elimination with partial pivoting; False if
    singular. ``a`` and ``rhs`` are overwritten."""
    n = a.shape[0]
    for k in range(n):
        p = k
        for r in range(k + 1, n):
            if abs(a[r, k]) > abs(a[p, k]):
                p = r
        if not (abs(a[p, k]) > 1e-300):
            return False
        if p != k:
            for c in range(n):
                a[k, c], a[p, c] = a[p, c], a[k, c]
            rhs[k], rhs[p] = rhs[p], rhs[k]
        for r in range(k + 1, n):
            f = a[r, k] / a[k, k]
            for c in range(k, n):
                a[r, c] -= f * a[k, c]
            rhs[r] -= f * rhs[k]
    for k in range(n - 1, -1, -1):
        acc = rhs[k]
        for c in range(k + 1, n):
            acc -= a[k, c] * out[c]
        out[k] = acc / a[k, k]
    return True


@numba.njit(cache=True, nogil=True)
def _group_eval(data, shared, off, local, sy, gamma, ef, grads, infos, scratch):  # pragma: no cover
    """Log-likelihood of a group, with every box's gradient and information."""
    ll = 0.0
    for i in range(data.shape[0]):
        ll += _box_terms(
            data[i], shared, off[i], local[i], sy, gamma, ef, True, grads[i], infos[i], scratch
        )
    return ll


@numba.njit(cache=True, nogil=True)
def _local_block(info, lam, fix_s, dl, bl):  # pragma: no cover - compiled
    """Damped per-box block D (3 x 3) and coupling B^T (3 x 2) of one box's information."""
    for r in range(3):
        for c in range(3):
            dl[r, c] = info[2 + r, 2 + c]
        dl[r, r] *= 1.0 + lam
        bl[r, 0] = info[2 + r, 0]
        bl[r, 1] = 0.0 if fix_s else info[2 + r, 1]


@numba.njit(cache=True, nogil=True)
def _schur(grads, infos, lam, fix_s, s_mat, s_rhs, work):  # pragma: no cover - compiled
    """Damped Schur complement over the shared parameters: S = A - sum B D^-1 B^T and
    r = g_shared - sum B D^-1 g_local. False if a per-box block is singular."""
    dl, bl = work[0:3, 0:3], work[3:6, 0:2]
    tmp, sol = work[6, 0:3], work[7, 0:3]
    s_mat[:, :] = 0.0
    s_rhs[:] = 0.0
    for i in range(grads.shape[0]):
        info, g = infos[i], grads[i]
        for a in range(2):
            s_rhs[a] += g[a]
            for c in range(2):
                s_mat[a, c] += info[a, c]
        for a in range(3):  # columns: B^T[:, 0], B^T[:, 1], g_local
            _local_block(info, lam, fix_s, dl, bl)
            for r in range(3):
                tmp[r] = bl[r, a] if a < 2 else g[2 + r]
            if not _solve(dl, tmp, sol):
                return False
            for c in range(2):
                acc = 0.0
                for r in range(3):
                    acc += bl[r, c] * sol[r]
                if a < 2:
                    s_mat[c, a] -= acc
                else:
                    s_rhs[c] -= acc
    for a in range(2):
        s_mat[a, a] *= 1.0 + lam
    if fix_s:
        s_mat[0, 1] = s_mat[1, 0] = 0.0
        s_mat[1, 1] = 1.0
        s_rhs[1] = 0.0
    return True


@numba.njit(cache=True, nogil=True)
def _step(grads, infos, lam, fix_s, dshared, dlocal, work):  # pragma: no cover - compiled
    """One damped Fisher-scoring step: shared step by the Schur complement, then each box's."""
    s_mat, s_rhs = work[8:10, 0:2], work[10, 0:2]
    if not _schur(grads, infos, lam, fix_s, s_mat, s_rhs, work):
        return False
    if not _solve(s_mat, s_rhs, dshared):
        return False
    dl, bl = work[0:3, 0:3], work[3:6, 0:2]
    tmp = work[6, 0:3]
    for i in range(grads.shape[0]):
        _local_block(infos[i], lam, fix_s, dl, bl)
        for r in range(3):
            tmp[r] = grads[i][2 + r] - bl[r, 0] * dshared[0] - bl[r, 1] * dshared[1]
        if not _solve(dl, tmp, dlocal[i]):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _fit_group(
    data, shared, off, local, bounds, sy, gamma, ef, fix_s, max_iter, tol
):  # pragma: no cover
    """Damped Fisher scoring (Levenberg-Marquardt) of one group, in place.
    Returns (log-likelihood, iterations, converged)."""
    k, h, w = data.shape
    scratch = np.empty((7, max(h, w, 5)))
    work = np.empty((11, 3))
    grads, infos = np.empty((k, 5)), np.empty((k, 5, 5))
    tgrads, tinfos = np.empty((k, 5)), np.empty((k, 5, 5))
    dshared, dlocal = np.zeros(2), np.zeros((k, 3))
    tshared, tlocal = np.empty(2), np.empty((k, 3))
    ll = _group_eval(data, shared, off, local, sy, gamma, ef, grads, infos, scratch)
    lam = 1e-3
    for it in range(1, max_iter + 1):
        if not np.isfinite(ll):
            return ll, it, False
        accepted = False
        step = 0.0
        while lam < 1e10:
            if _step(grads, infos, lam, fix_s, dshared, dlocal, work):
                for a in range(2):
                    tshared[a] = min(max(shared[a] + dshared[a], bounds[a, 0]), bounds[a, 1])
                for i in range(k):
                    for r in range(3):
                        v = local[i, r] + dlocal[i, r]
                        tlocal[i, r] = min(max(v, bounds[2 + r, 0]), bounds[2 + r, 1])
                tll = _group_eval(
                    data, tshared, off, tlocal, sy, gamma, ef, tgrads, tinfos, scratch
                )
                if np.isfinite(tll) and tll >= ll:
                    step = max(abs(tshared[0] - shared[0]), abs(tshared[1] - shared[1]))
                    shared[:] = tshared
                    local[:, :] = tlocal
                    grads[:, :] = tgrads
                    infos[:, :, :] = tinfos
                    ll = tll
                    lam = max(lam * 0.1, 1e-7)
                    accepted = True
                    break
            lam *= 10.0
        if not accepted or step < tol:  # converged, or no damped step improves any more
            return ll, it, True
    return ll, max_iter, False


@numba.njit(cache=True, nogil=True)
def _fit_groups(
    g0,
    g1,
    data,
    starts,
    shared,
    off,
    local,
    bounds,
    sy,
    gamma,
    ef,
    fix_s,
    max_iter,
    tol,
    ll,
    iters,
    conv,
):  # pragma: no cover - compiled
    """Fit groups g0..g1-1 (one thread's share; released GIL)."""
    for g in range(g0, g1):
        a, b = starts[g], starts[g + 1]
        res = _fit_group(
            data[a:b], shared[g], off[a:b], local[a:b], bounds, sy, gamma, ef, fix_s, max_iter, tol
        )
        ll[g], iters[g], conv[g] = res


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _box_deviance(x, shared, off, local, sy, gamma, ef, scratch):  # pragma: no cover - compiled
    """2 sum [x' log(x'/mu') - (x' - mu')] with x' = (x + gamma)/F, mu' = (mu + gamma)/F."""
    h, w = x.shape
    gy, gl = scratch[0, :h], scratch[3, :w]
    _gauss_pixels(local[1], sy, gy, scratch[1, :h], scratch[2, :h])
    _gauss_pixels(shared[0] - off, shared[1], gl, scratch[4, :w], scratch[5, :w])
    d = 0.0
    for i in range(h):
        for j in range(w):
            mu = (local[0] * gy[i] * gl[j] + local[2] + gamma) / ef
            xv = (x[i, j] + gamma) / ef
            d += mu - xv
            if xv > 0:
                d += xv * math.log(xv / mu)
    return 2.0 * d


@numba.njit(cache=True, nogil=True)
def _information(
    g0, g1, data, starts, shared, off, local, sy, gamma, ef, fix_s, var, dev
):  # pragma: no cover
    """Groups g0..g1-1 at the fit: CRLB of the shared parameters (l0, s) (px^2) and the
    deviance."""
    _, h, w = data.shape
    for g in range(g0, g1):
        a, b = starts[g], starts[g + 1]
        k = b - a
        scratch = np.empty((7, max(h, w, 5)))
        work = np.empty((11, 3))
        grads, infos = np.empty((k, 5)), np.empty((k, 5, 5))
        s_mat, s_rhs = np.empty((2, 2)), np.empty(2)
        _group_eval(
            data[a:b], shared[g], off[a:b], local[a:b], sy, gamma, ef, grads, infos, scratch
        )
        var[g, 0] = var[g, 1] = np.inf
        if _schur(grads, infos, 0.0, fix_s, s_mat, s_rhs, work):
            det = s_mat[0, 0] * s_mat[1, 1] - s_mat[0, 1] * s_mat[1, 0]
            if det > 0 and np.isfinite(det):
                var[g, 0] = s_mat[1, 1] / det
                var[g, 1] = 0.0 if fix_s else s_mat[0, 0] / det
        d = 0.0
        for i in range(a, b):
            d += _box_deviance(data[i], shared[g], off[i], local[i], sy, gamma, ef, scratch)
        dev[g] = d


# --------------------------------------------------------------------------- public API


def box_model(
    shared: np.ndarray, local: np.ndarray, shape: tuple[int, int], sigma_y: float
) -> np.ndarray:
    """Expected photons per px (K, H, W) for per-box (N, y0, b) and shared or per-box (l0, s)."""
    shared = np.broadcast_to(np.atleast_2d(shared), (len(local), 2))
    h, w = shape

    def pix(m, s, n):
        e = np.arange(n + 1)[None, :]
        return np.diff(ndtr((e - m[:, None]) / s[:, None]), axis=1)

    gy = pix(local[:, 1], np.full(len(local), sigma_y), h)
    gl = pix(shared[:, 0], shared[:, 1], w)
    return local[:, 0, None, None] * gy[:, :, None] * gl[:, None, :] + local[:, 2, None, None]


def starts_from_data(
    data: np.ndarray, y0: np.ndarray, settings: FitSettings, s_start: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two starts per box from the data (photons, (K, H, W)) and the known row centre y0 (px).

    Background: median of the rows more than 3 sigma_y from y0 (all rows if none). Start 1: the
    centroid of the background-subtracted column profile; start 2: its maximum after smoothing
    with a Gaussian of ``s_start``. N: the profile's positive sum. Returns (shared1 (K, 2),
    shared2 (K, 2), local (K, 3)).
    """
    k, h, w = data.shape
    rows = np.arange(h)[None, :] + 0.5
    far = np.abs(rows - y0[:, None]) > 3 * settings.sigma_y  # (K, H)
    masked = np.where(far[:, :, None], data, np.nan)
    with np.errstate(all="ignore"):
        bg = np.nanmedian(masked.reshape(k, -1), axis=1)
    bg = np.where(np.isfinite(bg), bg, np.median(data.reshape(k, -1), axis=1))
    bg = np.maximum(bg, 1e-3)
    near = (~far).astype(np.float64)
    prof = np.einsum("khw,kh->kw", data - bg[:, None, None], near)
    pos = np.clip(prof, 0, None)
    tot = pos.sum(1)
    cols = np.arange(w) + 0.5
    c1 = np.where(tot > 0, (pos * cols).sum(1) / np.where(tot > 0, tot, 1), w / 2)
    kern = np.exp(-0.5 * ((cols[:, None] - cols[None, :]) / s_start) ** 2)
    c2 = np.argmax(prof @ kern, axis=1) + 0.5
    s0 = settings.fixed_s if settings.fixed_s is not None else s_start
    lo, hi = settings.s_bounds
    s0 = float(np.clip(s0, lo, hi))
    n0 = np.maximum(tot, 1.0)
    local = np.column_stack([n0, np.clip(y0, 0, h), bg])
    return (
        np.column_stack([c1, np.full(k, s0)]),
        np.column_stack([c2, np.full(k, s0)]),
        local,
    )


def fit_boxes(
    data: np.ndarray,
    shared_start: np.ndarray,
    local_start: np.ndarray,
    settings: FitSettings,
    camera: Camera,
    groups: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Maximum-likelihood fit of boxes of photons (K, H, W), float64.

    ``groups``: (G + 1,) start index of each group of consecutive boxes sharing l0 and s
    (default: every box on its own). ``offsets`` (K,) px: box k's own centre is ``l0 -
    offsets[k]`` (boxes of a group cut at different columns; default 0). ``shared_start`` (G, 2)
    = (l0, s) px; ``local_start`` (K, 3) = (N, y0, b). Returns per group ``l0``, ``s``, ``var_l0``, ``var_s`` (CRLB, px^2),
    ``loglik``, ``deviance``, ``dof``, ``p_fit`` (chi-square tail of the deviance), ``iterations``,
    ``converged``, and per box ``N``, ``y0``, ``b``.
    """
    data = np.ascontiguousarray(data, dtype=np.float64)
    k, h, w = data.shape
    if groups is None:
        groups = np.arange(k + 1, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = len(groups) - 1
    off = np.zeros(k) if offsets is None else np.ascontiguousarray(offsets, dtype=np.float64)
    # the Poisson approximation needs x + gamma >= 0
    data = np.maximum(data, -camera.gamma)
    shared = np.ascontiguousarray(shared_start, dtype=np.float64).reshape(n_groups, 2).copy()
    local = np.ascontiguousarray(local_start, dtype=np.float64).reshape(k, 3).copy()
    fix_s = settings.fixed_s is not None
    if fix_s:
        shared[:, 1] = settings.fixed_s
    bounds = np.array(
        [
            [-0.5 * w, 1.5 * w],
            [settings.s_bounds[0], settings.s_bounds[1]],
            [1e-3, np.inf],
            [0.0, float(h)],
            [1e-6, np.inf],
        ]
    )
    for i in range(5):
        col = shared[:, i] if i < 2 else local[:, i - 2]
        np.clip(col, bounds[i, 0], bounds[i, 1], out=col)
    ll = np.empty(n_groups)
    iters = np.zeros(n_groups, dtype=np.int64)
    conv = np.zeros(n_groups, dtype=np.bool_)
    boxes = (data, groups, shared, off, local)
    noise = (camera.gamma, camera.excess_factor, fix_s)
    sy, limits = settings.sigma_y, (settings.max_iterations, settings.tolerance)
    _in_threads(
        _fit_groups, groups, settings.threads, *boxes, bounds, sy, *noise, *limits, ll, iters, conv
    )
    var = np.empty((n_groups, 2))
    dev = np.empty(n_groups)
    _in_threads(_information, groups, settings.threads, *boxes, sy, *noise, var, dev)
    sizes = np.diff(groups)
    dof = sizes * h * w - (sizes * 3 + (1 if fix_s else 2))
    return {
        "l0": shared[:, 0],
        "s": shared[:, 1],
        "var_l0": var[:, 0],
        "var_s": var[:, 1],
        "loglik": ll,
        "deviance": dev,
        "dof": dof,
        "p_fit": chdtrc(np.maximum(dof, 1), dev),
        "iterations": iters,
        "converged": conv & np.isfinite(ll) & np.isfinite(var[:, 0]),
        "N": local[:, 0],
        "y0": local[:, 1],
        "b": local[:, 2],
    }


def crlb(
    shared: np.ndarray,
    local: np.ndarray,
    shape: tuple[int, int],
    settings: FitSettings,
    camera: Camera,
) -> np.ndarray:
    """Square root of the Cramér-Rao bound of l0 (px) for boxes with known parameters (each box
    on its own): ``sqrt([I^-1]_{l0,l0})``."""
    k = len(local)
    data = box_model(shared, local, shape, settings.sigma_y)  # information does not use data
    var = np.empty((k, 2))
    dev = np.empty(k)
    groups = np.arange(k + 1, dtype=np.int64)
    sh = np.ascontiguousarray(np.broadcast_to(np.atleast_2d(shared), (k, 2)), dtype=np.float64)
    _in_threads(
        _information,
        groups,
        settings.threads,
        data,
        groups,
        sh,
        np.zeros(k),
        np.ascontiguousarray(local, dtype=np.float64),
        settings.sigma_y,
        camera.gamma,
        camera.excess_factor,
        settings.fixed_s is not None,
        var,
        dev,
    )
    return np.sqrt(var[:, 0])
