"""Benchmark: maximum-likelihood fits per second of srsmlm.mle against a box-by-box
scipy.optimize.least_squares fit of the same Poisson model, in the same run; then joint fits of
pairs and triples of overlapping spectra (srsmlm.joint) against the single-emitter kernel.

    python benchmarks/bench_mle.py [--boxes 100000] [--threads 2] [--reference 300] [--groups 5000]

Boxes: 9 x 64 px (the default readout box), 1,000 spectral photons, 10 background photons/px,
sCMOS camera. The reference fits the Poisson deviance residuals (sqrt of each pixel's deviance
term) of the same model with the same starts box by box, on ``--reference`` boxes; its rate is
per box. Prints fits/s, the ratio and the peak RSS of the process. Groups: K = 2 or 3 spectra
of 1,000 photons, 3 rows and 10 px apart in a region of 9 + 3 (K - 1) rows, each emitter's own
box 64 px wide; prints emitters fitted per second, its ratio to the single kernel's fits per
second, and the RMSE of the centres against their bound.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy.optimize import least_squares
from scipy.special import ndtr

from srsmlm.joint import fit_groups
from srsmlm.mle import Camera, FitSettings, box_model, fit_boxes, starts_from_data

SHAPE = (9, 64)
NM_PER_PX = 2.06


def simulate(n: int, camera: Camera, rng: np.random.Generator):
    shared = np.column_stack([rng.uniform(24, 40, n), np.full(n, np.hypot(18 / NM_PER_PX, 1.3))])
    local = np.column_stack([np.full(n, 1000.0), rng.uniform(3.5, 5.5, n), np.full(n, 10.0)])
    mu = box_model(shared, local, SHAPE, 1.3)
    adu = camera.gain_adu_per_photon * rng.poisson(mu) + camera.offset_adu
    adu = np.rint(adu + rng.normal(0, camera.read_noise_adu, mu.shape))
    return camera.photons(adu), shared, local


def reference_fit(x, shared0, local0, settings, camera) -> np.ndarray:
    """Box-by-box least_squares on Poisson deviance residuals (the same likelihood)."""
    g = camera.gamma
    out = np.empty(len(x))
    lo = [-0.5 * SHAPE[1], settings.s_bounds[0], 1e-3, 0.0, 1e-6]
    hi = [1.5 * SHAPE[1], settings.s_bounds[1], np.inf, SHAPE[0], np.inf]
    for i in range(len(x)):
        data = x[i] + g

        def residuals(t, data=data):
            mu = box_model(t[:2], t[None, 2:], SHAPE, settings.sigma_y)[0] + g
            term = mu - data + np.where(data > 0, data * np.log(np.maximum(data, 1e-12) / mu), 0)
            return np.sign(data - mu).ravel() * np.sqrt(np.maximum(2 * term, 0)).ravel()

        t0 = np.clip(np.r_[shared0[i], local0[i]], np.add(lo, 1e-9), np.subtract(hi, 1e-9))
        out[i] = least_squares(residuals, t0, bounds=(lo, hi), method="trf").x[0]
    return out


def simulate_groups(n: int, k: int, camera: Camera, rng: np.random.Generator):
    """``n`` regions of ``k`` spectra 3 rows and 10 px apart: photons, own-box columns, true
    centres (own-box px) and starts (N, l, s, y, b) off the truth."""
    h, w = SHAPE[0] + 3 * (k - 1), SHAPE[1] + 10 * (k - 1)
    s = np.hypot(18 / NM_PER_PX, 1.3)
    cols = np.tile(10.0 * np.arange(k), n)
    l_true = rng.uniform(24, 40, n * k)
    y = np.tile(4.5 + 3.0 * np.arange(k), n) + rng.uniform(-0.5, 0.5, n * k)
    edges_r, edges_c = np.arange(h + 1), np.arange(w + 1)
    gy = np.diff(ndtr((edges_r[None, :] - y[:, None]) / 1.3), axis=1)
    gl = np.diff(ndtr((edges_c[None, :] - (cols + l_true)[:, None]) / s), axis=1)
    mu = 10.0 + (1000.0 * gy[:, :, None] * gl[:, None, :]).reshape(n, k, h, w).sum(axis=1)
    adu = camera.gain_adu_per_photon * rng.poisson(mu) + camera.offset_adu
    x = camera.photons(np.rint(adu + rng.normal(0, camera.read_noise_adu, mu.shape)))
    start = np.column_stack(
        [np.full(n * k, 700.0), l_true + rng.normal(0, 2, n * k), np.full(n * k, 8.0), y,
         np.full(n * k, 8.0)]
    )  # fmt: skip
    regions = np.tile([0, 0, h, w], (n, 1))
    return x, regions, np.arange(0, n * k + 1, k), cols, l_true, start


def joint_rates(n: int, settings: FitSettings, camera: Camera, single_rate: float) -> None:
    """Joint fits of pairs and triples: emitters/s against the single kernel, bound reached."""
    rng = np.random.default_rng(1)
    for k in (2, 3):
        args = simulate_groups(8, k, camera, rng)
        fit_groups(*args[:4], args[5], 1.0, (0.0, 64.0), settings, camera)  # compile
        x, regions, starts, cols, l_true, start = simulate_groups(n, k, camera, rng)
        t = time.perf_counter()
        fit = fit_groups(x, regions, starts, cols, start, 1.0, (0.0, 64.0), settings, camera)
        dt = time.perf_counter() - t
        err = (fit["l0"] - l_true) * NM_PER_PX
        ok = np.repeat(fit["converged"], k) & np.isfinite(fit["var_l0"])
        rate = n * k / dt
        print(
            f"joint fits of {k} spectra ({regions[0, 2]} x {regions[0, 3]} px): "
            f"{rate:,.0f} emitters/s = {rate / single_rate:.2f}x the single kernel; converged "
            f"{ok.mean():.3f}, RMSE {np.sqrt(np.mean(err[ok] ** 2)):.3f} nm, bound "
            f"{np.sqrt(np.mean(fit['var_l0'][ok])) * NM_PER_PX:.3f} nm"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", type=int, default=300)
    ap.add_argument("--chunk", type=int, default=8192, help="boxes per call (spectra.chunk_size)")
    ap.add_argument("--groups", type=int, default=5000, help="pairs and triples fitted jointly")
    args = ap.parse_args()
    camera = Camera("scmos", 2.0, 100.0, 1.6)
    settings = FitSettings(
        sigma_y=1.3, s_bounds=(5 / NM_PER_PX, 50 / NM_PER_PX), threads=args.threads
    )
    rng = np.random.default_rng(0)
    x, shared, local = simulate(64, camera, rng)
    t = time.perf_counter()
    first, _, local0 = starts_from_data(x, local[:, 1], settings, 18 / NM_PER_PX)
    fit_boxes(x, first, local0, settings, camera)  # compile (or load the cache)
    warm = time.perf_counter() - t
    # chunk by chunk, as the spectra stage does (spectra.chunk_size); simulation not timed
    dt, errs, bounds, conv = 0.0, [], [], []
    for start in range(0, args.boxes, args.chunk):
        x, shared, local = simulate(min(args.chunk, args.boxes - start), camera, rng)
        t = time.perf_counter()
        first, _, local0 = starts_from_data(x, local[:, 1], settings, 18 / NM_PER_PX)
        fit = fit_boxes(x, first, local0, settings, camera)
        dt += time.perf_counter() - t
        errs.append((fit["l0"] - shared[:, 0]) * NM_PER_PX)
        bounds.append(fit["var_l0"])
        conv.append(fit["converged"])
    rate = args.boxes / dt
    err, var, converged = np.concatenate(errs), np.concatenate(bounds), np.concatenate(conv)
    n = args.reference
    t = time.perf_counter()
    ref = reference_fit(x[:n], first[:n], local0[:n], settings, camera)
    ref_rate = n / (time.perf_counter() - t)
    agree = np.median(np.abs(ref - fit["l0"][:n])) * NM_PER_PX  # the last chunk's boxes
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"srsmlm.mle: {args.boxes} boxes {SHAPE} in {dt:.2f} s with {args.threads} threads")
    print(
        f"  {rate:,.0f} fits/s (starts included; first call incl. compile/cache load {warm:.1f} s)"
    )
    print(
        f"  converged {converged.mean():.4f}, RMSE {np.sqrt(np.mean(err**2)):.3f} nm, "
        f"bound {np.sqrt(np.mean(var)) * NM_PER_PX:.3f} nm"
    )
    print(
        f"scipy least_squares box by box: {ref_rate:,.1f} fits/s on {n} boxes "
        f"(median |difference| to srsmlm {agree:.4f} nm)"
    )
    print(f"ratio srsmlm / box-by-box: {rate / ref_rate:,.0f}x")
    print(f"10^6 localizations: {1e6 / rate / 60:.1f} min; peak RSS {peak_mb:,.0f} MB")
    joint_rates(args.groups, settings, camera, rate)


if __name__ == "__main__":
    main()
