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

from collections.abc import Iterator, Sequence

import numpy as np

from .geometry import Geometry

#: images processed together in the per-image reductions (keeps float64 temporaries in cache)
_BLOCK = 256
#: images side by side in one top-hat band (bounds the band's width and memory)
_TOPHAT_IMAGES = 4096


def _blocks(n: int, size: int = _BLOCK) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def spatial_frequency(patches: np.ndarray) -> np.ndarray:
    """SF of each image in ``patches`` (..., M, N); returns float64 of shape (...) in the input's
    units. Computed in float64, a block of images at a time."""
    p = np.asarray(patches)
    m, n = p.shape[-2:]
    flat = p.reshape(-1, m, n)
    out = np.empty(len(flat), dtype=np.float64)
    for b in _blocks(len(flat)):
        out[b] = _sf64(flat[b].astype(np.float64))
    return out.reshape(p.shape[:-2])


def _sf64(q: np.ndarray) -> np.ndarray:
    """SF of each image of a float64 (k, M, N) block."""
    m, n = q.shape[-2:]
    dx = np.diff(q, axis=-1)
    dy = np.diff(q, axis=-2)
    ss = np.einsum("kij,kij->k", dx, dx) + np.einsum("kij,kij->k", dy, dy)
    return np.sqrt(ss / (m * n))


def leave_one_out_fusion(
    patches: np.ndarray, run_starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SF-weighted mean of all *other* frames of each run, for every frame, in O(k) per run.

    patches: (N, H, W), grouped by run; run_starts: index of each run's first patch (sorted,
    starting at 0). For frame i of a run with SF weights s and frames P:
    ``fused_i = (sum_j s_j P_j - s_i P_i) / (sum_j s_j - s_i)``; where the other frames' weights
    sum to 0 (flat patches) the plain mean of the other frames is used. A run of one frame has
    no other frame: its fused image is all zeros. Arithmetic in float64, whole runs at a time
    (about ``_BLOCK`` frames, so the temporaries stay in cache); returns (fused (N, H, W) in
    float32, or float64 for float64 input; sf float64 (N,)).
    """
    p = np.asarray(patches)
    n = len(p)
    fused = np.zeros(p.shape, dtype=np.float64 if p.dtype == np.float64 else np.float32)
    sf = np.zeros(n, dtype=np.float64)
    bounds = np.append(np.asarray(run_starts, dtype=np.int64), n)
    lo = 0
    while lo < n:
        # whole runs from bounds[lo] up to about _BLOCK frames (at least one run)
        first = int(np.searchsorted(bounds, lo))
        last = max(first + 1, int(np.searchsorted(bounds, lo + _BLOCK, side="right")) - 1)
        hi = int(bounds[last])
        q = p[lo:hi].astype(np.float64)
        sf[lo:hi] = _sf64(q)
        fused[lo:hi] = _fuse_runs(q, sf[lo:hi], bounds[first:last] - lo)
        lo = hi
    return fused, sf


def _fuse_runs(p: np.ndarray, sf: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """leave_one_out_fusion on a block of whole runs (float64 arrays)."""
    n = len(p)
    run_of = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    weighted = p * sf[:, None, None]
    fused = np.add.reduceat(weighted, starts, axis=0)[run_of]
    fused -= weighted
    tot_s = np.add.reduceat(sf, starts)[run_of] - sf
    ok = tot_s > 0
    fused /= np.where(ok, tot_s, 1.0)[:, None, None]
    if not ok.all():  # the other frames are flat (SF 0): their plain mean; none: zeros
        count = np.bincount(run_of)[run_of] - 1
        tot_p = np.add.reduceat(p, starts, axis=0)[run_of] - p
        fused[~ok] = tot_p[~ok] / np.maximum(count[~ok], 1)[:, None, None]
    return fused


def disk_footprint(radius: int) -> np.ndarray:
    """skimage.morphology.disk(radius) (pixels with dx^2 + dy^2 <= radius^2) as uint8; built here
    so the patch stage need not import scikit-image (equality is tested)."""
    d = np.arange(-radius, radius + 1)
    return (d[:, None] ** 2 + d[None, :] ** 2 <= radius**2).astype(np.uint8)


def white_tophat_disk(
    img: np.ndarray,
    radius: int,
    threads: int = 1,
    column_splits: tuple[int, ...] = (),
    part_divisors: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """White top-hat (image minus its grey opening) of each image in (N, H, W) with a flat disk.

    Equals ``scipy.ndimage.white_tophat(img[i], footprint=skimage.morphology.disk(radius),
    mode="reflect")`` for every i (tested). ``column_splits`` cut each image at those columns
    into parts filtered as separate images (the localization and spectral boxes of a patch).
    ``part_divisors`` (one (N,) array per part) divide each part of each image first (a part
    whose divisor is not positive becomes 0): the top-hat of the normalised parts, without a
    normalised copy of the images.

    How: for a min or max filter, scipy's 'reflect' border is the same as clipping the
    footprint to the image. So the images (and their parts) are laid side by side in one band
    H rows high, each followed by ``radius`` columns of +inf (-inf for the dilation) that the
    footprint reaches but never crosses, and OpenCV erodes and dilates the band in one call
    each (``threads`` threads; the result does not depend on their number), clipping at the
    band's top and bottom rows as at the images' own.
    """
    import cv2  # only here: the rest of the package does not need OpenCV

    img = np.asarray(img, dtype=np.float32)
    n, h, w = img.shape
    if radius <= 0 or n == 0:
        return np.zeros_like(img)
    edges = [0, *column_splits, w]
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"column_splits {column_splits} must increase within 1..{w - 1}")
    # (first column in the image, width, first column in the band's block for one image)
    parts = [
        (a, b - a, a + i * radius) for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))
    ]
    block = w + len(parts) * radius
    if part_divisors is None:
        divisors = [None] * len(parts)
    elif len(part_divisors) != len(parts):
        raise ValueError(f"{len(part_divisors)} part_divisors for {len(parts)} parts")
    else:  # x / inf = 0 where the divisor is not positive
        divisors = [np.where(d > 0, d, np.inf).astype(np.float32) for d in part_divisors]
    fp = disk_footprint(radius)
    cv2.setNumThreads(max(1, int(threads)))
    out = np.empty_like(img)
    for sl in _blocks(n, _TOPHAT_IMAGES):
        k = sl.stop - sl.start
        band = np.empty((h, k, block), dtype=np.float32)
        for (a, pw, m), d in zip(parts, divisors, strict=True):
            source = img[sl, :, a : a + pw].transpose(1, 0, 2)
            if d is None:
                band[:, :, m : m + pw] = source
            else:
                np.divide(source, d[None, sl, None], out=band[:, :, m : m + pw])
            band[:, :, m + pw : m + pw + radius] = np.inf
        eroded = cv2.erode(band.reshape(h, -1), fp, borderType=cv2.BORDER_REPLICATE)
        eroded = eroded.reshape(h, k, block)
        for _, pw, m in parts:
            eroded[:, :, m + pw : m + pw + radius] = -np.inf
        opened = cv2.dilate(eroded.reshape(h, -1), fp, borderType=cv2.BORDER_REPLICATE)
        opened = opened.reshape(h, k, block)
        for a, pw, m in parts:
            np.subtract(
                band[:, :, m : m + pw],
                opened[:, :, m : m + pw],
                out=out[sl, :, a : a + pw].transpose(1, 0, 2),
            )
    return out


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
    maxima = [
        fused[..., :wl].max(axis=(-2, -1)),
        fused[..., wl:].max(axis=(-2, -1)) * np.float32(amp_factor),
    ]
    return white_tophat_disk(fused, tophat_radius, threads, (wl,), maxima)


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
