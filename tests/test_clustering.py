import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import DBSCAN

from srsmlm.clustering import cluster_localizations, cluster_stage, dbscan_pixels, split_runs
from srsmlm.errors import InputError


def test_dbscan_identical_pixels_only_with_small_eps():
    px = np.array([5, 5, 5, 6, 6, 9])
    py = np.array([1, 1, 1, 1, 1, 1])
    labels = dbscan_pixels(px, py, eps=0.001, min_samples=3)
    assert labels.tolist() == [0, 0, 0, -1, -1, -1]  # (6,1) has only 2 points


@pytest.mark.parametrize("eps, min_samples", [(0.001, 3), (1.0, 4), (1.5, 5), (3.0, 10)])
def test_weighted_unique_dbscan_equals_plain_dbscan(eps, min_samples):
    rng = np.random.default_rng(3)
    px = rng.integers(0, 12, 600)
    py = rng.integers(0, 8, 600)
    ours = dbscan_pixels(px, py, eps, min_samples)
    ref = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(np.column_stack([px, py]))
    # same partition (label numbers may differ)
    assert ((ours < 0) == (ref < 0)).all()
    pairs = set(zip(ours[ours >= 0], ref[ref >= 0], strict=True))
    assert len(pairs) == len(set(ours[ours >= 0])) == len(set(ref[ref >= 0]))


def test_split_runs_hand_computed():
    cluster = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, -1, -1, -1])
    frame = np.array([1, 2, 3, 5, 6, 7, 10, 11, 12, 1, 2, 3])
    runs = split_runs(cluster, frame, min_run_length=3)
    assert runs.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1]
    runs = split_runs(cluster, frame, min_run_length=4)
    assert (runs == -1).all()


def test_split_runs_unsorted_input_and_duplicate_frames():
    cluster = np.array([0, 0, 0, 0, 0])
    frame = np.array([3, 1, 2, 4, 4])  # frame 4 twice breaks the run: [1,2,3,4] then [4]
    runs = split_runs(cluster, frame, min_run_length=2)
    assert runs.tolist() == [0, 0, 0, 0, -1] or runs.tolist() == [0, 0, 0, -1, 0]
    assert (runs == 0).sum() == 4


def test_split_runs_empty():
    assert split_runs(np.array([]), np.array([]), 9).size == 0


def test_cluster_localizations_keeps_runs_of_min_length():
    frames = list(range(1, 10)) + list(range(20, 28)) + [1, 2, 3]
    df = pd.DataFrame(
        {
            "frame": frames,
            "pixel_x": [10] * 17 + [50] * 3,
            "pixel_y": [20] * 17 + [60] * 3,
        }
    )
    kept, counts = cluster_localizations(df, eps=0.001, min_samples=3, min_run_length=9)
    assert kept["frame"].tolist() == list(range(1, 10))
    assert kept["cluster"].unique().tolist() == [0]
    assert counts["in_short_runs"] == 11 and counts["runs"] == 1


def test_cluster_stage_no_run_error(tmp_path):
    p = tmp_path / "loc.csv"
    pd.DataFrame({"frame": [1, 2, 3], "pixel_x": [1, 1, 1], "pixel_y": [1, 1, 1]}).to_csv(
        p, index=False
    )
    out = tmp_path / "clusters.csv"
    with pytest.raises(InputError, match="clustering.min_run_length"):
        cluster_stage(p, 0.001, 3, 9, out)
    assert not out.exists()
