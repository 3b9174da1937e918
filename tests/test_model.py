import json

import numpy as np
import pytest

from srsmlm.errors import InputError
from srsmlm.geometry import Geometry

keras = pytest.importorskip("keras")
from srsmlm.model import ModelConfig, build_unet, check_geometry, load_model  # noqa: E402

from .conftest import section  # noqa: E402

pytestmark = pytest.mark.tf


def model_config(**overrides) -> ModelConfig:
    """The configured ``model:`` section with ``overrides``."""
    return ModelConfig.from_config(section("model", **overrides))


@pytest.mark.parametrize(
    "geometry, depth",
    [
        (Geometry(16, 16, 48, 230), 3),
        (Geometry(16, 16, 48, 230), 4),
        (Geometry(8, 8, 24, 100), 2),
        (Geometry(32, 16, 48, 230), 1),
    ],
)
def test_output_shape_matches_input(geometry, depth):
    model = build_unet(geometry, model_config(depth=depth, base_filters=4, kernel_size=3))
    x = np.zeros((2, geometry.height, geometry.width, 1), np.float32)
    assert model(x).shape == (2, geometry.height, geometry.width, 1)


def test_guide_architecture():
    """The guide's net: the configured levels with its 6x6 kernels and sigmoid output."""
    guide = model_config(depth=3, base_filters=16, kernel_size=6, output_activation="sigmoid")
    model = build_unet(Geometry(16, 16, 48, 230), guide)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [16, 16, 32, 32, 64, 64, 128, 64, 32, 16, 1]
    assert convs[0].kernel_size == (6, 6) and convs[-1].kernel_size == (1, 1)
    assert [c.strides for c in convs[:6]] == [(1, 1), (2, 2)] * 3
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert 1_300_000 < model.count_params() < 1_400_000  # the guide's net: ~1.36 M parameters


def test_geometry_not_divisible_is_a_config_error():
    with pytest.raises(
        InputError, match="model.depth=3 needs patch height and width divisible by 8"
    ):
        check_geometry(Geometry(12, 16, 48, 230), model_config(depth=3))
    with pytest.raises(InputError, match="model.depth"):
        build_unet(Geometry(16, 16, 44, 230), model_config(depth=3))


def test_load_model_refuses_other_geometry(tmp_path):
    g = Geometry(16, 16, 48, 230)
    model = build_unet(g, model_config(depth=2, base_filters=2, kernel_size=3))
    model.save(tmp_path / "m.keras")
    (tmp_path / "m.json").write_text(json.dumps({"geometry": g.to_dict()}))
    assert load_model(tmp_path / "m.keras", tmp_path / "m.json", g).output_shape == (
        None,
        16,
        64,
        1,
    )
    with pytest.raises(InputError, match="trained for geometry"):
        load_model(tmp_path / "m.keras", tmp_path / "m.json", Geometry(16, 16, 48, 200))


def test_minmax_input_normalisation_layer_survives_saving(tmp_path):
    g = Geometry(16, 16, 48, 230)
    model = build_unet(
        g, model_config(depth=2, base_filters=2, kernel_size=3, input_normalisation="minmax")
    )
    x = np.random.default_rng(0).random((3, 16, 64, 1)).astype(np.float32) * 0.01 + 0.002
    # invariant to camera offset and gain
    np.testing.assert_allclose(model(x), model(x * 7 + 0.3), rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model(x), again(x), rtol=1e-6)
    with pytest.raises(InputError, match="input_normalisation"):
        check_geometry(g, model_config(input_normalisation="zscore"))


def test_parts_normalisation_scales_each_part_and_survives_saving(tmp_path):
    g = Geometry(16, 16, 48, 230)
    cfg = model_config(depth=2, base_filters=2, kernel_size=3, input_normalisation="parts")
    model = build_unet(g, cfg)
    layer = model.get_layer("parts")
    x = np.random.default_rng(1).random((2, 16, 64, 1)).astype(np.float32) * 0.01 + 0.002
    scaled = np.asarray(layer(x))
    for part in (scaled[:, :, :16], scaled[:, :, 16:]):  # each part spans [0, 1] on its own
        np.testing.assert_allclose(part.min(axis=(1, 2, 3)), 0, atol=1e-6)
        np.testing.assert_allclose(part.max(axis=(1, 2, 3)), 1, atol=1e-6)
    y = x.copy()
    y[:, :, 16:] = y[:, :, 16:] * 5 + 0.1  # a brighter spectrum: same normalised input
    np.testing.assert_allclose(layer(y), scaled, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "p.keras")
    again = keras.models.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(model(x), again(x), rtol=1e-6)
    assert again.get_layer("parts").loc_width == 16


def test_batch_norm_momentum_from_config():
    g = Geometry(16, 16, 48, 230)
    model = build_unet(
        g, model_config(depth=2, base_filters=2, kernel_size=3, batch_norm_momentum=0.8)
    )
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(la.momentum == 0.8 for la in bns)
