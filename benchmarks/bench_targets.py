"""Cost of the model targets' leave-one-out fits on one long run, with and without
``patches.target_max_frames`` (each frame's fit joins at most that many other frames).

One molecule over K frames (Poisson counts, 1,500 spectral photons, 10 background
photons/px; the camera and readout settings of ``config/config.yaml``), read out once
(:func:`srsmlm.targets.run_readout`, not timed), then fitted by
:func:`srsmlm.targets.leave_one_out_fits` with every other frame (the reference, K - 1 boxes per frame) and with the cap; prints the seconds, the boxes
fitted and the ratio, and how far the capped centres lie from the uncapped ones.

    python benchmarks/bench_targets.py --frames 300 --max-frames 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from harness import default_config

from srsmlm.geometry import Geometry
from srsmlm.mle import box_model
from srsmlm.stack import Stack
from srsmlm.targets import READOUT_COLUMNS, TargetModel, leave_one_out_fits, run_readout

CONFIG = default_config()
SPECTRA, CAMERA = CONFIG["spectra"], CONFIG["camera"]
G = Geometry.from_config(CONFIG["geometry"])


def long_run(folder: Path, k: int, seed: int = 0) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    h, w, x, y = 48, 340, 40.3, 24.6
    local = np.array([[1500.0, y, 10.0]])
    mean = box_model(np.array([[x, 1.3]]), local * [1, 1, 0], (h, w), 1.3)[0]
    mean += box_model(np.array([[x + 254.1, 8.5]]), local, (h, w), 1.3)[0]
    counts = rng.poisson(np.broadcast_to(mean, (k, h, w)))
    gain, offset, read = (
        CAMERA[k] for k in ("gain_adu_per_photon", "offset_adu", "read_noise_adu")
    )
    adu = offset + gain * counts + rng.normal(0, read, counts.shape)
    stack = np.clip(np.round(adu), 0, 65535)
    path = folder / "stack.ome.tif"
    tifffile.imwrite(path, stack.astype(np.uint16), ome=True, metadata={"axes": "TYX"})
    runs = pd.DataFrame(
        {"frame": np.arange(1, k + 1), "x": x, "y": y, "signal": 1500.0, "pixel_x": int(x)}
    )
    return path, runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument(
        "--max-frames",
        type=int,
        default=CONFIG["patches"]["target_max_frames"],
        help="the cap (default: the config's patches.target_max_frames)",
    )
    args = ap.parse_args(argv)
    tm = TargetModel.from_config(SPECTRA, CAMERA, G)
    with tempfile.TemporaryDirectory() as d:
        path, runs = long_run(Path(d), args.frames)
        with Stack(path) as stack:
            readout = run_readout(stack, runs, np.arange(len(runs)), G, tm)
            runs = runs.assign(**{c: readout[c].to_numpy() for c in READOUT_COLUMNS})
            leave_one_out_fits(stack, runs.iloc[:8], np.array([0]), G, tm)  # compile
            out = {}
            for cap in (None, args.max_frames):
                t = time.perf_counter()
                fits = leave_one_out_fits(stack, runs, np.array([0]), G, tm, cap)
                out[cap] = (time.perf_counter() - t, int(fits["n_others"].sum()), fits)
    (t_all, n_all, f_all), (t_cap, n_cap, f_cap) = out[None], out[args.max_frames]
    diff = (f_cap["distance_px"] - f_all["distance_px"]).abs() * SPECTRA["nm_per_px"]
    print(f"one run of {args.frames} frames")
    print(f"every other frame : {t_all:7.2f} s, {n_all:,} boxes fitted")
    print(f"max_frames {args.max_frames:<6} : {t_cap:7.2f} s, {n_cap:,} boxes fitted")
    print(f"ratio (every / capped): {t_all / t_cap:.1f}x time, {n_all / n_cap:.1f}x boxes")
    c_cap, c_all = f_cap["crlb_nm"].median(), f_all["crlb_nm"].median()
    crlb = f"median CRLB {c_cap:.3f} nm capped, {c_all:.3f} nm every (ratio {c_cap / c_all:.2f})"
    print(
        f"capped centres vs uncapped: median {diff.median():.3f} nm, max {diff.max():.3f} nm; "
        + crlb
    )


if __name__ == "__main__":
    main()
