"""Snakemake adapter: denoise every localization of one acquisition (srsmlm.inference)."""

from srsmlm.backend import use_backend
from srsmlm.logs import run_step

# Keras reads its backend when first imported: choose it before importing what imports Keras
run_step(snakemake.log[0], use_backend, snakemake.params.backend)

from srsmlm.geometry import Geometry  # noqa: E402
from srsmlm.inference import denoise_acquisition  # noqa: E402

run_step(
    snakemake.log[0],
    denoise_acquisition,
    localizations_csv=snakemake.input.localizations,
    stack_path=snakemake.input.stack,
    model_path=snakemake.input.model,
    meta_path=snakemake.input.meta,
    geometry=Geometry.from_config(snakemake.params.geometry),
    batch_size=snakemake.params.batch_size,
    chunk_size=snakemake.params.chunk_size,
    raw_tif=snakemake.output.raw,
    denoised_tif=snakemake.output.denoised,
    table_csv=snakemake.output.table,
    skipped_csv=snakemake.output.skipped,
    shifts=snakemake.params.shifts,
    profile_rows=snakemake.params.profile_rows,
)
