"""Patch stage: srsmlm vs a straightforward implementation of the guide's algorithm (whole
stack loaded as float64, per-run joblib over frames, O(k^2) leave-one-out), and vs one
sequential read of the stack, on the same simulated acquisition in the same run. Each variant
runs in its own process (times include Python start-up and imports, as a pipeline job's do;
the import share is printed too) so its peak RSS can be reported. The read and srsmlm run
``--repeats`` times each, with the stack evicted from the page cache first ("cold", as a
stack read from disk) and without ("warm", already in RAM); medians are printed.

    python benchmarks/bench_patches.py [--frames 1000] [--workdir /tmp/srsmlm_bench]
    python benchmarks/bench_patches.py --frames 20000 --skip-naive   # 5 GB stack, memory bound
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import section

CHILD = r"""
import json, resource, sys, time
import numpy as np
import shutil
from pathlib import Path
kind, work, patches = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
shutil.rmtree(work / "out", ignore_errors=True)  # as Snakemake removes a job's old outputs
t = time.perf_counter()
if kind == "read":
    import tifffile
    t_import = time.perf_counter() - t
    with tifffile.TiffFile(work / "stack.ome.tif") as tif:
        total = 0
        for page in tif.series[0].pages:
            total += int(page.asarray()[0, 0])
elif kind == "srsmlm":
    from srsmlm.geometry import Geometry
    from srsmlm.plan import PatchParams
    from srsmlm.patches import prepare_patches
    t_import = time.perf_counter() - t
    prepare_patches(work / "clusters.csv", work / "localizations.csv", work / "stack.ome.tif",
                    Geometry(16, 16, 48, 230), PatchParams.from_config(patches), 1, "bench", 9,
                    work / "out/raw.tif", work / "out/clean.tif", work / "out/patches.csv",
                    threads=2)  # the guide-style code below gets n_jobs=2 too
elif kind == "naive":
    import math, random
    import pandas as pd, tifffile
    from joblib import Parallel, delayed
    from skimage.morphology import disk, white_tophat
    t_import = time.perf_counter() - t
    selem = disk(10)
    H, WL, WS, OFF = 16, 16, 48, 230
    def sf(p):  # the guide's loops, with the correct normaliser
        mn = p.shape[0] * p.shape[1]
        rf = np.sqrt(np.sum([(p[:, n] - p[:, n - 1]) ** 2 for n in range(1, p.shape[1])]) / mn)
        cf = np.sqrt(np.sum([(p[m, :] - p[m - 1, :]) ** 2 for m in range(1, p.shape[0])]) / mn)
        return math.sqrt(rf ** 2 + cf ** 2)
    def fuse(others):
        w = [sf(o) for o in others]
        t = sum(o * wi for o, wi in zip(others, w)) / sum(w)
        loc = white_tophat(t[:, :WL] / t[:, :WL].max(), footprint=selem)
        spec = white_tophat(t[:, WL:] / (0.5 * t[:, WL:].max()), footprint=selem)
        return np.concatenate([loc, spec], axis=1)
    def loo(n, patches):
        return fuse(np.delete(patches, n, axis=0))
    stack = tifffile.imread(work / "stack.ome.tif") / 2 ** 16   # whole stack, float64
    runs = pd.read_csv(work / "clusters.csv")
    kept_raw, kept_clean = [], []
    for _, run in runs.groupby("cluster"):
        px, py = int(run["pixel_x"].iloc[0]), int(run["pixel_y"].iloc[0])
        off = OFF + random.randint(-10, 20)
        f = run["frame"].to_numpy() - 1
        y0, x0 = py - H // 2, px - WL // 2
        if y0 < 0 or y0 + H > stack.shape[1] or x0 < 0 or px + off + WS > stack.shape[2]:
            continue
        patches = np.concatenate([stack[f, y0:y0 + H, x0:x0 + WL], stack[f, y0:y0 + H, px + off:px + off + WS]], axis=2)
        clean = np.array(Parallel(n_jobs=2)(delayed(loo)(n, patches) for n in range(len(patches))))
        r = np.array([sf(c) for c in clean]) / np.array([sf(p) for p in patches])
        keep = r > (r.max() - r.min()) / 2
        kept_raw.append(patches[keep]); kept_clean.append(clean[keep])
    raw = np.concatenate(kept_raw); clean = np.concatenate(kept_clean)
    keep = raw[:, :, :WL].max(axis=(1, 2)) >= 0.0035
    tifffile.imwrite(work / "naive_raw.tif", raw[keep].astype(np.float32))
    tifffile.imwrite(work / "naive_clean.tif", clean[keep].astype(np.float32))
seconds = time.perf_counter() - t
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"kind": kind, "seconds": seconds, "import_seconds": t_import,
                  "peak_rss_mb": max(peak_mb, kids)}))
"""


#: the configured patch stage doing what the guide-style code does: SF-fusion targets, the
#: guide's offset jitter, no molecule-free patches
PATCHES = section(
    "patches", target="sf_fusion", offset_jitter=[-10, 20], background_patches=0, min_loc_max=0.0035
)


def run_child(kind: str, work: Path, cold: bool = False) -> dict:
    if cold:
        evict(work / "stack.ome.tif")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(work), json.dumps(PATCHES)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def evict(path: Path) -> None:
    """Drop a file from the page cache (no root needed), so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def median_run(kind: str, work: Path, cold: bool, repeats: int) -> dict:
    runs = sorted((run_child(kind, work, cold) for _ in range(repeats)), key=lambda r: r["seconds"])
    return runs[len(runs) // 2]


def prepare(work: Path, frames: int) -> None:
    from srsmlm.clustering import cluster_stage
    from srsmlm.geometry import Geometry
    from srsmlm.localizations import filter_stage
    from srsmlm.simulate import SimulationParams, simulate_acquisition

    if (work / "clusters.csv").exists() and (work / "frames.txt").read_text() == str(frames):
        return
    work.mkdir(parents=True, exist_ok=True)
    sim = section(
        "simulation",
        frames=frames,
        height=256,
        width=512,
        n_molecules=max(50, frames // 3),
        spot_region_x=[12.0, 218.0],
    )
    p = SimulationParams.from_config(
        {**sim, "camera": section("camera")}, Geometry(16, 16, 48, 230), 3000.0
    )
    t = time.perf_counter()
    simulate_acquisition(
        p,
        1,
        "bench",
        work / "stack.ome.tif",
        work / "peakfit.results.xls",
        work / "thunderstorm.csv",
        work / "truth.csv",
        107.0,
    )
    print(
        f"simulated {frames} frames of 256 x 512 in {time.perf_counter() - t:.0f} s "
        f"({(work / 'stack.ome.tif').stat().st_size / 2**30:.2f} GiB)"
    )
    filter_stage(
        work / "peakfit.results.xls",
        "peakfit",
        None,
        300,
        [10, 220],
        [10, 250],
        work / "localizations.csv",
    )
    cluster_stage(work / "localizations.csv", 0.001, 3, 9, work / "clusters.csv")
    (work / "frames.txt").write_text(str(frames))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--workdir", default="/tmp/srsmlm_bench")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    work = Path(args.workdir) / f"f{args.frames}"
    prepare(work, args.frames)
    import pandas as pd

    n = len(pd.read_csv(work / "clusters.csv", usecols=["cluster"]))
    print(f"{n:,} localizations in runs; medians of {args.repeats} runs")
    results = {}
    for cache in ("cold", "warm"):
        for kind in ("read", "srsmlm"):
            r = median_run(kind, work, cache == "cold", args.repeats)
            results[kind, cache] = r
            label = "one sequential read of the stack" if kind == "read" else "srsmlm patch stage"
            print(
                f"{label:34s} {cache}: {r['seconds']:6.2f} s (imports {r['import_seconds']:.2f} s), "
                f"peak RSS {r['peak_rss_mb']:.0f} MB"
            )
    for cache in ("cold", "warm"):
        ratio = results["srsmlm", cache]["seconds"] / results["read", cache]["seconds"]
        print(f"srsmlm / sequential read, {cache} cache: {ratio:.2f}x")
    if not args.skip_naive:
        naive = run_child("naive", work)
        ours = results["srsmlm", "warm"]
        print(
            f"guide-style implementation (warm):  {naive['seconds']:6.2f} s "
            f"(imports {naive['import_seconds']:.2f} s), peak RSS {naive['peak_rss_mb']:.0f} MB"
        )
        print(
            f"speed-up srsmlm vs guide-style (warm cache): {naive['seconds'] / ours['seconds']:.1f}x"
        )


if __name__ == "__main__":
    main()
