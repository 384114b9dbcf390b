"""What a MailConfig and its Connection report when Keycloak, the realm, the admin login or the Connection
itself is wrong, and that each recovers once the cause is gone.

Failures that can pass (Keycloak unreachable) are retried with backoff and never Stalled; failures that
need a person (a bad realm, a rejected setting, wrong credentials, a Connection that is absent or not
allowed) are Stalled.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kcmail.devenv import operator_env
from kcmail.devenv.processes import free_port

pytestmark = pytest.mark.e2e

KC = {"kind": "KeycloakConnection", "name": "kc"}


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _patch(tenant, resource: str, name: str, patch: dict[str, Any]) -> None:
    result = tenant.kubectl("patch", resource, name, "--type=merge", "-p", json.dumps(patch))
    assert result.returncode == 0, result.stderr


def _retries(log: str, mailconfig: str) -> list[tuple[int, float]]:
    """The (attempt, delay) of each "retry N in S s" line the operator logged for ``mailconfig``."""
    pattern = re.compile(rf"MailConfig {re.escape(mailconfig)}: retry (\d+) in ([0-9.]+) s")
    return [(int(m.group(1)), float(m.group(2))) for m in pattern.finditer(log)]


def _assert_connection_ready(connection: dict[str, Any], env) -> None:
    status = connection["status"]
    assert _conditions(connection)["Ready"]["reason"] == "Connected"
    assert status["keycloakVersion"] == env.keycloak_version
    assert status["tlsVerification"] == "Verified"


@pytest.fixture
def cluster_connection(kcmail_installed) -> Iterator[Callable[..., str]]:
    """Create ClusterKeycloakConnections of the test's own (cluster-scoped, so deleted afterwards)."""
    names: list[str] = []

    def create(**spec: Any) -> str:
        name = f"limited-{uuid.uuid4().hex[:8]}"
        operator_env.apply(kcmail_installed, operator_env.cluster_connection(kcmail_installed, name, **spec))
        names.append(name)
        return name

    yield create
    for name in names:
        operator_env.kubectl(kcmail_installed, "delete", "clusterkeycloakconnection", name, "--wait=false")


def test_unreachable_keycloak_is_retried_with_backoff_and_the_realm_keeps_its_settings(operator, tenant):
    tenant.apply(*operator_env.keycloak_connection(tenant.env, tenant.namespace, "kc"), tenant.secret(),
                 tenant.mailconfig(connectionRef=KC))
    tenant.wait_condition("True")
    _assert_connection_ready(tenant.wait_connection("True"), tenant.env)
    good = tenant.smtp_server()
    assert good["fromDisplayName"] == f"{tenant.realm} mail"

    closed = f"https://127.0.0.1:{free_port()}"
    logged_before = len(operator.log())
    _patch(tenant, "keycloakconnection", "kc", {"spec": {"url": closed}})
    failed = tenant.wait_condition("False", "KeycloakUnreachable")
    conditions = _conditions(failed)
    assert "Stalled" not in conditions
    assert closed in conditions["Ready"]["message"]
    connection = tenant.wait_connection("False", "KeycloakUnreachable")
    assert connection["status"]["tlsVerification"] == "Verified"

    # A spec change while Keycloak is away: nothing can be written, and nothing is lost.
    _patch(tenant, "mailconfig", "mail", {"spec": {"sender": {"fromDisplayName": "Changed while away"}}})
    mailconfig = f"{tenant.namespace}/mail"
    deadline = time.monotonic() + 40
    while len(_retries(operator.log()[logged_before:], mailconfig)) < 4 and time.monotonic() < deadline:
        time.sleep(1)
    retries = _retries(operator.log()[logged_before:], mailconfig)
    assert len(retries) >= 4, f"fewer than 4 retries logged: {retries}"
    # Attempts count on while the failure lasts (the spec change's wake-up included); the delay's ceiling
    # doubles from 2 s, and jitter picks a delay between half the ceiling and the ceiling.
    assert [attempt for attempt, _ in retries] == list(range(1, len(retries) + 1))
    for attempt, delay in retries:
        ceiling = 2.0 * 2 ** (attempt - 1)
        assert ceiling / 2 - 0.05 <= delay <= ceiling + 0.05, (attempt, delay)
    assert _conditions(tenant.get("mailconfig", "mail"))["Ready"]["reason"] == "KeycloakUnreachable"
    assert tenant.smtp_server() == good

    _patch(tenant, "keycloakconnection", "kc", {"spec": {"url": tenant.env.keycloak_url}})
    tenant.wait_condition("True", timeout=30)
    _assert_connection_ready(tenant.wait_connection("True"), tenant.env)
    assert tenant.smtp_server()["fromDisplayName"] == "Changed while away"


def test_setting_keycloak_rejects_is_reported_in_keycloaks_own_words(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig(sender={"from": "no..reply@acme.example"}))
    rejected = tenant.wait_condition("False", "KeycloakRejected")
    conditions = _conditions(rejected)
    assert "Invalid sender address 'no..reply@acme.example'" in conditions["Ready"]["message"]
    assert "400" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["reason"] == "KeycloakRejected"
    assert tenant.smtp_server() == {}

    _patch(tenant, "mailconfig", "mail", {"spec": {"sender": {"from": "no-reply@acme.example"}}})
    fixed = tenant.wait_condition("True")
    assert "Stalled" not in _conditions(fixed)
    assert tenant.smtp_server()["from"] == "no-reply@acme.example"


def test_missing_realm_stalls_and_recovers_by_itself_when_the_realm_is_created(operator, tenant):
    deleted = tenant.admin.request("DELETE", f"/{tenant.realm}")
    assert deleted.status_code == 204, deleted.text
    tenant.apply(tenant.secret(), tenant.mailconfig(interval="30s"))
    missing = tenant.wait_condition("False", "RealmNotFound")
    conditions = _conditions(missing)
    assert tenant.realm in conditions["Ready"]["message"]
    assert conditions["Stalled"]["reason"] == "RealmNotFound"

    operator_env.create_realm(tenant.env, tenant.realm)
    # Nothing about the MailConfig changes: the next periodic pass, at its slot within the next interval
    # (30 s), finds the realm.
    recovered = tenant.wait_condition("True", timeout=45)
    assert "Stalled" not in _conditions(recovered)
    assert tenant.smtp_server()["from"] == "no-reply@acme.example"


def test_wrong_admin_password_fails_the_connection_and_its_mailconfigs_until_the_secret_is_fixed(operator, tenant):
    wrong = f"wrong-{uuid.uuid4().hex}"
    tenant.apply(*operator_env.keycloak_connection(tenant.env, tenant.namespace, "kc", password=wrong),
                 tenant.secret(), tenant.mailconfig(connectionRef=KC))

    connection = tenant.wait_connection("False", "KeycloakAuthFailed")
    assert "keycloakVersion" not in connection["status"]
    assert connection["status"]["tlsVerification"] == "Verified"
    failed = tenant.wait_condition("False", "KeycloakAuthFailed")
    conditions = _conditions(failed)
    assert conditions["Stalled"]["reason"] == "KeycloakAuthFailed"
    assert "Keycloak refused the admin credentials" in conditions["Ready"]["message"]
    for text in (json.dumps(failed), json.dumps(connection), json.dumps(tenant.events())):
        assert wrong not in text
        assert tenant.env.keycloak_admin_password not in text
    assert tenant.smtp_server() == {}

    # Fixing the Secret is enough: the Connection is checked again and its MailConfigs woken at once,
    # not at the next timer (5 min) or interval (10 min).
    fixed = operator_env.secret(tenant.namespace, "kc-admin", {"username": tenant.env.keycloak_admin_user,
                                                               "password": tenant.env.keycloak_admin_password})
    tenant.apply(fixed)
    _assert_connection_ready(tenant.wait_connection("True", timeout=30), tenant.env)
    tenant.wait_condition("True", timeout=30)
    assert tenant.smtp_server()["from"] == "no-reply@acme.example"


def test_missing_connection_is_reported_and_its_creation_recovers(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig(connectionRef=KC))
    missing = tenant.wait_condition("False", "ConnectionNotFound")
    conditions = _conditions(missing)
    assert f"KeycloakConnection {tenant.namespace}/kc does not exist" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["reason"] == "ConnectionNotFound"

    tenant.apply(*operator_env.keycloak_connection(tenant.env, tenant.namespace, "kc"))
    tenant.wait_condition("True", timeout=30)
    _assert_connection_ready(tenant.wait_connection("True"), tenant.env)


def test_cluster_connection_refuses_a_realm_outside_allowed_realms(operator, tenant, cluster_connection):
    name = cluster_connection(allowedRealms=["tenant-*", "acme"])
    _assert_connection_ready(tenant.wait_connection("True", name=name, resource="clusterkeycloakconnection"),
                             tenant.env)
    tenant.apply(tenant.secret(), tenant.mailconfig(connectionRef={"kind": "ClusterKeycloakConnection",
                                                                   "name": name}))
    refused = tenant.wait_condition("False", "ConnectionNotAllowed")
    conditions = _conditions(refused)
    assert f"does not allow realm '{tenant.realm}'" in conditions["Ready"]["message"]
    assert "tenant-*, acme" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["reason"] == "ConnectionNotAllowed"
    assert tenant.smtp_server() == {}


def test_cluster_connection_refuses_a_namespace_its_selector_does_not_match(operator, tenant, cluster_connection):
    name = cluster_connection(allowedNamespaces={"matchLabels": {"kcmail.io/mail": "allowed"}})
    tenant.apply(tenant.secret(), tenant.mailconfig(connectionRef={"kind": "ClusterKeycloakConnection",
                                                                   "name": name}))
    refused = tenant.wait_condition("False", "ConnectionNotAllowed")
    conditions = _conditions(refused)
    assert f"does not allow namespace {tenant.namespace}" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["reason"] == "ConnectionNotAllowed"
    assert tenant.smtp_server() == {}

    # The label is what the selector checks: with it, and a reconcile requested, the namespace may.
    labelled = operator_env.kubectl(tenant.env, "label", "namespace", tenant.namespace, "kcmail.io/mail=allowed")
    assert labelled.returncode == 0, labelled.stderr
    tenant.kubectl("annotate", "mailconfig", "mail", "--overwrite", f"kcmail.io/requested-at={time.time()}")
    tenant.wait_condition("True", timeout=30)
    assert tenant.smtp_server()["from"] == "no-reply@acme.example"


def test_a_connection_that_skips_certificate_verification_says_so(operator, tenant, cluster_connection):
    name = cluster_connection(tls={"insecureSkipVerify": True})
    connection = tenant.wait_connection("True", name=name, resource="clusterkeycloakconnection")
    assert connection["status"]["tlsVerification"] == "Skipped"
    assert connection["status"]["keycloakVersion"] == tenant.env.keycloak_version
    assert _conditions(connection)["Ready"]["reason"] == "Connected"
