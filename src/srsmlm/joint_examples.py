"""Examples of joint fits for the report: the data, the fitted model and their residual for a
few groups of overlapping spectra of each size, so a user can see what the joint readout made of
them.

The model is redrawn from the readout's own values (per emitter: photons, spectral centre, width
and row; the group's background) on the region the joint fit used (the union of its members'
readout boxes, :func:`srsmlm.overlaps.joint_readout`), with the same pixel-integrated Gaussian
profiles (:func:`srsmlm.mle.box_model`). Groups given an unlocalized neighbour
(``extra_emitters``) are not drawn: the extra emitter is not part of the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path
from .mle import Camera, box_model
from .readout import ReadoutConfig
from .stack import Stack

#: groups drawn per size class (2, 3, and 4 or more spectra)
PER_SIZE = 2

#: the columns of a joint readout a drawing needs, all finite
DRAWN_COLUMNS = (
    "mle_centre_px",
    "mle_row_px",
    "sc_mle_width_nm",
    "spectral_photons",
    "background_photons",
    "mle_box_row0",
    "mle_box_col0",
)


def choose_groups(
    readout: pd.DataFrame, groups: np.ndarray, rng: np.random.Generator, per_size: int = PER_SIZE
) -> list[np.ndarray]:
    """Row positions of up to ``per_size`` whole groups per size class (2, 3, 4 or more),
    drawn by ``rng`` among the groups of ``readout`` (rows of one group consecutive, ``groups``
    their labels) whose members all have finite :data:`DRAWN_COLUMNS`, values from the joint
    fit (``mle_joint``) and no extra emitter;
    smallest class first, each group's rows ascending."""
    if not len(readout):
        return []
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1], True])
    sizes = np.diff(starts)
    finite = np.isfinite(readout[list(DRAWN_COLUMNS)].to_numpy(float)).all(axis=1)
    if "extra_emitters" in readout:
        finite &= readout["extra_emitters"].to_numpy() == 0
    if "mle_joint" in readout:  # a group whose joint fit failed keeps its single fits
        finite &= readout["mle_joint"].to_numpy(bool)
    drawable = np.logical_and.reduceat(finite, starts[:-1])
    picked: list[np.ndarray] = []
    for size_class in (sizes == 2, sizes == 3, sizes >= 4):
        pool = np.flatnonzero(size_class & drawable)
        chosen = np.sort(rng.choice(pool, size=min(per_size, len(pool)), replace=False))
        picked += [np.arange(starts[k], starts[k + 1]) for k in chosen]
    return picked


def group_region(
    members: pd.DataFrame, cfg: ReadoutConfig, box_width: int, frame_shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """The region a group was fitted in (frame row0, col0, height, width: the union of its
    members' readout boxes), or None where it leaves the frame."""
    row0 = members["mle_box_row0"].to_numpy(np.int64)
    col0 = members["mle_box_col0"].to_numpy(np.int64)
    top, side = int(row0.min()), int(col0.min())
    h, w = int(row0.max()) + cfg.rows - top, int(col0.max()) + box_width - side
    if top < 0 or side < 0 or top + h > frame_shape[0] or side + w > frame_shape[1]:
        return None
    return top, side, h, w


def group_model(
    members: pd.DataFrame,
    region: tuple[int, int, int, int],
    nm_per_px: float,
    sigma_y: float,
) -> np.ndarray:
    """Expected photons per px of a group's fit on its region: the background plus each
    member's spectrum (photons, centre, width, row of the readout)."""
    top, side, h, w = region
    shared = np.column_stack(
        [
            members["mle_centre_px"].to_numpy(float) - side,
            members["sc_mle_width_nm"].to_numpy(float) / nm_per_px,
        ]
    )
    local = np.column_stack(
        [
            members["spectral_photons"].to_numpy(float),
            members["mle_row_px"].to_numpy(float) - top,
            np.zeros(len(members)),
        ]
    )
    spectra = box_model(shared, local, (h, w), sigma_y).sum(axis=0)
    return spectra + float(members["background_photons"].to_numpy(float).mean())


def joint_examples(
    stack: Stack,
    frames: np.ndarray,
    readout: pd.DataFrame,
    groups: np.ndarray,
    cfg: ReadoutConfig,
    box_width: int,
    camera: Camera,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Data (photons) and model of the groups :func:`choose_groups` picks from a joint readout
    (``frames``: 1-based frame of each row), padded with NaN to one shape; per example its
    ``frame``, ``group_size``, ``origin`` (frame row, col) and ``p_fit``; per member
    (``member_example``) its centre ``member_nm``, bound, flag and fitted position in the
    region (``member_row``, ``member_col``, px)."""
    drawn, regions = [], []
    for rows in choose_groups(readout, groups, rng):
        region = group_region(readout.iloc[rows], cfg, box_width, stack.frame_shape)
        if region is not None:
            drawn.append(rows)
            regions.append(region)
    h = max((r[2] for r in regions), default=0)
    w = max((r[3] for r in regions), default=0)
    data = np.full((len(drawn), h, w), np.nan, np.float32)
    model = np.full((len(drawn), h, w), np.nan, np.float32)
    for k, (rows, (top, side, rh, rw)) in enumerate(zip(drawn, regions, strict=True)):
        (cut,) = stack.gather(frames[rows[:1]], [([top], [side], rh, rw)])
        data[k, :rh, :rw] = camera.photons(cut[0])
        region = (top, side, rh, rw)
        model[k, :rh, :rw] = group_model(
            readout.iloc[rows], region, cfg.nm_per_px, cfg.settings.sigma_y
        )
    return _example_arrays(drawn, regions, frames, readout, data, model)


def _example_arrays(
    drawn: list[np.ndarray],
    regions: list[tuple[int, int, int, int]],
    frames: np.ndarray,
    readout: pd.DataFrame,
    data: np.ndarray,
    model: np.ndarray,
) -> dict[str, np.ndarray]:
    """The arrays :func:`joint_examples` returns, per example and per member."""
    rows = np.concatenate(drawn) if drawn else np.empty(0, np.int64)
    origin = np.array([r[:2] for r in regions], np.int64).reshape(-1, 2)
    member = np.repeat(np.arange(len(drawn)), [len(r) for r in drawn])
    members = readout.iloc[rows]
    return {
        "data": data,
        "model": model,
        "shape": np.array([r[2:] for r in regions], np.int64).reshape(-1, 2),
        "frame": np.array([frames[r[0]] for r in drawn], np.int64),
        "group_size": np.array([len(r) for r in drawn], np.int64),
        "origin": origin,
        "p_fit": np.array([readout["mle_p_fit"].to_numpy(float)[r[0]] for r in drawn]),
        "member_example": member,
        "member_nm": members["sc_mle_nm"].to_numpy(float),
        "member_crlb_nm": members["sc_mle_crlb_nm"].to_numpy(float),
        "member_flag": members["sc_mle_flag"].fillna("").to_numpy(str),
        "member_row": members["mle_row_px"].to_numpy(float) - origin[member, 0],
        "member_col": members["mle_centre_px"].to_numpy(float) - origin[member, 1],
    }


def write_examples(examples: dict[str, np.ndarray], path: str | Path) -> None:
    """The examples as one ``.npz`` (atomically; no pickled objects)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **examples)


def read_examples(path: str | Path) -> dict[str, np.ndarray]:
    """Examples written by :func:`write_examples`."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
