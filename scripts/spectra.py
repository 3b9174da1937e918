"""Snakemake adapter: spectral readout per localization (srsmlm.spectra)."""

from srsmlm.geometry import Geometry
from srsmlm.logs import run_step
from srsmlm.spectra import spectra_stage

run_step(
    snakemake.log[0],
    spectra_stage,
    denoised_table=snakemake.input.table,
    raw_tif=snakemake.input.raw,
    denoised_tif=snakemake.input.denoised,
    clusters_csv=snakemake.input.clusters,
    stack_path=snakemake.input.stack,
    geometry=Geometry.from_config(snakemake.params.geometry),
    section=snakemake.params.spectra,
    camera=snakemake.params.camera,
    seed=snakemake.params.seed,
    spectra_csv=snakemake.output.spectra,
    precision_csv=snakemake.output.precision,
    molecules_csv=snakemake.output.molecules,
    joint_fits_npz=snakemake.output.joint_fits,
    threads=snakemake.threads,
)
