import numpy as np
import pandas as pd

from srsmlm.plots import render_arrays, rendering


def test_render_arrays_keeps_mass_and_colours_by_centroid():
    x = np.array([10.5, 10.5, 20.5, 30.0])
    y = np.array([5.5, 5.5, 15.5, 8.0])
    sc = np.array([600.0, 600.0, 640.0, np.nan])  # the last has no centroid: density only
    density, mean_sc, extent = render_arrays(x, y, sc, zoom=4, sigma_px=0.5)
    np.testing.assert_allclose(density.sum(), 4, rtol=1e-3)  # the blur keeps every localization
    assert extent == (9.0, 32.25, 17.25, 4.0)  # 3 sigma of margin, 1/zoom px bins
    row, col = int((5.5 - 4) * 4), int((10.5 - 9) * 4)
    assert density[row, col] == density.max()  # two localizations stack there
    np.testing.assert_allclose(mean_sc[row, col], 600)
    np.testing.assert_allclose(mean_sc[int((15.5 - 4) * 4), int((20.5 - 9) * 4)], 640)
    assert np.isnan(mean_sc[int((8 - 4) * 4), int((30 - 9) * 4)])  # no centroid there


def test_rendering_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "x": rng.uniform(0, 50, 200),
            "y": rng.uniform(0, 30, 200),
            "sc_denoised_nm": rng.normal(610, 20, 200),
        }
    )
    rendering(table, tmp_path / "r.png", zoom=4, sigma_px=0.3)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
