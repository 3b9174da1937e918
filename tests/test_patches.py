import dataclasses
import hashlib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile

from srsmlm.boxes import extract_patches, extract_shifted_patches, place_boxes
from srsmlm.clustering import cluster_stage
from srsmlm.errors import InputError
from srsmlm.geometry import Geometry
from srsmlm.localizations import filter_stage
from srsmlm.patches import prepare_patches
from srsmlm.plan import (
    PatchParams,
    background_boxes,
    check_spectral_position,
    row_jitter,
    run_jitter,
)
from srsmlm.stack import Stack

from .conftest import section

G = Geometry(16, 16, 48, 230)
#: SF-fusion targets (these tests give the patch stage no TargetModel) in unjittered boxes, every
#: frame kept, no molecule-free patches
NOJIT = dict(
    target="sf_fusion",
    offset_jitter=(0, 0),
    row_jitter=0,
    box_shift=0,
    min_loc_max=0.0,
    background_patches=0,
)


def patch_params(**overrides) -> PatchParams:
    """The configured ``patches:`` section with ``overrides``."""
    return PatchParams.from_config(section("patches", **overrides))


def synthetic(tmp_path, n_frames=12, spots=((40, 30),), frame_shape=(64, 320), value=3000):
    """Stack with a bright pixel at each spot's candidate pixel and a marker 5 px into its
    spectral box; a run over all frames per spot."""
    h, w = frame_shape
    rng = np.random.default_rng(0)
    stack = (100 + rng.integers(0, 5, (n_frames, h, w))).astype(np.uint16)
    rows = []
    for k, (px, py) in enumerate(spots):
        for f in range(n_frames):
            v = value + 100 * f
            stack[f, py, px] = v
            if px + 235 < w:
                stack[f, py, px + 235] = v // 2
            rows.append(
                {
                    "frame": f + 1,
                    "x": px + 0.5,
                    "y": py + 0.5,
                    "signal": 1000.0,
                    "pixel_x": px,
                    "pixel_y": py,
                    "cluster": k,
                }
            )
    sp = tmp_path / "stack.ome.tif"
    tifffile.imwrite(sp, stack, ome=True, metadata={"axes": "TYX"})
    cp = tmp_path / "clusters.csv"
    pd.DataFrame(rows).to_csv(cp, index=False)
    return sp, cp, stack


def run(tmp_path, sp, cp, params=None, seed=1, out="out"):
    o = tmp_path / out
    counts = prepare_patches(
        cp,
        cp,
        sp,
        G,
        params or patch_params(**NOJIT),
        seed,
        "acq",
        9,
        o / "raw.tif",
        o / "clean.tif",
        o / "patches.csv",
    )
    return counts, o


def test_box_coordinates_against_hand_placed_spots(tmp_path):
    sp, cp, stack = synthetic(tmp_path, spots=((40, 30), (20, 45)))
    counts, o = run(tmp_path, sp, cp)
    raw = tifffile.imread(o / "raw.tif")
    table = pd.read_csv(o / "patches.csv")
    assert raw.shape == (24, 16, 64) and raw.dtype == np.float32
    assert len(table) == 24 and counts["patches"] == 24
    for i, row in table.iterrows():
        f = int(row["frame"])
        v = (3000 + 100 * (f - 1)) / 2**16
        assert raw[i, 8, 8] == pytest.approx(v)  # spot at the box centre
        assert raw[i, 8, 16 + 5] == pytest.approx((3000 + 100 * (f - 1)) // 2 / 2**16)
        assert row["loc_col0"] == row["pixel_x"] - 8 and row["loc_row0"] == row["pixel_y"] - 8
        assert row["spec_col0"] == row["pixel_x"] + 230
        y0, x0 = int(row["loc_row0"]), int(row["loc_col0"])
        np.testing.assert_allclose(raw[i, :, :16], stack[f - 1, y0 : y0 + 16, x0 : x0 + 16] / 2**16)


def test_place_boxes_with_jitter():
    b = place_boxes(
        np.array([1]),
        np.array([40]),
        np.array([30]),
        G,
        offset_jitter=5,
        row_jitter=-1,
        shift_x=2,
        shift_y=-3,
    )
    assert (b.loc_row0[0], b.loc_col0[0], b.spec_row0[0], b.spec_col0[0]) == (
        25,
        30,
        26,
        40 + 230 + 5 - 2,
    )


def test_run_jitter_ranges_and_seed():
    p = patch_params(offset_jitter=(-10, 20), row_jitter=1, box_shift=6)  # the guide's jitter
    j = run_jitter(5000, p, np.random.default_rng(0))
    assert j["offset_jitter"].min() == -10 and j["offset_jitter"].max() == 20
    assert set(np.unique(j["row_jitter"])) == {-1, 0, 1}
    assert j["shift_x"].min() == -6 and j["shift_x"].max() == 6
    j2 = run_jitter(5000, p, np.random.default_rng(0))
    assert all(np.array_equal(j[k], j2[k]) for k in j)


def test_out_of_frame_runs_are_skipped_and_counted(tmp_path):
    sp, cp, _ = synthetic(tmp_path, spots=((40, 30), (40, 3)))  # second: box leaves the top
    counts, o = run(tmp_path, sp, cp)
    assert counts["runs_outside_frame"] == 1
    assert set(pd.read_csv(o / "patches.csv")["cluster"]) == {0}


def test_dim_threshold_and_no_patch_error(tmp_path):
    sp, cp, _ = synthetic(tmp_path)
    # value 3000..4100 ADU -> 0.046..0.063 after /2**16: a 0.05 threshold drops the first frames
    counts, _ = run(tmp_path, sp, cp, patch_params(**{**NOJIT, "min_loc_max": 0.05}))
    assert counts["dropped_dim"] == 3 and counts["patches"] == 9
    with pytest.raises(InputError, match="patches.min_loc_max"):
        run(tmp_path, sp, cp, patch_params(**{**NOJIT, "min_loc_max": 0.5}), out="none")
    assert not (tmp_path / "none" / "raw.tif").exists()
    assert not (tmp_path / "none" / "patches.csv").exists()


def test_targets_in_range_and_selection_rule(tiny_acquisition, tmp_path):
    loc = tmp_path / "loc.csv"
    clu = tmp_path / "clu.csv"
    filter_stage(tiny_acquisition["peakfit"], "peakfit", None, 300, [10, 220], [10, 250], loc)
    cluster_stage(loc, 0.001, 3, 9, clu)
    p = patch_params(target="sf_fusion", min_loc_max=0.0035)
    o = tmp_path / "p"
    counts = prepare_patches(
        clu,
        loc,
        tiny_acquisition["stack"],
        G,
        p,
        3,
        "tiny",
        9,
        o / "raw.tif",
        o / "clean.tif",
        o / "patches.csv",
    )
    clean = tifffile.imread(o / "clean.tif")
    table = pd.read_csv(o / "patches.csv")
    assert clean.min() >= 0 and clean.max() <= 1.0
    assert len(table) == len(clean) == counts["patches"]
    sig = table[table["kind"] == "signal"]
    for _, run_rows in sig.groupby("cluster"):
        # every kept frame passed the guide's rule within its run
        assert (run_rows["sf_ratio"] > 0).all()
    assert {
        "acquisition",
        "cluster",
        "frame",
        "x",
        "y",
        "loc_row0",
        "spec_col0",
        "sf_raw",
        "sf_target",
        "kind",
    } <= set(table.columns)


def test_same_seed_same_bytes_any_chunking_and_seed_changes_jitter(tiny_acquisition, tmp_path):
    loc, clu = tmp_path / "loc.csv", tmp_path / "clu.csv"
    filter_stage(tiny_acquisition["peakfit"], "peakfit", None, 300, None, None, loc)
    cluster_stage(loc, 0.001, 3, 9, clu)
    sf = dict(target="sf_fusion", min_loc_max=0.0, background_patches=20)
    p = patch_params(**sf, chunk_size=100)
    one_chunk = patch_params(**sf, chunk_size=100_000)
    digests = []
    for name, seed, params in (("a", 1, p), ("b", 1, p), ("c", 2, p), ("d", 1, one_chunk)):
        o = tmp_path / name
        prepare_patches(
            clu,
            loc,
            tiny_acquisition["stack"],
            G,
            params,
            seed,
            "tiny",
            9,
            o / "raw.tif",
            o / "clean.tif",
            o / "patches.csv",
        )
        digests.append(
            tuple(
                hashlib.sha256((o / f).read_bytes()).hexdigest()
                for f in ("raw.tif", "clean.tif", "patches.csv")
            )
        )
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]
    assert digests[0] == digests[3]  # chunking changes nothing


def test_bad_inputs(tmp_path):
    sp, cp, _ = synthetic(tmp_path)
    with pytest.raises(InputError, match="raw stack not found"):
        prepare_patches(
            cp,
            cp,
            tmp_path / "nope.tif",
            G,
            patch_params(**NOJIT),
            1,
            "a",
            9,
            tmp_path / "r.tif",
            tmp_path / "c.tif",
            tmp_path / "p.csv",
        )
    bad = pd.read_csv(cp)
    bad.loc[0, "frame"] = 99
    bad.loc[1, "pixel_x"] = 1000
    bp = tmp_path / "bad.csv"
    bad.to_csv(bp, index=False)
    with pytest.raises(
        InputError, match="1 localization.* outside the stack's frames 1..12 and 1 outside"
    ):
        run(tmp_path, sp, bp)
    big = Geometry(16, 16, 48, 300)
    with pytest.raises(InputError, match="cannot fit"):
        prepare_patches(
            cp,
            cp,
            sp,
            big,
            patch_params(**NOJIT),
            1,
            "a",
            9,
            tmp_path / "r.tif",
            tmp_path / "c.tif",
            tmp_path / "p.csv",
        )
    assert not (tmp_path / "r.tif").exists()


def test_background_patches_avoid_molecules(tmp_path):
    sp, cp, _ = synthetic(tmp_path, spots=((40, 30),), frame_shape=(64, 420))
    counts, o = run(tmp_path, sp, cp, patch_params(**{**NOJIT, "background_patches": 20}))
    table = pd.read_csv(o / "patches.csv")
    bg = table[table["kind"] == "background"]
    assert counts["background_patches"] == 20 and len(bg) == 20
    assert (bg["cluster"] < 0).all()
    # boxes of 9 consecutive frames, away from the molecule's spot and spectrum
    assert (((bg["pixel_x"] - 40).abs() >= 48) | ((bg["pixel_y"] - 30).abs() >= 16)).all()
    for _, box in bg.groupby("cluster"):
        assert np.array_equal(np.diff(box["frame"]), np.ones(len(box) - 1))
    clean = tifffile.imread(o / "clean.tif")
    assert clean.shape == (32, 16, 64) and clean.min() >= 0 and clean.max() <= 1


def test_background_boxes_check_only_the_frames_they_span():
    """A molecule seen in frame 20 only: boxes whose 9 frames include frame 20 keep away from
    it; the others may sit on its pixel. Same seed -> same boxes."""
    g = Geometry(16, 16, 48, 230)
    stack = SimpleNamespace(frame_shape=(64, 420), n_frames=40)
    locs = pd.DataFrame({"frame": [20], "pixel_x": [60], "pixel_y": [30]})
    boxes, group = background_boxes(locs, stack, g, 900, 9, np.random.default_rng(5))
    assert len(group) == 900 and np.array_equal(np.bincount(group), np.full(100, 9))
    first = boxes.frame[::9]
    x = boxes.loc_col0[::9] + g.half_loc_width
    y = boxes.loc_row0[::9] + g.half_height
    near = (np.abs(x - 60) < 48) & (np.abs(y - 30) < 16)
    spans = (first <= 20) & (first + 8 >= 20)
    assert not (near & spans).any()
    assert (near & ~spans).any()  # the check is per frame range, not global
    again, _ = background_boxes(locs, stack, g, 900, 9, np.random.default_rng(5))
    assert np.array_equal(again.frame, boxes.frame) and np.array_equal(
        again.loc_col0, boxes.loc_col0
    )


def test_row_jitter_per_frame_for_model_targets_per_run_for_sf_fusion():
    run_index = np.repeat(np.arange(40), 25)
    for target, per_frame in (("model", True), ("sf_fusion", False)):
        p = patch_params(
            offset_jitter=(-15, 15), row_jitter=1, target=target, spectral_position=None
        )
        j = row_jitter(run_index, p, np.random.default_rng(0))
        assert all(len(v) == len(run_index) for v in j.values())
        within = [len(np.unique(j["offset_jitter"][run_index == r])) for r in range(40)]
        assert (max(within) > 1) == per_frame and min(within) >= 1
        assert j["offset_jitter"].min() >= -15 and j["offset_jitter"].max() <= 15
    # spectral_position replaces offset_jitter by a drawn position in the box (model targets)
    p = patch_params(offset_jitter=(-15, 15), target="model", spectral_position=(0.0, 48.0))
    j = row_jitter(run_index, p, np.random.default_rng(0))
    assert not j["offset_jitter"].any()
    assert 0 <= j["position"].min() < 2 and 46 < j["position"].max() < 48
    assert row_jitter(np.zeros(0, np.int64), patch_params(), np.random.default_rng(0))[
        "offset_jitter"
    ].shape == (0,)


def test_spectral_position_must_be_a_range_in_the_box():
    for bad in ((10.0, 10.0), (30.0, 5.0), (-20.0, 0.0), (48.0, 60.0)):
        with pytest.raises(InputError, match="spectral_position"):
            check_spectral_position(patch_params(target="model", spectral_position=bad), G)
    for ok in ((0.0, 48.0), (-12.0, 60.0), None):
        check_spectral_position(patch_params(target="model", spectral_position=ok), G)


def test_shifted_patches_equal_patches_cut_at_shifted_boxes(tmp_path):
    """One read of a window gives, for each shift, the patch cut at the box moved by it; near
    the frame's right edge the shifts that leave it are masked (and repeat the unshifted patch)."""
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 60000, (4, 40, 300)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, ome=True, metadata={"axes": "TYX"})
    # spectral boxes at columns 238-285, 251-298 (only shifts up to +1 fit the 300-px frame)
    # and 245-292; the first localization box touches the left edge
    boxes = place_boxes(np.array([2, 4, 1]), np.array([8, 21, 15]), np.array([10, 20, 30]), G)
    shifts = np.array([-4, -2, 0, 2, 4])
    with Stack(tmp_path / "s.ome.tif") as st:
        out, ok = extract_shifted_patches(st, boxes, G, shifts)
        assert out.shape == (5, 3, 16, 64) and out.dtype == np.float32
        expected_ok = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 1]], bool)
        np.testing.assert_array_equal(ok, expected_ok)
        for k, s in enumerate(shifts):
            moved = dataclasses.replace(boxes, spec_col0=boxes.spec_col0 + np.where(ok[k], s, 0))
            np.testing.assert_array_equal(out[k], extract_patches(st, moved, G))
        with pytest.raises(ValueError, match="must include 0"):
            extract_shifted_patches(st, boxes, G, np.array([-1, 1]))
