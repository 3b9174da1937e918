"""Reading localization tables (GDSC SMLM PeakFit, ThunderSTORM) into one canonical table.

Canonical columns, added to the file's own columns (which are kept):

* ``frame``: int, 1-based as in the files.
* ``x``, ``y``: float, camera pixels; pixel column c spans x in [c, c+1).
* ``signal``: float, the localizer's fitted signal (photons or counts, as the file says).
* ``pixel_x``, ``pixel_y``: int, the candidate pixel: PeakFit's ``origX``/``origY`` where the
  file has them, otherwise ``floor(x)``/``floor(y)`` (the pixel holding the position).

Everything the reader knows about the writers is in the tables just below (column names,
units, separators, comment and missing-value marks); the functions only apply them. The
layouts are listed for users in ``docs/localization-tables.md``.

One module on purpose (over 500 lines): the writers' tables and the small functions that apply
them are one concern, reading the 23 layouts users export; splitting them would scatter one
format's rules over several files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .io import write_csv

log = logging.getLogger(__name__)

FORMATS = ("peakfit", "thunderstorm")
CANONICAL = ["frame", "x", "y", "signal", "pixel_x", "pixel_y"]
REQUIRED = ("frame", "x", "y", "signal")

# ---- what the writers write ------------------------------------------------------------------
#: canonical name -> accepted column names once the unit is stripped (first column found wins).
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "peakfit": {
        "frame": ("Frame", "T"),  # text results file / ImageJ results table since 2017
        "x": ("X",),
        "y": ("Y",),
        # Signal: V1, V2 and old ImageJ tables (V1's Amplitude is the peak height); Intensity: V3+
        "signal": ("Signal", "Intensity"),
        "orig_x": ("origX",),
        "orig_y": ("origY",),
    },
    "thunderstorm": {"frame": ("frame",), "x": ("x",), "y": ("y",), "signal": ("intensity",)},
}
#: distance unit in a header -> nm per unit (None: camera pixels). GDSC writes px, nm and
#: "μm" (GREEK SMALL LETTER MU, its UnitHelper); ThunderSTORM px, nm and um.
DISTANCE_UNITS: dict[str | None, float | None] = {
    None: None,  # no unit (PeakFit V1/V2, ImageJ tables): pixels, checked against origX/origY
    "px": None,
    "pixel": None,
    "pixels": None,
    "nm": 1.0,
    "um": 1000.0,
    "\u00b5m": 1000.0,  # MICRO SIGN
    "\u03bcm": 1000.0,  # GREEK SMALL LETTER MU
}
#: field separators, tried on the header line in this order
SEPARATORS = {"\t": "tab", ",": "comma"}
#: a line starting with it is a comment (PeakFit's header block, '#Trace ...', '#Cluster ...'),
#: except '#' then a separator: the row-counter column '#' of an ImageJ results table
COMMENT = "#"
#: "no value": Java's NaN, and U+FFFD, Java 8's DecimalFormat NaN (ThunderSTORM merged chi2)
MISSING = ("NaN", "\ufffd")
#: PeakFit marks a localization precision it computed (not fitted) with a trailing '*'
COMPUTED_MARK = "*"
#: a number with an optional decimal comma (ImageJ tables in e.g. a German locale: '244,710')
_COMMA_NUMBER = r"[-+]?\d+(?:,\d+)?(?:[eE][-+]?\d+)?"
#: a fit lies near the centre of its candidate pixel (origX + 0.5); positions further away than
#: this (median, px) are not in pixels
MAX_ORIG_OFFSET_PX = 2.0
#: PeakFit '#Calibration' (JSON since V3, XStream XML before) -> our names, in the terms of the
#: config's camera section: gain = GDSC's gain / countPerPhoton, offset = GDSC's bias
_CALIBRATION_JSON = {
    ("distanceCalibration", "nmPerPixel"): "nm_per_pixel",
    ("intensityCalibration", "countPerPhoton"): "gain_adu_per_photon",
    ("cameraCalibration", "cameraType"): "camera_type",
    ("cameraCalibration", "bias"): "offset_adu",
    ("cameraCalibration", "readNoise"): "read_noise_adu",
    ("cameraCalibration", "quantumEfficiency"): "quantum_efficiency",
    ("timeCalibration", "exposureTime"): "exposure_ms",
}
_CALIBRATION_XML = {
    "nmPerPixel": "nm_per_pixel",
    "gain": "gain_adu_per_photon",
    "cameraType": "camera_type",
    "emCCD": "camera_type",  # before 2017: <emCCD>true</emCCD>
    "bias": "offset_adu",
    "readNoise": "read_noise_adu",
    "exposureTime": "exposure_ms",
}
_CAMERA_TYPES = {
    "EMCCD": "emccd",
    "EM_CCD": "emccd",
    "CCD": "ccd",
    "SCMOS": "scmos",
    "true": "emccd",
}
_HEADER_NAMES = {n for fmt in ALIASES.values() for k in ("frame", "x") for n in fmt[k]}
_CAMERA_NAMES = {"emccd": "EMCCD", "ccd": "CCD", "scmos": "sCMOS"}
_UNIT = re.compile(r"^\s*(?P<name>.*?)\s*[\(\[](?P<unit>[^\)\]]*)[\)\]]\s*$")


def split_unit(column: str) -> tuple[str, str | None]:
    """``'X (nm)'`` -> ``('X', 'nm')``; ``'x [nm]'`` -> ``('x', 'nm')``; ``'Frame'`` -> ``('Frame', None)``."""
    m = _UNIT.match(column)
    if m:
        return m.group("name"), m.group("unit").strip() or None
    return column.strip(), None


# ---- the file's layout ------------------------------------------------------------------------
@dataclass
class _Layout:
    """Where things are in a table file; line numbers are 1-based, as an editor shows them."""

    header: list[str]  # column names, made unique
    sep: str
    rows: list[str]  # data lines
    row_lines: np.ndarray  # their line numbers
    meta: dict[str, str]  # PeakFit '#Key value' header lines, e.g. Calibration
    last_line: int  # number of the last non-blank line


def _is_comment(line: str) -> bool:
    """A '#' comment line (not the header of an ImageJ table whose first column is '#')."""
    return line.startswith(COMMENT) and line[1:2] not in SEPARATORS


def _is_header(text: str) -> bool:
    """A '#' line that names columns (PeakFit's text results header)."""
    names = {split_unit(f)[0] for f in re.split("|".join(SEPARATORS), text)}
    return len(names) >= 3 and bool(names & _HEADER_NAMES)


def _decode(path: Path) -> str:
    """The file's text: UTF-8 (as GDSC writes; a BOM is dropped), else Latin-1 (logged)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(
            path, f"cannot read localization table ({exc})", "check the file"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s: not UTF-8 text; read as Latin-1", path)
        return data.decode("latin-1")


def _meta(lines: list[str]) -> dict[str, str]:
    """PeakFit's '#Key value' header lines (e.g. '#Calibration {...}') as {Key: value}."""
    meta: dict[str, str] = {}
    for line in lines:
        key, _, value = line[1:].partition(" ")
        if key and value.strip() and not any(s in key for s in SEPARATORS):
            meta.setdefault(key, value.strip())
    return meta


def _scan(path: Path, text: str) -> _Layout:
    """Find the PeakFit '#' header block, the column header line and the data lines.

    The header is the last '#' line of the leading block that names known columns (PeakFit
    text files), else the first other line. Comment lines after it ('#Trace ...' before each
    trace of Trace Molecules, '#Cluster ...') and blank lines are skipped, counted and logged.
    """
    lines = text.splitlines()
    block = 0
    while block < len(lines) and (_is_comment(lines[block]) or not lines[block].strip()):
        block += 1
    named = [i for i in range(block) if _is_comment(lines[i]) and _is_header(lines[i][1:])]
    if named:
        header_at, header_text = named[-1], lines[named[-1]][1:]
    elif block < len(lines):
        header_at, header_text = block, lines[block]
    else:
        what = "the file is empty" if not text.strip() else "only '#' lines, no column header"
        raise InputError(path, what, "export the localization table again")
    start = header_at + 1
    body = lines[start:]
    kind = np.array([0 if not s.strip() else 1 if _is_comment(s) else 2 for s in body], np.int8)
    data_at = np.flatnonzero(kind == 2)
    comments = np.flatnonzero(kind == 1)
    if len(comments):
        log.info(
            "%s: skipped %d comment line(s) among the data rows (first: %r)",
            path,
            len(comments),
            body[comments[0]][:60],
        )
    header, sep = _header_fields(path, header_text)
    nonblank = np.flatnonzero(kind != 0)
    return _Layout(
        header=header,
        sep=sep,
        rows=[body[i] for i in data_at],
        row_lines=data_at + start + 1,
        meta=_meta(lines[:header_at]),
        last_line=int(nonblank[-1]) + start + 1 if len(nonblank) else header_at + 1,
    )


def _header_fields(path: Path, text: str) -> tuple[list[str], str]:
    """Column names and separator of the header line; PeakFit's '+/-' deviation columns are
    named after their parameter ('X (px) +/-'). A header re-quoted into a single field by
    another program (``"id,""frame"",..."``) is split again, with a warning."""
    sep = next((s for s in SEPARATORS if s in text), "\t")
    fields = next(csv.reader([text], delimiter=sep))
    if len(fields) == 1 and sep in fields[0]:
        fields = next(csv.reader([fields[0]], delimiter=sep))
        log.warning(
            "%s: the header line was quoted as one field (re-saved by another program); "
            "split it into %d column names",
            path,
            len(fields),
        )
    names: list[str] = []
    for raw in fields:
        name = raw.strip().strip('"').strip()
        if name == "+/-" and names:
            name = f"{names[-1]} +/-"
        base, k = name, 1
        while name in names:
            name, k = f"{base}.{k}", k + 1
        names.append(name)
    return names, sep


def _field_count_error(path: Path, layout: _Layout, n_fields: np.ndarray) -> InputError:
    """One line for data lines whose field count differs from the header's."""
    k, sep = len(layout.header), layout.sep
    bad = np.flatnonzero(n_fields != k)
    i = int(bad[0])
    line, n = int(layout.row_lines[i]), int(n_fields[i])
    where = f"line {line} has {n} {SEPARATORS[sep]}-separated fields but the header names {k}"
    if sep == "," and (n_fields > k).mean() > 0.5:
        return InputError(
            path,
            f"{where} (line starts {layout.rows[i][:40]!r}): the values are written with a "
            "decimal comma, which a comma-separated file cannot hold",
            "save the table as tab-separated (.xls) instead of .csv (a decimal comma is then "
            "read), or export it again with decimal points",
        )
    if line == layout.last_line and n < k:
        return InputError(
            path,
            f"{where}: it is the last line, so the file looks truncated",
            "export or copy the table again (the export or copy stopped early)",
        )
    return InputError(
        path,
        f"{where} ({len(bad)} such line(s))",
        f"give every data line the header's {k} fields (repair or remove line {line})",
    )


def _parse_rows(path: Path, layout: _Layout) -> pd.DataFrame:
    """The data lines as columns named by the header, field counts checked per line. Columns
    of plain numbers come out numeric (MISSING and empty fields as NaN); others as text."""
    n_fields = np.array([row.count(layout.sep) + 1 for row in layout.rows], dtype=np.int64)
    if (n_fields != len(layout.header)).any():
        raise _field_count_error(path, layout, n_fields)
    if not layout.rows:
        return pd.DataFrame(columns=layout.header, dtype=object)
    try:
        return pd.read_csv(
            io.StringIO("\n".join(layout.rows)),
            sep=layout.sep,
            header=None,
            names=layout.header,
            index_col=False,
            na_values=[*MISSING, ""],
            keep_default_na=False,
            skipinitialspace=True,
            low_memory=False,
            engine="c",
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(
            path,
            f"cannot parse the table ({str(exc).splitlines()[0]})",
            "check the file is complete and has the right format",
        ) from None


# ---- values -----------------------------------------------------------------------------------
def _text_columns(raw: pd.DataFrame) -> list[str]:
    """Columns that did not parse as numbers (text, '12.5*', decimal commas, bad values)."""
    return [c for c in raw.columns if not pd.api.types.is_numeric_dtype(raw[c])]


def _decimal_commas(path: Path, raw: pd.DataFrame, sep: str) -> pd.DataFrame:
    """Tab-separated numbers written with a decimal comma ('244,710') -> decimal point (logged).

    Only whole columns of such numbers are converted; in a comma-separated file a decimal comma
    cannot be told from a separator (see :func:`_field_count_error`).
    """
    if sep != "\t" or raw.empty:
        return raw
    converted = []
    for col in _text_columns(raw):
        s = raw[col].astype(str).str.strip()
        if (
            s.str.contains(",", regex=False).any()
            and (s.str.fullmatch(_COMMA_NUMBER) | raw[col].isna()).all()
        ):
            raw[col] = pd.to_numeric(s.str.replace(",", ".", regex=False), errors="coerce")
            converted.append(col)
    if converted:
        log.warning(
            "%s: %d column(s) are written with a decimal comma (e.g. %s); read them with a "
            "decimal point",
            path,
            len(converted),
            ", ".join(f"'{c}'" for c in converted[:3]),
        )
    return raw


def _numbers(values: pd.Series) -> tuple[np.ndarray, int]:
    """A column as floats; text: blanks stripped, PeakFit's trailing '*' dropped, MISSING -> NaN.

    Returns the values and how many carried the '*' (a precision PeakFit computed).
    """
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=float), 0
    s = values.astype(str).str.strip()
    starred = s.str.endswith(COMPUTED_MARK)
    if starred.any():
        s = s.str.rstrip(COMPUTED_MARK)
    s = s.mask(s.isin(MISSING), "NaN")
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float), int(starred.sum())


def _required_numbers(path: Path, layout: _Layout, raw: pd.DataFrame, col: str) -> np.ndarray:
    """A required column as finite floats, or one line naming the first bad value and its line."""
    values, _ = _numbers(raw[col])
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    i = int(np.flatnonzero(bad)[0])
    line = int(layout.row_lines[i])
    text = next(csv.reader([layout.rows[i]], delimiter=layout.sep))[list(raw.columns).index(col)]
    problem = (
        f"{int(bad.sum())} non-numeric or empty value(s) in column '{col}' "
        f"(first on line {line}: {text.strip()!r})"
    )
    if line == layout.last_line and i == len(layout.rows) - 1:
        raise InputError(
            path,
            f"{problem}; it is the last line, so the file looks truncated",
            "export or copy the table again (the export or copy stopped early)",
        )
    raise InputError(path, problem, f"repair or remove line {line} (and any other such line)")


def _keep_numeric(path: Path, raw: pd.DataFrame) -> pd.DataFrame:
    """The file's own columns as parsed; text columns become numbers where every value is a
    number ('12.5*' included) or MISSING/empty, else stay text."""
    out = raw.copy()
    for col in _text_columns(raw):
        values, n_starred = _numbers(raw[col])
        if (~np.isnan(values) | raw[col].isna()).all():
            out[col] = values
        if n_starred:
            log.info(
                "%s: %d value(s) of '%s' marked '*' (computed by PeakFit)", path, n_starred, col
            )
    return out


# ---- columns, units, positions -----------------------------------------------------------------
def _columns(path: Path, fmt: str, columns: list[str]) -> dict[str, tuple[str, str | None]]:
    """canonical name -> (column, unit) per ALIASES[fmt]; one line if a required one is missing."""

    def find(aliases: tuple[str, ...]) -> tuple[str, str | None] | None:
        for col in columns:
            name, unit = split_unit(col)
            if name in aliases:
                return col, unit
        return None

    aliases = ALIASES[fmt]
    found = {k: hit for k, names in aliases.items() if (hit := find(names)) is not None}
    if not any(k in found for k in REQUIRED):
        other = [
            f for f in FORMATS if f != fmt and find(ALIASES[f]["frame"]) and find(ALIASES[f]["x"])
        ]
        hint = f" (they look like a {other[0]} table)" if other else ""
        raise InputError(
            path,
            f"none of the known {fmt} column headers found (columns: {columns[:8]}){hint}",
            "check 'format' in the acquisitions sheet (peakfit or thunderstorm) and the file's header",
        )
    missing = [f"{k} ({'/'.join(aliases[k])})" for k in REQUIRED if k not in found]
    if missing:
        raise InputError(
            path,
            f"missing required column(s): {', '.join(missing)}",
            "export the table with these columns",
        )
    return found


def _nm_per_unit(path: Path, col: str, unit: str | None) -> float | None:
    """nm per unit of a position column (None: camera pixels), per DISTANCE_UNITS."""
    key = unit if unit in DISTANCE_UNITS else (unit or "").lower()
    if key not in DISTANCE_UNITS:
        raise InputError(
            path,
            f"column '{col}' has unknown unit '{unit}'",
            "export positions in px, nm or um",
        )
    return DISTANCE_UNITS[key]


def _to_px(
    path: Path, col: str, unit: str | None, values: np.ndarray, pixel_nm: float | None
) -> np.ndarray:
    """Positions in the column's unit -> camera pixels; nm and um need the pixel size (nm)."""
    nm_per_unit = _nm_per_unit(path, col, unit)
    if nm_per_unit is None:
        return values
    if not pixel_nm:
        raise InputError(
            path,
            f"column '{col}' is in {unit} but no pixel size is known (pixel_size_nm is empty)",
            "set pixel_size_nm for this acquisition in the acquisitions sheet",
        )
    return values * nm_per_unit / pixel_nm


def _offset(pos: np.ndarray, orig: np.ndarray) -> float:
    """Median distance (px) of positions from the centre of their candidate pixel."""
    return float(np.median(np.abs(pos - (orig + 0.5))))


def _scale(pos: np.ndarray, orig: np.ndarray) -> float:
    """Median ratio position / candidate-pixel centre: 1 for pixels, about nm-per-pixel for nm."""
    use = orig >= 4 if (orig >= 4).any() else np.ones(len(orig), bool)
    return float(np.median(pos[use] / (orig[use] + 0.5)))


def _check_positions(
    path: Path,
    xy: dict[str, np.ndarray],
    orig: dict[str, np.ndarray],
    cols: dict[str, tuple[str, str | None]],
    pixel_nm: float | None,
) -> dict[str, np.ndarray]:
    """Positions (px) against origX/origY: unlabelled nm (an old ImageJ table saved with
    calibrated values) are converted with the pixel size or refused; a position scale that
    disagrees with origX/origY (wrong pixel size, wrong units) is refused."""
    offset = max(_offset(xy[k], orig[k]) for k in ("x", "y"))
    if offset <= MAX_ORIG_OFFSET_PX:
        return xy
    scale = _scale(xy["x"], orig["x"])
    names = f"'{cols['x'][0]}', '{cols['y'][0]}'"
    where = f"{names} lie a median {offset:.1f} px from origX/origY and about {scale:.3g} x origX"
    if cols["x"][1] is None and scale > 10:
        if pixel_nm and max(_offset(xy[k] / pixel_nm, orig[k]) for k in xy) <= MAX_ORIG_OFFSET_PX:
            log.warning(
                "%s: %s have no unit but are in nm (an ImageJ table saved with calibrated "
                "values); divided by pixel_size_nm=%g",
                path,
                names,
                pixel_nm,
            )
            return {k: v / pixel_nm for k, v in xy.items()}
        fix = (
            f"set pixel_size_nm for this acquisition in the acquisitions sheet (about {scale:.0f})"
            if not pixel_nm
            else f"pixel_size_nm={pixel_nm:g} does not fit: set the camera pixel size (about {scale:.0f} nm)"
        )
        raise InputError(path, f"{where}: they have no unit but look like nm", fix)
    if abs(scale - 1) > 0.05:
        fix = (
            f"check pixel_size_nm={pixel_nm:g}: the positions suggest about {pixel_nm * scale:.0f} nm per pixel"
            if pixel_nm and _nm_per_unit(path, *cols["x"]) is not None
            else "check the units of the position columns"
        )
        raise InputError(path, f"{where}: positions and candidate pixels disagree", fix)
    log.warning("%s: %s (drift-corrected positions?); kept as read", path, where)
    return xy


# ---- PeakFit calibration ------------------------------------------------------------------------
def read_calibration(meta: dict[str, str]) -> dict[str, Any]:
    """Camera values from PeakFit's ``#Calibration`` header line (JSON since V3, XML before).

    Returns those present of: ``nm_per_pixel`` (nm), ``gain_adu_per_photon`` (ADU/photon; GDSC's
    gain / countPerPhoton), ``camera_type`` (emccd/ccd/scmos), ``offset_adu`` (GDSC's bias, ADU),
    ``read_noise_adu`` (ADU), ``quantum_efficiency``, ``exposure_ms``.
    """
    text = meta.get("Calibration", "").strip()
    found: dict[str, str] = {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        for (section, key), name in _CALIBRATION_JSON.items():
            part = data.get(section) if isinstance(data, dict) else None
            if isinstance(part, dict) and part.get(key) is not None:
                found[name] = str(part[key])
    else:
        for key, value in re.findall(r"<(\w+)>([^<]*)</\1>", text):
            if key in _CALIBRATION_XML:
                found.setdefault(_CALIBRATION_XML[key], value.strip())
    cal: dict[str, Any] = {}
    for name, value in found.items():
        if name == "camera_type":
            if value in _CAMERA_TYPES:
                cal[name] = _CAMERA_TYPES[value]
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if number > 0 or (number == 0 and name == "offset_adu"):
            cal[name] = number  # GDSC writes -1 or 0 for "not set"; a bias may be 0
    return cal


def _log_calibration(path: Path, cal: dict[str, Any]) -> None:
    """Log the file's camera values in the terms of the config's ``camera:`` section."""
    said = {
        "camera_type": ("camera {}", "camera.type: {}"),
        "offset_adu": ("bias {:g} ADU", "camera.offset_adu: {:g}"),
        "gain_adu_per_photon": ("gain {:g} ADU/photon", "camera.gain_adu_per_photon: {:g}"),
        "read_noise_adu": ("read noise {:g} ADU", "camera.read_noise_adu: {:g}"),
    }
    found = [k for k in said if k in cal]
    if not found:
        return
    shown = {**cal, "camera_type": _CAMERA_NAMES.get(cal.get("camera_type", ""), "")}
    what = ", ".join(said[k][0].format(shown[k]) for k in found)
    todo = ", ".join(said[k][1].format(cal[k]) for k in found)
    log.info(
        "%s: PeakFit calibration: %s -> in config/config.yaml set %s (if not set yet)",
        path,
        what,
        todo,
    )


def _pixel_size(path: Path, sheet_nm: float | None, cal: dict[str, Any]) -> float | None:
    """The pixel size (nm): the sheet's, else the file's #Calibration nmPerPixel (logged);
    a warning when both are given and differ by more than 1 %."""
    file_nm = cal.get("nm_per_pixel")
    if sheet_nm is None or not np.isfinite(sheet_nm):
        if file_nm:
            log.info(
                "%s: pixel size %g nm taken from the file's #Calibration (nmPerPixel); "
                "the sheet's pixel_size_nm is empty",
                path,
                file_nm,
            )
        return file_nm
    if file_nm and abs(file_nm - sheet_nm) > 0.01 * sheet_nm:
        log.warning(
            "%s: the sheet's pixel_size_nm=%g differs from the file's #Calibration nmPerPixel=%g; "
            "using the sheet's value (check which is the camera pixel size)",
            path,
            sheet_nm,
            file_nm,
        )
    return float(sheet_nm)


# ---- the reader -------------------------------------------------------------------------------
def _canonical(
    path: Path,
    layout: _Layout,
    raw: pd.DataFrame,
    cols: dict[str, tuple[str, str | None]],
    pixel_nm: float | None,
) -> pd.DataFrame:
    """The canonical columns (module doc) first, then the file's own columns."""
    num = {k: _required_numbers(path, layout, raw, cols[k][0]) for k in cols}
    frame = num["frame"]
    if (frame != np.round(frame)).any() or (frame < 1).any():
        raise InputError(
            path,
            f"column '{cols['frame'][0]}' must hold whole numbers >= 1 (1-based frames)",
            "check the frame column",
        )
    xy = {k: _to_px(path, cols[k][0], cols[k][1], num[k], pixel_nm) for k in ("x", "y")}
    has_orig = "orig_x" in num and "orig_y" in num
    if has_orig:
        xy = _check_positions(path, xy, {"x": num["orig_x"], "y": num["orig_y"]}, cols, pixel_nm)
    out = _keep_numeric(path, raw)
    out["frame"] = frame.astype(np.int64)
    out["x"], out["y"] = xy["x"].astype(float), xy["y"].astype(float)
    out["signal"] = num["signal"].astype(float)
    pixel = {k: num[f"orig_{k}"] if has_orig else np.floor(xy[k]) for k in ("x", "y")}
    out["pixel_x"], out["pixel_y"] = pixel["x"].astype(np.int64), pixel["y"].astype(np.int64)
    rest = [c for c in out.columns if c not in CANONICAL]
    return out[CANONICAL + rest]


def read_table(
    path: str | Path, fmt: str, pixel_size_nm: float | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a PeakFit or ThunderSTORM table into the canonical table (module doc).

    ``pixel_size_nm`` (nm) converts nm/um positions; when it is None, PeakFit's #Calibration
    nmPerPixel is used. Returns the table and ``{'pixel_size_nm': used or None,
    'calibration': read_calibration(...)}``. Raises :class:`InputError` (one line: file,
    problem, fix) for every kind of bad input.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(
            path,
            f"unknown localization format '{fmt}'",
            f"set format to one of {', '.join(FORMATS)} in the acquisitions sheet",
        )
    if not path.is_file():
        raise InputError(
            path,
            "localization table not found",
            "check the 'localizations' path in the acquisitions sheet",
        )
    layout = _scan(path, _decode(path))
    raw = _decimal_commas(path, _parse_rows(path, layout), layout.sep)
    cols = _columns(path, fmt, list(raw.columns))
    if raw.empty:
        raise InputError(path, "the localization table has no rows", "check the localizer's output")
    cal = read_calibration(layout.meta)
    _log_calibration(path, cal)
    pixel_nm = _pixel_size(path, pixel_size_nm, cal)
    table = _canonical(path, layout, raw, cols, pixel_nm)
    log.info("%s: %d localizations read (%s table)", path, len(table), fmt)
    return table, {"pixel_size_nm": pixel_nm, "calibration": cal}


def read_localizations(
    path: str | Path, fmt: str, pixel_size_nm: float | None = None
) -> pd.DataFrame:
    """The canonical table of :func:`read_table` (positions in camera pixels)."""
    return read_table(path, fmt, pixel_size_nm)[0]


def filter_localizations(
    df: pd.DataFrame,
    min_signal: float | None,
    x_range: Sequence[float] | None,
    y_range: Sequence[float] | None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep localizations with ``signal > min_signal`` and ``x_range[0] < x < x_range[1]`` (px),
    likewise for y; a ``None`` filter is off. Bounds are exclusive, as in the original guide.

    Returns the kept rows (original order) and counts: ``input``, ``removed_signal``,
    ``removed_x``, ``removed_y`` (each filter counted on what the previous ones left), ``kept``.
    """
    counts = {"input": len(df)}
    keep = np.ones(len(df), dtype=bool)
    steps = [
        ("removed_signal", None if min_signal is None else df["signal"].to_numpy() > min_signal),
        (
            "removed_x",
            None
            if x_range is None
            else (df["x"].to_numpy() > x_range[0]) & (df["x"].to_numpy() < x_range[1]),
        ),
        (
            "removed_y",
            None
            if y_range is None
            else (df["y"].to_numpy() > y_range[0]) & (df["y"].to_numpy() < y_range[1]),
        ),
    ]
    for name, mask in steps:
        if mask is None:
            counts[name] = 0
            continue
        counts[name] = int((keep & ~mask).sum())
        keep &= mask
    counts["kept"] = int(keep.sum())
    return df[keep].reset_index(drop=True), counts


def filter_stage(
    table_path: str | Path,
    fmt: str,
    pixel_size_nm: float | None,
    min_signal: float | None,
    x_range: Sequence[float] | None,
    y_range: Sequence[float] | None,
    out_path: str | Path,
) -> dict[str, Any]:
    """Read, filter and write ``localizations.csv``; fail with one line if nothing is left.

    Returns the filter counts (:func:`filter_localizations`) plus ``pixel_size_nm`` (nm, the
    value used) and ``calibration`` (PeakFit's camera values, :func:`read_calibration`).
    """

    df, info = read_table(table_path, fmt, pixel_size_nm)
    kept, counts = filter_localizations(df, min_signal, x_range, y_range)
    log.info(
        "%s: %d localizations read; removed %d by signal (min_signal=%s), %d by x_range=%s, "
        "%d by y_range=%s; %d kept",
        table_path,
        counts["input"],
        counts["removed_signal"],
        min_signal,
        counts["removed_x"],
        x_range,
        counts["removed_y"],
        y_range,
        counts["kept"],
    )
    if counts["kept"] == 0:
        raise InputError(
            table_path,
            f"no localization left after filtering ({counts['input']} read; min_signal={min_signal} "
            f"removed {counts['removed_signal']}, x_range={x_range} removed {counts['removed_x']}, "
            f"y_range={y_range} removed {counts['removed_y']})",
            "relax filter.min_signal / filter.x_range / filter.y_range in config/config.yaml",
        )
    write_csv(kept, out_path)
    return {**counts, **info}
