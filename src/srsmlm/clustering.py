"""Grouping localizations into runs of one molecule: DBSCAN on candidate pixels, then runs of
consecutive frames inside each cluster (the guide keeps runs longer than 8 frames)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import DBSCAN

from .errors import InputError
from .io import write_csv

log = logging.getLogger(__name__)


def dbscan_pixels(
    pixel_x: np.ndarray, pixel_y: np.ndarray, eps: float, min_samples: int
) -> np.ndarray:
    """DBSCAN labels (``-1`` = noise) for points at integer candidate pixels.

    Runs scikit-learn's DBSCAN on the *unique* pixels weighted by their counts, which gives the
    same core points and clusters as DBSCAN on every point (identical points are always within
    ``eps`` of each other) but costs O(unique pixels), so 10^6 localizations take seconds.
    Labels are numbered in the order of the first pixel of each cluster (sorted by y, x).
    """
    pts = np.column_stack([np.asarray(pixel_x), np.asarray(pixel_y)])
    if len(pts) == 0:
        return np.empty(0, dtype=np.int64)
    uniq, inverse, counts = np.unique(pts, axis=0, return_inverse=True, return_counts=True)
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(uniq, sample_weight=counts)
    return labels[inverse.ravel()].astype(np.int64)


def split_runs(cluster: np.ndarray, frame: np.ndarray, min_run_length: int) -> np.ndarray:
    """Run id for each localization: consecutive frames (step exactly 1) within one cluster.

    ``cluster == -1`` (DBSCAN noise) never forms runs. Two localizations of one cluster in the
    same frame break the run, as in the guide. Runs shorter than ``min_run_length`` get ``-1``;
    kept runs are numbered 0, 1, ... in order of (cluster, first frame).
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    frame = np.asarray(frame, dtype=np.int64)
    n = len(cluster)
    run = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return run
    order = np.lexsort((frame, cluster))
    c, f = cluster[order], frame[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (c[1:] != c[:-1]) | (np.diff(f) != 1)
    rid = np.cumsum(new) - 1
    lengths = np.bincount(rid)
    keep_run = (lengths >= min_run_length) & (c[new] >= 0)
    renumber = np.full(len(lengths), -1, dtype=np.int64)
    renumber[keep_run] = np.arange(int(keep_run.sum()))
    run[order] = renumber[rid]
    return run


def cluster_localizations(
    df: pd.DataFrame, eps: float, min_samples: int, min_run_length: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Add ``localization_index`` (row in ``df``), ``dbscan_cluster`` and ``cluster`` (run id)
    and keep rows in runs.

    Returns rows of kept runs sorted by (cluster, frame), and counts for the log.
    """
    labels = dbscan_pixels(df["pixel_x"].to_numpy(), df["pixel_y"].to_numpy(), eps, min_samples)
    runs = split_runs(labels, df["frame"].to_numpy(), min_run_length)
    out = df.assign(localization_index=np.arange(len(df)), dbscan_cluster=labels, cluster=runs)
    kept = out[out["cluster"] >= 0].sort_values(["cluster", "frame"], kind="stable")
    counts = {
        "input": len(df),
        "dbscan_noise": int((labels < 0).sum()),
        "dbscan_clusters": int(labels.max() + 1) if len(labels) else 0,
        "in_short_runs": int(((labels >= 0) & (runs < 0)).sum()),
        "runs": int(runs.max() + 1) if (runs >= 0).any() else 0,
        "kept": len(kept),
    }
    return kept.reset_index(drop=True), counts


def cluster_stage(
    loc_path: str | Path, eps: float, min_samples: int, min_run_length: int, out_path: str | Path
) -> dict[str, int]:
    """Read ``localizations.csv``, cluster, write ``clusters.csv``; fail if no run is kept."""

    df = pd.read_csv(loc_path)
    kept, counts = cluster_localizations(df, eps, min_samples, min_run_length)
    log.info(
        "%s: %d localizations; DBSCAN(eps=%s, min_samples=%s): %d clusters, %d noise; "
        "%d in runs shorter than %d frames dropped; %d runs kept with %d localizations",
        loc_path,
        counts["input"],
        eps,
        min_samples,
        counts["dbscan_clusters"],
        counts["dbscan_noise"],
        counts["in_short_runs"],
        min_run_length,
        counts["runs"],
        counts["kept"],
    )
    if counts["runs"] == 0:
        raise InputError(
            loc_path,
            f"no run of >= {min_run_length} consecutive frames found ({counts['input']} "
            f"localizations, {counts['dbscan_clusters']} DBSCAN clusters)",
            "lower clustering.min_run_length, raise clustering.eps or lower clustering.min_samples "
            "in config/config.yaml",
        )
    write_csv(kept, out_path)
    return counts
