import json

import numpy as np
import pandas as pd
import pytest

from srsmlm.dataset import save_npz
from srsmlm.geometry import Geometry

keras = pytest.importorskip("keras")
from srsmlm.backend import DISTRIBUTIONS  # noqa: E402
from srsmlm.batches import PatchBatches, epoch_flips, epoch_order  # noqa: E402
from srsmlm.checkpoint import completed_epochs, read_backup  # noqa: E402
from srsmlm.errors import InputError  # noqa: E402
from srsmlm.model import ModelConfig  # noqa: E402
from srsmlm.training import TrainingConfig, compiled_model, learning_rate, train  # noqa: E402

from .conftest import section  # noqa: E402

BACKEND = keras.backend.backend()  # KERAS_BACKEND selects it (CI runs these under two)

G = Geometry(16, 16, 48, 230)
TINY = ModelConfig.from_config(section("model", depth=2, base_filters=4, kernel_size=3))


def training_config(**overrides) -> TrainingConfig:
    """The configured ``training:`` section with ``overrides``, on the backend Keras runs on."""
    return TrainingConfig.from_config(section("training", **{"backend": BACKEND, **overrides}))


def tiny_data(tmp_path, n=96):
    """Spots on noise (raw) -> clean spots (target)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :64]
    centres = rng.uniform([4, 4], [12, 60], (n, 2))
    clean = np.exp(
        -((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 4
    ).astype(np.float32)
    raw = (0.5 * clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)
    save_npz(tmp_path / "train.npz", X=raw[..., None], Y=clean[..., None])
    pd.DataFrame(
        {
            "acquisition": "a",
            "index_in_acquisition": np.arange(n),
            "cluster": np.arange(n) // 8,
            "frame": np.arange(n),
            "kind": "signal",
            "split": "train",
        }
    ).to_csv(tmp_path / "index.csv", index=False)
    return tmp_path / "train.npz", tmp_path / "index.csv"


def run(tmp_path, out, epochs=2, callbacks=None, seed=3, patience=10, lr=1e-3, schedule="cosine"):
    npz, index = tiny_data(tmp_path)
    o = tmp_path / out
    cfg = training_config(
        epochs=epochs,
        batch_size=16,
        validation_fraction=0.25,
        patience=patience,
        learning_rate=lr,
        schedule=schedule,
    )
    return train(
        npz,
        index,
        G,
        TINY,
        cfg,
        {"input_divisor": 65536},
        seed,
        o / "unet.keras",
        o / "model.json",
        o / "history.csv",
        o / "checkpoint",
        threads=2,
        extra_callbacks=callbacks,
    )


def test_tiny_training_writes_model_metadata_history(tmp_path):
    meta = run(tmp_path, "m")
    o = tmp_path / "m"
    assert (o / "unet.keras").exists() and not (o / "checkpoint").exists()
    saved = json.loads((o / "model.json").read_text())
    assert saved["geometry"] == G.to_dict()
    assert saved["architecture"] == TINY.to_dict()
    assert saved["training"]["epochs"] == 2 and saved["normalisation"] == {"input_divisor": 65536}
    assert saved["data"]["train_patches"] + saved["data"]["validation_patches"] == 96
    assert saved["backend"] == BACKEND
    assert {"keras", "numpy"} <= set(saved["versions"])
    assert set(DISTRIBUTIONS[BACKEND]) & set(saved["versions"])  # the framework trained with
    hist = pd.read_csv(o / "history.csv")
    assert hist["epoch"].tolist() == [0, 1]
    assert {"loss", "val_loss", "learning_rate", "patches_per_s"} <= set(hist.columns)
    assert meta["result"]["epochs_run"] == 2
    assert hist["loss"].iloc[-1] < hist["loss"].iloc[0]


class Interrupt(keras.callbacks.Callback):
    """Simulates a job killed after ``after`` finished epochs."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt("killed by the cluster")


@pytest.mark.parametrize("schedule", ["cosine", pytest.param("plateau", marks=pytest.mark.slow)])
def test_resume_after_interruption_continues_epoch_count(tmp_path, schedule):
    # patience 2: early stopping cannot end it before epoch 3, on any backend's round-off
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "r", epochs=4, callbacks=[Interrupt(2)], patience=2, schedule=schedule)
    o = tmp_path / "r"
    assert not (o / "unet.keras").exists()
    assert len(pd.read_csv(o / "checkpoint" / "history.csv")) == 2
    meta = run(tmp_path, "r", epochs=4, patience=2, schedule=schedule)
    hist = pd.read_csv(o / "history.csv")
    # continued after epoch 2 (patience 2 may stop it early, as it would the uninterrupted one)
    assert hist["epoch"].tolist() == list(range(len(hist))) and len(hist) > 2
    assert meta["result"]["resumed"] is True and meta["result"]["epochs_run"] == len(hist)
    # the resumed training equals the uninterrupted one: same batches, LR schedule and weights
    run(tmp_path, "u", epochs=4, patience=2, schedule=schedule)
    ref = pd.read_csv(tmp_path / "u" / "history.csv")
    np.testing.assert_array_equal(
        hist[["loss", "val_loss", "learning_rate"]], ref[["loss", "val_loss", "learning_rate"]]
    )
    w_r = keras.models.load_model(o / "unet.keras").get_weights()
    w_u = keras.models.load_model(tmp_path / "u" / "unet.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w_r, w_u, strict=True))


def weights(path):
    return keras.models.load_model(path).get_weights()


@pytest.mark.slow
def test_backup_is_one_committed_state_per_epoch(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "k", epochs=3, callbacks=[Interrupt(2)], schedule="plateau")
    ckpt = tmp_path / "k" / "checkpoint"
    assert completed_epochs(ckpt) == 2
    assert [f.name for f in (ckpt / "backup").glob("epoch-*.npz")] == ["epoch-2.npz"]
    backup = read_backup(ckpt)
    assert backup.epoch == 2 and not backup.stopped and backup.best_weights is not None
    assert backup.callbacks[0]["wait"] >= 0 and "cooldown_counter" in backup.callbacks[1]


@pytest.mark.slow
def test_killed_after_the_last_commit_finishes_without_training_again(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # after the last epoch, before the outputs
        run(tmp_path, "r", epochs=2, callbacks=[Interrupt(2)])
    meta = run(tmp_path, "r", epochs=2)
    assert meta["result"]["resumed"] is True and meta["result"]["seconds_this_session"] == 0
    run(tmp_path, "u", epochs=2)
    hist = pd.read_csv(tmp_path / "r" / "history.csv")
    ref = pd.read_csv(tmp_path / "u" / "history.csv")
    np.testing.assert_array_equal(hist[["loss", "val_loss"]], ref[["loss", "val_loss"]])
    w_r, w_u = weights(tmp_path / "r" / "unet.keras"), weights(tmp_path / "u" / "unet.keras")
    assert all(np.array_equal(a, b) for a, b in zip(w_r, w_u, strict=True))


@pytest.mark.slow
def test_a_backup_of_other_settings_is_not_resumed(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "s", epochs=3, callbacks=[Interrupt(1)])
    meta = run(tmp_path, "s", epochs=3, lr=5e-4)  # changed config: start afresh
    assert meta["result"]["resumed"] is False and meta["result"]["epochs_run"] == 3
    hist = pd.read_csv(tmp_path / "s" / "history.csv")
    assert hist["epoch"].tolist() == [0, 1, 2]


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    a = epoch_order(50, 7, 0)
    assert sorted(a) == list(range(50))
    assert np.array_equal(a, epoch_order(50, 7, 0))
    assert not np.array_equal(a, epoch_order(50, 7, 1))
    assert not np.array_equal(a, epoch_order(50, 8, 0))


def epochs_of(batches: PatchBatches, n_epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (x, y) batches of ``n_epochs`` epochs, as Keras's fit loop asks for them."""
    out = []
    for _ in range(n_epochs):
        batches.on_epoch_begin()
        out += [batches[i] for i in range(len(batches))]
        batches.on_epoch_end()
    return out


def test_batches_of_each_epoch_come_in_its_order():
    x = np.arange(10, dtype=np.float32)[:, None]
    batches = [b[0][:, 0] for b in epochs_of(PatchBatches(x, x, 4, seed=5, first_epoch=1), 2)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]  # no batch spans two epochs
    np.testing.assert_array_equal(np.concatenate(batches[:3]), epoch_order(10, 5, 1))
    np.testing.assert_array_equal(np.concatenate(batches[3:]), epoch_order(10, 5, 2))
    plain = np.concatenate([b[0][:, 0] for b in epochs_of(PatchBatches(x, x, 4), 1)])
    np.testing.assert_array_equal(plain, np.arange(10))
    with pytest.raises(IndexError):
        PatchBatches(x, x, 4)[3]


def test_batches_flip_rows_of_input_and_target_alike_per_seed_and_epoch():
    n = 12
    x = np.arange(n * 4 * 3, dtype=np.float32).reshape(n, 4, 3, 1)  # rows 0..3 distinct
    y = 2 * x
    plain = epochs_of(PatchBatches(x, y, 5, seed=3, first_epoch=0), 2)
    flipped = epochs_of(PatchBatches(x, y, 5, seed=3, first_epoch=0, flip_rows=True), 2)
    got_x = np.concatenate([b[0] for b in flipped])
    got_y = np.concatenate([b[1] for b in flipped])
    want = np.concatenate([b[0] for b in plain])
    flips = np.concatenate([epoch_flips(n, 3, e) for e in (0, 1)])
    assert 0 < flips.sum() < len(flips)
    np.testing.assert_array_equal(got_x[~flips], want[~flips])
    np.testing.assert_array_equal(got_x[flips], want[flips][:, ::-1])
    np.testing.assert_array_equal(got_y, 2 * got_x)  # the target mirrored with its input
    assert not np.array_equal(epoch_flips(n, 3, 0), epoch_flips(n, 3, 1))
    np.testing.assert_array_equal(x, np.arange(n * 4 * 3).reshape(n, 4, 3, 1))  # left intact
    # validation (no first epoch) is never flipped
    val = np.concatenate([b[0] for b in epochs_of(PatchBatches(x, y, 5, flip_rows=True), 2)])
    np.testing.assert_array_equal(val, np.concatenate([x, x]))


def test_batches_take_the_given_rows():
    x = np.arange(20, dtype=np.float32)[:, None]
    rows = np.array([3, 5, 7, 11, 13, 17, 19])
    batches = epochs_of(PatchBatches(x, 2 * x, 3, rows=rows, seed=2, first_epoch=0), 2)
    assert [len(b[0]) for b in batches] == [3, 3, 1, 3, 3, 1]
    got = np.concatenate([b[0][:, 0] for b in batches])
    want = np.concatenate([rows[epoch_order(7, 2, e)] for e in (0, 1)])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.concatenate([b[1][:, 0] for b in batches]), 2 * want)
    val = np.concatenate([b[0][:, 0] for b in epochs_of(PatchBatches(x, x, 4, rows=rows[::-1]), 1)])
    np.testing.assert_array_equal(val, rows[::-1])


def test_training_refuses_a_backend_keras_does_not_run_on(tmp_path):
    other = next(b for b in ("jax", "tensorflow") if b != BACKEND)
    npz, index = tiny_data(tmp_path)
    with pytest.raises(InputError, match=f"training.backend is {other} but Keras runs on"):
        train(
            npz, index, G, TINY, training_config(backend=other), {}, 1,
            tmp_path / "u.keras", tmp_path / "m.json", tmp_path / "h.csv", tmp_path / "c",
        )  # fmt: skip


@pytest.mark.slow
def test_same_seed_same_weights_on_cpu(tmp_path):
    run(tmp_path, "a", seed=11)
    run(tmp_path, "b", seed=11)
    run(tmp_path, "c", seed=12)
    w = {k: keras.models.load_model(tmp_path / k / "unet.keras").get_weights() for k in "abc"}
    assert all(np.array_equal(x, y) for x, y in zip(w["a"], w["b"], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(w["a"], w["c"], strict=True))


def test_learning_rate_schedules():
    cfg = training_config(epochs=4, learning_rate=1e-3, min_lr=1e-4, warmup_epochs=1)
    sched = learning_rate(cfg, 10)
    lr = [float(keras.ops.convert_to_numpy(sched(step))) for step in range(41)]
    assert lr[0] == pytest.approx(1e-5)
    assert all(a < b for a, b in zip(lr[:10], lr[1:11], strict=True))  # warm-up rises
    assert lr[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lr[10:40], lr[11:41], strict=True))  # then decays
    assert lr[40] == pytest.approx(1e-4)
    no_warmup = learning_rate(training_config(epochs=2, warmup_epochs=0), 5)
    assert float(keras.ops.convert_to_numpy(no_warmup(0))) == pytest.approx(1e-3)
    assert learning_rate(training_config(schedule="plateau", learning_rate=2e-3), 10) == 2e-3
    with pytest.raises(ValueError, match="training.schedule 'step'"):
        learning_rate(training_config(schedule="step"), 10)


def test_gradients_are_clipped_to_the_global_norm():
    model = compiled_model(G, TINY, training_config(clipnorm=0.5), 10)
    assert model.optimizer.global_clipnorm == 0.5
    assert (
        compiled_model(G, TINY, training_config(clipnorm=None), 10).optimizer.global_clipnorm
        is None
    )
