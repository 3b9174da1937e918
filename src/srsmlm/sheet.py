"""The acquisitions sheet: one row per acquisition (TSV)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .errors import InputError
from .localizations import FORMATS

COLUMNS = ["name", "stack", "localizations", "format", "pixel_size_nm", "role"]
ROLES = ("train", "apply", "both")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_sheet(path: str | Path) -> pd.DataFrame:
    """Read and check the sheet; returns it indexed by ``name``.

    Checks: file exists, required columns, unique names usable as folder names, known
    ``format`` and ``role``, ``pixel_size_nm`` present and positive for ThunderSTORM tables.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            path, "acquisitions sheet not found", "set 'acquisitions' in the config to a TSV sheet"
        )
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, comment="#", skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(
            path,
            f"cannot parse the sheet ({str(exc).splitlines()[0]})",
            "write it as a tab-separated table with a header line",
        ) from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            path,
            f"missing column(s) {', '.join(missing)}",
            f"the sheet needs the tab-separated columns {', '.join(COLUMNS)}",
        )
    if df.empty:
        raise InputError(path, "the sheet lists no acquisition", "add one row per acquisition")
    df = df.apply(lambda s: s.str.strip() if s.dtype == object else s)
    dup = df["name"][df["name"].duplicated()].unique().tolist()
    if dup:
        raise InputError(
            path,
            f"duplicate acquisition name(s): {', '.join(dup)}",
            "give every acquisition a unique name",
        )
    for _, row in df.iterrows():
        name = row["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(
                path,
                f"acquisition name {name!r} is not usable as a folder name",
                "use letters, digits, '_', '-' or '.'",
            )
        for col in ("stack", "localizations"):
            if not isinstance(row[col], str) or not row[col]:
                raise InputError(path, f"acquisition {name}: empty '{col}'", f"give the {col} path")
        if row["format"] not in FORMATS:
            raise InputError(
                path,
                f"acquisition {name}: unknown format {row['format']!r}",
                f"use one of {', '.join(FORMATS)}",
            )
        if row["role"] not in ROLES:
            raise InputError(
                path,
                f"acquisition {name}: unknown role {row['role']!r}",
                f"use one of {', '.join(ROLES)}",
            )
    px = pd.to_numeric(df["pixel_size_nm"], errors="coerce")
    bad_px = df["pixel_size_nm"].notna() & (px.isna() | (px <= 0))
    if bad_px.any():
        raise InputError(
            path,
            f"pixel_size_nm must be a positive number (acquisition {df['name'][bad_px].iloc[0]})",
            "give the camera pixel size in nm",
        )
    need = (df["format"] == "thunderstorm") & px.isna()
    if need.any():
        raise InputError(
            path,
            f"acquisition {df['name'][need].iloc[0]}: ThunderSTORM tables are in nm "
            "but pixel_size_nm is empty",
            "give the camera pixel size in nm",
        )
    df["pixel_size_nm"] = px
    return df.set_index("name", drop=False)


def names_with_role(sheet: pd.DataFrame, role: str) -> list[str]:
    """Acquisitions used for ``role`` ('train' or 'apply'); 'both' counts for either."""
    return sheet.index[sheet["role"].isin([role, "both"])].tolist()
