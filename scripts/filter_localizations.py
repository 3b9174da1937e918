"""Snakemake adapter: read and filter one localization table (srsmlm.localizations)."""

from srsmlm.localizations import filter_stage
from srsmlm.logs import run_step

f = snakemake.params.filter
run_step(
    snakemake.log[0],
    filter_stage,
    table_path=snakemake.input.table,
    fmt=snakemake.params.format,
    pixel_size_nm=snakemake.params.pixel_size_nm,
    min_signal=f["min_signal"],
    x_range=f["x_range"],
    y_range=f["y_range"],
    out_path=snakemake.output[0],
)
