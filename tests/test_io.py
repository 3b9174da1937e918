import threading

import numpy as np
import pytest
import tifffile

from srsmlm.io import PatchSpool, atomic_path, prefetch, spool_dir, write_tif


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


def test_prefetch_keeps_order_and_overlaps():
    """Results come in order; fn of the next item runs while the caller holds the current."""
    started = {i: threading.Event() for i in range(4)}

    def fn(i):
        started[i].set()
        return i * i

    seen = []
    for item, result in prefetch(range(4), fn):
        seen.append((item, result))
        if item < 3:  # the next item is being computed while we hold this one
            assert started[item + 1].wait(timeout=10)
    assert seen == [(0, 0), (1, 1), (2, 4), (3, 9)]
    assert list(prefetch([], fn)) == []


def test_prefetch_raises_for_the_failing_item():
    def fn(i):
        if i == 2:
            raise OSError("disk gone")
        return i

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item, _ in prefetch(range(5), fn):
            got.append(item)
    assert got == [0, 1]


def test_patch_spool_save_failure_is_raised(tmp_path):
    spool = PatchSpool(tmp_path / "missing_dir", ("raw",))
    spool.add(raw=np.zeros((2, 3, 3)))
    with pytest.raises(OSError):
        spool.close()
