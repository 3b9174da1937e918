"""Maximum-likelihood fit of spectral boxes: the bound, unbiasedness, efficiency, flags."""

from pathlib import Path

import numpy as np
import pytest

from srsmlm.calibration import Calibration
from srsmlm.mle import Camera, FitSettings, box_model, crlb, fit_boxes, starts_from_data
from srsmlm.molecules import molecule_table
from srsmlm.readout import ReadoutConfig, flag_fits

SHAPE = (9, 64)
NM_PER_PX = 2.06
S_TRUE = np.hypot(18 / NM_PER_PX, 1.3)  # dye sd 18 nm and PSF 1.3 px, in px
SETTINGS = FitSettings(sigma_y=1.3, s_bounds=(5 / NM_PER_PX, 50 / NM_PER_PX))
SCMOS = Camera("scmos", 2.0, 100.0, 1.6)
EMCCD = Camera("emccd", 40.0, 100.0, 10.0)


def _params(rng, k, n=1000.0, b=10.0):
    shared = np.column_stack([rng.uniform(26, 38, k), np.full(k, S_TRUE)])
    local = np.column_stack([np.full(k, n), rng.uniform(3.5, 5.5, k), np.full(k, b)])
    return shared, local


def _camera_photons(mu, camera, rng):
    """Simulate camera counts for expected photons ``mu`` and convert them back to photons."""
    counts = rng.poisson(mu).astype(float)
    if camera.type == "emccd":
        counts = rng.gamma(counts, 1.0)
    adu = camera.gain_adu_per_photon * counts + camera.offset_adu
    adu = np.rint(adu + rng.normal(0, camera.read_noise_adu, mu.shape))
    return camera.photons(np.clip(adu, 0, 65535))


def _fit(x, y0, camera, settings=SETTINGS):
    first, _, local = starts_from_data(x, y0, settings, 18 / NM_PER_PX)
    return fit_boxes(x, first, local, settings, camera)


def _numeric_crlb(shared, local, camera, eps=1e-5):
    """CRLB of l0 from a finite-difference Jacobian of the model (independent of the kernel)."""
    theta = np.r_[shared, local]

    def model(t):
        return box_model(t[:2], t[None, 2:], SHAPE, SETTINGS.sigma_y)[0].ravel()

    mu = model(theta)
    jac = np.empty((mu.size, 5))
    for i in range(5):
        step = np.zeros(5)
        step[i] = eps * max(1.0, abs(theta[i]))
        jac[:, i] = (model(theta + step) - model(theta - step)) / (2 * step[i])
    info = jac.T @ (jac / (camera.excess_factor * (mu + camera.gamma))[:, None])
    return np.sqrt(np.linalg.inv(info)[0, 0])


@pytest.mark.parametrize("camera", [SCMOS, EMCCD, Camera("ccd", 1.0, 0.0, 0.0)])
def test_fisher_crlb_equals_finite_difference(camera):
    rng = np.random.default_rng(1)
    shared, local = _params(rng, 5)
    local[:, 0] = [300, 800, 1500, 3000, 600]
    local[:, 2] = [1, 5, 10, 20, 30]
    shared[4, 0] = 60.0  # truncated by the box edge: the bound grows, the formula holds
    got = crlb(shared, local, SHAPE, SETTINGS, camera)
    want = [_numeric_crlb(shared[i], local[i], camera) for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_crlb_limits():
    """No background: s / sqrt(N) (plus pixelation) for a wide box; a known width lowers it."""
    big = (41, 200)
    shared = np.array([[100.0, 6.0]])
    local = np.array([[1e4, 20.0, 1e-9]])
    cam = Camera("ccd", 1.0, 0.0, 0.0)
    settings = FitSettings(sigma_y=1.3, s_bounds=(1, 30))
    got = crlb(shared, local, big, settings, cam)[0]
    assert got == pytest.approx(np.sqrt((6.0**2 + 1 / 12) / 1e4), rel=0.02)
    shared, local = _params(np.random.default_rng(0), 1)
    shared[0, 0] = 58.0
    fixed = FitSettings(sigma_y=1.3, s_bounds=SETTINGS.s_bounds, fixed_s=S_TRUE)
    assert (
        crlb(shared, local, SHAPE, fixed, SCMOS)[0] < crlb(shared, local, SHAPE, SETTINGS, SCMOS)[0]
    )


@pytest.mark.parametrize("camera", [SCMOS, EMCCD])
def test_mle_unbiased_and_at_the_bound(camera):
    rng = np.random.default_rng(2)
    k = 2000
    shared, local = _params(rng, k)
    x = _camera_photons(box_model(shared, local, SHAPE, 1.3), camera, rng)
    fit = _fit(x, local[:, 1] + rng.normal(0, 0.05, k), camera)
    assert fit["converged"].all()
    err_nm = (fit["l0"] - shared[:, 0]) * NM_PER_PX
    bound_nm = crlb(shared, local, SHAPE, SETTINGS, camera) * NM_PER_PX
    assert abs(err_nm.mean()) < 0.1
    rmse, bound = np.sqrt(np.mean(err_nm**2)), np.sqrt(np.mean(bound_nm**2))
    assert rmse == pytest.approx(bound, rel=0.10)
    # the per-fit bound (at the fitted parameters) is calibrated
    fit_bound = np.sqrt(fit["var_l0"]) * NM_PER_PX
    assert 0.93 <= np.mean(np.abs(err_nm) <= 2 * fit_bound) <= 0.97
    assert np.median(fit["N"]) == pytest.approx(1000, rel=0.05)
    assert np.median(fit["b"]) == pytest.approx(10, rel=0.05)


def test_fixed_width_fits_keep_the_width():
    rng = np.random.default_rng(3)
    shared, local = _params(rng, 200)
    x = rng.poisson(box_model(shared, local, SHAPE, 1.3)).astype(float)
    fixed = FitSettings(sigma_y=1.3, s_bounds=SETTINGS.s_bounds, fixed_s=S_TRUE)
    fit = _fit(x, local[:, 1], Camera("ccd", 1.0, 0.0, 0.0), fixed)
    assert np.all(fit["s"] == S_TRUE)
    assert np.all(np.isfinite(fit["var_l0"])) and np.all(fit["var_s"] == 0)


def _readout_config(**kw):
    base = dict(
        margin_px=8,
        rows=9,
        settings=SETTINGS,
        s_start=18 / NM_PER_PX,
        min_fit_p=0.001,
        max_crlb_nm=2.5,
        edge_sd=1.0,
        max_row_shift_px=0.5,
        crowding_rows_px=3.0,
        molecule_estimate="joint",
        nm_per_px=NM_PER_PX,
    )
    return ReadoutConfig(**(base | kw))


def test_overlapping_spectrum_is_flagged_bad_fit():
    """A second, unlocalized spectrum of equal brightness 1.5-3 rows away and 10-30 nm apart."""
    rng = np.random.default_rng(4)
    k = 500
    shared, local = _params(rng, k)
    other_shared = shared.copy()
    other_shared[:, 0] += rng.choice([-1, 1], k) * rng.uniform(5, 15, k)
    other_local = local.copy()
    other_local[:, 1] += rng.choice([-1, 1], k) * rng.uniform(1.5, 3.0, k)
    other_local[:, 2] = 0.0
    mu = box_model(shared, local, SHAPE, 1.3) + box_model(other_shared, other_local, SHAPE, 1.3)
    x = _camera_photons(mu, SCMOS, rng)
    fit = _fit(x, local[:, 1], SCMOS)
    flag = flag_fits(fit, SHAPE[1], local[:, 1], np.zeros(k, bool), _readout_config())
    assert np.mean(flag == "bad_fit") >= 0.9
    # the same boxes without the second spectrum are trusted
    clean = _camera_photons(box_model(shared, local, SHAPE, 1.3), SCMOS, rng)
    fit = _fit(clean, local[:, 1], SCMOS)
    flag = flag_fits(fit, SHAPE[1], local[:, 1], np.zeros(k, bool), _readout_config())
    assert np.mean(flag == "") >= 0.97


def test_flags_truncated_dim_crowded_and_order():
    rng = np.random.default_rng(5)
    shared, local = _params(rng, 4)
    shared[0, 0] = 2.0  # cut by the left edge
    local[1, 0] = 120.0  # dim: a bound of several nm
    x = _camera_photons(box_model(shared, local, SHAPE, 1.3), SCMOS, rng)
    fit = _fit(x, local[:, 1], SCMOS)
    crowd = np.array([True, False, False, True])
    flag = flag_fits(fit, SHAPE[1], local[:, 1], crowd, _readout_config())
    assert list(flag) == ["truncated", "dim", "", "crowded"]
    fit["converged"][2] = False
    flag = flag_fits(fit, SHAPE[1], local[:, 1], crowd, _readout_config())
    assert flag[2] == "not_converged"


def test_row_shift_is_a_bad_fit():
    rng = np.random.default_rng(6)
    shared, local = _params(rng, 50)
    x = _camera_photons(box_model(shared, local, SHAPE, 1.3), SCMOS, rng)
    fit = _fit(x, local[:, 1], SCMOS)
    flag = flag_fits(fit, SHAPE[1], local[:, 1] + 1.0, np.zeros(50, bool), _readout_config())
    assert np.all(flag == "bad_fit")


def test_joint_fit_reaches_crlb_over_sqrt_k():
    rng = np.random.default_rng(7)
    groups, k = 300, 10
    shared, _ = _params(rng, groups)
    local = np.column_stack(
        [
            rng.uniform(600, 1400, groups * k),
            rng.uniform(3.5, 5.5, groups * k),
            np.full(groups * k, 10.0),
        ]
    )
    offsets = rng.integers(-2, 3, groups * k).astype(float)  # boxes cut at different columns
    per_box = np.repeat(shared, k, axis=0)
    per_box[:, 0] -= offsets
    x = rng.poisson(box_model(per_box, local, SHAPE, 1.3)).astype(float)
    cam = Camera("ccd", 1.0, 0.0, 0.0)
    first, _, start_local = starts_from_data(x, local[:, 1], SETTINGS, 18 / NM_PER_PX)
    single = fit_boxes(x, first, start_local, SETTINGS, cam)
    bounds = np.arange(0, groups * k + 1, k)
    start = np.column_stack(
        [np.add.reduceat(single["l0"] + offsets, bounds[:-1]) / k, np.full(groups, 8.0)]
    )
    joint = fit_boxes(x, start, start_local, SETTINGS, cam, groups=bounds, offsets=offsets)
    assert joint["converged"].all()
    err = joint["l0"] - shared[:, 0]
    single_bound = crlb(per_box, local, SHAPE, SETTINGS, cam).reshape(groups, k)
    expected = np.sqrt(np.mean(1 / (1 / single_bound**2).sum(1)))  # ~ CRLB / sqrt(K)
    assert np.sqrt(np.mean(err**2)) == pytest.approx(expected, rel=0.12)
    assert np.sqrt(np.mean(joint["var_l0"])) == pytest.approx(expected, rel=0.05)


def test_camera_validation_and_conversion():
    with pytest.raises(ValueError, match="camera.type"):
        Camera("cmos", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="gain"):
        Camera("scmos", 0.0, 0.0, 1.0)
    cam = Camera.from_config(
        {"type": "scmos", "gain_adu_per_photon": 2.0, "offset_adu": 100, "read_noise_adu": 1.6}
    )
    np.testing.assert_allclose(cam.photons(np.array([100, 120], np.uint16)), [0.0, 10.0])
    assert cam.gamma == pytest.approx((1.6**2 + 1 / 12) / 4)
    assert EMCCD.excess_factor == 2.0 and EMCCD.gamma == 0.0


def test_fit_is_deterministic_and_handles_empty_input():
    rng = np.random.default_rng(8)
    shared, local = _params(rng, 64)
    x = rng.poisson(box_model(shared, local, SHAPE, 1.3)).astype(float)
    a, b = _fit(x, local[:, 1], SCMOS), _fit(x, local[:, 1], SCMOS)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    empty = fit_boxes(np.zeros((0, *SHAPE)), np.zeros((0, 2)), np.zeros((0, 3)), SETTINGS, SCMOS)
    assert all(len(v) == 0 for v in empty.values())


def _molecule_cfg():
    import yaml

    config = Path(__file__).parents[1] / "config/config.yaml"
    section = yaml.safe_load(config.read_text())["spectra"] | {"molecule_estimate": "mean"}
    cal = Calibration(560.0, NM_PER_PX)
    return ReadoutConfig.from_config(section, cal), cal


def test_molecule_table_inverse_variance_mean_and_consistency():
    import pandas as pd
    from scipy.stats import chi2

    from srsmlm.geometry import Geometry

    cfg, cal = _molecule_cfg()
    spectra = pd.DataFrame(
        {
            "cluster": [0, 0, 0, 1, -1],
            "frame": [1, 2, 3, 7, 9],
            "x": [10.0, 10.2, 10.1, 50.0, 80.0],
            "y": [5.0, 5.0, 5.0, 6.0, 7.0],
            "sc_mle_nm": [600.0, 604.0, 650.0, 610.0, 620.0],
            "sc_mle_crlb_nm": [1.0, 2.0, 1.0, 1.5, 1.0],
            "sc_mle_flag": ["", "dim", "bad_fit", "", ""],
            "group_size": 1,
        }
    )
    out = molecule_table(spectra, None, Geometry(16, 16, 48, 230), cal, cfg).set_index("cluster")
    assert list(out.index) == [0, 1]  # the localization outside runs is no molecule
    w = np.array([1.0, 0.25])  # bad_fit does not enter; dim does
    expected = (w * [600.0, 604.0]).sum() / w.sum()
    assert out.loc[0, "n_frames"] == 3 and out.loc[0, "n_used"] == 2
    assert out.loc[0, "sc_nm"] == pytest.approx(expected)
    assert out.loc[0, "sc_err_nm"] == pytest.approx(1 / np.sqrt(w.sum()))
    chi = ((600.0 - expected) / 1.0) ** 2 + ((604.0 - expected) / 2.0) ** 2
    assert out.loc[0, "consistency_p"] == pytest.approx(chi2.sf(chi, 1))
    assert out.loc[1, "sc_nm"] == 610.0 and np.isnan(out.loc[1, "consistency_p"])  # one frame


def test_molecule_table_without_runs_is_empty_not_an_error():
    import pandas as pd

    from srsmlm.geometry import Geometry

    cfg, cal = _molecule_cfg()
    spectra = pd.DataFrame(
        {
            "cluster": [-1, -1],
            "frame": [1, 2],
            "x": [1.0, 2.0],
            "y": [1.0, 2.0],
            "sc_mle_nm": [600.0, 610.0],
            "sc_mle_crlb_nm": [1.0, 1.0],
            "sc_mle_flag": ["", ""],
            "group_size": 1,
        }
    )
    out = molecule_table(spectra, None, Geometry(16, 16, 48, 230), cal, cfg)
    assert len(out) == 0 and {"sc_nm", "consistency_p", "n_used"} <= set(out.columns)


def test_frames_fitted_with_a_neighbour_join_the_molecule_by_inverse_variance():
    """A run's joint estimate combines its multi-frame fit (lone frames) with the frames fitted
    jointly with a neighbour (their own box holds another spectrum); a run with no lone frame
    gets those frames' mean."""
    import pandas as pd

    from srsmlm.geometry import Geometry

    cfg, cal = _molecule_cfg()
    spectra = pd.DataFrame(
        {
            "cluster": [0, 0, 0, 1, 1],
            "frame": [1, 2, 3, 7, 8],
            "x": [10.0, 10.0, 10.0, 50.0, 50.0],
            "y": [5.0, 5.0, 5.0, 6.0, 6.0],
            "sc_mle_nm": [600.0, 602.0, 606.0, 610.0, 614.0],
            "sc_mle_crlb_nm": [1.0, 1.0, 2.0, 1.0, 1.0],
            "sc_mle_flag": ["", "", "", "", "dim"],
            "group_size": [1, 1, 2, 3, 2],
        }
    )
    joint = pd.DataFrame(
        {"centre_px": [10.0], "var_px2": [0.25], "p_fit": [0.5], "converged": [True]},
        index=pd.Index([0], name="cluster"),
    )
    g = Geometry(16, 16, 48, 230)
    out = molecule_table(spectra, joint, g, cal, cfg).set_index("cluster")
    lone = cal.wavelength(np.array([0.0]), 230)[0]  # the multi-frame fit's centre, 0 px from x
    w_lone = 1.0 / (0.5 * cfg.nm_per_px) ** 2
    expected = (w_lone * lone + 606.0 / 4.0) / (w_lone + 0.25)
    assert out.loc[0, "sc_joint_nm"] == pytest.approx(expected)
    assert out.loc[0, "sc_joint_err_nm"] == pytest.approx(1 / np.sqrt(w_lone + 0.25))
    assert out.loc[1, "sc_joint_nm"] == pytest.approx(612.0)  # no lone frame: the two frames
    assert out.loc[1, "sc_joint_err_nm"] == pytest.approx(1 / np.sqrt(2.0))
