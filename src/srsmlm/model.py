"""The U-Net of the guide, built for any geometry and depth (Keras 3, on any of its backends).

Depth 3, 16 base filters, 6x6 kernels and a sigmoid output reproduce the guide: encoder levels of
16/32/64 filters, each a convolution and a stride-2 convolution with LeakyReLU(0.2) and batch
norm, a 128-filter bottleneck; decoder levels of Conv2DTranspose + concatenation with the skip +
UpSampling2D + convolution; a 1x1 output convolution. The config's defaults keep the levels but
use 5x5 kernels (odd: no half-pixel shift) and a relu output (``model:`` in the schema).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import layers  # noqa: E402

from .errors import InputError, config_values  # noqa: E402
from .geometry import Geometry  # noqa: E402

ACTIVATIONS = ("sigmoid", "linear", "relu")
INPUT_NORMALISATIONS = ("parts", "minmax", "none")


def _minmax(x):
    """Each patch of a (N, H, W, 1) batch scaled to [0, 1] by its own minimum and maximum."""
    lo = keras.ops.min(x, axis=(1, 2, 3), keepdims=True)
    hi = keras.ops.max(x, axis=(1, 2, 3), keepdims=True)
    return (x - lo) / keras.ops.maximum(hi - lo, 1e-12)


@keras.saving.register_keras_serializable(package="srsmlm")
class MinMaxNormalisation(layers.Layer):
    """Scales each input patch to [0, 1] by its own minimum and maximum.

    Makes the network independent of camera offset and gain (raw counts / 2**16 are ~1e-3 on a
    low-gain camera, ~1e-1 on an EMCCD) while the stored patches keep the guide's units.
    """

    def call(self, x):
        return _minmax(x)


@keras.saving.register_keras_serializable(package="srsmlm")
class PartsNormalisation(layers.Layer):
    """Scales the localization part (first ``loc_width`` columns) and the spectral part of each
    patch to [0, 1] separately, as the targets are normalised part by part."""

    def __init__(self, loc_width: int, **kwargs):
        super().__init__(**kwargs)
        self.loc_width = int(loc_width)

    def call(self, x):
        w = self.loc_width
        return keras.ops.concatenate([_minmax(x[:, :, :w]), _minmax(x[:, :, w:])], axis=2)

    def get_config(self):
        return {**super().get_config(), "loc_width": self.loc_width}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (the ``model:`` config section; every key required, the defaults are the
    schema's); saved as JSON beside the weights (CSBDeep style)."""

    depth: int
    base_filters: int
    kernel_size: int
    output_activation: str
    input_normalisation: str
    batch_norm_momentum: float

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> ModelConfig:
        """From the ``model:`` section; :class:`~srsmlm.errors.ConfigKeyError` names a missing
        key."""
        return cls(**config_values(section, "model", cls.__dataclass_fields__))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_geometry(geometry: Geometry, config: ModelConfig) -> None:
    """The patch must halve ``depth`` times: height and width divisible by 2**depth."""
    f = 2**config.depth
    if geometry.height % f or geometry.width % f:
        raise InputError(
            "config/config.yaml",
            f"model.depth={config.depth} needs patch height and width divisible by {f}, but the "
            f"geometry gives {geometry.height} x {geometry.width}",
            "lower model.depth or change geometry.height / loc_width / spectral_width",
        )
    if config.input_normalisation not in INPUT_NORMALISATIONS:
        raise InputError(
            "config/config.yaml",
            f"unknown model.input_normalisation '{config.input_normalisation}'",
            f"use one of {', '.join(INPUT_NORMALISATIONS)}",
        )
    if config.output_activation not in ACTIVATIONS:
        raise InputError(
            "config/config.yaml",
            f"unknown model.output_activation '{config.output_activation}'",
            f"use one of {', '.join(ACTIVATIONS)}",
        )


def _conv(x, filters: int, k: int, momentum: float, strides: int = 1):
    x = layers.Conv2D(filters, k, strides=strides, padding="same", kernel_initializer="he_normal")(
        x
    )
    x = layers.LeakyReLU(negative_slope=0.2)(x)
    return layers.BatchNormalization(axis=-1, momentum=momentum)(x)


def build_unet(geometry: Geometry, config: ModelConfig) -> keras.Model:
    """U-Net mapping (height, width, 1) raw patches to clean patches of the same shape."""
    check_geometry(geometry, config)
    k, b, m = config.kernel_size, config.base_filters, config.batch_norm_momentum
    inputs = keras.Input((geometry.height, geometry.width, 1), name="raw")
    if config.input_normalisation == "minmax":
        x = MinMaxNormalisation(name="minmax")(inputs)
    elif config.input_normalisation == "parts":
        x = PartsNormalisation(geometry.loc_width, name="parts")(inputs)
    else:
        x = inputs
    skips = []
    for level in range(config.depth):
        x = _conv(x, b * 2**level, k, m)
        x = _conv(x, b * 2**level, k, m, strides=2)
        skips.append(x)
    x = _conv(x, b * 2**config.depth, k, m)
    for level in reversed(range(config.depth)):
        x = layers.Conv2DTranspose(b * 2**level, k, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = layers.UpSampling2D(size=2)(x)
        x = _conv(x, b * 2**level, k, m)
    outputs = layers.Conv2D(1, 1, activation=config.output_activation, name="clean")(x)
    return keras.Model(inputs, outputs, name="srsmlm_unet")


def read_model_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_model(model_path: str | Path, meta_path: str | Path, geometry: Geometry) -> keras.Model:
    """Load a trained model; refuse it if it was trained for another patch geometry."""
    meta = read_model_json(meta_path)
    trained = Geometry.from_config(meta["geometry"])
    if trained != geometry:
        raise InputError(
            meta_path,
            f"the model was trained for geometry {trained.to_dict()} but the config says "
            f"{geometry.to_dict()}",
            "use the geometry the model was trained with, or retrain (rerun train_unet)",
        )
    return keras.models.load_model(model_path, compile=False)
