import numpy as np
import pandas as pd
import pytest

from srsmlm.errors import InputError
from srsmlm.localizations import filter_localizations, filter_stage, read_localizations, split_unit

from .conftest import DATA


def test_split_unit():
    assert split_unit("X (nm)") == ("X", "nm")
    assert split_unit("x [nm]") == ("x", "nm")
    assert split_unit("Frame") == ("Frame", None)
    assert split_unit("Intensity (photon)") == ("Intensity", "photon")


def test_peakfit_v2_reads_header_block_and_keeps_columns():
    df = read_localizations(DATA / "peakfit_v2.results.xls", "peakfit")
    assert len(df) == 4
    assert df["frame"].tolist() == [1, 2, 2, 5]
    assert df["x"].iloc[0] == pytest.approx(100.42)
    assert df["y"].iloc[2] == pytest.approx(200.12)
    assert df["signal"].tolist() == [8000.0, 4500.5, 6100.0, 7000.0]
    assert df["pixel_x"].tolist() == [100, 100, 30, 215]  # origX, not floor(X)
    assert df["pixel_y"].tolist() == [50, 50, 200, 245]
    for original in ("Frame", "origX", "Signal", "X SD", "Precision"):
        assert original in df.columns


def test_peakfit_v4_units_and_intensity():
    df = read_localizations(DATA / "peakfit_v4.results.xls", "peakfit")
    assert df["frame"].tolist() == [3, 4]
    assert df["signal"].tolist() == [1500.0, 1700.0]  # "Intensity (photon)"
    assert df["x"].tolist() == pytest.approx([12.25, 12.30])
    assert df["pixel_y"].tolist() == [40, 40]


def test_peakfit_v4_in_nm_needs_pixel_size(tmp_path):
    text = (
        (DATA / "peakfit_v4.results.xls")
        .read_text()
        .replace("X (px)", "X (nm)")
        .replace("Y (px)", "Y (nm)")
    )
    p = tmp_path / "nm.results.xls"
    p.write_text(text)
    with pytest.raises(InputError, match="in nm"):
        read_localizations(p, "peakfit")
    df = read_localizations(p, "peakfit", pixel_size_nm=10.0)
    assert df["x"].iloc[0] == pytest.approx(1.225)


def test_peakfit_imagej_csv_export():
    df = read_localizations(DATA / "peakfit_imagej.csv", "peakfit")
    assert df[["frame", "pixel_x", "pixel_y"]].iloc[0].tolist() == [7, 20, 30]
    assert df["signal"].iloc[0] == 3000.0


def test_thunderstorm_nm_to_px():
    df = read_localizations(DATA / "thunderstorm.csv", "thunderstorm", pixel_size_nm=107.0)
    assert df["x"].tolist() == pytest.approx([10.0, 1080.7 / 107, 200.0])
    assert df["y"].tolist() == pytest.approx([5.0, 545.7 / 107, 100.0])
    assert df["pixel_x"].tolist() == [10, 10, 200]  # floor of the position
    assert df["signal"].tolist() == [2500.0, 2600.0, 800.0]
    assert "uncertainty [nm]" in df.columns


def test_thunderstorm_older_variant():
    df = read_localizations(DATA / "thunderstorm_old.csv", "thunderstorm", pixel_size_nm=160.0)
    assert (df["x"].iloc[0], df["y"].iloc[0]) == pytest.approx((1.0, 2.0))


@pytest.mark.parametrize(
    "content, fmt, kwargs, match",
    [
        (None, "peakfit", {}, "not found"),
        ("a\tb\tc\n1\t2\t3\n", "peakfit", {}, "none of the known peakfit column headers"),
        (
            "#Frame\torigX\torigY\tX\tY\n1\t1\t1\t1.5\t1.5\n",
            "peakfit",
            {},
            r"missing required column\(s\): signal",
        ),
        (
            "#Frame\tX\tY\tSignal\n1\t1.5\t2.5\t100\n2\t1.5\tabc\t100\n",
            "peakfit",
            {},
            "non-numeric .* column 'Y'",
        ),
        ("#Frame\tX\tY\tSignal\n", "peakfit", {}, "no rows"),
        (
            '"frame","x [nm]","y [nm]","intensity [photon]"\n1,10,10,5\n',
            "thunderstorm",
            {},
            "no pixel size",
        ),
        (
            '"frame","x [nm]","y [nm]","intensity [photon]"\n1,10,10,5\n',
            "nikon",
            {},
            "unknown localization format",
        ),
        ("#Frame\tX\tY\tSignal\n1\t1.5\t2.5\t100\n2\t1.5", "peakfit", {}, "truncated|non-numeric"),
        ("#Frame\tX\tY\tSignal\n1.5\t1.5\t2.5\t100\n", "peakfit", {}, "whole numbers"),
    ],
)
def test_bad_tables(tmp_path, content, fmt, kwargs, match):
    p = tmp_path / "table.xls"
    if content is not None:
        p.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        read_localizations(p, fmt, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and str(p) in msg and "Fix:" in msg


def _table():
    return pd.DataFrame(
        {
            "frame": [1, 2, 3, 4, 5],
            "x": [5.0, 15.0, 100.0, 219.9, 230.0],
            "y": [20.0, 9.0, 100.0, 249.0, 30.0],
            "signal": [6000.0, 7000.0, 4000.0, 5001.0, 9000.0],
        }
    )


def test_filter_counts_each_filter():
    kept, counts = filter_localizations(_table(), 5000, (10, 220), (10, 250))
    assert kept["frame"].tolist() == [4]
    assert counts == {"input": 5, "removed_signal": 1, "removed_x": 2, "removed_y": 1, "kept": 1}


def test_filters_off():
    kept, counts = filter_localizations(_table(), None, None, None)
    assert len(kept) == 5 and counts["kept"] == 5


def test_filter_bounds_are_exclusive():
    kept, _ = filter_localizations(_table().assign(signal=5000.0), 5000, None, None)
    assert kept.empty


def test_filter_stage_nothing_left_names_filters_and_writes_nothing(tmp_path):
    out = tmp_path / "localizations.csv"
    with pytest.raises(InputError, match=r"min_signal=1000000.0 removed 4") as info:
        filter_stage(DATA / "peakfit_v2.results.xls", "peakfit", None, 1e6, None, None, out)
    assert "filter.min_signal" in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_filter_stage_writes_canonical_table(tmp_path):
    out = tmp_path / "localizations.csv"
    counts = filter_stage(
        DATA / "peakfit_v2.results.xls", "peakfit", None, 5000, [10, 220], [10, 250], out
    )
    df = pd.read_csv(out)
    assert counts["kept"] == 3
    assert list(df.columns[:6]) == ["frame", "x", "y", "signal", "pixel_x", "pixel_y"]
    assert np.array_equal(df["frame"], [1, 2, 5])
