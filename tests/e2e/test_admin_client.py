"""One Keycloak admin client per Connection: its token is reused across reconciles (counted by Keycloak)."""

from __future__ import annotations

import datetime
import secrets
import time
import uuid

import pytest

from kcmail.devenv import operator_env

pytestmark = pytest.mark.e2e

RECONCILES = 5


def _service_account(admin, client_id: str) -> str:
    """A master-realm client whose service account holds the realm's admin role; returns its secret."""
    secret = secrets.token_urlsafe(24)
    created = admin.request("POST", "/master/clients", json={
        "clientId": client_id, "enabled": True, "publicClient": False, "serviceAccountsEnabled": True,
        "standardFlowEnabled": False, "directAccessGrantsEnabled": False, "secret": secret})
    assert created.status_code == 201, created.text
    client = admin.request("GET", "/master/clients", params={"clientId": client_id}).json()[0]
    user = admin.request("GET", f"/master/clients/{client['id']}/service-account-user").json()
    role = admin.request("GET", "/master/roles/admin").json()
    granted = admin.request("POST", f"/master/users/{user['id']}/role-mappings/realm", json=[role])
    assert granted.status_code == 204, granted.text
    return secret


def _logins(admin, client_id: str, since_ms: int) -> int:
    events = admin.request("GET", "/master/events", params={
        "client": client_id, "type": "CLIENT_LOGIN", "dateFrom": datetime.date.today().isoformat(), "max": "100"})
    assert events.status_code == 200, events.text
    return sum(1 for e in events.json() if e["time"] >= since_ms)


def test_reconciles_of_a_connection_share_one_admin_token(operator, tenant):
    admin = tenant.admin
    client_id = f"kcmail-sa-{uuid.uuid4().hex[:6]}"
    client_secret = _service_account(admin, client_id)
    master = admin.realm("master")
    if not master.get("eventsEnabled") or "CLIENT_LOGIN" not in (master.get("enabledEventTypes") or []):
        types = sorted({*(master.get("enabledEventTypes") or []), "CLIENT_LOGIN"})
        updated = {**master, "eventsEnabled": True, "enabledEventTypes": types}
        assert admin.put_realm("master", updated).status_code == 204
    since = int(time.time() * 1000)

    objects = operator_env.keycloak_connection(tenant.env, tenant.namespace, "sa")
    objects[0] = operator_env.secret(tenant.namespace, "sa-admin", {"client-id": client_id,
                                                                    "client-secret": client_secret})
    connection_ref = {"kind": "KeycloakConnection", "name": "sa"}
    tenant.apply(*objects, tenant.secret(), tenant.mailconfig(connectionRef=connection_ref))
    tenant.wait_condition("True", "Delivering")
    for attempt in range(RECONCILES):
        mark = f"admin-client-{attempt}"
        tenant.kubectl("annotate", "mailconfig", "mail", f"kcmail.io/requested-at={mark}", "--overwrite")
        tenant.wait_for(lambda obj, mark=mark: (obj.get("status") or {}).get("lastHandledRequestedAt") == mark,
                        timeout=30, what=f"reconcile {attempt}")

    # The master realm's tokens live 60 s; all of the above fits in one token's life.
    assert time.time() * 1000 - since < 55_000
    assert _logins(admin, client_id, since) == 1
