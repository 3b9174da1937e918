"""Run the real Snakemake workflow on a tiny simulated acquisition."""

from __future__ import annotations

import pandas as pd
import pytest

from .pipeline import make_workdir, snakemake, tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("pipeline"))
    snakemake(wd, "--cores", "2")
    return wd


def test_pipeline_outputs(tiny_run):
    wd = tiny_run
    for name in ("tiny_a", "tiny_b"):
        assert (wd / f"results/simulated/{name}/stack.ome.tif").exists()
        loc = pd.read_csv(wd / f"results/{name}/localizations.csv")
        clusters = pd.read_csv(wd / f"results/{name}/clusters.csv")
        assert len(loc) > len(clusters) > 0
        assert {"frame", "x", "y", "signal", "pixel_x", "pixel_y", "cluster"} <= set(
            clusters.columns
        )
        assert (wd / f"results/{name}/patches/raw.tif").exists()
        assert (wd / f"benchmarks/{name}/extract_patches.tsv").exists()
        assert (wd / f"logs/{name}/filter_localizations.log").read_text().strip()
    assert (wd / "results/dataset/train.npz").exists()


def test_nothing_to_do_after_a_run(tiny_run):
    proc = snakemake(tiny_run, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_duplicate_acquisition_names_fail_with_one_line(tmp_path):
    sheet = [("tiny_a", "peakfit.results.xls", "peakfit", "107", "both")] * 2
    wd = make_workdir(tmp_path, sheet=sheet)
    proc = snakemake(wd, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "duplicate acquisition name(s): tiny_a" in proc.stdout + proc.stderr


def test_invalid_config_names_the_key(tmp_path):
    cfg = tiny_config()
    cfg["clustering"]["min_samples"] = -1
    wd = make_workdir(tmp_path, config=cfg)
    proc = snakemake(wd, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "['clustering']['min_samples']" in proc.stdout + proc.stderr


def test_filter_removing_everything_fails_cleanly(tmp_path):
    cfg = tiny_config()
    cfg["filter"]["min_signal"] = 1e9
    wd = make_workdir(
        tmp_path, config=cfg, sheet=[("tiny_a", "peakfit.results.xls", "peakfit", "107", "both")]
    )
    proc = snakemake(wd, "--cores", "1", "results/tiny_a/localizations.csv", check=False)
    assert proc.returncode != 0
    assert "no localization left after filtering" in proc.stdout + proc.stderr
    assert not (wd / "results/tiny_a/localizations.csv").exists()
