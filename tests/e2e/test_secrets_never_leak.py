"""No secret leaves the operator: not in its log (at debug level too), Events, status or error messages.

Every secret the operator handles here is a distinctive canary that passes through it for real: an
XOAUTH2 client secret (applied, rotated, then one Keycloak rejects), a Basic password, the client
secret of a Keycloak service account it logs in with (valid, then wrong), and the Keycloak bootstrap
admin password behind the session's ClusterKeycloakConnection. The operator acting is this module's
(``-v``, this namespace only), alone: two operators acting on one object at once is what leader election
prevents, and with safe changes each would hold the other's writes for changes of its own. Its log is
searched, the session operator's too (everything it logged before and after), together with every Event
of the namespace and every status written.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import pytest

from kcmail.devenv import operator_env
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.leaks import Leaks, canary
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, wait_until

pytestmark = pytest.mark.e2e

@pytest.fixture
def debug_operator(kcmail_installed, tenant, tmp_path_factory) -> Iterator[ServerProcess]:
    registry = ProcessRegistry(tmp_path_factory.mktemp("operator-debug"))
    process = operator_env.start_operator(kcmail_installed, registry, name="operator-debug",
                                          args=["-v", "-n", tenant.namespace])
    try:
        wait_until(lambda: "MailConfigs listed" in process.log.read_text(errors="replace"),
                   server=process, what="its listing of MailConfigs", timeout=60)
        yield process
    finally:
        registry.stop_all()


def _issuer_client(admin: KeycloakAdminAPI, realm: str, client_id: str, secret: str) -> str:
    """A confidential client-credentials client with a secret of our choosing; returns its id."""
    created = admin.request("POST", f"/{realm}/clients", json={
        "clientId": client_id, "enabled": True, "protocol": "openid-connect", "publicClient": False,
        "clientAuthenticatorType": "client-secret", "secret": secret, "serviceAccountsEnabled": True,
        "standardFlowEnabled": False, "directAccessGrantsEnabled": False})
    assert created.status_code == 201, created.text
    return created.headers["Location"].rsplit("/", 1)[1]


def _admin_service_account(admin: KeycloakAdminAPI, client_id: str, secret: str) -> str:
    """A master-realm client whose service account is a Keycloak admin; returns its id."""
    uid = _issuer_client(admin, "master", client_id, secret)
    user = admin.request("GET", f"/master/clients/{uid}/service-account-user").json()
    role = admin.request("GET", "/master/roles/admin").json()
    granted = admin.request("POST", f"/master/users/{user['id']}/role-mappings/realm", json=[role])
    assert granted.status_code == 204, granted.text
    return uid


def _set_client_secret(admin: KeycloakAdminAPI, realm: str, uid: str, secret: str) -> None:
    representation = admin.request("GET", f"/{realm}/clients/{uid}").json()
    representation["secret"] = secret
    updated = admin.request("PUT", f"/{realm}/clients/{uid}", json=representation)
    assert updated.status_code == 204, updated.text


def _gone(tenant, kind: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = tenant.kubectl("get", kind, name, "-o", "name")
        if result.returncode != 0 and "NotFound" in result.stderr:
            return
        time.sleep(0.5)
    raise AssertionError(f"{kind} {name} still exists after {timeout} s: {tenant.get(kind, name)}")


def _in_realm(mailconfig: dict, realm: str) -> dict:
    mailconfig["spec"]["realm"] = realm
    return mailconfig


def _snapshot(leaks: Leaks, tenant, stage: str) -> None:
    """Every object of the namespace as the API server returns it, status and annotations included."""
    for kind in ("mailconfigs", "keycloakconnections", "events"):
        result = tenant.kubectl("get", kind, "-o", "json")
        assert result.returncode == 0, result.stderr
        leaks.add_text(f"{kind} ({stage})", result.stdout)
    cluster = operator_env.kubectl(tenant.env, "get", "clusterkeycloakconnections", "-o", "json")
    leaks.add_text(f"clusterkeycloakconnections ({stage})", cluster.stdout)


def test_no_secret_token_or_header_appears_in_logs_events_or_status(operator, alone, tenant, debug_operator):
    env, admin, ns = tenant.env, tenant.admin, tenant.namespace
    leaks = Leaks()
    leaks.add_secret("Keycloak admin password", env.keycloak_admin_password)
    leaks.add_secret("issuer client secret", env.issuer_client_secret)
    suffix = uuid.uuid4().hex[:8]
    basic_realm = f"{tenant.realm}-basic"
    operator_env.create_realm(env, basic_realm)

    # A Connection that logs in as a service account whose secret is a canary.
    admin_client = f"leak-admin-{suffix}"
    admin_secret = leaks.add_secret("admin service-account secret", canary("admin"))
    admin_uid = _admin_service_account(admin, admin_client, admin_secret)
    # An issuer client whose secret, and its rotation, are canaries.
    smtp_client = f"leak-smtp-{suffix}"
    first = leaks.add_secret("XOAUTH2 client secret", canary("xoauth2"))
    smtp_uid = _issuer_client(admin, env.issuer_realm, smtp_client, first)
    password = leaks.add_secret("Basic password", canary("basic"))
    try:
        tenant.apply(
            operator_env.secret(ns, "kc-admin", {"client-id": admin_client, "client-secret": admin_secret}),
            operator_env.secret(ns, "kc-ca", {"ca.crt": env.ca_file.read_text()}),
            {"apiVersion": "kcmail.io/v1alpha1", "kind": "KeycloakConnection",
             "metadata": {"name": "sa", "namespace": ns},
             "spec": {"url": env.keycloak_url, "credentialsSecretRef": {"name": "kc-admin"},
                      "tls": {"caSecretRef": {"name": "kc-ca"}}}},
            tenant.secret("smtp-oauth", **{"client-id": smtp_client, "client-secret": first}),
            tenant.secret("smtp-basic", password=password),
            # Through the ClusterKeycloakConnection: the bootstrap admin's password.
            tenant.mailconfig(deletionPolicy="Clear"),
            # Through the service account.
            _in_realm(tenant.mailconfig("basic", connectionRef={"kind": "KeycloakConnection", "name": "sa"},
                                        auth={"type": "Basic", "username": env.smtp_basic_user,
                                              "basic": {"passwordSecretRef": {"name": "smtp-basic"}}},
                                        deletionPolicy="Clear"), basic_realm),
        )
        # Applied, not Ready: the issuer client is not one the SMTP server accepts, and need not be.
        applied = tenant.wait_condition("True", "InSync", kind="Applied")
        tenant.wait_condition("True", "InSync", name="basic", kind="Applied")
        assert tenant.smtp_server()["authTokenClientSecret"] == "**********"
        assert admin.realm(basic_realm)["smtpServer"]["password"] == "**********"
        _snapshot(leaks, tenant, "applied")

        # Rotation of the XOAUTH2 secret, at the issuer and in the Secret.
        second = leaks.add_secret("rotated XOAUTH2 client secret", canary("rotated"))
        _set_client_secret(admin, env.issuer_realm, smtp_uid, second)
        tenant.apply(tenant.secret("smtp-oauth", **{"client-id": smtp_client, "client-secret": second}))
        tenant.wait_for(lambda o: o.get("status", {}).get("appliedSecretVersion")
                        not in (None, applied["status"]["appliedSecretVersion"]), what="the rotation applied")
        _snapshot(leaks, tenant, "rotated")

        # A secret Keycloak could not store (its column holds 255 characters): refused before any PUT, by key.
        rejected = leaks.add_secret("rejected XOAUTH2 client secret", canary("rejected") + "x" * 300)
        tenant.apply(tenant.secret("smtp-oauth", **{"client-id": smtp_client, "client-secret": rejected}))
        refused = tenant.wait_condition("False", "InvalidSecretValue", kind="CredentialsResolved")
        message = next(c["message"] for c in refused["status"]["conditions"] if c["type"] == "CredentialsResolved")
        assert f"key 'client-secret' of Secret {ns}/smtp-oauth has {len(rejected)} characters" in message
        # Wrong admin credentials: the token request carried the wrong secret.
        wrong = leaks.add_secret("wrong admin service-account secret", canary("wrongadmin"))
        tenant.apply(operator_env.secret(ns, "kc-admin", {"client-id": admin_client, "client-secret": wrong}))
        tenant.kubectl("annotate", "--overwrite", "mailconfig", "basic", f"kcmail.io/requested-at={uuid.uuid4()}")
        tenant.wait_condition("False", "KeycloakAuthFailed", name="basic", kind="Applied")
        _snapshot(leaks, tenant, "failing")

        # Deletion clears both realms, reading the Connections' credentials once more.
        tenant.apply(operator_env.secret(ns, "kc-admin", {"client-id": admin_client, "client-secret": admin_secret}))
        assert tenant.kubectl("delete", "mailconfig", "mail", "basic", "--wait=false").returncode == 0
        _gone(tenant, "mailconfig", "mail")
        _gone(tenant, "mailconfig", "basic")
        assert not tenant.smtp_server()
        assert not admin.realm(basic_realm).get("smtpServer")
        _snapshot(leaks, tenant, "deleted")
    finally:
        admin.request("DELETE", f"/master/clients/{admin_uid}")
        admin.request("DELETE", f"/{env.issuer_realm}/clients/{smtp_uid}")

    session_log, debug_log = operator.log(), debug_operator.log.read_text(errors="replace")
    # The log saw the cycle: the scan below searches text that had every chance to hold a secret.
    assert f"{ns}/mail" in debug_log
    assert f"{ns}/basic" in debug_log
    assert " DEBUG " in debug_log
    leaks.add_text("session operator log", session_log)
    leaks.add_text("debug operator log", debug_log)
    assert leaks.found() == []
    # The search itself works: a canary planted in a copy of the text is found.
    planted = Leaks(secrets=dict(leaks.secrets), texts={"planted": json.dumps({"x": base64.b64encode(
        rejected.encode()).decode()})})
    assert planted.found()
