"""Benchmark: least-squares Gaussian fits of spectral profiles per second, srsmlm.profiles.gaussian_fit
against the former batched NumPy implementation (a copy below), in the same run.

    python benchmarks/bench_profile_fit.py [--profiles 100000] [--chunk 8192] [--resolution 20000]

Two sets of 48-px profiles at 2.06 nm/px, as the spectra stage reads them (4 rows summed,
background subtracted, counts / 2^16): raw-like (Gaussian spectra of sd ~9 px, 200 to 6,000
spectral photons, 120 background photons/px, Poisson noise) and denoised-like (smooth, slightly
skewed spectra with a smooth ripple, no pixel noise). Both fits run chunk by chunk
(``spectra.chunk_size``). Prints fits/s of each and their ratio, the new fit's mean iterations,
the NaN pattern, and the centre differences (nm): largest over all fits and over those the new
fit declared converged (stopped before the iteration cap), how many converged ones differ by more
than 1e-6 nm, and the largest difference in units of the centre's standard error (from the
fit's residuals and Jacobian). For scale, "old vs itself" is the largest centre change of the
former implementation when the profiles are multiplied by (1 + 2^-52), on ``--resolution``
profiles: how finely float64 sums of squares pin the minimum down at all (~1e-7 standard errors).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from srsmlm.profiles import gaussian_fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reference_fit import reference_gaussian_fit  # noqa: E402

NM_PER_PX = 2.06
WIDTH = 48
SCALE = 2.0 / 65536  # ADU per photon / 2^16: the patches' units


def wavelengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pixel-centre wavelengths (nm): 560 nm at the offset, the spot's sub-pixel x random."""
    return 560 + (np.arange(WIDTH)[None, :] + 0.5 - rng.uniform(0, 1, (n, 1))) * NM_PER_PX


def gaussians(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit-area spectra per px: dyes at 585, 610, 635 nm (+- 3 nm), sd ~18 nm (~9 px)."""
    n = len(lam)
    centre = rng.choice([585.0, 610.0, 635.0], n) + rng.normal(0, 3, n)
    sd = np.hypot(rng.uniform(14, 22, n), 1.3 * NM_PER_PX)
    g = np.exp(-((lam - centre[:, None]) ** 2) / (2 * sd[:, None] ** 2))
    return g * NM_PER_PX / (np.sqrt(2 * np.pi) * sd[:, None])


def raw_like(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lam = wavelengths(n, rng)
    photons = np.exp(rng.uniform(np.log(200), np.log(6000), n))  # dim to bright
    background = 120.0  # 4 rows x 30 photons/px
    counts = rng.poisson(photons[:, None] * gaussians(lam, rng) + background)
    estimate = background + rng.normal(0, 1.0, (n, 1))  # the outer rows' median
    return (counts - estimate) * SCALE, lam


def denoised_like(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lam = wavelengths(n, rng)
    amp = np.exp(rng.uniform(np.log(0.1), np.log(2.0), n))[:, None]
    main = gaussians(lam, rng)
    shoulder = np.roll(main, rng.integers(4, 10), axis=1) * rng.uniform(0, 0.3, (n, 1))
    ripple = rng.normal(0, 1, (n, WIDTH + 16))
    kernel = np.exp(-0.5 * (np.arange(-8, 9) / 3.0) ** 2)
    ripple = np.apply_along_axis(np.convolve, 1, ripple, kernel / kernel.sum(), "valid")
    shape = main + shoulder
    shape /= shape.max(1, keepdims=True)
    return amp * (shape + 0.03 * ripple) + rng.normal(0, 0.01, (n, 1)), lam


def timed(fit, p: np.ndarray, lam: np.ndarray, chunk: int) -> tuple[dict, float]:
    parts, dt = [], 0.0
    for a in range(0, len(p), chunk):
        t = time.perf_counter()
        parts.append(fit(p[a : a + chunk], lam[a : a + chunk]))
        dt += time.perf_counter() - t
    return {k: np.concatenate([r[k] for r in parts]) for k in parts[0]}, dt


def centre_se(fit: dict, p: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Standard error of each fitted centre: sqrt(residual variance [(J^T J)^-1]_mu,mu)."""
    a, mu, s, c = (fit[k][:, None] for k in ("amplitude", "centre", "width", "offset"))
    g = np.exp(-((lam - mu) ** 2) / (2 * s**2))
    j1 = a * g * (lam - mu) / s**2
    jac = np.stack([g, j1, j1 * (lam - mu) / s, np.ones_like(g)], axis=2)
    ok = np.isfinite(fit["centre"])
    out = np.full(len(p), np.nan)
    cov = np.linalg.inv(np.einsum("nwi,nwj->nij", jac[ok], jac[ok]))
    resid = ((p - a * g - c)[ok] ** 2).sum(1) / (p.shape[1] - 4)
    out[ok] = np.sqrt(np.abs(resid * cov[:, 1, 1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", type=int, default=100_000)
    ap.add_argument(
        "--chunk", type=int, default=8192, help="profiles per call (spectra.chunk_size)"
    )
    ap.add_argument("--resolution", type=int, default=20_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    gaussian_fit(*raw_like(16, rng))
    print(f"first call (compile or cache load): {time.perf_counter() - t:.2f} s")
    print(f"{args.profiles} profiles of {WIDTH} px a set, {args.chunk} a call")
    for name, make in (("raw", raw_like), ("denoised", denoised_like)):
        p, lam = make(args.profiles, rng)
        old, t_old = timed(reference_gaussian_fit, p, lam, args.chunk)
        new, t_new = timed(gaussian_fit, p, lam, args.chunk)
        nan_old, nan_new = np.isnan(old["centre"]), np.isnan(new["centre"])
        diff = np.abs(old["centre"] - new["centre"])
        conv = new["iterations"] < 30
        m = args.resolution
        again = reference_gaussian_fit(p[:m] * (1 + 2.0**-52), lam[:m])["centre"]
        print(
            f"{name}: old {len(p) / t_old:,.0f} fits/s, new {len(p) / t_new:,.0f} fits/s, "
            f"ratio {t_old / t_new:.1f}x; new mean iterations {new['iterations'].mean():.1f}, "
            f"converged {conv.mean():.3f}\n"
            f"  NaN old {nan_old.sum()}, new {nan_new.sum()}, differing {(nan_old != nan_new).sum()}\n"
            f"  max |centre new - old|: all {np.nanmax(diff):.2e} nm, converged "
            f"{np.nanmax(diff[conv]):.2e} nm ({np.sum(diff[conv] > 1e-6)} over 1e-6 nm); "
            f"max / standard error {np.nanmax(diff / centre_se(new, p, lam)):.1e}\n"
            f"  old vs itself on profiles x (1 + 2^-52): max {np.nanmax(np.abs(again - old['centre'][:m])):.2e} nm"
        )


if __name__ == "__main__":
    main()
