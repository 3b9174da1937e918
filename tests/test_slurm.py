"""The tiny pipeline through the SLURM profile on a real (single-node) SLURM.

Runs only where a SLURM controller answers (CI starts one with `.ci/slurm.sh start`); set
SRSMLM_REQUIRE_SLURM=1 to turn a missing SLURM into a failure instead of a skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from .pipeline import REPO, make_workdir, snakemake

pytestmark = pytest.mark.slurm


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "alloc"))


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_pipeline_through_slurm_equals_local_run(tiny_run, tmp_path):
    if not _slurm_up():
        if os.environ.get("SRSMLM_REQUIRE_SLURM"):
            pytest.fail("no SLURM controller answers sinfo (run: bash .ci/slurm.sh start)")
        pytest.skip("no SLURM here (bash .ci/slurm.sh start sets up a single-node one)")
    pytest.importorskip("snakemake_executor_plugin_slurm")
    wd = make_workdir(tmp_path / "slurm")
    proc = snakemake(wd, "--profile", str(REPO / "profiles" / "slurm-test"), check=False)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "sbatch" in log.lower() or "slurm" in log.lower()
    same = [
        "results/tiny_a/localizations.csv",
        "results/tiny_a/clusters.csv",
        "results/tiny_a/patches/raw.tif",
        "results/tiny_a/patches/clean.tif",
        "results/tiny_b/patches/raw.tif",
        "results/dataset/train.npz",
        "results/dataset/test.npz",
    ]
    for rel in same:
        assert _digest(wd / rel) == _digest(tiny_run / rel), rel
    for rel in (
        "results/model/unet.keras",
        "results/tiny_a/spectra.csv",
        "results/report/summary.json",
    ):
        assert (wd / rel).exists(), rel
