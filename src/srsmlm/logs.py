"""Logging set-up and the error boundary used by the workflow's script adapters."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_path: str | Path | None) -> logging.Logger:
    """Send log records to ``log_path`` (if given) and warnings/errors to stderr."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_path, mode="w")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(file_handler)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING if log_path else logging.INFO)
    err.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(err)
    return logging.getLogger("srsmlm")


def run_step(log_path: str | Path | None, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one pipeline step with logging; bad input ends the process with one line and exit 1."""
    log = setup_logging(log_path)
    try:
        return func(*args, **kwargs)
    except InputError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
