"""Large data, the chain after the patch stage: a synthetic stack (20k frames of 256 x 512 by
default) with ``--localizations`` localizations in runs of consecutive frames, run through
denoise_acquisition (a small untrained U-Net: training is not what is measured) -> spectra ->
evaluate -> the report, each stage in its own process; prints wall time and peak RSS per stage
(every stage should stay under 2 GB at 10^6 localizations).

    python benchmarks/bench_chain.py [--localizations 1000000] [--frames 20000]
        [--workdir /tmp/srsmlm_chain] [--keep]

Small: ``--localizations 10000 --frames 400``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GEOMETRY = {"height": 16, "loc_width": 16, "spectral_width": 48, "spectral_offset": 230}
#: the simulated demo's dyes (nm) and calibration (config/config.yaml's defaults)
DYES_NM = (585.0, 610.0, 635.0)
NM_PER_PX, WAVELENGTH_AT_OFFSET_NM = 2.06, 560.0

STAGE = r"""
import json, resource, sys, time, yaml
from pathlib import Path
stage, work = sys.argv[1], Path(sys.argv[2])
cfg = yaml.safe_load(Path(sys.argv[3]).read_text())
t = time.perf_counter()
from srsmlm.geometry import Geometry
g = Geometry.from_config(cfg["geometry"])
r = work / "results"
if stage == "denoise":
    from srsmlm.inference import denoise_acquisition
    denoise_acquisition(work / "localizations.csv", work / "stack.ome.tif", work / "model/unet.keras",
                        work / "model/model.json", g, cfg["inference"]["batch_size"],
                        cfg["patches"]["chunk_size"], r / "denoised/raw.tif",
                        r / "denoised/denoised.tif", r / "denoised/patches.csv", r / "denoised/skipped.csv")
elif stage == "spectra":
    from srsmlm.spectra import spectra_stage
    spectra_stage(r / "denoised/patches.csv", r / "denoised/raw.tif", r / "denoised/denoised.tif",
                  work / "clusters.csv", work / "stack.ome.tif", g, cfg["spectra"], cfg["camera"],
                  cfg["seed"], r / "spectra.csv", r / "spectral_precision.csv", r / "molecules.csv",
                  threads=2)
elif stage == "evaluate":
    from srsmlm.evaluation import evaluate
    evaluate([r / "spectra.csv"], [work / "truth.csv"], ["chain"], cfg["spectra"]["signal_bins"],
             cfg["spectra"]["tolerance_nm"], r / "metrics.json", r / "sc_errors.csv",
             [r / "molecules.csv"])
else:
    from srsmlm.plots import report_stage
    names = ("montage", "loss", "histograms", "precision", "rendering", "evaluation", "mle_error",
             "mle_efficiency", "flagged", "molecules")
    report_stage(work / "training/predictions.npz", work / "training/index.csv",
                 work / "training/history.csv", work / "training/test_metrics.json",
                 [r / "spectra.csv"], [r / "spectral_precision.csv"], [work / "truth.csv"],
                 r / "metrics.json", {k: r / f"report/{k}.png" for k in names},
                 r / "report/summary.json", cfg["report"]["render_zoom"],
                 cfg["report"]["render_sigma_px"], [r / "denoised/raw.tif"], [r / "molecules.csv"],
                 cfg["seed"], cfg["spectra"]["signal_bins"])
print(json.dumps({"stage": stage, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_layout(
    n: int,
    frames: int,
    run_length: int,
    x_range: tuple[int, int],
    y_range: tuple[int, int],
    seed: int,
) -> dict[str, np.ndarray]:
    """``n`` localizations in frame order: ``n // frames`` slots per frame, each slot holding one
    emitter for ``run_length`` consecutive frames at a random position with a random dye; a
    fifth of the runs are left out of the clusters (cluster -1), as singletons would be."""
    rng = np.random.default_rng(seed)
    per_frame = max(1, -(-n // frames))
    row = np.arange(n)
    frame, slot = row // per_frame + 1, row % per_frame
    run = ((frame - 1) // run_length) * per_frame + slot
    n_runs = int(run.max()) + 1
    px = rng.uniform(*x_range, n_runs)[run] + rng.normal(0, 0.05, n)
    py = rng.uniform(*y_range, n_runs)[run] + rng.normal(0, 0.05, n)
    dye = rng.integers(0, len(DYES_NM), n_runs)[run]
    clustered = rng.random(n_runs)[run] >= 0.2
    return {
        "frame": frame,
        "x": np.round(px, 4),
        "y": np.round(py, 4),
        "signal": np.round(rng.gamma(8.0, 250.0, n), 2),
        "dye": dye,
        "cluster": np.where(clustered, run, -1),
    }


def _gaussian(centre: np.ndarray, offsets: np.ndarray, sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``floor(centre) + offsets`` and a unit Gaussian of ``sd`` sampled at their centres."""
    pix = np.floor(centre).astype(np.int64)[:, None] + offsets[None, :]
    return pix, np.exp(-((pix + 0.5 - centre[:, None]) ** 2) / (2 * sd**2)) / (
        sd * np.sqrt(2 * np.pi)
    )


def write_stack(
    path: Path, locs: dict[str, np.ndarray], frames: int, shape: tuple[int, int], seed: int
) -> None:
    """uint16 stack through a memory map, a block of frames at a time, on the demo camera
    (offset 100 ADU, 2 ADU/photon): Poisson background of 30 photons/px (frames drawn from a
    pool), each localization's spot (PSF sd 1.3 px) and, ``spectral_offset`` px to the right,
    its spectrum (sd 8 px around its dye's wavelength), half of ``signal`` photons each."""
    import tifffile

    rng = np.random.default_rng(seed + 1)
    h, w = shape
    stack = tifffile.memmap(
        path, shape=(frames, h, w), dtype=np.uint16, ome=True, metadata={"axes": "TYX"}
    )
    pool = rng.poisson(30.0, (32, h, w)).astype(np.float32) * 2 + 100
    shift = (np.array(DYES_NM) - WAVELENGTH_AT_OFFSET_NM) / NM_PER_PX + GEOMETRY["spectral_offset"]
    block = 200
    for f0 in range(0, frames, block):
        n = min(block, frames - f0)
        img = pool[rng.integers(0, len(pool), n)]
        sel = np.flatnonzero((locs["frame"] > f0) & (locs["frame"] <= f0 + n))
        f = (locs["frame"][sel] - 1 - f0)[:, None, None]
        x, y, adu = locs["x"][sel], locs["y"][sel], locs["signal"][sel] * 2 / 2
        rows, gy = _gaussian(y, np.arange(-3, 4), 1.3)
        for centre, sd, half in ((x, 1.3, 3), (x + shift[locs["dye"][sel]], 8.0, 24)):
            cols, gx = _gaussian(centre, np.arange(-half, half + 1), sd)
            val = adu[:, None, None] * gy[:, :, None] * gx[:, None, :]
            r, c = np.broadcast_arrays(rows[:, :, None], cols[:, None, :])
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            np.add.at(img, (np.broadcast_to(f, r.shape)[ok], r[ok], c[ok]), val[ok])
        stack[f0 : f0 + n] = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
    stack.flush()
    del stack


def write_tables(work: Path, locs: dict[str, np.ndarray]) -> None:
    """localizations.csv (the filter stage's columns that denoising reads), clusters.csv and
    the simulator-style truth.csv (every localization detected, at its own position)."""
    import pandas as pd

    n = len(locs["frame"])
    table = pd.DataFrame({k: locs[k] for k in ("frame", "x", "y", "signal")})
    table["pixel_x"] = np.floor(table["x"]).astype(np.int64)
    table["pixel_y"] = np.floor(table["y"]).astype(np.int64)
    table.to_csv(work / "localizations.csv", index=False)
    pd.DataFrame({"localization_index": np.arange(n), "cluster": locs["cluster"]}).to_csv(
        work / "clusters.csv", index=False
    )
    pd.DataFrame(
        {
            "frame": locs["frame"],
            "loc_x": locs["x"],
            "loc_y": locs["y"],
            "detected": True,
            "dye": locs["dye"],
            "sc_true_nm": np.array(DYES_NM)[locs["dye"]],
        }
    ).to_csv(work / "truth.csv", index=False)


def synthetic_acquisition(
    work: Path,
    n: int,
    frames: int,
    shape: tuple[int, int] = (256, 512),
    x_range: tuple[int, int] = (12, 218),
    y_range: tuple[int, int] = (12, 244),
    run_length: int = 12,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A deterministic synthetic acquisition in ``work``: stack.ome.tif, localizations.csv,
    clusters.csv, truth.csv. Returns the localizations (see :func:`run_layout`)."""
    work.mkdir(parents=True, exist_ok=True)
    locs = run_layout(n, frames, run_length, x_range, y_range, seed)
    write_stack(work / "stack.ome.tif", locs, frames, shape, seed)
    write_tables(work, locs)
    return locs


def write_model_and_training(work: Path) -> None:
    """A small untrained U-Net with the model.json the loader expects, and the training outputs
    the report reads (a few test patches, a two-epoch history, test metrics)."""
    import pandas as pd
    from harness import section  # here: tests load this module without its folder on sys.path

    from srsmlm.geometry import Geometry
    from srsmlm.model import ModelConfig, build_unet

    g = Geometry.from_config(GEOMETRY)
    (work / "model").mkdir(parents=True, exist_ok=True)
    small = section("model", depth=2, base_filters=4, kernel_size=3, output_activation="sigmoid")
    model = build_unet(g, ModelConfig.from_config(small))
    model.save(work / "model/unet.keras")
    (work / "model/model.json").write_text(json.dumps({"geometry": g.to_dict()}))
    t = work / "training"
    t.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(3).random((8, *g.shape)).astype(np.float32)
    np.savez(t / "predictions.npz", X=x, Y=x, P=x)
    pd.DataFrame(
        {
            "acquisition": "chain",
            "index_in_acquisition": np.arange(8),
            "cluster": np.arange(8),
            "frame": np.arange(1, 9),
            "kind": "signal",
            "split": "test",
        }
    ).to_csv(t / "index.csv", index=False)
    pd.DataFrame(
        {"epoch": [0, 1], "loss": [0.2, 0.1], "val_loss": [0.2, 0.1], "learning_rate": 1e-3}
    ).to_csv(t / "history.csv", index=False)
    metric = {"mse": 0.01, "psnr_db": 20.0}
    test = {"n_test": 8, "network": metric, "raw_scaled": metric, "psnr_peak": 1.0}
    (t / "test_metrics.json").write_text(json.dumps(test | {"network_beats_raw": False}))


def prepare(work: Path, n: int, frames: int) -> Path:
    """Inputs, model and config in a child process (its peak RSS stays out of the stages')."""
    import yaml
    from harness import default_config

    cfg = default_config()
    cfg["geometry"] = GEOMETRY
    config = work / "config.yaml"
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_chain as b;"
        f" from pathlib import Path; w = Path({str(work)!r});"
        f" b.synthetic_acquisition(w, {n}, {frames}); b.write_model_and_training(w)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--localizations", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--workdir", default="/tmp/srsmlm_chain")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    config = prepare(work, args.localizations, args.frames)
    size = (work / "stack.ome.tif").stat().st_size / 2**30
    print(
        f"wrote a {args.frames}-frame stack ({size:.2f} GiB), {args.localizations:,} "
        f"localizations and a small untrained model in {time.perf_counter() - t:.0f} s"
    )
    rows = []
    try:
        for stage in ("denoise", "spectra", "evaluate", "report"):
            out = subprocess.run(
                [sys.executable, "-c", STAGE, stage, str(work), str(config)],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(
                f"{stage:9s}: {rows[-1]['seconds']:7.1f} s, peak RSS "
                f"{rows[-1]['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n| stage ({args.localizations:,} localizations) | wall time (s) | peak RSS (MB) |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
