"""Which spectrum is whose: swaps made where rows and photons say so, doubt flagged."""

import numpy as np
import pytest

from srsmlm.labelling import (
    MIN_REFERENCE,
    LabelRules,
    close_pairs,
    learn_consistency,
    resolve_labelling,
)
from srsmlm.overlaps import JointConfig

from .conftest import section

WIDTH = 64.0
#: the configured rules, pairs closer than 1.5 rows checked
RULES: LabelRules = JointConfig.from_config(section("spectra", min_row_separation_px=1.5)).labels


def _groups(rng, n_pairs, n_alone, signals, dy=0.8, swapped=None, photons=None):
    """``n_alone`` lone members (the reference) then ``n_pairs`` pairs at rows 10 and 10 + dy
    with localization signals ``signals``; each spectrum's photons equal its owner's signal
    (``photons`` overrides), rows and photons with small fit errors; ``swapped`` (mask over
    pairs) hands the fitted spectra to the wrong members."""
    sizes = np.r_[np.ones(n_alone, int), np.full(n_pairs, 2)]
    starts = np.r_[0, np.cumsum(sizes)]
    n = int(sizes.sum())
    y_loc = np.r_[np.full(n_alone, 10.0), np.tile([10.0, 10.0 + dy], n_pairs)]
    signal = np.r_[np.full(n_alone, 2000.0), np.tile(signals, n_pairs)]
    y_fit = y_loc + rng.normal(0, 0.05, n)
    n_fit = (signal if photons is None else np.r_[signal[:n_alone], np.tile(photons, n_pairs)]) * (
        1 + rng.normal(0, 0.03, n)
    )
    col0 = np.r_[np.full(n_alone, 100.0), np.tile([100.0, 105.0], n_pairs)]
    centre = col0 + 30 + np.r_[np.zeros(n_alone), np.tile([0.0, 10.0], n_pairs)]
    truth = centre.copy()
    if swapped is not None:
        first = n_alone + 2 * np.flatnonzero(swapped)
        for a in (y_fit, n_fit, centre):
            a[first], a[first + 1] = a[first + 1].copy(), a[first].copy()
    fit = {
        "N": n_fit,
        "l0": centre - col0,
        "s": np.full(n, 5.0),
        "y0": y_fit - 6.0,  # region rows: the region starts at frame row 6
        "var_l0": np.full(n, 0.04),
        "var_N": signal * 1.0,
        "var_y0": np.full(n, 0.05**2),
        "rho": np.zeros(n),
        "converged": np.ones(n, bool),
    }
    return fit, y_loc, signal, col0, np.full(n, 6.0), starts, truth


def test_close_pairs_are_members_of_one_group_closer_than_the_rows():
    y = np.array([10.0, 10.5, 13.0, 10.2, 10.4])
    starts = np.array([0, 3, 5])  # groups {0, 1, 2} and {3, 4}
    i, j = close_pairs(y, starts, 1.5)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (3, 4)]


def test_consistency_learns_the_median_and_the_spread_beyond_the_bounds():
    rng = np.random.default_rng(1)
    n = 20_000
    values = 0.2 + rng.normal(0, 0.05, n) + rng.normal(0, 0.1, n)  # bound 0.05, extra 0.1
    c = learn_consistency(
        values, np.full(n, 0.05**2), values, np.full(n, 0.05**2), np.ones(n, bool)
    )
    assert c.dy == pytest.approx(0.2, abs=0.005) and c.k == pytest.approx(0.2, abs=0.005)
    assert c.e_y == pytest.approx(0.1, rel=0.05) and c.e_k == pytest.approx(0.1, rel=0.05)
    few = np.arange(n) < MIN_REFERENCE - 1
    assert np.isnan(learn_consistency(values, values * 0, values, values * 0, few).e_k)


def test_swapped_spectra_are_handed_back_by_their_photons():
    rng = np.random.default_rng(2)
    swapped = rng.random(100) < 0.5
    fit, y_loc, signal, col0, r0, starts, truth = _groups(rng, 100, 200, [1000.0, 3000.0], 0.6,
                                                          swapped)  # fmt: skip
    out, ambiguous = resolve_labelling(fit, y_loc, signal, col0, r0, starts, RULES, WIDTH)
    np.testing.assert_allclose(out["l0"] + col0, truth)
    # only the consistency test's 5 % of chance disagreements are left in doubt
    assert not ambiguous[:200].any() and ambiguous[200:].mean() <= 0.12
    np.testing.assert_allclose(np.abs(out["y0"] + r0 - y_loc), 0, atol=0.3)


def test_equal_spectra_on_one_row_are_ambiguous_and_a_merged_fit_is_caught():
    rng = np.random.default_rng(3)
    fit, y_loc, signal, col0, r0, starts, _ = _groups(rng, 50, 200, [2000.0, 2000.0], 0.0)
    _, ambiguous = resolve_labelling(fit, y_loc, signal, col0, r0, starts, RULES, WIDTH)
    assert ambiguous[200:].all() and not ambiguous[:200].any()
    # one spectrum took most of its neighbour's photons: rows fine, photons not
    fit, y_loc, signal, col0, r0, starts, _ = _groups(
        rng, 50, 200, [1000.0, 3000.0], 1.0, photons=[1900.0, 2100.0]
    )
    _, ambiguous = resolve_labelling(fit, y_loc, signal, col0, r0, starts, RULES, WIDTH)
    assert ambiguous[200:].mean() >= 0.95


def test_without_a_signal_every_close_pair_is_ambiguous():
    rng = np.random.default_rng(4)
    fit, y_loc, signal, col0, r0, starts, truth = _groups(rng, 30, 200, [1000.0, 3000.0], 1.0)
    out, ambiguous = resolve_labelling(
        fit, y_loc, np.full(len(y_loc), np.nan), col0, r0, starts, RULES, WIDTH
    )
    assert ambiguous[200:].all() and not ambiguous[:200].any()
    np.testing.assert_allclose(out["l0"] + col0, truth)  # the rows keep the right labelling


def test_a_swap_that_would_put_a_spectrum_outside_its_box_is_not_made():
    rng = np.random.default_rng(5)
    swapped = np.ones(20, bool)
    fit, y_loc, signal, col0, r0, starts, _ = _groups(rng, 20, 200, [1000.0, 3000.0], 0.3, swapped)
    col0 = col0.copy()
    col0[201::2] += 50.0  # the second member's box no longer reaches the first's spectrum
    before = fit["l0"] + col0
    out, _ = resolve_labelling(fit, y_loc, signal, col0, r0, starts, RULES, WIDTH)
    np.testing.assert_array_equal(out["l0"] + col0, before)


def test_same_input_same_output():
    rng = np.random.default_rng(6)
    args = _groups(rng, 40, 200, [1000.0, 3000.0], 0.6, rng.random(40) < 0.5)[:-1]
    a, amb_a = resolve_labelling(*args, RULES, WIDTH)
    b, amb_b = resolve_labelling(*args, RULES, WIDTH)
    np.testing.assert_array_equal(amb_a, amb_b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
