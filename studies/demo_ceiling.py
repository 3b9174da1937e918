"""What the photons allow on a finished demo run: the share of an applied acquisition's
localizations whose spectral centre has a bound at the true parameters (jointly with every true
emitter in its group's region, ``benchmarks/overlaps.py``) within ``spectra.max_crlb_nm``,
beside the share its ``spectra.csv`` trusts.

    python studies/demo_ceiling.py [WORKDIR] [--acquisition demo_unseen]

Reads ``WORKDIR/results/{acquisition}/spectra.csv``, ``localizations.csv`` and the simulator's
``truth.csv``; the simulation settings are the run's config (``config/config.yaml`` there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from harness import load_config  # noqa: E402
from overlaps import bounds_at_truth, ceiling, true_emission  # noqa: E402

from srsmlm.boxes import place_boxes  # noqa: E402
from srsmlm.evaluation import match_truth  # noqa: E402
from srsmlm.geometry import Geometry  # noqa: E402
from srsmlm.overlaps import overlap_groups  # noqa: E402
from srsmlm.simulate import SimulationParams  # noqa: E402
from srsmlm.spectra import stage_settings  # noqa: E402


def run_table(wd: Path, name: str, g: Geometry, st) -> pd.DataFrame:
    """The run's spectra.csv with each localization's readout box column and joint group."""
    spectra = pd.read_csv(wd / "results" / name / "spectra.csv")
    locs = pd.read_csv(wd / "results" / name / "localizations.csv", usecols=["pixel_x", "pixel_y"])
    pixel = locs.iloc[spectra["localization_index"].to_numpy()]
    boxes = place_boxes(
        spectra["frame"].to_numpy(), pixel["pixel_x"].to_numpy(), pixel["pixel_y"].to_numpy(), g
    )
    table = spectra.assign(spec_col0=boxes.spec_col0)
    table["group"] = overlap_groups(table, g, st.cfg, st.joint)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", nargs="?", default=".")
    ap.add_argument("--acquisition", default="demo_unseen")
    args = ap.parse_args()
    wd, name = Path(args.workdir), args.acquisition
    cfg = load_config(wd / "config" / "config.yaml")
    g = Geometry.from_config(cfg)
    sim = dict(cfg["simulation"], camera=cfg["camera"])
    params = SimulationParams.from_config(sim, g, cfg["simulation"]["acquisitions"][name])
    st = stage_settings(cfg["spectra"], cfg["camera"], g, threads=2)
    truth = pd.read_csv(wd / "results" / "simulated" / name / "truth.csv")
    table = run_table(wd, name, g, st)
    d = match_truth(table, truth)
    d = d.join(bounds_at_truth(d, true_emission(d, truth), truth, params, st))
    d = d[d["sc_true_nm"].notna()]
    figures, flags = ceiling(d, st.cfg.max_crlb_nm, st.joint.max_group_size)
    print(f"== {name}: {len(d)} localizations matched to the truth")
    print(pd.Series(figures).round(3).to_string())
    print("allowed, not trusted, flags:", flags.round(3).to_dict())


if __name__ == "__main__":
    main()
