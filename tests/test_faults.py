"""Faults through the real workflow: a killed pipeline resumes to the same results; corrupt
inputs stop it with one clear line and no outputs."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .pipeline import REPO, make_workdir, snakemake

pytestmark = pytest.mark.slow


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start(workdir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", "2", *args]
    with open(workdir / "snakemake.out", "a") as out:
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed with all its jobs
        )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL the whole pipeline (as a power cut or scancel would) once ``ready()`` holds."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the pipeline ended before it could be killed (rc {proc.returncode})"
            )
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting for the stage to start")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _weights(path: Path) -> list[np.ndarray]:
    keras = pytest.importorskip("keras")
    import srsmlm.model  # noqa: F401  (registers the model's custom layers)

    return keras.models.load_model(path, compile=False).get_weights()


def test_killed_during_patches_and_training_resumes_to_the_same_results(tiny_run, tmp_path):
    wd = make_workdir(tmp_path / "killed")
    # 1. kill during patch extraction
    log = wd / "logs" / "tiny_b" / "extract_patches.log"
    _kill_when(_start(wd), lambda: log.exists() and log.stat().st_size > 0)
    assert not (wd / "results/dataset/train.npz").exists()
    snakemake(wd, "--unlock")  # a killed Snakemake leaves its lock behind
    # 2. resume, then kill during training, after its first epoch was backed up
    backup = wd / "results/model/checkpoint/backup/training_metadata.json"
    _kill_when(_start(wd, "--rerun-incomplete"), backup.exists)
    assert not (wd / "results/model/unet.keras").exists()
    snakemake(wd, "--unlock")
    # 3. resume to the end
    snakemake(wd, "--cores", "2", "--rerun-incomplete")
    train_log = (wd / "logs/train_unet.log").read_text()
    assert "resuming interrupted training" in train_log
    for rel in (
        "results/tiny_a/clusters.csv",
        "results/tiny_a/patches/raw.tif",
        "results/tiny_a/patches/clean.tif",
        "results/tiny_b/patches/raw.tif",
        "results/tiny_b/patches/clean.tif",
        "results/dataset/train.npz",
        "results/dataset/test.npz",
        "results/tiny_a/denoised/denoised.tif",
        "results/tiny_a/spectra.csv",
    ):
        assert _digest(wd / rel) == _digest(tiny_run / rel), rel
    for a, b in zip(
        _weights(wd / "results/model/unet.keras"),
        _weights(tiny_run / "results/model/unet.keras"),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    proc = snakemake(wd, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.fixture
def user_data(tiny_acquisition, tmp_path) -> Path:
    """A working directory whose sheet points at 'user' files under data/."""
    wd = make_workdir(tmp_path / "user", sheet=[])
    data = wd / "data"
    data.mkdir()
    shutil.copy(tiny_acquisition["stack"], data / "stack.ome.tif")
    shutil.copy(tiny_acquisition["peakfit"], data / "fit.results.xls")
    (wd / "config" / "acquisitions.tsv").write_text(
        "name\tstack\tlocalizations\tformat\tpixel_size_nm\trole\n"
        "mine\tdata/stack.ome.tif\tdata/fit.results.xls\tpeakfit\t107\tboth\n"
    )
    return wd


def _fails_with(wd: Path, target: str, *needles: str) -> None:
    proc = snakemake(wd, "--cores", "1", target, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    for needle in needles:
        assert needle in out, out[-3000:]
    assert not (wd / target).exists()


def test_truncated_stack_stops_patch_extraction_with_one_line(user_data):
    stack = user_data / "data" / "stack.ome.tif"
    with open(stack, "r+b") as fh:
        fh.truncate(stack.stat().st_size // 2)
    _fails_with(user_data, "results/mine/patches/raw.tif", "data/stack.ome.tif", "truncated")
    assert not (user_data / "results/mine/patches/clean.tif").exists()


def test_corrupt_stack_stops_patch_extraction_with_one_line(user_data):
    stack = user_data / "data" / "stack.ome.tif"
    stack.write_bytes(b"not a tiff at all" * 100)
    _fails_with(user_data, "results/mine/patches/raw.tif", "data/stack.ome.tif", "TIFF")


def test_table_truncated_mid_line_stops_filtering_with_one_line(user_data):
    table = user_data / "data" / "fit.results.xls"
    text = table.read_text()
    table.write_text(text[: len(text) - 40])  # cut inside the last row
    _fails_with(
        user_data, "results/mine/localizations.csv", "data/fit.results.xls", "file looks truncated"
    )
