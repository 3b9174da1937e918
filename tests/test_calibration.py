"""The px -> nm calibration fitted to beads."""

import numpy as np
import pandas as pd
import pytest

from srsmlm.calibration import fit_calibration
from srsmlm.errors import InputError


def test_calibration_fit_recovers_line(tmp_path):
    d = np.array([239.0, 269.0, 319.0, 250.0])
    lam = 560 + (d - 230) * 2.06 + np.array([0.1, -0.1, 0.05, -0.05])
    pd.DataFrame({"distance_px": d, "wavelength_nm": lam}).to_csv(
        tmp_path / "beads.csv", index=False
    )
    cal = fit_calibration(tmp_path / "beads.csv", 230)
    assert cal.nm_per_px == pytest.approx(2.06, abs=0.01)
    assert cal.wavelength_at_offset_nm == pytest.approx(560, abs=0.3)
    assert cal.residual_rms_nm < 0.1 and cal.n_points == 4
    assert cal.wavelength(np.array([230.0]), 230)[0] == pytest.approx(cal.wavelength_at_offset_nm)
    with pytest.raises(InputError, match="distance_px"):
        fit_calibration(pd.DataFrame({"d": [1, 2]}), 230)
    with pytest.raises(InputError, match="not found"):
        fit_calibration(tmp_path / "none.csv", 230)
