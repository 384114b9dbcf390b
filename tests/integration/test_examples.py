"""Every example in examples/ is accepted by the real API server as it stands."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kcmail.devenv import operator_env

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples_for_each_auth_type():
    names = {path.stem for path in EXAMPLES}
    assert {"microsoft-365", "generic-xoauth2", "basic", "connection"} <= names


@pytest.fixture(scope="module")
def crds(devenv):
    operator_env.install_crds(devenv)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_example_passes_server_side_validation(example, devenv, kubectl, crds):
    namespaces = {doc["metadata"]["namespace"] for doc in yaml.safe_load_all(example.read_text())
                  if doc and doc["metadata"].get("namespace")}
    for namespace in namespaces:
        operator_env.apply(devenv, operator_env.namespace(namespace))
    result = kubectl("apply", "--dry-run=server", "-f", str(example))
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout
