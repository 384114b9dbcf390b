"""The operator's image, built from the Dockerfile for real (buildah, Debian bases made by mmdebstrap), holds
what the Dockerfile promises: kcmail as a numeric non-root user, its entrypoint, no compiler, no pip, none of
the test tools, and a docker-archive that containerd can import under the name the chart's image resolves to.
"""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from kcmail.devenv import image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built() -> image.Image:
    # `make test` builds it before pytest (cached by a digest of its inputs): this finds it, or builds it.
    return image.build()


def test_the_image_runs_kcmail_as_a_numeric_non_root_user(built):
    config = image.config(built.name)
    assert config["User"] == "10001:10001"
    assert (config["Entrypoint"], config["Cmd"]) == (["kcmail"], ["run"])
    assert config["Labels"]["org.opencontainers.image.version"] == image.version()
    who = image.run(built.name, "id", "-u")
    assert (who.returncode, who.stdout.strip()) == (0, "10001"), who.stderr
    helped = image.run(built.name, "kcmail", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "usage: kcmail" in helped.stdout
    for command in ("run", "probe", "audit", "export"):
        assert command in helped.stdout


def test_the_image_holds_no_compiler_no_pip_and_no_test_tools(built):
    found = image.run(built.name, "python3", "-c", (
        "import importlib.util, json, shutil; "
        "tools = [t for t in ('gcc', 'cc', 'c++', 'make', 'pip', 'pip3', 'git') if shutil.which(t)]; "
        "modules = [m for m in ('pip', 'pytest', 'hypothesis', 'ruff', 'setuptools') "
        "if importlib.util.find_spec(m)]; "
        "print(json.dumps({'tools': tools, 'modules': modules}))"))
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == {"tools": [], "modules": []}
    # The operator itself imports, with its runtime dependencies only.
    imported = image.run(built.name, "python3", "-c", "import kcmail.handlers, kopf, httpx, keycloak; print('ok')")
    assert (imported.returncode, imported.stdout.strip()) == (0, "ok"), imported.stderr


def test_the_archive_is_named_as_the_chart_refers_to_the_image(built):
    with tarfile.open(built.archive) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    (entry,) = manifest
    # Under that name (and the build's own), so `ctr images import` gives the CRI the one it looks for.
    assert built.archive_name in entry["RepoTags"]
    assert built.archive_name == f"docker.io/library/kcmail:{image.version()}"


def test_a_change_to_the_operator_is_a_new_image(tmp_path):
    for item in image.INPUTS:
        source = image.REPO / item
        target = tmp_path / item
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.write_bytes(source.read_bytes())
    assert image.inputs_digest(tmp_path) == image.inputs_digest()
    (tmp_path / "operator" / "kcmail" / "cli.py").write_text("# changed\n", encoding="utf-8")
    assert image.inputs_digest(tmp_path) != image.inputs_digest()
