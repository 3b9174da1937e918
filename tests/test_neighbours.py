"""Unlocalized neighbours: found where a box holds one, rarely added where it does not, and a
box the test cannot read keeps its readout."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from srsmlm.mle_table import Reader, joint_pass
from srsmlm.neighbours import failed_fits, likelihood_ratio_p, neighbour_readout, units_to_test
from srsmlm.readout import mle_readout
from srsmlm.stack import Stack

from .test_joint import CAL, CAM, CFG, JOINT, S_TRUE, G, _grouped, _pixels

P = JOINT.neighbour_p


def _write(path, rng, frames, b=10.0, h=34, w=360):
    """A stack of frames, each holding spectra (x, y, photons, centre offset from the
    localization's spectral box start, localized or not); the localized ones' table with the
    true centre (nm)."""
    rows, stack = [], np.empty((len(frames), h, w), np.uint16)
    for f, emitters in enumerate(frames):
        mu = np.full((h, w), b)
        for x, y, n, offset, localized in emitters:
            centre = np.floor(x) + G.spectral_offset + offset
            mu += n * np.outer(_pixels(y, 1.3, h), _pixels(centre, S_TRUE, w))
            if localized:
                truth = CAL.wavelength(np.array([centre - x]), G.spectral_offset)[0]
                spec_col0 = int(np.floor(x)) + G.spectral_offset
                rows.append(
                    {"frame": f + 1, "x": x, "y": y, "spec_col0": spec_col0, "truth": truth}
                )
        counts = rng.poisson(mu) * CAM.gain_adu_per_photon + CAM.offset_adu
        stack[f] = np.clip(np.rint(counts + rng.normal(0, CAM.read_noise_adu, mu.shape)), 0, None)
    tifffile.imwrite(path, stack, photometric="minisblack")
    return pd.DataFrame(rows).assign(crowded=False)


def _boxes(rng, n, neighbour):
    """``n`` frames of one localized spectrum (1,500 photons), with an unlocalized one of the
    same brightness 2-3.5 rows and 5-30 px away when ``neighbour``."""
    frames = []
    for _ in range(n):
        x, y, offset = 20.0 + rng.uniform(0, 1), 12.0 + rng.uniform(0, 1), rng.uniform(20, 28)
        emitters = [(x, y, 1500.0, offset, True)]
        if neighbour:
            dy = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 3.5)
            dc = rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 30.0)
            emitters.append((x, y + dy, 1500.0, offset + dc, False))
        frames.append(emitters)
    return frames


def _read(path, table, force=False):
    """The single readout of ``table`` (every box's fit taken as failed when ``force``) and
    the neighbour test of it."""
    with Stack(path) as stack:
        single = mle_readout(stack, table, G, CAL, CAM, CFG)
        before = single.assign(sc_mle_flag="bad_fit") if force else single
        units = np.arange(len(table))
        out = neighbour_readout(stack, table, before, units, G, CAL, CAM, CFG, P, 1.5)
        return single, out


@pytest.fixture(scope="module")
def with_neighbour(tmp_path_factory):
    path = tmp_path_factory.mktemp("neighbours") / "s.tif"
    table = _write(path, np.random.default_rng(21), _boxes(np.random.default_rng(22), 150, True))
    return table, *_read(path, table)


def test_a_missed_neighbour_is_found_and_the_spectrum_read_beside_it(with_neighbour):
    """Measured: 98.5 % of 200 such boxes get the extra emitter; 93 % of their centres lie
    within 2x the K+1 bound (95 % of them trusted)."""
    table, single, out = with_neighbour
    assert (single["sc_mle_flag"] != "").mean() >= 0.95  # alone, the fit fails
    kept = out["extra_emitters"] == 1
    assert kept.mean() >= 0.9, kept.mean()
    err = np.abs(out["sc_mle_nm"] - table["truth"])[kept]
    assert (err < 2 * out["sc_mle_crlb_nm"][kept]).mean() >= 0.85
    assert (out.loc[kept, "sc_mle_flag"] == "").mean() >= 0.85
    assert set(out["extra_emitters"]) <= {0, 1} and out["neighbour_tested"].all()
    # the boxes without an extra emitter keep their single readout
    cols = list(single.columns)
    pd.testing.assert_frame_equal(out.loc[~kept, cols], single.loc[~kept, cols])


def test_clean_boxes_rarely_get_an_extra_emitter(tmp_path):
    """Measured: 0 of 1,000 clean boxes forced through the test (5 at p = 1e-3); unforced,
    only the rare failed fit is tested at all."""
    table = _write(
        tmp_path / "s.tif", np.random.default_rng(31), _boxes(np.random.default_rng(32), 300, False)
    )
    single, out = _read(tmp_path / "s.tif", table)
    assert (out["neighbour_tested"] == (single["sc_mle_flag"] != "")).all()
    assert (out["extra_emitters"] > 0).mean() <= 0.02
    _, forced = _read(tmp_path / "s.tif", table, force=True)
    assert forced["neighbour_tested"].all()
    assert (forced["extra_emitters"] > 0).mean() <= 0.02


def test_same_input_same_output(tmp_path):
    table = _write(
        tmp_path / "s.tif", np.random.default_rng(41), _boxes(np.random.default_rng(42), 30, True)
    )
    first, second = _read(tmp_path / "s.tif", table)[1], _read(tmp_path / "s.tif", table)[1]
    pd.testing.assert_frame_equal(first, second)
    assert first["extra_emitters"].sum() > 0


def test_unreadable_boxes_keep_their_readout(tmp_path):
    """A localization without a row, boxes moved inward at the frame's edges: nothing raises;
    the one without a row is not tested and keeps its values."""
    frames = [
        [(20.5, 12.3, 1500.0, 24.0, True), (20.5, 15.0, 1500.0, 40.0, False)],
        [(20.5, 1.2, 1500.0, 24.0, True), (20.5, 4.0, 1500.0, 10.0, False)],  # top edge
        [(82.4, 31.5, 1500.0, 30.0, True), (82.4, 29.0, 1500.0, 15.0, False)],  # bottom right
        [(40.5, 12.3, 1500.0, 24.0, True)],
    ]
    table = _write(tmp_path / "s.tif", np.random.default_rng(51), frames)
    table.loc[3, "y"] = np.nan
    single, out = _read(tmp_path / "s.tif", table, force=True)
    assert out["neighbour_tested"].tolist() == [True, True, True, False]
    pd.testing.assert_frame_equal(
        out.iloc[[3]][single.columns], single.iloc[[3]].assign(sc_mle_flag="bad_fit")
    )
    assert np.isfinite(out["sc_mle_nm"].iloc[:3]).all()


def test_a_group_with_a_missed_neighbour(tmp_path):
    """Two localized spectra fitted jointly and a third, unlocalized, in their region.
    Measured on 100 such groups: all get the extra emitter, 95 % of the centres within 2x the
    bound."""
    rng = np.random.default_rng(61)
    frames = []
    for _ in range(20):
        x, y = 20.0 + rng.uniform(0, 1), 12.0 + rng.uniform(0, 1)
        frames.append(
            [
                (x, y, 1500.0, 20.0, True),
                (x + 10.0, y + 5.0, 1500.0, 24.0, True),
                (x, y + 2.5, 1500.0, 45.0, False),
            ]
        )
    table = _grouped(_write(tmp_path / "s.tif", rng, frames))
    assert (table["group_size"] == 2).all()
    with Stack(tmp_path / "s.tif") as stack:
        out = joint_pass(table, stack, Reader(G, CAL, CAM, CFG, JOINT), 100)
    kept = out["extra_emitters"] == 1
    assert kept.mean() >= 0.9, kept.mean()
    # the members of a group share its box
    assert (out["extra_emitters"].to_numpy()[::2] == out["extra_emitters"].to_numpy()[1::2]).all()
    err = np.abs(out["sc_mle_nm"] - table["truth"])[kept]
    assert (err < 2 * out["sc_mle_crlb_nm"][kept]).mean() >= 0.85


def test_units_and_likelihood_ratio():
    flag = np.array(["", "bad_fit", "crowded", "truncated", "dim", "not_converged", "crowded"])
    p_fit = np.array([0.5, 1e-9, 0.5, 0.5, 0.5, np.nan, 1e-5])
    failed = failed_fits(flag, p_fit, CFG.min_fit_p)
    assert failed.tolist() == [0, 1, 0, 1, 0, 1, 1]  # crowded: a failed joint fit
    eligible = np.array([True, True, True, True, True, False, True])
    units = np.array([0, 0, 1, 2, 2, 3, 4])
    assert units_to_test(failed, eligible, units).tolist() == [1, 1, 0, 1, 1, 0, 1]
    p = likelihood_ratio_p(np.array([0.0, 0.0, 0.0, np.nan]), np.array([10.0, -1.0, 0.0, 5.0]), 4)
    assert p[0] == pytest.approx(11 * np.exp(-10))  # chi-square(4) above 20: (1 + 10) e^-10
    assert p[1:].tolist() == [1.0, 1.0, 1.0]


def test_a_neighbour_on_the_localizations_row_leaves_it_crowded(tmp_path):
    """An unlocalized spectrum 1.3 rows from the localization's (less than
    min_row_separation_px): found, but nothing tells which of the two spectra is the
    localization's (a quarter of the fits take the other), so none is trusted."""
    rng = np.random.default_rng(31)
    frames = [
        [(20.0 + rng.uniform(0, 1), 12.3, 1500.0, 14.0, True), (20.0, 13.6, 1500.0, 40.0, False)]
        for _ in range(40)
    ]
    table = _write(tmp_path / "s.tif", rng, frames)
    _, out = _read(tmp_path / "s.tif", table)
    kept = out["extra_emitters"] == 1
    assert kept.mean() >= 0.8, kept.mean()
    assert (out.loc[kept, "sc_mle_flag"] != "").all()
