"""Report figures (matplotlib, Agg) and the summary of key numbers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path, write_json  # noqa: E402

log = logging.getLogger(__name__)
WAVELENGTH_CMAP = "turbo"


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png", metadata={"Software": None})
    plt.close(fig)


def montage(
    predictions_npz: str | Path,
    index_csv: str | Path,
    path: str | Path,
    n_signal: int = 6,
    n_background: int = 3,
) -> None:
    """Rows of test patches: raw | SF target | denoised, signal then background patches."""
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
            ((x[i], "raw (counts/2^16)"), (y[i], "SF-fused target"), (p[i], "denoised"))
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


def loss_curves(history_csv: str | Path, path: str | Path) -> None:
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


def sc_histograms(spectra: pd.DataFrame, path: str | Path, colour_column: str) -> None:
    """Histograms of spectral centroids, raw vs denoised, coloured by dye."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    groups = sorted(spectra[colour_column].dropna().unique())
    # -1: no true dye (a false detection) in the truth, no class (no centroid) otherwise
    none_label = "false detection" if colour_column == "dye_true" else "unclassified"
    lo, hi = np.nanpercentile(spectra[["sc_raw_nm", "sc_denoised_nm"]].to_numpy(), [0.5, 99.5])
    bins = np.linspace(lo, hi, 60)
    for ax, col, title in ((axes[0], "sc_raw_nm", "raw"), (axes[1], "sc_denoised_nm", "denoised")):
        for g in groups:
            vals = spectra.loc[spectra[colour_column] == g, col].dropna()
            label = f"dye {int(g)}" if g >= 0 else none_label
            ax.hist(vals, bins=bins, alpha=0.6, label=label)
        ax.set_title(f"spectral centroid, {title}")
        ax.set_xlabel("wavelength (nm)")
    axes[0].set_ylabel("localizations")
    axes[1].legend(fontsize=8)
    _save(fig, path)


def precision_plot(precision: pd.DataFrame, path: str | Path) -> None:
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
    x: np.ndarray, y: np.ndarray, sc: np.ndarray, zoom: int, sigma_px: float
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
    path: str | Path,
    zoom: int,
    sigma_px: float,
    sc_column: str = "sc_denoised_nm",
) -> None:
    """Super-resolution rendering (each localization a Gaussian of ``sigma_px`` camera px),
    plain and coloured by the spectral centroid (wavelength colour map)."""
    x, y = spectra["x"].to_numpy(), spectra["y"].to_numpy()
    sc = spectra[sc_column].to_numpy()
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
    axes[1].set_title(f"coloured by spectral centroid ({lo:.0f}-{hi:.0f} nm)")
    for ax in axes:
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=axes[1], label="spectral centroid (nm)", fraction=0.046)
    _save(fig, path)


def evaluation_table(metrics_json: str | Path, path: str | Path) -> None:
    """The evaluation table as a figure (estimators x error statistics)."""
    m = json.loads(Path(metrics_json).read_text())
    rows = [
        [
            est,
            f"{s['bias_nm']:+.2f}",
            f"{s['rmse_nm']:.2f}",
            f"{s['median_abs_error_nm']:.2f}",
            f"{100 * s['within_tolerance']:.1f}%",
        ]
        for est, s in m["sc_error"].items()
    ]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1))
    ax.axis("off")
    table = ax.table(
        cellText=rows,
        colLabels=[
            "estimator",
            "bias (nm)",
            "RMSE (nm)",
            "median |err| (nm)",
            f"within {m['tolerance_nm']:g} nm",
        ],
        loc="center",
    )
    table.scale(1, 1.4)
    acc = m.get("dye_accuracy", {})
    ax.set_title(
        "Spectral centroid error vs ground truth; dye accuracy: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()),
        fontsize=9,
    )
    _save(fig, path)


def report_stage(
    predictions_npz,
    index_csv,
    history_csv,
    test_metrics_json,
    spectra_csvs,
    precision_csvs,
    truth_csvs,
    metrics_json,
    out: dict[str, str | Path],
    summary_json,
    render_zoom: int,
    render_sigma_px: float,
) -> dict[str, Any]:
    """All report figures and ``summary.json``. ``truth_csvs`` may be empty (real data)."""
    from .evaluation import match_truth

    montage(predictions_npz, index_csv, out["montage"])
    loss_curves(history_csv, out["loss"])
    spectra = pd.concat(
        [pd.read_csv(p).assign(acquisition=Path(p).parent.name) for p in spectra_csvs],
        ignore_index=True,
    )
    colour = "dye_denoised"
    if truth_csvs:
        spectra = pd.concat(
            [
                match_truth(pd.read_csv(s), pd.read_csv(t))
                for s, t in zip(spectra_csvs, truth_csvs, strict=True)
            ],
            ignore_index=True,
        )
        colour = "dye_true"
    sc_histograms(spectra, out["histograms"], colour)
    precision = pd.concat([pd.read_csv(p) for p in precision_csvs], ignore_index=True)
    precision_plot(precision, out["precision"])
    rendering(spectra, out["rendering"], render_zoom, render_sigma_px)
    summary: dict[str, Any] = {
        "test_set": json.loads(Path(test_metrics_json).read_text()),
        "localizations_with_spectra": int(len(spectra)),
        "precision_by_signal": precision.to_dict(orient="records"),
    }
    if metrics_json:
        evaluation_table(metrics_json, out["evaluation"])
        summary["evaluation"] = json.loads(Path(metrics_json).read_text())
    else:
        fig, ax = plt.subplots(figsize=(6, 1))
        ax.axis("off")
        ax.set_title("No ground truth for these acquisitions: no evaluation table")
        _save(fig, out["evaluation"])
    write_json(summary, summary_json)
    return summary
