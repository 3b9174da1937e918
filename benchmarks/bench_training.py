"""Training throughput: the pipeline's training code (tf.data, callbacks) vs a plain
``model.fit`` on in-memory arrays of the same net, measured in the same run (patches/s).

    python benchmarks/bench_training.py [--patches 2400] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from srsmlm.dataset import save_npz  # noqa: E402
from srsmlm.geometry import Geometry  # noqa: E402
from srsmlm.model import ModelConfig, build_unet  # noqa: E402
from srsmlm.training import TrainingConfig, select_device, train  # noqa: E402


def main() -> None:
    import keras

    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    g = Geometry(16, 16, 48, 230)
    rng = np.random.default_rng(0)
    x = rng.random((args.patches, 16, 64, 1), dtype=np.float32) * 0.01
    y = rng.random((args.patches, 16, 64, 1), dtype=np.float32)
    device = select_device()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_npz(d / "train.npz", X=x, Y=y)
        pd.DataFrame(
            {
                "acquisition": "a",
                "cluster": np.arange(args.patches) // 10,
                "frame": 0,
                "kind": "signal",
                "split": "train",
            }
        ).to_csv(d / "index.csv", index=False)
        cfg = TrainingConfig(
            epochs=args.epochs, batch_size=80, validation_fraction=0.1, patience=10
        )
        meta = train(
            d / "train.npz",
            d / "index.csv",
            g,
            ModelConfig(),
            cfg,
            {},
            1,
            d / "m.keras",
            d / "m.json",
            d / "h.csv",
            d / "ckpt",
        )
        hist = pd.read_csv(d / "h.csv")
        ours = (
            hist["patches_per_s"].iloc[1:].mean()
            if len(hist) > 1
            else hist["patches_per_s"].iloc[0]
        )
    n_fit = meta["data"]["train_patches"]
    model = build_unet(g, ModelConfig())
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=True)
    model.fit(x[:n_fit], y[:n_fit], batch_size=80, epochs=1, verbose=0)  # compile / warm up
    t = time.perf_counter()
    model.fit(x[:n_fit], y[:n_fit], batch_size=80, epochs=args.epochs - 1 or 1, verbose=0)
    plain = n_fit * (args.epochs - 1 or 1) / (time.perf_counter() - t)
    print(f"device: {device}; guide U-Net ({meta['parameters']:,} parameters), batch 80")
    print(f"pipeline training (tf.data + callbacks): {ours:.1f} patches/s (epochs after the first)")
    print(f"plain model.fit on arrays:               {plain:.1f} patches/s")
    print(f"ratio pipeline / plain: {ours / plain:.2f}")


if __name__ == "__main__":
    main()
