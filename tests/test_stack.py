import numpy as np
import pytest
import tifffile

from srsmlm.errors import InputError
from srsmlm.simulate import write_micromanager_series
from srsmlm.stack import Stack


def _data(t=7, h=12, w=20):
    return np.arange(t * h * w, dtype=np.uint16).reshape(t, h, w)


def _boxes():
    frames = np.array([3, 1, 3, 7])
    rows = np.array([[0, 1], [2, 3], [10, 11], [5, 6]])
    cols = np.array([[0, 1, 2], [5, 6, 7], [17, 18, 19], [1, 2, 3]])
    return frames, rows, cols


def _expected(data, frames, rows, cols):
    return np.stack([data[f - 1][r][:, c] for f, r, c in zip(frames, rows, cols, strict=True)])


def test_memmapped_single_file(tmp_path):
    data = _data()
    p = tmp_path / "s.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "TYX"})
    with Stack(p) as s:
        assert s.shape == (7, 12, 20) and s._fh is not None
        assert np.array_equal(s.frame(7), data[6])
        assert np.array_equal(s.gather(*_boxes()), _expected(data, *_boxes()))


def test_compressed_file_read_page_by_page(tmp_path):
    data = _data()
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, data, compression="zlib", metadata={"axes": "TYX"})
    with Stack(p) as s:
        assert s._fh is None
        assert np.array_equal(s.gather(*_boxes()), _expected(data, *_boxes()))


def test_micromanager_split_series_reads_as_one_stack(tmp_path):
    data = _data(t=9)
    paths = write_micromanager_series(
        iter(data), data.shape, tmp_path / "acq_MMStack_Pos0.ome.tif", 4
    )
    assert [p.name for p in paths] == [
        "acq_MMStack_Pos0.ome.tif",
        "acq_MMStack_Pos0_1.ome.tif",
        "acq_MMStack_Pos0_2.ome.tif",
    ]
    with Stack(paths[0]) as s:
        assert s.shape == (9, 12, 20)
        assert np.array_equal(s.frame(9), data[8])
        frames, rows, cols = _boxes()
        frames = np.array([9, 1, 5, 6])
        assert np.array_equal(s.gather(frames, rows, cols), _expected(data, frames, rows, cols))


def test_squeezes_singleton_axes(tmp_path):
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, _data()[:, None], metadata={"axes": "TCYX"})
    with Stack(p) as s:
        assert s.shape == (7, 12, 20)


def test_bad_stacks(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Stack(tmp_path / "missing.tif")
    p2 = tmp_path / "flat.tif"
    tifffile.imwrite(p2, np.zeros((12, 20), np.uint16))
    with pytest.raises(InputError, match="must be 3-D"):
        Stack(p2)
    p3 = tmp_path / "junk.tif"
    p3.write_bytes(b"this is not a tiff at all")
    with pytest.raises(InputError, match="cannot read as TIFF"):
        Stack(p3)


def test_truncated_stack(tmp_path):
    p = tmp_path / "s.ome.tif"
    tifffile.imwrite(p, _data(t=50, h=64, w=64), ome=True, metadata={"axes": "TYX"})
    p.write_bytes(p.read_bytes()[: 64 * 64 * 2 * 20])
    with pytest.raises(InputError, match="truncated|cannot read"):
        with Stack(p) as s:
            s.gather(np.array([50]), np.array([[0]]), np.array([[0]]))
