"""Figures of the spectral readout: spectral-centre histograms, spectral precision by signal,
the super-resolution rendering and the per-molecule spectral centres.

Every figure is binned (histograms, 2-D histograms, rendered images), never one marker per
localization, so it stays fast and readable at 10^6 localizations."""

from __future__ import annotations

import logging
from functools import partial

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from scipy.ndimage import gaussian_filter

from .common import (
    FONT,
    WAVELENGTH_CMAP,
    bin_centre,
    new_figure,
    note_figure,
    quantile_bins,
    values,
)
from .mle import trusted_mle

log = logging.getLogger(__name__)

#: largest side of the super-resolution rendering grid (render px); the zoom drops above it
MAX_RENDER_SIDE = 4096
#: spectral_precision.csv column -> its label, in the order drawn
PRECISION_LINES = {
    "sc_mle_std_nm": "raw, maximum likelihood (trusted frames)",
    "fit_raw_std_nm": "raw, least-squares fit",
    "fit_denoised_std_nm": "denoised, least-squares fit",
    "sc_raw_std_nm": "raw centroid",
    "sc_denoised_std_nm": "denoised centroid",
}
MOLECULE_ERROR_LABEL = "per molecule: its error (sc_err_nm)"


def _centre_estimates(spectra: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-localization spectral centres a histogram shows, by label (those with values)."""
    estimates = {
        "raw, maximum likelihood (trusted)": trusted_mle(spectra),
        "raw centroid": values(spectra, "sc_raw_nm"),
        "denoised centroid": values(spectra, "sc_denoised_nm"),
    }
    return {k: v for k, v in estimates.items() if np.isfinite(v).any()}


def sc_histograms(spectra: pd.DataFrame, colour_column: str) -> Figure:
    """Histograms of the spectral centre per estimate (trusted maximum likelihood, raw and
    denoised centroid), one filled step per dye of ``colour_column``."""
    estimates = _centre_estimates(spectra)
    if not estimates:
        return note_figure("No spectral centre in the spectra tables", (9, 1.5))
    colour = values(spectra, colour_column)
    colour = np.where(np.isfinite(colour), colour, -1).astype(np.int64)
    # -1: no true dye (a false detection) in the truth, no class otherwise
    none_label = "false detection" if colour_column == "dye_true" else "unclassified"
    lo, hi = np.nanpercentile(np.concatenate(list(estimates.values())), [0.5, 99.5])
    bins = np.linspace(lo, max(hi, lo + 1), 60)
    fig, axes = new_figure(1, len(estimates), size=(4.5 * len(estimates), 3.5), squeeze=False)
    for ax, (title, vals) in zip(axes[0], estimates.items(), strict=True):
        for g in np.unique(colour):
            counts, _ = np.histogram(vals[(colour == g) & np.isfinite(vals)], bins)
            label = f"dye {int(g)}" if g >= 0 else none_label
            ax.stairs(counts, bins, fill=True, alpha=0.5, label=label)
        ax.set_title(title, fontsize=FONT["title"])
        ax.set_xlabel("spectral centre (nm)")
    axes[0, 0].set_ylabel("localizations")
    axes[0, -1].legend(fontsize=FONT["legend"])
    return fig


def molecule_error_by_signal(molecules: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """Median ``sc_err_nm`` of the molecules per quantile bin of their run's mean ``signal``:
    columns signal (bin centre), sc_err_nm, molecules; empty without both columns."""
    signal, err = values(molecules, "signal"), values(molecules, "sc_err_nm")
    ok = np.isfinite(signal) & np.isfinite(err)
    if not ok.any():
        return pd.DataFrame(columns=["signal", "sc_err_nm", "molecules"])
    idx, edges = quantile_bins(signal[ok], n_bins)
    per_bin = pd.Series(err[ok]).groupby(idx)
    return pd.DataFrame(
        {
            "signal": bin_centre(edges[:-1], edges[1:])[per_bin.median().index],
            "sc_err_nm": per_bin.median().to_numpy(),
            "molecules": per_bin.size().to_numpy(),
        }
    )


def precision_figure(
    precision: pd.DataFrame, molecules: pd.DataFrame | None = None, n_bins: int = 4
) -> Figure:
    """Spectral precision by signal: the SD of each estimate over the frames of a run (median
    per signal bin, spectral_precision.csv), and beside it the molecules' own error
    (``sc_err_nm`` of molecules.csv, median per bin of the run's mean signal; needs
    ``signal`` in ``molecules``, as from ``load_molecules``)."""
    mol = molecule_error_by_signal(pd.DataFrame() if molecules is None else molecules, n_bins)
    lines = [c for c in PRECISION_LINES if np.isfinite(values(precision, c)).any()]
    if not lines and mol.empty:
        return note_figure("No molecule observed in >= 2 frames: no spectral precision", (6, 1.5))
    fig, ax = new_figure(size=(9, 4.5))
    p = precision.assign(
        centre=bin_centre(values(precision, "signal_min"), values(precision, "signal_max"))
    ).sort_values("centre")
    for col in lines:
        ax.plot(p["centre"], values(p, col), "o-", label=PRECISION_LINES[col])
    if not mol.empty:
        ax.plot(mol["signal"], mol["sc_err_nm"], "k--", marker="D", label=MOLECULE_ERROR_LABEL)
    _log_axes(ax)
    ax.set_xlabel("mean signal of the run (table units)")
    ax.set_ylabel("spectral precision (nm)")
    ax.set_title("SD over a run's frames (median per signal bin)", fontsize=FONT["title"])
    ax.legend(fontsize=FONT["legend"], loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def _plain_log_ticks(v: float, _pos=None, leads: tuple[int, ...] = (1, 2, 3, 5)) -> str:
    """Tick text of a log axis: a plain number (``0.6``, ``20000``) at ticks whose leading
    digit is in ``leads``, none at the others (they would crowd)."""
    if not v > 0:
        return ""
    lead = round(v / 10 ** np.floor(np.log10(v) + 1e-9))
    return f"{v:g}" if lead in leads else ""


def _log_axes(ax) -> None:
    """Logarithmic x and y where every value drawn is positive, ticks as plain numbers: at
    every tick over half a decade or less, at 1, 2, 3, 5 x 10^k up to a decade, 1, 2, 5 x 10^k
    beyond."""
    lines = ax.get_lines()
    for data, set_scale, axis in (
        ([line.get_xdata() for line in lines], ax.set_xscale, ax.xaxis),
        ([line.get_ydata() for line in lines], ax.set_yscale, ax.yaxis),
    ):
        data = np.concatenate(data).astype(np.float64)
        if np.nanmin(data) > 0:
            set_scale("log")
            decades = np.log10(np.nanmax(data) / np.nanmin(data))
            leads = tuple(range(1, 10)) if decades <= 0.5 else (1, 2, 3, 5)
            formatter = FuncFormatter(
                partial(_plain_log_ticks, leads=leads if decades <= 1 else (1, 2, 5))
            )
            axis.set_major_formatter(formatter)
            axis.set_minor_formatter(formatter)


def render_arrays(
    x: np.ndarray, y: np.ndarray, sc: np.ndarray, zoom: float, sigma_px: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """Blurred localization density and the density-weighted mean spectral centroid on a grid
    of ``zoom`` render pixels per camera pixel; returns (density, mean_sc, extent)."""
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


def _coloured(density: np.ndarray, mean_sc: np.ndarray, lo: float, hi: float):
    """Grey brightness (gamma 0.5: dim molecules show) and the wavelength-coloured image."""
    cmap = matplotlib.colormaps[WAVELENGTH_CMAP]
    rgb = cmap(np.clip((mean_sc - lo) / max(hi - lo, 1e-9), 0, 1))[..., :3]
    top = np.percentile(density[density > 0], 99.5) if density.any() else 1.0
    bright = np.sqrt(np.clip(density / max(top, 1e-12), 0, 1))
    return bright, np.nan_to_num(rgb) * bright[..., None]


def rendering(
    spectra: pd.DataFrame, zoom: float, sigma_px: float, max_side: int = MAX_RENDER_SIDE
) -> Figure:
    """Super-resolution rendering (each localization a Gaussian of ``sigma_px`` camera px),
    plain (every localization) and coloured by the trusted maximum-likelihood spectral centre
    (:func:`~srsmlm.plots.mle.trusted_mle`, wavelength colour map; flagged ones left dark).
    Binned (a 2-D histogram, then a blur), so 10^6 localizations cost a fraction of a second;
    the zoom is lowered if the grid would exceed ``max_side`` render px a side."""
    x, y, sc = values(spectra, "x"), values(spectra, "y"), trusted_mle(spectra)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, sc = x[keep], y[keep], sc[keep]
    if not len(x):
        return note_figure("No localization to render", (12, 1.5))
    span = max(np.ptp(x), np.ptp(y)) + 6 * sigma_px + 2
    if span * zoom > max_side:
        log.warning(
            "rendering: zoom %g lowered to %.2f (grid <= %d px)", zoom, max_side / span, max_side
        )
        zoom = max_side / span
    ok = np.isfinite(sc)
    density, mean_sc, extent = render_arrays(x, y, sc, zoom, sigma_px)
    lo, hi = np.nanpercentile(sc, [2, 98]) if ok.any() else (500, 700)
    bright, rgb = _coloured(density, mean_sc, lo, hi)
    fig, axes = new_figure(1, 2, size=(12, 4))
    axes[0].imshow(bright, cmap="gray", extent=extent)
    axes[0].set_title(f"{len(x)} localizations", fontsize=FONT["title"])
    axes[1].imshow(rgb, extent=extent)
    axes[1].set_title(
        f"trusted ML spectral centre ({int(ok.sum())} localizations)", fontsize=FONT["title"]
    )
    for ax in axes:
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    sm = ScalarMappable(cmap=WAVELENGTH_CMAP, norm=Normalize(lo, hi))
    fig.colorbar(sm, ax=axes[1], label="spectral centre (nm)", fraction=0.046)
    return fig


def molecules_histogram(molecules: pd.DataFrame) -> Figure:
    """Histogram of the per-molecule spectral centre (``sc_nm``), stacked by ``dye`` class."""
    sc = values(molecules, "sc_nm")
    ok = np.isfinite(sc)
    if not ok.any():
        return note_figure(f"No molecule with a spectral centre ({len(sc)} molecules)", (6, 1.5))
    dye = values(molecules, "dye")
    dye = np.where(np.isfinite(dye), dye, -1).astype(np.int64)
    lo, hi = np.percentile(sc[ok], [0.5, 99.5])
    edges = np.linspace(lo, max(hi, lo + 1), 50)
    fig, ax = new_figure(size=(6, 3.8))
    base = np.zeros(len(edges) - 1)
    for d in np.unique(dye[ok]):
        counts, _ = np.histogram(sc[ok & (dye == d)], edges)
        label = f"dye {d}" if d >= 0 else "unclassified"
        ax.stairs(base + counts, edges, baseline=base, fill=True, alpha=0.8, label=label)
        base = base + counts
    ax.set_xlabel("spectral centre of the molecule (nm)")
    ax.set_ylabel("molecules")
    ax.set_title(
        f"{int(ok.sum())} of {len(sc)} molecules with a spectral centre", fontsize=FONT["title"]
    )
    ax.legend(fontsize=FONT["legend"])
    return fig
