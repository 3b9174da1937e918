"""Snakemake adapter: report figures and summary (srsmlm.plots)."""

from srsmlm.logs import run_step
from srsmlm.plots import REPORT_FIGURES, report_stage

inp, out, params = snakemake.input, snakemake.output, snakemake.params
run_step(
    snakemake.log[0],
    report_stage,
    predictions_npz=inp.predictions,
    index_csv=inp.index,
    history_csv=inp.history,
    test_metrics_json=inp.test_metrics,
    spectra_csvs=list(inp.spectra),
    precision_csvs=list(inp.precision),
    truth_csvs=dict(zip(params.evaluated, inp.truth, strict=True)),
    metrics_json=inp.metrics[0] if inp.metrics else None,
    out={k: out[k] for k in REPORT_FIGURES},
    summary_json=out.summary,
    render_zoom=params.render["render_zoom"],
    render_sigma_px=params.render["render_sigma_px"],
    raw_tifs=list(inp.raw),
    molecule_csvs=list(inp.molecules),
    joint_fit_npzs=list(inp.joint_fits),
    seed=params.seed,
    signal_bins=params.signal_bins,
)
