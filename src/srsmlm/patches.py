"""Patch preparation: boxes per run, leave-one-out targets, frame selection, export.

Patches are ``geometry.height`` x ``geometry.width`` float32 images in the guide's units (raw
counts / 2**16): the localization box centred on the run's candidate pixel, then the spectral
box starting ``spectral_offset`` (+ jitter) columns to the right. The stack is read through a
memory map (or page by page) in chunks of runs, and kept patches are spooled to disk, so memory
stays bounded whatever the acquisition size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import InputError, config_values
from .fusion import (
    clean_target,
    leave_one_out_fusion,
    limit_range,
    select_frames,
    spatial_frequency,
)
from .geometry import Geometry
from .io import PatchSpool, prefetch, spool_dir, write_csv
from .seeds import acquisition_seed
from .stack import NORMALISATION, Stack

if TYPE_CHECKING:  # the model targets' fit (Numba) is imported only when used
    from .targets import TargetModel

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


@dataclass
class Boxes:
    """Top-left corners (0-based rows/columns) of each patch's two boxes."""

    frame: np.ndarray  # 1-based
    loc_row0: np.ndarray
    loc_col0: np.ndarray
    spec_row0: np.ndarray
    spec_col0: np.ndarray

    def inside(self, g: Geometry, frame_shape: tuple[int, int]) -> np.ndarray:
        """Mask of boxes lying entirely inside a frame of ``frame_shape`` (rows, columns)."""
        h, w = frame_shape
        return (
            (self.loc_row0 >= 0)
            & (self.loc_row0 + g.height <= h)
            & (self.spec_row0 >= 0)
            & (self.spec_row0 + g.height <= h)
            & (self.loc_col0 >= 0)
            & (self.loc_col0 + g.loc_width <= w)
            & (self.spec_col0 >= 0)
            & (self.spec_col0 + g.spectral_width <= w)
        )

    def subset(self, mask: np.ndarray) -> Boxes:
        return Boxes(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def place_boxes(
    frame: np.ndarray,
    pixel_x: np.ndarray,
    pixel_y: np.ndarray,
    g: Geometry,
    offset_jitter: np.ndarray | int = 0,
    row_jitter: np.ndarray | int = 0,
    shift_x: np.ndarray | int = 0,
    shift_y: np.ndarray | int = 0,
) -> Boxes:
    """Box corners for candidate pixels (px). The localization box spans rows
    ``pixel_y - height//2 - shift_y`` + [0, height) and columns ``pixel_x - loc_width//2 - shift_x``
    + [0, loc_width); the spectral box starts at column ``pixel_x + spectral_offset +
    offset_jitter - shift_x`` and row ``loc_row0 - row_jitter`` (the guide's ``sp_cor``)."""
    px = np.asarray(pixel_x, dtype=np.int64)
    py = np.asarray(pixel_y, dtype=np.int64)
    loc_row0 = py - g.half_height - shift_y
    loc_col0 = px - g.half_loc_width - shift_x
    return Boxes(
        frame=np.asarray(frame, dtype=np.int64),
        loc_row0=np.broadcast_to(loc_row0, px.shape).astype(np.int64),
        loc_col0=np.broadcast_to(loc_col0, px.shape).astype(np.int64),
        spec_row0=np.broadcast_to(loc_row0 - row_jitter, px.shape).astype(np.int64),
        spec_col0=np.broadcast_to(
            px + g.spectral_offset + offset_jitter - shift_x, px.shape
        ).astype(np.int64),
    )


def extract_patches(stack: Stack, boxes: Boxes, g: Geometry) -> np.ndarray:
    """Cut (N, height, width) float32 patches (counts / 2**16) for in-frame boxes."""
    out = np.empty((len(boxes.frame), g.height, g.width), dtype=np.float32)
    loc, spec = stack.gather(
        boxes.frame,
        [
            (boxes.loc_row0, boxes.loc_col0, g.height, g.loc_width),
            (boxes.spec_row0, boxes.spec_col0, g.height, g.spectral_width),
        ],
    )
    out[:, :, : g.loc_width] = loc
    out[:, :, g.loc_width :] = spec
    out /= np.float32(NORMALISATION)
    return out


def extract_shifted_patches(
    stack: Stack, boxes: Boxes, g: Geometry, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The patches of in-frame ``boxes`` with the spectral box moved along x by each of
    ``shifts`` (px, must hold 0; the localization box stays): (len(shifts), N, height, width)
    float32, cut from one read of a window that spans every shift, and a (len(shifts), N) mask
    of the shifts whose box lies inside the frame. Where the mask is False the patch repeats
    the unshifted one (a placeholder, so every patch can be predicted; ignore its result)."""
    shifts = np.asarray(shifts, dtype=np.int64)
    if 0 not in shifts:
        raise ValueError(f"shifts must include 0 (the planned box), got {shifts.tolist()}")
    frame_w = stack.frame_shape[1]
    width = min(g.spectral_width + int(shifts.max() - shifts.min()), frame_w)
    start = np.minimum(np.maximum(boxes.spec_col0 + shifts.min(), 0), frame_w - width)
    loc, window = stack.gather(
        boxes.frame,
        [
            (boxes.loc_row0, boxes.loc_col0, g.height, g.loc_width),
            (boxes.spec_row0, start, g.height, width),
        ],
    )
    offset = boxes.spec_col0[None, :] + shifts[:, None] - start[None, :]
    ok = (offset >= 0) & (offset + g.spectral_width <= width)
    offset = np.where(ok, offset, (boxes.spec_col0 - start)[None, :])
    out = np.empty((len(shifts), len(boxes.frame), g.height, g.width), dtype=np.float32)
    out[..., : g.loc_width] = loc[None]
    cols = offset[:, :, None, None] + np.arange(g.spectral_width)[None, None, None, :]
    rows = np.broadcast_to(window, (len(shifts), *window.shape))
    out[..., g.loc_width :] = np.take_along_axis(
        rows, np.broadcast_to(cols, (*offset.shape, g.height, g.spectral_width)), axis=3
    )
    out /= np.float32(NORMALISATION)
    return out, ok


def run_targets(
    raw: np.ndarray, run_starts: np.ndarray, g: Geometry, p: PatchParams, threads: int = 1
):
    """Leave-one-out SF targets for runs of raw patches (float32 (N,H,W), grouped by run).

    Returns (target float32 in [0, target_max], sf_raw, sf_target) where sf_target is the SF of
    the guide's target before the range limit (the quantity the guide's selection uses).
    """
    fused, sf_raw = leave_one_out_fusion(raw, run_starts)
    target = clean_target(fused, g, p.amp_factor, p.tophat_radius, threads)
    sf_target = spatial_frequency(target)
    target = limit_range(target, p.target_max).astype(np.float32, copy=False)
    return target, sf_raw, sf_target


def model_run_targets(
    stack: Stack,
    runs: pd.DataFrame,
    boxes: Boxes,
    raw: np.ndarray | None,
    run_starts: np.ndarray,
    g: Geometry,
    p: PatchParams,
    tm: TargetModel,
    threads: int = 1,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame, Boxes, np.ndarray]:
    """Model targets (:mod:`srsmlm.targets`) for runs of raw patches cut at ``boxes``, through
    the same normalisation, top-hat and range limit as the SF targets. With ``positions`` (box
    px, one per patch) each spectral box is first moved so the fitted spectrum sits there
    (:func:`boxes_at_positions`; ``fits["box_inside"]``). Returns (target, sf_raw, sf_target,
    fits, boxes, raw): the patches' final boxes and raw patches (``raw`` may be None with
    ``positions``: the patches are then cut at the moved boxes only), and ``fits`` holds the
    leave-one-out fit per patch (``has_target``: the other usable frames of the run, at most
    ``p.target_max_frames`` nearest in time, were fitted, converged, and place the centre to
    within ``p.target_max_crlb_nm``, the CRLB of their joint fit; the box is in the frame)."""
    from .targets import leave_one_out_fits, render_targets

    fits = leave_one_out_fits(stack, runs, run_starts, g, tm, p.target_max_frames)
    fits["has_target"] = (
        fits["converged"].to_numpy()
        & (fits["n_others"].to_numpy() > 0)
        & (fits["crlb_nm"].to_numpy() <= p.target_max_crlb_nm)
    )
    if positions is not None:
        boxes, raw, inside = boxes_at_positions(stack, runs, boxes, raw, fits, positions, g)
        fits["box_inside"] = inside
        fits["has_target"] &= inside
    elif raw is None:
        raw = extract_patches(stack, boxes, g)
    ok = fits["has_target"].to_numpy()
    rendered = np.zeros(raw.shape, dtype=np.float32)
    rendered[ok] = render_targets(
        runs["x"].to_numpy()[ok],
        runs["y"].to_numpy()[ok],
        fits["distance_px"].to_numpy()[ok],
        fits["width_px"].to_numpy()[ok],
        (boxes.loc_row0[ok], boxes.loc_col0[ok]),
        (boxes.spec_row0[ok], boxes.spec_col0[ok]),
        g,
        tm.readout.settings.sigma_y,
    )
    target = clean_target(rendered, g, p.amp_factor, p.tophat_radius, threads)
    sf_target = spatial_frequency(target)
    target = limit_range(target, p.target_max).astype(np.float32, copy=False)
    return target, spatial_frequency(raw), sf_target, fits, boxes, raw


def at_positions(
    boxes: Boxes, x: np.ndarray, distance_px: np.ndarray, positions: np.ndarray
) -> Boxes:
    """The boxes with each spectral box moved along x so that the spectrum centred at column
    ``x + distance_px`` (frame px, a pixel c spans [c, c+1)) sits at ``positions`` (box px,
    rounded down to whole pixels: it lands in [position, position + 1)). NaN centres keep
    their box."""
    centre = np.asarray(x, np.float64) + np.asarray(distance_px, np.float64)
    col0 = np.floor(centre - np.asarray(positions, np.float64))
    finite = np.isfinite(col0)
    moved = boxes.spec_col0.copy()
    moved[finite] = col0[finite].astype(np.int64)
    return dataclasses.replace(boxes, spec_col0=moved)


def boxes_at_positions(
    stack: Stack,
    runs: pd.DataFrame,
    boxes: Boxes,
    raw: np.ndarray | None,
    fits: pd.DataFrame,
    positions: np.ndarray,
    g: Geometry,
) -> tuple[Boxes, np.ndarray, np.ndarray]:
    """Move each frame's spectral box so that its leave-one-out spectral centre sits at its
    drawn position (:func:`at_positions`) and cut the patches there. Returns the boxes, the raw
    patches and the mask of boxes inside the frame (the others keep their patch at the planned
    box, zeros if ``raw`` is None, and get no target)."""
    moved = at_positions(boxes, runs["x"].to_numpy(), fits["distance_px"].to_numpy(), positions)
    inside = moved.inside(g, stack.frame_shape)
    raw = np.zeros((len(inside), *g.shape), np.float32) if raw is None else raw.copy()
    if inside.any():
        raw[inside] = extract_patches(stack, moved.subset(inside), g)
    return moved, raw, inside


def _run_starts(run_ids: np.ndarray) -> np.ndarray:
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


def check_inside_stack(df: pd.DataFrame, stack: Stack, table: str | Path) -> None:
    """Fail if localizations reference frames or pixels the stack does not have."""
    h, w = stack.frame_shape
    bad_frame = (df["frame"] < 1) | (df["frame"] > stack.n_frames)
    bad_px = (df["pixel_x"] < 0) | (df["pixel_x"] >= w) | (df["pixel_y"] < 0) | (df["pixel_y"] >= h)
    if bad_frame.any() or bad_px.any():
        raise InputError(
            table,
            f"{int(bad_frame.sum())} localization(s) outside the stack's frames 1..{stack.n_frames} "
            f"and {int(bad_px.sum())} outside its {w}x{h} px field ({stack.path})",
            "check that the localization table belongs to this stack (and pixel_size_nm)",
        )


def check_geometry_fits(g: Geometry, frame_shape: tuple[int, int], stack_path) -> None:
    h, w = frame_shape
    need_w = g.half_loc_width + g.spectral_offset + g.spectral_width
    if g.height > h or need_w > w:
        raise InputError(
            stack_path,
            f"patch geometry (height {g.height}, loc box to spectral end {need_w} px) cannot fit "
            f"the {w}x{h} px frames",
            "reduce geometry.height / geometry.spectral_offset / geometry.spectral_width",
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
    starts = _run_starts(runs["cluster"].to_numpy())
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


def signal_patches(
    stack: Stack,
    plan: RunPlan,
    g: Geometry,
    p: PatchParams,
    spool: PatchSpool,
    counts: dict[str, int],
    threads: int = 1,
    target_model: TargetModel | None = None,
) -> list[pd.DataFrame]:
    """Cut the runs' patches chunk by chunk, build their targets (``p.target``), keep frames
    by the SF-ratio rule and brightness, spool the kept patches; returns their table rows."""
    runs, starts = plan.runs, plan.starts
    counts.update(
        dropped_ratio=0, dropped_dim=0, dropped_no_target=0, dropped_box_outside=0, signal_patches=0
    )
    rows: list[pd.DataFrame] = []

    # with spectral_position the raw patches are cut only once the leave-one-out fits have
    # placed each frame's box (model_run_targets): reading them at the planned boxes first
    # would read every chunk twice
    moved_later = p.target == "model" and p.spectral_position is not None

    def read_chunk(chunk: np.ndarray) -> tuple[np.ndarray, Boxes, np.ndarray | None]:
        idx = np.concatenate([np.arange(starts[r], _run_end(starts, r, len(runs))) for r in chunk])
        sub = plan.boxes.subset(idx)
        return idx, sub, None if moved_later else extract_patches(stack, sub, g)

    # the next chunk is read while this one is computed; the model targets' fits read the
    # stack through a handle of their own (one file position per thread)
    chunks = _chunks(plan.kept_runs, starts, len(runs), p.chunk_size)
    with contextlib.ExitStack() as handles:
        fit_stack = handles.enter_context(Stack(stack.path)) if p.target == "model" else stack
        for _, (idx, sub, raw) in prefetch(chunks, read_chunk):
            rows.append(
                _chunk_patches(
                    fit_stack, plan, idx, sub, raw, g, p, spool, counts, threads, target_model
                )
            )
    log.info(
        "signal patches (%s targets): %d frames in %d usable runs; %d without a target (no other "
        "usable frame in the run), %d whose box at its spectral_position left the frame, %d "
        "dropped by the SF-ratio rule, %d dropped as dim (loc max < "
        "min_loc_max=%s); %d kept",
        p.target,
        len(runs),
        len(plan.kept_runs),
        counts["dropped_no_target"],
        counts["dropped_box_outside"],
        counts["dropped_ratio"],
        counts["dropped_dim"],
        p.min_loc_max,
        counts["signal_patches"],
    )
    return rows


def _chunk_patches(
    stack: Stack,
    plan: RunPlan,
    idx: np.ndarray,
    sub: Boxes,
    raw: np.ndarray | None,
    g: Geometry,
    p: PatchParams,
    spool: PatchSpool,
    counts: dict[str, int],
    threads: int,
    target_model: TargetModel | None,
) -> pd.DataFrame:
    """Targets, frame selection and spooling of one chunk of whole runs (rows ``idx`` of the
    plan, boxes ``sub``, raw patches ``raw``, None where the model targets cut them at the boxes
    they move); returns the kept patches' table rows."""
    runs = plan.runs
    cstarts = _run_starts(runs["cluster"].to_numpy()[idx])
    extra: dict[str, np.ndarray] = {}
    has_target = np.ones(len(idx), dtype=bool)
    outside = np.zeros(len(idx), dtype=bool)
    if p.target == "model":
        if target_model is None:
            raise ValueError("patches.target 'model' needs a TargetModel")
        positions = plan.jitter["position"][idx] if "position" in plan.jitter else None
        target, sf_raw, sf_target, fits, sub, raw = model_run_targets(
            stack, runs.iloc[idx], sub, raw, cstarts, g, p, target_model, threads, positions
        )
        has_target = fits["has_target"].to_numpy()
        if positions is not None:  # moved boxes that left the frame: counted on their own
            outside = ~fits["box_inside"].to_numpy()
            counts["dropped_box_outside"] += int(outside.sum())
        extra = _target_columns(fits, g, target_model)
    else:
        assert raw is not None
        target, sf_raw, sf_target = run_targets(raw, cstarts, g, p, threads)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = sf_target / sf_raw
    counts["dropped_no_target"] += int((~has_target & ~outside).sum())
    keep = has_target.copy()
    selected = select_frames(np.where(keep, ratio, np.nan), cstarts)
    counts["dropped_ratio"] += int((keep & ~selected).sum())
    keep &= selected
    bright = raw[:, :, : g.loc_width].max(axis=(1, 2)) >= p.min_loc_max
    counts["dropped_dim"] += int((keep & ~bright).sum())
    keep &= bright
    spool.add(raw=raw[keep], clean=target[keep])
    table = runs.iloc[idx[keep]].assign(
        loc_row0=sub.loc_row0[keep],
        loc_col0=sub.loc_col0[keep],
        spec_row0=sub.spec_row0[keep],
        spec_col0=sub.spec_col0[keep],
        offset_jitter=(
            sub.spec_col0 - plan.boxes.spec_col0[idx] + plan.jitter["offset_jitter"][idx]
        )[keep],
        sf_raw=sf_raw[keep],
        sf_target=sf_target[keep],
        sf_ratio=ratio[keep],
        kind="signal",
        **{k: v[keep] for k, v in extra.items()},
    )
    counts["signal_patches"] += int(keep.sum())
    return table.drop(columns="crowded", errors="ignore")


def _target_columns(fits: pd.DataFrame, g: Geometry, tm: TargetModel) -> dict[str, np.ndarray]:
    """patches.csv columns of the model targets: the target's spectral centre and width (nm),
    the frames its fit used, and the frame's own single-frame flag."""
    return {
        "target_nm": tm.cal.wavelength(fits["distance_px"].to_numpy(), g.spectral_offset),
        "target_width_nm": fits["width_px"].to_numpy() * tm.readout.nm_per_px,
        "target_frames": fits["n_others"].to_numpy(),
        "target_crlb_nm": fits["crlb_nm"].to_numpy(),
        "target_p_fit": fits["p_fit"].to_numpy(),
        "mle_flag": fits["flag"].to_numpy(),
    }


def molecule_free_patches(
    locs: pd.DataFrame,
    stack: Stack,
    g: Geometry,
    p: PatchParams,
    rng: np.random.Generator,
    min_run_length: int,
    spool: PatchSpool,
    threads: int = 1,
) -> pd.DataFrame | None:
    """``p.background_patches`` molecule-free patches and their targets (SF targets of the
    fused noise, or zeros for model targets: no molecule), spooled; returns their table rows."""
    bboxes, group = background_boxes(locs, stack, g, p.background_patches, min_run_length, rng)
    if not len(group):
        return None
    raw = extract_patches(stack, bboxes, g)
    target, sf_raw, sf_target = run_targets(raw, _run_starts(group), g, p, threads)
    if p.target == "model":
        target = np.zeros_like(target)
        sf_target = np.zeros_like(sf_target)
    n = min(p.background_patches, len(raw))
    spool.add(raw=raw[:n], clean=target[:n])
    return pd.DataFrame(
        {
            "frame": bboxes.frame[:n],
            "cluster": -1 - group[:n],
            "x": bboxes.loc_col0[:n] + g.half_loc_width + 0.5,
            "y": bboxes.loc_row0[:n] + g.half_height + 0.5,
            "pixel_x": bboxes.loc_col0[:n] + g.half_loc_width,
            "pixel_y": bboxes.loc_row0[:n] + g.half_height,
            "loc_row0": bboxes.loc_row0[:n],
            "loc_col0": bboxes.loc_col0[:n],
            "spec_row0": bboxes.spec_row0[:n],
            "spec_col0": bboxes.spec_col0[:n],
            "offset_jitter": 0,
            "sf_raw": sf_raw[:n],
            "sf_target": sf_target[:n],
            "sf_ratio": sf_target[:n] / np.where(sf_raw[:n] > 0, sf_raw[:n], np.nan),
            "kind": "background",
        }
    )


#: the first columns of patches.csv (the localization table's own columns follow)
TABLE_FRONT = (
    "acquisition",
    "cluster",
    "frame",
    "x",
    "y",
    "signal",
    "pixel_x",
    "pixel_y",
    "loc_row0",
    "loc_col0",
    "spec_row0",
    "spec_col0",
    "offset_jitter",
    "sf_raw",
    "sf_target",
    "sf_ratio",
    "kind",
)


def patch_table(rows: list[pd.DataFrame], acquisition: str) -> pd.DataFrame:
    table = pd.concat(rows, ignore_index=True)
    table.insert(0, "acquisition", acquisition)
    front = [c for c in TABLE_FRONT if c in table.columns]
    return table[front + [c for c in table.columns if c not in front]]


def prepare_patches(
    clusters_path: str | Path,
    localizations_path: str | Path,
    stack_path: str | Path,
    geometry: Geometry,
    params: PatchParams,
    seed: int,
    acquisition: str,
    min_run_length: int,
    raw_tif: str | Path,
    clean_tif: str | Path,
    table_csv: str | Path,
    threads: int = 1,
    target_model: TargetModel | None = None,
) -> dict[str, int]:
    """The whole patch stage for one acquisition; writes raw.tif, clean.tif and patches.csv.
    ``threads`` share the top-hat filtering (same result for any number). ``target_model`` is
    needed for ``params.target == "model"``."""
    g, p = geometry, params
    if p.target not in TARGETS:
        raise ValueError(f"patches.target {p.target!r}: use one of {', '.join(TARGETS)}")
    check_spectral_position(p, g)
    runs = pd.read_csv(clusters_path)
    counts: dict[str, int] = {"localizations_in_runs": len(runs)}
    locs = None
    if p.target == "model" or p.background_patches > 0:
        locs = pd.read_csv(localizations_path, usecols=["frame", "x", "y", "pixel_x", "pixel_y"])
    if p.target == "model":
        from .targets import crowded_localizations

        if target_model is None:
            raise ValueError("patches.target 'model' needs a TargetModel")
        crowd = crowded_localizations(locs, g, target_model.readout)
        runs["crowded"] = crowd[runs["localization_index"].to_numpy()]
    with Stack(stack_path) as stack:
        check_geometry_fits(g, stack.frame_shape, stack_path)
        check_inside_stack(runs, stack, clusters_path)
        plan = plan_runs(
            runs, stack.frame_shape, g, p, acquisition_seed(seed, acquisition, "patches"), counts
        )
        tmpdir = spool_dir(raw_tif)
        spool = PatchSpool(tmpdir, ("raw", "clean"))
        try:
            rows = signal_patches(stack, plan, g, p, spool, counts, threads, target_model)
            counts["background_patches"] = 0
            if p.background_patches > 0:
                bg_rng = acquisition_seed(seed, acquisition, "background")
                bg = molecule_free_patches(
                    locs, stack, g, p, bg_rng, min_run_length, spool, threads
                )
                if bg is not None:
                    rows.append(bg)
                    counts["background_patches"] = len(bg)
                log.info(
                    "background patches: %d (asked %d)",
                    counts["background_patches"],
                    p.background_patches,
                )
            if spool.n == 0:
                raise InputError(
                    clusters_path,
                    f"no patch left after the thresholds ({counts['runs']} runs, "
                    f"{counts['runs_outside_frame']} outside the frame, "
                    f"{counts['dropped_no_target']} without a target, {counts['dropped_ratio']} "
                    f"frames dropped by the SF ratio, {counts['dropped_dim']} as dim)",
                    "lower patches.min_loc_max in config/config.yaml (it depends on the camera)",
                )
            table = patch_table(rows, acquisition)
            # the table is formatted while the TIFFs are written (file writes release the GIL)
            with ThreadPoolExecutor(1) as pool:
                csv_done = pool.submit(write_csv, table, table_csv)
                spool.write({"raw": raw_tif, "clean": clean_tif}, g.shape)
                csv_done.result()
        finally:
            spool.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
    counts["patches"] = spool.n
    return counts


def _run_end(starts: np.ndarray, r: int, n: int) -> int:
    return int(starts[r + 1]) if r + 1 < len(starts) else n


def _chunks(
    run_list: np.ndarray, starts: np.ndarray, n: int, chunk_size: int
) -> Iterator[np.ndarray]:
    """Group runs so each chunk holds about ``chunk_size`` patches (a run is never split)."""
    current: list[int] = []
    size = 0
    for r in run_list:
        k = _run_end(starts, int(r), n) - int(starts[r])
        if current and size + k > chunk_size:
            yield np.asarray(current)
            current, size = [], 0
        current.append(int(r))
        size += k
    if current:
        yield np.asarray(current)
