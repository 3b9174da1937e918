"""Tiny trained U-Nets saved under each Keras backend, with their predictions of a fixed batch,
for the cross-backend load-and-predict test (tests/test_backend.py).

    KERAS_BACKEND=jax python -m tests.backend_models   # writes tests/data/backends/jax.*
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from srsmlm.geometry import Geometry

FOLDER = Path(__file__).parent / "data" / "backends"
GEOMETRY = Geometry(16, 16, 48, 230)
ARCHITECTURE = {
    "depth": 2,
    "base_filters": 4,
    "kernel_size": 3,
    "output_activation": "relu",
    "input_normalisation": "parts",
    "batch_norm_momentum": 0.9,
}


def fixed_batch(n: int = 8, seed: int = 0) -> np.ndarray:
    """(n, 16, 64, 1) float32 patches: spots on noise, as raw counts / 2**16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :64]
    centres = rng.uniform([4, 4], [12, 60], (n, 2))
    spots = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 4)
    return ((100 + 50 * spots + rng.normal(0, 3, spots.shape)) / 65536)[..., None].astype(
        np.float32
    )


def make(folder: Path = FOLDER) -> Path:
    """Train the tiny U-Net for a few steps under the running backend (its batch-norm
    statistics move too), save ``<backend>.keras``, its ``model.json`` and its predictions of
    :func:`fixed_batch` as ``<backend>.npy``; returns the model's path."""
    import keras

    from srsmlm.model import ModelConfig, build_unet

    backend = keras.backend.backend()
    keras.utils.set_random_seed(5)
    model = build_unet(GEOMETRY, ModelConfig(**ARCHITECTURE))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = fixed_batch(64, seed=1)
    model.fit(x, np.clip(x * 300 - 0.45, 0, None), batch_size=16, epochs=2, verbose=0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / f"{backend}.keras")
    meta = {"geometry": GEOMETRY.to_dict(), "architecture": ARCHITECTURE, "backend": backend}
    (folder / f"{backend}.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.save(folder / f"{backend}.npy", np.asarray(model.predict_on_batch(fixed_batch())))
    return folder / f"{backend}.keras"


if __name__ == "__main__":
    print(make())
