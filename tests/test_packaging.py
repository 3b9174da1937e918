"""Every environment the project describes installs exactly one TensorFlow distribution.

``tensorflow``, ``tensorflow-cpu``, ``tensorflow-intel``, ``tf-nightly``... all write the same
``tensorflow`` package: two of them in one environment overwrite each other's files. The
environments are read from the files that describe them (the README's and ``.ci/run``'s
``pip install`` of the project, ``envs/*.yaml``), statically first, then resolved by
``pip install --dry-run`` (slow; needs PyPI, skipped when it is unreachable).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# distributions that ship the `tensorflow` package
TF_DISTRIBUTIONS = {
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tensorflow-aarch64",
    "tensorflow-cpu-aws",
    "tensorflow-rocm",
    "tensorflow-directml",
    "intel-tensorflow",
    "tf-nightly",
    "tf-nightly-cpu",
    "tf-nightly-gpu",
    "tf-nightly-intel",
    "tf-nightly-macos",
}
PIP_INSTALL = re.compile(r"pip install\s[^`\n&;|]*")
PROJECT_ARG = re.compile(r"(\.{1,2})(?:\[([^\]]*)\])?")  # `.`, `.[cpu,test]`, `..[gpu]`
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
PLATFORMS = {  # marker environments the `cpu` and `gpu` extras must cover
    "linux-x86_64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "linux-aarch64": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_machine": "arm64"},
    "windows-amd64": {"sys_platform": "win32", "platform_machine": "AMD64"},
}


def canonical(name: str) -> str:
    """A distribution name as the package index compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Environment:
    """One environment: the arguments of its ``pip install``, run from ``cwd``."""

    label: str
    pip_args: list[str]
    cwd: Path = REPO
    conda_packages: list[str] = field(default_factory=list)

    def project_extras(self) -> set[str]:
        """The extras of the project's own install (``.[a,b]``, ``..[a]``)."""
        extras = _project_extras(self.pip_args, self.cwd)
        assert extras is not None, f"{self.label} does not install the project: {self.pip_args}"
        return extras

    def requirement_names(self) -> list[str]:
        """The distributions named besides the project (pip and conda), canonical."""
        named = [a for a in self.pip_args if not a.startswith((".", "-", "/"))]
        return [canonical(NAME.match(r).group(0)) for r in named + self.conda_packages]


def _project_extras(args: list[str], cwd: Path) -> set[str] | None:
    """The extras of the argument that installs the project, None when none does."""
    for arg in args:
        m = PROJECT_ARG.fullmatch(arg)
        if m and (cwd / m.group(1)).resolve() == REPO:
            return {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
    return None


def _installs_project(args: list[str], cwd: Path) -> bool:
    return _project_extras(args, cwd) is not None


def _pip_args(command: str) -> list[str]:
    """The arguments after ``pip install``, without options that do not change what resolves."""
    args = shlex.split(command)[2:]
    return [a for a in args if a not in ("-q", "--quiet", "-U", "--upgrade")]


def readme_environments() -> list[Environment]:
    """The README's installs of the project (code blocks and inline code)."""
    text = (REPO / "README.md").read_text()
    found = []
    for command in PIP_INSTALL.findall(text):
        args = _pip_args(command.strip())
        if _installs_project(args, REPO):
            found.append(Environment(f"README: {shlex.join(['pip', 'install', *args])}", args))
    return found


def ci_environment() -> Environment:
    """The single install of the project in ``.ci/run``."""
    lines = [
        line.strip()
        for line in (REPO / ".ci/run").read_text().splitlines()
        if "pip install" in line and not line.strip().startswith("#")
    ]
    envs = [
        Environment(".ci/run", _pip_args(PIP_INSTALL.search(line).group(0).strip()))
        for line in lines
    ]
    envs = [e for e in envs if _installs_project(e.pip_args, REPO)]
    assert len(envs) == 1, f".ci/run should install the project once, found {len(envs)}"
    return envs[0]


def conda_environments() -> list[Environment]:
    """``envs/*.yaml``: conda packages, and the pip section run from the file's folder."""
    found = []
    for path in sorted((REPO / "envs").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        conda, pip = [], []
        for dep in spec.get("dependencies", []):
            if isinstance(dep, dict):
                pip += [str(p) for p in dep.get("pip", [])]
            else:
                conda.append(str(dep))
        args = []
        for line in pip:  # a requirements line: "-e path" or a requirement
            args += shlex.split(line.split(" #")[0])
        found.append(Environment(f"envs/{path.name}", args, path.parent, conda))
    return found


def all_environments() -> list[Environment]:
    return [*readme_environments(), ci_environment(), *conda_environments()]


def distinct_environments() -> list[Environment]:
    """Each environment once (``.ci/run`` repeats the README's test command)."""
    seen, out = set(), []
    for env in all_environments():
        key = (tuple(env.pip_args), env.cwd.resolve(), tuple(env.conda_packages))
        if key not in seen:
            seen.add(key)
            out.append(env)
    return out


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def tf_requirements(requirements: list[str], platform: dict[str, str]) -> list[str]:
    """The TensorFlow distributions these requirements ask for on a platform."""
    env = {**default_environment(), **platform, "extra": ""}
    return [
        canonical(r.name)
        for r in map(Requirement, requirements)
        if canonical(r.name) in TF_DISTRIBUTIONS and (r.marker is None or r.marker.evaluate(env))
    ]


# ----------------------------------------------------------------------------- static checks


def test_base_dependencies_leave_tensorflow_to_the_extras():
    assert tf_requirements(pyproject()["dependencies"], PLATFORMS["linux-x86_64"]) == []
    for extra in ("cpu", "gpu"):
        assert extra in pyproject()["optional-dependencies"], f"no `{extra}` extra"


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_each_tensorflow_extra_names_one_distribution_per_platform(extra, platform):
    extras = pyproject()["optional-dependencies"]
    assert len(tf_requirements(extras[extra], PLATFORMS[platform])) == 1
    others = [e for e in extras if e not in ("cpu", "gpu")]  # e.g. `test` must not add one
    for other in others:
        assert tf_requirements(extras[other], PLATFORMS[platform]) == [], other


def test_the_described_environments_pick_exactly_one_tensorflow_extra():
    envs = all_environments()
    assert {"cpu", "gpu"} <= set().union(*(e.project_extras() for e in envs))
    for env in envs:
        assert len(env.project_extras() & {"cpu", "gpu"}) == 1, env.label
        extra_tf = [n for n in env.requirement_names() if n in TF_DISTRIBUTIONS]
        assert not extra_tf, f"{env.label} adds TensorFlow beside the project's extra: {extra_tf}"


def test_ci_installs_the_readme_test_command():
    readme = {tuple(e.pip_args) for e in readme_environments()}
    ci = ci_environment()
    assert tuple(ci.pip_args) in readme
    assert "test" in ci.project_extras()


# ----------------------------------------------------------------------- resolved by pip


def _pypi_reachable() -> str | None:
    """None when PyPI answers, else why not."""
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except OSError as exc:
        return str(exc)


def resolved_tensorflow(env: Environment, tmp_path: Path) -> list[str]:
    """The TensorFlow distributions ``pip install --dry-run`` would install (meta-packages
    that only pull another TensorFlow distribution, as ``tensorflow`` on Windows, excluded)."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    cmd += ["--report", str(report), "--quiet", *env.pip_args]
    run = subprocess.run(
        cmd,
        cwd=env.cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        timeout=900,
    )
    if run.returncode != 0 and re.search(r"NewConnectionError|Network is unreachable", run.stderr):
        pytest.skip(f"PyPI unreachable from pip: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, f"{shlex.join(cmd)} failed:\n{run.stderr[-3000:]}"
    installed = json.loads(report.read_text())["install"]
    environment = json.loads(report.read_text())["environment"]
    tf = {canonical(i["metadata"]["name"]): i["metadata"] for i in installed}
    tf = {k: v for k, v in tf.items() if k in TF_DISTRIBUTIONS}

    def wraps_another(meta: dict) -> bool:
        reqs = map(Requirement, meta.get("requires_dist") or [])
        return any(
            canonical(r.name) in tf
            and (r.marker is None or r.marker.evaluate({**environment, "extra": ""}))
            for r in reqs
        )

    return sorted(name for name, meta in tf.items() if not wraps_another(meta))


@pytest.mark.slow
@pytest.mark.parametrize("env", distinct_environments(), ids=lambda e: e.label)
def test_environment_resolves_to_exactly_one_tensorflow(env, tmp_path):
    why = _pypi_reachable()
    if why:
        pytest.skip(f"PyPI unreachable ({why}): cannot resolve {env.label}")
    python = [p for p in env.conda_packages if re.fullmatch(r"python\s*=+\s*[\d.]+", p)]
    if python and python[0].split("=")[-1] != f"{sys.version_info[0]}.{sys.version_info[1]}":
        pytest.skip(f"{env.label} pins {python[0]}; this is Python {sys.version.split()[0]}")
    found = resolved_tensorflow(env, tmp_path)
    assert len(found) == 1, f"{env.label} would install {found or 'no'} TensorFlow"
