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

What the photons allow: the Cramér-Rao bound of every matched localization's spectral centre at
the simulator's true parameters (photons, centre, width, row and background of every emitter of
its frame, localized or not), from the Fisher information the fits use
(:func:`srsmlm.mle.crlb`, :func:`srsmlm.joint.bounds_at`): alone (one emitter in its readout
box) and jointly (with every true emitter whose spectrum puts at least ``MIN_PHOTONS`` expected
photons in the region the joint readout fits for its group). A localization is *allowed* where
that bound is <= ``spectra.max_crlb_nm``; printed per condition: the shares allowed alone and
jointly, the joint readout's trusted share beside them, and the flags of the allowed
localizations the readout does not trust.

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
from scipy.spatial import cKDTree
from scipy.special import ndtr

from srsmlm.boxes import place_boxes
from srsmlm.evaluation import match_truth
from srsmlm.geometry import Geometry
from srsmlm.joint import bounds_at
from srsmlm.localizations import filter_localizations, read_localizations
from srsmlm.mle import crlb
from srsmlm.mle_table import joint_pass, with_groups
from srsmlm.readout import mle_readout, readout_boxes
from srsmlm.simulate import SimulationParams, simulate_acquisition
from srsmlm.spectra import StageSettings, stage_settings
from srsmlm.stack import Stack

#: condition -> (seed, mean photons, overrides of the simulation section, of the camera section)
CONDITIONS = {
    "demo": (42, 2500, {}, {}),
    "dense": (7, 2500, {"n_molecules": 250}, {}),
    "dim": (3, 1200, {"n_molecules": 180, "background_photons": 15}, {}),
    "emccd": (5, 2500, {"n_molecules": 180, "dyes_nm": [575, 600, 630, 655]}, {"type": "emccd"}),
    "seed7": (7, 2500, {"n_molecules": 180}, {}),
}

#: a true emitter joins a region's bound at the truth where its spectrum puts at least this many
#: expected photons in the region
MIN_PHOTONS = 1.0

#: regions whose bounds at the truth are computed at once (bounds the padded zero data)
BOUND_CHUNK = 256


def simulate(
    folder: Path, name: str, frames: int
) -> tuple[Path, pd.DataFrame, pd.DataFrame, SimulationParams]:
    """One simulated acquisition: the stack, its filtered localizations, the truth and the
    simulation's parameters."""
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
    return paths[0], locs, pd.read_csv(paths[3]), params


def readout(stack_path: Path, locs: pd.DataFrame, camera: dict, **spectra_keys) -> pd.DataFrame:
    """Every localization read out as the spectra stage does (the acquisition's ``camera``
    section), with ``spectra_keys`` changed."""
    cfg = default_config()
    g = Geometry.from_config(cfg)
    spectra = section("spectra", **spectra_keys)
    st = stage_settings(spectra, camera, g, threads=2)
    boxes = place_boxes(*(locs[c].to_numpy() for c in ("frame", "pixel_x", "pixel_y")), g)
    table = with_groups(locs.reset_index(drop=True).assign(spec_col0=boxes.spec_col0), st.reader)
    with Stack(stack_path) as stack:
        joint = joint_pass(table, stack, st.reader, st.chunk_size)
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


def true_emission(d: pd.DataFrame, truth: pd.DataFrame, tolerance_px: float = 0.02) -> np.ndarray:
    """Row of ``truth`` of each localization by the rule of :func:`srsmlm.evaluation.match_truth`
    (same frame, reported position within ``tolerance_px``); -1 for false detections."""
    det = np.flatnonzero(truth["detected"].astype(bool).to_numpy())
    scale = 1e5
    pts = truth.iloc[det][["frame", "loc_x", "loc_y"]].to_numpy(float) * [scale, 1, 1]
    dist, idx = cKDTree(pts).query(
        d[["frame", "x", "y"]].to_numpy(float) * [scale, 1, 1], distance_upper_bound=tolerance_px
    )
    found = np.isfinite(dist)
    return np.where(found, det[np.minimum(idx, len(det) - 1)], -1)


def true_spectra(truth: pd.DataFrame, p: SimulationParams) -> pd.DataFrame:
    """Each true emission's spectrum as the simulator drew it, in frame px: photons ``N``,
    centre column ``cx``, width ``s``, row ``y``."""
    g = p.geometry
    return pd.DataFrame(
        {
            "frame": truth["frame"].to_numpy(),
            "N": truth["spectrum_photons"].to_numpy(float),
            "cx": truth["x"].to_numpy()
            + g.spectral_offset
            + (truth["sc_true_nm"].to_numpy() - p.wavelength_at_offset_nm) / p.nm_per_px,
            "s": np.hypot(p.dye_sd_nm / p.nm_per_px, p.psf_sigma_px),
            "y": truth["y"].to_numpy(float),
        }
    )


def bounds_at_truth(
    table: pd.DataFrame,
    emission: np.ndarray,
    truth: pd.DataFrame,
    p: SimulationParams,
    st: StageSettings,
) -> pd.DataFrame:
    """Bound (nm) of the spectral centre of each localization of ``table`` (the joint
    readout's table: ``group``, ``spec_col0``) matched to a true ``emission`` (-1: none, NaN),
    at the true parameters: ``bound_alone_nm`` (one emitter in its readout box,
    :func:`srsmlm.mle.crlb`) and ``bound_joint_nm`` (with every true emitter of the frame that
    puts ``MIN_PHOTONS`` or more in its group's region, :func:`srsmlm.joint.bounds_at`), and
    ``emitters_in_region`` (true emitters in that bound) and ``unlocalized_in_region`` (of
    them, those no localization of ``table`` is matched to: missed by the localizer or
    filtered out)."""
    cfg, frame_shape = st.cfg, (p.height, p.width)
    spec = true_spectra(truth, p)
    row0, col0, width = readout_boxes(table, p.geometry, cfg, frame_shape)
    out = pd.DataFrame(np.nan, index=table.index, columns=["bound_alone_nm", "bound_joint_nm"])
    out["emitters_in_region"] = 0
    out["unlocalized_in_region"] = 0
    hit = np.flatnonzero(emission >= 0)
    t = spec.iloc[emission[hit]]
    b = np.full(len(hit), p.background_photons)
    shared = np.column_stack([t["cx"] - col0[hit], t["s"]])
    local = np.column_stack([t["N"], t["y"] - row0[hit], b])
    alone = crlb(shared, local, (cfg.rows, width), cfg.settings, st.camera)
    out.iloc[hit, 0] = alone * cfg.nm_per_px
    # each group's region: the union of its members' readout boxes (srsmlm.overlaps._fit_jointly)
    boxes = pd.DataFrame(
        {"group": table["group"].to_numpy(), "frame": table["frame"].to_numpy()}
        | {"r0": row0, "c0": col0, "r1": row0 + cfg.rows, "c1": col0 + width}
    )
    regions = boxes.groupby("group").agg(
        frame=("frame", "first"), r0=("r0", "min"), c0=("c0", "min"), r1=("r1", "max"),
        c1=("c1", "max"),
    )  # fmt: skip
    pairs = regions.reset_index().merge(spec.reset_index(names="emission"), on="frame")
    sy = cfg.settings.sigma_y
    rows_in = ndtr((pairs["r1"] - pairs["y"]) / sy) - ndtr((pairs["r0"] - pairs["y"]) / sy)
    cols_in = ndtr((pairs["c1"] - pairs["cx"]) / pairs["s"]) - ndtr(
        (pairs["c0"] - pairs["cx"]) / pairs["s"]
    )
    targets = pd.MultiIndex.from_arrays([table["group"].to_numpy()[hit], emission[hit]])
    own = pd.MultiIndex.from_frame(pairs[["group", "emission"]]).isin(targets)
    pairs = pairs[own | (pairs["N"] * rows_in * cols_in >= MIN_PHOTONS)]
    pairs = pairs.sort_values(["group", "emission"], kind="stable").reset_index(drop=True)
    localized = np.zeros(len(truth), bool)
    localized[emission[hit]] = True
    pairs["unlocalized"] = ~localized[pairs["emission"].to_numpy()]
    sizes = pairs.groupby("group", sort=True).size()
    starts = np.r_[0, np.cumsum(sizes.to_numpy())]
    reg = regions.loc[sizes.index]
    shapes = np.column_stack([reg["r1"] - reg["r0"], reg["c1"] - reg["c0"]])
    member = np.repeat(np.arange(len(sizes)), sizes.to_numpy())
    emitters = np.column_stack(
        [
            pairs["N"],
            pairs["cx"] - reg["c0"].to_numpy()[member],
            pairs["s"],
            pairs["y"] - reg["r0"].to_numpy()[member],
        ]
    )
    var = np.empty(len(pairs))
    order = np.argsort(shapes[:, 0] * shapes[:, 1], kind="stable")
    for part in np.array_split(order, max(1, -(-len(order) // BOUND_CHUNK))):
        part = np.sort(part)
        em = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in part])
        sub = np.r_[0, np.cumsum(sizes.to_numpy()[part])]
        b = np.full(len(part), p.background_photons)
        got = bounds_at(shapes[part], sub, np.zeros(len(em)), emitters[em], b, cfg.settings,
                        st.camera)  # fmt: skip
        var[em] = got["var_l0"]
    pairs["bound_nm"] = np.sqrt(var) * cfg.nm_per_px
    per_group = pairs.groupby("group").agg(n=("emission", "size"), other=("unlocalized", "sum"))
    key = pd.MultiIndex.from_frame(pairs[["group", "emission"]])
    where = key.get_indexer(targets)
    out.iloc[hit, 1] = pairs["bound_nm"].to_numpy()[where]
    out.iloc[hit, 2] = per_group.loc[targets.get_level_values(0), "n"].to_numpy()
    out.iloc[hit, 3] = per_group.loc[targets.get_level_values(0), "other"].to_numpy()
    return out


def ceiling(
    d: pd.DataFrame, max_crlb_nm: float, max_group_size: int
) -> tuple[dict[str, float], pd.Series]:
    """What the photons allow against what the joint readout trusts, over the localizations
    ``d`` (matched to the truth, with :func:`bounds_at_truth`'s columns): the figures (shares
    of ``d``; ``allowed_over_cap``: allowed, in a group above ``max_group_size``, which the
    readout flags ``crowded`` unfitted), and the flags (shares) of the allowed localizations
    the readout does not trust."""
    trusted = (d["sc_mle_flag"].fillna("") == "").to_numpy()
    alone = (d["bound_alone_nm"] <= max_crlb_nm).to_numpy()
    allowed = (d["bound_joint_nm"] <= max_crlb_nm).to_numpy()
    ratio = d["sc_mle_crlb_nm"] / d["bound_joint_nm"]
    figures = {
        "allowed_alone": alone.mean(),
        "allowed_joint": allowed.mean(),
        "trusted": trusted.mean(),
        "trusted/allowed": trusted.mean() / allowed.mean(),
        "allowed_trusted": (allowed & trusted).sum() / allowed.sum(),
        "allowed_not_trusted": (allowed & ~trusted).mean(),
        "trusted_not_allowed": (trusted & ~allowed).mean(),
        "allowed_over_cap": (allowed & (d["group_size"] > max_group_size).to_numpy()).mean(),
        "bound_fit/truth_trusted_median": np.median(ratio[trusted]),
    }
    flags = d.loc[allowed & ~trusted, "sc_mle_flag"].fillna("").replace("", "trusted")
    return figures, flags.value_counts(normalize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    ap.add_argument("--rows", type=float, default=default_config()["spectra"]["group_rows_px"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.conditions:
            stack, locs, truth, params = simulate(Path(tmp), name, args.frames)
            print(f"\n== {name}: {len(locs)} filtered localizations, {args.frames} frames")
            read = {}
            crowding = default_config()["spectra"]["crowding_rows_px"]
            alone = {"group_rows_px": crowding, "max_group_size": 1}
            for label, keys in (("single", alone), ("joint", {"group_rows_px": args.rows})):
                t0 = time.perf_counter()
                camera = section("camera", **CONDITIONS[name][3])
                d = match_truth(readout(stack, locs, camera, **keys), truth)
                print(f"{label:>6}: {time.perf_counter() - t0:.1f} s")
                if label == "joint":  # the bounds at the truth need every localization's box
                    st = stage_settings(section("spectra", **keys), camera, params.geometry, 2)
                    emission = true_emission(d, truth)
                    d = d.join(bounds_at_truth(d, emission, truth, params, st))
                read[label] = d[d["sc_true_nm"].notna()]
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
            max_crlb = st.cfg.max_crlb_nm
            figures, flags = ceiling(read["joint"], max_crlb, st.joint.max_group_size)
            print(f"allowed by the photons (bound at the truth <= {max_crlb} nm), joint readout:")
            print(pd.DataFrame([figures], index=[name]).round(3).to_string())
            print("allowed, not trusted, flags:", flags.round(3).to_dict())
            emitters = read["joint"]["emitters_in_region"].value_counts().sort_index()
            print("true emitters in the region:", emitters.to_dict())
            unlocalized = read["joint"]["unlocalized_in_region"] > 0
            print("with an unlocalized emitter in the region:", round(float(unlocalized.mean()), 3))


if __name__ == "__main__":
    main()
