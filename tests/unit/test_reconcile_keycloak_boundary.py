"""A reconcile against Keycloak answers no real server here can give: versions before 26.2, a 409.

No Keycloak older than 26.2 can run here (the Maven distribution starts at 26.4.0), so the Kubernetes
reads and the Keycloak admin client are small hand-written fakes of the two interfaces the Reconciler
uses. The newer versions are also covered against real servers in tests/e2e/test_versions.py. The 409
test keeps the real KeycloakClient and fakes the HTTP answers python-keycloak hands it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kcmail.controller import Reconciler
from kcmail.keycloak import AdminCredentials, KeycloakClient
from kcmail.kube import Secret
from kcmail.smtp_settings import Version
from kcmail.spec import ConnectionKind
from kcmail.store import MailConfigObject

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 28, 10, 0, tzinfo=datetime.UTC)
NAMESPACE = "tenant-acme"
CLIENT_SECRET = "client-secret-value"
PASSWORD = "basic-password-value"
TIMEOUT_KEYS = {"connectionTimeout", "timeout", "writeTimeout"}

XOAUTH2_AUTH = {"type": "XOAUTH2", "username": "no-reply@acme.example",
                "xoauth2": {"tokenURL": "https://login.example/token", "scope": "smtp.send",
                            "clientSecretRef": {"name": "smtp-oauth"}}}
BASIC_AUTH = {"type": "Basic", "username": "no-reply@acme.example",
              "basic": {"passwordSecretRef": {"name": "smtp-basic"}}}


class FakeKube:
    """The reads a reconcile makes: one Connection, its admin Secret, the MailConfig's Secrets."""

    def __init__(self) -> None:
        self.secrets = {
            "kc-admin": Secret(NAMESPACE, "kc-admin", "uid-admin", "1", {"username": "admin", "password": "pw"}),
            "smtp-oauth": Secret(NAMESPACE, "smtp-oauth", "uid-oauth", "7",
                                 {"client-id": "smtp-app", "client-secret": CLIENT_SECRET}),
            "smtp-basic": Secret(NAMESPACE, "smtp-basic", "uid-basic", "3", {"password": PASSWORD}),
        }

    async def connection(self, kind: ConnectionKind, name: str, namespace: str | None) -> dict[str, Any] | None:
        assert (kind, name, namespace) == (ConnectionKind.NAMESPACED, "kc", NAMESPACE)
        return {"spec": {"url": "https://keycloak.example", "credentialsSecretRef": {"name": "kc-admin"}}}

    async def secret(self, namespace: str, name: str) -> Secret | None:
        assert namespace == NAMESPACE
        return self.secrets.get(name)

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {}

    async def mailconfig_uid(self, namespace: str, name: str) -> str | None:
        return None


class FakeKeycloak:
    """A Keycloak admin client of a given version holding one realm."""

    def __init__(self, version: Version) -> None:
        self.server_version = version
        self.realm: dict[str, Any] = {"realm": "acme", "enabled": True}
        self.writes: list[dict[str, str]] = []

    @contextlib.asynccontextmanager
    async def one_slot(self) -> AsyncIterator[None]:
        yield

    async def version(self, *, fresh: bool = False) -> Version:
        return self.server_version

    async def read_realm(self, realm: str) -> dict[str, Any]:
        assert realm == "acme"
        return dict(self.realm)

    async def write_realm(self, realm: str, representation: dict[str, Any]) -> None:
        smtp_server = representation["smtpServer"]
        self.writes.append(dict(smtp_server))
        # What a GET shows afterwards: secrets masked.
        self.realm["smtpServer"] = {k: "**********" if k in ("password", "authTokenClientSecret") else v
                                    for k, v in smtp_server.items()}
        self.realm["attributes"] = dict(representation.get("attributes") or {})


class FakeClients:
    def __init__(self, keycloak: FakeKeycloak) -> None:
        self.keycloak = keycloak

    @contextlib.asynccontextmanager
    async def using(self, connection: Any) -> AsyncIterator[Any]:
        yield self.keycloak


def _mailconfig(auth: dict[str, Any], status: dict[str, Any] | None = None) -> MailConfigObject:
    return MailConfigObject.from_body({
        "metadata": {"namespace": NAMESPACE, "name": "mail", "uid": "uid-mail", "generation": 1,
                     "creationTimestamp": "2026-11-28T09:00:00Z"},
        "spec": {"connectionRef": {"kind": "KeycloakConnection", "name": "kc"}, "realm": "acme",
                 "smtp": {"host": "smtp.example", "port": 587, "security": "StartTLS",
                          "timeouts": {"connect": "10s", "read": "10s", "write": "10s"}},
                 "sender": {"from": "no-reply@acme.example"}, "auth": auth},
        "status": status or {},
    })


def _reconciler(keycloak: Any) -> Reconciler:
    return Reconciler(FakeKube(), FakeClients(keycloak), now=lambda: NOW)  # type: ignore[arg-type]


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


async def test_xoauth2_below_26_2_stalls_as_unsupported_version_and_writes_nothing():
    keycloak = FakeKeycloak((26, 1, 4))
    result = await _reconciler(keycloak).reconcile(_mailconfig(XOAUTH2_AUTH))

    assert keycloak.writes == []
    assert "smtpServer" not in keycloak.realm
    conditions = _conditions(result.status)
    for kind in ("Ready", "Applied", "Stalled"):
        assert conditions[kind]["reason"] == "UnsupportedKeycloakVersion", kind
    assert (conditions["Ready"]["status"], conditions["Applied"]["status"], conditions["Stalled"]["status"]) == (
        "False", "False", "True")
    assert "26.2.0 or newer" in conditions["Ready"]["message"]
    assert "26.1.4" in conditions["Ready"]["message"]
    assert result.status["keycloakVersion"] == "26.1.4"
    assert "appliedSecretVersion" not in result.status
    # Waiting helps nothing: only an upgrade or a spec change does.
    assert result.retry is False
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "UnsupportedKeycloakVersion")]
    assert CLIENT_SECRET not in repr(result)


async def test_basic_auth_below_26_2_is_applied():
    keycloak = FakeKeycloak((26, 1, 4))
    result = await _reconciler(keycloak).reconcile(_mailconfig(BASIC_AUTH))

    assert len(keycloak.writes) == 1
    written = keycloak.writes[0]
    assert (written["authType"], written["password"]) == ("basic", PASSWORD)
    assert not TIMEOUT_KEYS & written.keys()
    assert "allowutf8" not in written
    assert _conditions(result.status)["Ready"]["status"] == "True"
    assert result.status["appliedSecretVersion"] == "uid-basic/3"


async def test_upgrade_past_26_2_lets_a_stalled_xoauth2_mailconfig_apply():
    keycloak = FakeKeycloak((26, 1, 4))
    reconciler = _reconciler(keycloak)
    stalled = await reconciler.reconcile(_mailconfig(XOAUTH2_AUTH))

    keycloak.server_version = (26, 2, 0)
    upgraded = await reconciler.reconcile(_mailconfig(XOAUTH2_AUTH, stalled.status))

    assert len(keycloak.writes) == 1
    assert keycloak.writes[0]["authType"] == "token"
    conditions = _conditions(upgraded.status)
    assert conditions["Ready"]["status"] == "True"
    assert "Stalled" not in conditions
    assert upgraded.status["keycloakVersion"] == "26.2.0"


@pytest.mark.parametrize(("version", "with_timeouts"), [
    ((26, 2, 0), False), ((26, 4, 7), False), ((26, 4, 99), False), ((26, 5, 0), True), ((26, 7, 3), True),
])
async def test_timeout_keys_are_written_from_26_5_on(version, with_timeouts):
    keycloak = FakeKeycloak(version)
    await _reconciler(keycloak).reconcile(_mailconfig(XOAUTH2_AUTH))

    (written,) = keycloak.writes
    assert written["authTokenClientSecret"] == CLIENT_SECRET
    if with_timeouts:
        assert {k: written[k] for k in TIMEOUT_KEYS} == {"connectionTimeout": "10000", "timeout": "10000",
                                                          "writeTimeout": "10000"}
    else:
        assert not TIMEOUT_KEYS & written.keys()


async def test_a_steady_realm_on_an_old_keycloak_costs_no_second_write():
    keycloak = FakeKeycloak((26, 4, 7))
    reconciler = _reconciler(keycloak)
    first = await reconciler.reconcile(_mailconfig(XOAUTH2_AUTH))
    second = await reconciler.reconcile(_mailconfig(XOAUTH2_AUTH, first.status))

    assert len(keycloak.writes) == 1
    assert second.wrote is False
    assert second.events == []


async def test_a_409_from_a_simultaneous_realm_write_is_retried_not_stalled():
    # What Keycloak answers the later of two PUTs of one realm that commit at the same moment.
    keycloak = KeycloakClient("https://keycloak.example", "master", AdminCredentials(username="admin", password="pw"))
    stored: dict[str, Any] = {"realm": "acme"}
    answers = {"PUT": httpx.Response(409, json={"errorMessage": "Realm with same name exists"})}

    async def get(path: str, **_: Any) -> httpx.Response:
        if path == "admin/serverinfo":
            return httpx.Response(200, json={"systemInfo": {"version": "26.7.3"}})
        assert path == "admin/realms/acme"
        return httpx.Response(200, json=stored)

    async def put(path: str, data: str, **_: Any) -> httpx.Response:
        assert path == "admin/realms/acme"
        if answers["PUT"].status_code == 204:
            stored.update(json.loads(data))
        return answers["PUT"]

    async def logged_in() -> None:
        return None

    keycloak._ensure_token = logged_in

    async def send(method: str, path: str, body: Any) -> httpx.Response:
        return await (put(path, json.dumps(body)) if method == "PUT" else get(path))

    keycloak._send = send
    try:
        reconciler = _reconciler(keycloak)
        collided = await reconciler.reconcile(_mailconfig(XOAUTH2_AUTH))

        conditions = _conditions(collided.status)
        assert (conditions["Applied"]["status"], conditions["Applied"]["reason"]) == ("False", "KeycloakRejected")
        assert "409: Realm with same name exists" in conditions["Applied"]["message"]
        assert "Stalled" not in conditions
        assert collided.retry is True

        answers["PUT"] = httpx.Response(204)
        retried = await reconciler.reconcile(_mailconfig(XOAUTH2_AUTH, collided.status))
        assert _conditions(retried.status)["Ready"]["status"] == "True"
        assert stored["smtpServer"]["authTokenClientSecret"] == CLIENT_SECRET
    finally:
        await keycloak.aclose()
