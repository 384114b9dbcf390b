"""Every failure of a pass or a Connection check ends in a condition with a catalogue reason: a Kubernetes
API refusal, an unreadable CA, the operator's refusal of namespaced Connections, and what no step foresaw.

The Kubernetes reads and Keycloak clients are small fakes that raise what the real ones raise.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kcmail import cli, handlers
from kcmail.connection_status import check_connection
from kcmail.controller import Reconciler
from kcmail.kube import KubeError, Secret
from kcmail.options import OperatorOptions
from kcmail.spec import ConnectionKind
from kcmail.store import MailConfigObject

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 12, 6, 10, 0, tzinfo=datetime.UTC)
SPEC = {"connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"}, "realm": "acme",
        "smtp": {"host": "smtp.example"}, "sender": {"from": "no-reply@acme.example"},
        "auth": {"type": "Basic", "username": "u", "basic": {"passwordSecretRef": {"name": "smtp"}}}}
FORBIDDEN = KubeError("GET", "/api/v1/namespaces/kcmail-system/secrets/admin", 403,
                      'secrets "admin" is forbidden: User "system:serviceaccount:kcmail:kcmail" cannot get resource '
                      '"secrets" in API group "" in the namespace "kcmail-system"')


class Untouchable:
    """Fails the test if anything is read or contacted."""

    def __getattr__(self, name: str) -> Any:
        pytest.fail(f"{name} was called")


class Kube:
    def __init__(self, error: Exception | None = None, ca: str = "") -> None:
        self.error = error
        self.ca = ca

    async def connection(self, kind: ConnectionKind, name: str, namespace: str | None) -> dict[str, Any]:
        spec: dict[str, Any] = {"url": "https://keycloak.example",
                                "credentialsSecretRef": {"name": "admin", "namespace": "kcmail-system"}}
        if self.ca:
            spec["tls"] = {"caSecretRef": {"name": "ca", "namespace": "kcmail-system"}}
        return {"metadata": {"name": name, "generation": 1}, "spec": spec}

    async def secret(self, namespace: str, name: str) -> Secret:
        if self.error is not None:
            raise self.error
        data = {"ca.crt": self.ca} if name == "ca" else {"username": "admin", "password": "pw"}
        return Secret(namespace, name, f"uid-{name}", "1", data)

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {}


def _mailconfig(**spec: Any) -> MailConfigObject:
    return MailConfigObject.from_body({"metadata": {"namespace": "tenant-a", "name": "mail", "uid": "uid-mail",
                                                    "generation": 3}, "spec": {**SPEC, **spec}, "status": {}})


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


async def test_a_forbidden_read_is_kubernetes_forbidden_with_the_api_servers_words():
    reconciler = Reconciler(Kube(error=FORBIDDEN), Untouchable(), now=lambda: NOW)  # type: ignore[arg-type]
    result = await reconciler.reconcile(_mailconfig())
    conditions = _conditions(result.status)
    for kind in ("Ready", "CredentialsResolved", "Stalled"):
        assert conditions[kind]["reason"] == "KubernetesForbidden", kind
    message = conditions["Ready"]["message"]
    assert 'cannot get resource "secrets"' in message
    assert "rbac.connectionSecretNamespaces" in message
    assert result.retry is False


async def test_another_api_server_error_is_retried_with_its_own_reason():
    error = KubeError("GET", "/api/v1/namespaces/kcmail-system/secrets/admin", 503, "etcdserver: leader changed")
    reconciler = Reconciler(Kube(error=error), Untouchable(), now=lambda: NOW)  # type: ignore[arg-type]
    result = await reconciler.reconcile(_mailconfig())
    ready = _conditions(result.status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "KubernetesAPIError")
    assert "Stalled" not in _conditions(result.status)
    assert result.retry is True


async def test_a_namespaced_connection_is_refused_unread_when_the_operator_refuses_them():
    reconciler = Reconciler(Untouchable(), Untouchable(), now=lambda: NOW,  # type: ignore[arg-type]
                            namespaced_connections=False)
    result = await reconciler.reconcile(_mailconfig(connectionRef={"kind": "KeycloakConnection", "name": "kc"}))
    ready = _conditions(result.status)["Ready"]
    assert (ready["reason"], ready["status"]) == ("ConnectionNotAllowed", "False")
    assert "--no-namespaced-connections" in ready["message"]


async def test_a_refused_connection_reports_so_without_being_read_or_contacted():
    body = {"metadata": {"name": "kc", "namespace": "tenant-a", "generation": 2},
            "spec": {"url": "http://internal-service.tenant-a:8080"}}
    status = await check_connection(Untouchable(), Untouchable(), ConnectionKind.NAMESPACED, body, NOW,  # type: ignore[arg-type]
                                    refused=True)
    (ready,) = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "ConnectionNotAllowed")
    assert "keycloakVersion" not in status


async def test_a_ca_that_is_not_pem_is_invalid_ca_on_the_connection_and_its_mailconfigs():
    kube = Kube(ca="-----BEGIN NOTHING-----\nnot a certificate\n")
    body = await kube.connection(ConnectionKind.CLUSTER, "main", None)
    status = await check_connection(kube, Untouchable(), ConnectionKind.CLUSTER, body, NOW)  # type: ignore[arg-type]
    (ready,) = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidCA")
    assert "Secret kcmail-system/ca key 'ca.crt' (the CA of ClusterKeycloakConnection main) is not a PEM CA bundle" \
        in ready["message"]
    assert "not a certificate" not in ready["message"]
    result = await Reconciler(kube, Untouchable(), now=lambda: NOW).reconcile(_mailconfig())  # type: ignore[arg-type]
    assert _conditions(result.status)["CredentialsResolved"]["reason"] == "InvalidCA"


async def test_a_connection_check_that_fails_unforeseen_still_gets_a_status():
    class Exploding(Kube):
        async def secret(self, namespace: str, name: str) -> Secret:
            raise RuntimeError("Authorization: Bearer eyJhbGciOiJI.eyJzdWIiOiJ4In0.c2ln and something else broke")

    kube = Exploding()
    body = await kube.connection(ConnectionKind.CLUSTER, "main", None)
    status = await check_connection(kube, Untouchable(), ConnectionKind.CLUSTER, body, NOW)  # type: ignore[arg-type]
    (ready,) = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "InternalError")
    assert "RuntimeError" in ready["message"]
    assert "eyJ" not in ready["message"]
    assert "Bearer" not in ready["message"]


def test_an_unforeseen_pass_failure_is_internal_error_and_retried():
    reconciler = Reconciler(Untouchable(), Untouchable(), now=lambda: NOW)  # type: ignore[arg-type]
    result = reconciler.failed(_mailconfig(), KeyError("smtpServer"))
    ready = _conditions(result.status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InternalError")
    assert "KeyError" in ready["message"]
    assert result.retry is True
    assert result.status["observedGeneration"] == 3


def test_run_refuses_namespaced_connections_on_request_and_installs_the_log_redaction(monkeypatch):
    import logging

    import kopf

    from kcmail.redact import RedactingFilter

    given: list[OperatorOptions] = []
    monkeypatch.setattr(handlers, "configure", given.append)
    monkeypatch.setattr(kopf, "run", lambda **_: None)
    assert cli.main(["run", "-v", "--no-leader-election", "--metrics-address", "off",
                     "--no-namespaced-connections"]) == 0
    assert cli.main(["run", "-v", "--no-leader-election", "--metrics-address", "off"]) == 0
    assert [options.namespaced_connections for options in given] == [False, True]
    handlers_with_filter = [h for h in logging.getLogger().handlers
                            if any(isinstance(f, RedactingFilter) for f in h.filters)]
    assert handlers_with_filter
