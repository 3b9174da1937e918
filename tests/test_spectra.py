import numpy as np
import pandas as pd
import pytest

from srsmlm.errors import InputError
from srsmlm.geometry import Geometry
from srsmlm.patches import place_boxes
from srsmlm.simulate import _render_frame
from srsmlm.spectra import (
    Calibration,
    centroid,
    classify_dyes,
    fit_calibration,
    gaussian_fit,
    precision_by_signal,
    profile_rows,
    readout,
)

from .conftest import tiny_params

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
    r = readout(patch[None], table, G, cal, n_rows=16)
    assert r["sc"][0] == pytest.approx(true_nm, abs=0.5)
    assert r["fit_centre"][0] == pytest.approx(true_nm, abs=0.5)
    assert r["fit_width"][0] == pytest.approx(np.hypot(12.0, 1.3 * p.nm_per_px), rel=0.05)


def test_calibration_fit_recovers_line(tmp_path):
    d = np.array([239.0, 269.0, 319.0, 250.0])
    lam = 560 + (d - 230) * 2.06 + np.array([0.1, -0.1, 0.05, -0.05])
    pd.DataFrame({"distance_px": d, "wavelength_nm": lam}).to_csv(
        tmp_path / "beads.csv", index=False
    )
    cal = fit_calibration(tmp_path / "beads.csv", 230)
    assert cal.nm_per_px == pytest.approx(2.06, abs=0.01)
    assert cal.wavelength_at_offset_nm == pytest.approx(560, abs=0.3)
    assert cal.residual_rms_nm < 0.1 and cal.n_points == 4
    assert cal.wavelength(np.array([230.0]), 230)[0] == pytest.approx(cal.wavelength_at_offset_nm)
    with pytest.raises(InputError, match="distance_px"):
        fit_calibration(pd.DataFrame({"d": [1, 2]}), 230)
    with pytest.raises(InputError, match="not found"):
        fit_calibration(tmp_path / "none.csv", 230)


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
