"""Training the U-Net: MSE, Adam, tf.data input, early stopping, LR schedule, resumable.

A training killed at any moment resumes, when rerun with the same checkpoint folder, exactly as
if it had not been interrupted: every finished epoch is committed as one backup (weights,
optimizer state, the counters of early stopping and of the LR schedule, the best weights), each
epoch sees its patches in an order that depends only on (seed, epoch), and ``history.csv`` gets
a row per epoch. The backup is written by a background thread while the next epoch trains, and
the patches stay in one TensorFlow copy that batches are gathered from inside the graph, so the
loop runs as fast as a plain ``model.fit`` on in-memory arrays.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import shutil
import time
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .dataset import group_split
from .errors import InputError, config_values
from .geometry import Geometry
from .io import atomic_path, write_json
from .model import ModelConfig, build_unet, check_geometry

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

log = logging.getLogger(__name__)

BACKUP = "backup"  # the checkpoint's subfolder holding the last committed epoch
MARKER = "training_metadata.json"  # its commit point, written last
LIVE_HISTORY = "history.csv"  # rows of the epochs run so far, in the checkpoint folder


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` config section; every key required, the defaults are the schema's."""

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


def epoch_flips(n: int, seed: int, epoch: int) -> np.ndarray:
    """Which of an epoch's ``n`` patches (in batch order) are mirrored top to bottom: a
    function of (seed, epoch) only, like :func:`epoch_order`."""
    return np.random.default_rng([seed, epoch, 1]).random(n) < 0.5


def make_dataset(
    x: np.ndarray | tf.Tensor,
    y: np.ndarray | tf.Tensor,
    batch_size: int,
    seed: int | None = None,
    epochs: tuple[int, int] | None = None,
    rows: np.ndarray | None = None,
    flip_rows: bool = False,
) -> tf.data.Dataset:
    """tf.data pipeline of (x, y) batches, prefetched.

    ``rows`` (default: all) selects the patches used, in this order. With
    ``epochs=(first, last)`` the batches of epochs ``first .. last-1`` follow each other, each
    epoch in its own seeded order of the rows (:func:`epoch_order`); fit it with
    ``steps_per_epoch = ceil(len(rows) / batch_size)``. Without, one pass in the given order
    (validation). Pass tensors to share one copy of the patches between datasets: batches are
    gathered from it inside the graph (no Python per batch, no shuffled copy of the set).
    ``flip_rows`` (with ``epochs``) mirrors half of each epoch's patches, input and target alike,
    top to bottom (:func:`epoch_flips`): a spot and a spectrum mirrored about the patch's middle
    row are as likely as the originals, so this doubles the patches the network sees.
    """
    rows = np.arange(int(x.shape[0])) if rows is None else np.asarray(rows)
    index_dtype = np.int32 if int(x.shape[0]) < 2**31 else np.int64
    n = len(rows)
    if epochs is None:
        orders = rows[None, :]
        flips = np.zeros_like(orders, dtype=bool)
    else:
        per_epoch = [rows[epoch_order(n, int(seed or 0), e)] for e in range(*epochs)]
        orders = np.stack(per_epoch) if per_epoch else np.zeros((0, n), rows.dtype)
        flips = np.stack([epoch_flips(n, int(seed or 0), e) for e in range(*epochs)] or [[]])
        flips = flips.reshape(orders.shape) & bool(flip_rows)
    xt = tf.cast(tf.convert_to_tensor(x), tf.float32)  # no copy when already a float32 tensor
    yt = tf.cast(tf.convert_to_tensor(y), tf.float32)
    ds = tf.data.Dataset.from_tensor_slices((orders.astype(index_dtype), flips)).flat_map(
        lambda order, flip: tf.data.Dataset.from_tensor_slices((order, flip)).batch(batch_size)
    )  # a batch never spans two epochs

    def gather(idx: tf.Tensor, flip: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        xb, yb = tf.gather(xt, idx), tf.gather(yt, idx)
        if not flip_rows:
            return xb, yb
        mask = tf.reshape(flip, [-1] + [1] * (len(xb.shape) - 1))
        return tf.where(mask, tf.reverse(xb, [1]), xb), tf.where(mask, tf.reverse(yb, [1]), yb)

    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    n_batches = len(orders) * math.ceil(n / batch_size)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(tf.data.AUTOTUNE)


def completed_epochs(checkpoint_dir: str | Path) -> int:
    """Epochs finished by an interrupted training (0 when there is no backup)."""
    meta = Path(checkpoint_dir) / BACKUP / MARKER
    return int(json.loads(meta.read_text())["epoch"]) if meta.exists() else 0


@dataclass
class Backup:
    """The state committed at the end of an epoch: everything a resumed training needs."""

    epoch: int  # epochs finished
    stopped: bool  # early stopping ended the training at that epoch
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    best_weights: list[np.ndarray] | None
    callbacks: list[dict[str, float]]  # counters of the tracked callbacks, in their order
    fingerprint: dict[str, Any]  # the settings it was trained with

    def done(self, epochs: int) -> bool:
        """Whether the backed-up training had already ended (nothing left to fit)."""
        return self.stopped or self.epoch >= epochs


def read_backup(checkpoint_dir: str | Path) -> Backup | None:
    """The last committed backup of an interrupted training, or None."""
    folder = Path(checkpoint_dir) / BACKUP
    marker = folder / MARKER
    if not marker.exists():
        return None
    meta = json.loads(marker.read_text())
    with np.load(folder / meta["state"]) as z:
        arrays = {k: z[k] for k in z.files}

    def part(prefix: str) -> list[np.ndarray]:
        return [arrays[f"{prefix}{i}"] for i in range(sum(k[0] == prefix for k in arrays))]

    return Backup(
        epoch=int(meta["epoch"]),
        stopped=bool(meta["stopped"]),
        weights=part("w"),
        optimizer=part("o"),
        best_weights=part("b") or None,
        callbacks=meta["callbacks"],
        fingerprint=meta["fingerprint"],
    )


def _write_backup(folder: Path, backup: Backup) -> None:
    """Write one epoch's state, then commit it by replacing the marker; drop older states."""
    name = f"epoch-{backup.epoch}.npz"
    arrays = {f"w{i}": a for i, a in enumerate(backup.weights)}
    arrays |= {f"o{i}": a for i, a in enumerate(backup.optimizer)}
    arrays |= {f"b{i}": a for i, a in enumerate(backup.best_weights or [])}
    with atomic_path(folder / name) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    meta = {
        "epoch": backup.epoch,
        "stopped": backup.stopped,
        "state": name,
        "callbacks": backup.callbacks,
        "fingerprint": backup.fingerprint,
    }
    write_json(meta, folder / MARKER)  # the commit point
    for old in folder.glob("epoch-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _copies(variables: Sequence[keras.Variable]) -> list[np.ndarray]:
    """Values of variables as NumPy arrays that later training steps cannot change."""
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]  # np.array copies


class _EpochCheckpoint(keras.callbacks.Callback):
    """Commits every finished epoch as one :class:`Backup` and restores the tracked callbacks'
    counters (early stopping, LR schedule) and best weights from a backup on resume, so a
    resumed training stops and lowers the learning rate exactly when the uninterrupted one
    would have.

    The state is copied at the end of the epoch and written by a background thread while the
    next epoch trains; the marker file is replaced only once the state file is complete, so a
    kill at any moment leaves the last committed epoch intact. Runs after the tracked callbacks
    and the epoch's history row, so a kill between the two leaves a row the resume drops.
    """

    FIELDS = ("wait", "best", "best_epoch", "cooldown_counter", "stopped_epoch")

    def __init__(
        self,
        folder: Path,
        tracked: Sequence[keras.callbacks.Callback],
        resume: Backup | None,
        fingerprint: dict[str, Any],
    ):
        super().__init__()
        self.folder = folder
        self.tracked = list(tracked)
        self.resume = resume
        self.fingerprint = fingerprint
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup")
        self._pending: Future | None = None

    def on_train_begin(self, logs=None) -> None:
        """After the tracked callbacks reset themselves: put back their state on resume."""
        if self.resume is None:
            return
        for cb, saved in zip(self.tracked, self.resume.callbacks, strict=True):
            for k, v in saved.items():
                setattr(cb, k, v)
        for cb in self.tracked:
            if hasattr(cb, "best_weights"):
                cb.best_weights = self.resume.best_weights

    def on_epoch_end(self, epoch, logs=None) -> None:
        """Snapshot the state (cheap copies) and hand it to the writer thread."""
        self._wait()  # one backup in flight at most; surfaces a failed write
        best = next(
            (cb.best_weights for cb in self.tracked if getattr(cb, "best_weights", None)), None
        )
        snapshot = Backup(
            epoch=epoch + 1,
            stopped=bool(self.model.stop_training),
            weights=_copies(self.model.weights),
            optimizer=_copies(self.model.optimizer.variables),
            best_weights=best,  # replaced, never modified in place, by EarlyStopping
            callbacks=[
                {
                    k: float(getattr(cb, k)) if k == "best" else int(getattr(cb, k))
                    for k in self.FIELDS
                    if getattr(cb, k, None) is not None
                }
                for cb in self.tracked
            ],
            fingerprint=self.fingerprint,
        )
        self._pending = self._writer.submit(_write_backup, self.folder, snapshot)

    def on_train_end(self, logs=None) -> None:
        """The last epoch is committed before training counts as finished."""
        self._wait()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Finish the backup in flight (also when training was interrupted) and stop the writer."""
        try:
            self._wait()
        except Exception:  # already failing: keep the original error
            log.exception("could not write the last training backup")
        finally:
            self._writer.shutdown(wait=True)


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
        jit_compile=training.jit_compile,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def resume_from(checkpoint_dir: Path, fingerprint: dict[str, Any]) -> Backup | None:
    """The backup to resume from (None: start afresh), its model state not yet loaded.

    Drops history rows of epochs after the backup (killed after their log, before their
    commit) and a checkpoint left by a training with other settings.
    """
    try:
        backup = read_backup(checkpoint_dir)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        # starting afresh gives the same result as the uninterrupted training, just later
        log.warning("unreadable training backup in %s (%s): starting afresh", checkpoint_dir, exc)
        backup = None
        shutil.rmtree(checkpoint_dir)
    if backup is not None and backup.fingerprint != fingerprint:
        log.warning("ignoring %s: it was left by a training with other settings", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
        backup = None
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    live_history = checkpoint_dir / LIVE_HISTORY
    first_epoch = backup.epoch if backup else 0
    if live_history.exists():
        rows = pd.read_csv(live_history) if live_history.stat().st_size else pd.DataFrame()
        if len(rows):
            rows[rows["epoch"] < first_epoch].to_csv(live_history, index=False)
    if backup is not None:
        log.info(
            "resuming interrupted training from %s after epoch %d", checkpoint_dir, first_epoch
        )
    return backup


def restore_model(model: keras.Model, backup: Backup) -> None:
    """Load a backup's weights and optimizer state (step count, learning rate, moments)."""
    model.set_weights(backup.weights)
    for var, value in zip(model.optimizer.variables, backup.optimizer, strict=True):
        var.assign(value)


def run_epochs(
    model: keras.Model,
    x: tf.Tensor,
    y: tf.Tensor,
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
    early = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=training.patience, restore_best_weights=True, verbose=0
    )
    schedule: list[keras.callbacks.Callback] = []
    if training.schedule == "plateau":  # else the optimizer's own schedule
        schedule.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=training.lr_factor,
                patience=training.patience,
                min_lr=training.min_lr,
            )
        )
    checkpoint = _EpochCheckpoint(checkpoint_dir / BACKUP, [early, *schedule], backup, fingerprint)
    # order matters: the schedule, then the epoch's history row, then the commit
    callbacks = [
        early,
        *schedule,
        _EpochLog(checkpoint_dir / LIVE_HISTORY, len(fit_idx)),
        checkpoint,
        *extra_callbacks,
    ]
    # one seeded order per epoch, from the epoch the backup stopped at
    train_ds = make_dataset(
        x,
        y,
        training.batch_size,
        seed,
        (first_epoch, training.epochs),
        fit_idx,
        flip_rows=training.flip_rows,
    )
    val_ds = make_dataset(x, y, max(training.batch_size, 256), rows=val_idx)
    t0 = time.perf_counter()
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=first_epoch,
            epochs=training.epochs,
            steps_per_epoch=math.ceil(len(fit_idx) / training.batch_size),
            callbacks=callbacks,
            verbose=0,
            shuffle=False,  # make_dataset already shuffles, seeded per epoch
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
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
    }


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
    device = select_device(threads)
    keras.utils.set_random_seed(seed)
    if training.deterministic_ops:
        # bitwise-reproducible kernels (matters on GPUs; Keras then turns XLA off)
        tf.config.experimental.enable_op_determinism()
    x, y, groups = load_training_set(train_npz, index_csv, geometry)
    fit_idx, val_idx = split_validation(groups, training, seed, train_npz)
    # one TensorFlow copy of the patches, shared by the training and validation batches
    x, y = tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.float32)
    model = compiled_model(
        geometry, model_config, training, math.ceil(len(fit_idx) / training.batch_size)
    )
    checkpoint_dir = Path(checkpoint_dir)
    fingerprint = _as_json(
        {
            "seed": seed,
            "geometry": geometry.to_dict(),
            "architecture": model_config.to_dict(),
            "training": asdict(training),
            "patches": [len(fit_idx), len(val_idx)],
        }
    )
    backup = resume_from(checkpoint_dir, fingerprint)
    seconds = run_epochs(
        model,
        x,
        y,
        fit_idx,
        val_idx,
        training,
        seed,
        checkpoint_dir,
        backup,
        fingerprint,
        extra_callbacks or (),
    )
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
    with atomic_path(model_path) as tmp:  # the temporary name keeps the .keras suffix
        model.save(tmp)
    with atomic_path(history_path) as tmp:
        history.to_csv(tmp, index=False)
    write_json(meta, meta_path)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info(
        "trained %d epochs in %.1f s (best epoch %d, val_loss %.5g); saved %s",
        len(history),
        seconds,
        meta["result"]["best_epoch"],
        meta["result"]["best_val_loss"],
        model_path,
    )
    return meta
