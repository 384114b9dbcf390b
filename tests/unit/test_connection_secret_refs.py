"""Which Secrets a Connection reads: a change to any of them re-checks the Connection and wakes its users."""

from __future__ import annotations

import pytest

from kcmail.connections import secret_refs
from kcmail.spec import ConnectionKind

pytestmark = pytest.mark.unit


def test_a_namespaced_connection_reads_its_secrets_from_its_own_namespace():
    spec = {"credentialsSecretRef": {"name": "admin", "namespace": "elsewhere"},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}}
    assert secret_refs(ConnectionKind.NAMESPACED, spec, "tenant") == {("tenant", "admin"), ("tenant", "ca")}


def test_a_cluster_connection_reads_each_secret_from_the_namespace_its_reference_names():
    spec = {"credentialsSecretRef": {"name": "admin", "namespace": "kcmail-system"},
            "tls": {"caSecretRef": {"name": "ca", "namespace": "pki"}}}
    assert secret_refs(ConnectionKind.CLUSTER, spec, None) == {("kcmail-system", "admin"), ("pki", "ca")}


@pytest.mark.parametrize("spec", [
    {"credentialsSecretRef": {"name": "admin"}},
    {"credentialsSecretRef": {"name": "admin"}, "tls": {}},
    {"credentialsSecretRef": {"name": "admin"}, "tls": {"insecureSkipVerify": True}},
])
def test_without_a_ca_only_the_credentials_count(spec):
    assert secret_refs(ConnectionKind.NAMESPACED, spec, "tenant") == {("tenant", "admin")}


def test_a_cluster_reference_without_a_namespace_names_no_secret():
    assert secret_refs(ConnectionKind.CLUSTER, {"credentialsSecretRef": {"name": "admin"}}, None) == set()
