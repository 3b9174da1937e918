"""Figures of the network's training: test patches (raw | clean target | denoised) and the
loss curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .common import FONT, PathLike, new_figure

MONTAGE_COLUMNS = ("raw (counts/2^16)", "clean target", "denoised")


def montage(
    predictions_npz: PathLike, index_csv: PathLike, n_signal: int = 6, n_background: int = 3
) -> Figure:
    """Rows of test patches: raw | clean target | denoised, signal then background patches."""
    with np.load(predictions_npz) as z:
        x, y, p = z["X"], z["Y"], z["P"]
    index = pd.read_csv(index_csv)
    kinds = index.loc[index["split"] == "test", "kind"].to_numpy()
    sig = np.flatnonzero(kinds == "signal")[:n_signal]
    bg = np.flatnonzero(kinds == "background")[:n_background]
    rows = [(i, "signal") for i in sig] + [(i, "background") for i in bg]
    n = max(len(rows), 1)
    fig, axes = new_figure(n, 3, size=(10, 0.9 * n + 0.8), squeeze=False)
    for r, (i, kind) in enumerate(rows):
        for c, (img, title) in enumerate(zip((x[i], y[i], p[i]), MONTAGE_COLUMNS, strict=True)):
            ax = axes[r, c]
            ax.imshow(img, cmap="magma", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=FONT["title"])
            if c == 0:
                ax.set_ylabel(kind, fontsize=FONT["label"])
    fig.suptitle(
        "Test patches: localization box (left 16 px) and spectral box", fontsize=FONT["title"]
    )
    return fig


def loss_curves(history_csv: PathLike) -> Figure:
    """Training and validation loss per epoch (log scale)."""
    h = pd.read_csv(history_csv)
    fig, ax = new_figure(size=(5, 3.5))
    ax.plot(h["epoch"] + 1, h["loss"], "o-", label="training")
    ax.plot(h["epoch"] + 1, h["val_loss"], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.set_yscale("log")
    ax.legend(fontsize=FONT["legend"])
    ax.set_title("U-Net training", fontsize=FONT["title"])
    return fig
