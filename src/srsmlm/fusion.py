"""Spatial frequency, leave-one-out SF-weighted fusion, and the clean-target transform.

Spatial frequency (Li, Kwok & Wang 2001, Information Fusion 2:169, doi
10.1016/S1566-2535(01)00038-0) of an M x N image F::

    RF = sqrt( 1/(MN) * sum_{m=0..M-1} sum_{n=1..N-1} (F[m,n] - F[m,n-1])^2 )
    CF = sqrt( 1/(MN) * sum_{m=1..M-1} sum_{n=0..N-1} (F[m,n] - F[m-1,n])^2 )
    SF = sqrt(RF^2 + CF^2)

Deviation from the guide's code, on purpose: the guide uses MN = 16 * 48 (the spectral box
only) for 16 x 64 patches and its loops stop one column/row early, skipping the last
difference; here M x N is the whole patch and every difference counts.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from skimage.morphology import disk

from .geometry import Geometry


def spatial_frequency(patches: np.ndarray) -> np.ndarray:
    """SF of each image in ``patches`` (..., M, N); returns shape (...) in the input's units."""
    p = np.asarray(patches, dtype=np.float64)
    m, n = p.shape[-2:]
    rf2 = np.sum(np.diff(p, axis=-1) ** 2, axis=(-2, -1)) / (m * n)
    cf2 = np.sum(np.diff(p, axis=-2) ** 2, axis=(-2, -1)) / (m * n)
    return np.sqrt(rf2 + cf2)


def leave_one_out_fusion(
    patches: np.ndarray, run_starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SF-weighted mean of all *other* frames of each run, for every frame, in O(k) per run.

    patches: (N, H, W), grouped by run; run_starts: index of each run's first patch (sorted,
    starting at 0). For frame i of a run with SF weights s and frames P:
    ``fused_i = (sum_j s_j P_j - s_i P_i) / (sum_j s_j - s_i)``; where the other frames' weights
    sum to 0 (flat patches) the plain mean of the other frames is used. A run of one frame has
    no other frame: its fused image is all zeros. Returns (fused float64 (N,H,W), sf (N,)).
    """
    p = np.asarray(patches, dtype=np.float64)
    n = len(p)
    sf = spatial_frequency(p)
    if n == 0:
        return np.zeros_like(p), sf
    run_starts = np.asarray(run_starts, dtype=np.int64)
    run_of = np.repeat(np.arange(len(run_starts)), np.diff(np.append(run_starts, n)))
    weighted = p * sf[:, None, None]
    tot_w = np.add.reduceat(weighted, run_starts, axis=0)[run_of] - weighted
    tot_s = np.add.reduceat(sf, run_starts)[run_of] - sf
    tot_p = np.add.reduceat(p, run_starts, axis=0)[run_of] - p
    count = np.bincount(run_of)[run_of] - 1
    fused = np.zeros_like(p)
    ok = tot_s > 0
    fused[ok] = tot_w[ok] / tot_s[ok, None, None]
    flat = ~ok & (count > 0)
    fused[flat] = tot_p[flat] / count[flat, None, None]
    return fused, sf


def _disk_rows(radius: int) -> list[tuple[int, int]]:
    """(row offset, half width) of each row of skimage's ``disk(radius)``."""
    fp = disk(radius)
    return [(dy - radius, int(fp[dy].sum()) // 2) for dy in range(fp.shape[0])]


def _disk_rectangles(radius: int) -> list[tuple[int, int]]:
    """The disk as a union of centred rectangles (half height, half width), one per distinct
    row half-width: a row at offset dy of half-width X lies in the rectangle of that X whose
    half height is the largest |dy| with half-width >= X."""
    rows = _disk_rows(radius)
    return [(max(abs(dy) for dy, h in rows if h >= x), x) for x in sorted({h for _, h in rows})]


def _disk_filter(img: np.ndarray, radius: int, op: str) -> np.ndarray:
    """Grey erosion ('min') or dilation ('max') of each image in (N, H, W) by a flat disk.

    Exact decomposition: the disk is a union of centred rectangles, and the min (max) over a
    rectangle is separable into two 1-D filters (O(1) per pixel, van Herk / Gil-Werman).
    Borders reflect independently per axis (scipy's 'reflect'), as scipy.ndimage does.
    """
    filt = minimum_filter1d if op == "min" else maximum_filter1d
    reduce = np.minimum if op == "min" else np.maximum
    out = None
    for half_h, half_w in _disk_rectangles(radius):
        t = filt(img, size=2 * half_w + 1, axis=-1, mode="reflect")
        t = filt(t, size=2 * half_h + 1, axis=-2, mode="reflect")
        out = t if out is None else reduce(out, t, out=out)
    return out


def white_tophat_disk(img: np.ndarray, radius: int, threads: int = 1) -> np.ndarray:
    """White top-hat (image minus its grey opening) of each image in (N, H, W) with a disk.

    Equals ``scipy.ndimage.white_tophat(img[i], footprint=skimage.morphology.disk(radius))``
    for every i (tested), but runs in O(radius) per pixel instead of O(radius^2). With
    ``threads`` > 1 the images are split between threads (scipy's filters release the GIL).
    """
    img = np.asarray(img)
    if radius <= 0:
        return np.zeros_like(img)
    if threads > 1 and len(img) >= 2 * threads:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            parts = pool.map(lambda c: white_tophat_disk(c, radius), np.array_split(img, threads))
            return np.concatenate(list(parts))
    opened = _disk_filter(_disk_filter(img, radius, "min"), radius, "max")
    return img - opened


def clean_target(
    fused: np.ndarray,
    geometry: Geometry,
    amp_factor: float,
    tophat_radius: int,
    threads: int = 1,
) -> np.ndarray:
    """The guide's clean target from fused images (N, H, W): each part divided by its own max
    (the spectral part by ``amp_factor`` times its max, i.e. amplified 1/amp_factor), then a
    white top-hat with a disk of ``tophat_radius`` px on each part separately."""
    wl = geometry.loc_width
    fused = np.asarray(fused, dtype=np.float32)
    out = np.empty_like(fused)
    for sl, factor in ((np.s_[..., :wl], 1.0), (np.s_[..., wl:], amp_factor)):
        part = fused[sl]
        mx = part.max(axis=(-2, -1), keepdims=True) * np.float32(factor)
        norm = np.divide(part, mx, out=np.zeros_like(part), where=mx > 0)
        out[sl] = white_tophat_disk(norm, tophat_radius, threads)
    return out


def limit_range(target: np.ndarray, ceiling: float | None) -> np.ndarray:
    """Scale each target down (never up) so its maximum is at most ``ceiling``.

    The guide's targets peak at 1/amp_factor (2.0 with amp_factor 0.5) in the spectral part,
    beyond a sigmoid's reach. One factor per patch keeps the ratio between localization and
    spectral parts (and so every spectral centroid) unchanged. ``None`` disables it (for an
    unbounded output activation).
    """
    if ceiling is None:
        return target
    mx = target.max(axis=(-2, -1), keepdims=True)
    scale = np.where(mx > ceiling, ceiling / np.where(mx > 0, mx, 1.0), 1.0)
    return target * scale


def select_frames(ratio: np.ndarray, run_starts: np.ndarray) -> np.ndarray:
    """The guide's frame selection: keep frames whose SF(target)/SF(raw) ratio exceeds half the
    run's ratio range, ``ratio > (max - min) / 2`` per run (as the guide writes it; note it is
    not ``min + (max - min) / 2``). Non-finite ratios are never kept. Returns a bool mask."""
    ratio = np.asarray(ratio, dtype=np.float64)
    n = len(ratio)
    if n == 0:
        return np.zeros(0, dtype=bool)
    finite = np.isfinite(ratio)
    r_hi = np.where(finite, ratio, -np.inf)
    r_lo = np.where(finite, ratio, np.inf)
    run_of = np.repeat(np.arange(len(run_starts)), np.diff(np.append(run_starts, n)))
    hi = np.maximum.reduceat(r_hi, run_starts)[run_of]
    lo = np.minimum.reduceat(r_lo, run_starts)[run_of]
    return finite & (ratio > (hi - lo) / 2)
