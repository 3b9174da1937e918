import hashlib

import numpy as np
import pandas as pd
import pytest
import tifffile

from srsmlm.seeds import acquisition_seed
from srsmlm.simulate import _render_frame, draw_emissions, pixel_integrals

from .conftest import tiny_params


def test_pixel_integrals_sum_to_one_and_are_symmetric():
    g = pixel_integrals(np.array([10.5]), 1.3, np.array([0.0]), 21)
    assert g.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(g[0], g[0][::-1])


def test_blinking_runs_statistics():
    p = tiny_params(frames=20000, n_molecules=400, mean_run_length=14.0, runs_per_molecule=3.0)
    em = draw_emissions(p, np.random.default_rng(0))
    # run lengths of consecutive frames per molecule
    em = em.sort_values(["molecule", "frame"])
    new = (em["molecule"].diff() != 0) | (em["frame"].diff() != 1)
    lengths = new.cumsum().value_counts().to_numpy()
    # geometric lengths with mean 14 (merging of overlapping runs is rare over 20000 frames)
    assert lengths.mean() == pytest.approx(14.0, rel=0.1)
    assert (lengths > 8).mean() == pytest.approx((1 - 1 / 14) ** 8, abs=0.05)
    per_molecule = em.groupby("molecule")["run"].nunique().mean()
    assert per_molecule == pytest.approx(3.0, rel=0.1)


def test_photon_budget():
    p = tiny_params(mean_photons=3000.0, photon_cv=0.3, molecule_brightness_cv=0.25)
    em = draw_emissions(p, np.random.default_rng(1))
    assert em["photons"].mean() == pytest.approx(3000.0, rel=0.1)
    assert (em["spot_photons"] + em["spectrum_photons"] == em["photons"]).all()
    assert (em["spectrum_photons"].sum() / em["photons"].sum()) == pytest.approx(0.5, abs=0.01)


def test_rendered_photons_and_noise_free_spectral_centroid():
    p = tiny_params(background_photons=0.0, width=400)
    g = p.geometry
    em = pd.DataFrame(
        {
            "x": [30.3],
            "y": [32.6],
            "spot_photons": [1000.0],
            "spectrum_photons": [1500.0],
            "sc_true_nm": [603.7],
        }
    )
    pad = 60
    img = _render_frame(p, em, pad, 6, 40)[pad:-pad, pad:-pad]
    assert img.sum() == pytest.approx(2500.0, rel=1e-5)
    # localization spot: centroid at the true position (pixel centres at c + 0.5)
    spot = img[:, :100]
    yy, xx = np.mgrid[: img.shape[0], :100] + 0.5
    assert (spot * xx).sum() / spot.sum() == pytest.approx(30.3, abs=1e-3)
    assert (spot * yy).sum() / spot.sum() == pytest.approx(32.6, abs=1e-3)
    # spectrum: wavelength of pixel centre c + 0.5 relative to the molecule position
    spec = img[:, 100:].sum(axis=0)
    cols = np.arange(100, img.shape[1]) + 0.5
    lam = p.wavelength_at_offset_nm + (cols - 30.3 - g.spectral_offset) * p.nm_per_px
    assert (spec * lam).sum() / spec.sum() == pytest.approx(603.7, abs=0.5)


def test_same_seed_same_bytes(tmp_path):
    from srsmlm.simulate import simulate_acquisition

    p = tiny_params(frames=30, n_molecules=10)
    digests = []
    for k in range(2):
        d = tmp_path / str(k)
        simulate_acquisition(
            p, 5, "x", d / "s.ome.tif", d / "p.xls", d / "t.csv", d / "truth.csv", 107.0
        )
        digests.append(
            [
                hashlib.sha256((d / f).read_bytes()).hexdigest()
                for f in ("s.ome.tif", "p.xls", "t.csv", "truth.csv")
            ]
        )
    assert digests[0] == digests[1]
    assert tifffile.imread(tmp_path / "0" / "s.ome.tif").dtype == np.uint16


def test_seeds_differ_by_acquisition_and_stage():
    a = acquisition_seed(1, "a", "simulate").random()
    assert a != acquisition_seed(1, "b", "simulate").random()
    assert a != acquisition_seed(1, "a", "camera").random()
    assert a == acquisition_seed(1, "a", "simulate").random()


def test_tiny_acquisition_files(tiny_acquisition):
    stack = tifffile.TiffFile(tiny_acquisition["stack"])
    assert stack.is_ome and stack.series[0].shape == (120, 64, 320)
    lines = tiny_acquisition["peakfit"].read_text().splitlines()
    assert lines[0] == "#Localisation Results File" and lines[6].startswith("#Frame\torigX")
    truth = pd.read_csv(tiny_acquisition["truth"])
    assert {"frame", "x", "y", "photons", "sc_true_nm", "dye", "loc_x", "detected"} <= set(
        truth.columns
    )
    ts = pd.read_csv(tiny_acquisition["thunderstorm"])
    assert ts.columns[2] == "x [nm]"
    # false detections exist and are marked in neither truth nor the table
    assert len(ts) > truth["detected"].sum()
