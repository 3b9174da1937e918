"""The evaluation figure: spectral-centre error of every estimator against the simulated ground
truth (metrics.json), as bars under the labels the README uses, with the dye accuracy and the
maximum-likelihood readout's flags, coverage and efficiency."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..mle import FLAGS
from .common import FONT, fmt, new_figure, note_figure, number

#: metrics.json ``sc_error`` key -> its label in the report, in the order shown
ESTIMATOR_LABELS = {
    "raw_mle_trusted": "raw, maximum likelihood (trusted)",
    "raw_mle": "raw, maximum likelihood (all)",
    "raw_gaussian_fit": "raw, least-squares fit",
    "denoised_gaussian_fit": "denoised, least-squares fit",
    "raw_gaussian_fit_paired": "raw, least-squares fit (paired)",
    "denoised_gaussian_fit_paired": "denoised, least-squares fit (paired)",
    "raw_centroid": "raw centroid",
    "denoised_centroid": "denoised centroid",
    "molecule": "per molecule, maximum likelihood",
    "molecule_joint": "per molecule, joint fit",
    "molecule_mean": "per molecule, weighted mean",
}
#: estimators no longer read out: left out of the figure when an old metrics.json has them
RETIRED = ("sf_fused_centroid",)
#: bar colour by the family of an estimator's label (first match)
FAMILY_COLOURS = (
    ("per molecule", "tab:purple"),
    ("maximum likelihood", "tab:green"),
    ("least-squares", "tab:blue"),
    ("centroid", "tab:gray"),
)
#: dye_accuracy key -> label
DYE_ACCURACY_LABELS = {"localization": "per localization", "molecule": "per molecule"}


def estimator_label(key: str) -> str:
    """The report's label of an estimator (an unknown one: its key in words)."""
    return ESTIMATOR_LABELS.get(key, key.replace("_", " "))


def evaluation_rows(sc_error: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping]]:
    """(label, statistics) per estimator: maximum likelihood, least-squares fits, centroids,
    per molecule, then any other in metrics.json's order; retired estimators left out."""
    keys = [k for k in ESTIMATOR_LABELS if k in sc_error]
    keys += [k for k in sc_error if k not in ESTIMATOR_LABELS and k not in RETIRED]
    return [(estimator_label(k), sc_error[k]) for k in keys]


def _colour(label: str) -> str:
    return next((c for family, c in FAMILY_COLOURS if family in label), "tab:olive")


def _bar_panel(ax, stats: list[Mapping], key: str, spec: str, colours: list[str]) -> None:
    """Horizontal bars of ``stats[i][key]`` with their values written beside them; a bar far
    above the others is cut at the axis' edge (its value still written)."""
    v = np.array([number(s.get(key)) for s in stats], dtype=np.float64)
    finite = v[np.isfinite(v)]
    top = float(np.max(np.abs(finite))) if len(finite) else 1.0
    med = float(np.median(np.abs(finite))) if len(finite) else 1.0
    cap = min(top, 4 * med) if med > 0 else top
    cap = cap if cap > 0 else 1.0
    ypos = np.arange(len(v))
    ax.barh(ypos, np.clip(np.nan_to_num(v), -cap, cap), color=colours)
    for y, value in zip(ypos, v, strict=True):
        x = float(np.clip(np.nan_to_num(value), -cap, cap))
        ha = "right" if x < 0 else "left"
        ax.text(x, y, f" {fmt(value, spec)} ", va="center", ha=ha, fontsize=FONT["legend"])
    if np.any(finite < 0):
        ax.set_xlim(-1.6 * cap, 1.6 * cap)
        ax.axvline(0, color="k", lw=0.8)
    else:
        ax.set_xlim(0, 1.35 * cap)


def _within_panel(ax, stats: list[Mapping], colours: list[str]) -> None:
    """Fraction within the tolerance (bars, % of all scored: no value counts as outside) over
    the fraction with a value (grey outline), each written as ``80% of n``."""
    within = np.array([number(s.get("within_tolerance")) for s in stats]) * 100
    valid = np.array([number(s.get("valid_fraction")) for s in stats]) * 100
    ypos = np.arange(len(stats))
    ax.barh(ypos, np.nan_to_num(valid), fill=False, edgecolor="0.5")
    ax.barh(ypos, np.nan_to_num(within), color=colours)
    for y, w, s in zip(ypos, within, stats, strict=True):
        n = fmt(s.get("n"), ".0f")
        text = f" {fmt(w, '.0f')}% of {n}" if np.isfinite(w) else f" none (n {n})"
        ax.text(100, y, text, va="center", fontsize=FONT["legend"])
    ax.set_xlim(0, 175)
    ax.set_xticks([0, 25, 50, 75, 100])


def mle_caption(mle: Mapping[str, Any] | None) -> str:
    """One line on the MLE readout's flags, CRLB coverage and efficiency (empty without)."""
    if not mle:
        return ""
    flagged = mle.get("flagged_fraction", {})
    parts = ", ".join(f"{k} {fmt(flagged[k], '.1f', 100, '%')}" for k in FLAGS if k in flagged)
    return (
        f"Maximum likelihood: flagged {fmt(flagged.get('any'), '.1f', 100, '%')} ({parts}); "
        f"|error| within 1x / 2x CRLB: {fmt(mle.get('coverage_1x'), '.1f', 100, '%')} / "
        f"{fmt(mle.get('coverage_2x'), '.1f', 100, '%')} (ideal 68.3% / 95.4%); "
        f"efficiency {fmt(mle.get('efficiency'), '.2f')}"
    )


def dye_caption(accuracy: Mapping[str, Any] | None) -> str:
    """One line on the dye-classification accuracy, per localization then per molecule
    (empty without)."""
    if not accuracy:
        return ""
    keys = [k for k in DYE_ACCURACY_LABELS if k in accuracy]
    keys += [k for k in accuracy if k not in DYE_ACCURACY_LABELS]
    parts = (
        f"{DYE_ACCURACY_LABELS.get(k, k.replace('_', ' '))} {fmt(accuracy[k], '.1f', 100, '%')}"
        for k in keys
    )
    return "Dye classification accuracy: " + ", ".join(parts)


def evaluation_figure(metrics: Mapping[str, Any]) -> Figure:
    """Bias, RMSE, median |error| and the fraction within the tolerance of every estimator of
    ``metrics`` (metrics.json), one bar row each under its report label; the dye accuracy and
    the MLE flags / coverage / efficiency written below."""
    rows = evaluation_rows(metrics.get("sc_error", {}))
    if not rows:
        return note_figure("metrics.json has no spectral-centre errors", (9, 1.5))
    labels, stats = [r[0] for r in rows], [r[1] for r in rows]
    colours = [_colour(label) for label in labels]
    tolerance = fmt(metrics.get("tolerance_nm"), "g")
    fig, axes = new_figure(1, 4, size=(15, 0.42 * len(rows) + 1.6), sharey=True)
    for ax, (key, title, spec) in zip(
        axes[:3],
        (
            ("bias_nm", "bias (nm)", "+.2f"),
            ("rmse_nm", "RMSE (nm)", ".2f"),
            ("median_abs_error_nm", "median |error| (nm)", ".2f"),
        ),
        strict=True,
    ):
        _bar_panel(ax, stats, key, spec, colours)
        ax.set_title(title, fontsize=FONT["title"])
    _within_panel(axes[3], stats, colours)
    axes[3].set_title(f"within {tolerance} nm (%; outline: with a value)", fontsize=FONT["title"])
    axes[0].set_yticks(np.arange(len(rows)), labels, fontsize=FONT["title"])
    axes[0].invert_yaxis()
    fig.suptitle(
        "Spectral-centre error against the ground truth "
        f"({fmt(metrics.get('matched_localizations'), '.0f')} matched localizations)",
        fontsize=FONT["title"] + 1,
    )
    lines = (dye_caption(metrics.get("dye_accuracy")), mle_caption(metrics.get("mle")))
    fig.text(0.5, -0.02, "\n".join(t for t in lines if t), ha="center", va="top", fontsize=10)
    return fig
