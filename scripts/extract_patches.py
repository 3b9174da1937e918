"""Snakemake adapter: patches and leave-one-out SF targets for one acquisition (srsmlm.patches)."""

from srsmlm.geometry import Geometry
from srsmlm.logs import run_step
from srsmlm.patches import PatchParams, prepare_patches

run_step(
    snakemake.log[0],
    prepare_patches,
    clusters_path=snakemake.input.clusters,
    localizations_path=snakemake.input.localizations,
    stack_path=snakemake.input.stack,
    geometry=Geometry.from_config(snakemake.params.geometry),
    params=PatchParams.from_config(snakemake.params.patches),
    seed=snakemake.params.seed,
    acquisition=snakemake.wildcards.acquisition,
    min_run_length=snakemake.params.min_run_length,
    raw_tif=snakemake.output.raw,
    clean_tif=snakemake.output.clean,
    table_csv=snakemake.output.table,
    threads=snakemake.threads,
)
