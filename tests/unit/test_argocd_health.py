"""The Argo CD health checks in argocd/ are complete and consistent: every testdata file is a case, the cases
say what each Argo CD release the tests build shows, and docs/argocd.md carries exactly the scripts.
(tests/integration/test_argocd_verdicts.py runs the cases through Argo CD's own code.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kcmail.devenv import argocd, versions

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "argocd.md"


def test_every_testdata_file_is_a_case():
    for kind in argocd.KINDS:
        listed = {case.input_path.name for case in argocd.cases(kind)}
        present = {path.name for path in (argocd.CUSTOMIZATIONS / argocd.GROUP / kind / "testdata").glob("*.yaml")}
        assert listed == present, kind


def test_every_case_is_an_object_of_its_kind():
    for kind in argocd.KINDS:
        for case in argocd.cases(kind):
            assert yaml.safe_load(case.input_path.read_text())["kind"] == kind, case.input_path


def test_mailconfig_cases_cover_every_health_kcmail_can_cause():
    seen = {case.expected_on(versions.ARGOCD).status for case in argocd.cases("MailConfig")}
    assert seen == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_an_expectation_up_to_a_release_line_holds_for_that_line_and_earlier_ones():
    newest, older = argocd.Health("Degraded", "new"), argocd.Health("Progressing", "old")
    case = argocd.HealthCase(kind="MailConfig", input_path=Path("x.yaml"), expected=newest,
                             expected_up_to={(3, 5): older})
    assert [case.expected_on(v) for v in ("3.2.12", "3.5.8", "3.6.0", "4.0.1")] == [older, older, newest, newest]


def test_every_older_expectation_is_checked_against_a_release_the_tests_build():
    lines = [tuple(map(int, v.split(".")[:2])) for v in versions.ARGOCD_CHOICES]
    for kind in argocd.KINDS:
        for case in argocd.cases(kind):
            for up_to in case.expected_up_to:
                assert any(line <= up_to for line in lines), (case.input_path, up_to)
                assert tuple(map(int, versions.ARGOCD.split(".")[:2])) > up_to, (case.input_path, up_to)


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
    for key, script in argocd.argocd_cm_data().items():
        assert data[key] == script, key
