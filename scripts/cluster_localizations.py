"""Snakemake adapter: DBSCAN + runs of consecutive frames (srsmlm.clustering)."""

from srsmlm.clustering import cluster_stage
from srsmlm.logs import run_step

c = snakemake.params.clustering
run_step(
    snakemake.log[0],
    cluster_stage,
    loc_path=snakemake.input[0],
    eps=c["eps"],
    min_samples=c["min_samples"],
    min_run_length=c["min_run_length"],
    out_path=snakemake.output[0],
)
