"""Evaluation of spectral estimates against the simulator's ground truth."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from .geometry import Geometry
from .io import write_csv, write_json
from .mle import FLAGS
from .profiles import gaussian_fit

log = logging.getLogger(__name__)

#: estimator name -> column of spectra.csv
ESTIMATORS = {
    "raw_centroid": "sc_raw_nm",
    "raw_gaussian_fit": "fit_raw_centre_nm",
    "raw_mle": "sc_mle_nm",
    "raw_mle_trusted": "sc_mle_nm",
    "denoised_centroid": "sc_denoised_nm",
    "denoised_gaussian_fit": "fit_denoised_centre_nm",
}

#: estimators also scored head to head with another, on the localizations both read
#: (``<name>_paired`` and ``<other>_paired`` in ``sc_error`` and the table)
PAIRED = {"denoised_gaussian_fit": "raw_gaussian_fit"}

#: the spectra.csv columns the evaluation reads (the others are not read: bounded memory)
SPECTRA_COLUMNS = frozenset(
    {"frame", "x", "y", "signal", "cluster", "sc_mle_flag", "sc_mle_crlb_nm"}
    | {"fit_denoised_spread_nm", "fit_denoised_err_nm", "group_size"}
    | set(ESTIMATORS.values())
    | {"dye"}
)

#: group sizes the maximum-likelihood readout is scored by (label, smallest, largest): alone,
#: fitted with one or two neighbours, and in larger groups (fitted jointly up to
#: ``spectra.max_group_size``, flagged ``crowded`` above)
GROUP_SIZES = (("1", 1, 1), ("2", 2, 2), ("3", 3, 3), (">=4", 4, np.inf))

#: the truth.csv columns the evaluation reads
TRUTH_COLUMNS = frozenset({"frame", "loc_x", "loc_y", "detected", "sc_true_nm", "dye"})


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


def _trusted(matched: pd.DataFrame) -> np.ndarray:
    """Whether each localization's maximum-likelihood value is trusted (no flag)."""
    return matched["sc_mle_flag"].fillna("").to_numpy() == ""


def _estimator_errors(matched: pd.DataFrame, est: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Errors (nm) of one estimator and the rows they belong to (a boolean mask): trusted fits
    only for ``raw_mle_trusted``, every localization for the others."""
    rows = np.ones(len(matched), dtype=bool)
    if est == "raw_mle_trusted":
        rows = _trusted(matched)
    return (matched[col] - matched["sc_true_nm"]).to_numpy()[rows], rows


def _paired_rows(matched: pd.DataFrame, est: str, other: str) -> np.ndarray:
    """Mask of the localizations both estimators read (finite values): comparing two estimators
    each on its own successes flatters the one that fails on the hard cases."""
    return np.isfinite(matched[ESTIMATORS[est]].to_numpy(dtype=np.float64)) & np.isfinite(
        matched[ESTIMATORS[other]].to_numpy(dtype=np.float64)
    )


def _grouped_rows(
    est: str, err: np.ndarray, keys: np.ndarray, by: str, labels: dict, tolerance: float
) -> list[dict[str, Any]]:
    """One row of error statistics per group (signal bin or dye)."""
    rows = []
    for key in np.unique(keys):
        if key < 0:
            continue
        rows.append(
            {
                "estimator": est,
                "by": by,
                "group": int(key),
                **labels.get(int(key), {}),
                **error_stats(err[keys == key], tolerance),
            }
        )
    return rows


def mle_quality(
    matched: pd.DataFrame, all_rows: pd.DataFrame, signal_bin: np.ndarray, bins: pd.IntervalIndex
) -> dict[str, Any]:
    """Flags, efficiency (CRLB-implied RMSE / observed RMSE of trusted fits, overall and by
    signal bin) and calibration of the bound (fraction of trusted errors within 1x and 2x)."""
    flag = all_rows["sc_mle_flag"].fillna("")
    fractions = {"any": float((flag != "").mean()) if len(flag) else float("nan")}
    fractions |= {f: float((flag == f).mean()) if len(flag) else float("nan") for f in FLAGS}
    trusted = _trusted(matched)
    err = (matched["sc_mle_nm"] - matched["sc_true_nm"]).to_numpy()
    crlb = matched["sc_mle_crlb_nm"].to_numpy()
    ok = trusted & np.isfinite(err) & np.isfinite(crlb)

    def eff(mask):
        m = ok & mask
        if not m.any():
            return float("nan"), float("nan"), 0
        bound, observed = np.sqrt(np.mean(crlb[m] ** 2)), np.sqrt(np.mean(err[m] ** 2))
        return float(bound), float(observed), int(m.sum())

    by_bin = []
    for b in range(len(bins)):
        bound, observed, n = eff(signal_bin == b)
        by_bin.append(
            {
                "signal_bin": b,
                "signal_min": bins[b].left,
                "signal_max": bins[b].right,
                "n_trusted": n,
                "crlb_rmse_nm": bound,
                "observed_rmse_nm": observed,
                "efficiency": bound / observed if n else float("nan"),
            }
        )
    bound, observed, n = eff(np.ones(len(matched), dtype=bool))
    size = matched["group_size"].to_numpy() if "group_size" in matched else np.ones(len(matched))
    return {
        "flagged_fraction": fractions,
        "coverage_1x": float(np.mean(np.abs(err[ok]) <= crlb[ok])) if n else float("nan"),
        "coverage_2x": float(np.mean(np.abs(err[ok]) <= 2 * crlb[ok])) if n else float("nan"),
        "efficiency": bound / observed if n else float("nan"),
        "crlb_rmse_nm": bound,
        "observed_rmse_nm": observed,
        "by_signal_bin": by_bin,
        "trusted_fraction": float(trusted.mean()) if len(trusted) else float("nan"),
        "by_group_size": _by_group_size(size, trusted, ok, err, crlb),
    }


def _by_group_size(
    size: np.ndarray, trusted: np.ndarray, ok: np.ndarray, err: np.ndarray, crlb: np.ndarray
) -> list[dict[str, Any]]:
    """Trusted share, efficiency and 2x coverage of the readout per ``GROUP_SIZES`` entry
    (``ok``: trusted with a finite error and bound)."""
    rows = []
    for label, lo, hi in GROUP_SIZES:
        in_group = (size >= lo) & (size <= hi)
        m = ok & in_group
        rows.append(
            {
                "group_size": label,
                "n": int(in_group.sum()),
                "trusted_fraction": float(trusted[in_group].mean()) if in_group.any() else None,
                "efficiency": float(np.sqrt(np.mean(crlb[m] ** 2) / np.mean(err[m] ** 2)))
                if m.any()
                else None,
                "coverage_2x": float(np.mean(np.abs(err[m]) <= 2 * crlb[m])) if m.any() else None,
            }
        )
    return rows


def molecule_errors(molecules: pd.DataFrame, matched: pd.DataFrame) -> pd.DataFrame:
    """Per-molecule error against the molecule's true centre: the true value most of the run's
    matched localizations carry (runs mixing molecules keep their majority)."""
    truth = (
        matched[matched["cluster"] >= 0]
        .groupby(["acquisition", "cluster"])[["sc_true_nm", "dye_true"]]
        .agg(lambda v: v.mode().iloc[0])
    )
    m = molecules.join(truth, on=["acquisition", "cluster"], how="inner")
    return m.assign(error_nm=m["sc_nm"] - m["sc_true_nm"])


#: width of the fixed bins of :func:`spectral_shift`'s ``by_box_px`` (px of the spectral box)
BOX_BIN_PX = 6


def spectral_shift(
    predicted: np.ndarray, target: np.ndarray, g: Geometry, nm_per_px: float, bins: int = 3
) -> dict[str, Any]:
    """The network's spectral bias on held-out patches: the least-squares Gaussian centre of
    each prediction's spectral profile (all rows summed) minus that of its target (nm), for
    patches whose target holds a spectrum; overall, by thirds (``bins``, equal counts) of the
    target's centre along the box (blue to red) and in fixed ``BOX_BIN_PX`` bins of it
    (``by_box_px``: a shift where one dye sits, e.g. -0.9 nm 12-18 px into the box, hides in a
    third). Needs no truth, so it is reported for every model."""
    spec = np.s_[:, :, g.loc_width :]
    has = np.asarray(target)[spec].max(axis=(1, 2)) > 0
    lam = np.broadcast_to(
        (np.arange(g.spectral_width) + 0.5) * nm_per_px, (int(has.sum()), g.spectral_width)
    )
    fit_t = gaussian_fit(np.asarray(target)[spec][has].sum(axis=1), lam)["centre"]
    fit_p = gaussian_fit(np.asarray(predicted)[spec][has].sum(axis=1), lam)["centre"]
    shift = fit_p - fit_t
    ok = np.isfinite(shift)
    out: dict[str, Any] = {
        "n": int(ok.sum()),
        "failed_fits": int((~ok).sum()),
        "mean_nm": float(np.mean(shift[ok])) if ok.any() else float("nan"),
        "median_nm": float(np.median(shift[ok])) if ok.any() else float("nan"),
        "by_position": [],
        "by_box_px": [],
    }
    # fixed 6-px bins along the box: a shift where one dye sits hides in a third of the box
    cols = (fit_t[ok] / nm_per_px) if ok.any() else np.zeros(0)
    for lo in range(0, g.spectral_width, BOX_BIN_PX):
        sel = shift[ok][(cols >= lo) & (cols < lo + BOX_BIN_PX)]
        if len(sel):
            out["by_box_px"].append(
                {
                    "from_px": lo,
                    "to_px": lo + BOX_BIN_PX,
                    "n": int(len(sel)),
                    "median_nm": float(np.median(sel)),
                }
            )
    if ok.sum() >= bins:
        edges = np.quantile(fit_t[ok], np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, fit_t[ok], side="right") - 1, 0, bins - 1)
        for b in range(bins):
            sel = shift[ok][which == b]
            out["by_position"].append(
                {
                    "target_from_nm": float(edges[b]),
                    "target_to_nm": float(edges[b + 1]),
                    "n": int(len(sel)),
                    "mean_nm": float(sel.mean()) if len(sel) else float("nan"),
                    "median_nm": float(np.median(sel)) if len(sel) else float("nan"),
                }
            )
    return out


def error_by_quantiles(err: np.ndarray, value: np.ndarray, n: int) -> list[dict[str, float]]:
    """Median and RMS error in ``n`` quantile bins of ``value`` (finite pairs only): does a
    per-localization trust value (e.g. the spread of the cycle-spun denoised centres) rank the
    errors?"""
    ok = np.isfinite(err) & np.isfinite(value)
    if ok.sum() < n:
        return []
    e, v = err[ok], value[ok]
    edges = np.quantile(v, np.linspace(0, 1, n + 1))
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n - 1)
    return [
        {
            "from": float(edges[b]),
            "to": float(edges[b + 1]),
            "n": int((which == b).sum()),
            "median_abs_error_nm": float(np.median(np.abs(e[which == b]))),
            "rmse_nm": float(np.sqrt(np.mean(e[which == b] ** 2))),
        }
        for b in range(n)
        if (which == b).any()
    ]


def load_matched(
    spectra_paths: list[str | Path], truth_paths: list[str | Path], names: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every acquisition's spectra.csv (the ``SPECTRA_COLUMNS``) matched to its truth
    (:func:`match_truth`): all localizations, and those matched to a true emitter."""
    frames = []
    for name, sp, tp in zip(names, spectra_paths, truth_paths, strict=True):
        spectra = pd.read_csv(sp, keep_default_na=True, usecols=SPECTRA_COLUMNS.__contains__)
        m = match_truth(spectra, pd.read_csv(tp, usecols=TRUTH_COLUMNS.__contains__))
        frames.append(m.assign(acquisition=name))
    df = pd.concat(frames, ignore_index=True)
    matched = df[df["sc_true_nm"].notna()].copy()
    log.info(
        "%d of %d localizations matched to the truth (%d false detections)",
        len(matched),
        len(df),
        len(df) - len(matched),
    )
    return df, matched


def score_estimators(
    matched: pd.DataFrame, signal_bin: np.ndarray, labels: dict, tolerance_nm: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Error statistics of every estimator in ``matched`` (overall, and rows by signal bin and
    by true dye), then of the ``PAIRED`` estimators head to head."""
    rows: list[dict[str, Any]] = []
    overall: dict[str, Any] = {}
    dyes = matched["dye_true"].to_numpy()
    for est, col in ESTIMATORS.items():
        if col not in matched:
            continue
        err, sel = _estimator_errors(matched, est, col)
        stats = error_stats(err, tolerance_nm)
        if est == "raw_mle_trusted":
            stats["note"] = "localizations with an empty sc_mle_flag only"
        stats["bias_by_true_dye_nm"] = bias_by_group(err, dyes[sel])
        overall[est] = stats
        rows += _grouped_rows(est, err, signal_bin[sel], "signal_bin", labels, tolerance_nm)
        rows += _grouped_rows(est, err, dyes[sel], "dye", {}, tolerance_nm)
    for est, other in PAIRED.items():
        if ESTIMATORS[est] not in matched or ESTIMATORS[other] not in matched:
            continue
        both = _paired_rows(matched, est, other)
        for name in (est, other):
            err = (matched[ESTIMATORS[name]] - matched["sc_true_nm"]).to_numpy()[both]
            label = f"{name}_paired"
            overall[label] = error_stats(err, tolerance_nm) | {
                "note": f"only localizations that both {est} and {other} read",
                "bias_by_true_dye_nm": bias_by_group(err, dyes[both]),
            }
            rows += _grouped_rows(label, err, signal_bin[both], "signal_bin", labels, tolerance_nm)
            rows += _grouped_rows(label, err, dyes[both], "dye", {}, tolerance_nm)
    return overall, rows


def score_molecules(
    molecules_paths: list[str | Path], names: list[str], matched: pd.DataFrame, tolerance_nm: float
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Error statistics of the per-molecule estimates against each molecule's true centre
    (overall and rows by true dye), and the molecules' dye-class accuracy."""
    mols = pd.concat(
        [pd.read_csv(p).assign(acquisition=n) for n, p in zip(names, molecules_paths, strict=True)],
        ignore_index=True,
    )
    me = molecule_errors(mols, matched)
    overall: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for est, col in (
        ("molecule", "sc_nm"),
        ("molecule_joint", "sc_joint_nm"),
        ("molecule_mean", "sc_mean_nm"),
    ):
        if col in me:
            e = (me[col] - me["sc_true_nm"]).to_numpy()
            overall[est] = error_stats(e, tolerance_nm) | {
                "note": "one value per run against the molecule's true centre",
                "bias_by_true_dye_nm": bias_by_group(e, me["dye_true"].to_numpy()),
            }
            rows += _grouped_rows(est, e, me["dye_true"].to_numpy(), "dye", {}, tolerance_nm)
    accuracy = classification_accuracy(me["dye"].to_numpy(), me["dye_true"].to_numpy())
    return overall, rows, accuracy


def err_coverage(matched: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Shares of the denoised fit's errors within 1x and 2x its ``fit_denoised_err_nm``, for
    all localizations with both and apart for those whose maximum-likelihood value is trusted
    and flagged (a Gaussian error gives 0.683 and 0.954)."""
    err = (matched[ESTIMATORS["denoised_gaussian_fit"]] - matched["sc_true_nm"]).to_numpy()
    bound = matched["fit_denoised_err_nm"].to_numpy(float)
    has = np.isfinite(err) & np.isfinite(bound)
    trusted = _trusted(matched)
    out = {}
    for name, sel in (("all", has), ("trusted", has & trusted), ("flagged", has & ~trusted)):
        ratio = np.abs(err[sel]) / bound[sel]
        out[name] = {
            "n": int(sel.sum()),
            "within_1x": float(np.mean(ratio <= 1)) if sel.any() else float("nan"),
            "within_2x": float(np.mean(ratio <= 2)) if sel.any() else float("nan"),
        }
    return out


def denoised_verdicts(overall: dict[str, Any], matched: pd.DataFrame) -> dict[str, Any]:
    """Whether the denoised readouts beat the raw ones (overall; the fits head to head) and the
    denoised fit's error by quintile of its spread over the shifts."""
    out: dict[str, Any] = {}
    best_classical = min(overall["raw_centroid"]["rmse_nm"], overall["raw_gaussian_fit"]["rmse_nm"])
    out["denoised_beats_classical"] = bool(
        min(overall["denoised_centroid"]["rmse_nm"], overall["denoised_gaussian_fit"]["rmse_nm"])
        < best_classical
    )
    if {"fit_denoised_spread_nm", ESTIMATORS["denoised_gaussian_fit"]} <= set(matched):
        err = (matched[ESTIMATORS["denoised_gaussian_fit"]] - matched["sc_true_nm"]).to_numpy()
        out["denoised_fit_by_spread"] = error_by_quantiles(
            err, matched["fit_denoised_spread_nm"].to_numpy(), 5
        )
    if "fit_denoised_err_nm" in matched:
        out["denoised_fit_err_coverage"] = err_coverage(matched)
    if "denoised_gaussian_fit_paired" in overall:
        d, r = overall["denoised_gaussian_fit_paired"], overall["raw_gaussian_fit_paired"]
        out["denoised_fit_beats_raw_fit_paired"] = bool(
            d["median_abs_error_nm"] < r["median_abs_error_nm"] and d["rmse_nm"] < r["rmse_nm"]
        )
    return out


def log_metrics(metrics: dict[str, Any], tolerance_nm: float) -> None:
    """One log line per estimator, and the maximum-likelihood readout's flags and calibration."""
    for est, s in metrics["sc_error"].items():
        log.info(
            "%-22s n %6d, bias %+.2f nm, RMSE %.2f nm, median |err| %.2f nm, within %.0f nm: %.1f%%",
            est,
            s["n"],
            s["bias_nm"],
            s["rmse_nm"],
            s["median_abs_error_nm"],
            tolerance_nm,
            100 * s["within_tolerance"],
        )
    if "mle" in metrics:
        q = metrics["mle"]
        log.info(
            "MLE flags %s; efficiency %.2f; coverage 1x %.3f, 2x %.3f; by signal bin %s",
            q["flagged_fraction"],
            q["efficiency"],
            q["coverage_1x"],
            q["coverage_2x"],
            [round(b["efficiency"], 3) for b in q["by_signal_bin"]],
        )


def evaluate(
    spectra_paths: list[str | Path],
    truth_paths: list[str | Path],
    names: list[str],
    signal_bins: int,
    tolerance_nm: float,
    metrics_json: str | Path,
    table_csv: str | Path,
    molecules_paths: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Spectral-centre error of every estimator against the truth (overall, by signal bin and by
    true dye), the maximum-likelihood readout's flags, efficiency and CRLB calibration, and the
    per-molecule error."""
    df, matched = load_matched(spectra_paths, truth_paths, names)
    bins = pd.qcut(matched["signal"], q=signal_bins, duplicates="drop")
    signal_bin = bins.cat.codes.to_numpy()
    labels = {
        i: {"signal_min": iv.left, "signal_max": iv.right}
        for i, iv in enumerate(bins.cat.categories)
    }
    overall, rows = score_estimators(matched, signal_bin, labels, tolerance_nm)
    metrics: dict[str, Any] = {
        "matched_localizations": int(len(matched)),
        "tolerance_nm": tolerance_nm,
        "sc_error": overall,
        "dye_accuracy": {},
    }
    if "dye" in matched:
        metrics["dye_accuracy"]["localization"] = classification_accuracy(
            matched["dye"].to_numpy(), matched["dye_true"].to_numpy()
        )
    if "sc_mle_nm" in matched:
        metrics["mle"] = mle_quality(matched, df, signal_bin, bins.cat.categories)
    if molecules_paths:
        mol_overall, mol_rows, accuracy = score_molecules(
            molecules_paths, names, matched, tolerance_nm
        )
        overall |= mol_overall
        rows += mol_rows
        metrics["dye_accuracy"]["molecule"] = accuracy
    metrics |= denoised_verdicts(overall, matched)
    write_csv(pd.DataFrame(rows), table_csv)
    write_json(metrics, metrics_json)
    log_metrics(metrics, tolerance_nm)
    return metrics
