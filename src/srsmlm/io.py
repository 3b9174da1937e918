"""Atomic file writing, so a failed step never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import tifffile

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write a table as CSV (no index), atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON with sorted keys (stable bytes), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_tif(array: np.ndarray, path: str | Path) -> None:
    """Write an N x H x W array as a (deterministic, no timestamp) TIFF, atomically."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, photometric="minisblack", metadata={"axes": "QYX"})


def prefetch(items: Iterable[T], fn: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in order, computing ``fn`` of the next item in a background
    thread while the caller works on the current one (e.g. reading the next chunk of patches
    while this one is filtered). At most two results exist at a time; an exception in ``fn``
    is raised here, for the item it belongs to."""
    with ThreadPoolExecutor(1) as pool:
        pending: tuple[T, Future[R]] | None = None
        for item in items:
            future = pool.submit(fn, item)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (item, future)
        if pending is not None:
            yield pending[0], pending[1].result()


class PatchSpool:
    """Patches appended chunk by chunk to .npy files in a temporary folder (saved by a
    background thread, so the caller goes on computing), then written into N x H x W float32
    TIFFs a chunk at a time: memory stays bounded by a few chunks."""

    def __init__(self, directory: str | Path, names: tuple[str, ...]):
        self.dir = Path(directory)
        self.names = names
        self.files: list[dict[str, Path]] = []
        self.n = 0
        self._saver = ThreadPoolExecutor(1)
        self._saving: list[Future[None]] = []

    def add(self, **arrays: np.ndarray) -> None:
        n = len(next(iter(arrays.values())))
        if n == 0:
            return
        if set(arrays) != set(self.names) or any(len(a) != n for a in arrays.values()):
            raise ValueError(f"PatchSpool.add needs {self.names} of equal length")
        self._wait(keep=1)  # at most one chunk waits to be saved (bounded memory)
        i = len(self.files)
        chunk = {name: self.dir / f"{name}_{i:05d}.npy" for name in self.names}
        data = {name: np.asarray(arrays[name], dtype=np.float32) for name in self.names}
        self._saving.append(self._saver.submit(self._save, chunk, data))
        self.files.append(chunk)
        self.n += n

    @staticmethod
    def _save(chunk: dict[str, Path], data: dict[str, np.ndarray]) -> None:
        for name, path in chunk.items():
            np.save(path, data[name])

    def _wait(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` saves are pending; re-raise a failed save."""
        while len(self._saving) > keep:
            self._saving.pop(0).result()

    def close(self) -> None:
        """Finish (or fail) the pending saves and stop the saving thread."""
        try:
            self._wait()
        finally:
            self._saver.shutdown(wait=True)

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        for chunk in self.files:
            yield np.load(chunk[name])

    def write(self, paths: dict[str, str | Path], shape: tuple[int, int]) -> None:
        """Write each named stack to its TIFF (atomically), one chunk at a time: the image data
        is contiguous, so each chunk is one write (same bytes as writing page by page)."""
        self._wait()
        for name, path in paths.items():
            with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
                tif.write(
                    self.chunks(name),
                    shape=(self.n, *shape),
                    dtype=np.float32,
                    photometric="minisblack",
                    metadata={"axes": "QYX"},
                    contiguous=True,
                )


def spool_dir(beside: str | Path) -> Path:
    """A fresh hidden temporary folder next to an output (same disk, cleaned by the caller)."""
    parent = Path(beside).parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".spool_", dir=parent))


def chunk_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(n)``."""
    return [slice(a, min(a + size, n)) for a in range(0, n, max(size, 1))]


def read_patches(raw_tif: str | Path, pages: Sequence[int] | np.ndarray | slice) -> np.ndarray:
    """Pages ``pages`` of a patch TIFF (N x H x W) without reading the others: a memory map
    of the contiguous image data (mapped only for the copy); page by page if the file cannot
    be mapped. ``pages``: page numbers or a slice of them."""
    if isinstance(pages, slice):
        pages = np.arange(pages.start or 0, pages.stop)
    pages = np.asarray(pages, dtype=np.int64)
    if not len(pages):
        return np.zeros((0, 0, 0), np.float32)
    try:
        stack = tifffile.memmap(raw_tif, mode="r")
    except ValueError:  # not contiguous / compressed: read just those pages
        arr = tifffile.imread(raw_tif, key=pages.tolist())
        return np.asarray(arr, np.float32).reshape(len(pages), *np.shape(arr)[-2:])
    try:
        stack = stack.reshape(-1, *stack.shape[-2:])
        if pages.max() >= len(stack):
            raise IndexError(f"{raw_tif} has {len(stack)} patches, page {pages.max()} asked for")
        return np.array(stack[pages], dtype=np.float32)
    finally:
        del stack
