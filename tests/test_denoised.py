import logging

import numpy as np
import pytest

from srsmlm.denoised import (
    AnchorConfig,
    anchor_columns,
    equal_count_bins,
    fit_anchor,
)

from .conftest import section

CONFIG = AnchorConfig.from_config(section("spectra"))
WIDTH, NM_PER_PX = 48, 2.06


def true_shift(p):
    """A network's shift growing along the box: -0.3 nm at its start, +0.9 nm at its end."""
    return -0.3 + 1.2 * (p / WIDTH) ** 2


def acquisition(n=6000, seed=0, trusted_share=0.7):
    """Synthetic readouts of three dyes: a maximum-likelihood value with bound ``crlb`` (the
    photon noise); a denoised value with the same photon noise, the shift curve and a network
    error growing with its spread, twice as large for crowded localizations, whose
    maximum-likelihood values also err more. Returns the readout arrays and the truth."""
    rng = np.random.default_rng(seed)
    truth = rng.choice([585.0, 610.0, 635.0], n) + rng.normal(0, 3, n)
    p_true = 24 + (truth - 610) / NM_PER_PX
    stratum = np.where(rng.random(n) < trusted_share, 0, rng.integers(1, 3, n))
    crlb = rng.uniform(0.7, 1.6, n) * np.where(stratum == 2, 2.5, 1.0)
    photons = rng.normal(0, crlb)
    mle = truth + photons + np.where(stratum == 1, rng.normal(0, 2, n), 0.0)
    spread = rng.gamma(2.0, 0.3, n)
    sd = np.sqrt(0.8**2 + (1.5 * spread) ** 2) * np.where(stratum == 1, 2.0, 1.0)
    denoised = truth + true_shift(p_true) + photons + rng.normal(0, sd)
    readout = dict(
        denoised_nm=denoised,
        box_px=p_true + (denoised - truth) / NM_PER_PX,
        spread_nm=spread,
        mle_nm=mle,
        crlb_nm=crlb,
        stratum=stratum,
    )
    return readout, truth


def test_equal_count_bins_are_equal_even_with_ties():
    label = equal_count_bins(np.r_[np.zeros(50), np.arange(50.0)], 4)
    assert np.bincount(label).tolist() == [25, 25, 25, 25]
    assert (
        np.diff(label[np.argsort(np.r_[np.zeros(50), np.arange(50.0)], kind="stable")]) >= 0
    ).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_known_shift_curve_is_recovered(seed):
    values, truth = acquisition(seed=seed)
    anchor = fit_anchor(values, NM_PER_PX, WIDTH, CONFIG)
    assert anchor is not None
    grid = np.linspace(14, 34, 6)
    shift, se = anchor.shift(grid)
    assert np.abs(shift - true_shift(grid)).max() < 0.25
    assert (se > 0).all() and (se < 0.2).all()
    cols = anchor_columns(anchor, values)
    err = cols["fit_denoised_centre_nm"] - truth
    raw_err = values["denoised_nm"] - truth
    for dye in (585, 610, 635):
        sel = np.abs(truth - dye) < 10
        assert abs(np.median(err[sel])) < 0.15
        assert abs(np.mean(err[sel])) < 0.15
    assert np.median(raw_err[truth > 625]) > 0.25  # the shift was there (+0.38 nm)


@pytest.mark.parametrize("seed", [3, 4])
def test_the_error_covers_95_percent_within_2x_in_every_stratum(seed):
    values, truth = acquisition(seed=seed)
    anchor = fit_anchor(values, NM_PER_PX, WIDTH, CONFIG)
    cols = anchor_columns(anchor, values)
    ratio = np.abs(cols["fit_denoised_centre_nm"] - truth) / cols["fit_denoised_err_nm"]
    for g in (0, 1, 2):
        sel = values["stratum"] == g
        assert 0.92 <= np.mean(ratio[sel] <= 2) <= 0.985, g
        assert 0.6 <= np.mean(ratio[sel] <= 1) <= 0.88, g
    high = values["spread_nm"] > np.quantile(values["spread_nm"], 0.8)
    trusted = values["stratum"] == 0
    err = cols["fit_denoised_err_nm"]
    assert np.median(err[high & trusted]) > 1.3 * np.median(err[~high & trusted])
    assert anchor.scales[1] > 1.5  # crowded values err more, and the scale says so


def test_too_few_trusted_values_fall_back_uncorrected_and_logged(caplog):
    values, _ = acquisition(n=1200, trusted_share=0.1)
    with caplog.at_level(logging.WARNING, logger="srsmlm.denoised"):
        anchor = fit_anchor(values, NM_PER_PX, WIDTH, CONFIG)
    assert anchor is None
    assert "denoised_anchor_min_pairs" in caplog.text
    cols = anchor_columns(anchor, values)
    assert np.array_equal(cols["fit_denoised_centre_nm"], values["denoised_nm"])
    assert np.isnan(cols["fit_denoised_err_nm"]).all()


def test_missing_values_are_left_missing_and_not_used():
    values, _ = acquisition(seed=4)
    values["denoised_nm"][:100] = np.nan
    values["spread_nm"][100:200] = np.nan
    anchor = fit_anchor(values, NM_PER_PX, WIDTH, CONFIG)
    cols = anchor_columns(anchor, values)
    assert np.isnan(cols["fit_denoised_centre_nm"][:100]).all()
    assert np.isnan(cols["fit_denoised_err_nm"][:200]).all()
    assert np.isfinite(cols["fit_denoised_err_nm"][200:]).all()
    assert anchor.n_pairs == int((values["stratum"][200:] == 0).sum())


def test_same_input_same_bytes():
    values, _ = acquisition(seed=5)
    runs = [anchor_columns(fit_anchor(values, NM_PER_PX, WIDTH, CONFIG), values) for _ in range(2)]
    for key in runs[0]:
        assert runs[0][key].tobytes() == runs[1][key].tobytes()
