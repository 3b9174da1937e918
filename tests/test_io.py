import numpy as np
import pytest
import tifffile

from srsmlm.io import PatchSpool, atomic_path, spool_dir, write_tif


def test_patch_spool_writes_chunks_as_one_stack(tmp_path):
    """Chunks appended one by one come out as one N x H x W float32 stack, byte-identical to
    writing the whole array at once; empty chunks are ignored; the order is kept."""
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 4, 6)), rng.random((3, 4, 6)).astype(np.float32)
    spool = PatchSpool(spool_dir(tmp_path / "out.tif"), ("raw", "clean"))
    spool.add(raw=a, clean=2 * a)
    spool.add(raw=a[:0], clean=a[:0])
    spool.add(raw=b, clean=2 * b)
    assert spool.n == 8
    spool.write({"raw": tmp_path / "raw.tif", "clean": tmp_path / "clean.tif"}, (4, 6))
    whole = np.concatenate([a.astype(np.float32), b])
    got = tifffile.imread(tmp_path / "raw.tif")
    assert got.dtype == np.float32 and np.array_equal(got, whole)
    assert np.array_equal(tifffile.imread(tmp_path / "clean.tif"), 2 * whole)
    write_tif(whole, tmp_path / "ref.tif")
    assert (tmp_path / "raw.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()
    with pytest.raises(ValueError, match="equal length"):
        spool.add(raw=a, clean=b)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "x.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists() and list(target.parent.iterdir()) == []
