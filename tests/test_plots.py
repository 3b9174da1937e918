import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from matplotlib.figure import Figure
from matplotlib.text import Text

from srsmlm.io import read_patches
from srsmlm.mle import FLAGS
from srsmlm.plots import (
    ESTIMATOR_LABELS,
    REPORT_FIGURES,
    choose_examples,
    evaluation_figure,
    evaluation_rows,
    example_title,
    flagged_examples,
    flagged_fractions,
    load_molecules,
    load_spectra,
    loss_curves,
    mle_efficiency,
    mle_error_vs_crlb,
    mle_reasons,
    molecule_error_by_signal,
    molecules_histogram,
    montage,
    precision_figure,
    reason_order,
    render_arrays,
    rendering,
    report_stage,
    sc_histograms,
    trusted_mle,
)
from srsmlm.plots.evaluation import dye_caption, mle_caption

PNG = b"\x89PNG\r\n\x1a\n"
DYES_NM = np.array([585.0, 610.0, 635.0])
#: flags of the synthetic spectra and their shares (crowded the largest, as on the demo)
SYNTHETIC_FLAGS = {"": 0.85, "crowded": 0.06, "dim": 0.04, "truncated": 0.02}
SYNTHETIC_FLAGS |= {"bad_fit": 0.02, "not_converged": 0.01}


def _is_png(path: Path) -> bool:
    return Path(path).read_bytes()[:8] == PNG


def texts(fig: Figure) -> list[str]:
    """Every non-empty text a figure shows (titles, labels, ticks, legends, notes)."""
    return [t.get_text().strip() for t in fig.findobj(Text) if t.get_text().strip()]


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def bar_widths(ax) -> np.ndarray:
    return np.array([p.get_width() for p in ax.patches])


# --- synthetic tables --------------------------------------------------------------------------


def synthetic_spectra(n: int, rng: np.random.Generator, frame0: int = 0) -> pd.DataFrame:
    """A spectra.csv-like table with its true dyes/centres (``_dye_true``, ``_sc_true``):
    flags as in SYNTHETIC_FLAGS (not_converged: no centre; truncated: a bound of 1e40 nm)."""
    dye = rng.integers(0, 3, n)
    sc_true = DYES_NM[dye] + rng.normal(0, 3, n)
    signal = rng.lognormal(np.log(3000), 0.7, n)
    crlb = 120 / np.sqrt(signal) + 0.5
    flags = np.array(list(SYNTHETIC_FLAGS), dtype=object)
    flag = rng.choice(flags, n, p=list(SYNTHETIC_FLAGS.values()))
    sc_mle = sc_true + 1.1 * crlb * rng.standard_normal(n)
    sc_mle[flag == "not_converged"] = np.nan
    crlb[flag == "truncated"] = 1e40  # a fit that did not pin the centre
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
            "sc_denoised_nm": sc_true + rng.normal(0, 6, n),
            "fit_denoised_centre_nm": sc_true + rng.normal(0, 5, n),
            "fit_denoised_spread_nm": 0.5,
            "dye": np.where(np.isfinite(sc_mle), dye, -1),
            "dye_probability": np.where(np.isfinite(sc_mle), 0.9, np.nan),
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
    """A molecules.csv-like table: clusters 0 .. n-1 (the runs of ``synthetic_spectra``)."""
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


def synthetic_precision() -> pd.DataFrame:
    """A spectral_precision.csv: two signal bins, every estimate's SD."""
    return pd.DataFrame(
        {
            "signal_bin": [0, 1],
            "signal_min": [300.0, 3000.0],
            "signal_max": [3000.0, 40000.0],
            "runs": [10, 10],
            "sc_raw_std_nm": [12.0, 8.0],
            "sc_denoised_std_nm": [6.0, 4.0],
            "fit_raw_std_nm": [5.0, 3.0],
            "fit_denoised_std_nm": [4.5, 2.8],
            "sc_mle_std_nm": [3.0, 1.5],
        }
    )


#: sc_error of a current metrics.json (evaluation.ESTIMATORS, the paired fits, the molecules)
ESTIMATOR_KEYS = [
    "raw_centroid",
    "raw_gaussian_fit",
    "raw_mle",
    "raw_mle_trusted",
    "denoised_centroid",
    "denoised_gaussian_fit",
    "denoised_gaussian_fit_paired",
    "raw_gaussian_fit_paired",
    "molecule",
    "molecule_joint",
    "molecule_mean",
]


def synthetic_metrics() -> dict:
    """A metrics.json: estimator k has RMSE k + 1 nm (raw_mle: an outlier 80 nm)."""
    sc_error = {
        k: {
            "n": 1000 + i,
            "valid_fraction": 0.99,
            "bias_nm": 0.1 * (i - 5),
            "rmse_nm": 80.0 if k == "raw_mle" else i + 1.0,
            "median_abs_error_nm": 0.5 * (i + 1),
            "within_tolerance": 0.8,
            "bias_by_true_dye_nm": {"0": 0.1, "1": 0.2, "2": -0.3},
        }
        for i, k in enumerate(ESTIMATOR_KEYS)
    }
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
    flagged = {"any": 0.15, "not_converged": 0.01, "truncated": 0.02, "crowded": 0.06}
    flagged |= {"bad_fit": 0.02, "dim": 0.04}
    return {
        "matched_localizations": 1000,
        "tolerance_nm": 5,
        "sc_error": sc_error,
        "dye_accuracy": {"localization": 0.9, "molecule": 0.95},
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


def write_training_inputs(root: Path) -> dict:
    """predictions.npz (12 test patches: 8 signal, 4 background), index, history, test metrics."""
    rng = np.random.default_rng(0)
    patches = rng.random((12, 16, 64)).astype(np.float32)
    np.savez(root / "predictions.npz", X=patches, Y=patches / 2, P=patches / 3)
    pd.DataFrame({"split": ["test"] * 12, "kind": ["signal"] * 8 + ["background"] * 4}).to_csv(
        root / "index.csv", index=False
    )
    pd.DataFrame(
        {"epoch": [0, 1, 2], "loss": [0.1, 0.05, 0.04], "val_loss": [0.1, 0.06, 0.05]}
    ).to_csv(root / "history.csv", index=False)
    (root / "test_metrics.json").write_text(json.dumps({"mse": 0.01}))
    return {
        "predictions_npz": root / "predictions.npz",
        "index_csv": root / "index.csv",
        "history_csv": root / "history.csv",
        "test_metrics_json": root / "test_metrics.json",
    }


def write_report_inputs(
    root: Path, n_per_acquisition: int, truth: bool, seed: int = 0, sparse: bool = False
) -> dict:
    """Every input of report_stage for two acquisitions ``a`` and ``b``; returns its kwargs."""
    rng = np.random.default_rng(seed)
    kw: dict = {"spectra_csvs": [], "precision_csvs": [], "raw_tifs": [], "molecule_csvs": []}
    truths = {}
    for k, acq in enumerate(("a", "b")):
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
        synthetic_precision().to_csv(d / "spectral_precision.csv", index=False)
        synthetic_molecules(max(n_per_acquisition // 14, 1), rng).to_csv(
            d / "molecules.csv", index=False
        )
        write_patches(d / "denoised" / "raw.tif", n_per_acquisition, sparse)
        kw["spectra_csvs"].append(d / "spectra.csv")
        kw["precision_csvs"].append(d / "spectral_precision.csv")
        kw["raw_tifs"].append(d / "denoised" / "raw.tif")
        kw["molecule_csvs"].append(d / "molecules.csv")
    metrics = None
    if truth:
        metrics = root / "metrics.json"
        metrics.write_text(json.dumps(synthetic_metrics()))
    report = root / "results" / "report"
    return (
        kw
        | write_training_inputs(root)
        | {
            "truth_csvs": truths,
            "metrics_json": metrics,
            "out": {k: report / f"{k}.png" for k in REPORT_FIGURES},
            "summary_json": report / "summary.json",
            "render_zoom": 4,
            "render_sigma_px": 0.5,
            "seed": 42,
            "signal_bins": 4,
        }
    )


# --- training figures ----------------------------------------------------------------------------


def test_montage_shows_raw_target_and_denoised_of_signal_then_background(tmp_path):
    kw = write_training_inputs(tmp_path)
    fig = montage(kw["predictions_npz"], kw["index_csv"], n_signal=2, n_background=1)
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_title() for ax in axes[0]] == ["raw (counts/2^16)", "clean target", "denoised"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["signal", "signal", "background"]
    with np.load(kw["predictions_npz"]) as z:  # row 3 is the first background patch (index 8)
        np.testing.assert_array_equal(axes[2, 1].get_images()[0].get_array(), z["Y"][8])


def test_loss_curves_plot_both_losses_per_epoch(tmp_path):
    ax = loss_curves(write_training_inputs(tmp_path)["history_csv"]).axes[0]
    assert legend_labels(ax) == ["training", "validation"]
    train, val = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(val.get_ydata(), [0.1, 0.06, 0.05])
    assert ax.get_yscale() == "log"


# --- spectra figures -----------------------------------------------------------------------------


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


def test_rendering_colours_by_trusted_centres_and_bounds_the_grid():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "x": rng.uniform(0, 50, 200),
            "y": rng.uniform(0, 30, 200),
            "sc_mle_nm": rng.normal(610, 20, 200),
            "sc_mle_flag": [""] * 150 + ["crowded"] * 50,
        }
    )
    fig = rendering(table, zoom=4, sigma_px=0.3)
    plain, coloured = fig.axes[:2]
    assert plain.get_title() == "200 localizations"
    assert coloured.get_title() == "trusted ML spectral centre (150 localizations)"
    assert fig.axes[2].get_ylabel() == "spectral centre (nm)"  # the colour bar
    assert coloured.get_images()[0].get_array().shape[:2] == plain.get_images()[0].get_array().shape
    # a wide field lowers the zoom instead of allocating a huge grid
    wide = rendering(table.assign(x=table["x"] * 400), zoom=8, sigma_px=0.5)
    assert max(wide.axes[0].get_images()[0].get_array().shape) <= 4096


def test_rendering_colours_only_by_trusted_maximum_likelihood_centres():
    table = pd.DataFrame(
        {
            "sc_mle_nm": [600.0, 610.0, np.nan, 630.0],
            "sc_mle_flag": ["", "crowded", "", np.nan],
            "sc_denoised_nm": [1.0, 2.0, 3.0, 4.0],
        }
    )
    np.testing.assert_array_equal(trusted_mle(table), [600.0, np.nan, np.nan, 630.0])
    assert np.isnan(trusted_mle(table[["sc_denoised_nm"]])).all()  # no MLE readout: no colour


def test_sc_histograms_show_each_estimate_by_dye():
    spectra = synthetic_spectra(3000, np.random.default_rng(2))
    fig = sc_histograms(spectra, "dye")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["raw, maximum likelihood (trusted)", "raw centroid", "denoised centroid"]
    assert legend_labels(fig.axes[-1]) == ["unclassified", "dye 0", "dye 1", "dye 2"]
    trusted = np.isfinite(trusted_mle(spectra))
    dye0 = fig.axes[0].patches[1].get_data().values  # one filled step per class, -1 first
    n_dye0 = (trusted & (spectra["dye"] == 0)).sum()
    assert n_dye0 * 0.98 <= dye0.sum() <= n_dye0  # all but those outside the percentile range
    # without truth and without the ML readout: the centroids only
    two = sc_histograms(spectra.drop(columns="sc_mle_nm"), "dye_true")
    assert [ax.get_title() for ax in two.axes] == ["raw centroid", "denoised centroid"]
    assert legend_labels(two.axes[-1]) == ["false detection"]  # no dye_true column: all -1


def test_precision_figure_shows_maximum_likelihood_and_the_molecules_error():
    precision = synthetic_precision()
    molecules = pd.DataFrame(
        {"signal": [500.0, 600.0, 5000.0, 6000.0], "sc_err_nm": [2.0, 4.0, 0.5, 1.5]}
    )
    fig = precision_figure(precision, molecules, n_bins=2)
    ax = fig.axes[0]
    labels = legend_labels(ax)
    assert labels == [
        "raw, maximum likelihood (trusted frames)",
        "raw, least-squares fit",
        "denoised, least-squares fit",
        "raw centroid",
        "denoised centroid",
        "per molecule: its error (sc_err_nm)",
    ]
    lines = dict(zip(labels, ax.get_lines(), strict=True))
    np.testing.assert_array_equal(lines[labels[0]].get_ydata(), [3.0, 1.5])
    np.testing.assert_allclose(lines["raw centroid"].get_xdata(), [np.sqrt(9e5), np.sqrt(1.2e8)])
    np.testing.assert_array_equal(lines[labels[-1]].get_ydata(), [3.0, 1.0])  # median per bin
    assert ax.get_ylabel() == "spectral precision (nm)" and ax.get_yscale() == "log"
    assert not any("fused" in t for t in texts(fig))
    # an older table without the ML column: the other estimates
    old = precision_figure(precision.drop(columns="sc_mle_std_nm"))
    assert legend_labels(old.axes[0])[0] == "raw, least-squares fit"


def test_molecule_error_by_signal_is_the_median_per_quantile_bin():
    mol = pd.DataFrame({"signal": np.arange(1.0, 9.0), "sc_err_nm": np.arange(8.0)})
    got = molecule_error_by_signal(mol.assign(sc_err_nm=mol["sc_err_nm"].where(mol.index != 0)), 2)
    np.testing.assert_array_equal(got["sc_err_nm"], [2.0, 5.5])  # NaN left out
    np.testing.assert_array_equal(got["molecules"], [3, 4])
    assert molecule_error_by_signal(mol.drop(columns="signal"), 2).empty


def test_molecules_histogram_stacks_the_molecules_by_dye():
    molecules = synthetic_molecules(500, np.random.default_rng(5))
    ax = molecules_histogram(molecules).axes[0]
    finite = molecules["sc_nm"].notna()
    assert ax.get_title() == f"{finite.sum()} of 500 molecules with a spectral centre"
    assert legend_labels(ax) == ["unclassified", "dye 0", "dye 1", "dye 2"]
    top = ax.patches[-1].get_data()  # the last step stacks on all the others
    assert 0.98 * finite.sum() <= top.values.sum() <= finite.sum()  # 1% outside the range


# --- maximum-likelihood readout --------------------------------------------------------------------


def test_mle_reasons_and_flagged_fractions():
    table = pd.DataFrame(
        {
            "sc_mle_nm": [600.0, 601.0, np.nan, 602.0, np.nan, 603.0, 604.0],
            "sc_mle_flag": [np.nan, "", "not_converged", "dim", np.nan, "odd", "crowded"],
        }
    )
    reasons = mle_reasons(table)
    assert list(reasons) == [
        "trusted",
        "trusted",
        "not_converged",
        "dim",
        "no_estimate",
        "odd",
        "crowded",
    ]
    frac = flagged_fractions(reasons)
    assert frac["any"] == pytest.approx(4 / 7)  # not_converged, dim, odd, crowded
    assert frac["crowded"] == pytest.approx(1 / 7) and frac["truncated"] == 0.0
    assert set(FLAGS) <= set(frac)  # every flag of the readout, present or not
    assert frac["no_estimate"] == pytest.approx(1 / 7) and frac["odd"] == pytest.approx(1 / 7)
    assert reason_order(reasons) == ["trusted", *FLAGS, "no_estimate", "odd"]
    assert mle_reasons(table.drop(columns="sc_mle_nm")) is None  # no MLE readout at all
    no_flag = list(mle_reasons(table.drop(columns="sc_mle_flag")))
    assert no_flag[:3] == ["trusted", "trusted", "no_estimate"]


def test_choose_examples_is_seeded_and_per_reason():
    reasons = pd.Categorical(["trusted"] * 50 + ["dim"] * 3 + ["crowded"] * 10)
    a = choose_examples(reasons, 4, seed=7)
    assert list(a) == ["trusted", *FLAGS]
    assert len(a["trusted"]) == 4 and len(a["dim"]) == 3 and len(a["truncated"]) == 0
    assert all(np.asarray(reasons)[a["crowded"]] == "crowded")
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


def test_mle_error_vs_crlb_with_truth_shows_the_trusted_errors():
    spectra = synthetic_spectra(5000, np.random.default_rng(3))
    spectra = spectra.assign(sc_true_nm=spectra["_sc_true"], dye_true=spectra["_dye_true"])
    fig = mle_error_vs_crlb(spectra)
    ax = fig.axes[0]
    n_trusted = int((mle_reasons(spectra) == "trusted").sum())
    assert ax.get_title().startswith(f"{n_trusted} trusted localizations; within 1x / 2x CRLB")
    assert legend_labels(ax) == [
        "|error| = CRLB (1x)",
        "|error| = 2 x CRLB",
        "RMS |error| per CRLB decile",
    ]
    counts = ax.collections[0].get_array()  # the 2-D histogram, up to the 99.5th percentiles
    assert 0.98 * n_trusted <= counts.sum() <= n_trusted
    assert ax.get_xlabel() == "sqrt(CRLB) of the spectral centre (nm)"


def test_mle_error_vs_crlb_without_truth_counts_bounds_by_flag():
    spectra = synthetic_spectra(5000, np.random.default_rng(3))
    ax = mle_error_vs_crlb(spectra).axes[0]
    reasons = pd.Series(np.asarray(mle_reasons(spectra)))
    labels = legend_labels(ax)
    present = [r for r in ["trusted", *FLAGS] if (reasons == r).any()]
    assert [label.split(" (")[0] for label in labels] == present
    n_trunc = int((reasons == "truncated").sum())
    # the 1e40 nm bounds of truncated fits are counted beside the histogram, not binned
    (trunc,) = [label for label in labels if label.startswith("truncated")]
    assert trunc == f"truncated ({n_trunc}, {n_trunc} > 100 nm)"
    assert ax.get_xlim()[1] < 100


def test_mle_efficiency_plots_the_metrics_or_the_bounds_by_signal():
    spectra = synthetic_spectra(5000, np.random.default_rng(3))
    metrics = synthetic_metrics()
    left, right = mle_efficiency(spectra, metrics).axes
    assert legend_labels(left) == ["implied by the CRLB", "observed (vs truth)"]
    by_bin = metrics["mle"]["by_signal_bin"]
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), [b["crlb_rmse_nm"] for b in by_bin])
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), [0.91] * 4)
    assert left.get_xscale() == "log" and right.get_xlabel() == "signal (table units, bin centre)"
    # without truth: sqrt(CRLB) quartiles and the fraction of each flag, by signal bin
    left, right = mle_efficiency(spectra, None, n_bins=5).axes
    assert legend_labels(right) == list(FLAGS)
    crowded = right.get_lines()[FLAGS.index("crowded")].get_ydata()
    assert len(crowded) == 5 and np.mean(crowded) == pytest.approx(0.06, abs=0.02)


def test_example_title_is_short_and_caps_the_bound():
    def title(**row):
        base = {"acquisition": "demo_unseen", "page": 1234, "signal": 2500.4, "sc_mle_nm": 601.3}
        return example_title(pd.Series(base | row))

    assert title(sc_mle_crlb_nm=1.23) == "demo_unseen #1234, S 2500\n601 \u00b1 1.2 nm"
    assert title(sc_mle_crlb_nm=1e40).endswith("\n601 nm, bound > 100 nm")
    assert title(sc_mle_crlb_nm=np.nan).endswith("\n601 nm, no bound")
    assert title(sc_mle_nm=np.nan, sc_mle_crlb_nm=1e40).endswith("\nno centre")
    assert all(len(line) <= 26 for line in title(sc_mle_crlb_nm=1e40).splitlines())


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
    fig = flagged_examples(spectra, tifs, seed=1, n_per_reason=3)
    axes = np.array(fig.axes).reshape(len(FLAGS) + 1, 3)
    counts = spectra["sc_mle_flag"].replace("", "trusted").value_counts()
    for reason, row in zip(["trusted", *FLAGS], axes, strict=True):
        if reason != "bad_fit":
            assert row[0].get_ylabel() == f"{reason}\n({counts[reason]})"
    assert texts(fig).count("bad_fit: no example") == 1
    truncated = axes[1 + FLAGS.index("truncated")]
    for ax in truncated:  # each patch titled by its page, its 1e40 nm bound capped
        acq, page = ax.get_title().split(",")[0].split(" #")
        assert ax.get_title().endswith("nm, bound > 100 nm")
        img = ax.get_images()[0].get_array()
        assert img[0, 0] == int(page) and spectra.query("acquisition == @acq").shape[0] > int(page)
    assert not any("e+" in t for t in texts(fig))
    # a missing TIFF or no MLE columns: a note, not a failure
    missing = flagged_examples(spectra, {"a": tifs["a"]}, seed=1)
    assert len(missing.axes) == 4 * (len(FLAGS) + 1)
    none = flagged_examples(spectra.drop(columns="sc_mle_nm"), tifs, seed=1)
    assert texts(none) == ["No maximum-likelihood readout: no flagged examples"]


def test_figures_draw_a_note_on_missing_or_empty_data():
    spectra = synthetic_spectra(50, np.random.default_rng(6))
    nan = spectra.assign(sc_mle_nm=np.nan, sc_mle_crlb_nm=np.nan, sc_raw_nm=np.nan)
    nan = nan.assign(sc_denoised_nm=np.nan, sc_mle_flag="")
    empty = spectra.iloc[:0].assign(acquisition="a", page=0)
    for name, table in (("nan", nan), ("empty", empty), ("none", spectra[["x", "y", "signal"]])):
        figures = [
            mle_error_vs_crlb(table),
            mle_efficiency(table, {"mle": {"by_signal_bin": []}}),
            sc_histograms(table, "dye"),
        ]
        for fig in figures:  # a note says why, no failure
            assert any(t.startswith("No ") for t in texts(fig)), name
        rendering(table, zoom=4, sigma_px=0.5)
    assert texts(rendering(empty, 4, 0.5)) == ["No localization to render"]
    assert texts(flagged_examples(empty, {}, seed=0))[0].startswith("No maximum-likelihood")
    assert texts(molecules_histogram(pd.DataFrame())) == [
        "No molecule with a spectral centre (0 molecules)"
    ]
    assert "1 molecules" in texts(molecules_histogram(pd.DataFrame({"sc_nm": [np.nan]})))[0]
    assert texts(precision_figure(pd.DataFrame(), None))[0].startswith("No molecule observed")
    assert texts(evaluation_figure({}))[0] == "metrics.json has no spectral-centre errors"


# --- the evaluation figure -----------------------------------------------------------------------


def test_evaluation_figure_shows_the_user_labels_with_their_errors():
    m = synthetic_metrics()
    m["sc_error"]["sf_fused_centroid"] = dict(m["sc_error"]["raw_centroid"])  # an old file
    m["sc_error"]["raw_mle_trusted"]["rmse_nm"] = None  # a NaN written as null
    m["sc_error"]["raw_gaussian_fit_paired"] = {"n": 0, "valid_fraction": float("nan")}
    fig = evaluation_figure(m)
    bias, rmse, median, within = fig.axes
    labels = [t.get_text() for t in bias.get_yticklabels()]
    assert labels[:4] == [
        "raw, maximum likelihood (trusted)",
        "raw, maximum likelihood (all)",
        "raw, least-squares fit",
        "denoised, least-squares fit",
    ]
    assert {"raw centroid", "denoised centroid", "per molecule, maximum likelihood"} <= set(labels)
    assert len(labels) == len(ESTIMATOR_KEYS)  # the SF-fused centroid is left out
    assert [ax.get_title() for ax in fig.axes] == [
        "bias (nm)",
        "RMSE (nm)",
        "median |error| (nm)",
        "within 5 nm (%; outline: with a value)",
    ]
    keys = [next(k for k, v in ESTIMATOR_LABELS.items() if v == label) for label in labels]
    want = np.array([m["sc_error"][k].get("median_abs_error_nm", 0.0) for k in keys])
    np.testing.assert_allclose(bar_widths(median), want)
    rmse_bars = bar_widths(rmse)
    assert rmse_bars[0] == 0  # no value: no bar, a dash
    assert rmse_bars[1] < 80 and "80.00" in texts(fig)  # the outlier: cut, its value written
    np.testing.assert_allclose(rmse_bars[2], m["sc_error"]["raw_gaussian_fit"]["rmse_nm"])
    paired = labels.index("raw, least-squares fit (paired)")  # scored on no localization
    want_within = np.r_[[99.0] * len(labels), [80.0] * len(labels)]
    want_within[[paired, len(labels) + paired]] = 0
    np.testing.assert_allclose(bar_widths(within), want_within)
    assert "none (n 0)" in texts(fig) and texts(fig).count("-") >= 4  # rmse x 2, bias, median
    shown = " ".join(texts(fig))
    internal = [k for k in ESTIMATOR_KEYS if "_" in k]  # "molecule" is also a plain word
    assert not any(k in shown for k in [*internal, "fused"])
    assert "Dye classification accuracy: per localization 90.0%, per molecule 95.0%" in shown
    assert "crowded 6.0%" in shown and "efficiency 0.91" in shown
    assert min(t.get_fontsize() for t in bias.get_yticklabels()) >= 10


def test_evaluation_rows_and_captions():
    rows = evaluation_rows({"some_new_estimator": {}, "raw_centroid": {}, "sf_fused_centroid": {}})
    assert [label for label, _ in rows] == ["raw centroid", "some new estimator"]
    caption = mle_caption(synthetic_metrics()["mle"])
    assert "flagged 15.0%" in caption and "dim 4.0%" in caption
    assert caption.index("not_converged") < caption.index("crowded") < caption.index("dim")
    assert mle_caption(None) == "" and dye_caption({}) == ""
    assert dye_caption({"molecule": 0.9, "localization": 0.8}) == (
        "Dye classification accuracy: per localization 80.0%, per molecule 90.0%"
    )


# --- the whole report stage ------------------------------------------------------------------


@pytest.mark.parametrize("truth", [True, False])
def test_report_stage_writes_every_figure_and_the_summary(tmp_path, truth):
    kw = write_report_inputs(tmp_path, 3000, truth)
    summary = report_stage(**kw)
    for key, path in kw["out"].items():
        assert _is_png(path), key
    on_disk = json.loads(Path(kw["summary_json"]).read_text())
    assert on_disk["localizations_with_spectra"] == 6000
    assert set(on_disk["mle_flagged_fraction"]) >= {"any", *FLAGS}
    assert 0.1 < on_disk["mle_flagged_fraction"]["any"] < 0.2
    assert on_disk["mle_flagged_fraction"]["crowded"] == pytest.approx(0.06, abs=0.015)
    assert on_disk["molecules"]["n"] == 2 * (3000 // 14)
    assert ("mle" in on_disk) == truth and ("evaluation" in on_disk) == truth
    assert summary["mle_median_crlb_nm"] > 0


def test_load_spectra_reads_only_the_report_columns_and_keeps_pages(tmp_path):
    kw = write_report_inputs(tmp_path, 500, truth=True)
    spectra = load_spectra(kw["spectra_csvs"], kw["truth_csvs"])
    assert "fit_raw_width_nm" not in spectra and {"sc_mle_flag", "dye", "cluster"} <= set(spectra)
    assert list(spectra.groupby("acquisition", observed=True)["page"].max()) == [499, 499]
    matched = spectra["sc_true_nm"].notna().mean()
    assert 0.9 < matched < 1  # 3% false detections


def test_load_molecules_gets_the_mean_signal_of_its_run(tmp_path):
    kw = write_report_inputs(tmp_path, 500, truth=False)
    spectra = load_spectra(kw["spectra_csvs"])
    molecules = load_molecules(kw["molecule_csvs"], spectra)
    b = spectra[(spectra["acquisition"] == "b") & (spectra["cluster"] == 3)]
    got = molecules.query("acquisition == 'b' and cluster == 3")["signal"]
    assert got.item() == pytest.approx(b["signal"].mean())
    assert molecules["signal"].notna().mean() > 0.9  # nearly every cluster has localizations
    assert "signal" not in load_molecules(kw["molecule_csvs"])


@pytest.mark.slow
def test_report_stage_at_a_million_localizations(tmp_path, capsys, record_property):
    """The whole report on 10^6 localizations (two acquisitions of 5 x 10^5, with truth) in
    under a minute, every figure written."""
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
