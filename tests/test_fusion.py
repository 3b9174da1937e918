import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import disk

from srsmlm.fusion import (
    _BLOCK,
    clean_target,
    disk_footprint,
    leave_one_out_fusion,
    limit_range,
    select_frames,
    spatial_frequency,
    white_tophat_disk,
)
from srsmlm.geometry import Geometry


def test_spatial_frequency_hand_computed():
    f = np.array([[1.0, 2.0, 4.0], [1.0, 3.0, 3.0]])
    # row diffs: (1, 2), (2, 0) -> 1 + 4 + 4 + 0 = 9; column diffs: (0, 1, -1) -> 2; MN = 6
    expected = np.sqrt(9 / 6 + 2 / 6)
    assert spatial_frequency(f) == pytest.approx(expected)
    assert spatial_frequency(np.stack([f, 2 * f])) == pytest.approx([expected, 2 * expected])
    assert spatial_frequency(np.ones((4, 5))) == 0.0


def _naive_loo(patches):
    out = []
    for i in range(len(patches)):
        others = np.delete(patches, i, axis=0)
        sf = spatial_frequency(others)
        out.append((others * sf[:, None, None]).sum(0) / sf.sum())
    return np.array(out)


def test_leave_one_out_equals_naive(rng):
    runs = [rng.random((k, 4, 6)) for k in (2, 3, 9, 17)]
    patches = np.concatenate(runs)
    starts = np.cumsum([0] + [len(r) for r in runs[:-1]])
    fused, sf = leave_one_out_fusion(patches, starts)
    naive = np.concatenate([_naive_loo(r) for r in runs])
    np.testing.assert_allclose(fused, naive, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sf, spatial_frequency(patches))


def test_leave_one_out_runs_across_blocks_equal_naive(rng):
    """Runs are fused a block of whole runs at a time: runs longer than a block, runs that
    straddle a block boundary and single frames all equal the naive leave-one-out."""
    lengths = (_BLOCK + 37, 5, _BLOCK - 3, 1, 40, 2 * _BLOCK + 1)
    runs = [rng.random((k, 3, 5)) for k in lengths]
    patches = np.concatenate(runs)
    starts = np.cumsum([0] + [len(r) for r in runs[:-1]])
    fused, _ = leave_one_out_fusion(patches, starts)
    naive = np.concatenate([_naive_loo(r) if len(r) > 1 else np.zeros_like(r) for r in runs])
    np.testing.assert_allclose(fused, naive, rtol=1e-12, atol=1e-15)
    fused32, sf32 = leave_one_out_fusion(patches.astype(np.float32), starts)
    assert fused32.dtype == np.float32 and sf32.dtype == np.float64
    np.testing.assert_allclose(fused32, naive, rtol=1e-5)


def test_leave_one_out_flat_others_and_single_frame():
    flat = np.ones((3, 2, 2))
    flat[0] = 5.0 + np.eye(2)  # only frame 0 has structure
    fused, _ = leave_one_out_fusion(flat, np.array([0]))
    np.testing.assert_allclose(fused[0], 1.0)  # others have SF 0 -> plain mean
    single, _ = leave_one_out_fusion(np.ones((1, 2, 2)), np.array([0]))
    assert (single == 0).all()


@pytest.mark.parametrize("radius", [0, 1, 4, 10])
def test_white_tophat_equals_scipy(rng, radius):
    img = rng.random((5, 16, 48)).astype(np.float32)
    got = white_tophat_disk(img, radius)
    if radius == 0:
        assert (got == 0).all()
        return
    ref = np.stack([ndimage.white_tophat(x, footprint=disk(radius), mode="reflect") for x in img])
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("radius", [0, 1, 5, 10, 12, 30])
def test_disk_footprint_is_skimage_disk(radius):
    np.testing.assert_array_equal(disk_footprint(radius), disk(radius))


@pytest.mark.parametrize("shape", [(4, 16, 16), (3, 5, 7), (2, 1, 9), (1, 16, 64)])
def test_white_tophat_equals_scipy_any_shape(rng, shape):
    """Images smaller than the disk, a single row, a single image; float64 input too."""
    img = rng.random(shape)
    ref = np.stack(
        [
            ndimage.white_tophat(x.astype(np.float32), footprint=disk(10), mode="reflect")
            for x in img
        ]
    )
    got = white_tophat_disk(img, 10)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)
    assert white_tophat_disk(np.zeros((0, 4, 4), np.float32), 10).shape == (0, 4, 4)


def test_white_tophat_column_splits_filter_parts_separately(rng):
    img = rng.random((6, 16, 64)).astype(np.float32)
    got = white_tophat_disk(img, 10, threads=2, column_splits=(16,))
    np.testing.assert_array_equal(got[..., :16], white_tophat_disk(img[..., :16], 10))
    np.testing.assert_array_equal(got[..., 16:], white_tophat_disk(img[..., 16:], 10))
    three = white_tophat_disk(img, 3, column_splits=(5, 6))
    np.testing.assert_array_equal(three[..., 5:6], white_tophat_disk(img[..., 5:6], 3))
    with pytest.raises(ValueError, match="column_splits"):
        white_tophat_disk(img, 10, column_splits=(64,))


def test_clean_target_normalises_each_part():
    g = Geometry(4, 4, 6, 10)
    fused = np.zeros((1, 4, 10))
    fused[0, 1, 1] = 8.0  # localization part peak
    fused[0, 2, 7] = 2.0  # spectral part peak
    t = clean_target(fused, g, amp_factor=0.5, tophat_radius=1)
    assert t[0, 1, 1] == pytest.approx(1.0)  # / its max
    assert t[0, 2, 7] == pytest.approx(2.0)  # / (0.5 * its max)
    assert t.min() >= 0


def test_limit_range_keeps_ratio():
    t = np.array([[[0.5, 2.0]], [[0.2, 0.4]]])
    out = limit_range(t, 1.0)
    np.testing.assert_allclose(out[0], [[0.25, 1.0]])
    np.testing.assert_allclose(out[1], t[1])  # never scaled up
    assert limit_range(t, None) is t


def test_select_frames_guide_rule():
    # run 0: ratios 1..5 -> range 4 -> keep > 2; run 1: 10, 10.5 -> range .5 -> keep > .25 (all)
    ratio = np.array([1, 2, 3, 4, 5, 10, 10.5, np.nan])
    keep = select_frames(ratio, np.array([0, 5]))
    assert keep.tolist() == [False, False, True, True, True, True, True, False]


def test_white_tophat_threads_give_the_same_result():
    img = np.random.default_rng(3).random((37, 16, 48), dtype=np.float32)
    one = white_tophat_disk(img, 10)
    for threads in (2, 3):
        np.testing.assert_array_equal(white_tophat_disk(img, 10, threads=threads), one)
    np.testing.assert_array_equal(white_tophat_disk(img[:3], 10, threads=2), one[:3])  # too few


def test_white_tophat_part_divisors_normalise_first(rng):
    img = rng.random((7, 16, 64)).astype(np.float32)
    loc_max = img[..., :16].max(axis=(1, 2))
    spec_div = np.where(np.arange(7) == 3, 0.0, 0.5 * img[..., 16:].max(axis=(1, 2)))
    got = white_tophat_disk(img, 10, 2, (16,), [loc_max, spec_div.astype(np.float32)])
    norm = img.copy()
    norm[..., :16] /= loc_max[:, None, None]
    norm[..., 16:] /= np.where(spec_div > 0, spec_div, np.inf)[:, None, None].astype(np.float32)
    np.testing.assert_array_equal(got, white_tophat_disk(norm, 10, 1, (16,)))
    assert (got[3, :, 16:] == 0).all()  # divisor 0: the part is zero, not inf or nan
    with pytest.raises(ValueError, match="part_divisors"):
        white_tophat_disk(img, 10, 1, (16,), [loc_max])
