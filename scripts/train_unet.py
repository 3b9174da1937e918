"""Snakemake adapter: train the U-Net (srsmlm.training)."""

from srsmlm.geometry import Geometry
from srsmlm.logs import run_step
from srsmlm.model import ModelConfig
from srsmlm.training import TrainingConfig, train

run_step(
    snakemake.log[0],
    train,
    train_npz=snakemake.input.train,
    index_csv=snakemake.input.index,
    geometry=Geometry.from_config(snakemake.params.geometry),
    model_config=ModelConfig.from_config(snakemake.params.model),
    training=TrainingConfig.from_config(snakemake.params.training),
    normalisation=snakemake.params.normalisation,
    seed=snakemake.params.seed,
    model_path=snakemake.output.model,
    meta_path=snakemake.output.meta,
    history_path=snakemake.output.history,
    checkpoint_dir=snakemake.params.checkpoint_dir,
    threads=snakemake.threads,
)
