"""The denoised readout on acquisitions its network was not tuned on: train/apply pairs.

Each pair is a whole pipeline run (``snakemake``, default config but for the simulated
conditions) in its own folder: two simulated training acquisitions, and an applied acquisition
simulated under other conditions (seed, dyes, photons, background, density, camera). For the
applied acquisition it prints, against the truth: every dye's median and mean error of the
denoised fit (anchored: ``fit_denoised_centre_nm``; and before the anchoring), of the raw
least-squares fit and of the trusted maximum-likelihood values; median and RMSE overall, among
localizations whose maximum-likelihood value is flagged, and by signal quarter; the share of
errors within 1x and 2x ``fit_denoised_err_nm``; the network's shift along the box on its test
patches; and the ratios of the denoised fit's median error and flagged RMSE to the raw fit's.

    python benchmarks/denoiser_generalisation.py --out /tmp/gen            # all pairs
    python benchmarks/denoiser_generalisation.py --out /tmp/gen --pairs four_dyes --quick

``--quick`` shortens each acquisition and the training (a smoke run; its figures are no result).
Each pair takes about the demo's time (15 min on 2 cores); reruns reuse finished outputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from harness import REPO, default_config

from srsmlm.evaluation import match_truth
from srsmlm.geometry import Geometry
from srsmlm.simulate import SimulationParams, simulate_acquisition

#: pair -> (seed, training conditions, applied conditions): ``simulation`` keys (``photons`` =
#: the applied acquisition's mean photons per localization); the training conditions may set
#: the camera (both acquisitions of a pair share it: the readout has one camera)
PAIRS: dict[str, tuple[int, dict, dict]] = {
    "four_dyes": (
        7,
        {"dyes_nm": [580, 600, 620, 640]},
        {"dyes_nm": [580, 600, 620, 640], "photons": 3000},
    ),
    "dim_bright_bg": (
        11,
        {"background_photons": 30},
        {"background_photons": 60, "photons": 1500},
    ),
    "dense": (
        13,
        {"n_molecules": 125},
        {"n_molecules": 250, "photons": 2500, "dyes_nm": [590, 615, 640]},
    ),
    "emccd": (
        17,
        {"camera": {"type": "emccd", "gain_adu_per_photon": 20.0, "read_noise_adu": 20.0}},
        {"photons": 2000, "background_photons": 20},
    ),
}

#: the training acquisitions' mean photons per localization (as the demo's)
TRAIN_PHOTONS = {"train_dim": 2000, "train_bright": 6000}

COLUMNS = {
    "denoised fit": "fit_denoised_centre_nm",
    "denoised, unanchored": "unanchored",
    "raw fit": "fit_raw_centre_nm",
    "trusted MLE": "trusted_mle",
}


def pair_config(seed: int, train: dict, quick: bool) -> dict:
    """The run's config: the defaults with the pair's seed, training conditions and camera (the
    pipeline simulates the two training acquisitions)."""
    cfg = default_config()
    cfg["seed"] = seed
    cfg["simulation"].update({k: v for k, v in train.items() if k != "camera"})
    cfg["simulation"]["acquisitions"] = dict(TRAIN_PHOTONS)
    cfg["camera"].update(train.get("camera", {}))
    if quick:
        cfg["simulation"]["frames"] = 150
        cfg["training"]["epochs"] = 4
    return cfg


def simulate_applied(folder: Path, cfg: dict, seed: int, apply: dict) -> None:
    """The applied acquisition, simulated under its own conditions with the run's camera, as a
    user's own data (stack, PeakFit table) beside the run; its truth for the scoring."""
    out = folder / "applied"
    if (out / "truth.csv").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    sim = dict(cfg["simulation"]) | {k: v for k, v in apply.items() if k != "photons"}
    sim["camera"] = cfg["camera"]
    params = SimulationParams.from_config(sim, Geometry.from_config(cfg), apply["photons"])
    paths = [out / n for n in ("stack.ome.tif", "peakfit.results.xls", "thunderstorm.csv")]
    simulate_acquisition(params, seed + 1000, "applied", *paths, out / "truth.csv", 107.0)


def run_pair(folder: Path, cfg: dict) -> None:
    """The pipeline up to the applied acquisition's spectra and the network's test metrics in
    ``folder`` (finished outputs are reused)."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    cfg["acquisitions"] = "config/acquisitions.tsv"
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = ["name\tstack\tlocalizations\tformat\tpixel_size_nm\trole"]
    for name in cfg["simulation"]["acquisitions"]:
        base = f"results/simulated/{name}"
        rows.append(
            f"{name}\t{base}/stack.ome.tif\t{base}/peakfit.results.xls\tpeakfit\t107\ttrain"
        )
    rows.append("applied\tapplied/stack.ome.tif\tapplied/peakfit.results.xls\tpeakfit\t107\tapply")
    (folder / "config" / "acquisitions.tsv").write_text("\n".join(rows) + "\n")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--directory", str(folder), "--cores", "2"]
    cmd += ["results/applied/spectra.csv", "results/evaluation/test_metrics.json"]
    subprocess.run(cmd, check=True, cwd=folder, stdout=subprocess.DEVNULL)


def matched_errors(folder: Path) -> pd.DataFrame:
    """The applied acquisition's localizations matched to the truth, with each readout's
    error."""
    spectra = pd.read_csv(folder / "results" / "applied" / "spectra.csv")
    truth = pd.read_csv(folder / "applied" / "truth.csv")
    m = match_truth(spectra, truth)
    m = m[m["sc_true_nm"].notna()].copy()
    m["trusted"] = m["sc_mle_flag"].fillna("").eq("")
    m["unanchored"] = m["fit_denoised_centre_nm"] + m["fit_denoised_shift_nm"].fillna(0)
    m["trusted_mle"] = m["sc_mle_nm"].where(m["trusted"])
    for label, col in COLUMNS.items():
        m[f"err {label}"] = m[col] - m["sc_true_nm"]
    return m


def stats(err: pd.Series) -> str:
    e = err.dropna().to_numpy()
    if not len(e):
        return "       -"
    return f"{np.median(np.abs(e)):5.2f}/{np.sqrt(np.mean(e**2)):5.2f} ({len(e)})"


def report(name: str, folder: Path) -> dict:
    """Print the pair's table; return the figures the summary compares."""
    m = matched_errors(folder)
    print(f"\n== {name}: {len(m)} localizations matched, {m['trusted'].mean():.1%} trusted")
    print("per dye: median / mean error (nm)")
    for dye, d in m.groupby("dye_true"):
        cells = [f"{d[f'err {k}'].median():+5.2f}/{d[f'err {k}'].mean():+5.2f}" for k in COLUMNS]
        print(f"  dye {dye}: " + "  ".join(f"{k} {c}" for k, c in zip(COLUMNS, cells, strict=True)))
    print("median |error| / RMSE (n):")
    quarter = pd.qcut(m["signal"], 4, labels=["q1", "q2", "q3", "q4"])
    for label, sel in [("all", m.index == m.index), ("flagged", ~m["trusted"])] + [
        (f"signal {q}", quarter == q) for q in ["q1", "q2", "q3", "q4"]
    ]:
        print(
            f"  {label:10s} " + "  ".join(f"{k} {stats(m.loc[sel, f'err {k}'])}" for k in COLUMNS)
        )
    ratio = (m["err denoised fit"].abs() / m["fit_denoised_err_nm"]).dropna()
    flagged = ratio[~m.loc[ratio.index, "trusted"]]
    cover = {
        k: (float((r <= 1).mean()), float((r <= 2).mean()))
        for k, r in (("all", ratio), ("flagged", flagged))
    }
    print(
        "within 1x / 2x fit_denoised_err_nm: "
        + ", ".join(f"{k} {a:.3f} / {b:.3f}" for k, (a, b) in cover.items())
    )
    test = json.loads((folder / "results" / "evaluation" / "test_metrics.json").read_text())
    bins = test.get("spectral_shift_nm", {}).get("by_box_px") or []
    print(
        "network's shift on its test patches by box position (px: median nm):",
        ", ".join(f"{b['from_px']}-{b['to_px']}: {b['median_nm']:+.2f}" for b in bins),
    )
    fl = m[~m["trusted"]]
    return {
        "median_ratio": np.median(m["err denoised fit"].dropna().abs())
        / np.median(m["err raw fit"].dropna().abs()),
        "flagged_rmse_ratio_raw": _rmse(fl["err denoised fit"]) / _rmse(fl["err raw fit"]),
        "flagged_rmse_ratio_mle": _rmse(fl["err denoised fit"])
        / _rmse(fl["sc_mle_nm"] - fl["sc_true_nm"]),
        "worst_dye_median": float(m.groupby("dye_true")["err denoised fit"].median().abs().max()),
        "worst_dye_mean": float(m.groupby("dye_true")["err denoised fit"].mean().abs().max()),
        "cover_2x": cover["all"][1],
        "cover_2x_flagged": cover["flagged"][1],
    }


def _rmse(err: pd.Series) -> float:
    e = err.dropna().to_numpy()
    return float(np.sqrt(np.mean(e**2))) if len(e) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder of the pairs' runs")
    ap.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    ap.add_argument("--quick", action="store_true", help="short acquisitions and training")
    args = ap.parse_args()
    summary = {}
    for name in args.pairs:
        seed, train, apply = PAIRS[name]
        folder = args.out / name
        cfg = pair_config(seed, train, args.quick)
        cfg["spectra"]["n_dyes"] = len(apply.get("dyes_nm", cfg["simulation"]["dyes_nm"]))
        simulate_applied(folder, cfg, seed, apply)
        run_pair(folder, cfg)
        summary[name] = report(name, folder)
    print("\n== summary (ratios: denoised fit / reference in the same run)")
    print(pd.DataFrame(summary).T.round(3).to_string())


if __name__ == "__main__":
    main()
