"""Profile readouts: spectral profiles, centroid, least-squares Gaussian fit and the cycle-spun
fits of shifted predictions."""

import numpy as np
import pandas as pd
import pytest

import srsmlm.profiles as profiles
from srsmlm.boxes import place_boxes
from srsmlm.calibration import Calibration
from srsmlm.geometry import Geometry
from srsmlm.profiles import (
    _outer_median,
    centroid,
    denoised_fit,
    gaussian_fit,
    profile_readout,
    profile_rows,
    relative_residual,
    shift_fits,
)
from srsmlm.simulate import _render_frame

from .conftest import tiny_params
from .reference_fit import reference_gaussian_fit

G = Geometry(16, 16, 48, 230)


@pytest.mark.parametrize(
    "true_nm, x, y", [(603.7, 30.3, 32.6), (585.0, 41.8, 20.2), (630.2, 25.5, 40.9)]
)
def test_noise_free_spectral_centroid_equals_truth(true_nm, x, y):
    p = tiny_params(background_photons=0.0, width=400, dye_sd_nm=12.0)
    em = pd.DataFrame(
        {
            "x": [x],
            "y": [y],
            "spot_photons": [1000.0],
            "spectrum_photons": [3000.0],
            "sc_true_nm": [true_nm],
        }
    )
    pad = 60
    img = _render_frame(p, em, pad, 6, 40)[pad:-pad, pad:-pad]
    b = place_boxes(np.array([1]), np.floor([x]), np.floor([y]), G)
    patch = np.concatenate(
        [
            img[b.loc_row0[0] : b.loc_row0[0] + 16, b.loc_col0[0] : b.loc_col0[0] + 16],
            img[b.spec_row0[0] : b.spec_row0[0] + 16, b.spec_col0[0] : b.spec_col0[0] + 48],
        ],
        axis=1,
    )
    table = pd.DataFrame({"x": [x], "y": [y], "spec_row0": b.spec_row0, "spec_col0": b.spec_col0})
    cal = Calibration(p.wavelength_at_offset_nm, p.nm_per_px)
    r = profile_readout(patch[None], table, G, cal, n_rows=16)
    assert r["sc"][0] == pytest.approx(true_nm, abs=0.5)
    assert r["fit_centre"][0] == pytest.approx(true_nm, abs=0.5)
    assert r["fit_width"][0] == pytest.approx(np.hypot(12.0, 1.3 * p.nm_per_px), rel=0.05)


def test_centroid_and_fit_on_known_profiles():
    lam = np.tile(np.linspace(550, 650, 48), (2, 1))
    prof = np.stack(
        [
            np.exp(-((lam[0] - 600) ** 2) / (2 * 15**2)) * 5 + 0.3,
            np.exp(-((lam[1] - 620.5) ** 2) / (2 * 10**2)) * 2 + 0.1,
        ]
    )
    fit = gaussian_fit(prof, lam)
    np.testing.assert_allclose(fit["centre"], [600, 620.5], atol=0.01)
    np.testing.assert_allclose(fit["width"], [15, 10], atol=0.01)
    np.testing.assert_allclose(fit["amplitude"], [5, 2], atol=0.01)
    assert centroid(prof - np.array([[0.3], [0.1]]), lam)[0] == pytest.approx(600, abs=0.05)
    assert np.isnan(centroid(np.zeros((1, 48)), lam[:1])[0])


def test_profile_rows_centred_and_clipped():
    assert profile_rows(np.array([30.6]), np.array([22]), 4, 16).tolist() == [
        7
    ]  # rows 7..10, centre 9.0 near 8.6
    assert profile_rows(np.array([22.1]), np.array([22]), 4, 16).tolist() == [0]
    assert profile_rows(np.array([40.0]), np.array([22]), 4, 16).tolist() == [12]


def _window(rng, n):
    """Pixel-centre wavelengths of 48-px profiles at 2.06 nm/px (the spot's sub-pixel x random)."""
    return 560 + (np.arange(48) + 0.5 - rng.uniform(0, 1, (n, 1))) * 2.06


def _noisy_profiles(rng, n, photons=(300, 6000)):
    """Raw-like profiles in the stage's units (counts / 2^16, background subtracted): Gaussian
    spectra of sd 12-25 nm, ``photons`` spectral photons (log-uniform), 120 background photons/px,
    Poisson noise. Returns profiles, wavelengths, photons."""
    lam = _window(rng, n)
    centre, sd = rng.uniform(575, 645, (n, 1)), rng.uniform(12, 25, (n, 1))
    ph = np.exp(rng.uniform(*np.log(photons), (n, 1)))
    mean = ph * 2.06 / (np.sqrt(2 * np.pi) * sd) * np.exp(-((lam - centre) ** 2) / (2 * sd**2))
    return (rng.poisson(mean + 120) - 120.0) * 2 / 65536, lam, ph[:, 0]


def test_gaussian_fit_recovers_noise_free_gaussians_exactly():
    rng = np.random.default_rng(3)
    n = 200
    lam = _window(rng, n)
    truth = np.column_stack(
        [
            np.exp(rng.uniform(np.log(1e-4), np.log(2.0), n)),  # patch units: dim raw to denoised
            rng.uniform(570, 650, n),
            rng.uniform(8, 30, n),
            rng.uniform(-0.1, 0.1, n) * 1e-3,
        ]
    )
    a, mu, s, c = (truth[:, i : i + 1] for i in range(4))
    fit = gaussian_fit(a * np.exp(-((lam - mu) ** 2) / (2 * s**2)) + c, lam)
    assert (fit["iterations"] < 30).all()  # converged, stopped early
    np.testing.assert_allclose(fit["centre"], truth[:, 1], rtol=0, atol=1e-8)
    np.testing.assert_allclose(fit["width"], truth[:, 2], rtol=1e-9)
    np.testing.assert_allclose(fit["amplitude"], truth[:, 0], rtol=1e-9)
    assert (np.abs(fit["offset"] - truth[:, 3]) < 1e-9 * truth[:, 0]).all()


def test_gaussian_fit_matches_former_implementation():
    """Same NaN pattern and, to float round-off, the same fits as the former batched NumPy fit
    with its fixed 30 iterations, on dim to bright noisy profiles and degenerate ones. The
    least-squares minimum is itself only resolved to ~1e-7 standard errors in float64 (the
    former fit moves its centres by about as much when a profile changes by one ulp), hence
    1e-6 nm for bright profiles and a looser bound for the dim, broad ones."""
    rng = np.random.default_rng(11)
    p, lam, photons = _noisy_profiles(rng, 3000)
    degenerate = np.stack(
        [np.zeros(48), np.full(48, 1e-3), -np.ones(48) * 1e-3, np.eye(48)[20] * 1e-2]
    )
    p = np.concatenate([p, degenerate, rng.normal(0, 2e-4, (40, 48))])  # empty, flat, noise
    lam = np.concatenate([lam, _window(rng, 44)])
    photons = np.r_[photons, np.zeros(44)]
    old, new = reference_gaussian_fit(p, lam), gaussian_fit(p, lam)
    for key in ("centre", "width", "amplitude", "offset"):
        np.testing.assert_array_equal(np.isnan(new[key]), np.isnan(old["centre"]))
    ok = np.isfinite(old["centre"])
    assert ok[:3000].mean() > 0.95 and (~ok[3000:]).any()
    converged = ok & (new["iterations"] < 30)
    assert converged.mean() > 0.75
    diff = np.abs(new["centre"] - old["centre"])[ok]
    assert diff.max() < 2e-5 and np.median(diff) < 1e-8
    bright = converged & (photons >= 2000)
    assert bright.sum() > 1000
    np.testing.assert_allclose(new["centre"][bright], old["centre"][bright], rtol=0, atol=1e-6)
    for key in ("width", "amplitude"):
        np.testing.assert_allclose(new[key][converged], old[key][converged], rtol=1e-5)
    # every iteration (tolerance 0): the same fits as with the early stop
    full = gaussian_fit(p, lam, tolerance=0)
    assert (full["iterations"] == 30).all()
    np.testing.assert_allclose(full["centre"][bright], new["centre"][bright], rtol=0, atol=1e-6)


def test_gaussian_fit_on_denoised_like_smooth_profiles_matches_former():
    rng = np.random.default_rng(5)
    n = 1000
    lam = _window(rng, n)
    centre, sd = rng.uniform(575, 645, (n, 1)), rng.uniform(12, 25, (n, 1))
    shape = np.exp(-((lam - centre) ** 2) / (2 * sd**2))
    shape += rng.uniform(0, 0.3, (n, 1)) * np.roll(shape, 6, axis=1)  # a shoulder: not a Gaussian
    p = rng.uniform(0.1, 2.0, (n, 1)) * shape / shape.max(1, keepdims=True)
    old, new = reference_gaussian_fit(p, lam), gaussian_fit(p, lam)
    np.testing.assert_array_equal(np.isnan(new["centre"]), np.isnan(old["centre"]))
    assert (new["iterations"] < 30).mean() > 0.95
    np.testing.assert_allclose(new["centre"], old["centre"], rtol=0, atol=1e-6)


def test_gaussian_fit_empty_input():
    out = gaussian_fit(np.zeros((0, 48)), np.zeros((0, 48)))
    assert all(len(v) == 0 for v in out.values())


def _raise(*args, **kwargs):
    raise AssertionError("the readout without fit must not fit Gaussians")


def test_readout_without_fit_skips_it_and_keeps_the_rest(monkeypatch):
    rng = np.random.default_rng(2)
    n = 30
    patches = rng.poisson(30, (n, 16, 64)).astype(np.float32) / 65536
    table = pd.DataFrame(
        {
            "x": rng.uniform(20, 40, n),
            "y": rng.uniform(20, 40, n),
            "spec_row0": np.full(n, 22),
            "spec_col0": rng.integers(250, 260, n),
        }
    )
    cal = Calibration(560.0, 2.06)
    full = profile_readout(patches, table, G, cal, n_rows=4)
    monkeypatch.setattr(profiles, "gaussian_fit", _raise)
    lean = profile_readout(patches, table, G, cal, n_rows=4, fit=False)
    assert set(lean) == {"sc", "sum", "background"}
    for key in lean:
        np.testing.assert_array_equal(lean[key], full[key])


def test_outer_median_equals_nanmedian_of_the_outer_rows():
    rng = np.random.default_rng(5)
    spec = rng.normal(size=(300, 16, 48))
    spec[::3] = rng.integers(0, 4, (100, 16, 48))  # ties
    start = rng.integers(0, 13, 300)
    rows = np.arange(16)[None]
    band = (rows >= start[:, None]) & (rows < start[:, None] + 4)
    outer = np.where(~band[:, :, None], spec, np.nan)
    np.testing.assert_array_equal(
        _outer_median(spec, band), np.nanmedian(outer.reshape(300, -1), 1)
    )


def _spectral_patch(centres_px, y_in_box=8.0, amplitudes=(1.0,), sd_px=4.0):
    """A noise-free patch whose spectral part holds Gaussians (columns, point-evaluated at the
    pixel centres) times a Gaussian row profile around ``y_in_box``."""
    cols = np.arange(G.spectral_width) + 0.5
    gx = sum(
        a * np.exp(-((cols - c) ** 2) / (2 * sd_px**2))
        for c, a in zip(centres_px, amplitudes, strict=True)
    )
    gy = np.exp(-((np.arange(16) + 0.5 - y_in_box) ** 2) / (2 * 1.3**2))
    patch = np.zeros(G.shape)
    patch[:, 16:] = gy[:, None] * gx[None, :]
    return patch


def test_shift_fits_average_the_shifted_predictions_in_the_planned_box():
    """Cycle spinning: a spectrum at column c of the planned box sits at c - s in the box moved
    by s; every shift's fit maps back to c. Two spectra give a large residual; a shift masked
    out is ignored; a shift whose fit fails voids the centre."""
    shifts = np.array([-4, 0, 4])
    centres = [20.3, None, 30.0, 25.0]
    pred = np.zeros((3, 4, *G.shape))
    for k, s in enumerate(shifts):
        pred[k, 0] = _spectral_patch([20.3 - s])
        pred[k, 1] = _spectral_patch([16.0 - s, 30.0 - s], amplitudes=(1.0, 0.6))
        pred[k, 2] = _spectral_patch([30.0 - s]) if s != 4 else 0.0  # masked out below
        pred[k, 3] = _spectral_patch([25.0 - s], amplitudes=(-1.0 if s == 4 else 1.0,))
    ok = np.ones((3, 4), bool)
    ok[2, 2] = False
    y = np.full(4, 108.0)
    spec_row0 = np.full(4, 100)
    out = shift_fits(pred, ok, y, spec_row0, shifts, G, n_rows=4)
    assert out["centre_px"][0] == pytest.approx(centres[0], abs=1e-6)
    assert out["centre_sd_px"][0] == pytest.approx(0.0, abs=1e-6)
    assert out["width_px"][0] == pytest.approx(4.0, abs=1e-6)
    assert out["residual"][0] < 1e-6
    assert out["residual"][1] > 0.06
    assert out["centre_px"][2] == pytest.approx(30.0, abs=1e-6) and out["shifts"][2] == 2
    assert np.isnan(out["centre_px"][3]) and np.isnan(out["residual"][3])
    assert out["shifts"].tolist() == [3, 3, 2, 3]


def test_shift_fits_spread_is_the_sd_of_the_shift_centres():
    shifts = np.array([-2, 0, 2])
    pred = np.stack(
        [_spectral_patch([24.0 + d - s])[None] for s, d in zip(shifts, (-1, 0, 1), strict=True)]
    )
    out = shift_fits(pred, np.ones((3, 1), bool), np.array([8.0]), np.array([0]), shifts, G, 4)
    assert out["centre_px"][0] == pytest.approx(24.0, abs=1e-6)
    assert out["centre_sd_px"][0] == pytest.approx(np.std([-1.0, 0.0, 1.0]), abs=1e-6)


def test_relative_residual_of_a_clean_and_a_double_profile():
    pos = np.broadcast_to(np.arange(48) + 0.5, (2, 48))
    one = 2.0 * np.exp(-((pos[0] - 20) ** 2) / 32) + 0.1
    two = one + 2.0 * np.exp(-((pos[0] - 36) ** 2) / 32)
    prof = np.stack([one, two])
    fit = gaussian_fit(prof, pos)
    r = relative_residual(prof, pos, fit)
    assert r[0] < 1e-8 and r[1] > 0.1


def test_denoised_fit_in_nm_and_the_residual_rule():
    cal = Calibration(560.0, 2.0)
    table = pd.DataFrame(
        {
            "x": [40.25, 50.5, 60.0],
            "spec_col0": [270, 280, 290],
            "denoised_centre_px": [10.0, 20.0, np.nan],
            "denoised_centre_sd_px": [0.5, 0.2, np.nan],
            "denoised_width_px": [4.0, 5.0, np.nan],
            "denoised_amplitude": [0.8, 0.9, np.nan],
            "denoised_residual": [0.01, 0.2, np.nan],
        }
    )
    out = denoised_fit(table, G, cal, max_residual=0.06)
    # centre at px spec_col0 + 10 - x = 239.75 from the spot: 560 + (239.75 - 230) * 2
    assert out["fit_centre"][0] == pytest.approx(579.5)
    assert out["fit_width"][0] == pytest.approx(8.0) and out["fit_spread"][0] == pytest.approx(1.0)
    assert np.isnan(out["fit_centre"][1:]).all() and np.isnan(out["fit_amplitude"][1:]).all()
    np.testing.assert_array_equal(out["fit_residual"], table["denoised_residual"])
    kept = denoised_fit(table, G, cal, max_residual=np.inf)
    assert kept["fit_centre"][1] == pytest.approx(560 + (280 + 20 - 50.5 - 230) * 2)
