"""Joint fit of overlapping spectra: calibrated bounds, honest flags, groups, determinism."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy.special import ndtr

from srsmlm.calibration import Calibration
from srsmlm.geometry import Geometry
from srsmlm.joint import bounds_at, fit_groups
from srsmlm.mle import Camera, FitSettings, crlb
from srsmlm.mle_table import Reader, joint_pass
from srsmlm.overlaps import JointConfig, joint_readout, overlap_groups
from srsmlm.readout import ReadoutConfig
from srsmlm.stack import Stack

from .conftest import section

G = Geometry(16, 16, 48, 230)
NM_PER_PX = 2.06
CAL = Calibration(600.0, NM_PER_PX)
CAM = Camera("scmos", 2.0, 100.0, 1.6)
S_TRUE = np.hypot(18 / NM_PER_PX, 1.3)  # dye sd 18 nm and PSF 1.3 px, in px
CFG = ReadoutConfig(
    margin_px=8,
    rows=9,
    settings=FitSettings(1.3, (5 / NM_PER_PX, 50 / NM_PER_PX)),
    s_start=18 / NM_PER_PX,
    min_fit_p=0.001,
    max_crlb_nm=2.5,
    edge_sd=1.0,
    max_row_shift_px=0.5,
    crowding_rows_px=3.0,
    molecule_estimate="joint",
    nm_per_px=NM_PER_PX,
)
#: every localization whose readout box overlaps another's (9 rows) is fitted with it
JOINT = JointConfig.from_config(
    section(
        "spectra", max_group_size=4, group_rows_px=9.0, min_row_separation_px=1.5, neighbour_p=1e-4
    )
)


def _pixels(m, s, n):
    return np.diff(ndtr((np.arange(n + 1) - m) / s))


def _stack(path, rng, frames, b=10.0, h=34, w=360):
    """Write a stack of frames, each holding the spectra of ``frames[f]`` (rows of x, y,
    photons), and return their localization table with the true centre in nm."""
    rows, stack = [], np.empty((len(frames), h, w), np.uint16)
    for f, emitters in enumerate(frames):
        mu = np.full((h, w), b)
        for x, y, n in emitters:
            centre = np.floor(x) + G.spectral_offset + rng.uniform(14, 34)
            mu += n * np.outer(_pixels(y, 1.3, h), _pixels(centre, S_TRUE, w))
            truth = CAL.wavelength(np.array([centre - x]), G.spectral_offset)[0]
            spec_col0 = int(np.floor(x)) + G.spectral_offset
            signal = n * np.exp(rng.normal(0, 0.1))  # the localizer's estimate, +-10 %
            rows.append(
                {"frame": f + 1, "x": x, "y": y, "spec_col0": spec_col0, "signal": signal}
                | {"truth": truth}
            )
        counts = rng.poisson(mu) * CAM.gain_adu_per_photon + CAM.offset_adu
        stack[f] = np.clip(np.rint(counts + rng.normal(0, CAM.read_noise_adu, mu.shape)), 0, None)
    tifffile.imwrite(path, stack)
    return pd.DataFrame(rows)


def _grouped(table, joint=JOINT):
    group = overlap_groups(table, G, CFG, joint)
    return table.assign(group=group, group_size=np.bincount(group)[group])


def _pairs(rng, n, dy, dc, ratio):
    """``n`` frames of two localizations ``dc`` px apart in x and ``dy`` rows apart."""
    out = []
    for _ in range(n):
        x, y = 20.0 + rng.uniform(0, 1), 12.0 + rng.uniform(0, 1)
        out.append([(x, y, 1500.0), (x + dc, y + dy, 1500.0 * ratio)])
    return out


def _pair_grid(path, per_cell, seed):
    """Two spectra at row distances 0-3 px and centre distances 0-30 px, equal and 1:3
    brightness, ``per_cell`` frames each: the joint readout beside the truth and the cell."""
    rng = np.random.default_rng(seed)
    cells = [
        (dy, dc, ratio)
        for ratio in (1.0, 3.0)
        for dy in (0, 1, 2, 3)
        for dc in (0, 5, 10, 20, 30)
        if dy or dc
    ]
    frames, labels = [], []
    for cell in cells:
        frames += _pairs(rng, per_cell, *cell)
        labels += [cell] * (2 * per_cell)
    table = _grouped(_stack(path, rng, frames))
    assert (table["group_size"] == 2).all()
    with Stack(path) as stack:
        out = joint_readout(stack, table, G, CAL, CAM, CFG, JOINT)
    cell = pd.DataFrame(labels, columns=["dy", "dc", "ratio"])
    return pd.concat([table, out.drop(columns="group_size"), cell], axis=1)


@pytest.fixture(scope="module")
def pair_grid(tmp_path_factory):
    return _pair_grid(tmp_path_factory.mktemp("joint") / "pairs.tif", 60, 11)


def _check_at_the_bound(d, by, min_n):
    """Trusted centres: 2x-bound coverage 0.93-0.97 overall and RMSE within 15 % of the bound
    in every group ``by`` with at least ``min_n`` trusted values two or more rows apart; one row
    apart (spectra assigned by rows and photons) within 40 % and 90 % within 2x (measured:
    equal brightness 30 px apart 1.35, 94 %)."""
    trusted = d["sc_mle_flag"].fillna("") == ""
    err = d["sc_mle_nm"] - d["truth"]
    bound = d["sc_mle_crlb_nm"]
    assert (bound[trusted] <= CFG.max_crlb_nm).all()
    coverage = (np.abs(err[trusted]) < 2 * bound[trusted]).mean()
    assert 0.93 <= coverage <= 0.97, coverage
    for key, part in d[trusted].groupby(by):
        if len(part) >= min_n:
            e = part["sc_mle_nm"] - part["truth"]
            ratio = np.sqrt(np.mean(e**2) / np.mean(part["sc_mle_crlb_nm"] ** 2))
            apart = part["dy"].min() >= 2
            assert ratio <= (1.15 if apart else 1.4), (key, ratio)
            if not apart:
                assert (np.abs(e) < 2 * part["sc_mle_crlb_nm"]).mean() >= 0.9, key
    # two rows apart or more, every pair is read (the rows tell the spectra apart)
    assert trusted[d["dy"] >= 2].mean() >= 0.95


def test_joint_fit_is_at_its_bound_where_it_trusts_a_value(pair_grid):
    """By row distance and brightness (about 500 values each: the RMSE to +-3 %)."""
    _check_at_the_bound(pair_grid, ["dy", "ratio"], 200)


@pytest.mark.slow
def test_joint_fit_is_at_its_bound_in_every_cell(tmp_path):
    """Cell by cell (row distance, centre distance, brightness; 400 frames each)."""
    _check_at_the_bound(_pair_grid(tmp_path / "pairs.tif", 400, 12), ["dy", "dc", "ratio"], 300)


def test_bound_grows_as_the_spectra_approach(pair_grid):
    """Closer rows or closer spectra cost information: the joint bound says so."""
    d = pair_grid[(pair_grid["ratio"] == 1.0) & (pair_grid["sc_mle_flag"] != "crowded")]
    median = d.groupby(["dy", "dc"])["sc_mle_crlb_nm"].median()
    assert median[(2, 0)] > median[(3, 0)] > median[(3, 30)]
    assert median[(2, 5)] > median[(2, 20)] > median[(2, 30)]


def test_spectra_on_one_row_are_trusted_only_where_rows_and_photons_tell_them_apart(pair_grid):
    """Closer than min_row_separation_px the likelihood cannot say which spectrum is whose:
    equal spectra on one row that overlap stay flagged; one row apart at 1:3 brightness the rows
    and photons assign some, and those are read right."""
    trusted = pair_grid["sc_mle_flag"].fillna("") == ""
    same = (pair_grid["dy"] == 0) & (pair_grid["ratio"] == 1.0) & (pair_grid["dc"] <= 20)
    assert trusted[same].mean() <= 0.05
    told = (pair_grid["dy"] == 1) & (pair_grid["ratio"] == 3.0)
    assert trusted[told].mean() >= 0.15
    d = pair_grid[told & trusted]
    assert (np.abs(d["sc_mle_nm"] - d["truth"]) < 2 * d["sc_mle_crlb_nm"]).mean() >= 0.88


def test_close_spectra_without_a_signal_are_all_flagged(tmp_path):
    """No signal column: nothing can tell a merged fit, so no close pair is trusted."""
    rng = np.random.default_rng(5)
    table = _grouped(_stack(tmp_path / "s.tif", rng, _pairs(rng, 40, 1, 10, 3.0)))
    with Stack(tmp_path / "s.tif") as stack:
        out = joint_readout(stack, table.drop(columns="signal"), G, CAL, CAM, CFG, JOINT)
    assert (out["sc_mle_flag"] != "").all()
    assert (out["sc_mle_flag"] == "crowded").any()


def test_overlap_groups_are_connected_components():
    table = pd.DataFrame(
        {
            "frame": [1, 1, 1, 1, 2, 1],
            "x": [20.0, 30.0, 40.0, 200.0, 30.0, 25.0],
            "y": [10.0, 16.0, 22.0, 10.0, 16.0, np.nan],
        }
    ).assign(spec_col0=lambda t: np.floor(t["x"]).astype(int) + 230)
    g = overlap_groups(table, G, CFG, JOINT)
    # 0-1 and 1-2 overlap (6 rows apart < 9), 0-2 do not: one chain; 3 is 180 px away; 4 is in
    # another frame; 5 has no y (non-finite coordinates pair with nothing)
    assert g[0] == g[1] == g[2]
    assert len({g[0], g[3], g[4], g[5]}) == 4


def test_group_above_the_cap_is_flagged_crowded_never_dropped(tmp_path):
    rng = np.random.default_rng(3)
    crowd = [(20.0 + 12 * k, 10.0 + 3 * k, 1500.0) for k in range(5)]
    pair = [(20.0, 10.0, 1500.0), (30.0, 15.0, 1500.0)]
    table = _grouped(_stack(tmp_path / "s.tif", rng, [crowd, pair]))
    assert table["group_size"].tolist() == [5] * 5 + [2] * 2
    with Stack(tmp_path / "s.tif") as stack:
        joint = joint_pass(table, stack, Reader(G, CAL, CAM, CFG, JOINT), 100)
    assert list(joint.index) == [5, 6]  # the five above the cap keep their single fits
    assert (joint["group_size"] == 2).all()
    cap5 = replace(JOINT, max_group_size=5)
    with Stack(tmp_path / "s.tif") as stack:
        joint = joint_pass(table, stack, Reader(G, CAL, CAM, CFG, cap5), 100)
    assert list(joint.index) == list(range(7)) and (joint["group_size"].iloc[:5] == 5).all()


def test_same_input_same_values_any_threads_and_blocks(tmp_path):
    rng = np.random.default_rng(5)
    table = _grouped(_stack(tmp_path / "s.tif", rng, _pairs(rng, 40, 2, 10, 1.0)))
    threaded = ReadoutConfig(
        **{**CFG.__dict__, "settings": FitSettings(1.3, CFG.settings.s_bounds, threads=2)}
    )
    with Stack(tmp_path / "s.tif") as stack:
        a = joint_pass(table, stack, Reader(G, CAL, CAM, CFG, JOINT), 1000)
        b = joint_pass(table, stack, Reader(G, CAL, CAM, threaded, JOINT), 7)
    pd.testing.assert_frame_equal(a, b)


def test_bounds_at_the_fit_are_the_fits_bounds():
    """``bounds_at`` the parameters a joint fit converged to gives the bounds the fit reports,
    and for one emitter the single fit's bound (:func:`srsmlm.mle.crlb`) at the same values."""
    rng = np.random.default_rng(8)
    h, w = 12, 70
    sizes = [2, 3, 1]
    true = [
        [(1500.0, 20.0, 11.0, 5.0), (900.0, 32.0, 5.5, 7.0)],
        [(1500.0, 25.0, 20.0, 4.0), (1200.0, 38.0, 30.0, 6.5), (700.0, 50.0, 40.0, 9.0)],
        [(2000.0, 30.0, 0.0, 6.0)],
    ]  # (N, region column of the centre, own box column, row) per emitter
    data, cols, start = np.empty((len(sizes), h, w)), [], []
    for g, group in enumerate(true):
        mu = np.full((h, w), 10.0)
        for n, centre, col, y in group:
            mu += n * np.outer(_pixels(y, 1.3, h), _pixels(centre, S_TRUE, w))
            cols.append(col)
            start.append((n * 1.1, centre - col + 0.7, S_TRUE * 0.9, y + 0.2, 11.0))
        data[g] = rng.poisson(mu) + rng.normal(0, CAM.read_noise_adu / 2, mu.shape)
    starts = np.r_[0, np.cumsum(sizes)]
    shapes = np.tile([h, w], (len(sizes), 1))
    regions = np.column_stack([np.zeros((len(sizes), 2), int), shapes])
    cols, start = np.array(cols), np.array(start)
    fit = fit_groups(data, regions, starts, cols, start, 2.0, (-10.0, 80.0), CFG.settings, CAM)
    assert fit["converged"].all() and (fit["iterations"] > 1).all()
    at = np.column_stack([fit["N"], fit["l0"], fit["s"], fit["y0"]])
    got = bounds_at(shapes, starts, cols, at, fit["b"], CFG.settings, CAM)
    for key in ("var_l0", "var_N", "var_y0"):
        np.testing.assert_allclose(got[key], fit[key], rtol=1e-9)
    # at the start, not at the fit, the bounds differ: the parameters were not moved
    moved = bounds_at(shapes, starts, cols, start[:, :4], start[starts[:-1], 4], CFG.settings, CAM)
    assert not np.allclose(moved["var_l0"], fit["var_l0"], rtol=1e-3)
    single = crlb(
        np.array([[fit["l0"][-1], fit["s"][-1]]]),
        np.array([[fit["N"][-1], fit["y0"][-1], fit["b"][-1]]]),
        (h, w),
        CFG.settings,
        CAM,
    )
    np.testing.assert_allclose(single**2, fit["var_l0"][-1], rtol=1e-9)
