"""A hostile tenant, against the real servers: it reaches no realm, Secret or text it was not granted.

The tenant works through a ClusterKeycloakConnection that allows its namespace and realms matching
``fzr<suffix>*``, logged in as an admin service account of its own, so that Keycloak's admin events tell
kcmail's writes apart; every request kcmail makes carries the User-Agent ``kcmail/…``, so that Keycloak's
access log tells its reads apart. After each attack the test checks, on master and on a bystander realm,
that kcmail neither wrote (admin events) nor read (access log) them. Servers that misbehave on purpose
(kcmail.devenv.hostile) echo secrets back and answer in other protocols; nothing they say may reach a
status, an Event, the operator's log or `kcmail probe`'s output unredacted.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from kcmail.devenv import operator_env
from kcmail.devenv.hostile import HostileServers, hostile_servers
from kcmail.devenv.leaks import Leaks, canary
from kcmail.ownership import recorded_owner

pytestmark = pytest.mark.e2e

REALM_RULE = "realm must be one Keycloak realm name"


@dataclass
class Grant:
    """What the platform team granted the tenant: a Connection, a realm prefix, an admin account of its own."""

    connection: str
    prefix: str
    own_realm: str
    bystander: str
    admin_client_id: str
    admin_user_id: str


def _admin_service_account(admin, client_id: str, secret: str) -> tuple[str, str]:
    """A master client whose service account is a Keycloak admin; returns the client's and the user's ids."""
    created = admin.request("POST", "/master/clients", json={
        "clientId": client_id, "enabled": True, "publicClient": False, "secret": secret,
        "serviceAccountsEnabled": True, "standardFlowEnabled": False, "directAccessGrantsEnabled": False})
    assert created.status_code == 201, created.text
    uid = created.headers["Location"].rsplit("/", 1)[1]
    user = admin.request("GET", f"/master/clients/{uid}/service-account-user").json()
    role = admin.request("GET", "/master/roles/admin").json()
    assert admin.request("POST", f"/master/users/{user['id']}/role-mappings/realm", json=[role]).status_code == 204
    return uid, user["id"]


def _set_admin_events(admin, realm: str, enabled: bool) -> bool:
    representation = admin.realm(realm)
    before = bool(representation.get("adminEventsEnabled"))
    representation["adminEventsEnabled"] = enabled
    assert admin.put_realm(realm, representation).status_code == 204
    return before


@pytest.fixture
def grant(tenant) -> Iterator[Grant]:
    env, admin = tenant.env, tenant.admin
    suffix = uuid.uuid4().hex[:6]
    prefix, bystander = f"fzr{suffix}", f"by{suffix}"
    own_realm = f"{prefix}-own"
    for realm in (own_realm, bystander):
        operator_env.create_realm(env, realm)
        _set_admin_events(admin, realm, True)
    # The bystander sends mail through settings someone made by hand.
    by_hand = admin.realm(bystander)
    by_hand["smtpServer"] = {"host": "smtp.bystander.example", "from": "no-reply@bystander.example"}
    assert admin.put_realm(bystander, by_hand).status_code == 204
    master_events = _set_admin_events(admin, "master", True)
    client_id, secret = f"kcmail-tenant-{suffix}", canary("tenant-admin")
    client_uid, user_id = _admin_service_account(admin, client_id, secret)
    connection = f"tenant-{suffix}"
    tenant.apply(
        operator_env.secret(operator_env.SYSTEM_NAMESPACE, connection, {"client-id": client_id,
                                                                       "client-secret": secret}),
        operator_env.cluster_connection(
            env, connection, credentialsSecretRef={"name": connection, "namespace": operator_env.SYSTEM_NAMESPACE},
            allowedNamespaces={"matchLabels": {"kubernetes.io/metadata.name": tenant.namespace}},
            allowedRealms=[f"{prefix}*"]),
        tenant.secret())
    try:
        yield Grant(connection, prefix, own_realm, bystander, client_uid, user_id)
    finally:
        tenant.kubectl("delete", "mailconfigs", "--all", "--wait=true", "--timeout=60s")
        operator_env.kubectl(env, "delete", "clusterkeycloakconnection", connection, "--wait=false")
        _set_admin_events(admin, "master", master_events)
        for realm in (own_realm, bystander):
            admin.request("DELETE", f"/{realm}")
        admin.request("DELETE", f"/master/clients/{client_uid}")


def _mailconfig(tenant, grant: Grant, name: str, realm: str, **spec: Any) -> dict[str, Any]:
    return tenant.mailconfig(name, realm=realm, connectionRef={"kind": "ClusterKeycloakConnection",
                                                               "name": grant.connection}, **spec)


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def _kcmail_requests(env, since: int) -> list[str]:
    """The request lines Keycloak logged for kcmail (User-Agent kcmail/…) after byte ``since`` of its log."""
    with env.keycloak_log.open(errors="replace") as log:
        log.seek(since)
        return [line for line in log if '"kcmail/' in line]


def _paths(lines: list[str]) -> list[str]:
    """The decoded request paths of access-log lines ('… "GET /admin/realms/x HTTP/1.1" …')."""
    paths = []
    for line in lines:
        request = line.split('"')[1]
        paths.append(urllib.parse.unquote(request.split(" ")[1].split("?")[0]))
    return paths


def _admin_events(admin, realm: str, user_id: str) -> list[dict[str, Any]]:
    events = admin.request("GET", f"/{realm}/admin-events", params={"max": "500"}).json()
    return [event for event in events if (event.get("authDetails") or {}).get("userId") == user_id]


@pytest.mark.parametrize("realm", [
    "fzr/../master", "fzr/../fzr-own", "../master", "..", ".", "fzr%2F..%2Fmaster", "%2e%2e", "fzr/%2e%2e/master",
    "fz-06?x=1", "fzr#x", "fzr;x=1", "fzr\\..\\master", "fzr\r\nHost: evil", "fzr\x00", " fzr", "fzr\t",
])
def test_a_realm_name_that_is_a_path_is_refused_at_admission(tenant, realm):
    result = tenant.kubectl("apply", "-f", "-", stdin=json.dumps(tenant.mailconfig("traversal", realm=realm)))
    assert result.returncode != 0
    assert REALM_RULE in result.stderr
    assert tenant.kubectl("get", "mailconfig", "traversal").returncode != 0


def test_a_hostile_tenant_reaches_no_realm_outside_its_grant(operator, tenant, grant):
    env, admin = tenant.env, tenant.admin
    master_before = admin.realm("master").get("smtpServer")
    bystander_before = admin.realm(grant.bystander)
    log_start = env.keycloak_log.stat().st_size
    # Names that pass admission and look like a way out: Unicode look-alikes of / and .., case, matrix-free.
    attacks = {
        "fullwidth-slash": f"{grant.prefix}\uff0f..\uff0fmaster",
        "division-slash": f"{grant.prefix}\u2215..\u2215{grant.bystander}",
        "two-dot-leader": f"{grant.prefix}\u2025",
        "case": grant.prefix.upper() + "-own",
        "master": "master",
        "bystander": grant.bystander,
    }
    tenant.apply(_mailconfig(tenant, grant, "own", grant.own_realm),
                 *(_mailconfig(tenant, grant, name, realm) for name, realm in attacks.items()))

    own = tenant.wait_condition("True", "Delivering", name="own")
    assert recorded_owner(admin.realm(grant.own_realm)).uid == own["metadata"]["uid"]
    for name in ("fullwidth-slash", "division-slash", "two-dot-leader"):
        tenant.wait_condition("False", "RealmNotFound", name=name)
    for name in ("case", "master", "bystander"):
        refused = _ready(tenant.wait_condition("False", "ConnectionNotAllowed", name=name))
        assert f"does not allow realm {attacks[name]!r}" in refused["message"]

    # Nothing written outside the grant: the realms as they were, no admin event by the tenant's account.
    assert admin.realm("master").get("smtpServer") == master_before
    bystander_after = admin.realm(grant.bystander)
    assert bystander_after["smtpServer"] == bystander_before["smtpServer"]
    assert recorded_owner(bystander_after) is None
    assert _admin_events(admin, "master", grant.admin_user_id) == []
    assert _admin_events(admin, grant.bystander, grant.admin_user_id) == []
    # The account's writes do show where it may write: the check above can see them.
    assert [e["operationType"] for e in _admin_events(admin, grant.own_realm, grant.admin_user_id)] == ["UPDATE"]
    # Nothing read outside the grant either (other tests' MailConfigs may be finalized meanwhile, through
    # other Connections, so only the realms at stake are looked for): the look-alikes were asked for as the
    # names they are, and master and the bystander not at all but for the admin login's token endpoint.
    paths = _paths(_kcmail_requests(env, log_start))
    assert f"/admin/realms/{grant.own_realm}" in paths
    for name in ("fullwidth-slash", "division-slash", "two-dot-leader"):
        assert f"/admin/realms/{attacks[name]}" in paths
    touched = [path for path in paths if "master" in path or grant.bystander in path or ".." in path]
    assert set(touched) <= {"/realms/master/protocol/openid-connect/token", *(
        f"/admin/realms/{attacks[name]}" for name in ("fullwidth-slash", "division-slash", "two-dot-leader"))}


def test_squatters_from_a_namespace_or_a_lookalike_connection_hold_nothing_back(operator, tenant, grant):
    env, admin = tenant.env, tenant.admin
    realm = f"{grant.prefix}-contested"
    operator_env.create_realm(env, realm)
    squatter = f"{tenant.namespace}-squat"
    try:
        # Older claims first: from a namespace the Connection does not allow, and through a look-alike
        # KeycloakConnection (same Keycloak, URL spelled otherwise, credentials that are not an admin's).
        operator_env.apply(env, operator_env.namespace(squatter))
        operator_env.apply(
            env, operator_env.issuer_secret(env, squatter, "smtp-oauth"),
            *operator_env.keycloak_connection(env, squatter, "lookalike", url=env.keycloak_url.upper() + "/",
                                              password="not-the-admin-password"),
            {**_mailconfig(tenant, grant, "squat", realm, deletionPolicy="Clear"),
             "metadata": {"name": "squat", "namespace": squatter}},
            {**tenant.mailconfig("lookalike", realm=realm, deletionPolicy="Clear",
                                 connectionRef={"kind": "KeycloakConnection", "name": "lookalike"}),
             "metadata": {"name": "lookalike", "namespace": squatter}})
        squatters = {"squat": "ConnectionNotAllowed", "lookalike": "KeycloakAuthFailed"}
        for name, reason in squatters.items():
            dataclasses.replace(tenant, namespace=squatter).wait_condition("False", reason, name=name)
        time.sleep(1.1)  # the rightful MailConfig is visibly younger than both

        tenant.apply(_mailconfig(tenant, grant, "rightful", realm))
        rightful = tenant.wait_condition("True", "Delivering", name="rightful")
        assert recorded_owner(admin.realm(realm)).uid == rightful["metadata"]["uid"]

        # Their deletion, with deletionPolicy Clear, takes nothing from the rightful owner.
        deleted = operator_env.kubectl(env, "-n", squatter, "delete", "mailconfigs", "--all", "--timeout=60s")
        assert deleted.returncode == 0, deleted.stderr
        held = admin.realm(realm)
        assert held["smtpServer"]["fromDisplayName"] == f"{realm} mail"
        assert recorded_owner(held).uid == rightful["metadata"]["uid"]
        assert _ready(tenant.get("mailconfig", "rightful"))["status"] == "True"
    finally:
        operator_env.kubectl(env, "-n", squatter, "delete", "mailconfigs", "--all", "--wait=false")
        admin.request("DELETE", f"/{realm}")


@pytest.mark.parametrize(("value", "problem"), [
    ("secret\r\nX-Injected: yes", "contains control characters"),
    ("user\x01auth=Bearer forged", "contains control characters"),
    ("s" * 300, "has 300 characters; Keycloak stores at most 255"),
])
def test_a_secret_value_keycloak_cannot_take_is_refused_by_its_key_before_any_write(operator, tenant, grant, value,
                                                                                   problem):
    tenant.apply(tenant.secret("bad-oauth", **{"client-id": tenant.env.issuer_client_id, "client-secret": value}),
                 _mailconfig(tenant, grant, "bad", grant.own_realm, auth={
                     "type": "XOAUTH2", "username": "no-reply@acme.example",
                     "xoauth2": {"tokenURL": tenant.env.issuer_token_url, "scope": tenant.env.issuer_scope,
                                 "clientSecretRef": {"name": "bad-oauth"}}}))
    refused = tenant.wait_condition("False", "InvalidSecretValue", name="bad")
    message = _ready(refused)["message"]
    assert f"the value of key 'client-secret' of Secret {tenant.namespace}/bad-oauth {problem}" in message
    assert value[:12] not in json.dumps(refused["status"])
    assert not tenant.admin.realm(grant.own_realm).get("smtpServer")


def _probe_cli(manifests: list[dict[str, Any]], tmp_path, *args: str) -> str:
    path = tmp_path / f"probe-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    result = subprocess.run([sys.executable, "-m", "kcmail.cli", "probe", str(path), "--timeout", "10", *args],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture
def hostile() -> Iterator[HostileServers]:
    with hostile_servers(banner=f"INTERNAL-BANNER-{uuid.uuid4().hex[:8]}") as servers:
        yield servers


def test_what_hostile_servers_say_reaches_no_one_unredacted(operator, tenant, grant, hostile, tmp_path):
    env, admin, ns = tenant.env, tenant.admin, tenant.namespace
    leaks = Leaks()
    secret = leaks.add_secret("echoed client secret", canary("echoed"))
    leaks.add_secret("issuer client secret", env.issuer_client_secret)
    realms = {name: f"{grant.prefix}-{name}" for name in ("echo-token", "echo-smtp", "html-token", "banner-smtp")}
    for realm in realms.values():
        operator_env.create_realm(env, realm)
    xoauth2 = {"type": "XOAUTH2", "username": "no-reply@acme.example",
               "xoauth2": {"tokenURL": env.issuer_token_url, "scope": env.issuer_scope,
                           "clientSecretRef": {"name": "smtp-oauth"}}}
    echo_auth = {**xoauth2, "xoauth2": {**xoauth2["xoauth2"], "tokenURL": hostile.echo_token_url,
                                        "clientSecretRef": {"name": "echo-oauth"}}}
    html_auth = {**xoauth2, "xoauth2": {**xoauth2["xoauth2"], "tokenURL": hostile.html_url + "/token"}}
    plain = {"host": "127.0.0.1", "security": "None"}
    mailconfigs = [
        # A token endpoint that echoes the client secret in every spelling.
        _mailconfig(tenant, grant, "echo-token", realms["echo-token"], auth=echo_auth),
        # A real token, and an SMTP server that quotes the decoded XOAUTH2 string (with the token) back.
        _mailconfig(tenant, grant, "echo-smtp", realms["echo-smtp"], auth=xoauth2,
                    smtp={**plain, "port": hostile.echo_smtp_port}),
        # Internal services: a web page where a token answer belongs, an HTTP banner where SMTP's greeting does.
        _mailconfig(tenant, grant, "html-token", realms["html-token"], auth=html_auth),
        _mailconfig(tenant, grant, "banner-smtp", realms["banner-smtp"], smtp={**plain, "port": hostile.banner_port}),
    ]
    echo_secret = tenant.secret("echo-oauth", **{"client-id": "echo-app", "client-secret": secret})
    try:
        tenant.apply(
            echo_secret, *mailconfigs,
            # A namespaced Connection to an internal web service, with the tenant's own "credentials".
            operator_env.secret(ns, "html-admin", {"username": "admin", "password": secret}),
            {"apiVersion": "kcmail.io/v1alpha1", "kind": "KeycloakConnection", "metadata": {"name": "html-kc",
                                                                                             "namespace": ns},
             "spec": {"url": hostile.html_url, "credentialsSecretRef": {"name": "html-admin"}}},
            tenant.mailconfig("html-kc", realm=f"{grant.prefix}-via-html",
                              connectionRef={"kind": "KeycloakConnection", "name": "html-kc"}))
        checks = {"echo-token": ("TokenAcquired", "InvalidClient", "invalid_client"),
                  "echo-smtp": ("SMTPAuthenticated", "AuthenticationRejected", "535 5.7.8 XOAUTH2 refused"),
                  "html-token": ("TokenAcquired", "TokenEndpointError", "not a JSON object (text/html)"),
                  "banner-smtp": ("SMTPAuthenticated", "SMTPUnreachable", "not an SMTP reply"),
                  "html-kc": ("Ready", "KeycloakAnswerInvalid", "is the Connection's url a Keycloak?")}
        for name, (kind, reason, words) in checks.items():
            obj = tenant.wait_condition("False", reason, name=name, kind=kind, timeout=90)
            message = next(c["message"] for c in obj["status"]["conditions"] if c["type"] == kind)
            assert words in message, (name, message)
        connection = tenant.wait_connection("False", "KeycloakAnswerInvalid", name="html-kc")
        assert hostile.banner not in json.dumps(connection)

        for kind in ("mailconfigs", "keycloakconnections", "events"):
            result = tenant.kubectl("get", kind, "-o", "json")
            assert result.returncode == 0, result.stderr
            leaks.add_text(kind, result.stdout)
        # The same probes from a laptop: `kcmail probe`, as text and as JSON.
        for name, extra in (("echo-token", [echo_secret]), ("echo-smtp", [tenant.secret()])):
            manifest = next(m for m in mailconfigs if m["metadata"]["name"] == name)
            for args in ((), ("--json",)):
                leaks.add_text(f"kcmail probe {name} {' '.join(args)}", _probe_cli([manifest, *extra], tmp_path, *args))
    finally:
        for realm in (*realms.values(), f"{grant.prefix}-via-html"):
            admin.request("DELETE", f"/{realm}")
    leaks.add_text("operator log", operator.log())
    assert f"{ns}/echo-smtp" in leaks.texts["operator log"]
    assert leaks.found() == []
    assert [where for where, text in leaks.texts.items() if hostile.banner in text] == []
    # The scan finds what it looks for: the echo servers did say it, before kcmail redacted it.
    assert Leaks(secrets=dict(leaks.secrets), texts={"raw": f"client_secret {secret}"}).found()


def test_a_ca_that_is_not_pem_is_said_on_the_connection_and_its_mailconfigs(operator, tenant):
    ns = tenant.namespace
    tenant.apply(
        operator_env.secret(ns, "kc-admin", {"username": tenant.env.keycloak_admin_user,
                                             "password": tenant.env.keycloak_admin_password}),
        operator_env.secret(ns, "kc-ca", {"ca.crt": "this is not a certificate"}),
        {"apiVersion": "kcmail.io/v1alpha1", "kind": "KeycloakConnection", "metadata": {"name": "kc", "namespace": ns},
         "spec": {"url": tenant.env.keycloak_url, "credentialsSecretRef": {"name": "kc-admin"},
                  "tls": {"caSecretRef": {"name": "kc-ca"}}}},
        tenant.secret(), tenant.mailconfig(connectionRef={"kind": "KeycloakConnection", "name": "kc"}))
    connection = _ready(tenant.wait_connection("False", "InvalidCA"))
    assert f"Secret {ns}/kc-ca key 'ca.crt' (the CA of KeycloakConnection {ns}/kc) is not a PEM CA bundle" in \
        connection["message"]
    mailconfig = tenant.wait_condition("False", "InvalidCA", kind="CredentialsResolved")
    assert _ready(mailconfig)["reason"] == "InvalidCA"
    # Fixed in the Secret, it is picked up at once.
    tenant.apply(operator_env.secret(ns, "kc-ca", {"ca.crt": tenant.env.ca_file.read_text()}))
    tenant.wait_connection("True", "Connected")
    tenant.wait_condition("True", "Delivering")
