"""Memory-bounded access to raw camera stacks (uint16 OME-TIFF, possibly split over files)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import tifffile

from .errors import InputError

log = logging.getLogger(__name__)

#: the guide's normalisation: raw counts are divided by 2**16
NORMALISATION = float(2**16)


class Stack:
    """Read-only view of a T x Y x X stack; frames are 1-based in all public methods.

    A single-file, uncompressed, contiguous stack is read one frame at a time by direct file reads
    at the frame's offset (no memory map, so resident memory does not grow with the file);
    anything else (Micro-Manager series split over ``*_MMStack_Pos0.ome.tif``, ``*_1.ome.tif``,
    ..., compressed files) is read one frame (page) at a time through tifffile. The whole stack
    is never loaded.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(
                self.path, "raw stack not found", "check the 'stack' path in the acquisitions sheet"
            )
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            self.dtype = np.dtype(series.dtype)
        except Exception as exc:  # tifffile raises several types for corrupt files
            raise InputError(
                self.path,
                f"cannot read as TIFF ({type(exc).__name__}: {exc})",
                "re-export the stack as (OME-)TIFF; the file may be truncated",
            ) from None
        squeezed = tuple(s for s in shape if s != 1)
        if len(squeezed) != 3:
            self.close()
            raise InputError(
                self.path,
                f"stack must be 3-D (frames x rows x columns), got shape {shape}",
                "export a single-channel time series",
            )
        self.shape: tuple[int, int, int] = squeezed  # type: ignore[assignment]
        self._series = series
        self._fh = None
        self._offset: int | None = None
        n_pages = len(series.pages)
        if n_pages != self.shape[0] and n_pages != 1:
            self.close()
            raise InputError(
                self.path,
                f"series has {n_pages} pages for {self.shape[0]} frames",
                "re-export the stack with one page per frame",
            )
        self._frame_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        if not series.is_multifile and series.dataoffset is not None:
            needed = series.dataoffset + self.shape[0] * self._frame_bytes
            size = self.path.stat().st_size
            if size < needed:
                self.close()
                raise InputError(
                    self.path,
                    f"truncated stack: {size} bytes, its header needs {needed}",
                    "copy the file again; it is shorter than its header says",
                )
            self._offset = int(series.dataoffset)
            self._fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        log.info(
            "stack %s: %s %s, %s",
            self.path,
            self.shape,
            self.dtype,
            "direct frame reads" if self._fh is not None else "read page by page",
        )

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def frame(self, frame: int) -> np.ndarray:
        """One frame (1-based), as stored (uint16), shape (rows, columns)."""
        if not 1 <= frame <= self.n_frames:
            raise IndexError(f"frame {frame} outside 1..{self.n_frames}")
        if self._fh is not None:
            buf = bytearray(self._frame_bytes)
            self._fh.seek(self._offset + (frame - 1) * self._frame_bytes)
            if self._fh.readinto(buf) != self._frame_bytes:
                raise InputError(
                    self.path, f"cannot read frame {frame} (file truncated)", "copy the file again"
                )
            return np.frombuffer(buf, dtype=self.dtype).reshape(self.frame_shape)
        try:
            page = self._series.pages[frame - 1]
            with warnings.catch_warnings():
                # tifffile reopens the other files of a multi-file series on demand
                warnings.filterwarnings("ignore", message=".*reading array from closed file")
                return np.asarray(page.asarray()).reshape(self.frame_shape)
        except Exception as exc:
            raise InputError(
                self.path,
                f"cannot read frame {frame} ({type(exc).__name__}: {exc})",
                "the file is corrupt or truncated; copy it again",
            ) from None

    def gather(self, frames: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Gather boxes: ``out[i] = stack[frames[i], rows[i][:, None], cols[i][None, :]]``.

        frames: (N,) 1-based; rows: (N, h); cols: (N, w). Returns (N, h, w) in the stack dtype.
        Reads each needed frame once, in increasing order.
        """
        frames = np.asarray(frames, dtype=np.int64)
        out = np.empty((len(frames), rows.shape[1], cols.shape[1]), dtype=self.dtype)
        if len(frames) == 0:
            return out
        order = np.argsort(frames, kind="stable")
        sorted_frames = frames[order]
        bounds = np.flatnonzero(np.diff(sorted_frames)) + 1
        for group in np.split(order, bounds):
            img = self.frame(int(frames[group[0]]))
            out[group] = img[rows[group][:, :, None], cols[group][:, None, :]]
        return out

    def close(self) -> None:
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
            self._fh = None
        if hasattr(self, "_tif"):
            self._tif.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
