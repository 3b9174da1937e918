"""What every report figure shares: figures built without pyplot, notes in place of missing
data, columns read as floats, signal bins and number formats.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state, no backend to
choose, nothing to close): a function builds one and returns it, :func:`save_figure` writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..io import atomic_path

PathLike = str | Path
WAVELENGTH_CMAP = "turbo"
#: bounds (and widths) above this many nm are shown as "> CAP nm", not as a number
BOUND_CAP_NM = 100.0
#: the sizes of text in every figure: tick labels and legends stay readable at report width
FONT = {"title": 11, "label": 10, "legend": 9, "note": 11}


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6, 4), **kw: Any):
    """A figure of ``size`` inches and its axes (``Figure.subplots``: one Axes, or an array)."""
    fig = Figure(figsize=size)
    return fig, fig.subplots(nrows, ncols, **kw)


def save_figure(fig: Figure, path: PathLike) -> None:
    """Write ``fig`` as a PNG, atomically (no timestamp in the file: stable bytes)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png", metadata={"Software": None})


def note(ax, text: str) -> None:
    """Replace an axes' content by a centred note (missing or empty data)."""
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=FONT["note"], wrap=True)


def note_figure(text: str, size: tuple[float, float] = (6, 1.5)) -> Figure:
    """A figure that only says why there is nothing to show."""
    fig, ax = new_figure(size=size)
    note(ax, text)
    return fig


def values(df: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 (NaN where the table lacks it)."""
    if column not in df:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)


def quantile_bins(x: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index (0 .. k-1) of each finite value in ``n_bins`` quantile bins (fewer when
    values repeat), and the k + 1 edges. Callers pass finite values only."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        return np.zeros(len(x), dtype=np.int64), np.array([edges[0], edges[0]])
    idx = np.searchsorted(edges, x, side="right") - 1
    return np.clip(idx, 0, len(edges) - 2), edges


def bin_centre(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Geometric centre of positive bins (signal axes are logarithmic), else arithmetic."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if np.all(lo > 0) and np.all(hi > 0):
        return np.sqrt(lo * hi)
    return (lo + hi) / 2


def number(value: Any) -> float:
    """``value`` as a float; NaN when it is missing or not a number (None in a JSON file)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def fmt(value: Any, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """Format a number; missing or NaN values show as a dash."""
    v = number(value) * scale
    return "-" if not np.isfinite(v) else f"{v:{spec}}{suffix}"


def fmt_bound(value: Any, spec: str = ".1f", cap: float = BOUND_CAP_NM) -> str:
    """An uncertainty in nm: ``1.2 nm``; ``> 100 nm`` above ``cap`` (a fit that did not pin
    the centre can report 10^40 nm); a dash when missing."""
    text = fmt(value, spec)
    if text != "-" and number(value) > cap:
        return f"> {cap:g} nm"
    return f"{text} nm" if text != "-" else "-"
