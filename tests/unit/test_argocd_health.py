"""The Argo CD health checks in argocd/ give the health their health_test.yaml promises, run by a real Lua
5.1 in the sandbox Argo CD gives argocd-cm scripts, and docs/argocd.md carries exactly those scripts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from lupa import lua51

from kcmail.devenv import argocd

pytestmark = pytest.mark.unit

CASES = [case for kind in argocd.KINDS for case in argocd.cases(kind)]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "argocd.md"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}/{c.input_path.name}")
def test_health_script_gives_the_expected_health(case):
    obj = yaml.safe_load(case.input_path.read_text())
    assert obj["kind"] == case.kind
    assert argocd.evaluate(argocd.script_path(case.kind).read_text(), obj) == case.expected


def test_every_testdata_file_is_a_case():
    for kind in argocd.KINDS:
        listed = {case.input_path.name for case in argocd.cases(kind)}
        present = {path.name for path in (argocd.CUSTOMIZATIONS / argocd.GROUP / kind / "testdata").glob("*.yaml")}
        assert listed == present, kind


def test_mailconfig_cases_cover_every_health_kcmail_can_cause():
    seen = {case.expected.status for case in argocd.cases("MailConfig")}
    assert seen == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_the_sandbox_has_no_string_library_as_in_argo_cd():
    obj = {"metadata": {"name": "x"}}
    with pytest.raises(lua51.LuaError):
        argocd.evaluate('return {status = string.upper("healthy")}', obj)
    with pytest.raises(lua51.LuaError):
        argocd.evaluate('return {status = ("Healthy"):sub(1)}', obj)
    assert argocd.evaluate('return {status = "Healthy", message = tostring(os.time() > 0)}', obj) == \
        argocd.Health("Healthy", "true")


def test_an_unknown_status_word_reads_as_unknown_like_argo_cd():
    assert argocd.evaluate('return {status = "Fine"}', {}) == argocd.Health("Unknown", argocd.INVALID_STATUS_MESSAGE)


def test_a_script_that_returns_no_table_is_an_error():
    with pytest.raises(TypeError, match="expect table output"):
        argocd.evaluate('return "Healthy"', {})


def test_both_connection_kinds_share_one_script():
    assert argocd.script_path("KeycloakConnection").read_text() == \
        argocd.script_path("ClusterKeycloakConnection").read_text()


def _argocd_cm() -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    for block in blocks:
        docs = [d for d in yaml.safe_load_all(block) if d]
        for doc in docs:
            if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm":
                return doc
    raise AssertionError("docs/argocd.md has no argocd-cm ConfigMap block")


def test_the_argocd_cm_in_the_docs_embeds_exactly_the_health_scripts():
    data = _argocd_cm()["data"]
    for kind in argocd.KINDS:
        assert data[argocd.argocd_cm_key(kind)] == argocd.script_path(kind).read_text(), kind
