"""Does training and inference run on the GPU, and how fast, under a Keras backend? Installs
nothing.

Trains the configured U-Net (config/config.yaml) for 2 epochs on simulated 16 x 64 patches with
the pipeline's own training (``srsmlm.training.train``: seeded per-epoch order, validation,
per-epoch backup, the configured ``training:`` settings) under ``--backend`` (default: the
config's ``training.backend``), then runs one inference pass over the patches the way the
denoising stage does (``srsmlm.inference.predict_batches``). Prints the backend and device (GPU
name or CPU), training and inference patches/s (the first epoch, which includes compilation, is
reported apart), and the framework's peak device memory; then the same as one JSON line.
``--rules`` also runs the demo's ``train_unet`` and ``denoise_acquisition`` rules (Snakemake,
forced, under that backend, in the given working directory: the demo's by default, whose
model it replaces) and reports their times from the rules' benchmark files.

    python benchmarks/gpu_check.py --backend jax          # 8192 patches on a GPU, 320 on the CPU
    python benchmarks/gpu_check.py --small                # 320 patches: a minute or two on a CPU
    python benchmarks/gpu_check.py --backend torch --rules   # and the demo's two rules
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import REPO, section

from srsmlm.backend import BACKENDS, use_backend


def backend_option() -> str:
    """``--backend`` from the command line (before Keras is imported), else the config's."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--backend", choices=BACKENDS, default=section("training")["backend"])
    return ap.parse_known_args()[0].backend


BACKEND = use_backend(backend_option())
FRAMEWORK = importlib.import_module(BACKEND)

from srsmlm.dataset import save_npz  # noqa: E402
from srsmlm.geometry import Geometry  # noqa: E402
from srsmlm.inference import predict_batches  # noqa: E402
from srsmlm.model import ModelConfig, load_model  # noqa: E402
from srsmlm.simulate import pixel_integrals  # noqa: E402
from srsmlm.training import TrainingConfig, train  # noqa: E402

GEOMETRY = Geometry(16, 16, 48, 230)
SMALL, LARGE = 320, 8192


def simulated_patches(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw, clean) patches of shape (n, 16, 64, 1): a Gaussian spot in the localization box
    and its spectrum (wider along x) in the spectral box, Poisson noise on a background."""
    rng = np.random.default_rng(seed)
    h, w_loc, w_spec = GEOMETRY.height, GEOMETRY.loc_width, GEOMETRY.spectral_width
    cy = rng.uniform(6, h - 6, n)
    rows = pixel_integrals(cy, 1.3, np.zeros(n), h)
    spot_x = pixel_integrals(rng.uniform(6, w_loc - 6, n), 1.3, np.zeros(n), w_loc)
    spec_x = pixel_integrals(rng.uniform(14, w_spec - 14, n), 5.0, np.zeros(n), w_spec)
    clean = np.concatenate(
        [rows[:, :, None] * spot_x[:, None, :], rows[:, :, None] * spec_x[:, None, :]], axis=2
    )
    photons = rng.uniform(500, 3000, n)[:, None, None]
    raw = rng.poisson(clean * photons + 20.0) / 65536.0  # camera counts / 2**16, as the pipeline
    clean = clean / clean.max(axis=(1, 2), keepdims=True)
    return raw[..., None].astype(np.float32), clean[..., None].astype(np.float32)


def gpu_names() -> list[str]:
    """The GPUs the backend's framework sees, by name."""
    if BACKEND == "tensorflow":
        tf = FRAMEWORK
        gpus = tf.config.list_physical_devices("GPU")
        details = [tf.config.experimental.get_device_details(g) for g in gpus]
        return [d.get("device_name", g.name) for d, g in zip(details, gpus, strict=True)]
    if BACKEND == "jax":
        return [d.device_kind for d in FRAMEWORK.devices() if d.platform != "cpu"]
    torch = FRAMEWORK
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def device_name() -> str:
    """The first GPU's name as the framework reports it, or "CPU (<processor>)"."""
    gpus = gpu_names()
    if not gpus:
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"GPU: {gpus[0]}"


def peak_gpu_memory_mib() -> float | None:
    """The framework's peak memory on the first GPU so far (MiB); None without a GPU or where
    the framework does not report it."""
    if not gpu_names():
        return None
    if BACKEND == "tensorflow":
        return FRAMEWORK.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    if BACKEND == "torch":
        return FRAMEWORK.cuda.max_memory_allocated(0) / 2**20
    device = next(d for d in FRAMEWORK.devices() if d.platform != "cpu")
    stats = device.memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def time_rules(workdir: Path, cores: int) -> dict[str, float]:
    """Run ``train_unet`` and ``denoise_acquisition`` (forced) with Snakemake in ``workdir``
    under this backend; their seconds from the rules' benchmark files (denoising summed over
    the acquisitions)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", str(cores), "--config"]
    cmd += [f"training={json.dumps({'backend': BACKEND})}"]  # merged into the config's
    cmd += ["--forcerun", "train_unet", "--until", "denoise_acquisition"]
    subprocess.run(cmd, cwd=workdir, check=True)
    bench = workdir / "benchmarks"
    denoise = [
        pd.read_csv(f, sep="\t")["s"].iloc[-1] for f in bench.glob("*/denoise_acquisition.tsv")
    ]
    return {
        "train_unet_s": float(pd.read_csv(bench / "train_unet.tsv", sep="\t")["s"].iloc[-1]),
        "denoise_acquisition_s": float(sum(denoise)),
        "denoised_acquisitions": len(denoise),
    }


def run(n: int, epochs: int, batch_size: int, inference_batch: int) -> dict[str, object]:
    """Train, then predict, in a temporary folder; returns the measurements."""
    x, y = simulated_patches(n)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        save_npz(folder / "train.npz", X=x, Y=y)
        pd.DataFrame(
            {
                "acquisition": "sim",
                "cluster": np.arange(n) // 4,
                "frame": np.arange(n),
                "kind": "signal",
                "split": "train",
            }
        ).to_csv(folder / "index.csv", index=False)
        cfg = TrainingConfig.from_config(
            section(
                "training",
                backend=BACKEND,
                epochs=epochs,
                batch_size=batch_size,
                patience=epochs + 1,
            )
        )
        meta = train(
            folder / "train.npz",
            folder / "index.csv",
            GEOMETRY,
            ModelConfig.from_config(section("model")),
            cfg,
            {"input_divisor": 65536},
            1,
            folder / "unet.keras",
            folder / "model.json",
            folder / "history.csv",
            folder / "checkpoint",
        )
        history = pd.read_csv(folder / "history.csv")
        model = load_model(folder / "unet.keras", folder / "model.json", GEOMETRY)
        t0 = time.perf_counter()
        predict_batches(model, x[:inference_batch], inference_batch)  # trace and compile
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        predict_batches(model, x, inference_batch)
        inference = time.perf_counter() - t0
    steady = history["seconds"].iloc[1:].min() if len(history) > 1 else float("nan")
    return {
        "backend": BACKEND,
        "device": device_name(),
        "versions": meta["versions"],
        "patches": n,
        "train_patches": meta["data"]["train_patches"],
        "epochs": len(history),
        "batch_size": batch_size,
        "train_patches_per_s": meta["data"]["train_patches"] / steady,
        "first_epoch_s": float(history["seconds"].iloc[0]),
        "compile_s": float(history["seconds"].iloc[0] - steady),
        "inference_patches_per_s": n / inference,
        "inference_warmup_s": warmup,
        "peak_gpu_memory_mib": peak_gpu_memory_mib(),
        "final_loss": float(history["loss"].iloc[-1]),
    }


def main() -> None:
    """Parse the options, run, print plain lines and one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=BACKENDS, help="default: the config's training.backend")
    ap.add_argument("--small", action="store_true", help=f"{SMALL} patches (CPU-friendly)")
    ap.add_argument("--patches", type=int, help=f"default {LARGE} on a GPU, {SMALL} on the CPU")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=section("training")["batch_size"],
        help="training batch (default: the config's)",
    )
    ap.add_argument(
        "--inference-batch",
        type=int,
        default=section("inference")["batch_size"],
        help="inference batch (default: the config's)",
    )
    ap.add_argument(
        "--rules",
        nargs="?",
        const=REPO,
        type=Path,
        metavar="WORKDIR",
        help="also time the train_unet and denoise_acquisition rules there (default: the demo)",
    )
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="Snakemake's --cores")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch includes compilation)")
    n = args.patches or (SMALL if args.small or not gpu_names() else LARGE)
    r = run(n, args.epochs, args.batch_size, args.inference_batch)
    if args.rules is not None:
        r["rules"] = time_rules(args.rules.resolve(), args.cores)
    framework = {k: v for k, v in r["versions"].items() if k not in ("python", "numpy")}
    print(f"backend: {BACKEND} ({', '.join(f'{k} {v}' for k, v in framework.items())})")
    print(f"device: {r['device']}")
    print(
        f"training: {r['train_patches_per_s']:.1f} patches/s ({r['train_patches']} patches, "
        f"batch {r['batch_size']}, epochs after the first); first epoch {r['first_epoch_s']:.1f} s "
        f"(compile ~{r['compile_s']:.1f} s)"
    )
    print(
        f"inference: {r['inference_patches_per_s']:.1f} patches/s ({r['patches']} patches, "
        f"batch {args.inference_batch}); warm-up {r['inference_warmup_s']:.1f} s"
    )
    peak = r["peak_gpu_memory_mib"]
    print("peak GPU memory: " + (f"{peak:.0f} MiB" if peak is not None else "n/a"))
    if "rules" in r:
        t = r["rules"]
        print(
            f"rules: train_unet {t['train_unet_s']:.1f} s, denoise_acquisition "
            f"{t['denoise_acquisition_s']:.1f} s ({t['denoised_acquisitions']} acquisition(s))"
        )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
