import hashlib

import numpy as np
import pandas as pd
import tifffile

from srsmlm.dataset import build_dataset, group_split, save_npz


def test_group_split_never_splits_a_group():
    groups = np.repeat(np.arange(50), 7)
    train, test = group_split(groups, 0.2, seed=3)
    assert len(np.intersect1d(groups[train], groups[test])) == 0
    assert len(train) + len(test) == len(groups)
    assert len(np.unique(groups[test])) == 10
    t2, s2 = group_split(groups, 0.2, seed=3)
    assert np.array_equal(train, t2) and np.array_equal(test, s2)
    assert not np.array_equal(test, group_split(groups, 0.2, seed=4)[1])


def test_save_npz_is_reproducible(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_npz(tmp_path / "a.npz", X=x, Y=x * 2)
    save_npz(tmp_path / "b.npz", X=x, Y=x * 2)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as z:
        assert np.array_equal(z["Y"], x * 2)


def test_build_dataset_pools_and_splits_by_run(tmp_path):
    tifs = []
    for name, n in (("a", 30), ("b", 20)):
        raw = np.random.default_rng(len(name)).random((n, 16, 64)).astype(np.float32)
        tifffile.imwrite(tmp_path / f"{name}_raw.tif", raw)
        tifffile.imwrite(tmp_path / f"{name}_clean.tif", raw * 2)
        pd.DataFrame(
            {"cluster": np.repeat(np.arange(n // 10), 10), "frame": np.arange(n), "kind": "signal"}
        ).to_csv(tmp_path / f"{name}.csv", index=False)
        tifs.append(name)
    out = [tmp_path / f for f in ("train.npz", "test.npz", "index.csv")]
    counts = build_dataset(
        tifs,
        [tmp_path / f"{n}_raw.tif" for n in tifs],
        [tmp_path / f"{n}_clean.tif" for n in tifs],
        [tmp_path / f"{n}.csv" for n in tifs],
        0.4,
        1,
        *out,
    )
    assert counts == {"patches": 50, "train": counts["train"], "test": counts["test"], "groups": 5}
    with np.load(out[0]) as tr, np.load(out[1]) as te:
        assert tr["X"].shape[1:] == (16, 64, 1) and tr["X"].dtype == np.float32
        assert len(tr["X"]) + len(te["X"]) == 50 and len(te["X"]) == 20
        np.testing.assert_allclose(tr["Y"], tr["X"] * 2)
    index = pd.read_csv(out[2])
    per_run = index.groupby(["acquisition", "cluster"])["split"].nunique()
    assert (per_run == 1).all()
    first = hashlib.sha256(out[0].read_bytes()).hexdigest()
    build_dataset(
        tifs,
        [tmp_path / f"{n}_raw.tif" for n in tifs],
        [tmp_path / f"{n}_clean.tif" for n in tifs],
        [tmp_path / f"{n}.csv" for n in tifs],
        0.4,
        1,
        *out,
    )
    assert hashlib.sha256(out[0].read_bytes()).hexdigest() == first
