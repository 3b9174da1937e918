"""Where patches are cut: each localization's two boxes (the spot's and the spectral one, at
``spectral_offset`` columns to the right), their placement and checks against the frame, and
the patches cut from the stack (float32, raw counts / 2**16).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .geometry import Geometry
from .stack import NORMALISATION, Stack


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


def check_geometry_fits(g: Geometry, frame_shape: tuple[int, int], stack_path: str | Path) -> None:
    """Fail if the patch geometry cannot fit the stack's frames."""
    h, w = frame_shape
    need_w = g.half_loc_width + g.spectral_offset + g.spectral_width
    if g.height > h or need_w > w:
        raise InputError(
            stack_path,
            f"patch geometry (height {g.height}, loc box to spectral end {need_w} px) cannot fit "
            f"the {w}x{h} px frames",
            "reduce geometry.height / geometry.spectral_offset / geometry.spectral_width",
        )
