"""Deleting a MailConfig (Retain leaves the realm alone, Clear empties its smtpServer and waits for Keycloak
to do so), and suspending one (no writes, drift stays, until it is resumed).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kcmail.devenv import operator_env
from kcmail.devenv.clients import realm_changes
from kcmail.devenv.processes import free_port

pytestmark = pytest.mark.e2e

KC = {"kind": "KeycloakConnection", "name": "kc"}
FINALIZER = "kcmail.io/finalizer"


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _patch(tenant, resource: str, name: str, patch: dict[str, Any]) -> None:
    result = tenant.kubectl("patch", resource, name, "--type=merge", "-p", json.dumps(patch))
    assert result.returncode == 0, result.stderr


def _delete(tenant, name: str = "mail") -> float:
    result = tenant.kubectl("delete", "mailconfig", name, "--wait=false")
    assert result.returncode == 0, result.stderr
    return time.monotonic()


def _wait_gone(tenant, name: str = "mail", *, timeout: float) -> float:
    """Seconds until the MailConfig no longer exists."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        result = tenant.kubectl("get", "mailconfig", name, "-o", "json")
        if result.returncode != 0 and "NotFound" in result.stderr:
            return time.monotonic() - started
        last = result.stdout
        time.sleep(0.5)
    raise AssertionError(f"MailConfig {name} still exists after {timeout} s: {last}")


def _ready_behind_own_connection(tenant, **spec: Any) -> dict[str, str]:
    """A Ready MailConfig whose KeycloakConnection only it uses, so that Keycloak can vanish for it alone."""
    tenant.apply(*operator_env.keycloak_connection(tenant.env, tenant.namespace, "kc"), tenant.secret(),
                 tenant.mailconfig(connectionRef=KC, **spec))
    tenant.wait_condition("True")
    settings = tenant.smtp_server()
    assert settings["from"] == "no-reply@acme.example"
    return settings


def _make_keycloak_unreachable(tenant) -> str:
    closed = f"https://127.0.0.1:{free_port()}"
    _patch(tenant, "keycloakconnection", "kc", {"spec": {"url": closed}})
    tenant.wait_condition("False", "KeycloakUnreachable")
    return closed


def test_retain_deletes_at_once_without_keycloak_and_leaves_the_settings(operator, tenant):
    settings = _ready_behind_own_connection(tenant, deletionPolicy="Retain")
    _make_keycloak_unreachable(tenant)

    _delete(tenant)
    assert _wait_gone(tenant, timeout=15) < 10
    assert tenant.smtp_server() == settings


def test_clear_removes_the_realms_smtp_settings_and_nothing_else(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig(deletionPolicy="Clear"))
    tenant.wait_condition("True")
    before = tenant.admin.realm(tenant.realm)
    assert before["smtpServer"]["from"] == "no-reply@acme.example"

    _delete(tenant)
    _wait_gone(tenant, timeout=30)
    after = tenant.admin.realm(tenant.realm)
    assert (after.get("smtpServer") or {}) == {}
    assert realm_changes(before, after) == []
    assert any(e["reason"] == "SettingsCleared" for e in tenant.events())


def _blocked_deletion(tenant, closed: str) -> dict[str, Any]:
    _delete(tenant)
    blocked = tenant.wait_condition("False", "DeletionBlocked", timeout=30)
    meta = blocked["metadata"]
    assert meta.get("deletionTimestamp")
    assert FINALIZER in meta.get("finalizers", [])
    message = _conditions(blocked)["Ready"]["message"]
    assert message.startswith("deletionPolicy Clear is waiting: cannot read realm")
    assert closed in message
    assert "set spec.deletionPolicy to Retain" in message
    assert any(e["reason"] == "DeletionBlocked" and e["type"] == "Warning" for e in tenant.events())
    return blocked


def test_clear_waits_for_unreachable_keycloak_and_completes_when_it_returns(operator, tenant):
    settings = _ready_behind_own_connection(tenant, deletionPolicy="Clear")
    closed = _make_keycloak_unreachable(tenant)
    _blocked_deletion(tenant, closed)
    # Still waiting a while later: the deletion does not give up and does not skip the clearing.
    time.sleep(5)
    still = tenant.get("mailconfig", "mail")
    assert _conditions(still)["Ready"]["reason"] == "DeletionBlocked"
    assert tenant.smtp_server() == settings

    _patch(tenant, "keycloakconnection", "kc", {"spec": {"url": tenant.env.keycloak_url}})
    _wait_gone(tenant, timeout=40)
    assert tenant.smtp_server() == {}


def test_clear_blocked_deletion_completes_once_switched_to_retain(operator, tenant):
    settings = _ready_behind_own_connection(tenant, deletionPolicy="Clear")
    closed = _make_keycloak_unreachable(tenant)
    _blocked_deletion(tenant, closed)

    _patch(tenant, "mailconfig", "mail", {"spec": {"deletionPolicy": "Retain"}})
    _wait_gone(tenant, timeout=40)
    assert tenant.smtp_server() == settings


def test_suspend_stops_writes_and_resuming_restores_the_settings(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig())
    tenant.wait_condition("True")
    desired = tenant.smtp_server()

    _patch(tenant, "mailconfig", "mail", {"spec": {"suspend": True}})
    suspended = tenant.wait_condition("False", "Suspended")
    assert "Stalled" not in _conditions(suspended)

    # Drift made by hand while suspended stays, even through a pass asked for explicitly.
    realm = tenant.admin.realm(tenant.realm)
    realm["smtpServer"]["fromDisplayName"] = "Changed by hand"
    assert tenant.admin.put_realm(tenant.realm, realm).status_code == 204
    requested = str(time.time())
    tenant.kubectl("annotate", "mailconfig", "mail", "--overwrite", f"kcmail.io/requested-at={requested}")
    handled = tenant.wait_for(lambda o: (o.get("status") or {}).get("lastHandledRequestedAt") == requested,
                              what="the requested pass")
    assert _conditions(handled)["Ready"]["reason"] == "Suspended"
    assert tenant.smtp_server()["fromDisplayName"] == "Changed by hand"

    _patch(tenant, "mailconfig", "mail", {"spec": {"suspend": False}})
    tenant.wait_condition("True")
    restored = tenant.smtp_server()
    assert restored["fromDisplayName"] == desired["fromDisplayName"]
    assert restored == desired
