"""The benchmarks' configuration: config/config.yaml (or a run's config) as the pipeline's
scripts see it, validated against workflow/schemas/config.schema.yaml with every default filled
in. The config dataclasses have no defaults of their own, so a benchmark builds them from here,
e.g. ``PatchParams.from_config(section("patches", target="sf_fusion"))``.

Import it as ``harness`` (the benchmarks run as scripts, their folder on ``sys.path``).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = REPO / "config" / "config.yaml"


def load_config(path: str | Path = CONFIG) -> dict[str, Any]:
    """A config file validated against the schema, its defaults filled in."""
    from snakemake.utils import validate

    cfg = yaml.safe_load(Path(path).read_text()) or {}
    validate(cfg, str(SCHEMA), set_default=True)
    return cfg


@functools.cache
def _default_config() -> dict[str, Any]:
    return load_config()


def default_config() -> dict[str, Any]:
    """config/config.yaml as the pipeline's scripts see it; a fresh copy on every call."""
    return copy.deepcopy(_default_config())


def section(name: str, **overrides: Any) -> dict[str, Any]:
    """One section of :func:`default_config`, with ``overrides`` (keys of that section only)."""
    values = default_config()[name]
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise KeyError(f"{name} has no key(s) {', '.join(unknown)}")
    return {**values, **overrides}
