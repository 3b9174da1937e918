"""Scale: the spectra stage streams, so its peak memory hardly depends on the number of
localizations (issue 15). Inputs are synthetic and deterministic: the chain benchmark's stack and
tables (benchmarks/bench_chain.py), patch TIFFs tiled from a few thousand real patches of that
stack, the denoised TIFF a hard link to the raw one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SMALL, LARGE = 100_000, 400_000
PER_FRAME = 40
FRAME_SHAPE = (64, 512)

STAGE = r"""
import json, resource, sys, time, yaml
from pathlib import Path
from srsmlm.geometry import Geometry
from srsmlm.spectra import spectra_stage
d, acq = Path(sys.argv[1]), Path(sys.argv[2])
cfg = yaml.safe_load((d / "config.yaml").read_text())
t = time.perf_counter()
summary = spectra_stage(d / "patches.csv", d / "raw.tif", d / "denoised.tif", acq / "clusters.csv",
                        acq / "stack.ome.tif", Geometry.from_config(cfg["geometry"]),
                        cfg["spectra"], cfg["camera"], cfg["seed"], d / "spectra.csv",
                        d / "spectral_precision.csv", d / "molecules.csv", threads=2)
# VmHWM: this process's own peak (ru_maxrss also counts the parent's peak, shared until exec)
hwm = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
print(json.dumps({"seconds": time.perf_counter() - t, "molecules": summary["molecules"],
                  "peak_rss_mb": hwm / 1024,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _bench_chain():
    spec = importlib.util.spec_from_file_location("bench_chain", REPO / "benchmarks/bench_chain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_patch_inputs(d: Path, acq: Path, n: int, tile: int = 4096) -> None:
    """patches.csv (the first ``n`` localizations, with their boxes), raw.tif (``n`` pages: the
    first ``tile`` real patches repeated) and denoised.tif (a hard link), and the config."""
    import tifffile

    from srsmlm.boxes import extract_patches, place_boxes
    from srsmlm.geometry import Geometry
    from srsmlm.profiles import shift_fits
    from srsmlm.stack import Stack

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    g = Geometry.from_config(cfg["geometry"])
    locs = pd.read_csv(acq / "localizations.csv", nrows=n)
    boxes = place_boxes(locs["frame"], locs["pixel_x"], locs["pixel_y"], g)
    table = locs.assign(spec_row0=boxes.spec_row0, spec_col0=boxes.spec_col0)
    table.insert(0, "localization_index", np.arange(n))
    d.mkdir(parents=True, exist_ok=True)
    with Stack(acq / "stack.ome.tif") as stack:
        patches = extract_patches(stack, boxes.subset(np.arange(tile)), g)
    # the denoise stage's fit columns, as if the denoised patches were the raw ones (one shift)
    fits = shift_fits(
        patches[None],
        np.ones((1, tile), bool),
        table["y"].to_numpy()[:tile],
        table["spec_row0"].to_numpy()[:tile],
        np.array([0]),
        g,
        int(cfg["spectra"]["profile_rows"]),
    )
    reps = -(-n // tile)
    for key, values in fits.items():
        table[f"denoised_{key}"] = np.tile(values, reps)[:n]
    table.to_csv(d / "patches.csv", index=False)
    pages = tifffile.memmap(
        d / "raw.tif", shape=(n, *g.shape), dtype=np.float32, metadata={"axes": "QYX"}
    )
    for a in range(0, n, tile):
        pages[a : a + tile] = patches[: min(tile, n - a)]
    pages.flush()
    del pages
    os.link(d / "raw.tif", d / "denoised.tif")
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def run_spectra(d: Path, acq: Path) -> dict:
    """The spectra stage in its own process: its wall time and peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", STAGE, str(d), str(acq)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_spectra_peak_memory_nearly_independent_of_size(tmp_path):
    t0 = time.perf_counter()
    acq = tmp_path / "acq"
    _bench_chain().synthetic_acquisition(
        acq, LARGE, LARGE // PER_FRAME, FRAME_SHAPE, x_range=(10, 220), y_range=(10, 54)
    )
    rss = {}
    try:
        for n in (SMALL, LARGE):
            d = tmp_path / f"n{n}"
            write_patch_inputs(d, acq, n)
            r = run_spectra(d, acq)
            assert len(pd.read_csv(d / "spectra.csv", usecols=["frame"])) == n
            assert r["molecules"] > 0 and not list(d.glob(".spool_*"))
            rss[n] = r["peak_rss_mb"]
            print(f"{n} localizations: {r['seconds']:.0f} s, peak RSS {rss[n]:.0f} MB ({r})")
            shutil.rmtree(d)  # keep the disk use to one size at a time
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # a few GB: not left for pytest to keep
    print(f"test time {time.perf_counter() - t0:.0f} s")
    assert abs(rss[LARGE] - rss[SMALL]) / rss[SMALL] < 0.2, rss
