"""Helpers to run the real workflow on a tiny simulated acquisition in a temp directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# the Keras backend of the tiny runs: KERAS_BACKEND's, as the tests' own (CI runs two)
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

TINY_SIMULATION = {
    "acquisitions": {"tiny_a": 2500, "tiny_b": 5000},
    "frames": 150,
    "height": 64,
    "width": 400,
    "n_molecules": 40,
    "spot_region_x": [12, 110],
}
TINY_SHEET = [
    ("tiny_a", "peakfit.results.xls", "peakfit", "107", "both"),
    ("tiny_b", "thunderstorm.csv", "thunderstorm", "107", "train"),
]


def tiny_config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["simulation"].update(TINY_SIMULATION)
    cfg["patches"]["background_patches"] = 20
    cfg["training"].update({"backend": BACKEND, "epochs": 4, "batch_size": 32})
    cfg["model"].update({"depth": 2, "base_filters": 4})
    cfg["inference"]["batch_size"] = 256
    return cfg


def make_workdir(path: Path, config: dict | None = None, sheet=TINY_SHEET) -> Path:
    """A working directory with config/ (tiny config + sheet); the workflow stays in REPO."""
    (path / "config").mkdir(parents=True, exist_ok=True)
    write_config(path, config or tiny_config())
    lines = ["name\tstack\tlocalizations\tformat\tpixel_size_nm\trole"]
    for name, table, fmt, px, role in sheet:
        lines.append(
            f"{name}\tresults/simulated/{name}/stack.ome.tif\tresults/simulated/{name}/{table}"
            f"\t{fmt}\t{px}\t{role}"
        )
    (path / "config" / "acquisitions.tsv").write_text("\n".join(lines) + "\n")
    return path


def write_config(path: Path, config: dict) -> None:
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
