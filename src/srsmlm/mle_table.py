"""The maximum-likelihood readout of a whole localization table: localizations whose readout
boxes overlap are grouped (:func:`srsmlm.overlaps.overlap_groups`), groups of 2 to
``spectra.max_group_size`` are fitted jointly (:func:`srsmlm.overlaps.joint_readout`), the
others alone (:func:`srsmlm.readout.mle_readout`), and a box whose fit fails is tested for an
unlocalized neighbour (:func:`srsmlm.neighbours.neighbour_readout`). The spectra stage reads its
localizations this way, and so do the model targets (:mod:`srsmlm.targets`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .calibration import Calibration
from .geometry import Geometry
from .io import chunk_slices
from .mle import Camera
from .molecules import run_blocks
from .neighbours import NEIGHBOUR_COLUMNS, neighbour_readout
from .overlaps import JointConfig, joint_readout, overlap_groups
from .readout import MLE_COLUMNS, ReadoutConfig, mle_readout
from .stack import Stack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reader:
    """What the maximum-likelihood readout of a table needs besides its rows and the stack."""

    geometry: Geometry
    cal: Calibration
    camera: Camera
    cfg: ReadoutConfig
    joint: JointConfig


def with_groups(table: pd.DataFrame, r: Reader) -> pd.DataFrame:
    """``table`` (columns ``frame``, ``x``, ``y``, ``spec_col0``) with each localization's
    overlap ``group``, its ``group_size`` and ``crowded`` (a group above
    ``spectra.max_group_size``: not fitted jointly)."""
    group = overlap_groups(table, r.geometry, r.cfg, r.joint)
    size = np.bincount(group)[group] if len(group) else np.zeros(0, np.int64)
    return table.assign(group=group, group_size=size, crowded=size > r.joint.max_group_size)


def alone_readout(stack: Stack, alone: pd.DataFrame, r: Reader) -> pd.DataFrame:
    """The readout of localizations read alone (each its own box), a failed box tested for an
    unlocalized neighbour."""
    fit = mle_readout(stack, alone, r.geometry, r.cal, r.camera, r.cfg)
    units = np.arange(len(alone))
    p, rows = r.joint.neighbour_p, r.joint.min_row_separation_px
    return neighbour_readout(stack, alone, fit, units, r.geometry, r.cal, r.camera, r.cfg, p, rows)


def joint_pass(table: pd.DataFrame, stack: Stack, r: Reader, chunk_size: int) -> pd.DataFrame:
    """The readout of every localization of ``table`` (:func:`with_groups` columns) in a group
    of 2 to ``spectra.max_group_size``, whole groups of about ``chunk_size`` localizations at a
    time; indexed like ``table``. Logs the counts."""
    size = table["group_size"].to_numpy()
    cap = r.joint.max_group_size
    rows = table[(size >= 2) & (size <= cap)].sort_values("group", kind="stable")
    labels = rows["group"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True]) if len(rows) else [0]
    blocks = [rows.iloc[bounds[a] : bounds[b]] for a, b in run_blocks(bounds, chunk_size)]
    parts = [_group_readout(stack, block, r) for block in blocks]
    empty = pd.DataFrame(columns=[*MLE_COLUMNS, "group_size", *NEIGHBOUR_COLUMNS])
    out = pd.concat(parts) if parts else empty
    log.info(
        "%d localizations in %d groups of overlapping spectra fitted jointly (%d of them flagged "
        "crowded: a failed or ambiguous joint fit, or close spectra that rows and photons cannot "
        "assign); %d in groups above spectra.max_group_size = %d (flagged crowded)",
        len(rows),
        len(bounds) - 1,
        int((out["sc_mle_flag"] == "crowded").sum()),
        int((size > cap).sum()),
        cap,
    )
    return out


def _group_readout(stack: Stack, rows: pd.DataFrame, r: Reader) -> pd.DataFrame:
    """The joint readout of whole groups, a group whose fit failed tested for an unlocalized
    neighbour."""
    g, cal, camera, cfg = r.geometry, r.cal, r.camera, r.cfg
    fit = joint_readout(stack, rows, g, cal, camera, cfg, r.joint)
    units = rows["group"].to_numpy()
    p, close = r.joint.neighbour_p, r.joint.min_row_separation_px
    return neighbour_readout(stack, rows, fit, units, g, cal, camera, cfg, p, close)


def read_table(stack: Stack, table: pd.DataFrame, r: Reader, chunk_size: int) -> pd.DataFrame:
    """The whole readout of ``table`` (:func:`with_groups` columns): the joint fits
    (:func:`joint_pass`), then the other localizations ``chunk_size`` at a time
    (:func:`alone_readout`). Returns the readout's columns, ``group_size`` and
    ``extra_emitters``, indexed like ``table``."""
    joint = joint_pass(table, stack, r, chunk_size)
    alone = table[~table.index.isin(joint.index)]
    parts = [alone_readout(stack, alone.iloc[sl], r) for sl in chunk_slices(len(alone), chunk_size)]
    read = [part for part in (joint, *parts) if len(part)]  # (an empty one has no dtypes)
    out = pd.concat(read).loc[table.index] if read else joint
    out["group_size"] = table["group_size"].to_numpy()
    out["extra_emitters"] = out["extra_emitters"].to_numpy(np.int64)
    return out
