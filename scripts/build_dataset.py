"""Snakemake adapter: pool training patches and split by run (srsmlm.dataset)."""

from srsmlm.dataset import build_dataset
from srsmlm.logs import run_step

run_step(
    snakemake.log[0],
    build_dataset,
    acquisitions=snakemake.params.acquisitions,
    raw_tifs=snakemake.input.raw,
    clean_tifs=snakemake.input.clean,
    tables=snakemake.input.tables,
    test_fraction=snakemake.params.split["test_fraction"],
    seed=snakemake.params.seed,
    train_npz=snakemake.output.train,
    test_npz=snakemake.output.test,
    index_csv=snakemake.output.index,
)
