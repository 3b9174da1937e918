"""Every environment the project describes installs exactly one deep-learning framework stack.

The framework Keras runs on comes from one extra: ``cpu`` or ``gpu`` (TensorFlow), ``jax`` or
``torch``. ``tensorflow``, ``tensorflow-cpu``, ``tensorflow-intel``, ``tf-nightly``... all write the
same ``tensorflow`` package: two of them in one environment overwrite each other's files; and a
second framework is gigabytes of CUDA libraries nobody uses. The environments are read from the
files that describe them (the README's and ``.ci/run``'s ``pip install`` of the project,
``envs/*.yaml``), statically first, then resolved by ``pip install --dry-run`` (slow; needs
PyPI, skipped when it is unreachable). ``envs/cpu.yaml``, for the CPU stages only, has none.
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
# the distributions of the other stacks (jaxlib and torch carry the compiled framework)
STACKS = {"jax": {"jax", "jaxlib"}, "torch": {"torch"}}
EXTRA_STACK = {"cpu": "tensorflow", "gpu": "tensorflow", "jax": "jax", "torch": "torch"}
CPU_STAGE_ENVS = {"envs/cpu.yaml"}  # conda environment of the CPU rules: no framework
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


def ci_environments() -> list[Environment]:
    """The installs of the project in ``.ci/run``: the README's test command, then the JAX
    step's."""
    lines = [
        line.strip()
        for line in (REPO / ".ci/run").read_text().splitlines()
        if "pip install" in line and not line.strip().startswith("#")
    ]
    envs = [
        Environment(".ci/run", _pip_args(PIP_INSTALL.search(line).group(0).strip()))
        for line in lines
    ]
    return [e for e in envs if _installs_project(e.pip_args, REPO)]


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
    return [*readme_environments(), *ci_environments(), *conda_environments()]


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


def tf_requirements(
    requirements: list[str], platform: dict[str, str], names: set[str] = TF_DISTRIBUTIONS
) -> list[str]:
    """The TensorFlow distributions (or others of ``names``) these requirements ask for on a
    platform."""
    env = {**default_environment(), **platform, "extra": ""}
    return [
        canonical(r.name)
        for r in map(Requirement, requirements)
        if canonical(r.name) in names and (r.marker is None or r.marker.evaluate(env))
    ]


def stacks_named(requirements: list[str], platform: dict[str, str]) -> set[str]:
    """The framework stacks these requirements ask for on a platform."""
    found = {"tensorflow"} if tf_requirements(requirements, platform) else set()
    return found | {k for k, v in STACKS.items() if tf_requirements(requirements, platform, v)}


# ----------------------------------------------------------------------------- static checks


def test_base_dependencies_leave_the_framework_to_the_extras():
    for platform in PLATFORMS.values():
        assert stacks_named(pyproject()["dependencies"], platform) == set()
    for extra in EXTRA_STACK:
        assert extra in pyproject()["optional-dependencies"], f"no `{extra}` extra"


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_each_extra_names_one_framework_stack(platform):
    extras = pyproject()["optional-dependencies"]
    for extra, requirements in extras.items():
        want = {EXTRA_STACK[extra]} if extra in EXTRA_STACK else set()
        assert stacks_named(requirements, PLATFORMS[platform]) == want, extra


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_each_tensorflow_extra_names_one_distribution_per_platform(extra, platform):
    extras = pyproject()["optional-dependencies"]
    assert len(tf_requirements(extras[extra], PLATFORMS[platform])) == 1
    others = [e for e in extras if e not in ("cpu", "gpu")]  # e.g. `test`, `jax` must not add one
    for other in others:
        assert tf_requirements(extras[other], PLATFORMS[platform]) == [], other


def wanted_stacks(env: Environment) -> int:
    """How many framework stacks ``env`` must hold: none for the CPU stages' environment."""
    return 0 if env.label in CPU_STAGE_ENVS else 1


def test_the_described_environments_pick_exactly_one_framework_extra():
    envs = all_environments()
    assert set(EXTRA_STACK) <= set().union(*(e.project_extras() for e in envs))
    for env in envs:
        assert len(env.project_extras() & set(EXTRA_STACK)) == wanted_stacks(env), env.label
        frameworks = TF_DISTRIBUTIONS | STACKS["torch"]
        named = [n for n in env.requirement_names() if n in frameworks]
        assert not named, f"{env.label} adds a framework beside the project's extra: {named}"
        if "jax" in env.requirement_names():  # only JAX's own CUDA plugin, beside its extra
            assert "jax" in env.project_extras(), env.label


def test_each_backend_has_its_conda_environment():
    backends = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    backends = backends["properties"]["training"]["properties"]["backend"]["enum"]
    envs = {e.label: e.project_extras() for e in conda_environments()}
    for backend in backends:
        extras = envs[f"envs/{backend}.yaml"]
        assert {EXTRA_STACK[x] for x in extras & set(EXTRA_STACK)} == {backend}
    rules = (REPO / "workflow/rules/train.smk").read_text()
    assert "cpu.yaml" not in rules and rules.count("conda:") == rules.count("backend_env()")


def test_ci_installs_the_readme_test_command_then_a_jax_one():
    readme = {tuple(e.pip_args) for e in readme_environments()}
    tf, jax = ci_environments()
    assert tuple(tf.pip_args) in readme
    assert "test" in tf.project_extras() and {"jax", "test"} == jax.project_extras()


# ----------------------------------------------------------------------- resolved by pip


def _pypi_reachable() -> str | None:
    """None when PyPI answers, else why not."""
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except OSError as exc:
        return str(exc)


def resolved_frameworks(env: Environment, tmp_path: Path) -> list[str]:
    """The TensorFlow distributions ``pip install --dry-run`` would install (meta-packages
    that only pull another TensorFlow distribution, as ``tensorflow`` on Windows, excluded),
    and ``jaxlib`` and ``torch`` if it would install them."""
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
    names = {canonical(i["metadata"]["name"]): i["metadata"] for i in installed}
    tf = {k: v for k, v in names.items() if k in TF_DISTRIBUTIONS}
    others = sorted(set(names) & {"jaxlib", "torch"})

    def wraps_another(meta: dict) -> bool:
        reqs = map(Requirement, meta.get("requires_dist") or [])
        return any(
            canonical(r.name) in tf
            and (r.marker is None or r.marker.evaluate({**environment, "extra": ""}))
            for r in reqs
        )

    return sorted(name for name, meta in tf.items() if not wraps_another(meta)) + others


@pytest.mark.slow
@pytest.mark.parametrize("env", distinct_environments(), ids=lambda e: e.label)
def test_environment_resolves_to_exactly_one_framework(env, tmp_path):
    why = _pypi_reachable()
    if why:
        pytest.skip(f"PyPI unreachable ({why}): cannot resolve {env.label}")
    python = [p for p in env.conda_packages if re.fullmatch(r"python\s*=+\s*[\d.]+", p)]
    if python and python[0].split("=")[-1] != f"{sys.version_info[0]}.{sys.version_info[1]}":
        pytest.skip(f"{env.label} pins {python[0]}; this is Python {sys.version.split()[0]}")
    found = resolved_frameworks(env, tmp_path)
    assert len(found) == wanted_stacks(env), f"{env.label} would install {found or 'no'} framework"
