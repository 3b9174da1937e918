"""Exact resume of an interrupted training: one committed backup per finished epoch.

Every finished epoch is committed as one backup (weights, optimizer state, the counters of
early stopping and of the LR schedule, the best weights) in NumPy files, written by a
background thread while the next epoch trains; the marker file is replaced only once the state
file is complete, so a kill at any moment leaves the last committed epoch intact. Only Keras
APIs and NumPy: the same on every backend.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from .io import atomic_path, write_json

log = logging.getLogger(__name__)

BACKUP = "backup"  # the checkpoint's subfolder holding the last committed epoch
MARKER = "training_metadata.json"  # its commit point, written last
LIVE_HISTORY = "history.csv"  # rows of the epochs run so far, in the checkpoint folder


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


class EpochCheckpoint(keras.callbacks.Callback):
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
