import numpy as np
import pandas as pd
import pytest

from srsmlm.evaluation import (
    bias_by_group,
    classification_accuracy,
    err_coverage,
    error_stats,
    evaluate,
    match_truth,
)


def test_match_truth_by_frame_and_position():
    truth = pd.DataFrame(
        {
            "frame": [1, 1, 2],
            "loc_x": [10.0, 20.0, 10.0],
            "loc_y": [5.0, 5.0, 5.0],
            "detected": [True, True, True],
            "sc_true_nm": [600.0, 610.0, 620.0],
            "dye": [0, 1, 2],
        }
    )
    spectra = pd.DataFrame({"frame": [2, 1, 1], "x": [10.001, 20.0, 30.0], "y": [5.0, 5.0, 5.0]})
    m = match_truth(spectra, truth)
    assert m["sc_true_nm"].iloc[0] == 620.0 and m["sc_true_nm"].iloc[1] == 610.0
    assert np.isnan(m["sc_true_nm"].iloc[2]) and m["dye_true"].tolist() == [2, 1, -1]


def test_error_stats():
    s = error_stats(np.array([1.0, -1.0, 3.0, np.nan]), tolerance=2.0)
    assert s["bias_nm"] == pytest.approx(1.0)
    assert s["rmse_nm"] == pytest.approx(np.sqrt(11 / 3))
    assert s["median_abs_error_nm"] == 1.0
    assert s["within_tolerance"] == 0.5 and s["valid_fraction"] == 0.75


def test_classification_accuracy_with_permuted_labels():
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([2, 2, 0, 0, 1, 0])
    assert classification_accuracy(pred, true) == pytest.approx(5 / 6)
    assert np.isnan(classification_accuracy(np.array([-1]), np.array([0])))


def test_bias_by_group_finds_opposite_biases_that_cancel_overall():
    err = np.array([5.0, 7.0, -6.0, -6.0, np.nan, 1.0])
    dye = np.array([0, 0, 2, 2, 2, 1])
    assert bias_by_group(err, dye) == {"0": 6.0, "1": 1.0, "2": -6.0}
    assert abs(np.nanmean(err)) < 1.0  # the overall bias hides them
    assert bias_by_group(np.array([np.nan]), np.array([3])) == {
        "3": pytest.approx(np.nan, nan_ok=True)
    }


def test_paired_comparison_scores_both_fits_on_the_localizations_both_read(tmp_path):
    """The raw fit fails on the two hard localizations; on its own successes it looks better than
    the denoised fit, head to head (the same six localizations) it is worse."""
    n = 8
    truth = pd.DataFrame(
        {
            "frame": np.arange(1, n + 1),
            "loc_x": 10.0,
            "loc_y": 5.0,
            "detected": True,
            "sc_true_nm": 600.0,
            "dye": [0, 0, 0, 0, 1, 1, 1, 1],
        }
    )
    raw = 600 + np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, np.nan, np.nan])
    den = 600 + np.array([0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 6.0, -2.0])
    spectra = pd.DataFrame(
        {
            "frame": truth["frame"],
            "x": 10.0,
            "y": 5.0,
            "signal": np.arange(n) + 100.0,
            "cluster": -1,
            "sc_raw_nm": raw,
            "sc_denoised_nm": den,
            "fit_raw_centre_nm": raw,
            "fit_denoised_centre_nm": den,
            "dye": [1, 1, 1, 0, 0, 0, 0, -1],  # classes swapped; one wrong, one unclassified
        }
    )
    spectra.to_csv(tmp_path / "s.csv", index=False)
    truth.to_csv(tmp_path / "t.csv", index=False)
    m = evaluate(
        [tmp_path / "s.csv"],
        [tmp_path / "t.csv"],
        ["a"],
        2,
        2.0,
        tmp_path / "m.json",
        tmp_path / "e.csv",
    )
    e = m["sc_error"]
    assert e["raw_gaussian_fit"]["rmse_nm"] < e["denoised_gaussian_fit"]["rmse_nm"]
    d, r = e["denoised_gaussian_fit_paired"], e["raw_gaussian_fit_paired"]
    assert d["n"] == r["n"] == 6 and d["valid_fraction"] == r["valid_fraction"] == 1.0
    assert (d["median_abs_error_nm"], d["rmse_nm"]) == (0.5, 0.5)
    assert (r["median_abs_error_nm"], r["rmse_nm"]) == (1.0, 1.0)
    assert d["bias_by_true_dye_nm"] == {"0": 0.0, "1": 0.0}
    assert e["denoised_gaussian_fit"]["bias_by_true_dye_nm"]["1"] == 1.0
    assert m["denoised_fit_beats_raw_fit_paired"] is True
    assert m["dye_accuracy"] == {"localization": 6 / 7}
    table = pd.read_csv(tmp_path / "e.csv")
    paired = table[table["estimator"] == "raw_gaussian_fit_paired"]
    assert set(paired["by"]) == {"signal_bin", "dye"} and paired["n"].sum() == 12


def test_error_by_quantiles_ranks_errors_by_a_trust_value():
    from srsmlm.evaluation import error_by_quantiles

    value = np.arange(10.0)
    err = np.array([1, -1, 1, -1, 2, -2, 3, -3, 4, np.nan])
    out = error_by_quantiles(err, value, 2)
    assert [b["n"] for b in out] == [4, 5]  # finite pairs: values 0-3 | 4-8
    assert out[0]["median_abs_error_nm"] == 1.0 and out[1]["rmse_nm"] == pytest.approx(
        np.sqrt((4 + 4 + 9 + 9 + 16) / 5)
    )
    assert out[0]["from"] == 0.0 and out[1]["to"] == 8.0
    assert error_by_quantiles(err[:1], value[:1], 2) == []


def test_mle_quality_by_group_size():
    """Trusted share, efficiency and coverage of the readout for lone localizations and for
    those fitted jointly with neighbours."""
    from srsmlm.evaluation import mle_quality

    matched = pd.DataFrame(
        {
            "sc_true_nm": 600.0,
            "sc_mle_nm": 600.0 + np.array([1.0, -1.0, 0.5, 3.0, 0.0, 10.0]),
            "sc_mle_crlb_nm": 1.0,
            "sc_mle_flag": ["", "", "", "", "crowded", ""],
            "group_size": [1, 1, 2, 2, 5, 4],
        }
    )
    q = mle_quality(matched, matched, np.zeros(6, int), pd.IntervalIndex.from_breaks([0, 1]))
    by = {row["group_size"]: row for row in q["by_group_size"]}
    assert by["1"]["n"] == 2 and by["1"]["trusted_fraction"] == 1.0
    assert by["1"]["efficiency"] == pytest.approx(1.0) and by["1"]["coverage_2x"] == 1.0
    assert by["2"]["coverage_2x"] == 0.5
    assert by["2"]["efficiency"] == pytest.approx(1.0 / np.sqrt((0.25 + 9.0) / 2))
    assert by[">=4"]["n"] == 2 and by[">=4"]["trusted_fraction"] == 0.5
    assert by["3"]["n"] == 0 and by["3"]["efficiency"] is None
    assert q["trusted_fraction"] == pytest.approx(5 / 6)


def test_err_coverage_counts_errors_within_1x_and_2x_apart_for_trusted_and_flagged():
    matched = pd.DataFrame(
        {
            "fit_denoised_centre_nm": [601.0, 601.5, 610.0, 600.5, np.nan, 600.0],
            "fit_denoised_err_nm": [1.0, 1.0, 1.0, 1.0, 1.0, np.nan],
            "sc_true_nm": [600.0] * 6,
            "sc_mle_flag": [None, None, "dim", "crowded", None, None],
        }
    )
    cov = err_coverage(matched)
    assert cov["all"] == {"n": 4, "within_1x": 0.5, "within_2x": 0.75}
    assert cov["trusted"] == {"n": 2, "within_1x": 0.5, "within_2x": 1.0}
    assert cov["flagged"] == {"n": 2, "within_1x": 0.5, "within_2x": 0.5}
