"""The spectra stage: every denoised localization read out (profile readouts of the raw and
denoised patches, the maximum-likelihood readout of the raw counts with its bound and flag), dye
classes, spectral precision and one row per molecule, streamed ``spectra.chunk_size``
localizations at a time. The readouts themselves live in :mod:`srsmlm.profiles`,
:mod:`srsmlm.readout`, :mod:`srsmlm.molecules` and :mod:`srsmlm.dyes`."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import shutil
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from .calibration import Calibration, calibration_from_config
from .denoised import AnchorConfig, DenoisedAnchor, anchor_columns, fit_anchor, strata
from .dyes import (
    PRECISION_COLUMNS,
    TRUSTED_MLE,
    classify_localizations,
    precision_by_signal,
    trusted_mle,
)
from .errors import InputError
from .geometry import Geometry
from .io import atomic_path, chunk_slices, spool_dir, write_csv
from .joint_examples import joint_examples, write_examples
from .mle import Camera
from .mle_table import Reader, alone_readout, joint_pass, with_groups
from .molecules import molecules
from .overlaps import JointConfig
from .profiles import DENOISED_FIT_COLUMNS, patch_readouts
from .readout import MLE_COLUMNS, ReadoutConfig
from .seeds import acquisition_seed
from .stack import NORMALISATION, Stack

log = logging.getLogger(__name__)

#: columns of the denoised patch table the stage reads (the others are not needed)
TABLE_COLUMNS = ("localization_index", "frame", "x", "y", "signal", "spec_row0", "spec_col0")

#: columns of the localizations in runs kept in memory for the precision and the molecules
RUN_COLUMNS = (
    "cluster",
    "frame",
    "x",
    "y",
    "signal",
    *(c for c in PRECISION_COLUMNS.values() if c != TRUSTED_MLE),
    "sc_mle_nm",
    "sc_mle_crlb_nm",
    "sc_mle_width_nm",
    "spectral_photons",
    "background_photons",
    "sc_mle_flag",
    "mle_centre_px",
    "mle_box_row0",
    "mle_box_col0",
    "group_size",
    "extra_emitters",
)


#: glibc ``mallopt`` parameter M_MMAP_THRESHOLD and the value the stage fixes it to: blocks of
#: this size and more are mapped on their own and unmapped when freed
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES = -3, 1 << 20


def fix_mmap_threshold() -> None:
    """Fix glibc's mmap threshold (no-op without glibc). Left dynamic, glibc raises it (up to
    32 MiB) after the first large free, so each chunk's large temporaries come from the
    per-thread heaps, which fragment around the small arrays kept between chunks: the peak RSS
    then grows with the number of chunks instead of staying at one chunk's working set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class StageSettings:
    """What every chunk of the stage's readout needs besides its rows."""

    geometry: Geometry
    cal: Calibration
    camera: Camera
    cfg: ReadoutConfig
    joint: JointConfig
    anchor: AnchorConfig
    n_rows: int
    chunk_size: int
    max_residual: float = math.inf

    @property
    def reader(self) -> Reader:
        """The maximum-likelihood readout's settings."""
        return Reader(self.geometry, self.cal, self.camera, self.cfg, self.joint)


def load_patch_table(
    denoised_table: str | Path,
    clusters_csv: str | Path,
    patch_tifs: tuple[str | Path, ...],
    geometry: Geometry,
) -> pd.DataFrame:
    """The columns of the denoised patch table the stage needs (``TABLE_COLUMNS`` and
    ``DENOISED_FIT_COLUMNS``), with each localization's run (``cluster``, -1 outside runs);
    checks the TIFFs hold one patch a row."""
    wanted = (*TABLE_COLUMNS, *DENOISED_FIT_COLUMNS)
    header = pd.read_csv(denoised_table, nrows=0).columns
    missing = [c for c in wanted if c not in header]
    if missing:
        raise InputError(
            denoised_table,
            f"the denoised patch table lacks column(s) {missing} (written by an older version)",
            "rerun denoise_acquisition (snakemake --forcerun denoise_acquisition)",
        )
    table = pd.read_csv(denoised_table, usecols=list(wanted))
    for path in patch_tifs:
        n_pages = _page_count(path, geometry)
        if n_pages != len(table):
            raise InputError(
                path, f"{n_pages} patches for {len(table)} table rows", "rerun denoise_acquisition"
            )
    clusters = pd.read_csv(clusters_csv, usecols=["localization_index", "cluster"])
    table = table.merge(clusters, on="localization_index", how="left")
    table["cluster"] = table["cluster"].fillna(-1).astype(np.int64)
    return table


def spectra_chunk(
    table: pd.DataFrame,
    sl: slice,
    paths: dict[str, str | Path],
    stack: Stack,
    st: StageSettings,
    pool: Executor,
    joint: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The spectra.csv columns (all but the dye classes) of the rows ``sl`` of ``table``, and
    the extra maximum-likelihood columns the molecules need (box and centre). The
    maximum-likelihood readout (Numba, no GIL) runs in ``pool`` beside the patch readouts;
    rows in ``joint`` (:func:`srsmlm.mle_table.joint_pass`) take their joint fits from there."""
    part = table.iloc[sl]
    alone = part[~part.index.isin(joint.index)]
    fit = pool.submit(alone_readout, stack, alone, st.reader)
    out = part[["localization_index", "frame", "x", "y", "signal", "cluster"]].copy()
    readouts = patch_readouts(
        table, sl, paths, st.geometry, st.cal, st.n_rows, st.max_residual, pool
    )
    for name, values in readouts.items():
        out[name] = values
    out["photons_proxy_adu"] = out["sum_raw"] * NORMALISATION
    mle = pd.concat([fit.result(), joint[joint.index.isin(part.index)]]).loc[part.index]
    out = out.join(mle[list(MLE_COLUMNS)])
    out["group_size"] = part["group_size"].to_numpy()
    out["extra_emitters"] = mle["extra_emitters"].to_numpy(np.int64)
    return out, mle[["mle_centre_px", "mle_box_row0", "mle_box_col0", "neighbour_tested"]]


@dataclass
class _Kept:
    """What the global steps need of every chunk: the values the dye classes are fitted on and
    assigned by, and the CRLB (preallocated, one value a localization), the flag counts
    (summary), and the localizations in runs (spooled to disk a chunk at a time: only the
    molecules and the precision read them, after the readout pass)."""

    mle: np.ndarray
    stratum: np.ndarray
    denoised: np.ndarray
    spread: np.ndarray
    in_run: np.ndarray
    crlb: np.ndarray
    max_residual: float
    flags: dict[str, int] = field(default_factory=dict)
    runs: list[Path] = field(default_factory=list)
    denoised_rejected: int = 0
    neighbour_boxes: float = 0.0
    extra_boxes: float = 0.0

    @classmethod
    def empty(cls, n: int, max_residual: float) -> _Kept:
        mle, stratum, denoised, spread = np.empty(n), np.empty(n, np.int8), np.empty(n), np.empty(n)
        return cls(mle, stratum, denoised, spread, np.empty(n, bool), np.empty(n), max_residual)

    @property
    def trusted(self) -> np.ndarray:
        """Whether each maximum-likelihood value is trusted (no flag)."""
        return self.stratum == 0

    def add(self, sl: slice, out: pd.DataFrame, extra: pd.DataFrame, runs_file: Path) -> None:
        flag = out["sc_mle_flag"].fillna("")
        self.mle[sl] = out["sc_mle_nm"].to_numpy()
        self.stratum[sl] = strata(flag.to_numpy())
        self.denoised[sl] = out["fit_denoised_centre_nm"].to_numpy()
        self.spread[sl] = out["fit_denoised_spread_nm"].to_numpy()
        self.crlb[sl] = out["sc_mle_crlb_nm"].to_numpy()
        for name, n in flag.replace("", "trusted").value_counts().items():
            self.flags[name] = self.flags.get(name, 0) + int(n)
        self.denoised_rejected += int((out["fit_denoised_residual"] > self.max_residual).sum())
        share = 1.0 / out["group_size"].to_numpy()  # a group's members share one box
        self.neighbour_boxes += float(share[extra["neighbour_tested"].to_numpy(bool)].sum())
        self.extra_boxes += float(share[out["extra_emitters"].to_numpy() > 0].sum())
        in_run = out["cluster"].to_numpy() >= 0
        self.in_run[sl] = in_run
        out.join(extra.drop(columns="neighbour_tested")).loc[in_run, list(RUN_COLUMNS)].to_pickle(
            runs_file
        )
        self.runs.append(runs_file)

    def runs_table(self) -> pd.DataFrame:
        if not self.runs:
            return pd.DataFrame(columns=list(RUN_COLUMNS))
        return pd.concat([pd.read_pickle(f) for f in self.runs])


def readout_pass(
    table: pd.DataFrame,
    paths: dict[str, str | Path],
    stack_path: str | Path,
    spool: Path,
    st: StageSettings,
    seed: int,
) -> tuple[list[Path], _Kept, dict[str, np.ndarray]]:
    """Read out ``table`` ``st.chunk_size`` rows at a time: each chunk's spectra.csv columns are
    pickled into ``spool`` (exact values and types); only what the global steps need stays in
    memory. Also returns a few joint fits drawn for the report
    (:func:`srsmlm.joint_examples.joint_examples`)."""
    kept = _Kept.empty(len(table), st.max_residual)
    files = []
    with Stack(stack_path) as stack, ThreadPoolExecutor(len(paths) + 1) as pool:
        joint = joint_pass(table, stack, st.reader, st.chunk_size)
        examples = _drawn_examples(stack, table, joint, st, seed)
        for k, sl in enumerate(chunk_slices(len(table), st.chunk_size)):
            out, extra = spectra_chunk(table, sl, paths, stack, st, pool, joint)
            kept.add(sl, out, extra, spool / f"runs_{k:06d}.pkl")
            files.append(spool / f"chunk_{k:06d}.pkl")
            out.to_pickle(files[-1])
            log.info("read out %d / %d localizations", sl.stop, len(table))
    log.info(
        "%d boxes whose fit failed tested for an unlocalized neighbour; %d got an extra emitter "
        "(likelihood-ratio p < spectra.neighbour_p = %g), its localizations read from that fit",
        round(kept.neighbour_boxes),
        round(kept.extra_boxes),
        st.joint.neighbour_p,
    )
    return files, kept, examples


def _drawn_examples(
    stack: Stack, table: pd.DataFrame, joint: pd.DataFrame, st: StageSettings, seed: int
) -> dict[str, np.ndarray]:
    """A few of ``joint``'s groups drawn for the report, picked by the seed."""
    rows = table.loc[joint.index]
    return joint_examples(
        stack,
        rows["frame"].to_numpy(),
        joint,
        rows["group"].to_numpy(),
        st.cfg,
        st.geometry.spectral_width + 2 * st.cfg.margin_px,
        st.camera,
        acquisition_seed(seed, "", "joint_examples"),
    )


def write_spectra(
    files: list[Path],
    anchored: dict[str, np.ndarray],
    dye: tuple[np.ndarray, np.ndarray],
    path: str | Path,
) -> None:
    """spectra.csv, atomically, one spooled chunk at a time, with the anchored denoised columns
    (:func:`srsmlm.denoised.anchor_columns`) set and the dye class and its probability appended
    (the same bytes as writing the whole table at once)."""
    cls, prob = dye
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        start = 0
        for k, file in enumerate(files):
            out = pd.read_pickle(file)
            sl = slice(start, start + len(out))
            for name, values in anchored.items():
                out[name] = values[sl]
            out["dye"] = cls[sl]
            out["dye_probability"] = prob[sl]
            out.to_csv(fh, header=k == 0, index=False)
            start = sl.stop


def stage_settings(
    section: dict[str, Any], camera: dict[str, Any], geometry: Geometry, threads: int
) -> StageSettings:
    """The stage's settings from the ``spectra:`` and ``camera:`` config sections."""
    cal = calibration_from_config(section, geometry)
    max_residual = section.get("max_denoised_residual")
    return StageSettings(
        geometry=geometry,
        cal=cal,
        camera=Camera.from_config(camera),
        cfg=ReadoutConfig.from_config(section, cal, threads=int(threads)),
        joint=JointConfig.from_config(section),
        anchor=AnchorConfig.from_config(section),
        n_rows=int(section["profile_rows"]),
        chunk_size=int(section["chunk_size"]),
        max_residual=math.inf if max_residual is None else float(max_residual),
    )


def spectra_stage(
    denoised_table: str | Path,
    raw_tif: str | Path,
    denoised_tif: str | Path,
    clusters_csv: str | Path,
    stack_path: str | Path,
    geometry: Geometry,
    section: dict[str, Any],
    camera: dict[str, Any],
    seed: int,
    spectra_csv: str | Path,
    precision_csv: str | Path,
    molecules_csv: str | Path,
    threads: int = 1,
    joint_fits_npz: str | Path | None = None,
) -> dict[str, Any]:
    """Spectra of every denoised localization: centroid and least-squares fit of the raw and
    denoised patches, the maximum-likelihood readout on raw counts with its CRLB and flag, a dye
    class, spectral precision, and one row per molecule (run). Streams ``spectra.chunk_size``
    localizations at a time: each chunk's columns are spooled beside the output, and spectra.csv
    is written from the spool once the dye classes (fitted on all values) are known; memory
    holds only the few columns of the global steps. ``joint_fits_npz``: a few joint fits drawn
    for the report (data, model), where given."""
    fix_mmap_threshold()
    table = load_patch_table(denoised_table, clusters_csv, (raw_tif, denoised_tif), geometry)
    if table.empty:
        raise InputError(
            denoised_table,
            "no localization to read out: every filtered localization's box leaves the frame "
            "(listed in skipped.csv beside it)",
            "check geometry.spectral_offset / spectral_width against the frame width and narrow "
            "filter.x_range to the spots' side of the camera",
        )
    st = stage_settings(section, camera, geometry, threads)
    table = with_groups(table, st.reader)
    n, n_dyes = len(table), section.get("n_dyes")
    spool = spool_dir(spectra_csv)
    try:
        paths = {"raw": raw_tif, "denoised": denoised_tif}
        files, kept, examples = readout_pass(table, paths, stack_path, spool, st, seed)
        box_px = table["denoised_centre_px"].to_numpy(float)
        del table
        anchor, anchored = anchor_denoised(kept, box_px, st)
        denoised = anchored["fit_denoised_centre_nm"]
        dye = classify_localizations(kept.mle, kept.trusted, denoised, n_dyes, seed)
        runs = kept.runs_table()
        runs["fit_denoised_centre_nm"] = denoised[kept.in_run]
        mols = molecules(
            runs, stack_path, geometry, st.cal, st.camera, st.cfg, st.chunk_size, n_dyes, seed
        )
        precision = precision_by_signal(
            trusted_mle(runs), PRECISION_COLUMNS, int(section["signal_bins"])
        )
        write_spectra(files, anchored, dye, spectra_csv)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    write_csv(precision, precision_csv)
    write_csv(mols, molecules_csv)
    if joint_fits_npz is not None:
        write_examples(examples, joint_fits_npz)
    return stage_summary(n, len(mols), st.cal, kept, precision, anchor)


def anchor_denoised(
    kept: _Kept, box_px: np.ndarray, st: StageSettings
) -> tuple[DenoisedAnchor | None, dict[str, np.ndarray]]:
    """The denoised fits' shift curve and error model on this acquisition's trusted
    maximum-likelihood values (:func:`srsmlm.denoised.fit_anchor`) and the columns it gives."""
    readout = {
        "denoised_nm": kept.denoised,
        "box_px": box_px,
        "spread_nm": kept.spread,
        "mle_nm": kept.mle,
        "crlb_nm": kept.crlb,
        "stratum": kept.stratum,
    }
    anchor = fit_anchor(readout, st.cal.nm_per_px, st.geometry.spectral_width, st.anchor)
    if anchor is not None:
        log.info(
            "denoised fits anchored on the trusted maximum-likelihood values: %s", anchor.summary()
        )
    return anchor, anchor_columns(anchor, readout)


def stage_summary(
    n: int,
    n_molecules: int,
    cal: Calibration,
    kept: _Kept,
    precision: pd.DataFrame,
    anchor: DenoisedAnchor | None = None,
) -> dict[str, Any]:
    """The stage's summary (logged): counts, calibration, MLE flags, median CRLB."""
    summary = {
        "localizations": n,
        "molecules": n_molecules,
        "calibration": cal.__dict__,
        "mle_flags": dict(sorted(kept.flags.items(), key=lambda kv: -kv[1])),
        "median_sc_mle_crlb_nm": float(np.nanmedian(kept.crlb)) if n else None,
        "denoised_fits_rejected": kept.denoised_rejected,
        "denoised_anchor": anchor.summary() if anchor is not None else None,
    }
    log.info(
        "spectra of %d localizations (%d molecules); calibration %.4f nm/px, %.2f nm at the "
        "offset; MLE flags %s; median CRLB %.2f nm; %d denoised fits rejected (residual above "
        "spectra.max_denoised_residual = %s: not one spectrum); precision:\n%s",
        n,
        n_molecules,
        cal.nm_per_px,
        cal.wavelength_at_offset_nm,
        summary["mle_flags"],
        summary["median_sc_mle_crlb_nm"] or float("nan"),
        kept.denoised_rejected,
        kept.max_residual,
        precision.to_string(),
    )
    return summary


def _page_count(path: str | Path, geometry: Geometry) -> int:
    """Number of patches in a patch TIFF (pages of one patch, or one contiguous series)."""
    with tifffile.TiffFile(path) as tif:
        shape = tif.series[0].shape if tif.series else (0,)
    n = int(np.prod(shape)) // int(np.prod(geometry.shape)) if len(shape) else 0
    return n
