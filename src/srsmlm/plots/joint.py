"""Joint fits of overlapping spectra, drawn: data | model | residual for a few groups of each
size (:mod:`srsmlm.joint_examples`, written by the spectra stage)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from ..joint_examples import read_examples
from .common import FONT, PathLike, fmt, fmt_bound, new_figure, note_figure

log = logging.getLogger(__name__)

#: examples drawn per size class (2, 3, 4 or more spectra), across acquisitions
ROWS_PER_SIZE = 2


def load_examples(paths: Mapping[str, PathLike]) -> list[dict]:
    """One dict per example, across acquisitions (name -> joint_fits.npz): ``acquisition``,
    ``data`` and ``model`` (cut to the region), ``frame``, ``group_size``, ``p_fit`` and per
    member ``nm``, ``crlb_nm``, ``flag``, ``row``, ``col``. An unreadable file is logged and
    left out."""
    out = []
    for name, path in paths.items():
        try:
            ex = read_examples(path)
        except (OSError, ValueError) as exc:
            log.warning("joint fit examples: %s: %s", path, exc)
            continue
        for k, (h, w) in enumerate(ex["shape"]):
            mine = ex["member_example"] == k
            out.append(
                {
                    "acquisition": name,
                    "data": ex["data"][k, :h, :w],
                    "model": ex["model"][k, :h, :w],
                    "frame": int(ex["frame"][k]),
                    "group_size": int(ex["group_size"][k]),
                    "p_fit": float(ex["p_fit"][k]),
                    **{m: ex[f"member_{m}"][mine] for m in ("nm", "crlb_nm", "flag", "row", "col")},
                }
            )
    return out


def pick_rows(examples: list[dict], per_size: int = ROWS_PER_SIZE) -> list[dict]:
    """Up to ``per_size`` examples per size class (2, 3, 4 or more), in the order given,
    smallest class first."""
    classes = [lambda k: k == 2, lambda k: k == 3, lambda k: k >= 4]
    return [e for c in classes for e in [x for x in examples if c(x["group_size"])][:per_size]]


def example_caption(ex: dict) -> str:
    """Two lines: where the group is and how its fit passed; each member's centre, bound and
    flag."""
    head = (
        f"{ex['acquisition']} frame {ex['frame']}: {ex['group_size']} spectra, "
        f"deviance p {fmt(ex['p_fit'], '.2f')}"
    )
    members = "; ".join(
        f"{fmt(nm, '.1f')} \u00b1 {fmt_bound(b)} {flag or 'trusted'}"
        for nm, b, flag in zip(ex["nm"], ex["crlb_nm"], ex["flag"], strict=True)
    )
    return f"{head}\n{members}"


def _draw_row(axes, ex: dict) -> None:
    data, model = ex["data"], ex["model"]
    lo, hi = np.percentile(data, [1, 99.8])
    residual = (data - model) / np.sqrt(np.maximum(model, 1.0))
    for ax, image, kw in (
        (axes[0], data, {"cmap": "magma", "vmin": lo, "vmax": max(hi, lo + 1e-9)}),
        (axes[1], model, {"cmap": "magma", "vmin": lo, "vmax": max(hi, lo + 1e-9)}),
        (axes[2], residual, {"cmap": "RdBu_r", "vmin": -4, "vmax": 4}),
    ):
        ax.imshow(image, aspect="equal", interpolation="nearest", **kw)
        ax.set_xticks([])
        ax.set_yticks([])
    # each spectrum's fitted centre (column, row) marked on the model
    axes[1].plot(ex["col"] - 0.5, ex["row"] - 0.5, "c+", ms=8, mew=1.5)
    axes[0].set_title(example_caption(ex), fontsize=8, loc="left")


def joint_fit_examples(paths: Mapping[str, PathLike]) -> Figure:
    """Data | model | residual ((data - model) / sqrt(model), from -4 to 4) of a few joint fits
    per group size, each spectrum's fitted centre marked (+) on the model."""
    rows = pick_rows(load_examples(paths))
    if not rows:
        return note_figure("No group of overlapping spectra fitted jointly: no example", (8, 1.5))
    fig, axes = new_figure(len(rows), 3, size=(13, 1.05 * len(rows) + 0.5), squeeze=False)
    for ax_row, ex in zip(axes, rows, strict=True):
        _draw_row(ax_row, ex)
    for ax, label in zip(
        axes[-1], ("data (photons)", "model", "residual / sqrt(model)"), strict=True
    ):
        ax.set_xlabel(label, fontsize=FONT["label"])
    fig.suptitle("Joint fits of overlapping spectra, by group size", fontsize=FONT["title"])
    return fig
