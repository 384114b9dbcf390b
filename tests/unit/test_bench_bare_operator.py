"""The bare operator, measure 1's floor: its CRD, its decisions and its status, without a cluster."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml
from bench import bare_operator
from bench.cluster import applied

from kcmail.spec import GROUP, VERSION

pytestmark = pytest.mark.unit

CRD = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "mailconfigs.yaml").read_text())
NOW = datetime.datetime(2026, 12, 6, 9, 0, tzinfo=datetime.UTC)


def _object(generation: int, status: dict | None = None) -> dict:
    return {"apiVersion": f"{bare_operator.FLOOR_GROUP}/{VERSION}", "kind": bare_operator.FLOOR_KIND,
            "metadata": {"name": "mail", "namespace": "bench-change", "generation": generation},
            "spec": {"realm": "bench-change-floor"}, **({"status": status} if status is not None else {})}


def test_the_floor_crd_has_the_mailconfig_schema_under_a_group_kcmail_does_not_watch():
    crd = bare_operator.floor_crd(CRD)
    assert crd["spec"]["group"] != GROUP
    assert crd["metadata"]["name"] == f"{bare_operator.FLOOR_PLURAL}.{crd['spec']['group']}"
    assert crd["spec"]["versions"] == CRD["spec"]["versions"]  # schema, validation, status subresource
    assert crd["spec"]["scope"] == CRD["spec"]["scope"]
    # kubectl's short names and kcmail's label (how kcmail dev and the tests find kcmail's CRDs) stay kcmail's.
    assert "shortNames" not in crd["spec"]["names"]
    assert "categories" not in crd["spec"]["names"]
    assert "app.kubernetes.io/name" not in crd["metadata"]["labels"]
    assert CRD["spec"]["group"] == GROUP  # the copy changed nothing in the original


def test_a_floor_object_is_the_mailconfig_under_the_floor_kind():
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MailConfig", "metadata": {"name": "mail"},
                "spec": {"realm": "r"}}
    copied = bare_operator.floor_object(manifest)
    assert (copied["apiVersion"], copied["kind"]) == (f"{bare_operator.FLOOR_GROUP}/{VERSION}", "FloorMailConfig")
    assert (copied["metadata"], copied["spec"]) == (manifest["metadata"], manifest["spec"])
    assert manifest["kind"] == "MailConfig"


def test_a_generation_is_applied_once_and_a_listed_applied_status_is_trusted_only_at_start():
    assert bare_operator.due(_object(2), applied_generation=None) == 2
    assert bare_operator.due(_object(2), applied_generation=1) == 2
    assert bare_operator.due(_object(2), applied_generation=2) is None
    done = bare_operator.status_patch(2, NOW)["status"]
    assert bare_operator.due(_object(2, done), applied_generation=None) is None
    assert bare_operator.due(_object(3, done), applied_generation=None) == 3
    failed = {"observedGeneration": 2, "conditions": [{"type": "Applied", "status": "False"}]}
    assert bare_operator.due(_object(2, failed), applied_generation=None) == 2


def test_the_floor_status_is_what_the_harness_waits_for_and_only_for_its_generation():
    obj = _object(4, bare_operator.status_patch(4, NOW)["status"])
    assert applied(obj, 4)
    assert not applied(obj, 5)
    assert obj["status"]["conditions"][0]["lastTransitionTime"] == "2026-12-06T09:00:00Z"


def test_watch_lines_become_events_and_keep_alive_blank_lines_are_skipped():
    lines = iter(['{"type": "ADDED", "object": {"a": 1}}', "", '{"type": "MODIFIED", "object": {"a": 2}}'])
    assert [e["type"] for e in bare_operator.events(lines)] == ["ADDED", "MODIFIED"]
