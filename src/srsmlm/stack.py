"""Memory-bounded access to raw camera stacks (uint16 OME-TIFF, possibly split over files)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from numpy.lib.stride_tricks import sliding_window_view

from .errors import InputError

log = logging.getLogger(__name__)

#: the guide's normalisation: raw counts are divided by 2**16
NORMALISATION = float(2**16)

#: frames read at once by Stack.gather (bounds its memory)
GATHER_BUFFER_BYTES = 32 * 2**20


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

    def frame(self, frame: int, out: np.ndarray | None = None) -> np.ndarray:
        """One frame (1-based), as stored (uint16), shape (rows, columns); read into ``out``
        (C-contiguous, that shape and the stack dtype) when given."""
        if not 1 <= frame <= self.n_frames:
            raise IndexError(f"frame {frame} outside 1..{self.n_frames}")
        if out is None:
            out = np.empty(self.frame_shape, dtype=self.dtype)
        if self._fh is not None:
            self._read_rows(frame, 0, self.shape[1], out)
            return out
        try:
            page = self._series.pages[frame - 1]
            with warnings.catch_warnings():
                # tifffile reopens the other files of a multi-file series on demand
                warnings.filterwarnings("ignore", message=".*reading array from closed file")
                out[:] = np.asarray(page.asarray()).reshape(self.frame_shape)
                return out
        except Exception as exc:
            raise InputError(
                self.path,
                f"cannot read frame {frame} ({type(exc).__name__}: {exc})",
                "the file is corrupt or truncated; copy it again",
            ) from None

    def _read_rows(self, frame: int, start: int, stop: int, out: np.ndarray) -> None:
        """Rows start..stop-1 of a frame (direct reads only) into ``out`` (contiguous)."""
        row_bytes = self._frame_bytes // self.shape[1]
        offset = self._offset + (frame - 1) * self._frame_bytes + start * row_bytes
        nbytes = (stop - start) * row_bytes
        self._fh.seek(offset)
        if self._fh.readinto(memoryview(out).cast("B")) != nbytes:
            raise InputError(
                self.path, f"cannot read frame {frame} (file truncated)", "copy the file again"
            )

    def gather(
        self, frames: np.ndarray, boxes: Sequence[tuple[np.ndarray, np.ndarray, int, int]]
    ) -> list[np.ndarray]:
        """Cut boxes out of frames; each needed frame is read once, in increasing order.

        frames: (N,) 1-based. boxes: one (row0 (N,), col0 (N,), height, width) per kind of box
        (e.g. the localization box and the spectral box of each patch). Returns one
        (N, height, width) array per kind, in the stack dtype, with
        ``out[k][i] = frame[frames[i]][row0[i]:row0[i] + height, col0[i]:col0[i] + width]``.
        Boxes must lie inside the frame (ValueError otherwise).
        """
        frames = np.asarray(frames, dtype=np.int64)
        rows, cols = self.frame_shape
        kinds = []
        for row0, col0, h, w in boxes:
            row0, col0 = np.asarray(row0, np.int64), np.asarray(col0, np.int64)
            if len(frames) and (
                row0.min() < 0 or col0.min() < 0 or row0.max() + h > rows or col0.max() + w > cols
            ):
                raise ValueError(f"{self.path}: a {h} x {w} box leaves the {rows} x {cols} frame")
            kinds.append((row0, col0, h, w))
        out = [np.empty((len(frames), h, w), dtype=self.dtype) for _, _, h, w in kinds]
        if len(frames) == 0:
            return out
        order = np.argsort(frames, kind="stable")
        sorted_frames = frames[order]
        needed = np.unique(sorted_frames)
        # frames are read into a reused buffer of at most GATHER_BUFFER_BYTES, then all boxes
        # of those frames are cut in one vectorised step per kind
        per_batch = max(1, GATHER_BUFFER_BYTES // self._frame_bytes)
        buf = np.empty((min(per_batch, len(needed)), *self.frame_shape), dtype=self.dtype)
        for b0 in range(0, len(needed), per_batch):
            batch = needed[b0 : b0 + per_batch]
            lo = np.searchsorted(sorted_frames, batch[0], side="left")
            hi = np.searchsorted(sorted_frames, batch[-1], side="right")
            idx = order[lo:hi]
            pos = np.searchsorted(batch, sorted_frames[lo:hi])
            if self._fh is None:
                for j, f in enumerate(batch):
                    self.frame(int(f), out=buf[j])
            else:  # only the rows the boxes cover, one read per run of needed rows
                for j, a, b in _row_runs(
                    len(batch), rows, pos, [(r[idx], h) for r, _, h, _ in kinds]
                ):
                    self._read_rows(int(batch[j]), a, b, buf[j, a:b])
            for dest, (row0, col0, h, w) in zip(out, kinds, strict=True):
                # every h x w window of every frame, indexed by frame and top-left corner (a view)
                windows = sliding_window_view(buf[: len(batch)], (h, w), axis=(1, 2))
                dest[idx] = windows[pos, row0[idx], col0[idx]]
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


def _row_runs(
    n_frames: int, n_rows: int, pos: np.ndarray, boxes: Sequence[tuple[np.ndarray, int]]
) -> Iterator[tuple[int, int, int]]:
    """Runs of rows covered by boxes: (frame position, first row, stop row), in file order.

    pos: frame position (0..n_frames-1) of each box; boxes: (row0 per box, height) per kind.
    """
    cover = np.zeros((n_frames, n_rows + 1), dtype=np.int32)
    for row0, h in boxes:
        np.add.at(cover, (pos, row0), 1)
        np.add.at(cover, (pos, row0 + h), -1)
    needed = np.cumsum(cover[:, :n_rows], axis=1) > 0
    edges = np.diff(needed.astype(np.int8), axis=1, prepend=0, append=0)
    fr, start = np.nonzero(edges == 1)
    _, stop = np.nonzero(edges == -1)
    return zip(fr.tolist(), start.tolist(), stop.tolist(), strict=True)
