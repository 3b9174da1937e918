"""Training the U-Net: MSE, Adam, tf.data input, early stopping, LR schedule, resumable."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .dataset import group_split
from .errors import InputError
from .geometry import Geometry
from .io import atomic_path, write_json
from .model import ModelConfig, build_unet, check_geometry

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` config section."""

    epochs: int = 8
    batch_size: int = 80
    validation_fraction: float = 0.1
    learning_rate: float = 1e-3
    patience: int = 4
    lr_factor: float = 0.2
    min_lr: float = 1e-4
    jit_compile: bool = True
    deterministic_ops: bool = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> TrainingConfig:
        return cls(**{k: section[k] for k in cls.__dataclass_fields__ if k in section})


def select_device(threads: int | None = None) -> str:
    """Use the GPU when TensorFlow sees one, else the CPU; log the choice. Returns the device."""
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError:  # already initialised in this process
            pass
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
        log.info("using GPU: %s", ", ".join(g.name for g in gpus))
        return "GPU"
    log.info("no GPU visible to TensorFlow: training on the CPU (%s threads)", threads or "all")
    return "CPU"


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled patch order of one epoch: a function of (seed, epoch) only, so a resumed
    training sees exactly the batches the uninterrupted one would have seen."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int | None = None,
    epochs: tuple[int, int] | None = None,
):
    """tf.data pipeline of (x, y) batches, prefetched.

    With ``epochs=(first, last)`` the batches of epochs ``first .. last-1`` follow each other,
    each epoch in its own seeded order (:func:`epoch_order`); fit it with
    ``steps_per_epoch = ceil(len(x) / batch_size)``. Without, one pass in the stored order
    (validation). Patches stay in NumPy; only the current batches are copied.
    """
    n = len(x)
    if epochs is None:
        orders = [np.arange(n)]
    else:
        orders = [epoch_order(n, int(seed or 0), e) for e in range(*epochs)]

    def batches():
        for order in orders:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield x[idx], y[idx]

    spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32)
    ds = tf.data.Dataset.from_generator(
        batches, output_signature=(spec, tf.TensorSpec((None, *y.shape[1:]), tf.float32))
    )
    n_batches = len(orders) * math.ceil(n / batch_size)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(tf.data.AUTOTUNE)


def completed_epochs(checkpoint_dir: str | Path) -> int:
    """Epochs finished by an interrupted training (0 when there is no backup)."""
    meta = Path(checkpoint_dir) / "backup" / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.exists() else 0


class _CallbackState(keras.callbacks.Callback):
    """Saves the counters of EarlyStopping and ReduceLROnPlateau (and the best weights) at the
    end of every epoch and, on resume, restores those of the last backed-up epoch, so a resumed
    training stops and lowers the learning rate exactly when the uninterrupted one would have.

    Runs before ``BackupAndRestore`` (the commit point of an epoch), so a kill between the two
    leaves a state one epoch ahead of the backup; that is why states are kept per epoch.
    """

    FIELDS = ("wait", "best", "best_epoch", "cooldown_counter", "stopped_epoch")

    def __init__(self, folder: Path, tracked: list[keras.callbacks.Callback], resume_epoch: int):
        super().__init__()
        self.folder = folder
        self.tracked = tracked
        self.resume_epoch = resume_epoch

    def _paths(self, epoch: int) -> tuple[Path, Path]:
        return self.folder / f"callbacks-{epoch}.json", self.folder / f"best-weights-{epoch}.npz"

    def on_train_begin(self, logs=None):  # after the tracked callbacks reset themselves
        if self.resume_epoch == 0:
            return
        state_path, weights_path = self._paths(self.resume_epoch - 1)
        state = json.loads(state_path.read_text())
        for cb, saved in zip(self.tracked, state, strict=True):
            for k, v in saved.items():
                setattr(cb, k, v)
        if weights_path.exists():
            with np.load(weights_path) as z:
                best = [z[f"w{i}"] for i in range(len(z.files))]
            for cb in self.tracked:
                if hasattr(cb, "best_weights"):
                    cb.best_weights = best

    def on_epoch_end(self, epoch, logs=None):
        state = [
            {
                k: float(getattr(cb, k)) if k == "best" else int(getattr(cb, k))
                for k in self.FIELDS
                if hasattr(cb, k)
            }
            for cb in self.tracked
        ]
        state_path, weights_path = self._paths(epoch)
        best = next(
            (cb.best_weights for cb in self.tracked if getattr(cb, "best_weights", None)), None
        )
        if best is not None:
            with atomic_path(weights_path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **{f"w{i}": w for i, w in enumerate(best)})
        with atomic_path(state_path) as tmp:
            Path(tmp).write_text(json.dumps(state))
        for old in self._paths(epoch - 2):
            old.unlink(missing_ok=True)


class _EpochLog(keras.callbacks.Callback):
    """Progress, throughput and the learning rate in the log; a CSV row per epoch."""

    def __init__(self, history_csv: Path, n_train: int):
        super().__init__()
        self.history_csv = history_csv
        self.n_train = n_train
        self.t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        dt = time.perf_counter() - self.t0
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = {
            "epoch": epoch,
            **{k: float(v) for k, v in logs.items()},
            "learning_rate": lr,
            "seconds": dt,
            "patches_per_s": self.n_train / dt if dt > 0 else float("nan"),
        }
        row.pop("lr", None)  # newer Keras also reports it as "learning_rate"
        log.info(
            "epoch %d: %s",
            epoch + 1,
            ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
        )
        frame = pd.DataFrame([row])
        header = not self.history_csv.exists()
        frame.to_csv(self.history_csv, mode="a", header=header, index=False)


def train(
    train_npz: str | Path,
    index_csv: str | Path,
    geometry: Geometry,
    model_config: ModelConfig,
    training: TrainingConfig,
    normalisation: Mapping[str, Any],
    seed: int,
    model_path: str | Path,
    meta_path: str | Path,
    history_path: str | Path,
    checkpoint_dir: str | Path,
    threads: int | None = None,
    extra_callbacks: list | None = None,
) -> dict[str, Any]:
    """Train and save ``unet.keras``, ``model.json`` and ``history.csv``.

    Interrupted training (killed job, pre-emption) resumes from the last finished epoch when
    rerun with the same ``checkpoint_dir`` (Keras ``BackupAndRestore``); the checkpoint is
    removed once training completes.
    """
    check_geometry(geometry, model_config)
    device = select_device(threads)
    keras.utils.set_random_seed(seed)
    if training.deterministic_ops:
        # bitwise-reproducible kernels (matters on GPUs; Keras then turns XLA off)
        tf.config.experimental.enable_op_determinism()
    with np.load(train_npz) as z:
        x, y = z["X"], z["Y"]
    if x.shape[1:3] != geometry.shape:
        raise InputError(
            train_npz,
            f"patches are {x.shape[1:3]} but the geometry is {geometry.shape}",
            "rerun the patch stage after changing geometry",
        )
    if len(x) < 2:
        raise InputError(
            train_npz,
            f"only {len(x)} training patch(es)",
            "add training acquisitions or relax the patch thresholds",
        )
    index = pd.read_csv(index_csv)
    train_rows = index[index["split"] == "train"]
    groups = (
        train_rows["acquisition"].astype(str) + ":" + train_rows["cluster"].astype(str)
    ).to_numpy()
    if len(groups) != len(x):
        raise InputError(
            index_csv, f"{len(groups)} train rows for {len(x)} patches", "rerun build_dataset"
        )
    fit_idx, val_idx = group_split(groups, training.validation_fraction, seed)
    if len(val_idx) == 0:
        raise InputError(
            train_npz,
            "no validation patches (too few runs)",
            "add training data or raise training.validation_fraction",
        )
    log.info(
        "training on %d patches, validating on %d (split by run), batch %d, up to %d epochs",
        len(fit_idx),
        len(val_idx),
        training.batch_size,
        training.epochs,
    )
    model = build_unet(geometry, model_config)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=training.learning_rate),
        loss="mse",
        jit_compile=training.jit_compile,
    )
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    live_history = checkpoint_dir / "history.csv"
    first_epoch = completed_epochs(checkpoint_dir)
    resumed = first_epoch > 0
    if resumed:
        log.info(
            "resuming interrupted training from %s after epoch %d", checkpoint_dir, first_epoch
        )
    if live_history.exists():  # drop rows of an epoch killed after its log, before its backup
        rows = pd.read_csv(live_history)
        rows[rows["epoch"] < first_epoch].to_csv(live_history, index=False)
    # one seeded order per epoch, from the epoch the backup stopped at
    train_ds = make_dataset(
        x[fit_idx], y[fit_idx], training.batch_size, seed, (first_epoch, training.epochs)
    )
    val_ds = make_dataset(x[val_idx], y[val_idx], max(training.batch_size, 256))
    early = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=training.patience, restore_best_weights=True, verbose=0
    )
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss",
        factor=training.lr_factor,
        patience=training.patience,
        min_lr=training.min_lr,
    )
    # order matters: the epoch's log and callback state first, the backup (the commit point
    # a resume starts from) last
    callbacks = [
        early,
        plateau,
        _CallbackState(checkpoint_dir, [early, plateau], first_epoch),
        _EpochLog(live_history, len(fit_idx)),
        keras.callbacks.BackupAndRestore(str(checkpoint_dir / "backup")),
        *(extra_callbacks or []),
    ]
    t0 = time.perf_counter()
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=training.epochs,
        steps_per_epoch=math.ceil(len(fit_idx) / training.batch_size),
        callbacks=callbacks,
        verbose=0,
        shuffle=False,  # make_dataset already shuffles, seeded per epoch
    )
    seconds = time.perf_counter() - t0
    history = pd.read_csv(live_history)
    best = int(history["val_loss"].idxmin())
    with atomic_path(model_path) as tmp:  # the temporary name keeps the .keras suffix
        model.save(tmp)
    with atomic_path(history_path) as tmp:
        history.to_csv(tmp, index=False)
    meta = {
        "geometry": geometry.to_dict(),
        "normalisation": dict(normalisation),
        "architecture": model_config.to_dict(),
        "training": asdict(training),
        "seed": seed,
        "data": {
            "train_patches": len(fit_idx),
            "validation_patches": len(val_idx),
            "train_npz": str(train_npz),
        },
        "result": {
            "epochs_run": len(history),
            "best_epoch": best + 1,
            "best_val_loss": float(history["val_loss"].min()),
            "final_loss": float(history["loss"].iloc[-1]),
            "seconds_this_session": seconds,
            "resumed": resumed,
            "device": device,
        },
        "parameters": int(model.count_params()),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
    }
    write_json(meta, meta_path)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info(
        "trained %d epochs in %.1f s (best epoch %d, val_loss %.5g); saved %s",
        len(history),
        seconds,
        best + 1,
        meta["result"]["best_val_loss"],
        model_path,
    )
    return meta
