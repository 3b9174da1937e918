"""Per-molecule spectra: a molecule is a run of consecutive frames (``cluster`` >= 0); its
spectral centre is the joint maximum-likelihood fit of its usable frames (shared centre and
width), or their inverse-variance mean, with a consistency test of the frames about it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import chdtrc

from .calibration import Calibration
from .dyes import classify_dyes
from .geometry import Geometry
from .mle import Camera, fit_boxes
from .readout import ReadoutConfig
from .stack import Stack

#: single-frame flags that do not keep a frame out of its molecule's estimate: a frame too dim
#: to trust alone still carries its share of the run's information
MOLECULE_FLAGS = ("", "dim")


def usable_for_molecule(spectra: pd.DataFrame) -> pd.Series:
    """Localizations in runs whose frame enters the molecule's estimate (``MOLECULE_FLAGS``)."""
    return (spectra["cluster"] >= 0) & spectra["sc_mle_flag"].fillna("").isin(MOLECULE_FLAGS)


def molecule_groups(spectra: pd.DataFrame) -> pd.DataFrame:
    """The localizations of runs usable for the molecule's estimate and alone in their frame's
    readout (``group_size`` 1 and no ``extra_emitters``: their own box holds no other spectrum),
    sorted by run and frame, with the run's first box column as the reference of their joint
    fit."""
    trusted = spectra[usable_for_molecule(spectra) & alone_in_box(spectra)]
    trusted = trusted.sort_values(["cluster", "frame"], kind="stable")
    ref = trusted.groupby("cluster")["mle_box_col0"].transform("first")
    return trusted.assign(mle_offset=trusted["mle_box_col0"] - ref, mle_ref_col0=ref)


def alone_in_box(spectra: pd.DataFrame) -> pd.Series:
    """Localizations whose readout box holds no other spectrum: read alone (``group_size`` 1),
    with no unlocalized neighbour fitted beside them (``extra_emitters`` 0, where present)."""
    alone = spectra["group_size"] == 1
    if "extra_emitters" in spectra:
        alone &= spectra["extra_emitters"] == 0
    return alone


def inverse_variance_start(
    w: np.ndarray, centre: np.ndarray, width: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """The start of each group's joint fit (G, 2): the inverse-variance (``w``) mean of its
    frames' single-fit centres and widths (px); ``starts``: the first row of each group."""
    num = np.column_stack([np.add.reduceat(w * centre, starts), np.add.reduceat(w * width, starts)])
    return num / np.add.reduceat(w, starts)[:, None]


def joint_fits(
    stack: Stack,
    trusted: pd.DataFrame,
    g: Geometry,
    camera: Camera,
    cfg: ReadoutConfig,
) -> pd.DataFrame:
    """Joint fit of each run's trusted frames (shared centre and width, own N, y0, b), started
    from the inverse-variance mean of the frames' fits. Returns per cluster ``centre_px`` (frame
    x), ``var_px2`` (CRLB of the shared centre), ``p_fit``, ``converged``."""
    width = g.spectral_width + 2 * cfg.margin_px
    col0 = trusted["mle_box_col0"].to_numpy(np.int64)
    row0 = trusted["mle_box_row0"].to_numpy(np.int64)
    (boxes,) = stack.gather(trusted["frame"].to_numpy(), [(row0, col0, cfg.rows, width)])
    x = camera.photons(boxes)
    clusters = trusted["cluster"].to_numpy()
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
    groups = np.r_[starts, len(trusted)]
    w = 1.0 / (trusted["sc_mle_crlb_nm"].to_numpy() / cfg.nm_per_px) ** 2
    ref = trusted["mle_ref_col0"].to_numpy()
    l0 = trusted["mle_centre_px"].to_numpy() - ref
    s = trusted["sc_mle_width_nm"].to_numpy() / cfg.nm_per_px
    shared = inverse_variance_start(w, l0, s, starts)
    local = np.column_stack(
        [
            trusted["spectral_photons"].to_numpy(),
            trusted["y"].to_numpy() - row0,
            trusted["background_photons"].to_numpy(),
        ]
    )
    fit = fit_boxes(
        x,
        shared,
        local,
        cfg.settings,
        camera,
        groups=groups,
        offsets=trusted["mle_offset"].to_numpy(np.float64),
    )
    return pd.DataFrame(
        {
            "centre_px": ref[starts] + fit["l0"],
            "var_px2": fit["var_l0"],
            "p_fit": fit["p_fit"],
            "converged": fit["converged"],
        },
        index=pd.Index(clusters[starts], name="cluster"),
    )


def _add_grouped_frames(out: pd.DataFrame, grouped: pd.DataFrame) -> None:
    """Fold the usable frames fitted jointly with a neighbour (their own box holds another
    spectrum, so they stay out of the run's multi-frame fit) into ``sc_joint_nm`` and its error,
    by inverse variance; a run with no lone usable frame gets their mean alone."""
    w = 1.0 / grouped["sc_mle_crlb_nm"] ** 2
    parts = grouped.assign(w=w, wsc=w * grouped["sc_mle_nm"]).groupby("cluster")
    w_g = parts["w"].sum().reindex(out.index).fillna(0.0)
    s_g = parts["wsc"].sum().reindex(out.index).fillna(0.0)
    has_joint = out["sc_joint_nm"].notna()
    w_j = np.where(has_joint, 1.0 / out["sc_joint_err_nm"] ** 2, 0.0)
    s_j = np.where(has_joint, w_j * out["sc_joint_nm"], 0.0)
    total = w_j + w_g
    with np.errstate(divide="ignore", invalid="ignore"):
        out["sc_joint_nm"] = np.where(total > 0, (s_j + s_g) / total, np.nan)
        out["sc_joint_err_nm"] = np.where(total > 0, 1.0 / np.sqrt(total), np.nan)


def molecule_table(
    spectra: pd.DataFrame,
    joint: pd.DataFrame | None,
    g: Geometry,
    cal: Calibration,
    cfg: ReadoutConfig,
) -> pd.DataFrame:
    """One row per run of ``spectra`` (``cluster`` >= 0): frames, position, the molecule's
    spectral centre ``sc_nm`` and its error ``sc_err_nm`` (joint fit or inverse-variance mean of
    the usable frames, trusted or only ``dim``: ``cfg.molecule_estimate``), both estimates, and
    ``consistency_p``: the chi-square tail of those frames about the molecule's value (low: the
    run mixes molecules or has outliers)."""
    runs = spectra[spectra["cluster"] >= 0]
    base = runs.groupby("cluster").agg(
        n_frames=("frame", "size"),
        first_frame=("frame", "min"),
        last_frame=("frame", "max"),
        x=("x", "mean"),
        y=("y", "mean"),
    )
    trusted = runs[usable_for_molecule(runs)]
    w = 1.0 / trusted["sc_mle_crlb_nm"] ** 2
    grp = trusted.assign(w=w, wsc=w * trusted["sc_mle_nm"]).groupby("cluster")
    mean = pd.DataFrame(
        {
            "n_used": grp.size(),
            "sc_mean_nm": grp["wsc"].sum() / grp["w"].sum(),
            "sc_mean_err_nm": 1.0 / np.sqrt(grp["w"].sum()),
            "x_trusted": grp["x"].mean(),
        }
    )
    out = base.join(mean)
    out["n_used"] = out["n_used"].fillna(0).astype(np.int64)
    out["sc_joint_nm"] = np.nan
    out["sc_joint_err_nm"] = np.nan
    if joint is not None and len(joint):
        j = joint[joint["converged"]]
        d = j["centre_px"] - out.loc[j.index, "x_trusted"]
        out.loc[j.index, "sc_joint_nm"] = cal.wavelength(d.to_numpy(), g.spectral_offset)
        out.loc[j.index, "sc_joint_err_nm"] = np.sqrt(j["var_px2"].to_numpy()) * cfg.nm_per_px
    _add_grouped_frames(out, trusted[~alone_in_box(trusted)])
    key = "joint" if cfg.molecule_estimate == "joint" else "mean"
    out["sc_nm"] = out[f"sc_{key}_nm"]
    out["sc_err_nm"] = out[f"sc_{key}_err_nm"]
    chi = (trusted["sc_mle_nm"] - trusted["cluster"].map(out["sc_nm"])) / trusted["sc_mle_crlb_nm"]
    chi2 = (chi**2).groupby(trusted["cluster"]).sum()
    dof = out["n_used"] - 1
    out["consistency_p"] = np.where(
        dof >= 1, chdtrc(np.maximum(dof, 1), chi2.reindex(out.index).fillna(0.0)), np.nan
    )
    return out.drop(columns="x_trusted").reset_index()


def run_blocks(bounds: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive blocks of whole runs, about ``size`` rows each and at least one run each:
    (first run, end run) pairs. ``bounds``: the row where each run starts, then the row count."""
    blocks, a, n = [], 0, len(bounds) - 1
    while a < n:
        b = min(n, max(a + 1, int(np.searchsorted(bounds, bounds[a] + size, side="right")) - 1))
        blocks.append((a, b))
        a = b
    return blocks


def molecules(
    spectra: pd.DataFrame,
    stack_path: str | Path,
    geometry: Geometry,
    cal: Calibration,
    camera: Camera,
    cfg: ReadoutConfig,
    chunk_size: int,
    n_dyes: int | None,
    seed: int,
) -> pd.DataFrame:
    """Per-molecule spectra (:func:`molecule_table`), joint fits whole runs at a time, and a
    Gaussian-mixture dye class per molecule. ``spectra`` needs only the localizations in runs
    (``srsmlm.spectra.RUN_COLUMNS``), in the order of spectra.csv."""
    trusted = molecule_groups(spectra)
    clusters = trusted["cluster"].to_numpy()
    starts = np.r_[np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]]), len(trusted)]
    starts = starts if len(trusted) else starts[:0]  # no usable frame: no joint fit
    with Stack(stack_path) as stack:
        parts = [
            joint_fits(stack, trusted.iloc[starts[a] : starts[b]], geometry, camera, cfg)
            for a, b in run_blocks(starts, chunk_size)
        ]
    joint = pd.concat(parts) if parts else None
    out = molecule_table(spectra, joint, geometry, cal, cfg)
    cls, prob, _ = classify_dyes(out["sc_nm"].to_numpy(), n_dyes, seed)
    return out.assign(dye=cls, dye_probability=prob)
