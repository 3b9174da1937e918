"""Patch geometry: one small dataclass built once from the config; every shape derives from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Geometry:
    """Shape of one patch, in camera pixels.

    A patch is ``height`` rows by ``loc_width + spectral_width`` columns: the box around the
    localization (``loc_width`` columns centred on the candidate pixel) followed by the spectral
    box, which starts ``spectral_offset`` columns to the right of the candidate pixel (the
    distance from the localization pixel to the first spectral column, along x).
    """

    height: int
    loc_width: int
    spectral_width: int
    spectral_offset: int

    def __post_init__(self) -> None:
        for name in ("height", "loc_width", "spectral_width"):
            if int(getattr(self, name)) < 2:
                raise ValueError(f"geometry.{name} must be >= 2, got {getattr(self, name)}")
        if self.spectral_offset < self.loc_width - self.loc_width // 2:
            raise ValueError(
                "geometry.spectral_offset must place the spectral box right of the localization "
                f"box (>= {self.loc_width - self.loc_width // 2}), got {self.spectral_offset}"
            )

    @property
    def width(self) -> int:
        """Total patch width (px): localization box + spectral box."""
        return self.loc_width + self.spectral_width

    @property
    def shape(self) -> tuple[int, int]:
        """Patch shape (rows, columns)."""
        return (self.height, self.width)

    @property
    def half_height(self) -> int:
        """Rows above the candidate pixel in the box."""
        return self.height // 2

    @property
    def half_loc_width(self) -> int:
        """Columns left of the candidate pixel in the localization box."""
        return self.loc_width // 2

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Geometry:
        """Build from the full config (uses its ``geometry`` section) or the section itself."""
        section = config.get("geometry", config)
        return cls(
            height=int(section["height"]),
            loc_width=int(section["loc_width"]),
            spectral_width=int(section["spectral_width"]),
            spectral_offset=int(section["spectral_offset"]),
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
