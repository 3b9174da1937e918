"""Errors that reach the user as one clear line."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: the message names the file, the problem and the fix, on one line."""

    def __init__(self, path: str | Path | None, problem: str, fix: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. Fix: {fix}")
