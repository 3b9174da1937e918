"""Patch preparation: boxes per run, leave-one-out targets, frame selection, export.

Patches are ``geometry.height`` x ``geometry.width`` float32 images in the guide's units (raw
counts / 2**16): the localization box centred on the run's candidate pixel, then the spectral
box starting ``spectral_offset`` (+ jitter) columns to the right. The stack is read through a
memory map (or page by page) in chunks of runs, and kept patches are spooled to disk, so memory
stays bounded whatever the acquisition size.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .boxes import (
    Boxes,
    boxes_at_positions,
    check_geometry_fits,
    check_inside_stack,
    extract_patches,
)
from .errors import InputError
from .fusion import (
    clean_target,
    leave_one_out_fusion,
    limit_range,
    select_frames,
    spatial_frequency,
)
from .geometry import Geometry
from .io import PatchSpool, prefetch, spool_dir, write_csv
from .plan import (
    TARGETS,
    PatchParams,
    RunPlan,
    background_boxes,
    check_spectral_position,
    plan_runs,
    run_starts,
)
from .seeds import acquisition_seed
from .stack import Stack
from .targets import (
    READOUT_COLUMNS,
    TargetModel,
    leave_one_out_fits,
    render_targets,
    run_readout,
)

log = logging.getLogger(__name__)


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
    cstarts = run_starts(runs["cluster"].to_numpy()[idx])
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
    return table.drop(columns=list(READOUT_COLUMNS), errors="ignore")


def _target_columns(fits: pd.DataFrame, g: Geometry, tm: TargetModel) -> dict[str, np.ndarray]:
    """patches.csv columns of the model targets: the target's spectral centre and width (nm),
    the frames its fit used (of them, those read with a neighbour), and the frame's own
    readout flag."""
    return {
        "target_nm": tm.cal.wavelength(fits["distance_px"].to_numpy(), g.spectral_offset),
        "target_width_nm": fits["width_px"].to_numpy() * tm.readout.nm_per_px,
        "target_frames": fits["n_others"].to_numpy(),
        "target_grouped_frames": fits["n_grouped"].to_numpy(),
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
    target, sf_raw, sf_target = run_targets(raw, run_starts(group), g, p, threads)
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
        columns = ["frame", "x", "y", "signal", "pixel_x", "pixel_y"]
        locs = pd.read_csv(localizations_path, usecols=columns)
    if p.target == "model":
        if target_model is None:
            raise ValueError("patches.target 'model' needs a TargetModel")
    with Stack(stack_path) as stack:
        check_geometry_fits(g, stack.frame_shape, stack_path)
        check_inside_stack(runs, stack, clusters_path)
        if p.target == "model":
            readout = run_readout(
                stack, locs, runs["localization_index"].to_numpy(), g, target_model
            )
            for column in READOUT_COLUMNS:
                runs[column] = readout[column].to_numpy()
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
            _check_some_patch(spool.n, counts, clusters_path)
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


def _check_some_patch(n: int, counts: dict[str, int], clusters_path: str | Path) -> None:
    """Fail, naming every threshold's share, when no patch is left."""
    if n:
        return
    raise InputError(
        clusters_path,
        f"no patch left after the thresholds ({counts['runs']} runs, "
        f"{counts['runs_outside_frame']} outside the frame, "
        f"{counts['dropped_no_target']} without a target, {counts['dropped_ratio']} "
        f"frames dropped by the SF ratio, {counts['dropped_dim']} as dim)",
        "lower patches.min_loc_max in config/config.yaml (it depends on the camera)",
    )


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
