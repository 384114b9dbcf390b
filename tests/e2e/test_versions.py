"""Features gated on the Keycloak version, against a real Keycloak 26.4.7 beside the session's 26.7.3.

26.4.7 has token auth (26.2+) and ``allowutf8`` (26.3.3+; 26.2.8+ on 26.2) but not the timeout keys
(26.5+). It trusts the environment's CA and uses the session Keycloak's issuer realm, so the SMTP server accepts its
tokens as it accepts 26.7.3's. Token auth below 26.2 cannot run here (the Maven distribution starts at
26.4.0); tests/unit/test_reconcile_keycloak_boundary.py covers it at the reconcile boundary.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kcmail.devenv import components, operator_env, versions
from kcmail.devenv.certs import CertificateAuthority
from kcmail.devenv.environment import Environment
from kcmail.devenv.keycloak_server import KeycloakAdmin, KeycloakServer, seed, start_keycloak
from kcmail.devenv.mail_spool import RecordedMessage, wait_for_message
from kcmail.devenv.processes import ProcessRegistry

pytestmark = pytest.mark.e2e

TIMEOUT_KEYS = ("connectionTimeout", "timeout", "writeTimeout")
LEGACY_ADMIN_EMAIL = "admin@legacy.kcmail.test"


@dataclass
class Legacy:
    server: KeycloakServer
    admin: KeycloakAdmin


@pytest.fixture(scope="module")
def legacy(devenv: Environment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legacy]:
    """Keycloak 26.4.7 with its own state directory and processes, certified by the session's CA."""
    state_dir = tmp_path_factory.mktemp("keycloak-legacy")
    # The same CA, in a directory of its own: issuing into the session's would overwrite the
    # certificate files of the session Keycloak.
    pki = state_dir / "pki"
    pki.mkdir()
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(devenv.ca_file.parent / name, pki / name)
    ca = CertificateAuthority(pki)
    registry = ProcessRegistry(state_dir)
    home = components.fetch_keycloak(versions.KEYCLOAK_LEGACY)
    java_home = components.find_java_home(versions.KEYCLOAK_LEGACY)
    try:
        server = start_keycloak(registry, home, java_home, ca, state_dir, versions.KEYCLOAK_LEGACY)
        server.wait_ready(timeout=300)
        # The admin's address is where testSMTPConnection sends; its own keeps its mail apart.
        seed(server, ca.cert_path, target_realms=(), admin_email=LEGACY_ADMIN_EMAIL)
        with KeycloakAdmin(server, ca.cert_path) as admin:
            yield Legacy(server, admin)
    finally:
        registry.stop_all()


@pytest.fixture
def legacy_tenant(tenant, legacy: Legacy):
    """The test's namespace gets a KeycloakConnection to 26.4.7 and a realm there of the same name."""
    legacy.admin.ensure_realm(tenant.realm)
    tenant.apply(
        operator_env.secret(tenant.namespace, "legacy-admin", {"username": legacy.server.admin_user,
                                                               "password": legacy.server.admin_password}),
        operator_env.secret(tenant.namespace, "legacy-ca", {"ca.crt": tenant.env.ca_file.read_text()}),
        {"apiVersion": "kcmail.io/v1alpha1", "kind": "KeycloakConnection",
         "metadata": {"name": "legacy", "namespace": tenant.namespace},
         "spec": {"url": legacy.server.url, "credentialsSecretRef": {"name": "legacy-admin"},
                  "tls": {"caSecretRef": {"name": "legacy-ca"}}}},
    )
    return tenant


LEGACY_REF = {"kind": "KeycloakConnection", "name": "legacy"}
TIMEOUTS = {"connect": "7s", "read": "8s", "write": "9s"}


def _smtp(env: Environment) -> dict[str, Any]:
    return {"host": "localhost", "port": env.smtp_starttls_port, "security": "StartTLS", "timeouts": TIMEOUTS}


def _basic_auth(env: Environment) -> dict[str, Any]:
    return {"type": "Basic", "username": env.smtp_basic_user,
            "basic": {"passwordSecretRef": {"name": "smtp-basic"}}}


def _legacy_smtp_server(legacy: Legacy, realm: str) -> dict[str, str]:
    return dict(legacy.admin.request("GET", f"/{realm}").json().get("smtpServer") or {})


def _stored_as_is(legacy: Legacy, realm: str, extra: dict[str, str]) -> bool:
    legacy.admin.ensure_realm(realm)
    representation = legacy.admin.request("GET", f"/{realm}").json()
    representation["smtpServer"] = {"host": "localhost", "from": "no-reply@acme.example", **extra}
    legacy.admin.request("PUT", f"/{realm}", json=representation)
    stored = _legacy_smtp_server(legacy, realm)
    return all(stored.get(key) == value for key, value in extra.items())


def _wait_connection(tenant, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = tenant.get("keycloakconnection", name)
        if predicate(obj):
            return obj
        time.sleep(0.5)
    raise AssertionError(f"KeycloakConnection {name} not as expected in {timeout} s: {json.dumps(obj.get('status'))}")


def _send_test_mail(request: Callable[..., Any], realm: str, stored: dict[str, str], spool, recipient: str,
                    ) -> RecordedMessage:
    """Keycloak's own send with the stored settings (secrets masked: Keycloak puts back its own)."""
    since = datetime.datetime.now(datetime.UTC)
    response = request("POST", f"/{realm}/testSMTPConnection", json=stored)
    assert response.status_code == 204, response.text
    return wait_for_message(spool, lambda m: m.received_at >= since and recipient in m.rcpt_tos, timeout=30)


def test_connection_to_keycloak_26_4_reports_its_version(operator, legacy_tenant):
    connection = _wait_connection(legacy_tenant, "legacy", lambda o: bool((o.get("status") or {}).get("conditions")))
    ready = next(c for c in connection["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Connected"), ready
    assert connection["status"]["keycloakVersion"] == "26.4.7"
    assert "26.4.7" in ready["message"]


def test_xoauth2_on_26_4_is_applied_without_timeout_keys_and_on_26_7_with_them(operator, legacy_tenant, legacy):
    tenant = legacy_tenant
    tenant.apply(tenant.secret(),
                 tenant.mailconfig("old", connectionRef=LEGACY_REF, smtp=_smtp(tenant.env)),
                 tenant.mailconfig("new", smtp=_smtp(tenant.env)))
    old = tenant.wait_condition("True", "InSync", name="old", kind="Applied")
    new = tenant.wait_condition("True", "InSync", name="new", kind="Applied")

    assert old["status"]["keycloakVersion"] == "26.4.7"
    stored_old = _legacy_smtp_server(legacy, tenant.realm)
    assert [key for key in TIMEOUT_KEYS if key in stored_old] == []
    assert stored_old["authType"] == "token"
    assert stored_old["authTokenClientSecret"] == "**********"
    assert stored_old["allowutf8"] == "false"
    # 26.4.7 keeps keys it does not use, so their absence above is kcmail's doing, not Keycloak's.
    assert _stored_as_is(legacy, f"{tenant.realm}-control", {"connectionTimeout": "7000"})

    assert new["status"]["keycloakVersion"] == tenant.env.keycloak_version
    stored_new = tenant.smtp_server()
    assert {key: stored_new.get(key) for key in TIMEOUT_KEYS} == {
        "connectionTimeout": "7000", "timeout": "8000", "writeTimeout": "9000"}

    # Keycloak 26.4.7 holding no timeout keys is the desired state, not drift: a requested reconcile
    # leaves the realm alone.
    applied_at = old["status"]["lastAppliedTime"]
    request = str(uuid.uuid4())
    tenant.kubectl("annotate", "--overwrite", "mailconfig", "old", f"kcmail.io/requested-at={request}")
    handled = tenant.wait_for(lambda o: (o.get("status") or {}).get("lastHandledRequestedAt") == request, "old",
                              what="the requested reconcile")
    assert handled["status"]["lastAppliedTime"] == applied_at
    assert "DriftCorrected" not in [e["reason"] for e in tenant.events("old")]


def test_keycloak_26_4_sends_over_xoauth2_with_the_settings_kcmail_applied(operator, legacy_tenant, legacy):
    tenant = legacy_tenant
    tenant.apply(tenant.secret(), tenant.mailconfig(connectionRef=LEGACY_REF))
    tenant.wait_condition("True", "InSync", kind="Applied")
    stored = _legacy_smtp_server(legacy, tenant.realm)

    message = _send_test_mail(legacy.admin.request, tenant.realm, stored, tenant.env.smtp_spool, LEGACY_ADMIN_EMAIL)

    assert message.auth is not None
    assert (message.auth.mechanism, message.auth.client_id) == ("XOAUTH2", tenant.env.issuer_client_id)
    assert message.auth.user == "no-reply@acme.example"
    assert message.tls


def test_basic_auth_is_applied_and_delivers_on_26_4_and_on_26_7(operator, legacy_tenant, legacy):
    tenant, env = legacy_tenant, legacy_tenant.env
    sender = {"from": env.smtp_basic_user}
    tenant.apply(tenant.secret("smtp-basic", password=env.smtp_basic_password),
                 tenant.mailconfig("old", connectionRef=LEGACY_REF, auth=_basic_auth(env), sender=sender),
                 tenant.mailconfig("new", auth=_basic_auth(env), sender=sender))
    old = tenant.wait_condition("True", name="old")
    new = tenant.wait_condition("True", name="new")
    assert (old["status"]["keycloakVersion"], new["status"]["keycloakVersion"]) == ("26.4.7", env.keycloak_version)

    for request, stored, recipient in (
            (legacy.admin.request, _legacy_smtp_server(legacy, tenant.realm), LEGACY_ADMIN_EMAIL),
            (tenant.admin.request, tenant.smtp_server(), env.keycloak_admin_email)):
        assert (stored["authType"], stored["password"]) == ("basic", "**********")
        message = _send_test_mail(request, tenant.realm, stored, env.smtp_spool, recipient)
        assert message.auth is not None
        assert (message.auth.mechanism, message.auth.user) in {("PLAIN", env.smtp_basic_user),
                                                                ("LOGIN", env.smtp_basic_user)}


def _realm_admin_client(legacy: Legacy, realm: str, client_id: str, secret: str) -> None:
    """A confidential client of ``realm`` whose service account may view and manage that realm only."""
    admin = legacy.admin
    admin.create(f"/{realm}/clients", {"clientId": client_id, "enabled": True, "publicClient": False,
                                       "secret": secret, "serviceAccountsEnabled": True,
                                       "standardFlowEnabled": False})
    (client,) = admin.request("GET", f"/{realm}/clients", params={"clientId": client_id}).json()
    user = admin.request("GET", f"/{realm}/clients/{client['id']}/service-account-user").json()
    (management,) = admin.request("GET", f"/{realm}/clients", params={"clientId": "realm-management"}).json()
    roles = [role for role in admin.request("GET", f"/{realm}/clients/{management['id']}/roles").json()
             if role["name"] in ("manage-realm", "view-realm")]
    admin.request("POST", f"/{realm}/users/{user['id']}/role-mappings/clients/{management['id']}", json=roles)


def test_an_admin_of_another_realm_than_master_on_26_4_applies_though_the_version_is_hidden(operator, legacy_tenant,
                                                                                           legacy):
    # Keycloak 26.4 shows systemInfo only to admins of master (keycloak#42859); this account belongs to the
    # target realm itself.
    tenant = legacy_tenant
    secret = f"realm-admin-{uuid.uuid4().hex}"
    _realm_admin_client(legacy, tenant.realm, "kcmail-realm-admin", secret)
    hidden = "26.2.10 or newer (hidden from non-master admins)"
    tenant.apply(
        operator_env.secret(tenant.namespace, "realm-admin", {"client-id": "kcmail-realm-admin",
                                                              "client-secret": secret}),
        {"apiVersion": "kcmail.io/v1alpha1", "kind": "KeycloakConnection",
         "metadata": {"name": "realm-admin", "namespace": tenant.namespace},
         "spec": {"url": legacy.server.url, "adminRealm": tenant.realm,
                  "credentialsSecretRef": {"name": "realm-admin"}, "tls": {"caSecretRef": {"name": "legacy-ca"}}}},
        tenant.secret(),
        tenant.mailconfig(connectionRef={"kind": "KeycloakConnection", "name": "realm-admin"},
                          smtp=_smtp(tenant.env)))
    connection = tenant.wait_connection("True", "Connected", name="realm-admin")
    assert connection["status"]["keycloakVersion"] == hidden
    applied = tenant.wait_condition("True", "InSync", kind="Applied")
    assert applied["status"]["keycloakVersion"] == hidden
    stored = _legacy_smtp_server(legacy, tenant.realm)
    assert (stored["authType"], stored["authTokenClientSecret"]) == ("token", "**********")
    # Written as to a new Keycloak: 26.4.7 stores the timeout keys and ignores them (see _stored_as_is).
    assert {key: stored.get(key) for key in TIMEOUT_KEYS} == {
        "connectionTimeout": "7000", "timeout": "8000", "writeTimeout": "9000"}
    message = _send_test_mail(legacy.admin.request, tenant.realm, stored, tenant.env.smtp_spool, LEGACY_ADMIN_EMAIL)
    assert message.auth is not None
    assert message.auth.mechanism == "XOAUTH2"
