import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from srsmlm.errors import InputError
from srsmlm.localizations import (
    filter_localizations,
    filter_stage,
    read_calibration,
    read_localizations,
    read_table,
    split_unit,
)

from .conftest import DATA

TABLES = DATA / "tables"
# CI checks shared/ out beside the clone; the real exports are read there, never copied
REAL = Path(__file__).resolve().parents[2] / "shared" / "realfiles"
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real ThunderSTORM exports not found at {REAL} (shared/ absent)"
)
# the three localizations every fixture in tests/data/tables holds (camera pixels)
FRAMES = [1, 2, 5]
X_PX = [100.42, 30.91, 215.5]
Y_PX = [50.61, 200.12, 245.2]
ORIG_X = [100, 30, 215]


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
    # TextFilePeakResults V4 in nm, with its #Calibration line removed: nothing gives the pixel size
    text = (TABLES / "peakfit_v4_nm_crlf.results.xls").read_text()
    p = tmp_path / "nm.results.xls"
    p.write_text("".join(line for line in text.splitlines(True) if "#Calibration" not in line))
    with pytest.raises(InputError, match="'X \\(nm\\)' is in nm but no pixel size"):
        read_localizations(p, "peakfit")
    df = read_localizations(p, "peakfit", pixel_size_nm=160.0)
    assert df["x"].tolist() == pytest.approx(X_PX)


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
        ("", "peakfit", {}, "the file is empty"),
        (
            "#Localisation Results File\n#FileVersion Text.D0.E0.V4\n",
            "peakfit",
            {},
            "no column header",
        ),
        (
            '"frame","x [mm]","y [mm]","intensity [photon]"\n1,1,1,5\n',
            "thunderstorm",
            {},
            "unknown unit 'mm'",
        ),
        (
            '"frame","x [nm]","y [nm]","intensity"\n1,1,1,5\n2,1,1,5,7\n3,1,1,5\n',
            "thunderstorm",
            {"pixel_size_nm": 100},
            "line 3 has 5 comma-separated fields but the header names 4",
        ),
    ],
)
def test_bad_tables(tmp_path, content, fmt, kwargs, match):
    p = tmp_path / "table.xls"
    if content is not None:
        p.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        read_localizations(p, fmt, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and str(p) in msg and "Fix:" in msg and "np." not in msg


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


# ---- the writers' layouts, one fixture each (tests/data/tables) ---------------------------------
def _through_filter(df: pd.DataFrame) -> pd.DataFrame:
    """The reader's table through the filter with bounds that keep every localization."""
    kept, counts = filter_localizations(df, 0.0, (0.0, 1000.0), (0.0, 1000.0))
    assert counts["kept"] == len(df)
    return kept


TRACE_X, TRACE_Y = [100.42, 100.47, 215.5], [50.61, 50.58, 245.2]
IJ2017_X, IJ2017_Y = [100.4, 30.91, 215.5], [50.61, 200.1, 245.2]  # 4 significant digits
OLD_NM_X = [10744.9 / 107, 3307.37 / 107, 23058.5 / 107]
OLD_NM_Y = [5415.27 / 107, 21412.8 / 107, 26236.4 / 107]

VARIANTS = [
    # GDSC SMLM gdsc.smlm.results.FilePeakResults, V1 (before 2017): Signal and Amplitude, XML #Calibration
    ("peakfit_v1.results.xls", None, FRAMES, X_PX, Y_PX, [8000.0, 6100.0, 4500.5]),
    # uk.ac.sussex.gdsc.smlm.results.TextFilePeakResults V3 (2017): units, JSON #Calibration, Precision (nm) '12.52*'
    ("peakfit_v3.results.xls", None, FRAMES, X_PX, Y_PX, [212.2016, 161.80371, 119.376656]),
    # TextFilePeakResults V4 in px, Id and End Frame columns, CRLF (written on Windows)
    ("peakfit_v4_px_crlf.results.xls", None, FRAMES, X_PX, Y_PX, [4000.0, 3050.0, 2250.25]),
    # TextFilePeakResults V4 in nm, CRLF; pixel size from its #Calibration nmPerPixel (160)
    ("peakfit_v4_nm_crlf.results.xls", None, FRAMES, X_PX, Y_PX, [4000.0, 3050.0, 2250.25]),
    # the same with the sheet's pixel size (equal to the file's)
    ("peakfit_v4_nm_crlf.results.xls", 160.0, FRAMES, X_PX, Y_PX, [4000.0, 3050.0, 2250.25]),
    # TextFilePeakResults V4 with deviations (Text.D1...): a '+/-' column after each parameter
    ("peakfit_v4_deviations.results.xls", None, FRAMES, X_PX, Y_PX, [4000.0, 3050.0, 2250.25]),
    # TextFilePeakResults V4 in micrometres: 'X (μm)', GREEK SMALL LETTER MU (GDSC UnitHelper)
    ("peakfit_v4_um.results.xls", None, FRAMES, X_PX, Y_PX, [4000.0, 3050.0, 2250.25]),
    # Trace Molecules: TextFilePeakResults.addTrace writes '#Trace ...' before each trace
    (
        "peakfit_trace_molecules.results.xls",
        None,
        FRAMES,
        TRACE_X,
        TRACE_Y,
        [4000.0, 3050.0, 2250.25],
    ),
    # ImageJTablePeakResults (2017+) saved by ImageJ as .csv: '#' counter, Source, T, 4 digits, '*'
    ("peakfit_imagej_table_2017.csv", None, FRAMES, IJ2017_X, IJ2017_Y, [212.2, 161.8, 119.4]),
    # ImageJTablePeakResults saved as .xls (tabs), no counter or source; '1.235E+4' (BigDecimal)
    ("peakfit_imagej_table_2017.xls", None, FRAMES, IJ2017_X, IJ2017_Y, [12350.0, 161.8, 119.4]),
    # gdsc.smlm.ij.results.IJTablePeakResults (before 2017), "Calibrated": X, Y in nm, no unit (%g)
    (
        "peakfit_imagej_calibrated_nm.xls",
        107.0,
        FRAMES,
        OLD_NM_X,
        OLD_NM_Y,
        [212.202, 161.804, 119.377],
    ),
    # the same table uncalibrated, written in a decimal-comma locale (%g -> '100,420'), tabs
    ("peakfit_imagej_decimal_comma.xls", None, FRAMES, X_PX, Y_PX, [8000.0, 6100.0, 4500.5]),
]
TS_VARIANTS = [
    # ThunderSTORM XLSImportExport "XLS (tab separated)": quoted labels, tabs, DecimalFormat
    ("thunderstorm_xls_tab.xls", 107.0, [8000.0, 6100.0, 4500.5]),
    # ThunderSTORM 1.0-1.2 CSVImportExport: Double.toString ('1.0' frames), 'uncertainty [nm]'
    ("thunderstorm_v1_0.csv", 107.0, [8000.0, 6100.0, 4500.5]),
    # ThunderSTORM merged results: 'detections' column, 'NaN' chi2
    ("thunderstorm_merged.csv", 107.0, [8000.0, 6100.0, 4500.5]),
    # ThunderSTORM in digital units: 'x [px]', 'intensity [ADU]'
    ("thunderstorm_digital_units.csv", None, [28800.0, 21960.0, 16201.8]),
    # ThunderSTORM 3-D (astigmatism): 'z [nm]', 'sigma1 [nm]', 'sigma2 [nm]'
    ("thunderstorm_3d.csv", 107.0, [8000.0, 6100.0, 4500.5]),
]


@pytest.mark.parametrize("name, pixel_nm, frames, xs, ys, signal", VARIANTS)
def test_peakfit_variant_to_pixels(name, pixel_nm, frames, xs, ys, signal):
    df = _through_filter(read_localizations(TABLES / name, "peakfit", pixel_size_nm=pixel_nm))
    assert df["frame"].tolist() == frames
    assert df["x"].tolist() == pytest.approx(xs, rel=1e-6)
    assert df["y"].tolist() == pytest.approx(ys, rel=1e-6)
    assert df["signal"].tolist() == pytest.approx(signal, rel=1e-6)
    assert df["pixel_x"].tolist() == np.floor(xs).astype(int).tolist()  # origX
    assert df["pixel_y"].tolist() == np.floor(ys).astype(int).tolist()


@pytest.mark.parametrize("name, pixel_nm, signal", TS_VARIANTS)
def test_thunderstorm_variant_to_pixels(name, pixel_nm, signal):
    df = _through_filter(read_localizations(TABLES / name, "thunderstorm", pixel_size_nm=pixel_nm))
    assert df["frame"].tolist() == FRAMES
    assert df["x"].tolist() == pytest.approx(X_PX, rel=1e-6)
    assert df["y"].tolist() == pytest.approx(Y_PX, rel=1e-6)
    assert df["signal"].tolist() == pytest.approx(signal, rel=1e-6)
    assert df["pixel_x"].tolist() == ORIG_X  # floor(x)


def test_file_columns_kept_as_numbers():
    # FilePeakResults V1, TextFilePeakResults V4 (Id, End Frame, +/-), ThunderSTORM merged and 3-D
    v1 = read_localizations(TABLES / "peakfit_v1.results.xls", "peakfit")
    assert v1["Amplitude"].iloc[0] == pytest.approx(741.93787)  # V1: Signal read, Amplitude kept
    v4 = read_localizations(TABLES / "peakfit_v4_px_crlf.results.xls", "peakfit")
    assert b"\r\n" in (TABLES / "peakfit_v4_px_crlf.results.xls").read_bytes()
    assert v4["Id"].tolist() == [1, 2, 3] and v4["End Frame"].tolist() == [1, 2, 5]
    assert v4["Precision (nm)"].tolist() == [12.52, 14.03, 16.84]  # '12.52*' -> 12.52
    dev = read_localizations(TABLES / "peakfit_v4_deviations.results.xls", "peakfit")
    assert dev["X (px) +/-"].tolist() == [0.03, 0.03, 0.03]
    merged = read_localizations(TABLES / "thunderstorm_merged.csv", "thunderstorm", 107.0)
    assert merged["detections"].tolist() == [3, 1, 2]
    assert np.isnan(merged["chi2"].iloc[0]) and merged["chi2"].iloc[1] == 1501.25
    three_d = read_localizations(TABLES / "thunderstorm_3d.csv", "thunderstorm", 107.0)
    assert three_d["z [nm]"].tolist() == [-250.5, 12.25, 310.0]
    assert "sigma1 [nm]" in three_d.columns and "sigma2 [nm]" in three_d.columns


def test_trace_comment_lines_are_skipped_and_counted(caplog):
    # Trace Molecules output: TextFilePeakResults V4 with a '#Trace ...' line before each trace
    with caplog.at_level(logging.INFO):
        df = read_localizations(TABLES / "peakfit_trace_molecules.results.xls", "peakfit")
    assert len(df) == 3 and not df[["frame", "x", "y", "signal"]].isna().any().any()
    assert "skipped 2 comment line(s)" in caplog.text and "#Trace" in caplog.text


def test_decimal_comma_in_tabs_is_read_and_logged(caplog):
    # pre-2017 IJTablePeakResults (%g) in a decimal-comma locale, saved by ImageJ as .xls
    with caplog.at_level(logging.WARNING):
        df = read_localizations(TABLES / "peakfit_imagej_decimal_comma.xls", "peakfit")
    assert df["Error"].iloc[0] == pytest.approx(0.0123457)
    assert "decimal comma" in caplog.text


def test_old_calibrated_imagej_table_is_never_read_as_pixels():
    # IJTablePeakResults "Calibrated" table: X = 10744.9 nm under a unitless 'X' header
    path = TABLES / "peakfit_imagej_calibrated_nm.xls"
    with pytest.raises(InputError, match=r"no unit but look like nm") as info:
        read_localizations(path, "peakfit")
    assert "set pixel_size_nm" in info.value.fix and "107" in info.value.fix
    with pytest.raises(InputError, match=r"pixel_size_nm=160 does not fit.*about 107 nm"):
        read_localizations(path, "peakfit", pixel_size_nm=160.0)


def test_wrong_pixel_size_for_nm_positions_is_refused(caplog):
    # TextFilePeakResults V4 in nm with nmPerPixel 160; the sheet says 107
    with caplog.at_level(logging.WARNING), pytest.raises(InputError) as info:
        read_localizations(TABLES / "peakfit_v4_nm_crlf.results.xls", "peakfit", 107.0)
    assert "differs from the file's #Calibration nmPerPixel=160" in caplog.text
    assert "disagree" in info.value.problem and "about 160 nm per pixel" in info.value.fix


def test_decimal_comma_in_commas_is_refused():
    # the same table saved by ImageJ as .csv: tabs replaced by commas, so "100,420" is ambiguous
    with pytest.raises(InputError, match="decimal comma") as info:
        read_localizations(TABLES / "peakfit_imagej_decimal_comma.csv", "peakfit")
    assert "tab-separated" in info.value.fix and "line 2" in info.value.problem


def test_calibration_values(caplog):
    # #Calibration of FilePeakResults V1 (XStream XML) and TextFilePeakResults V3 (protobuf JSON)
    v1 = read_calibration({"Calibration": _header_value("peakfit_v1.results.xls", "Calibration")})
    assert v1 == {
        "nm_per_pixel": 107.0,
        "gain_adu_per_photon": 37.7,
        "exposure_ms": 50.0,
        "offset_adu": 500.0,
        "camera_type": "emccd",
    }
    with caplog.at_level(logging.INFO):
        _, info = read_table(TABLES / "peakfit_v3.results.xls", "peakfit")
    assert info["calibration"] == {
        "nm_per_pixel": 107.0,
        "exposure_ms": 50.0,
        "gain_adu_per_photon": 37.7,
        "camera_type": "emccd",
        "read_noise_adu": 7.16,
        "offset_adu": 100.0,
        "quantum_efficiency": 0.95,
    }
    assert info["pixel_size_nm"] == 107.0
    assert "camera EMCCD, bias 100 ADU, gain 37.7 ADU/photon, read noise 7.16 ADU" in caplog.text
    assert (
        "camera.type: emccd, camera.offset_adu: 100, camera.gain_adu_per_photon: 37.7"
        in caplog.text
    )
    assert "pixel size 107 nm taken from the file's #Calibration" in caplog.text


def _header_value(name: str, key: str) -> str:
    for line in (TABLES / name).read_text(encoding="utf-8").splitlines():
        if line.startswith(f"#{key} "):
            return line.split(" ", 1)[1]
    raise AssertionError(f"no #{key} in {name}")


def test_pixel_size_within_one_percent_is_not_a_warning(caplog):
    # TextFilePeakResults V4 in nm, nmPerPixel 160; the sheet says 160.8 (0.5 %)
    with caplog.at_level(logging.WARNING):
        read_localizations(TABLES / "peakfit_v4_nm_crlf.results.xls", "peakfit", 160.8)
    assert "differs" not in caplog.text


def test_filter_stage_returns_calibration(tmp_path):
    # TextFilePeakResults V4 in nm; empty pixel_size_nm in the sheet
    out = tmp_path / "localizations.csv"
    summary = filter_stage(
        TABLES / "peakfit_v4_nm_crlf.results.xls", "peakfit", None, 0, None, None, out
    )
    assert summary["kept"] == 3 and summary["pixel_size_nm"] == 160.0
    assert summary["calibration"]["camera_type"] == "scmos"
    assert summary["calibration"]["gain_adu_per_photon"] == 2.0
    assert pd.read_csv(out)["x"].tolist() == pytest.approx(X_PX)


@pytest.mark.parametrize("last", [False, True])
def test_truncation_hint_only_on_the_last_line(tmp_path, last):
    # TextFilePeakResults V3, cut short at its end or damaged further up
    lines = (TABLES / "peakfit_v3.results.xls").read_text().splitlines()
    bad = len(lines) - 1 if last else len(lines) - 2
    # a line cut short at the end of the file, or a damaged value ('3O.91') further up
    lines[bad] = lines[bad][:20] if last else lines[bad].replace("\t30.91\t", "\t3O.91\t")
    p = tmp_path / "t.results.xls"
    p.write_text("\n".join(lines))
    with pytest.raises(InputError) as info:
        read_localizations(p, "peakfit")
    msg = str(info.value)
    assert f"line {bad + 1}" in msg and "\n" not in msg and "np.float64" not in msg
    assert ("truncated" in msg) == last
    assert ("'3O.91'" in msg) != last


def test_java8_nan_in_a_kept_column_and_a_required_one(tmp_path):
    # ThunderSTORM merged results from Java 8, whose DecimalFormat writes NaN as U+FFFD
    text = (TABLES / "thunderstorm_merged.csv").read_text().replace("NaN", "\ufffd")
    p = tmp_path / "merged.csv"
    p.write_text(text, encoding="utf-8")
    df = read_localizations(p, "thunderstorm", 107.0)
    assert np.isnan(df["chi2"].iloc[0])
    p.write_text(text.replace("8000,", "\ufffd,"), encoding="utf-8")
    with pytest.raises(InputError, match="non-numeric or empty value.*'intensity \\[photon\\]'"):
        read_localizations(p, "thunderstorm", 107.0)


def test_latin1_micro_sign_header(tmp_path):
    # TextFilePeakResults V4 in um, re-saved as Latin-1 by an editor (MICRO SIGN, byte 0xB5)
    text = (TABLES / "peakfit_v4_um.results.xls").read_text(encoding="utf-8")
    p = tmp_path / "latin1.results.xls"
    p.write_bytes(text.replace("\u03bcm", "\u00b5m").encode("latin-1"))
    assert read_localizations(p, "peakfit")["x"].tolist() == pytest.approx(X_PX)


def test_wrong_format_names_the_other_one():
    # a TextFilePeakResults V3 file given format thunderstorm in the sheet
    with pytest.raises(InputError, match="look like a peakfit table"):
        read_localizations(TABLES / "peakfit_v3.results.xls", "thunderstorm", 107.0)


# ---- real ThunderSTORM exports (shared/realfiles, see its README) --------------------------------
@needs_real
def test_real_colicoords_ds5_crlf_chi2():
    # ThunderSTORM CSV from ColiCoords: chi2, uncertainty_xy [nm], 5 decimals, CRLF
    df = _through_filter(
        read_localizations(
            REAL / "real_thunderstorm_colicoords_ds5_storm_table.csv", "thunderstorm", 100.0
        )
    )
    assert len(df) == 48 and df["frame"].iloc[0] == 1 and df["frame"].iloc[-1] == 4
    assert (df["x"].iloc[0], df["y"].iloc[0]) == pytest.approx((331.267688, 337.6662828))
    assert df["signal"].iloc[0] == pytest.approx(3998.0329)
    assert df["chi2"].iloc[0] == pytest.approx(3278.1719)


@needs_real
def test_real_colicoords_head40():
    # ThunderSTORM CSV from ColiCoords, 3 decimals (first 40 rows of a 2.2 MB export)
    df = _through_filter(
        read_localizations(
            REAL / "real_thunderstorm_colicoords_06_01_storm_head40.csv", "thunderstorm", 100.0
        )
    )
    assert len(df) == 40 and set(df["frame"]) == {1}
    assert (df["x"].iloc[0], df["y"].iloc[0]) == pytest.approx((70.57682, 318.36993))
    assert (df["x"].iloc[-1], df["signal"].iloc[-1]) == pytest.approx((161.99356, 1584.097))


@needs_real
def test_real_locan_requoted_header(caplog):
    # ThunderSTORM values (frames '2001.0', 'uncertainty [nm]') whose header another program re-quoted
    with caplog.at_level(logging.WARNING):
        df = _through_filter(
            read_localizations(
                REAL / "real_thunderstorm_locan_dstorm_data.csv", "thunderstorm", 100.0
            )
        )
    assert "quoted as one field" in caplog.text
    assert len(df) == 19 and set(df["frame"]) == {2001}
    assert (df["x"].iloc[0], df["y"].iloc[0]) == pytest.approx(
        (13.20109670647555, 263.447124618434)
    )
    assert df["signal"].iloc[0] == pytest.approx(296.55843680038157)
    assert "uncertainty [nm]" in df.columns
