"""Which deep-learning framework Keras runs on (``training.backend``); imports no Keras.

Keras 3 runs the U-Net on TensorFlow, JAX or PyTorch and saves backend-neutral ``.keras`` files.
Keras reads its backend from ``KERAS_BACKEND`` once, when it is first imported, so the scripts of
the training and inference rules call :func:`use_backend` before they import the modules that
import Keras (``srsmlm.model``, ``srsmlm.training``, ``srsmlm.inference``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

from .errors import InputError

BACKENDS = ("tensorflow", "jax", "torch")
EXTRAS = {"tensorflow": "cpu", "jax": "jax", "torch": "torch"}  # the extra that installs each
DISTRIBUTIONS = {  # the distributions whose versions are recorded for each backend
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "jax": ("jax", "jaxlib"),
    "torch": ("torch",),
}


def _check_name(name: str) -> None:
    if name not in BACKENDS:
        raise InputError(
            "config/config.yaml",
            f"unknown training.backend '{name}'",
            f"use one of {', '.join(BACKENDS)}",
        )


def installed(name: str) -> bool:
    """Whether the framework of backend ``name`` can be imported here."""
    _check_name(name)
    return importlib.util.find_spec(name) is not None


def current_backend() -> str | None:
    """The backend of the Keras already imported in this process, None before the import."""
    keras = sys.modules.get("keras")
    return None if keras is None else keras.backend.backend()


def use_backend(name: str) -> str:
    """Make Keras run on ``name`` (call before anything imports Keras); returns ``name``.

    :class:`~srsmlm.errors.InputError` when the name is unknown, its framework is not installed
    (naming the extra to install) or Keras already runs on another backend in this process.
    """
    _check_name(name)
    active = current_backend()
    if active is not None and active != name:
        raise InputError(
            None,
            f"Keras was already imported with the {active} backend, cannot switch to {name}",
            "call srsmlm.backend.use_backend before importing srsmlm.model, training or inference",
        )
    if not installed(name):
        raise InputError(
            "config/config.yaml",
            f"training.backend is {name} but {name} is not installed in this environment",
            f'pip install -e ".[{EXTRAS[name]}]" (or choose an installed backend)',
        )
    os.environ["KERAS_BACKEND"] = name
    if name == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return name


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def framework_versions(name: str) -> dict[str, str]:
    """Python, Keras, NumPy and the framework of backend ``name``, by distribution (for
    ``model.json``); distributions that are not installed are left out."""
    _check_name(name)
    versions = {"python": platform.python_version()}
    for dist in ("keras", "numpy", *DISTRIBUTIONS[name]):
        version = _version(dist)
        if version is not None:
            versions[dist] = version
    if name == "tensorflow" and "tensorflow-cpu" in versions:
        versions.setdefault("tensorflow", versions["tensorflow-cpu"])  # the package's version
    return versions
