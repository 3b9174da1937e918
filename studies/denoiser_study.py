"""Does the denoised readout beat the raw fit? Retrains the U-Net on a finished demo run's
dataset with several losses / training lengths and reads the denoised spectra against the truth.

Runs on any Keras 3 backend (``KERAS_BACKEND=jax`` or ``torch`` on a GPU machine that has no
TensorFlow; the pipeline's own training needs TensorFlow). Each variant: Adam with the pipeline's
schedule (one-epoch warm-up, cosine decay to 0.1 x), global gradient clipping 1, batch 80, all
training patches (no validation split), the last epoch's weights; then the `demo_unseen` patches
of the run are denoised and read with the pipeline's readout (`srsmlm.profiles.profile_readout`: a
least-squares Gaussian fit of the 4-row profile), and scored with `srsmlm.evaluation.evaluate`
against the simulator's truth, next to the raw least-squares fit of the same run (the reference,
as a ratio). Prints one line per variant and the training / inference patches/s.

    KERAS_BACKEND=jax python studies/denoiser_study.py RUN_DIR [--variants mse:10 prof16:10 ...]

A variant is LOSS:EPOCHS[:SEED]; LOSS is ``mse``, ``profN`` (MSE plus N x the MSE of the
row-summed spectral profile) or ``cenN`` (MSE plus N x the squared spectral-centroid error, in
box widths).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the shared harness
from harness import load_config  # noqa: E402

from srsmlm.calibration import calibration_from_config
from srsmlm.evaluation import evaluate
from srsmlm.geometry import Geometry
from srsmlm.model import ModelConfig, build_unet
from srsmlm.profiles import profile_readout

BATCH = 80


def make_loss(kind: str, g: Geometry):
    """Per-patch loss: MSE, plus a profile or centroid term on the spectral part."""
    w0, ws = g.loc_width, g.spectral_width
    lam = float(kind[4:] or 0) if kind.startswith("prof") else float(kind[3:] or 0)

    def centroid(img):
        p = keras.ops.sum(img[:, :, w0:, 0], axis=1)
        tot = keras.ops.sum(p, axis=1)
        x = keras.ops.arange(ws, dtype="float32") + 0.5
        return keras.ops.sum(p * x, axis=1) / keras.ops.maximum(tot, 1e-6), tot

    def loss(yt, yp):
        mse = keras.ops.mean(keras.ops.square(yt - yp), axis=(1, 2, 3))
        if kind.startswith("prof"):
            pt = keras.ops.sum(yt[:, :, w0:, 0], axis=1) / g.height
            pp = keras.ops.sum(yp[:, :, w0:, 0], axis=1) / g.height
            return mse + lam * keras.ops.mean(keras.ops.square(pt - pp), axis=1)
        if kind.startswith("cen"):
            (ct, tt), (cp, _) = centroid(yt), centroid(yp)
            return mse + lam * keras.ops.cast(tt > 0, "float32") * keras.ops.square((cp - ct) / ws)
        if kind != "mse":
            raise ValueError(f"unknown loss {kind!r}: use mse, profN or cenN")
        return mse

    return loss


def train_variant(x, y, g: Geometry, mc: ModelConfig, kind: str, epochs: int, seed: int):
    keras.utils.set_random_seed(seed)
    model = build_unet(g, mc)
    steps = int(np.ceil(len(x) / BATCH))
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-5,
        decay_steps=max(1, (epochs - 1) * steps),
        alpha=0.1,
        warmup_target=1e-3,
        warmup_steps=steps,
    )
    model.compile(keras.optimizers.Adam(schedule, global_clipnorm=1.0), loss=make_loss(kind, g))
    t = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)
    return model, epochs * len(x) / (time.perf_counter() - t)


def score(run: Path, spectra: pd.DataFrame, tmp: Path, cfg: dict) -> dict:
    """The evaluation stage's errors (its ``spectra:`` settings from the run's config)."""
    spectra.to_csv(tmp / "spectra.csv", index=False)
    m = evaluate(
        [tmp / "spectra.csv"],
        [run / "results/simulated/demo_unseen/truth.csv"],
        ["demo_unseen"],
        cfg["spectra"]["signal_bins"],
        cfg["spectra"]["tolerance_nm"],
        tmp / "m.json",
        tmp / "t.csv",
        [run / "results/demo_unseen/molecules.csv"],
    )
    return m["sc_error"]


def line(label: str, e: dict, ref: dict | None = None) -> str:
    bias = "/".join(f"{v:+.2f}" for v in e["bias_by_true_dye_nm"].values())
    s = f"{label:24s} median {e['median_abs_error_nm']:.2f} RMSE {e['rmse_nm']:.2f} bias {bias}"
    if ref:
        s += (
            f"  | x raw fit: median {e['median_abs_error_nm'] / ref['median_abs_error_nm']:.3f}"
            f" RMSE {e['rmse_nm'] / ref['rmse_nm']:.3f}"
        )
    return s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished demo run (its results/ and config/)")
    ap.add_argument("--variants", nargs="+", default=["mse:10", "mse:60", "prof16:10"])
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    cfg = load_config(args.run / "config/config.yaml")
    g = Geometry(**cfg["geometry"])
    mc = ModelConfig.from_config(cfg["model"])
    cal = calibration_from_config(cfg["spectra"], g)
    with np.load(args.run / "results/dataset/train.npz") as z:
        x, y = z["X"], z["Y"]
    den = args.run / "results/demo_unseen/denoised"
    unseen = tifffile.imread(den / "raw.tif").astype(np.float32)[..., None]
    table = pd.read_csv(den / "patches.csv")
    spectra = pd.read_csv(args.run / "results/demo_unseen/spectra.csv")
    print(
        f"backend {keras.backend.backend()}; {len(x)} training patches; "
        f"offset_jitter {cfg['patches']['offset_jitter']}; {len(unseen)} demo_unseen patches"
    )
    with tempfile.TemporaryDirectory() as d:
        base = score(args.run, spectra, Path(d), cfg)
        ref = base["raw_gaussian_fit"]
        print(line("raw least-squares fit", ref))
        print(line("pipeline's denoised fit", base["denoised_gaussian_fit"], ref))
        for v in args.variants:
            kind, epochs, *seed = v.split(":")
            model, rate = train_variant(
                x, y, g, mc, kind, int(epochs), int(seed[0]) if seed else 42
            )
            t = time.perf_counter()
            pred = model.predict(unseen, batch_size=1024, verbose=0)[..., 0]
            infer = len(unseen) / (time.perf_counter() - t)
            r = profile_readout(pred, table, g, cal, int(cfg["spectra"]["profile_rows"]))
            fit = pd.Series(r["fit_centre"], index=table["localization_index"].to_numpy())
            e = score(
                args.run,
                spectra.assign(fit_denoised_centre_nm=spectra["localization_index"].map(fit)),
                Path(d),
                cfg,
            )
            print(
                line(v, e["denoised_gaussian_fit"], ref)
                + f"  | train {rate:.0f} patches/s, predict {infer:.0f} patches/s",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
