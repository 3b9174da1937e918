"""Training the U-Net: MSE, Adam, early stopping, LR schedule, resumable, on any Keras backend.

A training killed at any moment resumes, when rerun with the same checkpoint folder, exactly as
if it had not been interrupted: every finished epoch is committed as one backup
(:mod:`srsmlm.checkpoint`), each epoch sees its patches in an order that depends only on
(seed, epoch) (:mod:`srsmlm.batches`), and ``history.csv`` gets a row per epoch. Keras runs on
the backend chosen before it is imported (:func:`srsmlm.backend.use_backend`), and
``training.backend`` must name it.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from .backend import framework_versions
from .batches import PatchBatches
from .checkpoint import BACKUP, LIVE_HISTORY, Backup, EpochCheckpoint, restore_model, resume_from
from .dataset import group_split
from .device import select_device
from .errors import InputError, config_values
from .geometry import Geometry
from .io import atomic_path, write_json
from .model import ModelConfig, build_unet, check_geometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` config section; every key required, the defaults are the schema's."""

    backend: str
    epochs: int
    batch_size: int
    validation_fraction: float
    learning_rate: float
    patience: int
    lr_factor: float
    min_lr: float
    jit_compile: bool
    deterministic_ops: bool
    schedule: str
    warmup_epochs: float
    clipnorm: float | None
    flip_rows: bool

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> TrainingConfig:
        """From the ``training:`` section; :class:`~srsmlm.errors.ConfigKeyError` names a
        missing key."""
        return cls(**config_values(section, "training", cls.__dataclass_fields__))


class _EpochLog(keras.callbacks.Callback):
    """Progress, throughput and the learning rate in the log; a CSV row per epoch."""

    def __init__(self, history_csv: Path, n_train: int):
        super().__init__()
        self.history_csv = history_csv
        self.n_train = n_train
        self.t0 = 0.0
        self._columns: list[str] | None = None  # those of the file, once known

    def on_epoch_begin(self, epoch, logs=None) -> None:
        """Start the epoch's clock."""
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        """Log the epoch and append its row to the history."""
        dt = time.perf_counter() - self.t0
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = {
            "epoch": epoch,
            **{k: float(v) for k, v in (logs or {}).items() if k != "lr"},
            "learning_rate": lr,  # newer Keras also reports it (as "learning_rate" or "lr")
            "seconds": dt,
            "patches_per_s": self.n_train / dt if dt > 0 else float("nan"),
        }
        log.info(
            "epoch %d: %s",
            epoch + 1,
            ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
        )
        new_file = not self.history_csv.exists() or self.history_csv.stat().st_size == 0
        if self._columns is None:  # a resumed history keeps its columns
            if new_file:
                self._columns = list(row)
            else:
                with open(self.history_csv, newline="") as fh:
                    self._columns = next(csv.reader(fh))
        with open(self.history_csv, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._columns)  # raises on a new column
            if new_file:
                writer.writeheader()
            writer.writerow(row)


def load_training_set(
    train_npz: str | Path, index_csv: str | Path, geometry: Geometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training patches (X raw, Y clean) and the run (acquisition:cluster) of each."""
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
    return x, y, groups


def split_validation(
    groups: np.ndarray, training: TrainingConfig, seed: int, train_npz: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation), split by run so no molecule sits on both sides."""
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
    return fit_idx, val_idx


def learning_rate(training: TrainingConfig, steps_per_epoch: int) -> Any:
    """The optimizer's learning rate: ``cosine``: a linear warm-up over ``warmup_epochs`` to
    ``learning_rate``, then a cosine decay to ``min_lr`` at the last epoch (a function of the
    step count, so a resumed training follows it exactly); ``plateau``: the constant
    ``learning_rate`` that ReduceLROnPlateau lowers (:func:`run_epochs`)."""
    if training.schedule == "plateau":
        return training.learning_rate
    if training.schedule != "cosine":
        raise ValueError(f"training.schedule {training.schedule!r}: use cosine or plateau")
    total = max(1, training.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(training.warmup_epochs * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=training.learning_rate / 100 if warmup else training.learning_rate,
        decay_steps=total - warmup,
        alpha=min(1.0, training.min_lr / training.learning_rate),
        warmup_target=training.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def check_backend(training: TrainingConfig) -> str:
    """The backend Keras runs on, which must be ``training.backend``; one line else."""
    active = keras.backend.backend()
    if active != training.backend:
        raise InputError(
            None,
            f"training.backend is {training.backend} but Keras runs on {active}",
            "call srsmlm.backend.use_backend(training.backend) before importing srsmlm.training "
            "(or set KERAS_BACKEND)",
        )
    return active


def jit_compile(training: TrainingConfig) -> bool:
    """``training.jit_compile`` as Keras takes it: XLA under TensorFlow and JAX; under PyTorch
    off (``torch.compile`` of the whole step is experimental in Keras), logged."""
    if training.jit_compile and keras.backend.backend() == "torch":
        log.info("training.jit_compile ignored under the torch backend (eager PyTorch)")
        return False
    return training.jit_compile


def compiled_model(
    geometry: Geometry, model_config: ModelConfig, training: TrainingConfig, steps_per_epoch: int
) -> keras.Model:
    """The U-Net with its Adam optimizer (built, so a backup's state can be loaded) and MSE;
    gradients clipped to a global norm of ``training.clipnorm`` (None: not clipped)."""
    model = build_unet(geometry, model_config)
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=learning_rate(training, steps_per_epoch),
            global_clipnorm=training.clipnorm,
        ),
        loss="mse",
        jit_compile=jit_compile(training),
    )
    model.optimizer.build(model.trainable_variables)
    return model


def tracked_callbacks(training: TrainingConfig) -> list[keras.callbacks.Callback]:
    """Early stopping (best weights restored) and, for the ``plateau`` schedule,
    ReduceLROnPlateau: the callbacks whose counters a backup keeps."""
    early = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=training.patience, restore_best_weights=True, verbose=0
    )
    if training.schedule != "plateau":  # the optimizer's own schedule
        return [early]
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss",
        factor=training.lr_factor,
        patience=training.patience,
        min_lr=training.min_lr,
    )
    return [early, plateau]


def run_epochs(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    training: TrainingConfig,
    seed: int,
    checkpoint_dir: Path,
    backup: Backup | None,
    fingerprint: dict[str, Any],
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> float:
    """Run the epochs left (all, or those after the backup); returns the seconds spent.

    Ends with the best epoch's weights in ``model``, as early stopping restores them.
    """
    first_epoch = backup.epoch if backup else 0
    if backup is not None:
        restore_model(model, backup)
        if backup.done(training.epochs):  # killed after its last commit, before the outputs
            log.info("the interrupted training had already finished")
            model.set_weights(backup.best_weights or backup.weights)
            return 0.0
    tracked = tracked_callbacks(training)
    checkpoint = EpochCheckpoint(checkpoint_dir / BACKUP, tracked, backup, fingerprint)
    # order matters: the schedule, then the epoch's history row, then the commit
    callbacks = [
        *tracked,
        _EpochLog(checkpoint_dir / LIVE_HISTORY, len(fit_idx)),
        checkpoint,
        *extra_callbacks,
    ]
    # one seeded order per epoch, from the epoch the backup stopped at
    train_batches = PatchBatches(
        x, y, training.batch_size, fit_idx, seed, first_epoch, flip_rows=training.flip_rows
    )
    val_batches = PatchBatches(x, y, max(training.batch_size, 256), val_idx)
    t0 = time.perf_counter()
    try:
        model.fit(
            train_batches,
            validation_data=val_batches,
            initial_epoch=first_epoch,
            epochs=training.epochs,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,  # PatchBatches already shuffles, seeded per epoch
        )
    finally:
        checkpoint.close()
    return time.perf_counter() - t0


def training_metadata(
    model: keras.Model,
    history: pd.DataFrame,
    *,
    geometry: Geometry,
    model_config: ModelConfig,
    training: TrainingConfig,
    normalisation: Mapping[str, Any],
    seed: int,
    n_fit: int,
    n_val: int,
    train_npz: str | Path,
    seconds: float,
    resumed: bool,
    device: str,
) -> dict[str, Any]:
    """``model.json``: what the model was trained on and with, and how training went."""
    best = int(history["val_loss"].idxmin())
    return {
        "geometry": geometry.to_dict(),
        "normalisation": dict(normalisation),
        "architecture": model_config.to_dict(),
        "training": asdict(training),
        "seed": seed,
        "data": {
            "train_patches": n_fit,
            "validation_patches": n_val,
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
        "backend": keras.backend.backend(),
        "versions": framework_versions(keras.backend.backend()),
    }


def save_outputs(
    model: keras.Model,
    history: pd.DataFrame,
    meta: dict[str, Any],
    model_path: str | Path,
    meta_path: str | Path,
    history_path: str | Path,
) -> None:
    """Write ``unet.keras``, ``history.csv`` and ``model.json`` (last), each atomically."""
    with atomic_path(model_path) as tmp:  # the temporary name keeps the .keras suffix
        model.save(tmp)
    with atomic_path(history_path) as tmp:
        history.to_csv(tmp, index=False)
    write_json(meta, meta_path)
    log.info(
        "trained %d epochs in %.1f s (best epoch %d, val_loss %.5g); saved %s",
        len(history),
        meta["result"]["seconds_this_session"],
        meta["result"]["best_epoch"],
        meta["result"]["best_val_loss"],
        model_path,
    )


def _as_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (lists for tuples, Python numbers), for comparing."""
    return json.loads(
        json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    )


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

    Interrupted training (killed job, pre-emption) resumes from the last finished epoch, to the
    same result as an uninterrupted one, when rerun with the same ``checkpoint_dir``; the
    checkpoint is removed once training completes.
    """
    check_geometry(geometry, model_config)
    check_backend(training)
    device = select_device(threads, training.deterministic_ops)
    keras.utils.set_random_seed(seed)
    x, y, groups = load_training_set(train_npz, index_csv, geometry)
    fit_idx, val_idx = split_validation(groups, training, seed, train_npz)
    steps = -(-len(fit_idx) // training.batch_size)
    model = compiled_model(geometry, model_config, training, steps)
    checkpoint_dir = Path(checkpoint_dir)
    fingerprint = _as_json(
        {"seed": seed, "geometry": geometry.to_dict(), "architecture": model_config.to_dict()}
        | {"training": asdict(training), "patches": [len(fit_idx), len(val_idx)]}
    )
    backup = resume_from(checkpoint_dir, fingerprint)
    seconds = run_epochs(
        model, x, y, fit_idx, val_idx, training, seed, checkpoint_dir, backup, fingerprint,
        extra_callbacks or (),
    )  # fmt: skip
    history = pd.read_csv(checkpoint_dir / LIVE_HISTORY)
    meta = training_metadata(
        model,
        history,
        geometry=geometry,
        model_config=model_config,
        training=training,
        normalisation=normalisation,
        seed=seed,
        n_fit=len(fit_idx),
        n_val=len(val_idx),
        train_npz=train_npz,
        seconds=seconds,
        resumed=backup is not None,
        device=device,
    )
    save_outputs(model, history, meta, model_path, meta_path, history_path)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return meta
