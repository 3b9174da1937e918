"""Large data: a synthetic 20k-frame 256 x 512 uint16 stack (5 GiB, written through a memory
map) with ~10^5 localizations, run through filter -> cluster -> patches, each stage in its own
process; prints wall time and peak RSS per stage (the patch stage must stay under 1 GB), and
the patch stage against one sequential read of the stack, both with the stack evicted from the
page cache first (as read from disk).

    python benchmarks/bench_large_stack.py [--frames 20000] [--workdir /tmp/srsmlm_large]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness import section

STAGE = r"""
import json, resource, sys, time
from pathlib import Path
stage, work, patches = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
t = time.perf_counter()
if stage == "read":
    import tifffile
    with tifffile.TiffFile(work / "stack.ome.tif") as tif:
        total = 0
        for page in tif.series[0].pages:
            total += int(page.asarray()[0, 0])
elif stage == "filter":
    from srsmlm.localizations import filter_stage
    filter_stage(work / "table.results.xls", "peakfit", None, 300, [10, 220], [10, 250], work / "localizations.csv")
elif stage == "cluster":
    from srsmlm.clustering import cluster_stage
    cluster_stage(work / "localizations.csv", 0.001, 3, 9, work / "clusters.csv")
else:
    from srsmlm.geometry import Geometry
    from srsmlm.plan import PatchParams
    from srsmlm.patches import prepare_patches
    prepare_patches(work / "clusters.csv", work / "localizations.csv", work / "stack.ome.tif",
                    Geometry(16, 16, 48, 230), PatchParams.from_config(patches), 1, "large", 9,
                    work / "patches/raw.tif", work / "patches/clean.tif", work / "patches/patches.csv",
                    threads=2)
print(json.dumps({"stage": stage, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_inputs(work: Path, frames: int, seed: int = 0) -> int:
    import tifffile

    rng = np.random.default_rng(seed)
    h, w = 256, 512
    n_runs = frames * 5 // 12 // 1  # ~10^5 localizations for 20k frames (mean run length 12)
    px = rng.integers(12, 218, n_runs)
    py = rng.integers(12, 244, n_runs)
    start = rng.integers(1, frames - 40, n_runs)
    length = rng.integers(9, 16, n_runs)
    run = np.repeat(np.arange(n_runs), length)
    frame = start[run] + np.arange(len(run)) - np.repeat(np.cumsum(length) - length, length)
    order = np.argsort(frame, kind="stable")
    frame, run = frame[order], run[order]
    work.mkdir(parents=True, exist_ok=True)
    stack = tifffile.memmap(
        work / "stack.ome.tif",
        shape=(frames, h, w),
        dtype=np.uint16,
        ome=True,
        metadata={"axes": "TYX"},
    )
    block = 500
    for f0 in range(0, frames, block):
        n = min(block, frames - f0)
        stack[f0 : f0 + n] = rng.integers(95, 115, (n, h, w), dtype=np.uint16)
    sel = frame <= frames
    stack[frame[sel] - 1, py[run[sel]], px[run[sel]]] = 3000
    stack.flush()
    del stack
    lines = [
        "#Localisation Results File",
        "#FileVersion Text.D0.E0.V2",
        "#Frame\torigX\torigY\tSignal\tX\tY",
    ]
    body = np.column_stack(
        [frame, px[run], py[run], np.full(len(run), 1000.0), px[run] + 0.5, py[run] + 0.5]
    )
    with open(work / "table.results.xls", "w") as fh:
        fh.write("\n".join(lines) + "\n")
        np.savetxt(fh, body, fmt=["%d", "%d", "%d", "%.1f", "%.2f", "%.2f"], delimiter="\t")
    return len(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--workdir", default="/tmp/srsmlm_large")
    args = ap.parse_args()
    work = Path(args.workdir)
    t = time.perf_counter()
    # written in a child process: Linux keeps a parent's peak RSS in its children's ru_maxrss
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_large_stack as b; "
        f"from pathlib import Path; print(b.write_inputs(Path({str(work)!r}), {args.frames}))"
    )
    n = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    )
    size = (work / "stack.ome.tif").stat().st_size / 2**30
    print(
        f"wrote {args.frames} x 256 x 512 stack ({size:.2f} GiB) and {n:,} localizations in "
        f"{time.perf_counter() - t:.0f} s"
    )
    # the configured patch stage with SF-fusion targets (the synthetic spots have no spectra
    # for the model targets' fits), every frame kept
    patches = json.dumps(section("patches", target="sf_fusion", min_loc_max=0.0))
    seconds = {}
    for stage in ("filter", "cluster", "read", "patches"):
        if stage in ("read", "patches"):
            fd = os.open(work / "stack.ome.tif", os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold page cache
            os.close(fd)
        out = subprocess.run(
            [sys.executable, "-c", STAGE, stage, str(work), patches], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        seconds[stage] = r["seconds"]
        print(f"{stage:8s}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']:6.0f} MB")
    print(
        f"patch stage / one sequential read (cold cache): {seconds['patches'] / seconds['read']:.2f}x"
    )


if __name__ == "__main__":
    main()
