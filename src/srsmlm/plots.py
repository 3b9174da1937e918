"""Report figures (matplotlib, Agg) and the summary of key numbers.

Every figure is binned (histograms, 2-D histograms, rendered images), never one marker per
localization, so the report stays fast and readable at 10^6 localizations; figures draw a note
instead of failing when their data are missing or empty."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .io import atomic_path, read_patches, write_json  # noqa: E402

log = logging.getLogger(__name__)
WAVELENGTH_CMAP = "turbo"
PathLike = str | Path

#: the columns of spectra.csv / truth.csv / molecules.csv the report reads (``usecols``)
SPECTRA_COLUMNS = (
    "frame",
    "x",
    "y",
    "signal",
    "sc_raw_nm",
    "sc_denoised_nm",
    "dye_denoised",
    "sc_mle_nm",
    "sc_mle_crlb_nm",
    "sc_mle_flag",
)
TRUTH_COLUMNS = ("frame", "loc_x", "loc_y", "detected", "sc_true_nm", "dye")
#: the report's figures: keys of ``report_stage``'s ``out`` and of rule plot_report's outputs
REPORT_FIGURES = (
    "montage",
    "loss",
    "histograms",
    "precision",
    "rendering",
    "evaluation",
    "mle_error",
    "mle_efficiency",
    "flagged",
    "molecules",
)
MOLECULE_COLUMNS = ("cluster", "n_frames", "n_used", "sc_nm", "sc_err_nm", "dye")
#: reasons the maximum-likelihood readout gives for not trusting a spectral centre
MLE_FLAGS = ("not_converged", "truncated", "bad_fit", "dim")
#: the evaluation table's row order (estimators not listed follow in metrics.json's order)
ESTIMATOR_ORDER = (
    "raw_centroid",
    "raw_gaussian_fit",
    "sf_fused_centroid",
    "denoised_centroid",
    "denoised_gaussian_fit",
    "raw_mle",
    "raw_mle_trusted",
    "molecule",
)
#: largest side of the super-resolution rendering grid (render px); the zoom drops above it
MAX_RENDER_SIDE = 4096


def _save(fig, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png", metadata={"Software": None})
    plt.close(fig)


def _note(ax, text: str) -> None:
    """Replace an axes' content by a centred note (missing or empty data)."""
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)


def _note_figure(path: PathLike, text: str, size: tuple[float, float] = (6, 1.5)) -> None:
    fig, ax = plt.subplots(figsize=size)
    _note(ax, text)
    _save(fig, path)


def _values(df: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 (NaN where the table lacks it)."""
    if column not in df:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)


def trusted_mle(df: pd.DataFrame) -> np.ndarray:
    """The maximum-likelihood spectral centre where the readout trusts it (``trusted`` in
    :func:`mle_reasons`), NaN elsewhere and where the table has no such readout."""
    reasons = mle_reasons(df)
    if reasons is None:
        return np.full(len(df), np.nan)
    return np.where(np.asarray(reasons) == "trusted", _values(df, "sc_mle_nm"), np.nan)


def _quantile_bins(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index (0 .. k-1) of each finite value in ``n_bins`` quantile bins (fewer when
    values repeat), and the k + 1 edges. Callers pass finite values only."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        return np.zeros(len(values), dtype=np.int64), np.array([edges[0], edges[0]])
    idx = np.searchsorted(edges, values, side="right") - 1
    return np.clip(idx, 0, len(edges) - 2), edges


def _bin_centre(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Geometric centre of positive bins (signal axes are logarithmic), else arithmetic."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if np.all(lo > 0) and np.all(hi > 0):
        return np.sqrt(lo * hi)
    return (lo + hi) / 2


@contextlib.contextmanager
def _timed(step: str, timings: dict[str, float]) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - t0
    log.info("report step %-10s %.2f s", step, timings[step])


def montage(
    predictions_npz: PathLike,
    index_csv: PathLike,
    path: PathLike,
    n_signal: int = 6,
    n_background: int = 3,
) -> None:
    """Rows of test patches: raw | clean target | denoised, signal then background patches."""
    with np.load(predictions_npz) as z:
        x, y, p = z["X"], z["Y"], z["P"]
    index = pd.read_csv(index_csv)
    kinds = index.loc[index["split"] == "test", "kind"].to_numpy()
    sig = np.flatnonzero(kinds == "signal")[:n_signal]
    bg = np.flatnonzero(kinds == "background")[:n_background]
    rows = [(i, "signal") for i in sig] + [(i, "background") for i in bg]
    fig, axes = plt.subplots(
        max(len(rows), 1), 3, figsize=(10, 0.9 * max(len(rows), 1) + 0.8), squeeze=False
    )
    for r, (i, kind) in enumerate(rows):
        for c, (img, title) in enumerate(
            ((x[i], "raw (counts/2^16)"), (y[i], "clean target"), (p[i], "denoised"))
        ):
            ax = axes[r, c]
            ax.imshow(img, cmap="magma", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(kind, fontsize=8)
    fig.suptitle("Test patches: localization box (left 16 px) and spectral box", fontsize=10)
    _save(fig, path)


def loss_curves(history_csv: PathLike, path: PathLike) -> None:
    """Training and validation loss per epoch."""
    h = pd.read_csv(history_csv)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(h["epoch"] + 1, h["loss"], "o-", label="training")
    ax.plot(h["epoch"] + 1, h["val_loss"], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("U-Net training")
    _save(fig, path)


def sc_histograms(spectra: pd.DataFrame, path: PathLike, colour_column: str) -> None:
    """Histograms of spectral centroids, raw vs denoised, coloured by dye (binned with
    np.histogram, one step line per dye)."""
    values = np.concatenate([_values(spectra, "sc_raw_nm"), _values(spectra, "sc_denoised_nm")])
    if not np.isfinite(values).any():
        _note_figure(path, "No spectral centroid in the spectra tables", (9, 1.5))
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    colour = _values(spectra, colour_column)
    colour = np.where(np.isfinite(colour), colour, -1).astype(np.int64)
    # -1: no true dye (a false detection) in the truth, no class (no centroid) otherwise
    none_label = "false detection" if colour_column == "dye_true" else "unclassified"
    lo, hi = np.nanpercentile(values, [0.5, 99.5])
    bins = np.linspace(lo, max(hi, lo + 1), 60)
    for ax, col, title in ((axes[0], "sc_raw_nm", "raw"), (axes[1], "sc_denoised_nm", "denoised")):
        vals = _values(spectra, col)
        for g in np.unique(colour):
            counts, _ = np.histogram(vals[(colour == g) & np.isfinite(vals)], bins)
            label = f"dye {int(g)}" if g >= 0 else none_label
            ax.stairs(counts, bins, fill=True, alpha=0.5, label=label)
        ax.set_title(f"spectral centroid, {title}")
        ax.set_xlabel("wavelength (nm)")
    axes[0].set_ylabel("localizations")
    axes[1].legend(fontsize=8)
    _save(fig, path)


def precision_plot(precision: pd.DataFrame, path: PathLike) -> None:
    """Spectral precision (SD of each estimate over the frames of one run) by signal bin."""
    if precision.empty:
        _note_figure(path, "No molecule observed in >= 2 frames: no spectral precision", (5, 1.5))
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    centre = (precision["signal_min"] + precision["signal_max"]) / 2
    for col, label in (
        ("sc_raw_std_nm", "raw centroid"),
        ("fit_raw_std_nm", "raw Gaussian fit"),
        ("sc_denoised_std_nm", "denoised centroid"),
        ("sc_fused_std_nm", "SF-fused centroid"),
    ):
        if col in precision:
            ax.plot(centre, precision[col], "o-", label=label)
    ax.set_xlabel("mean signal of the run (table units)")
    ax.set_ylabel("spectral precision: SD of SC per molecule (nm)")
    ax.legend(fontsize=8)
    _save(fig, path)


def render_arrays(
    x: np.ndarray, y: np.ndarray, sc: np.ndarray, zoom: float, sigma_px: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """Blurred localization density and the density-weighted mean spectral centroid on a grid
    of ``zoom`` render pixels per camera pixel; returns (density, mean_sc, extent)."""
    from scipy.ndimage import gaussian_filter

    pad = 3 * sigma_px  # room for the blur of the outermost localizations
    x0, x1 = np.floor(x.min() - pad), np.ceil(x.max() + pad)
    y0, y1 = np.floor(y.min() - pad), np.ceil(y.max() + pad)
    nx, ny = int((x1 - x0) * zoom) + 1, int((y1 - y0) * zoom) + 1
    # bins of exactly 1/zoom camera px
    hist = dict(bins=(ny, nx), range=((y0, y0 + ny / zoom), (x0, x0 + nx / zoom)))
    ok = np.isfinite(sc)

    def render(mask, weights=None):
        img, _, _ = np.histogram2d(y[mask], x[mask], weights=weights, **hist)
        return gaussian_filter(img, sigma_px * zoom, mode="constant")

    density = render(slice(None))
    wsum, n_ok = render(ok, sc[ok]), render(ok)
    mean_sc = np.divide(wsum, n_ok, out=np.full_like(wsum, np.nan), where=n_ok > 1e-6)
    return density, mean_sc, (x0, x0 + nx / zoom, y0 + ny / zoom, y0)


def rendering(
    spectra: pd.DataFrame,
    path: PathLike,
    zoom: int,
    sigma_px: float,
    max_side: int = MAX_RENDER_SIDE,
) -> None:
    """Super-resolution rendering (each localization a Gaussian of ``sigma_px`` camera px),
    plain (every localization) and coloured by the trusted maximum-likelihood spectral centre
    (:func:`trusted_mle`, wavelength colour map: the values README says to read).
    Binned (a 2-D histogram, then a blur), so 10^6 localizations cost a fraction of a second;
    the zoom is lowered if the grid would exceed ``max_side`` render px a side."""
    x, y, sc = _values(spectra, "x"), _values(spectra, "y"), trusted_mle(spectra)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, sc = x[keep], y[keep], sc[keep]
    if not len(x):
        _note_figure(path, "No localization to render", (12, 1.5))
        return
    span = max(np.ptp(x), np.ptp(y)) + 6 * sigma_px + 2
    if span * zoom > max_side:
        log.warning(
            "rendering: zoom %g lowered to %.2f (grid <= %d px)", zoom, max_side / span, max_side
        )
        zoom = max_side / span
    ok = np.isfinite(sc)
    density, mean_sc, extent = render_arrays(x, y, sc, zoom, sigma_px)
    lo, hi = np.nanpercentile(sc, [2, 98]) if ok.any() else (500, 700)
    cmap = plt.get_cmap(WAVELENGTH_CMAP)
    rgb = cmap(np.clip((mean_sc - lo) / max(hi - lo, 1e-9), 0, 1))[..., :3]
    top = np.percentile(density[density > 0], 99.5) if density.any() else 1.0
    bright = np.sqrt(np.clip(density / max(top, 1e-12), 0, 1))  # gamma 0.5: dim molecules show
    rgb = np.nan_to_num(rgb) * bright[..., None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), dpi=150)
    axes[0].imshow(bright, cmap="gray", extent=extent)
    axes[0].set_title(f"{len(x)} localizations")
    axes[1].imshow(rgb, extent=extent)
    axes[1].set_title(f"trusted ML spectral centre ({int(ok.sum())} localizations)")
    for ax in axes:
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=axes[1], label="spectral centre (nm)", fraction=0.046)
    _save(fig, path)


def _fmt(value: Any, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """Format a number of a metrics dict; missing or NaN values show as a dash."""
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return "-"
    return "-" if not np.isfinite(v) else f"{v:{spec}}{suffix}"


def _evaluation_rows(sc_error: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One table row per estimator, classical, denoised, MLE then per-molecule estimates."""
    names = [k for k in ESTIMATOR_ORDER if k in sc_error]
    names += [k for k in sc_error if k not in ESTIMATOR_ORDER]
    return [
        [
            est,
            _fmt(sc_error[est].get("n"), ".0f"),
            _fmt(sc_error[est].get("valid_fraction"), ".1f", 100, "%"),
            _fmt(sc_error[est].get("bias_nm"), "+.2f"),
            _fmt(sc_error[est].get("rmse_nm"), ".2f"),
            _fmt(sc_error[est].get("median_abs_error_nm"), ".2f"),
            _fmt(sc_error[est].get("within_tolerance"), ".1f", 100, "%"),
        ]
        for est in names
    ]


def _mle_caption(mle: Mapping[str, Any] | None) -> str:
    """One line on the MLE readout's flags, CRLB coverage and efficiency (empty without)."""
    if not mle:
        return ""
    flagged = mle.get("flagged_fraction", {})
    parts = ", ".join(f"{k} {_fmt(flagged[k], '.1f', 100, '%')}" for k in MLE_FLAGS if k in flagged)
    return (
        f"MLE: flagged {_fmt(flagged.get('any'), '.1f', 100, '%')} ({parts})\n"
        f"|error| within 1x / 2x CRLB: {_fmt(mle.get('coverage_1x'), '.1f', 100, '%')} / "
        f"{_fmt(mle.get('coverage_2x'), '.1f', 100, '%')} (ideal 68.3% / 95.4%); "
        f"efficiency {_fmt(mle.get('efficiency'), '.2f')}"
    )


def evaluation_table(metrics_json: PathLike, path: PathLike) -> None:
    """The evaluation table as a figure (estimators x error statistics), with the MLE rows
    (``raw_mle``, ``raw_mle_trusted``, ``molecule``) and a line on the MLE flags when present."""
    m = json.loads(Path(metrics_json).read_text())
    rows = _evaluation_rows(m.get("sc_error", {}))
    if not rows:
        _note_figure(path, "metrics.json has no spectral-centre errors", (9, 1.5))
        return
    fig, ax = plt.subplots(figsize=(9.5, 0.4 * len(rows) + 1.2))
    ax.axis("off")
    table = ax.table(
        cellText=rows,
        colLabels=[
            "estimator",
            "n",
            "valid",
            "bias (nm)",
            "RMSE (nm)",
            "median |err| (nm)",
            f"within {m.get('tolerance_nm', float('nan')):g} nm",
        ],
        loc="center",
    )
    table.scale(1, 1.4)
    acc = m.get("dye_accuracy", {})
    ax.set_title(
        "Spectral centroid error vs ground truth; dye accuracy: "
        + ", ".join(f"{k} {_fmt(v, '.1f', 100, '%')}" for k, v in acc.items()),
        fontsize=9,
    )
    caption = _mle_caption(m.get("mle"))
    if caption:
        ax.text(0.5, -0.02, caption, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    _save(fig, path)


# --- maximum-likelihood readout --------------------------------------------------------------


def mle_reasons(spectra: pd.DataFrame) -> pd.Categorical | None:
    """Per localization: ``trusted`` (no flag and a finite MLE centre), its ``sc_mle_flag``
    (``not_converged``, ``truncated``, ``bad_fit``, ``dim``, or any other), or ``no_estimate``
    (no flag but no centre). None when the tables have no MLE readout (``sc_mle_nm``)."""
    if "sc_mle_nm" not in spectra:
        return None
    if "sc_mle_flag" in spectra:
        flag = spectra["sc_mle_flag"].astype("string").fillna("").str.strip()
        flag = flag.to_numpy(dtype=object, na_value="")
    else:
        flag = np.full(len(spectra), "", dtype=object)
    finite = np.isfinite(_values(spectra, "sc_mle_nm"))
    none = np.where(finite, "trusted", "no_estimate")
    return pd.Categorical(np.where(flag != "", flag, none))


def reason_order(reasons: pd.Categorical) -> list[str]:
    """``trusted``, every MLE flag (present or not), then any other reason present."""
    known = ["trusted", *MLE_FLAGS]
    return known + sorted(str(r) for r in reasons.categories if r not in known)


def flagged_fractions(reasons: pd.Categorical) -> dict[str, float]:
    """Fraction of localizations per reason (``any``: any flag), as in metrics.json's
    ``mle.flagged_fraction``; ``no_estimate`` only when some have neither flag nor centre."""
    n = len(reasons)
    counts = pd.Series(reasons).value_counts()
    frac = {str(r): float(c / n) if n else float("nan") for r, c in counts.items()}
    out = {k: frac.get(k, 0.0 if n else float("nan")) for k in MLE_FLAGS}
    flagged = n - counts.get("trusted", 0) - counts.get("no_estimate", 0)
    out["any"] = float(flagged / n) if n else float("nan")
    out |= {k: v for k, v in frac.items() if k not in out and k != "trusted"}
    return out


def _error_vs_crlb(ax, crlb: np.ndarray, err: np.ndarray) -> None:
    """2-D histogram of |error| against the CRLB, the 1x / 2x lines and the RMS error per
    CRLB decile (on the 1x line for an efficient, unbiased estimator)."""
    ok = np.isfinite(crlb) & np.isfinite(err) & (crlb > 0)
    if not ok.any():
        _note(ax, "No trusted MLE localization matched to the truth")
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
    idx, _ = _quantile_bins(crlb, 10)
    n = np.bincount(idx)
    keep = n > 0
    rms_err = np.sqrt(np.bincount(idx, weights=err**2)[keep] / n[keep])
    rms_crlb = np.sqrt(np.bincount(idx, weights=crlb**2)[keep] / n[keep])
    ax.plot(rms_crlb, rms_err, "o", color="k", ms=4, label="RMS |error| per CRLB decile")
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_xlabel("sqrt(CRLB) of the spectral centre (nm)")
    ax.set_ylabel("|MLE centre - true centre| (nm)")
    ax.set_title(
        f"{len(crlb)} trusted localizations; within 1x / 2x CRLB: "
        f"{100 * np.mean(err <= crlb):.1f}% / {100 * np.mean(err <= 2 * crlb):.1f}%",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left")


def _crlb_by_reason(ax, crlb: np.ndarray, reasons: pd.Categorical) -> None:
    """Histogram of sqrt(CRLB), one step line per flag reason (no truth to compare with)."""
    ok = np.isfinite(crlb) & (crlb >= 0)
    if not ok.any():
        _note(ax, "No finite Cramer-Rao bound in the spectra tables")
        return
    hi = float(np.percentile(crlb[ok], 99.5))
    bins = np.linspace(0, hi if hi > 0 else 1.0, 60)
    for r in reason_order(reasons):
        sel = ok & np.asarray(reasons == r)
        if sel.any():
            counts, _ = np.histogram(crlb[sel], bins)
            ax.stairs(counts, bins, label=f"{r} ({int(sel.sum())})")
    ax.set_yscale("log")
    ax.set_xlabel("sqrt(CRLB) of the spectral centre (nm)")
    ax.set_ylabel("localizations")
    ax.set_title("Cramer-Rao bound by MLE flag (no ground truth)", fontsize=9)
    ax.legend(fontsize=7)


def mle_error_vs_crlb(
    spectra: pd.DataFrame, path: PathLike, reasons: pd.Categorical | None = None
) -> None:
    """With truth (``sc_true_nm``): |error| of the trusted MLE centres against their
    sqrt(CRLB) as a 2-D histogram. Without: the sqrt(CRLB) histogram by flag reason."""
    reasons = mle_reasons(spectra) if reasons is None else reasons
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    crlb = _values(spectra, "sc_mle_crlb_nm")
    if reasons is None:
        _note(ax, "No maximum-likelihood readout (sc_mle_nm) in the spectra tables")
    elif np.isfinite(_values(spectra, "sc_true_nm")).any():
        trusted = np.asarray(reasons == "trusted")
        err = np.abs(_values(spectra, "sc_mle_nm") - _values(spectra, "sc_true_nm"))
        _error_vs_crlb(ax, crlb[trusted], err[trusted])
    else:
        _crlb_by_reason(ax, crlb, reasons)
    _save(fig, path)


def _efficiency_from_metrics(axes, mle: Mapping[str, Any]) -> np.ndarray | None:
    """RMSE implied by the CRLB vs observed, and their ratio, by signal bin (metrics.json).
    Returns the bin centres drawn, None when there is no finite efficiency."""
    b = pd.DataFrame(mle.get("by_signal_bin") or [])
    cols = {"signal_min", "signal_max", "crlb_rmse_nm", "observed_rmse_nm", "efficiency"}
    if b.empty or not cols <= set(b) or not np.isfinite(_values(b, "efficiency")).any():
        return None
    centre = _bin_centre(_values(b, "signal_min"), _values(b, "signal_max"))
    axes[0].plot(centre, _values(b, "crlb_rmse_nm"), "o-", label="implied by the CRLB")
    axes[0].plot(centre, _values(b, "observed_rmse_nm"), "s-", label="observed (vs truth)")
    axes[0].set_ylabel("RMSE of trusted MLE centres (nm)")
    axes[0].legend(fontsize=8)
    axes[1].plot(centre, _values(b, "efficiency"), "o-", color="tab:green")
    axes[1].axhline(1.0, color="grey", ls="--", lw=1)
    axes[1].set_ylim(0, max(1.1, 1.1 * np.nanmax(_values(b, "efficiency"))))
    axes[1].set_ylabel("efficiency: CRLB RMSE / observed RMSE")
    axes[1].set_title(
        f"overall efficiency {_fmt(mle.get('efficiency'), '.2f')}; coverage 1x / 2x "
        f"{_fmt(mle.get('coverage_1x'), '.1f', 100, '%')} / "
        f"{_fmt(mle.get('coverage_2x'), '.1f', 100, '%')}",
        fontsize=9,
    )
    return centre


def _crlb_by_signal(
    axes, spectra: pd.DataFrame, reasons: pd.Categorical | None, n_bins: int
) -> np.ndarray | None:
    """Median (and quartiles of) sqrt(CRLB) of trusted localizations, and the flagged
    fractions, by signal quantile bin (no truth). Returns the bin centres drawn, None when
    there is no MLE readout or no finite signal."""
    signal = _values(spectra, "signal")
    if reasons is None or not np.isfinite(signal).any():
        return None
    ok = np.isfinite(signal)
    idx, edges = _quantile_bins(signal[ok], n_bins)
    centre = _bin_centre(edges[:-1], edges[1:])
    crlb, rs = _values(spectra, "sc_mle_crlb_nm")[ok], np.asarray(reasons)[ok]
    good = (rs == "trusted") & np.isfinite(crlb)
    q = np.array(
        [
            np.percentile(crlb[good & (idx == b)], [25, 50, 75])
            if (good & (idx == b)).any()
            else [np.nan] * 3
            for b in range(len(centre))
        ]
    )
    axes[0].fill_between(centre, q[:, 0], q[:, 2], alpha=0.3, label="quartiles")
    axes[0].plot(centre, q[:, 1], "o-", label="median")
    axes[0].set_ylabel("sqrt(CRLB) of trusted MLE centres (nm)")
    axes[0].legend(fontsize=8)
    for r in reason_order(reasons)[1:]:
        frac = [
            np.mean(rs[idx == b] == r) if (idx == b).any() else np.nan for b in range(len(centre))
        ]
        axes[1].plot(centre, frac, "o-", label=r)
    axes[1].set_ylabel("fraction of localizations flagged")
    axes[1].legend(fontsize=7)
    axes[1].set_title("no ground truth: CRLB and flags only", fontsize=9)
    if not good.any():
        _note(axes[0], "No trusted MLE localization with a finite CRLB")
    return centre


def mle_efficiency(
    spectra: pd.DataFrame,
    metrics: Mapping[str, Any] | None,
    path: PathLike,
    n_bins: int = 4,
    reasons: pd.Categorical | None = None,
) -> None:
    """MLE efficiency by signal bin from metrics.json's ``mle.by_signal_bin`` when present;
    else the median sqrt(CRLB) and the flagged fractions by signal bin from the spectra."""
    reasons = mle_reasons(spectra) if reasons is None else reasons
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    centre = _efficiency_from_metrics(axes, (metrics or {}).get("mle") or {})
    if centre is None:
        centre = _crlb_by_signal(axes, spectra, reasons, n_bins)
    if centre is None:
        plt.close(fig)
        _note_figure(path, "No MLE readout with a finite CRLB or efficiency to show", (10, 1.5))
        return
    for ax in axes:
        if np.nanmin(centre) > 0:
            ax.set_xscale("log")
        ax.set_xlabel("signal (table units, bin centre)")
    _save(fig, path)


# --- flagged examples ------------------------------------------------------------------------


def choose_examples(reasons: pd.Categorical, n: int, seed: int) -> dict[str, np.ndarray]:
    """Up to ``n`` row positions per reason (``reason_order``), drawn without replacement by a
    generator seeded with ``seed``; sorted, empty for a reason nobody has."""
    rng = np.random.default_rng(seed)
    codes = np.asarray(reasons.codes)
    cats = [str(c) for c in reasons.categories]
    picks = {}
    for r in reason_order(reasons):
        rows = np.flatnonzero(codes == cats.index(r)) if r in cats else np.empty(0, np.int64)
        chosen = rng.choice(rows, size=min(n, len(rows)), replace=False) if len(rows) else rows
        picks[r] = np.sort(chosen)
    return picks


def _example_patches(
    spectra: pd.DataFrame, rows: np.ndarray, raw_tifs: Mapping[str, PathLike]
) -> dict[int, np.ndarray]:
    """Patch of each spectra row in ``rows`` (row -> H x W), read per acquisition by page;
    rows whose TIFF is missing or too short are left out (logged)."""
    out: dict[int, np.ndarray] = {}
    sub = spectra.iloc[rows][["acquisition", "page"]].assign(row=rows)
    for acq, grp in sub.groupby("acquisition", observed=True):
        tif = raw_tifs.get(str(acq))
        try:
            if tif is None:
                raise FileNotFoundError(f"no raw.tif given for {acq}")
            patches = read_patches(tif, grp["page"].to_numpy())
        except (OSError, IndexError, ValueError) as exc:
            log.warning("flagged examples: %s", exc)
            continue
        out.update(zip(grp["row"].tolist(), patches, strict=True))
    return out


def flagged_examples(
    spectra: pd.DataFrame,
    raw_tifs: Mapping[str, PathLike],
    path: PathLike,
    seed: int,
    n_per_reason: int = 4,
    reasons: pd.Categorical | None = None,
) -> None:
    """Montage of ``n_per_reason`` raw patches per MLE flag reason (trusted ones first, for
    comparison), picked with a seeded generator and read by page from each ``raw.tif``.
    ``spectra`` needs ``acquisition`` and ``page`` (as from ``load_spectra``)."""
    reasons = mle_reasons(spectra) if reasons is None else reasons
    if reasons is None or not len(spectra):
        _note_figure(path, "No maximum-likelihood readout: no flagged examples", (8, 1.5))
        return
    picks = choose_examples(reasons, n_per_reason, seed)
    chosen = np.concatenate(list(picks.values())).astype(np.int64)
    patches = _example_patches(spectra, np.sort(chosen), raw_tifs)
    counts = pd.Series(np.asarray(reasons)).value_counts()
    fig, axes = plt.subplots(
        len(picks),
        n_per_reason,
        figsize=(3.2 * n_per_reason, 1.05 * len(picks) + 0.6),
        squeeze=False,
    )
    for r, (reason, rows) in enumerate(picks.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(rows) and int(rows[c]) in patches:
                _draw_example(ax, patches[int(rows[c])], spectra.iloc[int(rows[c])])
            elif c == 0:
                _note(ax, f"{reason}: no example" if not len(rows) else f"{reason}: unreadable")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(f"{reason}\n({int(counts.get(reason, 0))})", fontsize=8)
    fig.suptitle("Raw patches by MLE flag (localization box | spectral box)", fontsize=10)
    _save(fig, path)


def _draw_example(ax, patch: np.ndarray, row: pd.Series) -> None:
    lo, hi = np.percentile(patch, [1, 99.8])
    ax.imshow(patch, cmap="magma", vmin=lo, vmax=max(hi, lo + 1e-9), aspect="equal")
    sc, crlb = _fmt(row.get("sc_mle_nm"), ".0f"), _fmt(row.get("sc_mle_crlb_nm"), ".1f")
    estimate = f"{sc} \u00b1 {crlb} nm" if sc != "-" else f"no centre (CRLB {crlb} nm)"
    ax.set_title(
        f"{row['acquisition']} #{int(row['page'])}: {estimate}, S {_fmt(row.get('signal'), '.0f')}",
        fontsize=6,
    )


# --- molecules -------------------------------------------------------------------------------


def molecules_histogram(molecules: pd.DataFrame, path: PathLike) -> None:
    """Histogram of the per-molecule spectral centre (``sc_nm``), stacked by ``dye`` class."""
    sc = _values(molecules, "sc_nm")
    ok = np.isfinite(sc)
    if not ok.any():
        _note_figure(path, f"No molecule with a spectral centre ({len(sc)} molecules)", (6, 1.5))
        return
    dye = _values(molecules, "dye")
    dye = np.where(np.isfinite(dye), dye, -1).astype(np.int64)
    lo, hi = np.percentile(sc[ok], [0.5, 99.5])
    edges = np.linspace(lo, max(hi, lo + 1), 50)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    base = np.zeros(len(edges) - 1)
    for d in np.unique(dye[ok]):
        counts, _ = np.histogram(sc[ok & (dye == d)], edges)
        label = f"dye {d}" if d >= 0 else "unclassified"
        ax.stairs(base + counts, edges, baseline=base, fill=True, alpha=0.8, label=label)
        base = base + counts
    ax.set_xlabel("spectral centre of the molecule (nm)")
    ax.set_ylabel("molecules")
    ax.set_title(f"{int(ok.sum())} of {len(sc)} molecules with a spectral centre", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


# --- the report stage ------------------------------------------------------------------------


def read_table(path: PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """The columns of a CSV among ``columns`` (others are not parsed); a 0-byte file gives an
    empty table."""
    wanted = set(columns)
    try:
        return pd.read_csv(path, usecols=lambda c: c in wanted)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def load_spectra(
    spectra_csvs: Sequence[PathLike], truth: Mapping[str, PathLike] | None = None
) -> pd.DataFrame:
    """The report's columns of every spectra table, with ``acquisition`` (its folder's name)
    and ``page`` (the row's page in that acquisition's ``denoised/raw.tif``); acquisitions in
    ``truth`` (name -> truth.csv) get ``sc_true_nm`` and ``dye_true`` (``match_truth``)."""
    from .evaluation import match_truth

    frames = []
    for sp in spectra_csvs:
        name = Path(sp).parent.name
        df = read_table(sp, SPECTRA_COLUMNS)
        df["page"] = np.arange(len(df))
        if truth and name in truth:
            df = match_truth(df, read_table(truth[name], TRUTH_COLUMNS))
        frames.append(df.assign(acquisition=name))
    if not frames:
        return pd.DataFrame(columns=[*SPECTRA_COLUMNS, "page", "acquisition"])
    spectra = pd.concat(frames, ignore_index=True)
    spectra["acquisition"] = spectra["acquisition"].astype("category")
    return spectra


def load_molecules(molecule_csvs: Sequence[PathLike]) -> pd.DataFrame:
    """Every molecules.csv (one row per run), with ``acquisition``."""
    frames = [
        read_table(p, MOLECULE_COLUMNS).assign(acquisition=Path(p).parent.name)
        for p in molecule_csvs
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _by_acquisition(
    spectra_csvs: Sequence[PathLike], files: Mapping[str, PathLike] | Sequence[PathLike]
) -> dict[str, PathLike]:
    """Acquisition name -> file, from a mapping or a list in the order of ``spectra_csvs``."""
    if isinstance(files, Mapping):
        return {str(k): v for k, v in files.items()}
    if not files:
        return {}
    names = [Path(p).parent.name for p in spectra_csvs]
    return dict(zip(names, files, strict=True))


def report_summary(
    test_metrics_json: PathLike,
    spectra: pd.DataFrame,
    reasons: pd.Categorical | None,
    precision: pd.DataFrame,
    metrics: Mapping[str, Any] | None,
    molecules: pd.DataFrame,
) -> dict[str, Any]:
    """Key numbers: test set, localizations, precision by signal, the evaluation (if any),
    ``mle_flagged_fraction`` (all applied acquisitions), ``mle`` (metrics.json's section, with
    truth only) and the molecule counts."""
    summary: dict[str, Any] = {
        "test_set": json.loads(Path(test_metrics_json).read_text()),
        "localizations_with_spectra": int(len(spectra)),
        "precision_by_signal": precision.to_dict(orient="records"),
    }
    if metrics:
        summary["evaluation"] = dict(metrics)
        if "mle" in metrics:
            summary["mle"] = metrics["mle"]
    if reasons is not None:
        summary["mle_flagged_fraction"] = flagged_fractions(reasons)
        crlb = _values(spectra, "sc_mle_crlb_nm")[np.asarray(reasons == "trusted")]
        crlb = crlb[np.isfinite(crlb)]
        summary["mle_median_crlb_nm"] = float(np.median(crlb)) if len(crlb) else None
    sc = _values(molecules, "sc_nm")
    summary["molecules"] = {
        "n": int(len(molecules)),
        "with_spectral_centre": int(np.isfinite(sc).sum()),
        "median_sc_err_nm": float(np.nanmedian(_values(molecules, "sc_err_nm")))
        if np.isfinite(_values(molecules, "sc_err_nm")).any()
        else None,
    }
    return summary


def _spectra_figures(
    spectra: pd.DataFrame,
    colour: str,
    precision: pd.DataFrame,
    out: Mapping[str, PathLike],
    render_zoom: int,
    render_sigma_px: float,
) -> None:
    sc_histograms(spectra, out["histograms"], colour)
    precision_plot(precision, out["precision"])
    rendering(spectra, out["rendering"], render_zoom, render_sigma_px)


def _mle_figures(
    spectra: pd.DataFrame,
    reasons: pd.Categorical | None,
    metrics: Mapping[str, Any] | None,
    raw_tifs: Mapping[str, PathLike],
    out: Mapping[str, PathLike],
    seed: int,
    signal_bins: int,
) -> None:
    mle_error_vs_crlb(spectra, out["mle_error"], reasons)
    mle_efficiency(spectra, metrics, out["mle_efficiency"], signal_bins, reasons)
    flagged_examples(spectra, raw_tifs, out["flagged"], seed, reasons=reasons)


def report_stage(
    predictions_npz: PathLike,
    index_csv: PathLike,
    history_csv: PathLike,
    test_metrics_json: PathLike,
    spectra_csvs: Sequence[PathLike],
    precision_csvs: Sequence[PathLike],
    truth_csvs: Mapping[str, PathLike] | Sequence[PathLike],
    metrics_json: PathLike | None,
    out: Mapping[str, PathLike],
    summary_json: PathLike,
    render_zoom: int,
    render_sigma_px: float,
    raw_tifs: Mapping[str, PathLike] | Sequence[PathLike] = (),
    molecule_csvs: Sequence[PathLike] = (),
    seed: int = 0,
    signal_bins: int = 4,
) -> dict[str, Any]:
    """All report figures and ``summary.json``. ``truth_csvs`` (acquisition -> truth.csv, or
    a list in the order of ``spectra_csvs``) may be empty (real data); ``raw_tifs`` likewise
    (each acquisition's ``denoised/raw.tif``, for the flagged examples). Only the needed
    columns of each table are read; every step is timed in the log."""
    timings: dict[str, float] = {}
    with _timed("training", timings):
        montage(predictions_npz, index_csv, out["montage"])
        loss_curves(history_csv, out["loss"])
    with _timed("load", timings):
        truth = _by_acquisition(spectra_csvs, truth_csvs)
        spectra = load_spectra(spectra_csvs, truth)
        reasons = mle_reasons(spectra)
        precision = pd.concat([pd.read_csv(p) for p in precision_csvs], ignore_index=True)
        molecules = load_molecules(molecule_csvs)
        metrics = json.loads(Path(metrics_json).read_text()) if metrics_json else None
    names = {Path(p).parent.name for p in spectra_csvs}
    colour = "dye_true" if names and names <= set(truth) else "dye_denoised"
    with _timed("spectra", timings):
        _spectra_figures(spectra, colour, precision, out, render_zoom, render_sigma_px)
    with _timed("mle", timings):
        raw = _by_acquisition(spectra_csvs, raw_tifs)
        _mle_figures(spectra, reasons, metrics, raw, out, seed, signal_bins)
        molecules_histogram(molecules, out["molecules"])
    with _timed("evaluation", timings):
        if metrics_json:
            evaluation_table(metrics_json, out["evaluation"])
        else:
            _note_figure(
                out["evaluation"], "No ground truth for these acquisitions: no evaluation table"
            )
        summary = report_summary(test_metrics_json, spectra, reasons, precision, metrics, molecules)
        write_json(summary, summary_json)
    log.info("report: %d localizations in %.1f s", len(spectra), sum(timings.values()))
    return summary
