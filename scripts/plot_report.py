"""Snakemake adapter: report figures and summary (srsmlm.plots)."""

from srsmlm.logs import run_step
from srsmlm.plots import report_stage

out = snakemake.output
run_step(
    snakemake.log[0],
    report_stage,
    predictions_npz=snakemake.input.predictions,
    index_csv=snakemake.input.index,
    history_csv=snakemake.input.history,
    test_metrics_json=snakemake.input.test_metrics,
    spectra_csvs=list(snakemake.input.spectra),
    precision_csvs=list(snakemake.input.precision),
    truth_csvs=list(snakemake.input.truth),
    metrics_json=snakemake.input.metrics[0] if snakemake.input.metrics else None,
    out={
        k: out[k] for k in ("montage", "loss", "histograms", "precision", "rendering", "evaluation")
    },
    summary_json=out.summary,
    render_zoom=snakemake.params.render["render_zoom"],
    render_sigma_px=snakemake.params.render["render_sigma_px"],
)
