"""The patch stage's plan: its settings (``patches:``), where each run's boxes go (jitter per
run or per frame, molecule-free background boxes) and which runs are cut, before any pixel is
read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .boxes import Boxes, place_boxes
from .errors import InputError, config_values
from .geometry import Geometry
from .stack import Stack

log = logging.getLogger(__name__)


#: the clean targets ``patches.target`` may name, and what each is (recorded in model.json)
TARGETS = {
    "sf_fusion": "leave-one-out SF-weighted fusion of the run's other frames (the guide)",
    "model": "noise-free image of the leave-one-out joint maximum-likelihood fit of the run's "
    "other frames",
}


@dataclass(frozen=True)
class PatchParams:
    """The ``patches:`` config section (px unless stated); every key required, the defaults
    are the schema's (``workflow/schemas/config.schema.yaml``)."""

    offset_jitter: tuple[int, int]
    row_jitter: int
    box_shift: int
    amp_factor: float
    tophat_radius: int
    min_loc_max: float
    background_patches: int
    target_max: float | None
    chunk_size: int
    target: str
    target_max_crlb_nm: float
    target_max_frames: int | None
    spectral_position: tuple[float, float] | None

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> PatchParams:
        """From the ``patches:`` section; :class:`~srsmlm.errors.ConfigKeyError` names a
        missing key."""
        kw = config_values(section, "patches", cls.__dataclass_fields__)
        kw["offset_jitter"] = tuple(int(v) for v in kw["offset_jitter"])
        if kw["spectral_position"] is not None:
            kw["spectral_position"] = tuple(float(v) for v in kw["spectral_position"])
        return cls(**kw)


def run_starts(run_ids: np.ndarray) -> np.ndarray:
    """The row where each run of equal ``run_ids`` starts."""
    if len(run_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, run_ids[1:] != run_ids[:-1]])


def check_spectral_position(p: PatchParams, g: Geometry) -> None:
    """``spectral_position`` must be a range (min < max) that overlaps the spectral box."""
    if p.spectral_position is None:
        return
    lo, hi = p.spectral_position
    if not lo < hi or hi <= 0 or lo >= g.spectral_width:
        raise InputError(
            "config/config.yaml",
            f"patches.spectral_position [{lo:g}, {hi:g}] is not a range inside the "
            f"{g.spectral_width} px spectral box",
            f"set it to [0, {g.spectral_width}] (the whole box) or null",
        )


def run_jitter(n_runs: int, p: PatchParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Augmentation draws (integers, px) for ``n_runs`` boxes, from the seeded generator."""
    lo, hi = p.offset_jitter
    return {
        "offset_jitter": rng.integers(lo, hi + 1, n_runs),
        "row_jitter": rng.integers(-p.row_jitter, p.row_jitter + 1, n_runs),
        "shift_x": rng.integers(-p.box_shift, p.box_shift + 1, n_runs),
        "shift_y": rng.integers(-p.box_shift, p.box_shift + 1, n_runs),
    }


def row_jitter(
    run_index: np.ndarray, p: PatchParams, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Every row's augmentation draws: one per frame under model targets (each frame's target
    is rendered at its own box, so a run's boxes need not line up, and the network sees as many
    spectral positions as patches), one per run under SF-fusion targets (the fusion adds up the
    run's boxes pixel by pixel, so they must share one position)."""
    if p.target == "model":
        draws = run_jitter(len(run_index), p, rng)
        if p.spectral_position is not None:  # the box follows the spectrum, not offset_jitter
            draws["position"] = rng.uniform(*p.spectral_position, len(run_index))
            draws["offset_jitter"] = np.zeros(len(run_index), dtype=np.int64)
        return draws
    n_runs = int(run_index.max()) + 1 if len(run_index) else 0
    return {k: v[run_index] for k, v in run_jitter(n_runs, p, rng).items()}


def background_boxes(
    locs: pd.DataFrame,
    stack: Stack,
    g: Geometry,
    n_patches: int,
    run_length: int,
    rng: np.random.Generator,
) -> tuple[Boxes, np.ndarray]:
    """Random molecule-free boxes followed over ``run_length`` consecutive frames.

    A box is rejected if any localization in its frames lies within ``height`` rows and
    ``max(loc_width, spectral_width)`` columns of its candidate pixel (its spot could enter the
    localization box or its spectrum the spectral box). Returns the boxes (grouped by box) and a group id per patch.
    """
    n_boxes = int(np.ceil(n_patches / run_length)) if n_patches > 0 else 0
    h, w = stack.frame_shape
    frames_needed = stack.n_frames - run_length + 1
    if n_boxes == 0 or frames_needed < 1:
        return place_boxes(np.zeros(0), np.zeros(0), np.zeros(0), g), np.zeros(0, dtype=np.int64)
    x_lo, x_hi = g.half_loc_width, w - g.spectral_offset - g.spectral_width
    y_lo, y_hi = g.half_height, h - (g.height - g.half_height)
    if x_hi <= x_lo or y_hi <= y_lo:
        return place_boxes(np.zeros(0), np.zeros(0), np.zeros(0), g), np.zeros(0, dtype=np.int64)
    reach = max(g.loc_width, g.spectral_width)
    # localizations sorted by frame: those of frames f0 .. f0 + run_length - 1 are one slice
    order = np.argsort(locs["frame"].to_numpy(), kind="stable")
    loc_frame = locs["frame"].to_numpy()[order]
    loc_x = locs["pixel_x"].to_numpy()[order]
    loc_y = locs["pixel_y"].to_numpy()[order]
    chosen: list[tuple[int, int, int]] = []
    attempts = 0
    while len(chosen) < n_boxes and attempts < 50 * n_boxes:
        attempts += 1
        f0 = int(rng.integers(1, frames_needed + 1))
        bx = int(rng.integers(x_lo, x_hi + 1))
        by = int(rng.integers(y_lo, y_hi + 1))
        lo, hi = np.searchsorted(loc_frame, [f0, f0 + run_length])
        clash = ((np.abs(loc_y[lo:hi] - by) < g.height) & (np.abs(loc_x[lo:hi] - bx) < reach)).any()
        if not clash:
            chosen.append((f0, bx, by))
    if len(chosen) < n_boxes:
        log.warning(
            "only %d of %d molecule-free background boxes found in %d attempts",
            len(chosen),
            n_boxes,
            attempts,
        )
    f0 = np.repeat([c[0] for c in chosen], run_length) + np.tile(np.arange(run_length), len(chosen))
    bx = np.repeat([c[1] for c in chosen], run_length)
    by = np.repeat([c[2] for c in chosen], run_length)
    group = np.repeat(np.arange(len(chosen)), run_length)
    return place_boxes(f0, bx, by, g), group


@dataclass
class RunPlan:
    """The runs of an acquisition and their boxes: ``runs`` sorted by run and frame, each run's
    first row (``starts``), the run of every row, every row's jitter draws (:func:`row_jitter`)
    and boxes, and the runs whose boxes all lie in the frame, in order of their first frame."""

    runs: pd.DataFrame
    starts: np.ndarray
    run_index: np.ndarray
    jitter: dict[str, np.ndarray]
    boxes: Boxes
    kept_runs: np.ndarray


def plan_runs(
    runs: pd.DataFrame,
    frame_shape: tuple[int, int],
    g: Geometry,
    p: PatchParams,
    rng: np.random.Generator,
    counts: dict[str, int],
) -> RunPlan:
    """Place every run's boxes (one candidate pixel per run: the median of its localizations'
    pixels, plus the run's jitter draws) and keep the runs whose boxes are all in the frame."""
    runs = runs.sort_values(["cluster", "frame"], kind="stable").reset_index(drop=True)
    starts = run_starts(runs["cluster"].to_numpy())
    n_runs = len(starts)
    med = runs.groupby("cluster", sort=True)[["pixel_x", "pixel_y"]].median()
    run_px = np.floor(med["pixel_x"].to_numpy()).astype(np.int64)
    run_py = np.floor(med["pixel_y"].to_numpy()).astype(np.int64)
    run_index = np.repeat(np.arange(n_runs), np.diff(np.append(starts, len(runs))))
    jit = row_jitter(run_index, p, rng)
    boxes = place_boxes(
        runs["frame"].to_numpy(),
        run_px[run_index],
        run_py[run_index],
        g,
        jit["offset_jitter"],
        jit["row_jitter"],
        jit["shift_x"],
        jit["shift_y"],
    )
    inside = boxes.inside(g, frame_shape)
    # a run is usable only if all its boxes are inside (its patches are fitted together)
    run_inside = np.logical_and.reduceat(inside, starts) if n_runs else np.zeros(0, bool)
    counts["runs"] = n_runs
    counts["runs_outside_frame"] = int((~run_inside).sum())
    if counts["runs_outside_frame"]:
        log.info(
            "%d of %d runs skipped: their boxes leave the frame",
            counts["runs_outside_frame"],
            n_runs,
        )
    kept = np.flatnonzero(run_inside)
    # runs in order of their first frame, so each chunk reads a compact frame range
    kept = kept[np.argsort(runs["frame"].to_numpy()[starts[kept]], kind="stable")]
    return RunPlan(runs, starts, run_index, jit, boxes, kept)
