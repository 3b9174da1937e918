import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from srsmlm.io import read_patches
from srsmlm.plots import (
    REPORT_FIGURES,
    _evaluation_rows,
    _mle_caption,
    choose_examples,
    flagged_examples,
    flagged_fractions,
    load_spectra,
    mle_efficiency,
    mle_error_vs_crlb,
    mle_reasons,
    molecules_histogram,
    render_arrays,
    rendering,
    report_stage,
    sc_histograms,
)

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = REPORT_FIGURES
DYES_NM = np.array([585.0, 610.0, 635.0])


def _is_png(path: Path) -> bool:
    return Path(path).read_bytes()[:8] == PNG


def test_render_arrays_keeps_mass_and_colours_by_centroid():
    x = np.array([10.5, 10.5, 20.5, 30.0])
    y = np.array([5.5, 5.5, 15.5, 8.0])
    sc = np.array([600.0, 600.0, 640.0, np.nan])  # the last has no centroid: density only
    density, mean_sc, extent = render_arrays(x, y, sc, zoom=4, sigma_px=0.5)
    np.testing.assert_allclose(density.sum(), 4, rtol=1e-3)  # the blur keeps every localization
    assert extent == (9.0, 32.25, 17.25, 4.0)  # 3 sigma of margin, 1/zoom px bins
    row, col = int((5.5 - 4) * 4), int((10.5 - 9) * 4)
    assert density[row, col] == density.max()  # two localizations stack there
    np.testing.assert_allclose(mean_sc[row, col], 600)
    np.testing.assert_allclose(mean_sc[int((15.5 - 4) * 4), int((20.5 - 9) * 4)], 640)
    assert np.isnan(mean_sc[int((8 - 4) * 4), int((30 - 9) * 4)])  # no centroid there


def test_rendering_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "x": rng.uniform(0, 50, 200),
            "y": rng.uniform(0, 30, 200),
            "sc_denoised_nm": rng.normal(610, 20, 200),
        }
    )
    rendering(table, tmp_path / "r.png", zoom=4, sigma_px=0.3)
    assert _is_png(tmp_path / "r.png")
    # a wide field lowers the zoom instead of allocating a huge grid
    rendering(table.assign(x=table["x"] * 400), tmp_path / "wide.png", zoom=8, sigma_px=0.5)
    assert _is_png(tmp_path / "wide.png")


# --- synthetic tables --------------------------------------------------------------------------


def synthetic_spectra(n: int, rng: np.random.Generator, frame0: int = 0) -> pd.DataFrame:
    """A spectra.csv-like table (every existing and MLE column) with its true dyes/centres:
    5% dim, 2% truncated, 1% bad_fit, 1% not_converged (no centre); 3% false detections."""
    dye = rng.integers(0, 3, n)
    sc_true = DYES_NM[dye] + rng.normal(0, 3, n)
    signal = rng.lognormal(np.log(3000), 0.7, n)
    crlb = 120 / np.sqrt(signal) + 0.5
    flag = rng.choice(
        np.array(["", "dim", "truncated", "bad_fit", "not_converged"], dtype=object),
        n,
        p=[0.91, 0.05, 0.02, 0.01, 0.01],
    )
    sc_mle = sc_true + 1.1 * crlb * rng.standard_normal(n)
    sc_mle[flag == "not_converged"] = np.nan
    noisy = sc_true + rng.normal(0, 12, n)
    cluster = np.where(rng.random(n) < 0.7, rng.integers(0, max(n // 14, 1), n), -1)
    df = pd.DataFrame(
        {
            "localization_index": np.arange(n),
            "frame": frame0 + np.sort(rng.integers(0, max(n // 20, 1), n)),
            "x": rng.uniform(12, 218, n),
            "y": rng.uniform(12, 248, n),
            "signal": signal,
            "cluster": cluster,
            "sc_raw_nm": noisy,
            "fit_raw_centre_nm": noisy + 1,
            "fit_raw_width_nm": 18.0,
            "fit_raw_amplitude": 0.01,
            "sum_raw": signal / 6e4,
            "sc_denoised_nm": sc_true + rng.normal(0, 6, n),
            "fit_denoised_centre_nm": sc_true + rng.normal(0, 5, n),
            "fit_denoised_width_nm": 18.0,
            "fit_denoised_amplitude": 0.02,
            "sum_denoised": signal / 6e4,
            "photons_proxy_adu": signal,
            "sc_fused_nm": np.where(cluster >= 0, sc_true + rng.normal(0, 4, n), np.nan),
            "dye_raw": dye,
            "dye_raw_probability": 0.8,
            "dye_denoised": dye,
            "dye_denoised_probability": 0.9,
            "sc_mle_nm": sc_mle,
            "sc_mle_crlb_nm": crlb,
            "sc_mle_width_nm": 18.0,
            "spectral_photons": signal / 2,
            "background_photons": 30.0,
            "sc_mle_flag": flag,
        }
    )
    return df.assign(_dye_true=dye, _sc_true=sc_true)


def truth_of(spectra: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The simulator's truth for ``spectra``: 3% of the localizations are false detections
    (not in the truth), plus columns the report does not read."""
    real = rng.random(len(spectra)) >= 0.03
    s = spectra[real]
    return pd.DataFrame(
        {
            "emission": np.arange(len(s)),
            "frame": s["frame"].to_numpy(),
            "x": s["x"].to_numpy(),
            "y": s["y"].to_numpy(),
            "photons": s["signal"].to_numpy(),
            "dye": s["_dye_true"].to_numpy(),
            "sc_true_nm": s["_sc_true"].to_numpy(),
            "loc_x": s["x"].to_numpy(),
            "loc_y": s["y"].to_numpy(),
            "detected": True,
        }
    )


def synthetic_molecules(n: int, rng: np.random.Generator) -> pd.DataFrame:
    dye = rng.integers(-1, 3, n)
    sc = np.where(dye >= 0, DYES_NM[np.maximum(dye, 0)], 600) + rng.normal(0, 3, n)
    sc[rng.random(n) < 0.05] = np.nan  # no trusted frame
    first = rng.integers(0, 1000, n)
    n_frames = rng.integers(9, 30, n)
    return pd.DataFrame(
        {
            "cluster": np.arange(n),
            "n_frames": n_frames,
            "n_used": n_frames - 1,
            "first_frame": first,
            "last_frame": first + n_frames - 1,
            "x": rng.uniform(12, 218, n),
            "y": rng.uniform(12, 248, n),
            "sc_nm": sc,
            "sc_err_nm": rng.uniform(0.5, 3, n),
            "consistency_p": rng.random(n),
            "dye": dye,
            "dye_probability": rng.random(n),
        }
    )


def synthetic_metrics() -> dict:
    stats = {
        "n": 1000,
        "valid_fraction": 0.99,
        "bias_nm": 0.3,
        "rmse_nm": 4.0,
        "median_abs_error_nm": 2.5,
        "within_tolerance": 0.8,
        "bias_by_true_dye_nm": {"0": 0.1, "1": 0.2, "2": -0.3},
    }
    names = ["raw_centroid", "raw_gaussian_fit", "sf_fused_centroid", "denoised_centroid"]
    names += ["denoised_gaussian_fit", "raw_mle", "raw_mle_trusted", "molecule"]
    by_bin = [
        {
            "signal_bin": b,
            "signal_min": lo,
            "signal_max": hi,
            "n_used": 250,
            "crlb_rmse_nm": 4.0 / (b + 1),
            "observed_rmse_nm": 4.4 / (b + 1),
            "efficiency": 0.91,
        }
        for b, (lo, hi) in enumerate([(300, 1500), (1500, 3000), (3000, 6000), (6000, 40000)])
    ]
    flagged = {"any": 0.09, "not_converged": 0.01, "truncated": 0.02, "bad_fit": 0.01, "dim": 0.05}
    return {
        "matched_localizations": 1000,
        "tolerance_nm": 5,
        "sc_error": {k: dict(stats) for k in names},
        "dye_accuracy": {"raw": 0.9, "denoised": 0.95},
        "mle": {
            "flagged_fraction": flagged,
            "coverage_1x": 0.66,
            "coverage_2x": 0.94,
            "efficiency": 0.91,
            "by_signal_bin": by_bin,
        },
    }


def write_patches(path: Path, n: int, sparse: bool = False) -> None:
    """A denoised/raw.tif of ``n`` 16 x 64 float32 patches, page i filled with i (sparse: a
    memory-mapped file with only a few pages written, for 10^6 patches)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(photometric="minisblack", metadata={"axes": "QYX"})
    if sparse:
        stack = tifffile.memmap(path, shape=(n, 16, 64), dtype=np.float32, **meta)
        stack[::997] = np.arange(0, n, 997, dtype=np.float32)[:, None, None]
        stack.flush()
        del stack
        return
    stack = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 16, 64))
    tifffile.imwrite(path, np.ascontiguousarray(stack), contiguous=True, **meta)


def write_report_inputs(
    root: Path, n_per_acquisition: int, truth: bool, seed: int = 0, sparse: bool = False
) -> dict:
    """Every input of report_stage for two acquisitions ``a`` and ``b``; returns its kwargs."""
    rng = np.random.default_rng(seed)
    acqs = ("a", "b")
    kw: dict = {"spectra_csvs": [], "precision_csvs": [], "raw_tifs": [], "molecule_csvs": []}
    truths = {}
    for k, acq in enumerate(acqs):
        d = root / "results" / acq
        (d / "denoised").mkdir(parents=True)
        sp = synthetic_spectra(n_per_acquisition, rng, frame0=k * 10**6)
        sp.drop(columns=["_dye_true", "_sc_true"]).to_csv(
            d / "spectra.csv", index=False, float_format="%.6g"
        )
        if truth:
            truths[acq] = root / "truth" / f"{acq}.csv"
            truths[acq].parent.mkdir(exist_ok=True)
            truth_of(sp, rng).to_csv(truths[acq], index=False, float_format="%.6g")
        pd.DataFrame(
            {
                "signal_bin": [0, 1],
                "signal_min": [300.0, 3000.0],
                "signal_max": [3000.0, 40000.0],
                "runs": [10, 10],
                "sc_raw_std_nm": [12.0, 8.0],
                "sc_denoised_std_nm": [6.0, 4.0],
            }
        ).to_csv(d / "spectral_precision.csv", index=False)
        synthetic_molecules(max(n_per_acquisition // 14, 1), rng).to_csv(
            d / "molecules.csv", index=False
        )
        write_patches(d / "denoised" / "raw.tif", n_per_acquisition, sparse)
        kw["spectra_csvs"].append(d / "spectra.csv")
        kw["precision_csvs"].append(d / "spectral_precision.csv")
        kw["raw_tifs"].append(d / "denoised" / "raw.tif")
        kw["molecule_csvs"].append(d / "molecules.csv")
    patches = rng.random((12, 16, 64)).astype(np.float32)
    np.savez(root / "predictions.npz", X=patches, Y=patches, P=patches)
    pd.DataFrame({"split": ["test"] * 12, "kind": ["signal"] * 8 + ["background"] * 4}).to_csv(
        root / "index.csv", index=False
    )
    pd.DataFrame(
        {"epoch": [0, 1, 2], "loss": [0.1, 0.05, 0.04], "val_loss": [0.1, 0.06, 0.05]}
    ).to_csv(root / "history.csv", index=False)
    (root / "test_metrics.json").write_text(json.dumps({"mse": 0.01}))
    metrics = None
    if truth:
        metrics = root / "metrics.json"
        metrics.write_text(json.dumps(synthetic_metrics()))
    report = root / "results" / "report"
    return kw | {
        "predictions_npz": root / "predictions.npz",
        "index_csv": root / "index.csv",
        "history_csv": root / "history.csv",
        "test_metrics_json": root / "test_metrics.json",
        "truth_csvs": truths,
        "metrics_json": metrics,
        "out": {k: report / f"{k}.png" for k in FIGURES},
        "summary_json": report / "summary.json",
        "render_zoom": 4,
        "render_sigma_px": 0.5,
        "seed": 42,
        "signal_bins": 4,
    }


# --- MLE figures ---------------------------------------------------------------------------------


def test_mle_reasons_and_flagged_fractions():
    table = pd.DataFrame(
        {
            "sc_mle_nm": [600.0, 601.0, np.nan, 602.0, np.nan, 603.0],
            "sc_mle_flag": [np.nan, "", "not_converged", "dim", np.nan, "odd"],
        }
    )
    reasons = mle_reasons(table)
    assert list(reasons) == ["trusted", "trusted", "not_converged", "dim", "no_estimate", "odd"]
    frac = flagged_fractions(reasons)
    assert frac["any"] == pytest.approx(3 / 6)  # not_converged, dim, odd
    assert frac["dim"] == pytest.approx(1 / 6) and frac["truncated"] == 0.0
    assert frac["no_estimate"] == pytest.approx(1 / 6) and frac["odd"] == pytest.approx(1 / 6)
    assert mle_reasons(table.drop(columns="sc_mle_nm")) is None  # no MLE readout at all
    assert list(mle_reasons(table.drop(columns="sc_mle_flag")))[:3] == [
        "trusted",
        "trusted",
        "no_estimate",
    ]


def test_choose_examples_is_seeded_and_per_reason():
    reasons = pd.Categorical(["trusted"] * 50 + ["dim"] * 3 + ["bad_fit"] * 10)
    a = choose_examples(reasons, 4, seed=7)
    assert a.keys() == {"trusted", "not_converged", "truncated", "bad_fit", "dim"}
    assert len(a["trusted"]) == 4 and len(a["dim"]) == 3 and len(a["truncated"]) == 0
    assert all(np.asarray(reasons)[a["bad_fit"]] == "bad_fit")
    b = choose_examples(reasons, 4, seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the seed fixes the choice
    c = choose_examples(reasons, 4, seed=8)
    assert not np.array_equal(a["trusted"], c["trusted"])


def test_read_patches_reads_only_the_asked_pages(tmp_path, monkeypatch):
    write_patches(tmp_path / "raw.tif", 300)
    with monkeypatch.context() as m:  # contiguous: a memory map, never the whole file
        m.setattr(tifffile, "imread", lambda *a, **k: pytest.fail("read the whole file"))
        got = read_patches(tmp_path / "raw.tif", [3, 250, 17])
    assert got.shape == (3, 16, 64)
    np.testing.assert_array_equal(got[:, 0, 0], [3, 250, 17])
    stack = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None], (20, 16, 64))
    tifffile.imwrite(tmp_path / "z.tif", stack, compression="zlib")  # cannot be mapped
    np.testing.assert_array_equal(read_patches(tmp_path / "z.tif", [2, 9])[:, 5, 5], [2, 9])
    with pytest.raises(IndexError):
        read_patches(tmp_path / "raw.tif", [300])


def test_mle_figures_with_and_without_truth(tmp_path):
    rng = np.random.default_rng(3)
    spectra = synthetic_spectra(5000, rng)
    with_truth = spectra.assign(sc_true_nm=spectra["_sc_true"], dye_true=spectra["_dye_true"])
    mle_error_vs_crlb(with_truth, tmp_path / "err_truth.png")
    mle_error_vs_crlb(spectra, tmp_path / "err.png")
    mle_efficiency(with_truth, synthetic_metrics(), tmp_path / "eff_truth.png")
    mle_efficiency(spectra, None, tmp_path / "eff.png", n_bins=5)
    for name in ("err_truth", "err", "eff_truth", "eff"):
        assert _is_png(tmp_path / f"{name}.png"), name


def test_flagged_examples_montage(tmp_path):
    rng = np.random.default_rng(4)
    write_patches(tmp_path / "a" / "raw.tif", 400)
    write_patches(tmp_path / "b" / "raw.tif", 100)
    spectra = pd.concat(
        [
            synthetic_spectra(400, rng).assign(acquisition="a", page=np.arange(400)),
            synthetic_spectra(100, rng).assign(acquisition="b", page=np.arange(100)),
        ],
        ignore_index=True,
    )
    spectra.loc[spectra["sc_mle_flag"] == "bad_fit", "sc_mle_flag"] = "dim"  # no bad_fit example
    tifs = {"a": tmp_path / "a" / "raw.tif", "b": tmp_path / "b" / "raw.tif"}
    flagged_examples(spectra, tifs, tmp_path / "f.png", seed=1)
    assert _is_png(tmp_path / "f.png")
    # a missing TIFF or no MLE columns: a note, not a failure
    flagged_examples(spectra, {"a": tifs["a"]}, tmp_path / "missing.png", seed=1)
    flagged_examples(spectra.drop(columns="sc_mle_nm"), tifs, tmp_path / "none.png", seed=1)
    assert _is_png(tmp_path / "missing.png") and _is_png(tmp_path / "none.png")


def test_molecules_histogram(tmp_path):
    molecules_histogram(synthetic_molecules(500, np.random.default_rng(5)), tmp_path / "m.png")
    assert _is_png(tmp_path / "m.png")


def test_figures_draw_a_note_on_missing_or_empty_data(tmp_path):
    spectra = synthetic_spectra(50, np.random.default_rng(6))
    nan = spectra.assign(sc_mle_nm=np.nan, sc_mle_crlb_nm=np.nan, sc_raw_nm=np.nan)
    nan = nan.assign(sc_denoised_nm=np.nan, sc_mle_flag="")
    empty = spectra.iloc[:0].assign(acquisition="a", page=0)
    for name, table in (("nan", nan), ("empty", empty), ("none", spectra[["x", "y", "signal"]])):
        mle_error_vs_crlb(table, tmp_path / f"err_{name}.png")
        mle_efficiency(table, {"mle": {"by_signal_bin": []}}, tmp_path / f"eff_{name}.png")
        sc_histograms(table, tmp_path / f"hist_{name}.png", "dye_denoised")
        rendering(table, tmp_path / f"render_{name}.png", zoom=4, sigma_px=0.5)
    flagged_examples(empty, {}, tmp_path / "flagged_empty.png", seed=0)
    molecules_histogram(pd.DataFrame(), tmp_path / "mol_empty.png")
    molecules_histogram(pd.DataFrame({"sc_nm": [np.nan], "dye": [1]}), tmp_path / "mol_nan.png")
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 15 and all(_is_png(p) for p in pngs)


def test_evaluation_rows_put_mle_after_the_classical_estimators():
    m = synthetic_metrics()
    m["sc_error"]["raw_mle_trusted"]["rmse_nm"] = float("nan")
    rows = _evaluation_rows(dict(reversed(list(m["sc_error"].items()))))
    names = [r[0] for r in rows]
    assert names[0] == "raw_centroid" and names[-3:] == ["raw_mle", "raw_mle_trusted", "molecule"]
    assert rows[-2][4] == "-" and rows[-1][1] == "1000" and rows[-1][2] == "99.0%"
    caption = _mle_caption(m["mle"])
    assert "flagged 9.0%" in caption and "dim 5.0%" in caption and "efficiency 0.91" in caption
    assert _mle_caption(None) == ""


# --- the whole report stage ------------------------------------------------------------------


@pytest.mark.parametrize("truth", [True, False])
def test_report_stage_writes_every_figure_and_the_summary(tmp_path, truth):
    kw = write_report_inputs(tmp_path, 3000, truth)
    summary = report_stage(**kw)
    for key, path in kw["out"].items():
        assert _is_png(path), key
    on_disk = json.loads(Path(kw["summary_json"]).read_text())
    assert on_disk["localizations_with_spectra"] == 6000
    assert set(on_disk["mle_flagged_fraction"]) >= {"any", "dim", "truncated", "bad_fit"}
    assert 0.05 < on_disk["mle_flagged_fraction"]["any"] < 0.15
    assert on_disk["molecules"]["n"] == 2 * (3000 // 14)
    assert ("mle" in on_disk) == truth and ("evaluation" in on_disk) == truth
    assert summary["mle_median_crlb_nm"] > 0


def test_load_spectra_reads_only_the_report_columns_and_keeps_pages(tmp_path):
    kw = write_report_inputs(tmp_path, 500, truth=True)
    spectra = load_spectra(kw["spectra_csvs"], kw["truth_csvs"])
    assert "fit_raw_width_nm" not in spectra and "sc_mle_flag" in spectra
    assert list(spectra.groupby("acquisition", observed=True)["page"].max()) == [499, 499]
    matched = spectra["sc_true_nm"].notna().mean()
    assert 0.9 < matched < 1  # 3% false detections


@pytest.mark.slow
def test_report_stage_at_a_million_localizations(tmp_path, capsys, record_property):
    """Issue 15: the whole report on 10^6 localizations (two acquisitions of 5 x 10^5, with
    truth) in under a minute, every figure written."""
    kw = write_report_inputs(tmp_path, 500_000, truth=True, sparse=True)
    t0 = time.perf_counter()
    summary = report_stage(**kw)
    seconds = time.perf_counter() - t0
    record_property("report_stage_s", seconds)
    with capsys.disabled():
        print(f"\nreport_stage at 10^6 localizations: {seconds:.1f} s")
    assert summary["localizations_with_spectra"] == 1_000_000
    for key, path in kw["out"].items():
        assert _is_png(path), key
    assert seconds < 60


def test_rendering_colours_only_by_trusted_maximum_likelihood_centres():
    from srsmlm.plots import trusted_mle

    table = pd.DataFrame(
        {
            "sc_mle_nm": [600.0, 610.0, np.nan, 630.0],
            "sc_mle_flag": ["", "crowded", "", np.nan],
            "sc_denoised_nm": [1.0, 2.0, 3.0, 4.0],
        }
    )
    np.testing.assert_array_equal(trusted_mle(table), [600.0, np.nan, np.nan, 630.0])
    assert np.isnan(trusted_mle(table[["sc_denoised_nm"]])).all()  # no MLE readout: no colour
