"""Model targets: the leave-one-out joint fit of a run's other frames, drawn without noise."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import tifffile

from srsmlm.boxes import at_positions, place_boxes
from srsmlm.clustering import cluster_stage
from srsmlm.fusion import clean_target
from srsmlm.geometry import Geometry
from srsmlm.localizations import filter_stage
from srsmlm.mle import box_model
from srsmlm.patches import prepare_patches
from srsmlm.plan import PatchParams
from srsmlm.stack import Stack
from srsmlm.targets import (
    READOUT_COLUMNS,
    SPECTRA_KEYS,
    TargetModel,
    _blocks,
    _groups,
    leave_one_out_fits,
    render_targets,
    run_readout,
)

from .conftest import section

G = Geometry(16, 16, 48, 230)
SPECTRA = {
    "nm_per_px": 2.0,
    "wavelength_at_offset_nm": 560,
    "calibration_table": None,
    "psf_sigma_px": 1.3,
    "readout_rows": 9,
    "readout_margin_px": 8,
    "width_nm": None,
    "width_bounds_nm": [5, 50],
    "width_start_nm": 18,
    "mle_max_iterations": 50,
    "min_fit_p": 0.001,
    "max_crlb_nm": 2.5,
    "edge_sd": 1.0,
    "crowding_rows_px": 3,
    "max_row_shift_px": 0.5,
    "molecule_estimate": "joint",
    "max_group_size": 4,
    "group_rows_px": 5,
    "min_row_separation_px": 1.5,
    "neighbour_p": 1e-4,
    "label_odds": 99,
    "label_consistency_p": 0.05,
    "same_row_px": 0.5,
    "ambiguous_loglik": 3.0,
}
GAIN, OFFSET = 50.0, 100.0
CAMERA = {"type": "scmos", "gain_adu_per_photon": GAIN, "offset_adu": OFFSET, "read_noise_adu": 1.0}
#: model targets in unjittered boxes (no spectral_position draw), every frame kept, no
#: molecule-free patches
NOJIT = dict(
    target="model",
    offset_jitter=(0, 0),
    row_jitter=0,
    box_shift=0,
    spectral_position=None,
    min_loc_max=0.0,
    background_patches=0,
)


def patch_params(**overrides) -> PatchParams:
    """The configured ``patches:`` section with ``overrides``."""
    return PatchParams.from_config(section("patches", **overrides))


def noise_free_run(tmp_path, n_frames=10, x=40.3, y=30.6, distance=254.1, width=8.5, photons=None):
    """A stack of one molecule over ``n_frames`` frames, noise-free (expected counts, a high gain
    so rounding to ADU is negligible), spot at (x, y), spectrum centred at x + distance."""
    h, w = 64, 340
    photons = np.linspace(3000, 6000, n_frames) if photons is None else np.asarray(photons)
    frames = np.zeros((n_frames, h, w))
    for f in range(n_frames):
        local = np.array([[photons[f], y, 2.0]])
        frames[f] += box_model(np.array([[x, 1.3]]), local, (h, w), 1.3)[0]
        frames[f] += box_model(np.array([[x + distance, width]]), local * [1, 1, 0], (h, w), 1.3)[0]
    stack = np.round(OFFSET + GAIN * frames).astype(np.uint16)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "TYX"})
    runs = pd.DataFrame(
        {
            "frame": np.arange(1, n_frames + 1),
            "x": x,
            "y": y,
            "signal": photons,
            "pixel_x": int(x),
            "pixel_y": int(y),
            "cluster": 0,
            "localization_index": np.arange(n_frames),
        }
    )
    return path, runs, stack


def model():
    return TargetModel.from_config(SPECTRA, CAMERA, G)


def read_out(stack, runs):
    """``runs`` (also the acquisition's whole localization table) with its readout."""
    out = run_readout(stack, runs, np.arange(len(runs)), G, model())
    return runs.assign(**{c: out[c].to_numpy() for c in READOUT_COLUMNS})


def loo(stack, runs, **kw):
    """The leave-one-out fits of one run read out first."""
    return leave_one_out_fits(stack, read_out(stack, runs), np.array([0]), G, model(), **kw)


def test_noise_free_model_target_is_the_true_image(tmp_path):
    x, y, distance, width = 40.3, 30.6, 254.1, 8.5
    path, runs, _ = noise_free_run(tmp_path, x=x, y=y, distance=distance, width=width)
    with Stack(path) as stack:
        fits = loo(stack, runs)
    assert (fits["n_others"] == len(runs) - 1).all() and fits["converged"].all()
    np.testing.assert_allclose(fits["distance_px"], distance, atol=2e-3)
    np.testing.assert_allclose(fits["width_px"], width, rtol=1e-3)
    boxes = place_boxes(runs["frame"], runs["pixel_x"], runs["pixel_y"], G, 3, 1)
    loc, spec = (boxes.loc_row0, boxes.loc_col0), (boxes.spec_row0, boxes.spec_col0)
    n = len(runs)
    fitted = render_targets(
        runs["x"], runs["y"], fits["distance_px"], fits["width_px"], loc, spec, G, 1.3
    )
    true = render_targets(
        runs["x"], runs["y"], np.full(n, distance), np.full(n, width), loc, spec, G, 1.3
    )
    # the true noise-free image, within normalisation: each part peaks at its own maximum
    for img in (fitted, true):
        assert img[:, :, :16].sum(axis=(1, 2)) == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(
        clean_target(fitted, G, 0.5, 10), clean_target(true, G, 0.5, 10), atol=2e-3
    )


def test_render_targets_places_spot_and_spectrum():
    boxes = place_boxes(np.array([1]), np.array([40]), np.array([30]), G)
    img = render_targets(
        np.array([40.5]),
        np.array([30.5]),
        np.array([250.0]),
        np.array([3.0]),
        (boxes.loc_row0, boxes.loc_col0),
        (boxes.spec_row0, boxes.spec_col0),
        G,
        1.3,
    )[0]
    # spot centred in pixel (30, 40): patch row 8, column 8; spectrum at frame column 290.5
    assert np.unravel_index(img[:, :16].argmax(), (16, 16)) == (8, 8)
    spec_col = 290 - int(boxes.spec_col0[0])
    assert np.unravel_index(img[:, 16:].argmax(), (16, 48)) == (8, spec_col)
    assert img[:, 16:].sum() == pytest.approx(1.0, abs=1e-3)
    assert img.dtype == np.float32


def test_leave_one_out_own_noise_never_reaches_the_target(tmp_path):
    path, runs, stack = noise_free_run(tmp_path)
    with Stack(path) as s:
        before = loo(s, runs)
    # frame 4 gets a strong, shifted second spectrum: its own target must not move
    rng = np.random.default_rng(3)
    changed = stack.copy()
    changed[3, 28:34, 275:300] += rng.integers(200, 2000, (6, 25)).astype(np.uint16)
    path2 = tmp_path / "changed.ome.tif"
    tifffile.imwrite(path2, changed, ome=True, metadata={"axes": "TYX"})
    with Stack(path2) as s:
        after = loo(s, runs)
    own = after.index == 3
    assert after.loc[own, "distance_px"].item() == before.loc[own, "distance_px"].item()
    assert after.loc[own, "width_px"].item() == before.loc[own, "width_px"].item()
    # the other frames see it (it is usable or flagged: either way their fits differ or drop it)
    moved = (after["distance_px"] != before["distance_px"]) | (
        after["n_others"] != before["n_others"]
    )
    assert moved[~own].all()


def test_unusable_frames_leave_the_fits_and_lone_frames_get_no_target(tmp_path):
    path, runs, _ = noise_free_run(tmp_path, n_frames=4)
    with Stack(path) as s:
        runs = read_out(s, runs).assign(sc_mle_flag=["crowded"] * 3 + [""])
        fits = leave_one_out_fits(s, runs, np.array([0]), G, model())
    assert fits["flag"].tolist() == ["crowded"] * 3 + [""]
    # frames 1-3 are fitted from frame 4 alone; frame 4 has no other usable frame
    assert fits["n_others"].tolist() == [1, 1, 1, 0]
    assert np.isnan(fits["distance_px"].iloc[3])
    assert fits["converged"].tolist() == [True, True, True, False]


def test_frames_read_with_a_neighbour_join_the_target_by_inverse_variance(tmp_path):
    path, runs, _ = noise_free_run(tmp_path, n_frames=3)
    with Stack(path) as s:
        runs = read_out(s, runs)
        # the third frame unusable: frames 1 and 2 fitted from each other's raw counts alone
        alone = leave_one_out_fits(
            s, runs.assign(sc_mle_flag=["", "", "crowded"]), np.array([0]), G, model()
        )
        # the third frame read jointly with a neighbour: its own value 1 px further, bound 0.5 nm
        centre = runs["mle_centre_px"].to_numpy() + [0.0, 0.0, 1.0]
        crlb = runs["sc_mle_crlb_nm"].to_numpy() * [1, 1, 0] + [0, 0, 0.5]
        grouped = runs.assign(group_size=[1, 1, 2], mle_centre_px=centre, sc_mle_crlb_nm=crlb)
        both = leave_one_out_fits(s, grouped, np.array([0]), G, model())
        # a run whose other frames were all read with a neighbour still gets its target
        every = grouped.assign(group_size=2, extra_emitters=[0, 1, 0])
        fits = leave_one_out_fits(s, every, np.array([0]), G, model())
    assert both["n_others"].tolist() == [2, 2, 2] and both["n_grouped"].tolist() == [1, 1, 0]
    w_fit = 1.0 / (alone["crlb_nm"].to_numpy()[:2] / 2.0) ** 2
    w_own = 1.0 / (0.5 / 2.0) ** 2
    own = centre[2] - runs["x"].to_numpy()[2]
    expected = (w_fit * alone["distance_px"].to_numpy()[:2] + w_own * own) / (w_fit + w_own)
    np.testing.assert_allclose(both["distance_px"].to_numpy()[:2], expected, rtol=1e-12)
    np.testing.assert_allclose(both["crlb_nm"].to_numpy()[:2], 2.0 / np.sqrt(w_fit + w_own))
    assert both["converged"].all()
    # the grouped frame's own target comes from the two lone frames' raw counts, as before
    same = alone.columns.drop("flag")
    pd.testing.assert_series_equal(both.iloc[2][same], alone.iloc[2][same], check_names=False)
    assert fits["converged"].all() and fits["n_grouped"].tolist() == [2, 2, 2]
    assert fits["p_fit"].isna().all()


def two_molecules(tmp_path, n_frames=8, dy=4.0, dx=9.0):
    """A noise-free stack of two molecules in every frame whose spectra overlap (the second
    ``dy`` rows below and ``dx`` columns right of the first; spectral distances 254.1 and 262.4
    px), and their localization table (two runs)."""
    h, w = 64, 340
    mol = [(40.3, 30.6, 254.1, 8.5), (40.3 + dx, 30.6 + dy, 262.4, 9.5)]
    frames = np.zeros((n_frames, h, w))
    rows = []
    for f in range(n_frames):
        for k, (x, y, distance, width) in enumerate(mol):
            local = np.array([[4000.0 + 300 * f, y, 2.0 * (k == 0)]])
            frames[f] += box_model(np.array([[x, 1.3]]), local, (h, w), 1.3)[0]
            frames[f] += box_model(
                np.array([[x + distance, width]]), local * [1, 1, 0], (h, w), 1.3
            )[0]
            rows.append((f + 1, x, y, 4000.0, int(x), int(y), k))
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(
        path, np.round(OFFSET + GAIN * frames).astype(np.uint16), ome=True, metadata={"axes": "TYX"}
    )
    columns = ["frame", "x", "y", "signal", "pixel_x", "pixel_y", "cluster"]
    table = pd.DataFrame(rows, columns=columns).sort_values(["cluster", "frame"], kind="stable")
    return path, table.reset_index(drop=True).assign(localization_index=lambda t: t.index), mol


def test_overlapping_spectra_read_jointly_give_targets(tmp_path):
    path, runs, mol = two_molecules(tmp_path)
    with Stack(path) as s:
        read = read_out(s, runs)
        fits = leave_one_out_fits(s, read, np.array([0, 8]), G, model())
    # both molecules are read jointly in every frame, trusted, and each frame gets its target
    # from the other frames' joint values: the true spectral distance and width
    assert (read["group_size"] == 2).all() and (read["sc_mle_flag"] == "").all()
    assert (fits["n_grouped"] == 7).all() and fits["converged"].all()
    for k, (_, _, distance, width) in enumerate(mol):
        one = fits[runs["cluster"] == k]
        np.testing.assert_allclose(one["distance_px"], distance, atol=0.02)
        np.testing.assert_allclose(one["width_px"], width, rtol=0.01)


def test_groups_and_blocks():
    frames = np.array([1, 2, 3, 7, 8])
    members, sizes = _groups(np.array([1, 0, 1, 1, 1], bool), np.array([0, 3]), frames)
    assert [m.tolist() for m in members] == [[2], [0, 2], [0], [4], [3]]
    assert sizes.tolist() == [1, 2, 1, 1, 1]
    assert list(_blocks(np.array([3, 3, 3, 0, 5]), 6)) == [(0, 2), (2, 4), (4, 5)]
    assert list(_blocks(np.array([9]), 6)) == [(0, 1)]


def test_groups_keep_the_nearest_frames_in_time():
    # one run of 8 frames (frame numbers with gaps), frame 40 unusable
    frames = np.array([10, 11, 13, 14, 20, 21, 40, 41])
    usable = np.array([1, 1, 1, 1, 1, 1, 0, 1], bool)
    everyone, _ = _groups(usable, np.array([0]), frames)
    members, sizes = _groups(usable, np.array([0]), frames, max_frames=3)
    assert sizes.tolist() == [3] * 8
    assert members[0].tolist() == [1, 2, 3]  # frames 11, 13, 14 nearest to 10
    assert members[4].tolist() == [2, 3, 5]  # 21 (1), 14 (6), 13 (7) nearest to 20
    assert members[2].tolist() == [0, 1, 3]  # 14 (1), 11 (2), then 10 (3) before 20 (7)
    assert members[6].tolist() == [4, 5, 7]  # the unusable frame still gets a group, without itself
    assert members[3].tolist() == [0, 1, 2]  # 13 (1), 11 (3), 10 (4) nearest to 14
    # a tie in time goes to the earlier frame: 12 is 1 from both 11 and 13
    tie, _ = _groups(np.ones(3, bool), np.array([0]), np.array([11, 12, 13]), max_frames=1)
    assert tie[1].tolist() == [0]
    # a cap at or above the largest group (the unusable frame's 7 others) changes nothing
    same, _ = _groups(usable, np.array([0]), frames, max_frames=7)
    assert [m.tolist() for m in same] == [m.tolist() for m in everyone]


def test_max_frames_bounds_the_fits_and_changes_nothing_below_the_cap(tmp_path):
    path, runs, _ = noise_free_run(tmp_path, n_frames=8)
    with Stack(path) as s:
        every = loo(s, runs)
        capped = loo(s, runs, max_frames=7)
        few = loo(s, runs, max_frames=3)
    pd.testing.assert_frame_equal(every, capped)
    assert (few["n_others"] == 3).all() and few["converged"].all()
    np.testing.assert_allclose(few["distance_px"], 254.1, atol=5e-3)  # noise-free: same answer


def test_spectra_keys_are_what_the_readout_reads():
    TargetModel.from_config(SPECTRA, CAMERA, G)
    assert set(SPECTRA) == set(SPECTRA_KEYS)


def test_model_targets_in_the_patch_stage_same_seed_same_bytes(tiny_acquisition, tmp_path):
    loc, clu = tmp_path / "loc.csv", tmp_path / "clu.csv"
    filter_stage(tiny_acquisition["peakfit"], "peakfit", None, 300, None, None, loc)
    cluster_stage(loc, 0.001, 3, 9, clu)
    spectra = dict(SPECTRA, nm_per_px=2.06)
    camera = {"type": "scmos", "gain_adu_per_photon": 2.0, "offset_adu": 100, "read_noise_adu": 1.6}
    tm = TargetModel.from_config(spectra, camera, G)
    digests, counts = [], []
    for name, chunk in (("a", 100), ("b", 100), ("c", 100_000)):
        o = tmp_path / name
        p = patch_params(min_loc_max=0.0, background_patches=0, chunk_size=chunk, target="model")
        counts.append(
            prepare_patches(
                clu,
                loc,
                tiny_acquisition["stack"],
                G,
                p,
                1,
                "tiny",
                9,
                o / "raw.tif",
                o / "clean.tif",
                o / "patches.csv",
                target_model=tm,
            )
        )
        digests.append(
            tuple(
                hashlib.sha256((o / f).read_bytes()).hexdigest()
                for f in ("raw.tif", "clean.tif", "patches.csv")
            )
        )
    assert digests[0] == digests[1] == digests[2]
    c = counts[0]
    assert c["signal_patches"] > 0
    table = pd.read_csv(tmp_path / "a" / "patches.csv")
    signal = table[table["kind"] == "signal"]
    assert (signal["target_crlb_nm"] <= 1.5).all() and (signal["target_frames"] >= 1).all()
    clean = tifffile.imread(tmp_path / "a" / "clean.tif")
    assert clean.max() <= 1.0 + 1e-6 and len(clean) == len(table)
    # against the simulator's truth: the targets' centres are far better than one frame's
    truth = pd.read_csv(tiny_acquisition["truth"])
    m = signal.assign(kx=signal["x"].round(2)).merge(
        truth.assign(kx=truth["loc_x"].round(2))[["frame", "kx", "sc_true_nm"]],
        on=["frame", "kx"],
    )
    assert len(m) > 0.9 * len(signal)
    assert (m["target_nm"] - m["sc_true_nm"]).abs().median() < 1.0


def test_model_target_needs_a_target_model_and_known_names(tmp_path):
    path, runs, _ = noise_free_run(tmp_path)
    cp = tmp_path / "clusters.csv"
    runs.to_csv(cp, index=False)
    for params, err in (
        (patch_params(**NOJIT), "needs a TargetModel"),
        (patch_params(**{**NOJIT, "target": "fused"}), "patches.target 'fused'"),
    ):
        with pytest.raises(ValueError, match=err):
            prepare_patches(
                cp,
                cp,
                path,
                G,
                params,
                1,
                "acq",
                9,
                tmp_path / "raw.tif",
                tmp_path / "clean.tif",
                tmp_path / "p.csv",
            )
    assert not (tmp_path / "raw.tif").exists()


def model_patches(path, runs, p, tmp_path, out):
    """The patch stage with model targets on a noise-free run (its table as clusters and
    localizations); writes raw.tif, clean.tif and p.csv under ``out``; returns the counts."""
    cp = tmp_path / "clusters.csv"
    runs.to_csv(cp, index=False)
    files = (out / "raw.tif", out / "clean.tif", out / "p.csv")
    return prepare_patches(cp, cp, path, G, p, 1, "acq", 9, *files, target_model=model())


def test_molecule_free_patches_get_empty_model_targets(tmp_path):
    path, runs, _ = noise_free_run(tmp_path, n_frames=12)
    p = patch_params(**{**NOJIT, "background_patches": 9})
    o = tmp_path / "out"
    counts = model_patches(path, runs, p, tmp_path, o)
    assert counts["background_patches"] == 9 and counts["signal_patches"] == 12
    table = pd.read_csv(o / "p.csv")
    clean = tifffile.imread(o / "clean.tif")
    background = table["kind"].to_numpy() == "background"
    assert background.sum() == 9 and not clean[background].any()
    assert clean[~background].max() == pytest.approx(1.0)


def test_at_positions_moves_only_the_spectral_box():
    boxes = place_boxes(np.arange(1, 5), np.full(4, 40), np.full(4, 30), G)
    x = np.array([40.3, 40.3, 40.3, 40.3])
    distance = np.array([254.1, 254.1, 254.1, np.nan])
    moved = at_positions(boxes, x, distance, np.array([0.0, 12.5, 47.9, 20.0]))
    centre_in_box = x + distance - moved.spec_col0
    np.testing.assert_allclose(centre_in_box[:3], [0.4, 13.4, 48.4], atol=1e-9)
    assert ((centre_in_box[:3] >= [0.0, 12.5, 47.9]) & (centre_in_box[:3] < [1, 13.5, 48.9])).all()
    assert moved.spec_col0[3] == boxes.spec_col0[3]  # no centre: the box stays
    for f in ("frame", "loc_row0", "loc_col0", "spec_row0"):
        assert np.array_equal(getattr(moved, f), getattr(boxes, f))


def test_spectral_position_cuts_each_frame_where_its_spectrum_lands(tmp_path):
    """With a flat position prior every frame's raw patch is cut with the spectrum at its drawn
    position, and its target is drawn in that same box (noise-free: the same peak column)."""
    path, runs, _ = noise_free_run(tmp_path, n_frames=30, x=40.3, distance=254.1, width=5.0)
    p = patch_params(**{**NOJIT, "spectral_position": (6.0, 42.0)}, target_max=None)
    o = tmp_path / "out"
    counts = model_patches(path, runs, p, tmp_path, o)
    assert counts["signal_patches"] == 30 and counts["dropped_box_outside"] == 0
    table = pd.read_csv(o / "p.csv")
    raw, clean = tifffile.imread(o / "raw.tif"), tifffile.imread(o / "clean.tif")
    centre = table["x"] + 254.1 - table["spec_col0"]
    assert centre.between(6.0, 43.0).all() and centre.max() - centre.min() > 20
    assert table["offset_jitter"].nunique() > 10  # the box moved per frame
    peak_raw = raw[:, :, 16:].sum(axis=1).argmax(axis=1)
    peak_clean = clean[:, :, 16:].sum(axis=1).argmax(axis=1)
    assert np.array_equal(peak_raw, peak_clean)
    np.testing.assert_allclose(peak_raw + 0.5, centre, atol=0.75)


def test_spectral_position_reads_each_patch_once(tmp_path, monkeypatch):
    """The raw patches are cut where the leave-one-out fits put the boxes, not also at the
    planned boxes first (one read of the stack per patch)."""
    import srsmlm.boxes
    import srsmlm.patches

    cut = []
    original = srsmlm.boxes.extract_patches

    def counting(stack, boxes, g):
        cut.append(len(boxes.frame))
        return original(stack, boxes, g)

    for module in (srsmlm.boxes, srsmlm.patches):  # where the boxes are cut, and the stage
        monkeypatch.setattr(module, "extract_patches", counting)
    path, runs, _ = noise_free_run(tmp_path, n_frames=20, x=40.3, distance=254.1, width=5.0)
    p = patch_params(**{**NOJIT, "spectral_position": (6.0, 42.0)})
    counts = model_patches(path, runs, p, tmp_path, tmp_path / "out")
    assert counts["signal_patches"] == 20 and sum(cut) == 20
