"""Small fakes of the Kubernetes reads and the Keycloak admin client, for unit tests of whole reconcile passes.

One realm, one MailConfig with Basic auth; the real servers' side is in tests/e2e.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

from kcmail.controller import Reconciler
from kcmail.kube import Secret
from kcmail.ownership import OWNER_ATTRIBUTE, Owner, with_owner
from kcmail.spec import ConnectionKind
from kcmail.store import MailConfigObject

ME = Owner(uid="uid-me", mailconfig="tenant-a/mail")
NOW = datetime.datetime(2026, 12, 6, 10, 0, tzinfo=datetime.UTC)

NAMESPACE, NAME, UID = "tenant-a", "mail", "uid-me"
SPEC = {"connectionRef": {"kind": "KeycloakConnection", "name": "kc"}, "realm": "acme",
        "smtp": {"host": "smtp.example"}, "sender": {"from": "no-reply@acme.example"},
        "auth": {"type": "Basic", "username": "u", "basic": {"passwordSecretRef": {"name": "smtp"}}}}


class FakeKube:
    def __init__(self, mailconfigs: dict[str, str] | None = None, allowed_realms: list[str] | None = None) -> None:
        self.mailconfigs = mailconfigs or {}
        self.allowed_realms = allowed_realms

    async def connection(self, kind: ConnectionKind, name: str, namespace: str | None) -> dict[str, Any]:
        # "kc" and "kc-spelled" reach the same Keycloak; "elsewhere" another one.
        url = {"elsewhere": "https://other-keycloak.example"}.get(name, "https://keycloak.example")
        if name == "kc-spelled":
            url = "HTTPS://Keycloak.example/"
        spec: dict[str, Any] = {"url": url, "credentialsSecretRef": {"name": "kc-admin"}}
        if self.allowed_realms is not None:
            spec["allowedRealms"] = self.allowed_realms
        return {"spec": spec}

    async def secret(self, namespace: str, name: str) -> Secret:
        data = {"username": "admin", "password": "pw"} if name == "kc-admin" else {"password": "smtp-password"}
        return Secret(namespace, name, f"uid-{name}", "1", data)

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {}

    async def mailconfig_uid(self, namespace: str, name: str) -> str | None:
        return self.mailconfigs.get(f"{namespace}/{name}")


class FakeKeycloak:
    """One realm; ``race`` is a record another writer puts in right after this client's next write."""

    def __init__(self, owner: Owner | None = None, race: Owner | None = None) -> None:
        self.realm: dict[str, Any] = {"realm": "acme", "attributes": {"frontendUrl": "https://sso"},
                                      "smtpServer": {"host": "hand-made"}}
        if owner is not None:
            self.realm["attributes"][OWNER_ATTRIBUTE] = owner.record()
        self.race = race
        self.writes: list[dict[str, Any]] = []

    @contextlib.asynccontextmanager
    async def one_slot(self) -> AsyncIterator[None]:
        yield

    async def version(self, *, fresh: bool = False) -> tuple[int, int, int]:
        return (26, 7, 3)

    async def read_realm(self, realm: str) -> dict[str, Any]:
        return json.loads(json.dumps(self.realm))

    async def write_realm(self, realm: str, representation: dict[str, Any]) -> None:
        self.writes.append(representation)
        self.realm = {**representation, "smtpServer": representation.get("smtpServer", self.realm["smtpServer"])}
        if self.race is not None:
            self.realm = with_owner(self.realm, {"host": "theirs"}, self.race)
            self.race = None


class FakeClients:
    def __init__(self, keycloak: FakeKeycloak) -> None:
        self.keycloak = keycloak

    @contextlib.asynccontextmanager
    async def using(self, connection: Any) -> AsyncIterator[FakeKeycloak]:
        yield self.keycloak


def reconciler_for(keycloak: FakeKeycloak, kube: FakeKube | None = None) -> Reconciler:
    return Reconciler(kube or FakeKube(), FakeClients(keycloak), now=lambda: NOW)  # type: ignore[arg-type]


def mailconfig(annotations: dict[str, str] | None = None, **spec: Any) -> MailConfigObject:
    return MailConfigObject.from_body({
        "metadata": {"namespace": NAMESPACE, "name": NAME, "uid": UID, "generation": 1,
                     "creationTimestamp": "2026-12-06T09:00:00Z", "annotations": annotations or {}},
        "spec": {**SPEC, **spec}, "status": {}})


def ready(result: Any) -> tuple[str, str, str]:
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
    return ready["status"], ready["reason"], ready["message"]



def dataclass_with_status(status: dict[str, Any]) -> MailConfigObject:
    obj = mailconfig()
    return MailConfigObject(**{**obj.__dict__, "status": status})
