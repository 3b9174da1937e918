"""Raw patches of a few localizations per maximum-likelihood flag, next to trusted ones: what a
flagged spot looks like."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..io import read_patches
from .common import FONT, PathLike, fmt, fmt_bound, new_figure, note, note_figure
from .mle import mle_reasons, reason_order

log = logging.getLogger(__name__)


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


def example_title(row: pd.Series) -> str:
    """Two short lines: acquisition, page and signal; the MLE centre and its bound (a bound
    above :data:`~srsmlm.plots.common.BOUND_CAP_NM` as ``> 100 nm``, never 10^40)."""
    head = f"{row['acquisition']} #{int(row['page'])}, S {fmt(row.get('signal'), '.0f')}"
    sc, bound = fmt(row.get("sc_mle_nm"), ".0f"), fmt_bound(row.get("sc_mle_crlb_nm"))
    if sc == "-":
        estimate = "no centre"
    elif bound == "-":
        estimate = f"{sc} nm, no bound"
    elif bound.startswith(">"):
        estimate = f"{sc} nm, bound {bound}"
    else:
        estimate = f"{sc} \u00b1 {bound}"
    return f"{head}\n{estimate}"


def _draw_example(ax, patch: np.ndarray, row: pd.Series) -> None:
    lo, hi = np.percentile(patch, [1, 99.8])
    ax.imshow(patch, cmap="magma", vmin=lo, vmax=max(hi, lo + 1e-9), aspect="equal")
    ax.set_title(example_title(row), fontsize=8)


def flagged_examples(
    spectra: pd.DataFrame,
    raw_tifs: Mapping[str, PathLike],
    seed: int,
    n_per_reason: int = 4,
    reasons: pd.Categorical | None = None,
) -> Figure:
    """Montage of ``n_per_reason`` raw patches per MLE flag reason (trusted ones first, for
    comparison), picked with a seeded generator and read by page from each ``raw.tif``.
    ``spectra`` needs ``acquisition`` and ``page`` (as from ``load_spectra``)."""
    reasons = mle_reasons(spectra) if reasons is None else reasons
    if reasons is None or not len(spectra):
        return note_figure("No maximum-likelihood readout: no flagged examples", (8, 1.5))
    picks = choose_examples(reasons, n_per_reason, seed)
    chosen = np.concatenate(list(picks.values())).astype(np.int64)
    patches = _example_patches(spectra, np.sort(chosen), raw_tifs)
    counts = pd.Series(np.asarray(reasons)).value_counts()
    size = (3.2 * n_per_reason, 1.35 * len(picks) + 0.6)
    fig, axes = new_figure(len(picks), n_per_reason, size=size, squeeze=False)
    for r, (reason, rows) in enumerate(picks.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(rows) and int(rows[c]) in patches:
                _draw_example(ax, patches[int(rows[c])], spectra.iloc[int(rows[c])])
            elif c == 0:
                note(ax, f"{reason}: no example" if not len(rows) else f"{reason}: unreadable")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(f"{reason}\n({int(counts.get(reason, 0))})", fontsize=FONT["label"])
    fig.suptitle(
        "Raw patches by MLE flag (localization box | spectral box)", fontsize=FONT["title"]
    )
    return fig
