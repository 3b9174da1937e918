import numpy as np
import pandas as pd
import pytest

from srsmlm.evaluation import bias_by_group, classification_accuracy, error_stats, match_truth


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
