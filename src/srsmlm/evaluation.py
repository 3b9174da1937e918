"""Evaluation of spectral estimates against the simulator's ground truth."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from .io import write_csv, write_json

log = logging.getLogger(__name__)

#: estimator name -> column of spectra.csv
ESTIMATORS = {
    "raw_centroid": "sc_raw_nm",
    "raw_gaussian_fit": "fit_raw_centre_nm",
    "sf_fused_centroid": "sc_fused_nm",
    "denoised_centroid": "sc_denoised_nm",
    "denoised_gaussian_fit": "fit_denoised_centre_nm",
}


def match_truth(
    spectra: pd.DataFrame, truth: pd.DataFrame, tolerance_px: float = 0.02
) -> pd.DataFrame:
    """Attach the true centroid and dye to each localization: same frame, reported position
    within ``tolerance_px`` of the truth's ``loc_x``/``loc_y``. False detections get NaN."""
    det = truth[truth["detected"].astype(bool)]
    scale = 1e5  # frames far apart in the search space
    tree = cKDTree(np.column_stack([det["frame"] * scale, det["loc_x"], det["loc_y"]]))
    dist, idx = tree.query(
        np.column_stack([spectra["frame"] * scale, spectra["x"], spectra["y"]]),
        distance_upper_bound=tolerance_px,
    )
    found = np.isfinite(dist)
    out = spectra.copy()
    out["sc_true_nm"] = np.nan
    out["dye_true"] = -1
    out.loc[found, "sc_true_nm"] = det["sc_true_nm"].to_numpy()[idx[found]]
    out.loc[found, "dye_true"] = det["dye"].to_numpy()[idx[found]]
    return out


def error_stats(err: np.ndarray, tolerance: float) -> dict[str, float]:
    """Bias, RMSE, median |error|, fraction within tolerance; NaN estimates count as failures."""
    n = len(err)
    ok = np.isfinite(err)
    e = err[ok]
    return {
        "n": int(n),
        "valid_fraction": float(ok.mean()) if n else float("nan"),
        "bias_nm": float(e.mean()) if len(e) else float("nan"),
        "rmse_nm": float(np.sqrt((e**2).mean())) if len(e) else float("nan"),
        "median_abs_error_nm": float(np.median(np.abs(e))) if len(e) else float("nan"),
        "within_tolerance": float((np.abs(err) <= tolerance).sum() / n) if n else float("nan"),
    }


def bias_by_group(err: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Mean error per group (finite errors only). An estimator can be unbiased overall while
    biased in opposite directions per dye (a centroid pulled toward the window's centre)."""
    err, groups = np.asarray(err, dtype=np.float64), np.asarray(groups)
    out = {}
    for g in np.unique(groups):
        e = err[(groups == g) & np.isfinite(err)]
        out[str(g)] = float(e.mean()) if len(e) else float("nan")
    return out


def classification_accuracy(predicted: np.ndarray, true: np.ndarray) -> float:
    """Accuracy after the best one-to-one mapping of predicted classes to true dyes."""
    ok = (predicted >= 0) & (true >= 0)
    if not ok.any():
        return float("nan")
    p, t = predicted[ok], true[ok]
    conf = np.zeros((p.max() + 1, t.max() + 1))
    np.add.at(conf, (p, t), 1)
    rows, cols = linear_sum_assignment(-conf)
    return float(conf[rows, cols].sum() / len(p))


def evaluate(
    spectra_paths: list[str | Path],
    truth_paths: list[str | Path],
    names: list[str],
    signal_bins: int,
    tolerance_nm: float,
    metrics_json: str | Path,
    table_csv: str | Path,
) -> dict[str, Any]:
    """Spectral-centroid error of every estimator against the truth, overall and by signal bin."""
    frames = []
    for name, sp, tp in zip(names, spectra_paths, truth_paths, strict=True):
        m = match_truth(pd.read_csv(sp), pd.read_csv(tp))
        frames.append(m.assign(acquisition=name))
    df = pd.concat(frames, ignore_index=True)
    matched = df[df["sc_true_nm"].notna()].copy()
    log.info(
        "%d of %d localizations matched to the truth (%d false detections)",
        len(matched),
        len(df),
        len(df) - len(matched),
    )
    bins = pd.qcut(matched["signal"], q=signal_bins, duplicates="drop")
    matched["signal_bin"] = bins.cat.codes
    rows = []
    overall: dict[str, Any] = {}
    for est, col in ESTIMATORS.items():
        if col not in matched:
            continue
        err = (matched[col] - matched["sc_true_nm"]).to_numpy()
        dyes = matched["dye_true"].to_numpy()
        if est == "sf_fused_centroid":
            in_run = matched["cluster"].to_numpy() >= 0
            err, dyes = err[in_run], dyes[in_run]
            stats = error_stats(err, tolerance_nm) | {"note": "localizations in runs only"}
        else:
            stats = error_stats(err, tolerance_nm)
        stats["bias_by_true_dye_nm"] = bias_by_group(err, dyes)
        overall[est] = stats
        for b, grp in matched.groupby("signal_bin"):
            e = (grp[col] - grp["sc_true_nm"]).to_numpy()
            if est == "sf_fused_centroid":
                e = e[grp["cluster"].to_numpy() >= 0]
            iv = bins.cat.categories[b]
            rows.append(
                {
                    "estimator": est,
                    "signal_bin": int(b),
                    "signal_min": iv.left,
                    "signal_max": iv.right,
                    **error_stats(e, tolerance_nm),
                }
            )
    metrics = {
        "matched_localizations": int(len(matched)),
        "tolerance_nm": tolerance_nm,
        "sc_error": overall,
        "dye_accuracy": {
            name: classification_accuracy(
                matched[f"dye_{name}"].to_numpy(), matched["dye_true"].to_numpy()
            )
            for name in ("raw", "denoised")
            if f"dye_{name}" in matched
        },
    }
    best_classical = min(overall["raw_centroid"]["rmse_nm"], overall["raw_gaussian_fit"]["rmse_nm"])
    metrics["denoised_beats_classical"] = bool(
        min(overall["denoised_centroid"]["rmse_nm"], overall["denoised_gaussian_fit"]["rmse_nm"])
        < best_classical
    )
    write_csv(pd.DataFrame(rows), table_csv)
    write_json(metrics, metrics_json)
    for est, s in overall.items():
        log.info(
            "%-22s bias %+.2f nm, RMSE %.2f nm, median |err| %.2f nm, within %.0f nm: %.1f%%",
            est,
            s["bias_nm"],
            s["rmse_nm"],
            s["median_abs_error_nm"],
            tolerance_nm,
            100 * s["within_tolerance"],
        )
    return metrics
