"""Benchmark: the maximum-likelihood readout of overlapping spectra on simulated acquisitions.

Simulates acquisitions under several conditions (density, photons, background, camera, seed;
the default config's optics), filters their localization tables as the pipeline does, and reads
every localization twice on the same stack: each spectrum fitted alone, a neighbour closer than
``crowding_rows_px`` flagging it ``crowded`` (the single-emitter readout: ``max_group_size: 1``
and ``group_rows_px = crowding_rows_px``), and with overlapping spectra fitted jointly (the
config's ``group_rows_px`` and ``max_group_size``). Prints per condition and readout, against the simulator's truth:
the trusted share, the flags by reason, median / RMSE of the trusted values, their efficiency
(bound^2 / error^2) and 2x-bound coverage, overall and for localizations with a neighbour, and
the errors of the localizations the single readout flags ``crowded``. Efficiency: RMS bound /
RMSE of the trusted values, as in ``metrics.json``.

    python benchmarks/overlaps.py [--frames 300] [--conditions demo dense dim emccd seed7]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import default_config, section

from srsmlm.boxes import place_boxes
from srsmlm.evaluation import match_truth
from srsmlm.geometry import Geometry
from srsmlm.localizations import filter_localizations, read_localizations
from srsmlm.overlaps import overlap_groups
from srsmlm.readout import mle_readout
from srsmlm.simulate import SimulationParams, simulate_acquisition
from srsmlm.spectra import joint_pass, stage_settings
from srsmlm.stack import Stack

#: condition -> (seed, mean photons, overrides of the simulation section, of the camera section)
CONDITIONS = {
    "demo": (42, 2500, {}, {}),
    "dense": (7, 2500, {"n_molecules": 250}, {}),
    "dim": (3, 1200, {"n_molecules": 180, "background_photons": 15}, {}),
    "emccd": (5, 2500, {"n_molecules": 180, "dyes_nm": [575, 600, 630, 655]}, {"type": "emccd"}),
    "seed7": (7, 2500, {"n_molecules": 180}, {}),
}


def simulate(folder: Path, name: str, frames: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """One simulated acquisition: the stack, its filtered localizations and the truth."""
    cfg = default_config()
    seed, photons, sim, camera = CONDITIONS[name]
    g = Geometry.from_config(cfg)
    sim_section = section("simulation", frames=frames, **sim)
    sim_section["camera"] = section("camera", **camera)
    params = SimulationParams.from_config(sim_section, g, photons)
    paths = [folder / f"{name}.{ext}" for ext in ("ome.tif", "results.xls", "csv", "truth.csv")]
    px = float(cfg["simulation"]["pixel_size_nm"])
    simulate_acquisition(params, seed, name, *paths, px)
    f = section("filter")
    locs = read_localizations(paths[1], "peakfit", px)
    locs, _ = filter_localizations(locs, f["min_signal"], f["x_range"], f["y_range"])
    return paths[0], locs, pd.read_csv(paths[3])


def readout(stack_path: Path, locs: pd.DataFrame, camera: dict, **spectra_keys) -> pd.DataFrame:
    """Every localization read out as the spectra stage does (the acquisition's ``camera``
    section), with ``spectra_keys`` changed."""
    cfg = default_config()
    g = Geometry.from_config(cfg)
    spectra = section("spectra", **spectra_keys)
    st = stage_settings(spectra, camera, g, threads=2)
    boxes = place_boxes(*(locs[c].to_numpy() for c in ("frame", "pixel_x", "pixel_y")), g)
    table = locs.reset_index(drop=True).assign(spec_col0=boxes.spec_col0)
    table["group"] = overlap_groups(table, g, st.cfg, st.joint)
    table["group_size"] = np.bincount(table["group"])[table["group"]]
    table["crowded"] = table["group_size"] > st.joint.max_group_size
    with Stack(stack_path) as stack:
        joint = joint_pass(table, stack, st)
        alone = table[~table.index.isin(joint.index)]
        single = mle_readout(stack, alone, g, st.cal, st.camera, st.cfg)
    out = pd.concat([single, joint.drop(columns="group_size")])
    return table.join(out.loc[table.index])


def scores(d: pd.DataFrame) -> dict[str, float]:
    """Trusted share, median / RMSE, efficiency and 2x coverage of the trusted values."""
    trusted = d["sc_mle_flag"].fillna("") == ""
    err = (d["sc_mle_nm"] - d["sc_true_nm"])[trusted]
    bound = d["sc_mle_crlb_nm"][trusted]
    return {
        "n": len(d),
        "trusted": trusted.mean(),
        "median_nm": np.median(np.abs(err)),
        "rmse_nm": np.sqrt(np.mean(err**2)),
        "efficiency": np.sqrt(np.mean(bound**2) / np.mean(err**2)),
        "coverage_2x": np.mean(np.abs(err) < 2 * bound),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    ap.add_argument("--rows", type=float, default=default_config()["spectra"]["group_rows_px"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.conditions:
            stack, locs, truth = simulate(Path(tmp), name, args.frames)
            print(f"\n== {name}: {len(locs)} filtered localizations, {args.frames} frames")
            read = {}
            crowding = default_config()["spectra"]["crowding_rows_px"]
            alone = {"group_rows_px": crowding, "max_group_size": 1}
            for label, keys in (("single", alone), ("joint", {"group_rows_px": args.rows})):
                t0 = time.perf_counter()
                camera = section("camera", **CONDITIONS[name][3])
                d = match_truth(readout(stack, locs, camera, **keys), truth)
                read[label] = d[d["sc_true_nm"].notna()]
                print(f"{label:>6}: {time.perf_counter() - t0:.1f} s")
            crowded = read["single"]["sc_mle_flag"] == "crowded"
            with_neighbour = read["joint"]["group_size"] > 1
            rows = {
                "single, all": scores(read["single"]),
                "joint, all": scores(read["joint"]),
                "joint, with a neighbour": scores(read["joint"][with_neighbour]),
                "joint, formerly crowded": scores(read["joint"][crowded.to_numpy()]),
            }
            print(pd.DataFrame(rows).T.round(3).to_string())
            for label, d in read.items():
                flags = d["sc_mle_flag"].fillna("").replace("", "trusted")
                print(f"flags {label}:", flags.value_counts(normalize=True).round(3).to_dict())
            print("group sizes:", read["joint"]["group_size"].value_counts().sort_index().to_dict())


if __name__ == "__main__":
    main()
