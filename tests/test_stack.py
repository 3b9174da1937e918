import numpy as np
import pytest
import tifffile

from srsmlm import stack as stack_module
from srsmlm.errors import InputError
from srsmlm.simulate import write_micromanager_series
from srsmlm.stack import Stack


def _data(t=7, h=12, w=20):
    return np.arange(t * h * w, dtype=np.uint16).reshape(t, h, w)


def _boxes():
    """Frames (1-based) and one kind of 2 x 3 box (row0, col0, height, width), hand-placed."""
    frames = np.array([3, 1, 3, 7])
    return frames, [(np.array([0, 2, 10, 5]), np.array([0, 5, 17, 1]), 2, 3)]


def _expected(data, frames, boxes):
    (row0, col0, h, w), *_ = boxes
    return [
        np.stack(
            [data[f - 1, r : r + h, c : c + w] for f, r, c in zip(frames, row0, col0, strict=True)]
        )
    ]


def _same(got, expected):
    return len(got) == len(expected) and all(
        np.array_equal(a, b) for a, b in zip(got, expected, strict=True)
    )


def test_memmapped_single_file(tmp_path):
    data = _data()
    p = tmp_path / "s.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "TYX"})
    with Stack(p) as s:
        assert s.shape == (7, 12, 20) and s._fh is not None
        assert np.array_equal(s.frame(7), data[6])
        assert _same(s.gather(*_boxes()), _expected(data, *_boxes()))


def test_gather_two_kinds_of_box_from_one_read(tmp_path, monkeypatch):
    """The localization box and the spectral box (another size, another row) of each patch
    come from one read of each frame; a box that leaves the frame is an error, not a wrap."""
    data = _data()
    p = tmp_path / "s.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "TYX"})
    frames = np.array([3, 1, 3, 7])
    loc = (np.array([0, 2, 9, 5]), np.array([0, 5, 1, 1]), 3, 2)
    spec = (np.array([1, 3, 8, 4]), np.array([10, 15, 14, 12]), 3, 5)
    with Stack(p) as s:
        reads = []
        original = s._read_rows
        monkeypatch.setattr(
            s, "_read_rows", lambda f, a, b, out: reads.append((f, a, b)) or original(f, a, b, out)
        )
        got = s.gather(frames, [loc, spec])
        # only the rows the boxes cover, each run of rows once, frames in file order
        assert reads == [(1, 2, 6), (3, 0, 4), (3, 8, 12), (7, 4, 8)]
        assert _same(got, _expected(data, frames, [loc]) + _expected(data, frames, [spec]))
        assert got[1][3].tolist() == data[6, 4:7, 12:17].tolist()
        # a buffer of one or two frames: read in several batches, same boxes
        for frames_per_batch in (1, 2):
            monkeypatch.setattr(stack_module, "GATHER_BUFFER_BYTES", frames_per_batch * 12 * 20 * 2)
            assert _same(s.gather(frames, [loc, spec]), got)
        with pytest.raises(ValueError, match="leaves"):
            s.gather(frames, [(np.array([0, 0, 0, -1]), np.zeros(4, int), 2, 2)])
        with pytest.raises(ValueError, match="leaves"):
            s.gather(frames, [(np.zeros(4, int), np.array([0, 0, 0, 16]), 2, 5)])


def test_compressed_file_read_page_by_page(tmp_path):
    data = _data()
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, data, compression="zlib", metadata={"axes": "TYX"})
    with Stack(p) as s:
        assert s._fh is None
        assert _same(s.gather(*_boxes()), _expected(data, *_boxes()))


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
        _, boxes = _boxes()
        frames = np.array([9, 1, 5, 6])
        assert _same(s.gather(frames, boxes), _expected(data, frames, boxes))


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
            s.gather(np.array([50]), [(np.array([0]), np.array([0]), 1, 1)])
