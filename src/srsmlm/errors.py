"""Errors that reach the user as one clear line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class InputError(Exception):
    """Bad user input: the message names the file, the problem and the fix, on one line."""

    def __init__(self, path: str | Path | None, problem: str, fix: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. Fix: {fix}")


class ConfigKeyError(KeyError):
    """A config section lacks keys that a config dataclass takes: one line naming them.

    The config dataclasses have no defaults of their own: every default lives in
    ``workflow/schemas/config.schema.yaml`` (Snakemake fills them in before a script runs)."""

    def __init__(self, section: str, keys: Sequence[str]):
        self.section = section
        self.keys = tuple(keys)
        names = ", ".join(f"{section}.{key}" for key in self.keys)
        self.message = (
            f"{names} missing from the config section; build it from the config validated "
            "against workflow/schemas/config.schema.yaml (set_default=True), which holds every "
            "default"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


def config_values(section: Mapping[str, Any], name: str, keys: Iterable[str]) -> dict[str, Any]:
    """``{key: section[key]}`` for every key; :class:`ConfigKeyError` naming the missing ones
    (``name`` is the section's name in the config, e.g. ``patches``)."""
    keys = list(keys)
    missing = [key for key in keys if key not in section]
    if missing:
        raise ConfigKeyError(name, missing)
    return {key: section[key] for key in keys}
