"""Reading localization tables (GDSC SMLM PeakFit, ThunderSTORM) into one canonical table.

Canonical columns, added to the file's own columns (which are kept):

* ``frame``: int, 1-based as in the files.
* ``x``, ``y``: float, camera pixels; pixel column c spans x in [c, c+1).
* ``signal``: float, the localizer's fitted signal (photons or counts, as the file says).
* ``pixel_x``, ``pixel_y``: int, the candidate pixel: PeakFit's ``origX``/``origY`` where the
  file has them, otherwise ``floor(x)``/``floor(y)`` (the pixel holding the position).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

log = logging.getLogger(__name__)

FORMATS = ("peakfit", "thunderstorm")
CANONICAL = ["frame", "x", "y", "signal", "pixel_x", "pixel_y"]

# accepted column names (after stripping units) -> canonical name
_PEAKFIT_ALIASES = {
    "frame": ["Frame"],
    "x": ["X"],
    "y": ["Y"],
    "signal": ["Signal", "Intensity"],
    "orig_x": ["origX"],
    "orig_y": ["origY"],
}
_TS_ALIASES = {
    "frame": ["frame"],
    "x": ["x"],
    "y": ["y"],
    "signal": ["intensity"],
}
_UNIT = re.compile(r"^\s*(?P<name>.*?)\s*[\(\[](?P<unit>[^\)\]]*)[\)\]]\s*$")


def split_unit(column: str) -> tuple[str, str | None]:
    """``'X (nm)'`` -> ``('X', 'nm')``; ``'x [nm]'`` -> ``('x', 'nm')``; ``'Frame'`` -> ``('Frame', None)``."""
    m = _UNIT.match(column)
    if m:
        return m.group("name"), m.group("unit").strip() or None
    return column.strip(), None


def _find(columns: Sequence[str], aliases: list[str]) -> tuple[str, str | None] | None:
    for col in columns:
        name, unit = split_unit(col)
        if name in aliases:
            return col, unit
    return None


def _to_px(
    values: pd.Series, unit: str | None, pixel_size_nm: float | None, path, col
) -> pd.Series:
    if unit is None or unit.lower() in ("px", "pixel", "pixels"):
        return values
    if unit.lower() == "nm":
        if not pixel_size_nm:
            raise InputError(
                path,
                f"column '{col}' is in nm but no pixel size is known",
                "set pixel_size_nm for this acquisition in the acquisitions sheet",
            )
        return values / float(pixel_size_nm)
    if unit.lower() in ("um", "µm"):
        if not pixel_size_nm:
            raise InputError(
                path,
                f"column '{col}' is in um but no pixel size is known",
                "set pixel_size_nm for this acquisition in the acquisitions sheet",
            )
        return values * 1000.0 / float(pixel_size_nm)
    raise InputError(
        path, f"column '{col}' has unknown unit '{unit}'", "export positions in px or nm"
    )


def _peakfit_frame(path: Path, text: str) -> pd.DataFrame:
    lines = text.splitlines()
    header_idx = None
    n_comment = 0
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        n_comment = i + 1
        fields = [split_unit(f)[0] for f in re.split(r"\t|,", line[1:].strip())]
        if "Frame" in fields or "X" in fields:
            header_idx = i
    if header_idx is not None:
        header_line = lines[header_idx][1:]
        sep = "\t" if "\t" in header_line else ","
        names = [c.strip() for c in header_line.split(sep)]
        body = "\n".join(lines[n_comment:])
        if not body.strip():
            return pd.DataFrame(columns=names)
        return pd.read_csv(
            io.StringIO(body),
            sep=sep,
            header=None,
            names=names,
            comment=None,
            skip_blank_lines=True,
        )
    # ImageJ results-table export: plain CSV (or TSV) with a header row
    first = lines[n_comment] if n_comment < len(lines) else ""
    sep = "\t" if "\t" in first else ","
    return pd.read_csv(io.StringIO("\n".join(lines[n_comment:])), sep=sep)


def read_localizations(
    path: str | Path, fmt: str, pixel_size_nm: float | None = None
) -> pd.DataFrame:
    """Read a PeakFit or ThunderSTORM table into the canonical table (see module doc).

    Raises :class:`InputError` (one line: file, problem, fix) for every kind of bad input.
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
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(
            path, f"cannot read localization table ({exc})", "check the file"
        ) from None
    try:
        if fmt == "peakfit":
            raw = _peakfit_frame(path, text)
            aliases = _PEAKFIT_ALIASES
        else:
            raw = pd.read_csv(io.StringIO(text))
            aliases = _TS_ALIASES
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(
            path,
            f"cannot parse as {fmt} table ({str(exc).splitlines()[0]})",
            "check the file is complete and has the right format",
        ) from None
    found = {k: _find(list(raw.columns), v) for k, v in aliases.items()}
    required = ["frame", "x", "y", "signal"]
    if all(found[k] is None for k in required):
        raise InputError(
            path,
            f"none of the known {fmt} column headers found (columns: {list(raw.columns)[:8]})",
            "check 'format' in the acquisitions sheet (peakfit or thunderstorm) and the file's header",
        )
    missing = [f"{k} ({'/'.join(aliases[k])})" for k in required if found[k] is None]
    if missing:
        raise InputError(
            path,
            f"missing required column(s): {', '.join(missing)}",
            "export the table with these columns",
        )
    if len(raw) == 0:
        raise InputError(path, "the localization table has no rows", "check the localizer's output")
    out = raw.copy()
    numeric: dict[str, pd.Series] = {}
    for key in required + [k for k in ("orig_x", "orig_y") if found.get(k)]:
        col, unit = found[key]
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                path,
                f"{int(bad.sum())} non-numeric or empty value(s) in column '{col}' "
                f"(first at data row {first + 1}: {raw[col].iloc[first]!r})",
                "remove or repair those rows (a truncated file ends mid-line)",
            )
        if key in ("x", "y"):
            values = _to_px(values, unit, pixel_size_nm, path, col)
        numeric[key] = values
    frame = numeric["frame"]
    if (frame != np.round(frame)).any() or (frame < 1).any():
        raise InputError(
            path,
            "column 'frame' must hold whole numbers >= 1 (1-based frames)",
            "check the frame column",
        )
    out["frame"] = frame.astype(np.int64)
    out["x"] = numeric["x"].astype(float)
    out["y"] = numeric["y"].astype(float)
    out["signal"] = numeric["signal"].astype(float)
    if "orig_x" in numeric and "orig_y" in numeric:
        out["pixel_x"] = numeric["orig_x"].astype(np.int64)
        out["pixel_y"] = numeric["orig_y"].astype(np.int64)
    else:
        out["pixel_x"] = np.floor(out["x"]).astype(np.int64)
        out["pixel_y"] = np.floor(out["y"]).astype(np.int64)
    # canonical columns first, then the file's own columns
    rest = [c for c in out.columns if c not in CANONICAL]
    return out[CANONICAL + rest]


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
) -> dict[str, int]:
    """Read, filter and write ``localizations.csv``; fail with one line if nothing is left."""
    from .io import write_csv

    df = read_localizations(table_path, fmt, pixel_size_nm)
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
    return counts
