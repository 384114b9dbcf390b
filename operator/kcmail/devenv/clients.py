"""Small clients of the local environment's servers, shared by tests, the demo and the benchmarks."""

from __future__ import annotations

from typing import Any

import httpx

from kcmail.devenv.certs import client_context
from kcmail.devenv.environment import Environment
from kcmail.ownership import OWNER_ATTRIBUTE


class KeycloakAdminAPI:
    """A bare admin REST client for tests: a fresh admin token per call keeps it simple and valid."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.http = httpx.Client(base_url=env.keycloak_url, verify=client_context(env.ca_file), timeout=30)

    def _token(self) -> str:
        response = self.http.post("/realms/master/protocol/openid-connect/token", data={
            "grant_type": "password", "client_id": "admin-cli",
            "username": self.env.keycloak_admin_user, "password": self.env.keycloak_admin_password})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token()}"}
        return self.http.request(method, f"/admin/realms{path}", headers=headers, **kwargs)

    def realm(self, realm: str) -> dict[str, Any]:
        response = self.request("GET", f"/{realm}")
        response.raise_for_status()
        return dict(response.json())

    def put_realm(self, realm: str, representation: dict[str, Any]) -> httpx.Response:
        return self.request("PUT", f"/{realm}", json=representation)

    def regenerate_client_secret(self, realm: str, client_id: str) -> str:
        """Give the client ``client_id`` a new secret, which invalidates the old one at once."""
        found = self.request("GET", f"/{realm}/clients", params={"clientId": client_id})
        found.raise_for_status()
        (client,) = found.json()
        response = self.request("POST", f"/{realm}/clients/{client['id']}/client-secret")
        response.raise_for_status()
        return str(response.json()["value"])

    def record_admin_events(self, realm: str) -> None:
        """Have Keycloak keep an admin event, with its representation, for every change to ``realm``."""
        representation = self.realm(realm)
        representation.update(adminEventsEnabled=True, adminEventsDetailsEnabled=True)
        self.put_realm(realm, representation).raise_for_status()

    def admin_events(self, realm: str, *, operation: str, resource_type: str) -> list[dict[str, Any]]:
        """The admin events Keycloak kept for ``realm`` (see :meth:`record_admin_events`), newest first."""
        response = self.request("GET", f"/{realm}/admin-events", params={
            "operationTypes": operation, "resourceTypes": resource_type, "max": "1000"})
        response.raise_for_status()
        return list(response.json())


def issuer_token(env: Environment, *, client_id: str | None = None, client_secret: str | None = None,
                 scope: str | None = None) -> httpx.Response:
    """The token request Keycloak's mailer sends: client_credentials, client_secret_post."""
    return httpx.post(env.issuer_token_url, verify=client_context(env.ca_file), timeout=30, data={
        "grant_type": "client_credentials",
        "client_id": client_id or env.issuer_client_id,
        "client_secret": client_secret or env.issuer_client_secret,
        "scope": scope or env.issuer_scope,
    })


def _as_attribute(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def realm_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two reads of a realm, ``smtpServer`` and kcmail's owner record aside, in plain words.

    Keycloak 26 stores a few settings that a new realm only shows as top-level defaults (session
    timeouts ``0``, ``scimApiEnabled`` false) as attributes on the first full PUT. An attribute that
    appears holding exactly the value the realm already showed at top level changes nothing and is not
    reported; any other difference is.
    """
    changes = []
    for key in sorted((set(before) | set(after)) - {"smtpServer", "attributes"}):
        if before.get(key) != after.get(key):
            changes.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    old, new = before.get("attributes") or {}, after.get("attributes") or {}
    for key in sorted((set(old) | set(new)) - {OWNER_ATTRIBUTE}):
        if old.get(key) == new.get(key):
            continue
        if key not in old and key in before and new[key] == _as_attribute(before[key]):
            continue
        changes.append(f"attributes.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes
