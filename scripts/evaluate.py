"""Snakemake adapter: spectral estimates vs the simulator's truth (srsmlm.evaluation)."""

from srsmlm.evaluation import evaluate
from srsmlm.logs import run_step

run_step(
    snakemake.log[0],
    evaluate,
    spectra_paths=list(snakemake.input.spectra),
    truth_paths=list(snakemake.input.truth),
    names=snakemake.params.acquisitions,
    signal_bins=snakemake.params.signal_bins,
    tolerance_nm=snakemake.params.tolerance_nm,
    metrics_json=snakemake.output.metrics,
    table_csv=snakemake.output.table,
    molecules_paths=list(snakemake.input.molecules),
)
