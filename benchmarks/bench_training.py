"""Training throughput: the pipeline's resumable training (``srsmlm.training.train``) vs a plain
``model.fit`` on in-memory arrays with the same net, callbacks (early stopping, LR on plateau, a
CSV row per epoch) and per-epoch validation, measured back to back in the same run.

Each side is timed by a callback that runs after all the others, epoch end to epoch end, so
checkpointing, validation and logging are all counted; throughput is that of the fastest epoch
after the first (robust to other load on the machine), and the first epoch's extra time
(tracing and XLA compilation) is reported separately.

    python benchmarks/bench_training.py [--patches 400] [--epochs 3] [--rounds 1] [--model small]

``--model small`` (a 2-level, 8-filter U-Net) makes each step cheap, as on a GPU, so that the
training loop's own overhead (input pipeline, per-epoch backup, logging) dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from harness import section  # noqa: E402

from srsmlm.dataset import group_split, save_npz  # noqa: E402
from srsmlm.device import select_device  # noqa: E402
from srsmlm.geometry import Geometry  # noqa: E402
from srsmlm.model import ModelConfig, build_unet  # noqa: E402
from srsmlm.training import TrainingConfig, train  # noqa: E402

GEOMETRY = Geometry(16, 16, 48, 230)
SEED = 1
MODELS = {  # the configured model: section with these changes
    "guide": ModelConfig.from_config(
        section("model", depth=3, base_filters=16, kernel_size=6, output_activation="sigmoid")
    ),
    "small": ModelConfig.from_config(section("model", depth=2, base_filters=8, kernel_size=3)),
}


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock and process CPU time at the start of training and the end of every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.t_begin = 0.0
        self.t_end: list[float] = []
        self.cpu_end: list[float] = []

    def on_train_begin(self, logs=None) -> None:
        self.t_begin = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.t_end.append(time.perf_counter())
        self.cpu_end.append(time.process_time())

    def summary(self, n_patches: int) -> dict[str, float]:
        """Steady patches/s (fastest epoch after the first), the first epoch's extra time and
        the CPU seconds of the cheapest epoch after the first (less sensitive to other load)."""
        steady = float(np.min(np.diff(self.t_end)))
        first = self.t_end[0] - self.t_begin
        return {
            "patches_per_s": n_patches / steady,
            "epoch_s": steady,
            "epoch_cpu_s": float(np.min(np.diff(self.cpu_end))),
            "first_epoch_s": first,
            "compile_s": first - steady,
        }


def write_inputs(folder: Path, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
    """The training set and its index as the pipeline's dataset stage writes them."""
    save_npz(folder / "train.npz", X=x, Y=y)
    pd.DataFrame(
        {"acquisition": "a", "cluster": groups, "frame": 0, "kind": "signal", "split": "train"}
    ).to_csv(folder / "index.csv", index=False)


def run_pipeline(folder: Path, cfg: TrainingConfig, arch: ModelConfig) -> dict[str, float]:
    """``srsmlm.training.train`` (resumable: seeded per-epoch order, backup every epoch)."""
    timer = EpochTimer()
    out = folder / f"run-{time.monotonic_ns()}"
    meta = train(
        folder / "train.npz",
        folder / "index.csv",
        GEOMETRY,
        arch,
        cfg,
        {},
        SEED,
        out / "unet.keras",
        out / "model.json",
        out / "history.csv",
        out / "checkpoint",
        extra_callbacks=[timer],
    )
    return timer.summary(meta["data"]["train_patches"])


def run_plain(
    folder: Path,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    cfg: TrainingConfig,
    arch: ModelConfig,
) -> dict[str, float]:
    """``model.fit`` on the same split with the same callbacks, without resumability."""
    fit_idx, val_idx = group_split(groups.astype(str), cfg.validation_fraction, SEED)
    keras.utils.set_random_seed(SEED)
    model = build_unet(GEOMETRY, arch)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mse", jit_compile=cfg.jit_compile
    )
    timer = EpochTimer()
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.lr_factor, patience=cfg.patience, min_lr=cfg.min_lr
        ),
        keras.callbacks.CSVLogger(str(folder / f"plain-{time.monotonic_ns()}.csv")),
        timer,
    ]
    model.fit(
        x[fit_idx],
        y[fit_idx],
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(x[val_idx], y[val_idx]),
        validation_batch_size=max(cfg.batch_size, 256),
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    return timer.summary(len(fit_idx))


def main() -> None:
    """Run both trainings ``--rounds`` times, alternating, and print the throughput ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=1, help="alternating pairs of runs")
    ap.add_argument("--model", choices=sorted(MODELS), default="guide")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch is timed separately)")
    rng = np.random.default_rng(0)
    x = rng.random((args.patches, *GEOMETRY.shape, 1), dtype=np.float32) * 0.01
    y = rng.random((args.patches, *GEOMETRY.shape, 1), dtype=np.float32)
    groups = np.arange(args.patches) // 10
    cfg = TrainingConfig.from_config(
        section(
            "training",
            backend=keras.backend.backend(),
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_fraction=0.1,
            patience=10,
        )
    )
    device = select_device()
    results: dict[str, list[dict[str, float]]] = {"pipeline": [], "plain": []}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        write_inputs(folder, x, y, groups)
        for _ in range(args.rounds):
            results["plain"].append(run_plain(folder, x, y, groups, cfg, MODELS[args.model]))
            results["pipeline"].append(run_pipeline(folder, cfg, MODELS[args.model]))
    best = {k: max(v, key=lambda r: r["patches_per_s"]) for k, v in results.items()}
    ratio = best["pipeline"]["patches_per_s"] / best["plain"]["patches_per_s"]
    cpu = {k: min(r["epoch_cpu_s"] for r in v) for k, v in results.items()}
    n_params = build_unet(GEOMETRY, MODELS[args.model]).count_params()
    print(
        f"device: {device}; {args.model} U-Net ({n_params:,} parameters), batch {args.batch_size}"
    )
    print(f"{args.patches} patches (90% fit, 10% validation), {args.epochs} epochs")
    for name, label in (("pipeline", "pipeline train()"), ("plain", "plain model.fit")):
        r = best[name]
        print(
            f"{label:17s}: {r['patches_per_s']:7.1f} patches/s (fastest epoch after the first, "
            f"{r['epoch_s']:.2f} s/epoch); first epoch {r['first_epoch_s']:.2f} s, "
            f"of which compile ~{r['compile_s']:.2f} s"
        )
    print(f"ratio pipeline / plain: {ratio:.3f}")
    print(
        f"CPU seconds per epoch: pipeline {cpu['pipeline']:.2f}, plain {cpu['plain']:.2f} "
        f"(ratio plain / pipeline {cpu['plain'] / cpu['pipeline']:.3f})"
    )
    print(json.dumps({"device": device, "model": args.model, "ratio": round(ratio, 4), **results}))


if __name__ == "__main__":
    main()
