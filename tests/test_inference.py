import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from srsmlm.dataset import save_npz
from srsmlm.errors import InputError
from srsmlm.geometry import Geometry

keras = pytest.importorskip("keras")
from srsmlm.inference import (  # noqa: E402
    denoise_acquisition,
    evaluate_test,
    predict_batches,
    psnr,
    scale_to_range,
)
from srsmlm.model import ModelConfig, build_unet  # noqa: E402

from .conftest import section  # noqa: E402

pytestmark = pytest.mark.tf

G = Geometry(16, 16, 48, 230)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny = section("model", depth=2, base_filters=2, kernel_size=3, output_activation="linear")
    model = build_unet(G, ModelConfig.from_config(tiny))
    model.save(d / "unet.keras")
    (d / "model.json").write_text(json.dumps({"geometry": G.to_dict()}))
    return d / "unet.keras", d / "model.json"


def test_predict_batches_independent_of_batch_size(tiny_model):
    model = keras.models.load_model(tiny_model[0])
    x = np.random.default_rng(0).random((37, 16, 64)).astype(np.float32)
    a = predict_batches(model, x, 5)
    b = predict_batches(model, x, 64)
    assert a.shape == (37, 16, 64)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scale_to_range_and_psnr():
    raw = np.array([[[1.0, 3.0]]])
    target = np.array([[[0.0, 0.5]]])
    np.testing.assert_allclose(scale_to_range(raw, target), target)
    assert psnr(np.array([0.01]))[0] == pytest.approx(20.0)


def test_evaluate_test_writes_metrics(tiny_model, tmp_path):
    x = np.random.default_rng(1).random((10, 16, 64, 1)).astype(np.float32)
    save_npz(tmp_path / "test.npz", X=x, Y=x)
    m = evaluate_test(
        tmp_path / "test.npz", *tiny_model, G, 4, tmp_path / "m.json", tmp_path / "p.npz"
    )
    assert m["n_test"] == 10 and m["raw_scaled"]["mse"] == pytest.approx(0.0, abs=1e-12)
    with np.load(tmp_path / "p.npz") as z:
        assert z["P"].shape == (10, 16, 64)
    assert "spectral_shift_nm" not in m


def test_spectral_shift_measures_a_known_shift():
    from srsmlm.evaluation import spectral_shift

    cols = np.arange(48) + 0.5
    centres = np.linspace(10, 38, 30)
    target = np.zeros((31, 16, 64), np.float32)  # the last one: a background patch (no spectrum)
    pred = np.zeros_like(target)
    rows = np.exp(-0.5 * ((np.arange(16) - 7.5) / 1.3) ** 2)[:, None]
    for i, c in enumerate(centres):
        target[i, :, 16:] = rows * np.exp(-0.5 * ((cols - c) / 4) ** 2)
        pred[i, :, 16:] = rows * np.exp(-0.5 * ((cols - c - 0.25) / 4) ** 2)  # 0.25 px redder
    out = spectral_shift(pred, target, G, nm_per_px=2.0)
    assert out["n"] == 30 and out["failed_fits"] == 0
    assert out["mean_nm"] == pytest.approx(0.5, abs=1e-6)
    assert [b["n"] for b in out["by_position"]] == [10, 10, 10]
    assert all(b["median_nm"] == pytest.approx(0.5, abs=1e-6) for b in out["by_position"])
    assert out["by_position"][0]["target_from_nm"] == pytest.approx(20.0, abs=1e-6)
    # fixed 6-px bins of the box: centres 10-38 px fall in bins 6-12 ... 36-42
    assert [b["from_px"] for b in out["by_box_px"]] == [6, 12, 18, 24, 30, 36]
    assert sum(b["n"] for b in out["by_box_px"]) == 30
    assert all(b["median_nm"] == pytest.approx(0.5, abs=1e-6) for b in out["by_box_px"])


def run_denoise(tmp_path, tiny_model, o, **kwargs):
    """denoise_acquisition of tmp_path's loc.csv and s.ome.tif (batch and chunk 2) into ``o``."""
    outputs = (o / "raw.tif", o / "den.tif", o / "patches.csv", o / "skipped.csv")
    return denoise_acquisition(
        tmp_path / "loc.csv", tmp_path / "s.ome.tif", *tiny_model, G, 2, 2, *outputs, **kwargs
    )


def test_denoise_every_localization_in_order(tiny_model, tmp_path):
    stack = np.random.default_rng(2).integers(90, 110, (6, 64, 320)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, ome=True, metadata={"axes": "TYX"})
    locs = pd.DataFrame(
        {
            "frame": [3, 1, 6, 2, 5],
            "x": [40.5, 20.2, 41.0, 3.5, 30.0],  # 4th: box leaves the frame on the left
            "y": [30.5, 20.1, 40.0, 30.0, 50.0],
            "signal": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    locs["pixel_x"] = np.floor(locs["x"]).astype(int)
    locs["pixel_y"] = np.floor(locs["y"]).astype(int)
    locs.to_csv(tmp_path / "loc.csv", index=False)
    o = tmp_path / "out"
    counts = run_denoise(tmp_path, tiny_model, o)
    assert counts == {"localizations": 5, "skipped_outside_frame": 1, "denoised": 4}
    table = pd.read_csv(o / "patches.csv")
    assert table["localization_index"].tolist() == [0, 1, 2, 4]
    assert table["signal"].tolist() == [1.0, 2.0, 3.0, 5.0]
    raw = tifffile.imread(o / "raw.tif")
    den = tifffile.imread(o / "den.tif")
    assert raw.shape == den.shape == (4, 16, 64)
    np.testing.assert_allclose(raw[0, :, :16], stack[2, 22:38, 32:48] / 2**16)
    skipped = pd.read_csv(o / "skipped.csv")
    assert (
        skipped["localization_index"].tolist() == [3]
        and skipped["reason"].iloc[0] == "box leaves the frame"
    )
    assert table["denoised_shifts"].tolist() == [1, 1, 1, 1]


def test_denoise_with_shifts_fits_every_shifted_prediction(tiny_model, tmp_path):
    """Cycle spinning: denoised.tif still holds the unshifted predictions (the same as without
    shifts); the table's denoised fit averages one prediction per shift that fits the frame,
    each equal to the prediction of the patch cut at the moved box."""
    from srsmlm.boxes import extract_patches, place_boxes
    from srsmlm.model import load_model
    from srsmlm.profiles import shift_fits
    from srsmlm.stack import Stack

    rng = np.random.default_rng(5)
    stack = rng.integers(90, 110, (3, 64, 320)).astype(np.uint16)
    for f, (x, y) in enumerate(
        [(30, 20), (40, 40), (41, 30)]
    ):  # the last box ends at column 318: +2 leaves the frame
        stack[f, y - 1 : y + 2, x + 240 : x + 250] += 400
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, ome=True, metadata={"axes": "TYX"})
    locs = pd.DataFrame({"frame": [1, 2, 3], "x": [30.5, 40.5, 41.5], "y": [20.5, 40.5, 30.5]})
    locs["pixel_x"], locs["pixel_y"] = [30, 40, 41], [20, 40, 30]
    locs.to_csv(tmp_path / "loc.csv", index=False)
    outs = {}
    for name, shifts in (("plain", (0,)), ("spun", (-2, 0, 2))):
        o = tmp_path / name
        run_denoise(tmp_path, tiny_model, o, shifts=shifts, profile_rows=4)
        outs[name] = (tifffile.imread(o / "den.tif"), pd.read_csv(o / "patches.csv"))
    # (equal up to float32 round-off: oneDNN sums depend on how patches are batched, up to
    # ~6e-5 relative after the network's layers)
    np.testing.assert_allclose(outs["plain"][0], outs["spun"][0], rtol=1e-4, atol=1e-6)
    table = outs["spun"][1]
    assert table["denoised_shifts"].tolist() == [3, 3, 2]
    model = load_model(*tiny_model, G)
    boxes = place_boxes(locs["frame"], locs["pixel_x"], locs["pixel_y"], G)
    pred, ok = [], np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
    with Stack(tmp_path / "s.ome.tif") as st:
        for k, s in enumerate((-2, 0, 2)):
            moved = dataclasses.replace(boxes, spec_col0=boxes.spec_col0 + np.where(ok[k], s, 0))
            pred.append(predict_batches(model, extract_patches(st, moved, G), 2))
    expected = shift_fits(
        np.stack(pred), ok, locs["y"], boxes.spec_row0, np.array([-2, 0, 2]), G, 4
    )
    for key in ("centre_px", "centre_sd_px", "width_px", "amplitude", "residual"):
        np.testing.assert_allclose(table[f"denoised_{key}"], expected[key], rtol=1e-5, atol=1e-6)


def test_denoise_refuses_shifts_without_zero(tmp_path):
    with pytest.raises(InputError, match="shifts_px.*lacks 0"):
        denoise_acquisition(
            *(tmp_path / n for n in ("loc.csv", "s.tif", "m.keras", "m.json")),
            G,
            2,
            2,
            *(tmp_path / n for n in ("a", "b", "c", "d")),
            shifts=(-1, 1),
        )


def test_denoise_refuses_model_of_other_geometry(tiny_model, tmp_path):
    with pytest.raises(InputError, match="trained for geometry"):
        denoise_acquisition(
            tmp_path / "loc.csv",
            tmp_path / "s.tif",
            *tiny_model,
            Geometry(16, 16, 48, 200),
            2,
            2,
            tmp_path / "a",
            tmp_path / "b",
            tmp_path / "c",
            tmp_path / "d",
        )
