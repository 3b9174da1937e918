"""The spectra stage: refuses inputs it cannot read, with one line naming the fix."""

import numpy as np
import pandas as pd
import pytest

import srsmlm.spectra as spectra
from srsmlm.errors import InputError
from srsmlm.geometry import Geometry
from srsmlm.io import write_tif
from srsmlm.profiles import DENOISED_FIT_COLUMNS

G = Geometry(16, 16, 48, 230)


def test_spectra_stage_with_no_localization_names_the_cause(tmp_path):
    """Every box left the frame (denoise_acquisition wrote empty tables and TIFFs): one clear
    error naming the table and the geometry keys, and no output written."""
    cols = [*spectra.TABLE_COLUMNS, *DENOISED_FIT_COLUMNS]
    pd.DataFrame(columns=cols).to_csv(tmp_path / "patches.csv", index=False)
    pd.DataFrame(columns=["localization_index", "cluster"]).to_csv(
        tmp_path / "clusters.csv", index=False
    )
    for name in ("raw.tif", "denoised.tif"):
        write_tif(np.zeros((0, *G.shape), np.float32), tmp_path / name)
    outputs = [tmp_path / f for f in ("spectra.csv", "precision.csv", "molecules.csv")]
    with pytest.raises(InputError, match="no localization to read out.*spectral_offset"):
        spectra.spectra_stage(
            tmp_path / "patches.csv",
            tmp_path / "raw.tif",
            tmp_path / "denoised.tif",
            tmp_path / "clusters.csv",
            tmp_path / "stack.tif",
            G,
            {},
            {},
            0,
            *outputs,
        )
    assert not any(p.exists() for p in outputs)


def test_spectra_stage_refuses_a_patch_table_without_the_denoised_fit(tmp_path):
    """A patch table from before cycle spinning: one error naming the table and the rerun."""
    pd.DataFrame(columns=list(spectra.TABLE_COLUMNS)).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(InputError, match="p.csv.*denoised_centre_px.*rerun denoise_acquisition"):
        spectra.load_patch_table(tmp_path / "p.csv", tmp_path / "c.csv", (), G)
