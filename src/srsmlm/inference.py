"""Inference: the test-set evaluation and denoising every localization of an acquisition."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .boxes import (
    Boxes,
    check_geometry_fits,
    check_inside_stack,
    extract_shifted_patches,
    place_boxes,
)
from .dataset import save_npz
from .errors import InputError
from .evaluation import spectral_shift
from .geometry import Geometry
from .io import PatchSpool, chunk_slices, prefetch, spool_dir, write_csv, write_json, write_tif
from .model import load_model
from .profiles import shift_fits
from .stack import Stack

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger(__name__)


def predict_batches(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Predict (N, H, W) or (N, H, W, 1) patches in batches; returns float32 (N, H, W)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    out = np.empty(x.shape[:3], dtype=np.float32)
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        out[start : start + len(batch)] = np.asarray(model.predict_on_batch(batch))[..., 0]
    return out


def psnr(mse: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) for a given MSE and signal peak."""
    return 10 * np.log10(peak**2 / np.maximum(mse, 1e-20))


def scale_to_range(raw: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Min-max scale each raw patch onto its target's [min, max] (the baseline for MSE/PSNR)."""
    ax = tuple(range(1, raw.ndim))
    rmin, rmax = raw.min(axis=ax, keepdims=True), raw.max(axis=ax, keepdims=True)
    tmin, tmax = target.min(axis=ax, keepdims=True), target.max(axis=ax, keepdims=True)
    span = np.where(rmax > rmin, rmax - rmin, 1.0)
    return (raw - rmin) / span * (tmax - tmin) + tmin


def evaluate_test(
    test_npz: str | Path,
    model_path: str | Path,
    meta_path: str | Path,
    geometry: Geometry,
    batch_size: int,
    metrics_json: str | Path,
    predictions_npz: str | Path,
    nm_per_px: float | None = None,
) -> dict[str, Any]:
    """MSE and PSNR of the network on the test set, next to the raw input scaled to the
    target's range, and (given ``nm_per_px``) the network's spectral shift against the targets
    (:func:`srsmlm.evaluation.spectral_shift`); writes the metrics and the predictions (``X``,
    ``Y``, ``P``)."""
    model = load_model(model_path, meta_path, geometry)
    with np.load(test_npz) as z:
        x, y = z["X"][..., 0], z["Y"][..., 0]
    pred = predict_batches(model, x, batch_size)
    per_patch = lambda a: ((a - y) ** 2).mean(axis=(1, 2))  # noqa: E731
    mse_net = per_patch(pred)
    mse_raw = per_patch(scale_to_range(x, y))
    peak = float(y.max()) if len(y) else 1.0
    metrics = {
        "n_test": int(len(x)),
        "network": {"mse": float(mse_net.mean()), "psnr_db": float(psnr(mse_net, peak).mean())},
        "raw_scaled": {"mse": float(mse_raw.mean()), "psnr_db": float(psnr(mse_raw, peak).mean())},
        "psnr_peak": peak,
    }
    metrics["network_beats_raw"] = metrics["network"]["mse"] < metrics["raw_scaled"]["mse"]
    if nm_per_px is not None:
        metrics["spectral_shift_nm"] = shift = spectral_shift(pred, y, geometry, nm_per_px)
        log.info(
            "spectral shift of the network against its targets (%d test patches): mean %+.2f nm, "
            "median %+.2f nm; by target position %s",
            shift["n"],
            shift["mean_nm"],
            shift["median_nm"],
            [round(b["median_nm"], 2) for b in shift["by_position"]],
        )
    log.info(
        "test set (%d patches): network MSE %.3g / PSNR %.2f dB; raw scaled MSE %.3g / PSNR %.2f dB",
        len(x),
        metrics["network"]["mse"],
        metrics["network"]["psnr_db"],
        metrics["raw_scaled"]["mse"],
        metrics["raw_scaled"]["psnr_db"],
    )
    save_npz(predictions_npz, X=x, Y=y, P=pred)
    write_json(metrics, metrics_json)
    return metrics


def denoise_acquisition(
    localizations_csv: str | Path,
    stack_path: str | Path,
    model_path: str | Path,
    meta_path: str | Path,
    geometry: Geometry,
    batch_size: int,
    chunk_size: int,
    raw_tif: str | Path,
    denoised_tif: str | Path,
    table_csv: str | Path,
    skipped_csv: str | Path,
    shifts: Sequence[int] = (0,),
    profile_rows: int = 4,
) -> dict[str, int]:
    """Denoise a patch for every filtered localization (no jitter, every frame).

    Each patch is also predicted with its spectral box moved by each of ``shifts`` (px; cycle
    spinning: the U-Net's strided layers make its error depend on where the spectrum falls on
    their grid, and averaging over shifts removes that part); ``table_csv`` gets the
    :func:`srsmlm.profiles.shift_fits` of each localization (``denoised_*`` columns, px of the
    planned box), ``denoised_tif`` holds the unshifted predictions.

    Patches are cut and predicted ``chunk_size`` at a time and spooled to disk, so memory stays
    bounded for 10^6 localizations. ``table_csv`` has one row per written patch, in the order of
    the localization table; localizations whose box leaves the frame are listed in
    ``skipped_csv`` (and counted in the log), never silently dropped.
    """
    g = geometry
    if 0 not in shifts:
        raise InputError(
            "config/config.yaml",
            f"inference.shifts_px {list(shifts)} lacks 0 (the planned box)",
            "add 0 to inference.shifts_px",
        )
    model = load_model(model_path, meta_path, g)
    locs = pd.read_csv(localizations_csv)
    counts = {"localizations": len(locs)}
    with Stack(stack_path) as stack:
        check_geometry_fits(g, stack.frame_shape, stack_path)
        check_inside_stack(locs, stack, localizations_csv)
        boxes = place_boxes(
            locs["frame"].to_numpy(), locs["pixel_x"].to_numpy(), locs["pixel_y"].to_numpy(), g
        )
        inside = boxes.inside(g, stack.frame_shape)
        counts["skipped_outside_frame"] = int((~inside).sum())
        if counts["skipped_outside_frame"]:
            h, w = stack.frame_shape
            log.warning(
                f"{(~inside).sum()} of {len(locs)} localizations skipped: their box leaves the "
                f"{w}x{h} frame (listed in {skipped_csv})"
            )
        table, kept_boxes, skipped = split_inside(locs, boxes, inside)
        tmp = spool_dir(raw_tif)
        spool = PatchSpool(tmp, ("raw", "denoised"))
        try:
            fits = _denoise_chunks(
                model, stack, table, kept_boxes, g, np.asarray(shifts), profile_rows,
                batch_size, chunk_size, spool,
            )  # fmt: skip
            table = table.assign(**{f"denoised_{k}": v for k, v in fits.items()})
            _write_patches(spool, raw_tif, denoised_tif, g)
            write_csv(table, table_csv)
            write_csv(skipped, skipped_csv)
        finally:
            spool.close()
            shutil.rmtree(tmp, ignore_errors=True)
    counts["denoised"] = int(len(table))
    log.info("denoised %d of %d localizations", counts["denoised"], len(locs))
    return counts


def split_inside(
    locs: pd.DataFrame, boxes: Boxes, inside: np.ndarray
) -> tuple[pd.DataFrame, Boxes, pd.DataFrame]:
    """The localizations whose boxes lie inside the frame (with ``localization_index`` and their
    box corners) and their boxes, and the others with the reason they are skipped."""
    keep_idx = np.flatnonzero(inside)
    table = locs.iloc[keep_idx].copy()
    table.insert(0, "localization_index", keep_idx)
    kept_boxes = boxes.subset(keep_idx)
    table = table.assign(
        loc_row0=kept_boxes.loc_row0,
        loc_col0=kept_boxes.loc_col0,
        spec_row0=kept_boxes.spec_row0,
        spec_col0=kept_boxes.spec_col0,
    )
    skipped = locs.iloc[np.flatnonzero(~inside)].copy()
    skipped.insert(0, "localization_index", np.flatnonzero(~inside))
    skipped["reason"] = "box leaves the frame"
    return table, kept_boxes, skipped


def _denoise_chunks(
    model,
    stack: Stack,
    table: pd.DataFrame,
    boxes,
    g: Geometry,
    shifts: np.ndarray,
    profile_rows: int,
    batch_size: int,
    chunk_size: int,
    spool: PatchSpool,
) -> dict[str, np.ndarray]:
    """Cut, predict (every shift) and fit ``chunk_size`` patches at a time: the unshifted raw
    and denoised patches go to ``spool``, the shift fits of every patch are returned."""
    t0 = time.perf_counter()

    def read_chunk(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        return extract_shifted_patches(stack, boxes.subset(np.arange(sl.start, sl.stop)), g, shifts)

    zero = int(np.flatnonzero(shifts == 0)[0])
    parts: list[dict[str, np.ndarray]] = []
    # the next chunk is read from the stack while this one is predicted
    chunks = prefetch(chunk_slices(len(table), chunk_size), read_chunk)
    for k, (sl, (patches, ok)) in enumerate(chunks):
        pred = predict_batches(model, patches.reshape(-1, *g.shape), batch_size)
        pred = pred.reshape(patches.shape)
        spool.add(raw=patches[zero], denoised=pred[zero])
        rows = table.iloc[sl]
        parts.append(
            shift_fits(
                pred,
                ok,
                rows["y"].to_numpy(),
                rows["spec_row0"].to_numpy(),
                shifts,
                g,
                profile_rows,
            )
        )
        rate = spool.n / max(time.perf_counter() - t0, 1e-9)
        log.info(
            "chunk %d: %d / %d patches denoised, %d shifts each (%.0f localizations/s)",
            k + 1,
            spool.n,
            len(table),
            len(shifts),
            rate,
        )
    keys = ("centre_px", "centre_sd_px", "width_px", "amplitude", "residual", "shifts")
    return {key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0) for key in keys}


def _write_patches(
    spool: PatchSpool, raw_tif: str | Path, denoised_tif: str | Path, g: Geometry
) -> None:
    if spool.n:
        spool.write({"raw": raw_tif, "denoised": denoised_tif}, g.shape)
        return
    empty = np.zeros((0, *g.shape), np.float32)
    write_tif(empty, raw_tif)
    write_tif(empty, denoised_tif)
