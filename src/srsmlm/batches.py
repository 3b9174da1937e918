"""Training and validation batches over in-memory patches, for any Keras backend.

Each epoch sees its patches in an order that depends only on (seed, epoch), half of them
mirrored top to bottom when asked, so a resumed training sees exactly the batches the
uninterrupted one would have seen. :class:`PatchBatches` is a ``keras.utils.PyDataset``: it
needs no TensorFlow, and under TensorFlow it feeds ``model.fit`` as fast as arrays do (a batch
is one NumPy gather from the arrays held once in memory).
"""

from __future__ import annotations

import math

import keras
import numpy as np


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled patch order of one epoch: a function of (seed, epoch) only, so a resumed
    training sees exactly the batches the uninterrupted one would have seen."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_flips(n: int, seed: int, epoch: int) -> np.ndarray:
    """Which of an epoch's ``n`` patches (in batch order) are mirrored top to bottom: a
    function of (seed, epoch) only, like :func:`epoch_order`."""
    return np.random.default_rng([seed, epoch, 1]).random(n) < 0.5


class PatchBatches(keras.utils.PyDataset):
    """(x, y) batches of float32 patches (N, H, W, 1), a batch never spanning two epochs.

    ``rows`` (default: all) selects the patches used, in this order. With ``first_epoch`` set
    (training), Keras's call of :meth:`on_epoch_begin` moves to the next epoch, starting at
    ``first_epoch``, and each epoch takes the rows in its seeded order (:func:`epoch_order`);
    ``flip_rows`` then mirrors half of each epoch's patches, input and target alike, top to
    bottom (:func:`epoch_flips`): a spot and a spectrum mirrored about the patch's middle row
    are as likely as the originals, so this doubles the patches the network sees. Without
    ``first_epoch`` (validation), one pass in the given order, never flipped. The arrays are
    not copied (beyond a conversion to float32).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        rows: np.ndarray | None = None,
        seed: int = 0,
        first_epoch: int | None = None,
        flip_rows: bool = False,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.x = np.asarray(x, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.float32)
        self.rows = np.arange(len(self.x)) if rows is None else np.asarray(rows)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.first_epoch = first_epoch
        self.flip_rows = bool(flip_rows) and first_epoch is not None
        self.epoch: int | None = None  # set by on_epoch_begin (training only)
        self._order, self._flips = self._plan(first_epoch)

    def _plan(self, epoch: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Rows in batch order and which of them are flipped, for ``epoch`` (None: as given)."""
        n = len(self.rows)
        if epoch is None:
            return self.rows, np.zeros(n, bool)
        order = self.rows[epoch_order(n, self.seed, epoch)]
        flips = epoch_flips(n, self.seed, epoch) & self.flip_rows
        return order, flips

    def on_epoch_begin(self) -> None:
        """Keras starts an epoch: the next one's order (training only)."""
        if self.first_epoch is None:
            return
        self.epoch = self.first_epoch if self.epoch is None else self.epoch + 1
        self._order, self._flips = self._plan(self.epoch)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} of {self.num_batches}")
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        idx, flip = self._order[part], self._flips[part]
        xb, yb = self.x[idx], self.y[idx]  # fancy indexing: copies, the arrays stay intact
        if flip.any():
            xb[flip] = xb[flip, ::-1]
            yb[flip] = yb[flip, ::-1]
        return xb, yb
