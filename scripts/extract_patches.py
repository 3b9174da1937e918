"""Snakemake adapter: patches and leave-one-out targets (SF fusion or the fitted model) for one acquisition (srsmlm.patches)."""

from srsmlm.geometry import Geometry
from srsmlm.logs import run_step
from srsmlm.patches import prepare_patches
from srsmlm.plan import PatchParams

geometry = Geometry.from_config(snakemake.params.geometry)
target_model = None
if snakemake.params.target_model is not None:
    from srsmlm.targets import TargetModel

    target_model = TargetModel.from_config(
        snakemake.params.target_model["spectra"],
        snakemake.params.target_model["camera"],
        geometry,
        threads=snakemake.threads,
    )

run_step(
    snakemake.log[0],
    prepare_patches,
    clusters_path=snakemake.input.clusters,
    localizations_path=snakemake.input.localizations,
    stack_path=snakemake.input.stack,
    geometry=geometry,
    params=PatchParams.from_config(snakemake.params.patches),
    seed=snakemake.params.seed,
    acquisition=snakemake.wildcards.acquisition,
    min_run_length=snakemake.params.min_run_length,
    raw_tif=snakemake.output.raw,
    clean_tif=snakemake.output.clean,
    table_csv=snakemake.output.table,
    threads=snakemake.threads,
    target_model=target_model,
)
