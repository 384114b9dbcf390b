"""The CRDs are the API reference: every field explains itself and docs/reference.md says what they say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kcmail.devenv import crd_reference
from kcmail.devenv.crd_reference import iter_fields, iter_rules, load_crds, stored_schema

pytestmark = pytest.mark.unit

_REFERENCE = crd_reference.CRDS_DIR.parent / "docs" / "reference.md"
_CRDS = load_crds()


def _kind(crd) -> str:
    return crd["spec"]["names"]["kind"]


def test_committed_reference_equals_the_generator_output():
    generated = subprocess.run([sys.executable, "-m", "kcmail.devenv.crd_reference"], capture_output=True,
                               text=True, check=True).stdout
    assert _REFERENCE.read_text() == generated, f"stale; run `{crd_reference.REGENERATE}`"


@pytest.mark.parametrize("crd", _CRDS, ids=_kind)
def test_every_schema_property_has_a_description(crd):
    _, schema = stored_schema(crd)
    assert schema.get("description", "").strip()
    # The API server forbids anything but type on metadata, a description included.
    missing = [f.path for f in iter_fields(schema)
               if f.path != "metadata" and not f.schema.get("description", "").strip()]
    assert missing == []


@pytest.mark.parametrize("crd", _CRDS, ids=_kind)
def test_every_defaulted_field_names_its_default(crd):
    # `kubectl explain` shows a field's description but not its default. An object's default {} only
    # triggers the defaults of its fields, which say their own.
    _, schema = stored_schema(crd)
    unsaid = [f.path for f in iter_fields(schema) if f.schema.get("default", {}) != {}
              and f"Default: {_yaml_word(f.schema['default'])}." not in _one_line(f.schema["description"])]
    assert unsaid == []


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _yaml_word(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@pytest.mark.parametrize("crd", _CRDS, ids=_kind)
def test_every_rule_and_column_explains_itself(crd):
    _, schema = stored_schema(crd)
    assert [r.path for r in iter_rules(schema) if not r.message] == []
    columns = [c for v in crd["spec"]["versions"] for c in v.get("additionalPrinterColumns", ())]
    assert [c["name"] for c in columns if not c.get("description")] == []


def test_the_connection_kinds_differ_only_in_cluster_scoped_fields():
    fields = {_kind(crd): {f.path for f in iter_fields(stored_schema(crd)[1])} for crd in _CRDS}
    namespaced, cluster = fields["KeycloakConnection"], fields["ClusterKeycloakConnection"]
    assert namespaced < cluster
    assert {path.split("[")[0].split(".<")[0] for path in cluster - namespaced} == {
        "spec.credentialsSecretRef.namespace", "spec.tls.caSecretRef.namespace", "spec.allowedNamespaces",
        "spec.allowedNamespaces.matchLabels", "spec.allowedNamespaces.matchExpressions",
    }
