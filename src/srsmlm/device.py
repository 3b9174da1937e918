"""The device training runs on, for the Keras backend in use: GPU when the framework sees one.

Each framework finds its GPU on its own (TensorFlow: the CUDA wheels of the ``gpu`` extra; JAX: a
CUDA jaxlib plugin; PyTorch: a CUDA wheel), and Keras places the model there. Here the choice
is logged, CPU threads are capped to the job's, and op determinism is switched on when asked.
"""

from __future__ import annotations

import importlib
import logging
import os

import keras

log = logging.getLogger(__name__)


def _tensorflow(threads: int | None, deterministic: bool) -> str:
    """TensorFlow: thread pools, GPU memory growth, op determinism."""
    tf = importlib.import_module("tensorflow")  # the backend in use: already imported by Keras
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError:  # already initialised in this process
            pass
    if deterministic:
        # bitwise-reproducible kernels (matters on GPUs; Keras then turns XLA off)
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    return ", ".join(g.name for g in gpus)


def _jax(threads: int | None, deterministic: bool) -> str:
    """JAX: XLA's CPU runtime uses its own threads; determinism is an XLA flag on GPUs."""
    if deterministic:  # read when JAX first starts a backend: effective before any computation
        flags = os.environ.get("XLA_FLAGS", "")
        if "--xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()
    jax = importlib.import_module("jax")
    gpus = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
    return ", ".join(str(d) for d in gpus)


def _torch(threads: int | None, deterministic: bool) -> str:
    """PyTorch: intra-op threads, deterministic algorithms, CUDA devices."""
    torch = importlib.import_module("torch")
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if not torch.cuda.is_available():
        return ""
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


_SETUP = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}


def select_device(threads: int | None = None, deterministic: bool = False) -> str:
    """Use the GPU when the backend's framework sees one, else the CPU (at most ``threads``
    threads where the framework allows); deterministic kernels when ``deterministic``; log the
    choice. Returns "GPU" or "CPU"."""
    backend = keras.backend.backend()
    gpus = _SETUP[backend](threads, deterministic)
    if gpus:
        log.info("Keras backend %s, using GPU: %s", backend, gpus)
        return "GPU"
    log.info(
        "Keras backend %s, no GPU visible to it: training on the CPU (%s threads)",
        backend,
        threads or "all",
    )
    return "CPU"
