"""Argo CD's own code gives every case of argocd/'s health_test.yaml the health the case expects, on each
Argo CD release the tests build (the newest, and the newest before 3.6 changed deletion), and runs the
scripts in the sandbox they are written for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kcmail.devenv import argocd, components, versions

pytestmark = pytest.mark.integration

CASES = [case for kind in argocd.KINDS for case in argocd.cases(kind)]
Verdicts = Callable[[str], dict[Path, argocd.Health | None]]


@pytest.fixture(scope="module")
def verdicts() -> Verdicts:
    """Every case's health on an Argo CD release, in one run of its evaluator."""
    found: dict[str, dict[Path, argocd.Health | None]] = {}

    def on(version: str) -> dict[Path, argocd.Health | None]:
        if version not in found:
            objects = [yaml.safe_load(case.input_path.read_text()) for case in CASES]
            health = argocd.evaluate(components.build_argocd_health_eval(version), objects)
            found[version] = dict(zip((case.input_path for case in CASES), health, strict=True))
        return found[version]

    return on


@pytest.mark.parametrize("version", versions.ARGOCD_CHOICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}/{c.input_path.name}")
def test_argo_cd_shows_the_health_the_case_expects(case: argocd.HealthCase, version: str, verdicts: Verdicts):
    assert verdicts(version)[case.input_path] == case.expected_on(version)


def _run(version: str, script: str) -> argocd.Health | None:
    probe = {"apiVersion": "example.test/v1", "kind": "Probe", "metadata": {"name": "p", "namespace": "n"}}
    binary = components.build_argocd_health_eval(version)
    (health,) = argocd.evaluate(binary, [probe], {"resource.customizations.health.example.test_Probe": script})
    return health


@pytest.mark.parametrize("version", versions.ARGOCD_CHOICES)
def test_scripts_have_no_string_library_and_os_only_through_require(version: str):
    # What the scripts' header comments promise a maintainer, so that a script never relies on more.
    assert _run(version, 'return {status = string.upper("healthy")}') == argocd.Health(
        "Unknown", "<string>:1: attempt to index a non-table object(nil) with key 'upper'")
    assert _run(version, 'return {status = "Healthy", message = ("x"):sub(1)}').status == "Unknown"
    assert _run(version, 'return {status = "Healthy", message = tostring(os)}') == argocd.Health("Healthy", "nil")
    clock = 'local os = require("os"); return {status = "Healthy", message = tostring(os.time() > 0)}'
    assert _run(version, clock) == argocd.Health("Healthy", "true")


@pytest.mark.parametrize("version", versions.ARGOCD_CHOICES)
def test_an_unknown_status_word_or_a_non_table_reads_as_unknown(version: str):
    assert _run(version, 'return {status = "Fine"}') == argocd.Health(
        "Unknown", "Lua returned an invalid health status")
    assert _run(version, 'return "Healthy"') == argocd.Health(
        "Unknown", "expect table output from Lua script, not string")


@pytest.mark.parametrize("version", versions.ARGOCD_CHOICES)
def test_a_kind_without_a_script_has_no_health(version: str):
    assert _run(version, "") is None
