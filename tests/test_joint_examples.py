"""The joint fits drawn for the report: the drawn model is the fit's, the choice is seeded."""

import numpy as np
import pandas as pd

from srsmlm.joint_examples import (
    DRAWN_COLUMNS,
    choose_groups,
    joint_examples,
    read_examples,
    write_examples,
)
from srsmlm.overlaps import Regions, joint_readout, region_model
from srsmlm.plots.joint import example_caption, joint_fit_examples, load_examples, pick_rows
from srsmlm.stack import Stack

from .test_joint import CAL, CAM, CFG, JOINT, G, _grouped, _pairs, _stack

WIDTH = G.spectral_width + 2 * CFG.margin_px


def _readout(tmp_path, seed=4, frames=None):
    rng = np.random.default_rng(seed)
    frames = frames or _pairs(rng, 12, 2, 10, 1.0)
    table = _grouped(_stack(tmp_path / "s.tif", rng, frames))
    with Stack(tmp_path / "s.tif") as stack:
        out = joint_readout(stack, table, G, CAL, CAM, CFG, JOINT)
    return table, out


def test_region_model_puts_each_spectrum_where_the_values_say():
    cut = Regions(
        data=np.zeros((1, 14, 70)),
        regions=np.array([[1, 3, 12, 64]]),
        origin=np.array([[10, 100]]),
        starts=np.array([0, 2]),
        cols=np.array([0.0, 20.0]),
    )
    fit = {
        "N": np.array([1000.0, 3000.0]),
        "l0": np.array([20.0, 20.5]),
        "s": np.array([5.0, 5.0]),
        "y0": np.array([5.0, 6.5]),
        "b": np.array([2.0]),
    }
    model = region_model(cut, fit, 1.3)[0]
    assert model.shape == (14, 70)
    inside = model[1:13, 3:67]
    assert abs(inside.sum() - (4000 + 2.0 * 12 * 64)) < 1  # all photons in the region
    # the brighter spectrum peaks at its row (6.5 -> pixel 6) and column (20 + 20.5 -> 40)
    assert np.unravel_index(np.argmax(inside), inside.shape) == (6, 40)
    assert model.min() >= 2.0


def test_drawn_model_explains_the_data_of_converged_joint_fits(tmp_path):
    """The model drawn from the readout's values is the fitted model: Pearson residuals of
    groups whose fit passes the deviance test have mean square about 1 (a model half a pixel
    off would leave the spectra's edges in the residual)."""
    bright = [
        [(20.3 + k / 7, 12.2 + k / 5, 8000.0), (30.1 + k / 3, 14.6, 8000.0)] for k in range(4)
    ]
    table, out = _readout(tmp_path, frames=bright)
    readout = out.assign(mle_joint=True, extra_emitters=0)
    with Stack(tmp_path / "s.tif") as stack:
        ex = joint_examples(
            stack,
            table["frame"].to_numpy(),
            readout,
            table["group"].to_numpy(),
            CFG,
            WIDTH,
            CAM,
            np.random.default_rng(0),
        )
    assert list(ex["group_size"]) == [2, 2]
    for k, (h, w) in enumerate(ex["shape"]):
        data, model = ex["data"][k, :h, :w], ex["model"][k, :h, :w]
        spectra = model > np.min(model) + 5.0  # where the spectra are, not the background
        chi2 = np.mean((data - model)[spectra] ** 2 / model[spectra])
        assert 0.6 < chi2 < 1.6, chi2
        assert np.isnan(ex["data"][k, h:, :]).all() and np.isnan(ex["data"][k, :, w:]).all()
    assert len(ex["member_nm"]) == 4 and set(ex["member_example"]) == {0, 1}


def _fake_readout(sizes, bad=()):
    groups = np.repeat(np.arange(len(sizes)), sizes)
    readout = pd.DataFrame({c: np.ones(len(groups)) for c in DRAWN_COLUMNS})
    readout["extra_emitters"] = 0
    readout["mle_joint"] = True
    for g, column, value in bad:
        readout.loc[groups == g, column] = value
    return readout, groups


def test_choose_groups_by_size_class_seeded_and_only_drawable_ones():
    sizes = [2, 3, 2, 4, 5, 2, 3, 2]
    readout, groups = _fake_readout(sizes)
    picked = choose_groups(readout, groups, np.random.default_rng(1), per_size=2)
    assert [len(p) for p in picked][:2] == [2, 2]
    assert [len(np.unique(groups[p])) for p in picked] == [1] * 6
    assert sorted(len(p) for p in picked[4:]) == [4, 5]
    again = choose_groups(readout, groups, np.random.default_rng(1), per_size=2)
    assert all((a == b).all() for a, b in zip(picked, again, strict=True))
    # a group with an extra emitter, a failed joint fit or a missing value is never drawn
    bad = [(0, "extra_emitters", 1), (2, "mle_joint", False), (5, "mle_centre_px", np.nan)]
    readout, groups = _fake_readout(sizes, bad)
    for seed in range(5):
        picked = choose_groups(readout, groups, np.random.default_rng(seed), per_size=2)
        pairs = {int(groups[p[0]]) for p in picked if len(p) == 2}
        assert pairs == {7}
    assert choose_groups(readout.iloc[:0], groups[:0], np.random.default_rng(0)) == []


def test_examples_round_trip_and_figure(tmp_path):
    table, out = _readout(tmp_path)
    readout = out.assign(mle_joint=True, extra_emitters=0)
    with Stack(tmp_path / "s.tif") as stack:
        args = (table["frame"].to_numpy(), readout, table["group"].to_numpy(), CFG, WIDTH, CAM)
        ex = joint_examples(stack, *args, np.random.default_rng(3))
        same = joint_examples(stack, *args, np.random.default_rng(3))
    write_examples(ex, tmp_path / "a.npz")
    write_examples(same, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = read_examples(tmp_path / "a.npz")
    assert set(back) == set(ex)
    for k, v in ex.items():
        assert np.array_equal(back[k], v, equal_nan=v.dtype.kind == "f"), k
    loaded = load_examples({"acq": tmp_path / "a.npz", "gone": tmp_path / "missing.npz"})
    assert len(loaded) == 2 and loaded[0]["data"].shape == tuple(ex["shape"][0])
    assert "acq frame" in example_caption(loaded[0]) and "nm" in example_caption(loaded[0])
    fig = joint_fit_examples({"acq": tmp_path / "a.npz"})
    assert len(fig.axes) == 6
    assert len(joint_fit_examples({}).axes) == 1  # a note, not a failure


def test_pick_rows_takes_each_size_class_in_order():
    ex = [{"group_size": k} for k in (3, 2, 5, 2, 2, 4, 3)]
    assert [e["group_size"] for e in pick_rows(ex, 2)] == [2, 2, 3, 3, 5, 4]


def test_no_drawable_group_gives_empty_examples_and_a_note(tmp_path):
    table, out = _readout(tmp_path)
    readout = out.assign(mle_joint=False, extra_emitters=0)  # every joint fit failed
    with Stack(tmp_path / "s.tif") as stack:
        args = (table["frame"].to_numpy(), readout, table["group"].to_numpy(), CFG, WIDTH, CAM)
        ex = joint_examples(stack, *args, np.random.default_rng(0))
    assert ex["data"].shape[0] == 0 and len(ex["member_nm"]) == 0
    write_examples(ex, tmp_path / "e.npz")
    fig = joint_fit_examples({"acq": tmp_path / "e.npz"})
    assert len(fig.axes) == 1
