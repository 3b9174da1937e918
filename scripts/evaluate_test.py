"""Snakemake adapter: network vs raw on the test set (srsmlm.inference)."""

from srsmlm.backend import use_backend
from srsmlm.logs import run_step

# Keras reads its backend when first imported: choose it before importing what imports Keras
run_step(snakemake.log[0], use_backend, snakemake.params.backend)

from srsmlm.geometry import Geometry  # noqa: E402
from srsmlm.inference import evaluate_test  # noqa: E402

run_step(
    snakemake.log[0],
    evaluate_test,
    test_npz=snakemake.input.test,
    model_path=snakemake.input.model,
    meta_path=snakemake.input.meta,
    geometry=Geometry.from_config(snakemake.params.geometry),
    batch_size=snakemake.params.batch_size,
    metrics_json=snakemake.output.metrics,
    predictions_npz=snakemake.output.predictions,
    nm_per_px=snakemake.params.nm_per_px,
)
