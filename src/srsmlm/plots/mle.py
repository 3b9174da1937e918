"""Figures of the maximum-likelihood readout: why localizations are flagged, the error of the
trusted centres against their Cramér-Rao bound, and the readout's efficiency by signal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..mle import FLAGS
from .common import (
    BOUND_CAP_NM,
    FONT,
    bin_centre,
    fmt,
    new_figure,
    note,
    note_figure,
    quantile_bins,
    values,
)


def mle_reasons(spectra: pd.DataFrame) -> pd.Categorical | None:
    """Per localization: ``trusted`` (no flag and a finite MLE centre), its ``sc_mle_flag``
    (one of :data:`srsmlm.mle.FLAGS`, or any other), or ``no_estimate`` (no flag but no
    centre). None when the tables have no MLE readout (``sc_mle_nm``)."""
    if "sc_mle_nm" not in spectra:
        return None
    if "sc_mle_flag" in spectra:
        flag = spectra["sc_mle_flag"].astype("string").fillna("").str.strip()
        flag = flag.to_numpy(dtype=object, na_value="")
    else:
        flag = np.full(len(spectra), "", dtype=object)
    finite = np.isfinite(values(spectra, "sc_mle_nm"))
    none = np.where(finite, "trusted", "no_estimate")
    return pd.Categorical(np.where(flag != "", flag, none))


def reason_order(reasons: pd.Categorical) -> list[str]:
    """``trusted``, every MLE flag (present or not), then any other reason present."""
    known = ["trusted", *FLAGS]
    return known + sorted(str(r) for r in reasons.categories if r not in known)


def flagged_fractions(reasons: pd.Categorical) -> dict[str, float]:
    """Fraction of localizations per reason (``any``: any flag), as in metrics.json's
    ``mle.flagged_fraction``; ``no_estimate`` only when some have neither flag nor centre."""
    n = len(reasons)
    counts = pd.Series(reasons).value_counts()
    frac = {str(r): float(c / n) if n else float("nan") for r, c in counts.items()}
    out = {k: frac.get(k, 0.0 if n else float("nan")) for k in FLAGS}
    flagged = n - counts.get("trusted", 0) - counts.get("no_estimate", 0)
    out["any"] = float(flagged / n) if n else float("nan")
    out |= {k: v for k, v in frac.items() if k not in out and k != "trusted"}
    return out


def trusted_mle(df: pd.DataFrame) -> np.ndarray:
    """The maximum-likelihood spectral centre where the readout trusts it (``trusted`` in
    :func:`mle_reasons`), NaN elsewhere and where the table has no such readout."""
    reasons = mle_reasons(df)
    if reasons is None:
        return np.full(len(df), np.nan)
    return np.where(np.asarray(reasons) == "trusted", values(df, "sc_mle_nm"), np.nan)


def _rms_per_decile(crlb: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RMS of the CRLB and of the error per CRLB decile."""
    idx, _ = quantile_bins(crlb, 10)
    n = np.bincount(idx)
    keep = n > 0
    rms_err = np.sqrt(np.bincount(idx, weights=err**2)[keep] / n[keep])
    rms_crlb = np.sqrt(np.bincount(idx, weights=crlb**2)[keep] / n[keep])
    return rms_crlb, rms_err


def _error_vs_crlb(ax, crlb: np.ndarray, err: np.ndarray) -> None:
    """2-D histogram of |error| against the CRLB, the 1x / 2x lines and the RMS error per
    CRLB decile (on the 1x line for an efficient, unbiased estimator)."""
    ok = np.isfinite(crlb) & np.isfinite(err) & (crlb > 0)
    if not ok.any():
        note(ax, "No trusted MLE localization matched to the truth")
        return
    crlb, err = crlb[ok], err[ok]
    xmax = float(np.percentile(crlb, 99.5))
    ymax = max(float(np.percentile(err, 99.5)), 2 * xmax)
    counts, xe, ye = np.histogram2d(crlb, err, bins=60, range=((0, xmax), (0, ymax)))
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_equal(counts.T, 0), cmap="viridis", norm=LogNorm())
    ax.figure.colorbar(mesh, ax=ax, label="localizations per bin")
    line = np.array([0.0, xmax])
    ax.plot(line, line, "-", color="tab:red", label="|error| = CRLB (1x)")
    ax.plot(line, 2 * line, "--", color="tab:orange", label="|error| = 2 x CRLB")
    rms_crlb, rms_err = _rms_per_decile(crlb, err)
    ax.plot(rms_crlb, rms_err, "o", color="k", ms=4, label="RMS |error| per CRLB decile")
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_xlabel("sqrt(CRLB) of the spectral centre (nm)")
    ax.set_ylabel("|MLE centre - true centre| (nm)")
    ax.set_title(
        f"{len(crlb)} trusted localizations; within 1x / 2x CRLB: "
        f"{100 * np.mean(err <= crlb):.1f}% / {100 * np.mean(err <= 2 * crlb):.1f}%",
        fontsize=FONT["title"],
    )
    ax.legend(fontsize=FONT["legend"], loc="upper left")


def _crlb_by_reason(ax, crlb: np.ndarray, reasons: pd.Categorical) -> None:
    """Histogram of sqrt(CRLB), one step line per flag reason (no truth to compare with), up
    to the 99.5th percentile (the tail in the last bin); bounds above :data:`BOUND_CAP_NM`
    (fits that did not pin the centre) are counted in the legend instead."""
    ok = np.isfinite(crlb) & (crlb >= 0)
    if not ok.any():
        note(ax, "No finite Cramér-Rao bound in the spectra tables")
        return
    shown = ok & (crlb <= BOUND_CAP_NM)
    hi = float(np.percentile(crlb[shown], 99.5)) if shown.any() else 1.0
    bins = np.linspace(0, hi if hi > 0 else 1.0, 60)
    for r in reason_order(reasons):
        sel = ok & np.asarray(reasons == r)
        if sel.any():
            counts, _ = np.histogram(np.minimum(crlb[sel & shown], bins[-1]), bins)
            over = int((sel & ~shown).sum())
            extra = f", {over} > {BOUND_CAP_NM:g} nm" if over else ""
            ax.stairs(counts, bins, label=f"{r} ({int(sel.sum())}{extra})")
    ax.set_yscale("log")
    ax.set_xlabel("sqrt(CRLB) of the spectral centre (nm)")
    ax.set_ylabel("localizations")
    ax.set_title("Cramér-Rao bound by MLE flag (no ground truth)", fontsize=FONT["title"])
    ax.legend(fontsize=FONT["legend"])


def mle_error_vs_crlb(spectra: pd.DataFrame, reasons: pd.Categorical | None = None) -> Figure:
    """With truth (``sc_true_nm``): |error| of the trusted MLE centres against their
    sqrt(CRLB) as a 2-D histogram. Without: the sqrt(CRLB) histogram by flag reason."""
    reasons = mle_reasons(spectra) if reasons is None else reasons
    fig, ax = new_figure(size=(6.5, 4.5))
    crlb = values(spectra, "sc_mle_crlb_nm")
    if reasons is None:
        note(ax, "No maximum-likelihood readout (sc_mle_nm) in the spectra tables")
    elif np.isfinite(values(spectra, "sc_true_nm")).any():
        trusted = np.asarray(reasons == "trusted")
        err = np.abs(values(spectra, "sc_mle_nm") - values(spectra, "sc_true_nm"))
        _error_vs_crlb(ax, crlb[trusted], err[trusted])
    else:
        _crlb_by_reason(ax, crlb, reasons)
    return fig


def _efficiency_from_metrics(axes, mle: Mapping[str, Any]) -> np.ndarray | None:
    """RMSE implied by the CRLB vs observed, and their ratio, by signal bin (metrics.json).
    Returns the bin centres drawn, None when there is no finite efficiency."""
    b = pd.DataFrame(mle.get("by_signal_bin") or [])
    cols = {"signal_min", "signal_max", "crlb_rmse_nm", "observed_rmse_nm", "efficiency"}
    if b.empty or not cols <= set(b) or not np.isfinite(values(b, "efficiency")).any():
        return None
    centre = bin_centre(values(b, "signal_min"), values(b, "signal_max"))
    axes[0].plot(centre, values(b, "crlb_rmse_nm"), "o-", label="implied by the CRLB")
    axes[0].plot(centre, values(b, "observed_rmse_nm"), "s-", label="observed (vs truth)")
    axes[0].set_ylabel("RMSE of trusted MLE centres (nm)")
    axes[0].legend(fontsize=FONT["legend"])
    axes[1].plot(centre, values(b, "efficiency"), "o-", color="tab:green")
    axes[1].axhline(1.0, color="grey", ls="--", lw=1)
    axes[1].set_ylim(0, max(1.1, 1.1 * np.nanmax(values(b, "efficiency"))))
    axes[1].set_ylabel("efficiency: CRLB RMSE / observed RMSE")
    axes[1].set_title(
        f"overall efficiency {fmt(mle.get('efficiency'), '.2f')}; coverage 1x / 2x "
        f"{fmt(mle.get('coverage_1x'), '.1f', 100, '%')} / "
        f"{fmt(mle.get('coverage_2x'), '.1f', 100, '%')}",
        fontsize=FONT["title"],
    )
    return centre


def _crlb_quartiles(crlb: np.ndarray, idx: np.ndarray, good: np.ndarray, k: int) -> np.ndarray:
    """Quartiles (k x 3) of ``crlb[good]`` per bin ``idx`` (NaN for a bin with none)."""
    return np.array(
        [
            np.percentile(crlb[good & (idx == b)], [25, 50, 75])
            if (good & (idx == b)).any()
            else [np.nan] * 3
            for b in range(k)
        ]
    )


def _crlb_by_signal(
    axes, spectra: pd.DataFrame, reasons: pd.Categorical | None, n_bins: int
) -> np.ndarray | None:
    """Median (and quartiles of) sqrt(CRLB) of trusted localizations, and the flagged
    fractions, by signal quantile bin (no truth). Returns the bin centres drawn, None when
    there is no MLE readout or no finite signal."""
    signal = values(spectra, "signal")
    if reasons is None or not np.isfinite(signal).any():
        return None
    ok = np.isfinite(signal)
    idx, edges = quantile_bins(signal[ok], n_bins)
    centre = bin_centre(edges[:-1], edges[1:])
    crlb, rs = values(spectra, "sc_mle_crlb_nm")[ok], np.asarray(reasons)[ok]
    good = (rs == "trusted") & np.isfinite(crlb)
    q = _crlb_quartiles(crlb, idx, good, len(centre))
    axes[0].fill_between(centre, q[:, 0], q[:, 2], alpha=0.3, label="quartiles")
    axes[0].plot(centre, q[:, 1], "o-", label="median")
    axes[0].set_ylabel("sqrt(CRLB) of trusted MLE centres (nm)")
    axes[0].legend(fontsize=FONT["legend"])
    for r in reason_order(reasons)[1:]:
        frac = [np.mean(rs[idx == b] == r) if (idx == b).any() else np.nan for b in range(len(q))]
        axes[1].plot(centre, frac, "o-", label=r)
    axes[1].set_ylabel("fraction of localizations flagged")
    axes[1].legend(fontsize=FONT["legend"])
    axes[1].set_title("no ground truth: CRLB and flags only", fontsize=FONT["title"])
    if not good.any():
        note(axes[0], "No trusted MLE localization with a finite CRLB")
    return centre


def mle_efficiency(
    spectra: pd.DataFrame,
    metrics: Mapping[str, Any] | None,
    n_bins: int = 4,
    reasons: pd.Categorical | None = None,
) -> Figure:
    """MLE efficiency by signal bin from metrics.json's ``mle.by_signal_bin`` when present;
    else the median sqrt(CRLB) and the flagged fractions by signal bin from the spectra."""
    reasons = mle_reasons(spectra) if reasons is None else reasons
    fig, axes = new_figure(1, 2, size=(10, 3.8))
    centre = _efficiency_from_metrics(axes, (metrics or {}).get("mle") or {})
    if centre is None:
        centre = _crlb_by_signal(axes, spectra, reasons, n_bins)
    if centre is None:
        return note_figure("No MLE readout with a finite CRLB or efficiency to show", (10, 1.5))
    for ax in (ax for ax in axes if ax.axison):  # not the ones replaced by a note
        if np.nanmin(centre) > 0:
            ax.set_xscale("log")
        ax.set_xlabel("signal (table units, bin centre)")
    return fig
