"""Pooling patches of the training acquisitions and the train/test split by run."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from sklearn.model_selection import GroupShuffleSplit

from .errors import InputError
from .io import atomic_path, write_csv

log = logging.getLogger(__name__)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Like ``numpy.savez`` but byte-for-byte reproducible (fixed zip timestamps), atomic."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                buf = io.BytesIO()
                np.lib.format.write_array(
                    buf, np.ascontiguousarray(arrays[name]), allow_pickle=False
                )
                zf.writestr(info, buf.getvalue())


def group_split(
    groups: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) such that no group (run of one molecule) sits on both sides.

    ``test_fraction`` is the fraction of groups sent to the test set. Sorted indices.
    """
    groups = np.asarray(groups)
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(np.unique(groups)) < 2 or test_fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    gss = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train, test = next(gss.split(np.zeros(n), groups=groups))
    return np.sort(train), np.sort(test)


def build_dataset(
    acquisitions: Sequence[str],
    raw_tifs: Sequence[str | Path],
    clean_tifs: Sequence[str | Path],
    tables: Sequence[str | Path],
    test_fraction: float,
    seed: int,
    train_npz: str | Path,
    test_npz: str | Path,
    index_csv: str | Path,
) -> dict[str, int]:
    """Pool exported patches and write ``train.npz`` / ``test.npz`` (``X``, ``Y``: float32,
    N x H x W x 1) plus an index table saying where each patch went."""
    xs, ys, metas = [], [], []
    for name, raw_p, clean_p, tab_p in zip(acquisitions, raw_tifs, clean_tifs, tables, strict=True):
        raw = tifffile.imread(raw_p)
        clean = tifffile.imread(clean_p)
        meta = pd.read_csv(tab_p)
        if raw.ndim == 2:
            raw, clean = raw[None], clean[None]
        if not (len(raw) == len(clean) == len(meta)):
            raise InputError(
                tab_p,
                f"{len(raw)} raw, {len(clean)} clean patches and {len(meta)} rows do not match",
                "rerun the patch stage for this acquisition",
            )
        xs.append(raw.astype(np.float32))
        ys.append(clean.astype(np.float32))
        metas.append(meta.assign(acquisition=name, index_in_acquisition=np.arange(len(meta))))
    if not xs:
        raise InputError(
            None,
            "no acquisition has role train or both",
            "mark at least one acquisition as train/both in the acquisitions sheet",
        )
    x = np.concatenate(xs)[..., None]
    y = np.concatenate(ys)[..., None]
    meta = pd.concat(metas, ignore_index=True)
    groups = (meta["acquisition"].astype(str) + ":" + meta["cluster"].astype(str)).to_numpy()
    train, test = group_split(groups, test_fraction, seed)
    save_npz(train_npz, X=x[train], Y=y[train])
    save_npz(test_npz, X=x[test], Y=y[test])
    meta["split"] = "train"
    meta.loc[test, "split"] = "test"

    write_csv(
        meta[["acquisition", "index_in_acquisition", "cluster", "frame", "kind", "split"]],
        index_csv,
    )
    counts = {
        "patches": len(meta),
        "train": len(train),
        "test": len(test),
        "groups": int(len(np.unique(groups))),
    }
    log.info(
        "dataset: %d patches from %d runs of %d acquisition(s): %d train, %d test",
        counts["patches"],
        counts["groups"],
        len(xs),
        counts["train"],
        counts["test"],
    )
    return counts
