"""Run the real Snakemake workflow on a tiny simulated acquisition."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from srsmlm.mle import FLAGS
from srsmlm.readout import MLE_COLUMNS

from .pipeline import BACKEND, make_workdir, snakemake, tiny_config, write_config

# The best validation loss (MSE) the tiny run's 4 epochs must reach under every backend: below
# predicting zeros (0.033 on its patches); TensorFlow and JAX reach 0.022-0.024 on 2 CPU cores.
TINY_VAL_LOSS_MAX = 0.03
OTHER_BACKEND = "torch" if BACKEND != "torch" else "jax"


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
    for out in (
        "model/unet.keras",
        "model/model.json",
        "model/history.csv",
        "evaluation/test_metrics.json",
        "tiny_a/denoised/denoised.tif",
        "tiny_a/spectra.csv",
        "tiny_a/molecules.csv",
        "evaluation/metrics.json",
        "report/summary.json",
        "report/montage.png",
    ):
        assert (wd / "results" / out).exists(), out
    # inference: one patch per filtered localization (minus those listed as skipped), same order
    loc = pd.read_csv(wd / "results/tiny_a/localizations.csv")
    den = pd.read_csv(wd / "results/tiny_a/denoised/patches.csv")
    skipped = pd.read_csv(wd / "results/tiny_a/denoised/skipped.csv")
    assert len(den) + len(skipped) == len(loc)
    assert den["localization_index"].is_monotonic_increasing
    spectra = pd.read_csv(wd / "results/tiny_a/spectra.csv")
    assert {
        "frame",
        "x",
        "y",
        "sc_raw_nm",
        "sc_denoised_nm",
        "fit_raw_centre_nm",
        "dye",
        "dye_probability",
        *MLE_COLUMNS,
    } <= set(spectra.columns)
    assert not {"sc_fused_nm", "dye_raw", "dye_denoised", "dye_mle"} & set(spectra.columns)
    # the denoised fit is anchored on the trusted values or, with too few of them (the tiny
    # network's fits mostly fail the residual rule), left as it is with no error, and logged
    denoised = spectra["fit_denoised_centre_nm"].notna()
    anchored = "not anchored" not in (wd / "logs/tiny_a/spectra.log").read_text()
    for col in ("fit_denoised_err_nm", "fit_denoised_shift_nm"):
        given = spectra[col].notna()
        assert (given == denoised).all() if anchored else not given.any()
    assert len(spectra) == len(den)
    assert set(spectra["sc_mle_flag"].dropna()) <= set(FLAGS)
    trusted = spectra[spectra["sc_mle_flag"].isna()]
    max_crlb = tiny_config()["spectra"]["max_crlb_nm"]
    assert len(trusted) and trusted["sc_mle_crlb_nm"].between(0, max_crlb).all()
    molecules = pd.read_csv(wd / "results/tiny_a/molecules.csv")
    clusters = pd.read_csv(wd / "results/tiny_a/clusters.csv")
    runs = set(clusters.loc[clusters["cluster"] >= 0, "cluster"])
    assert set(molecules["cluster"]) == runs & set(spectra["cluster"])
    metrics = json.loads((wd / "results/evaluation/metrics.json").read_text())
    assert {"raw_mle", "raw_mle_trusted", "molecule"} <= set(metrics["sc_error"])
    assert 0 < metrics["mle"]["coverage_2x"] <= 1
    assert set(metrics["dye_accuracy"]) == {"localization", "molecule"}
    sizes = [row["group_size"] for row in metrics["mle"]["by_group_size"]]
    assert sizes == ["1", "2", "3", ">=4"] and (spectra["group_size"] >= 1).all()
    assert spectra["extra_emitters"].dtype.kind == "i" and (spectra["extra_emitters"] >= 0).all()
    assert "tested for an unlocalized neighbour" in (wd / "logs/tiny_a/spectra.log").read_text()
    assert not (wd / "results/tiny_b/spectra.csv").exists()  # role train only


def test_training_reaches_the_validation_loss_on_its_backend(tiny_run):
    meta = json.loads((tiny_run / "results/model/model.json").read_text())
    assert meta["backend"] == BACKEND
    history = pd.read_csv(tiny_run / "results/model/history.csv")
    assert history["val_loss"].min() == pytest.approx(meta["result"]["best_val_loss"])
    assert meta["result"]["best_val_loss"] <= TINY_VAL_LOSS_MAX
    assert f"Keras backend {BACKEND}" in (tiny_run / "logs/train_unet.log").read_text()


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


def _planned_jobs(workdir) -> dict[str, int]:
    """Rules a dry run would execute, with their job counts."""
    proc = snakemake(workdir, "-n", "--cores", "1")
    out = proc.stdout + proc.stderr
    jobs: dict[str, int] = {}
    if "Job stats:" in out:
        table = out.split("Job stats:")[1].splitlines()[3:]
        for line in table:
            parts = line.split()
            if len(parts) != 2 or parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.mark.parametrize(
    "section, key, value, expected, not_expected",
    [
        (
            "clustering",
            "min_run_length",
            10,
            {"cluster_localizations", "extract_patches", "build_dataset", "train_unet", "spectra"},
            {"simulate", "filter_localizations"},
        ),
        (
            "training",
            "learning_rate",
            0.002,
            {"train_unet", "evaluate_test", "denoise_acquisition", "spectra", "plot_report"},
            {
                "simulate",
                "filter_localizations",
                "cluster_localizations",
                "extract_patches",
                "build_dataset",
            },
        ),
        (  # the other framework: training and everything after it
            "training",
            "backend",
            OTHER_BACKEND,
            {"train_unet", "evaluate_test", "denoise_acquisition", "spectra", "plot_report"},
            {"simulate", "extract_patches", "build_dataset"},
        ),
        (
            "spectra",
            "max_denoised_residual",
            0.1,
            {"spectra", "evaluate", "plot_report"},
            {"train_unet", "denoise_acquisition", "extract_patches"},
        ),
        (  # the denoise stage fits the shifted predictions' profiles
            "spectra",
            "profile_rows",
            6,
            {"denoise_acquisition", "spectra", "evaluate", "plot_report"},
            {"train_unet", "extract_patches", "build_dataset"},
        ),
        (
            "inference",
            "shifts_px",
            [0],
            {"denoise_acquisition", "spectra", "evaluate", "plot_report"},
            {"train_unet", "extract_patches", "evaluate_test"},
        ),
        (
            "patches",
            "target",
            "sf_fusion",
            {"extract_patches", "build_dataset", "train_unet", "spectra", "plot_report"},
            {"simulate", "filter_localizations", "cluster_localizations"},
        ),
        (
            "spectra",
            "denoised_anchor_bins",
            6,
            {"spectra", "evaluate", "plot_report"},
            {"train_unet", "denoise_acquisition", "extract_patches"},
        ),
        (  # the joint fit of overlapping spectra also reads the model targets' frames
            "spectra",
            "max_group_size",
            2,
            {"extract_patches", "train_unet", "spectra", "evaluate", "plot_report"},
            {"simulate", "filter_localizations", "cluster_localizations"},
        ),
        (  # the model targets use the readout's fit settings
            "spectra",
            "min_fit_p",
            0.01,
            {"extract_patches", "train_unet", "spectra", "evaluate"},
            {"simulate", "filter_localizations", "cluster_localizations"},
        ),
    ],
)
def test_param_change_reruns_only_affected_stages(
    tiny_run, section, key, value, expected, not_expected
):
    assert _planned_jobs(tiny_run) == {}
    cfg = tiny_config()
    cfg[section][key] = value
    write_config(tiny_run, cfg)
    try:
        jobs = set(_planned_jobs(tiny_run))
    finally:
        write_config(tiny_run, tiny_config())
    assert expected <= jobs, jobs
    assert not (not_expected & jobs), jobs
