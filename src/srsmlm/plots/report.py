"""The report stage: read the tables the figures need (only their columns), build every figure,
write them and ``summary.json`` (the key numbers)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..evaluation import match_truth
from ..io import write_json
from .common import PathLike, note_figure, save_figure, values
from .evaluation import evaluation_figure
from .examples import flagged_examples
from .joint import joint_fit_examples
from .mle import flagged_fractions, mle_efficiency, mle_error_vs_crlb, mle_reasons
from .spectra import molecules_histogram, precision_figure, rendering, sc_histograms
from .training import loss_curves, montage

log = logging.getLogger(__name__)

#: the columns of spectra.csv / truth.csv / molecules.csv the report reads (``usecols``)
SPECTRA_COLUMNS = (
    "frame",
    "x",
    "y",
    "signal",
    "cluster",
    "sc_raw_nm",
    "sc_denoised_nm",
    "dye",
    "sc_mle_nm",
    "sc_mle_crlb_nm",
    "sc_mle_flag",
)
TRUTH_COLUMNS = ("frame", "loc_x", "loc_y", "detected", "sc_true_nm", "dye")
MOLECULE_COLUMNS = ("cluster", "n_frames", "n_used", "sc_nm", "sc_err_nm", "dye")
#: the report's figures: keys of ``report_stage``'s ``out`` and of rule plot_report's outputs
REPORT_FIGURES = (
    "montage",
    "loss",
    "histograms",
    "precision",
    "rendering",
    "evaluation",
    "mle_error",
    "mle_efficiency",
    "flagged",
    "joint_fits",
    "molecules",
)


def read_table(path: PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """The columns of a CSV among ``columns`` (others are not parsed); a 0-byte file gives an
    empty table."""
    wanted = set(columns)
    try:
        return pd.read_csv(path, usecols=lambda c: c in wanted)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def load_spectra(
    spectra_csvs: Sequence[PathLike], truth: Mapping[str, PathLike] | None = None
) -> pd.DataFrame:
    """The report's columns of every spectra table, with ``acquisition`` (its folder's name)
    and ``page`` (the row's page in that acquisition's ``denoised/raw.tif``); acquisitions in
    ``truth`` (name -> truth.csv) get ``sc_true_nm`` and ``dye_true`` (``match_truth``)."""
    frames = []
    for sp in spectra_csvs:
        name = Path(sp).parent.name
        df = read_table(sp, SPECTRA_COLUMNS)
        df["page"] = np.arange(len(df))
        if truth and name in truth:
            df = match_truth(df, read_table(truth[name], TRUTH_COLUMNS))
        frames.append(df.assign(acquisition=name))
    if not frames:
        return pd.DataFrame(columns=[*SPECTRA_COLUMNS, "page", "acquisition"])
    spectra = pd.concat(frames, ignore_index=True)
    spectra["acquisition"] = spectra["acquisition"].astype("category")
    return spectra


def run_signal(spectra: pd.DataFrame) -> pd.Series:
    """Mean ``signal`` of each run's localizations, indexed by (acquisition, cluster)."""
    in_run = values(spectra, "cluster") >= 0
    if not in_run.any():
        return pd.Series(dtype=np.float64)
    runs = spectra.loc[in_run, ["cluster", "signal"]]
    acq = spectra.loc[in_run, "acquisition"].astype(str)
    return runs.groupby([acq, runs["cluster"]])["signal"].mean()


def load_molecules(
    molecule_csvs: Sequence[PathLike], spectra: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every molecules.csv (one row per run), with ``acquisition`` and, given the spectra
    (``load_spectra``), ``signal``: the mean signal of the run's localizations."""
    frames = [
        read_table(p, MOLECULE_COLUMNS).assign(acquisition=Path(p).parent.name)
        for p in molecule_csvs
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    molecules = pd.concat(frames, ignore_index=True)
    if spectra is not None and "cluster" in molecules:
        key = pd.MultiIndex.from_arrays([molecules["acquisition"], molecules["cluster"]])
        molecules["signal"] = run_signal(spectra).reindex(key).to_numpy()
    return molecules


def load_precision(precision_csvs: Sequence[PathLike]) -> pd.DataFrame:
    """Every spectral_precision.csv (a 0-byte one left out), with ``acquisition``."""
    frames = []
    for p in precision_csvs:
        with contextlib.suppress(pd.errors.EmptyDataError):
            frames.append(pd.read_csv(p).assign(acquisition=Path(p).parent.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _by_acquisition(
    spectra_csvs: Sequence[PathLike], files: Mapping[str, PathLike] | Sequence[PathLike]
) -> dict[str, PathLike]:
    """Acquisition name -> file, from a mapping or a list in the order of ``spectra_csvs``."""
    if isinstance(files, Mapping):
        return {str(k): v for k, v in files.items()}
    if not files:
        return {}
    names = [Path(p).parent.name for p in spectra_csvs]
    return dict(zip(names, files, strict=True))


@dataclass
class ReportData:
    """What the figures and the summary read, loaded once."""

    spectra: pd.DataFrame
    #: per localization: trusted, its MLE flag or no_estimate (None: no MLE readout)
    reasons: pd.Categorical | None
    precision: pd.DataFrame
    molecules: pd.DataFrame
    #: metrics.json (None without ground truth)
    metrics: dict[str, Any] | None
    #: the column the centre histograms colour by: the true dye when every acquisition has one
    colour: str
    raw_tifs: dict[str, PathLike]
    #: acquisition -> joint_fits.npz (examples of joint fits)
    joint_fits: dict[str, PathLike]


def load_report_data(
    spectra_csvs: Sequence[PathLike],
    precision_csvs: Sequence[PathLike],
    truth_csvs: Mapping[str, PathLike] | Sequence[PathLike],
    metrics_json: PathLike | None,
    raw_tifs: Mapping[str, PathLike] | Sequence[PathLike],
    molecule_csvs: Sequence[PathLike],
    joint_fits: Mapping[str, PathLike] | Sequence[PathLike] = (),
) -> ReportData:
    """Read every table of the report (see :func:`report_stage` for the arguments)."""
    truth = _by_acquisition(spectra_csvs, truth_csvs)
    spectra = load_spectra(spectra_csvs, truth)
    names = {Path(p).parent.name for p in spectra_csvs}
    return ReportData(
        spectra=spectra,
        reasons=mle_reasons(spectra),
        precision=load_precision(precision_csvs),
        molecules=load_molecules(molecule_csvs, spectra),
        metrics=json.loads(Path(metrics_json).read_text()) if metrics_json else None,
        colour="dye_true" if names and names <= set(truth) else "dye",
        raw_tifs=_by_acquisition(spectra_csvs, raw_tifs),
        joint_fits=_by_acquisition(spectra_csvs, joint_fits),
    )


def _median_or_none(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def report_summary(test_metrics_json: PathLike, data: ReportData) -> dict[str, Any]:
    """Key numbers: test set, localizations, precision by signal, the evaluation (if any),
    ``mle_flagged_fraction`` (all applied acquisitions), ``mle`` (metrics.json's section, with
    truth only) and the molecule counts."""
    summary: dict[str, Any] = {
        "test_set": json.loads(Path(test_metrics_json).read_text()),
        "localizations_with_spectra": int(len(data.spectra)),
        "precision_by_signal": data.precision.to_dict(orient="records"),
    }
    if data.metrics:
        summary["evaluation"] = dict(data.metrics)
        if "mle" in data.metrics:
            summary["mle"] = data.metrics["mle"]
    if data.reasons is not None:
        summary["mle_flagged_fraction"] = flagged_fractions(data.reasons)
        crlb = values(data.spectra, "sc_mle_crlb_nm")[np.asarray(data.reasons == "trusted")]
        summary["mle_median_crlb_nm"] = _median_or_none(crlb)
    summary["molecules"] = {
        "n": int(len(data.molecules)),
        "with_spectral_centre": int(np.isfinite(values(data.molecules, "sc_nm")).sum()),
        "median_sc_err_nm": _median_or_none(values(data.molecules, "sc_err_nm")),
    }
    return summary


def figure_steps(
    data: ReportData, render_zoom: float, render_sigma_px: float, seed: int, signal_bins: int
) -> dict[str, dict[str, Callable[[], Figure]]]:
    """The figures built from ``data``, by step: step -> figure key -> builder."""
    d = data
    no_truth = "No ground truth for these acquisitions: no evaluation"
    return {
        "spectra": {
            "histograms": lambda: sc_histograms(d.spectra, d.colour),
            "precision": lambda: precision_figure(d.precision, d.molecules, signal_bins),
            "rendering": lambda: rendering(d.spectra, render_zoom, render_sigma_px),
        },
        "mle": {
            "mle_error": lambda: mle_error_vs_crlb(d.spectra, d.reasons),
            "mle_efficiency": lambda: mle_efficiency(d.spectra, d.metrics, signal_bins, d.reasons),
            "flagged": lambda: flagged_examples(d.spectra, d.raw_tifs, seed, reasons=d.reasons),
            "joint_fits": lambda: joint_fit_examples(d.joint_fits),
            "molecules": lambda: molecules_histogram(d.molecules),
        },
        "evaluation": {
            "evaluation": lambda: (
                evaluation_figure(d.metrics) if d.metrics else note_figure(no_truth)
            )
        },
    }


@contextlib.contextmanager
def _timed(step: str, timings: dict[str, float]) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - t0
    log.info("report step %-10s %.2f s", step, timings[step])


def report_stage(
    predictions_npz: PathLike,
    index_csv: PathLike,
    history_csv: PathLike,
    test_metrics_json: PathLike,
    spectra_csvs: Sequence[PathLike],
    precision_csvs: Sequence[PathLike],
    truth_csvs: Mapping[str, PathLike] | Sequence[PathLike],
    metrics_json: PathLike | None,
    out: Mapping[str, PathLike],
    summary_json: PathLike,
    render_zoom: int,
    render_sigma_px: float,
    raw_tifs: Mapping[str, PathLike] | Sequence[PathLike] = (),
    molecule_csvs: Sequence[PathLike] = (),
    seed: int = 0,
    signal_bins: int = 4,
    joint_fit_npzs: Mapping[str, PathLike] | Sequence[PathLike] = (),
) -> dict[str, Any]:
    """Every figure of :data:`REPORT_FIGURES` (PNG at ``out[key]``) and ``summary.json``.
    ``truth_csvs`` (acquisition -> truth.csv, or a list in the order of ``spectra_csvs``) may
    be empty (real data); ``raw_tifs`` likewise (each acquisition's ``denoised/raw.tif``, for
    the flagged examples) and ``joint_fit_npzs`` (each acquisition's ``joint_fits.npz``, for
    the joint fits drawn). Only the needed columns of each table are read; every step is
    timed in the log. Returns the summary."""
    timings: dict[str, float] = {}
    with _timed("training", timings):
        save_figure(montage(predictions_npz, index_csv), out["montage"])
        save_figure(loss_curves(history_csv), out["loss"])
    with _timed("load", timings):
        data = load_report_data(
            spectra_csvs,
            precision_csvs,
            truth_csvs,
            metrics_json,
            raw_tifs,
            molecule_csvs,
            joint_fit_npzs,
        )
    steps = figure_steps(data, render_zoom, render_sigma_px, seed, signal_bins)
    for step, builders in steps.items():
        with _timed(step, timings):
            for key, build in builders.items():
                save_figure(build(), out[key])
    summary = report_summary(test_metrics_json, data)
    write_json(summary, summary_json)
    log.info("report: %d localizations in %.1f s", len(data.spectra), sum(timings.values()))
    return summary
