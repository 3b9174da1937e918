"""Dye classes and spectral precision."""

import numpy as np
import pandas as pd

from srsmlm.dyes import (
    TRUSTED_MLE,
    classify_dyes,
    classify_localizations,
    precision_by_signal,
    trusted_mle,
)


def test_gmm_separates_two_dyes():
    rng = np.random.default_rng(0)
    sc = np.concatenate([rng.normal(590, 3, 300), rng.normal(640, 3, 200), [np.nan]])
    cls, prob, k = classify_dyes(sc, 2, seed=1)
    assert k == 2 and (cls[:300] == 0).all() and (cls[300:500] == 1).all() and cls[-1] == -1
    assert np.nanmin(prob) > 0.99
    cls_bic, _, k_bic = classify_dyes(sc, None, seed=1)
    assert k_bic == 2


def test_precision_on_hand_built_table():
    df = pd.DataFrame(
        {
            "cluster": [0, 0, 0, 1, 1, 1, -1],
            "signal": [100, 100, 100, 1000, 1000, 1000, 50],
            "sc": [600, 602, 604, 610, 610.5, 611, 700],
        }
    )
    out = precision_by_signal(df, {"sc_std": "sc"}, n_bins=2)
    assert out["runs"].tolist() == [1, 1]
    np.testing.assert_allclose(out["sc_std"], [2.0, 0.5])


def test_localizations_classified_by_the_value_they_are_read_by():
    """The mixture is fitted on the trusted maximum-likelihood centres only; a flagged
    localization is classified by its denoised fit, and one with neither value gets -1."""
    rng = np.random.default_rng(3)
    n = 400
    true = np.where(np.arange(n) < 250, 590.0, 640.0)
    mle = true + rng.normal(0, 2, n)
    trusted = np.arange(n) % 4 != 0
    mle[~trusted] = 700.0  # a flagged value far off must neither shape nor decide a class
    denoised = true + rng.normal(0, 3, n)
    denoised[-1], mle[-1], trusted[-1] = np.nan, np.nan, False
    cls, prob = classify_localizations(mle, trusted, denoised, None, seed=1)
    assert cls[-1] == -1 and np.isnan(prob[-1])
    np.testing.assert_array_equal(cls[:-1], (true[:-1] > 600).astype(int))
    assert np.nanmin(prob) > 0.99
    again = classify_localizations(mle, trusted, denoised, None, seed=1)
    np.testing.assert_array_equal(again[0], cls)
    none = classify_localizations(mle, np.zeros(n, bool), denoised, None, seed=1)
    assert (none[0] == -1).all()


def test_mle_precision_is_over_trusted_frames_only():
    """A flagged frame's value (here 30 nm off) does not enter the maximum-likelihood precision."""
    runs = pd.DataFrame(
        {
            "cluster": [0, 0, 0, 0],
            "signal": [100.0] * 4,
            "sc_mle_nm": [600.0, 602.0, 604.0, 630.0],
            "sc_mle_flag": [np.nan, "", np.nan, "crowded"],
        }
    )
    out = precision_by_signal(trusted_mle(runs), {"sc_mle_std_nm": TRUSTED_MLE}, n_bins=1)
    np.testing.assert_allclose(out["sc_mle_std_nm"], [2.0])
