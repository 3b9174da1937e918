"""Snakemake adapter: train the U-Net (srsmlm.training)."""

from srsmlm.backend import use_backend
from srsmlm.logs import run_step

# Keras reads its backend when first imported: choose it before importing what imports Keras
run_step(snakemake.log[0], use_backend, snakemake.params.backend)

from srsmlm.geometry import Geometry  # noqa: E402
from srsmlm.model import ModelConfig  # noqa: E402
from srsmlm.training import TrainingConfig, train  # noqa: E402

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
