"""Snakemake adapter: network vs raw on the test set (srsmlm.inference)."""

from srsmlm.geometry import Geometry
from srsmlm.inference import evaluate_test
from srsmlm.logs import run_step

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
