"""Examples of joint fits for the report: the data, the fitted model and their residual for a
few groups of overlapping spectra of each size, so a user can see what the joint readout made of
them.

The model is redrawn from the readout's own values (per emitter: photons, spectral centre, width
and row; the group's background) on the region the joint fit used (the union of its members'
readout boxes, :func:`srsmlm.overlaps.gather_regions`), with the same pixel-integrated Gaussian
profiles (:func:`srsmlm.overlaps.region_model`). Groups given an unlocalized neighbour
(``extra_emitters``) are not drawn: the extra emitter is not part of the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path
from .mle import Camera
from .overlaps import gather_regions, region_model
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
    (``frames``: 1-based frame of each row), each cut to its region and padded with NaN to one
    shape; per example its ``frame``, ``group_size``, ``origin`` (frame row, col) and ``p_fit``;
    per member (``member_example``) its centre ``member_nm``, bound, flag and fitted position in
    the region (``member_row``, ``member_col``, px)."""
    picked = choose_groups(readout, groups, rng)
    rows = np.concatenate(picked) if picked else np.empty(0, np.int64)
    members = readout.iloc[rows]
    if not picked:
        none = np.empty((0, 0, 0), np.float32)
        return _example_arrays(
            np.zeros(1, np.int64), np.empty((0, 4), np.int64), frames, members, none, none
        )
    starts = np.r_[0, np.cumsum([len(p) for p in picked])]
    col0 = members["mle_box_col0"].to_numpy(np.int64)
    row0 = members["mle_box_row0"].to_numpy(np.int64)
    cut = gather_regions(stack, frames[rows], row0, col0, starts, cfg.rows, box_width, camera)
    member = cut.member
    fit = {
        "N": members["spectral_photons"].to_numpy(float),
        "l0": members["mle_centre_px"].to_numpy(float) - col0,
        "s": members["sc_mle_width_nm"].to_numpy(float) / cfg.nm_per_px,
        "y0": members["mle_row_px"].to_numpy(float) - cut.origin[member, 0],
        "b": members["background_photons"].to_numpy(float)[starts[:-1]],
    }
    model = region_model(cut, fit, cfg.settings.sigma_y)
    regions = np.column_stack([cut.origin, cut.regions[:, 2:]])
    data_cut = _cropped(cut.data, cut.regions)
    model_cut = _cropped(model, cut.regions)
    return _example_arrays(starts, regions, frames[rows], members, data_cut, model_cut)


def _cropped(images: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Each image's region (row0, col0, h, w) at its top left, NaN beyond (float32)."""
    out = np.full((len(images), *regions[:, 2:].max(axis=0)), np.nan, np.float32)
    for k, (r0, c0, h, w) in enumerate(regions):
        out[k, :h, :w] = images[k, r0 : r0 + h, c0 : c0 + w]
    return out


def _example_arrays(
    starts: np.ndarray,
    regions: np.ndarray,
    frames: np.ndarray,
    members: pd.DataFrame,
    data: np.ndarray,
    model: np.ndarray,
) -> dict[str, np.ndarray]:
    """The arrays :func:`joint_examples` returns: per example (``starts``: its first member,
    ``regions``: frame row0, col0, h, w) and per member."""
    first = starts[:-1]
    member = np.repeat(np.arange(len(first)), np.diff(starts))
    return {
        "data": data,
        "model": model,
        "shape": regions[:, 2:].astype(np.int64),
        "frame": frames[first].astype(np.int64),
        "group_size": np.diff(starts).astype(np.int64),
        "origin": regions[:, :2].astype(np.int64),
        "p_fit": members["mle_p_fit"].to_numpy(float)[first],
        "member_example": member,
        "member_nm": members["sc_mle_nm"].to_numpy(float),
        "member_crlb_nm": members["sc_mle_crlb_nm"].to_numpy(float),
        "member_flag": members["sc_mle_flag"].fillna("").to_numpy(str),
        "member_row": members["mle_row_px"].to_numpy(float) - regions[member, 0],
        "member_col": members["mle_centre_px"].to_numpy(float) - regions[member, 1],
    }


def write_examples(examples: dict[str, np.ndarray], path: str | Path) -> None:
    """The examples as one ``.npz`` (atomically; no pickled objects)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **examples)


def read_examples(path: str | Path) -> dict[str, np.ndarray]:
    """Examples written by :func:`write_examples`."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
