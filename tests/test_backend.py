"""The Keras backend: choosing it, and models that load and predict alike under every backend."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from srsmlm import backend as backends
from srsmlm.backend import BACKENDS, framework_versions, use_backend
from srsmlm.errors import InputError

from .backend_models import FOLDER, GEOMETRY, fixed_batch
from .pipeline import REPO

keras = pytest.importorskip("keras")
from srsmlm.model import load_model  # noqa: E402

BACKEND = keras.backend.backend()
INSTALLED = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
SAVED = sorted(p.stem for p in FOLDER.glob("*.keras"))
TOLERANCE = 1e-4  # float32 round-off of different kernels


def test_use_backend_keeps_the_running_one_and_refuses_to_switch():
    assert use_backend(BACKEND) == BACKEND and os.environ["KERAS_BACKEND"] == BACKEND
    other = next(b for b in BACKENDS if b != BACKEND)
    with pytest.raises(InputError, match=f"already imported with the {BACKEND} backend"):
        use_backend(other)
    with pytest.raises(InputError, match="unknown training.backend 'theano'"):
        use_backend("theano")


def test_use_backend_names_the_extra_of_a_missing_framework(monkeypatch):
    monkeypatch.setattr(backends, "current_backend", lambda: None)
    monkeypatch.setattr(backends, "installed", lambda name: False)
    with pytest.raises(InputError, match=r'torch is not installed.*pip install -e "\.\[torch\]"'):
        use_backend("torch")
    with pytest.raises(InputError, match=r'pip install -e "\.\[cpu\]"'):
        use_backend("tensorflow")


def test_framework_versions_name_the_framework():
    versions = framework_versions(BACKEND)
    assert {"python", "keras", "numpy"} <= set(versions)
    assert set(backends.DISTRIBUTIONS[BACKEND]) & set(versions)
    others = {d for b, ds in backends.DISTRIBUTIONS.items() if b != BACKEND for d in ds}
    assert not others & set(versions) - set(backends.DISTRIBUTIONS[BACKEND])


@pytest.mark.parametrize("made_under", SAVED)
def test_a_model_saved_under_any_backend_predicts_the_same_here(made_under):
    """Models trained under TensorFlow, JAX and PyTorch (tests/backend_models.py), loaded and
    run under the backend this test runs on."""
    meta = json.loads((FOLDER / f"{made_under}.json").read_text())
    assert meta["backend"] == made_under
    model = load_model(FOLDER / f"{made_under}.keras", FOLDER / f"{made_under}.json", GEOMETRY)
    got = np.asarray(model.predict_on_batch(fixed_batch()))
    want = np.load(FOLDER / f"{made_under}.npy")
    assert want.std() > 1e-3  # a real prediction, not a constant
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_saved_models_cover_every_backend():
    assert SAVED == sorted(BACKENDS)


PREDICT = """
import sys, numpy as np
from srsmlm.backend import use_backend
use_backend(sys.argv[1])
from srsmlm.model import load_model
from tests.backend_models import GEOMETRY, fixed_batch
model = load_model(sys.argv[2], sys.argv[3], GEOMETRY)
np.save(sys.argv[4], np.asarray(model.predict_on_batch(fixed_batch())))
"""


@pytest.mark.slow
@pytest.mark.parametrize("other", INSTALLED)
def test_a_model_trained_here_predicts_the_same_under_every_installed_backend(other, tmp_path):
    from .backend_models import make

    path = make(tmp_path)
    out = tmp_path / f"under-{other}.npy"
    env = {**os.environ, "KERAS_BACKEND": other, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [
        sys.executable,
        "-c",
        PREDICT,
        other,
        str(path),
        str(path.with_suffix(".json")),
        str(out),
    ]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    want = np.load(path.with_suffix(".npy"))
    np.testing.assert_allclose(np.load(out), want, rtol=0, atol=TOLERANCE)
