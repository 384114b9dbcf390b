"""Safe changes on the real servers: a change is probed before it reaches Keycloak and held while it would
break working mail (changePolicy ProbeFirst, the default).

Keycloak itself proves what the realm holds: its "Test connection" sends a mail through the XOAUTH2 SMTP
server, which records the client of the token it accepted. Keycloak's admin events count the realm's
writes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kcmail.devenv.processes import free_port

pytestmark = pytest.mark.e2e

WRONG_SECRET = f"wrong-{uuid.uuid4().hex}"
# A held change is written "within seconds" of its fix: the Secret's or the spec's event wakes it.
WITHIN_SECONDS = 15


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _holds(operator) -> float:
    """kcmail_change_holds_total on the operator's /metrics."""
    return sum(s.value for family in text_string_to_metric_families(operator.metrics())
               for s in family.samples if s.name == "kcmail_change_holds_total")


def _held(tenant, *words: str) -> dict[str, Any]:
    """Wait for the held change; check Applied and Ready say so, with ``words``, and that mail still flows."""
    held = tenant.wait_condition("False", "ChangeHeld", timeout=WITHIN_SECONDS)
    conditions = _conditions(held)
    applied = conditions["Applied"]
    assert (applied["status"], applied["reason"]) == ("False", "ChangeHeld")
    assert conditions["Ready"]["message"] == applied["message"]
    for word in (*words, "mail still goes out with them", "kcmail.io/force-apply="):
        assert word in applied["message"]
    # The probe conditions are the realm's own settings', which still deliver.
    assert conditions["SMTPAuthenticated"]["status"] == "True"
    assert "Stalled" not in conditions
    return held


def _no_secret_shown(tenant, operator, *secrets: str) -> None:
    seen = json.dumps(tenant.get("mailconfig", "mail")) + json.dumps(tenant.events()) + operator.log()
    # Indices, not values, in the assertion: a failure must not print the secrets.
    assert [i for i, value in enumerate(secrets) if value in seen] == []


def test_a_rotation_to_a_wrong_secret_is_held_and_keycloak_keeps_sending_until_it_is_fixed(
        operator, tenant, rotation_client):
    issuer = tenant.env.issuer_realm
    old_secret = tenant.admin.regenerate_client_secret(issuer, rotation_client)
    tenant.apply(tenant.secret(**{"client-id": rotation_client, "client-secret": old_secret}), tenant.mailconfig())
    first = tenant.wait_condition("True", "Delivering")["status"]
    tenant.admin.record_admin_events(tenant.realm)
    holds = _holds(operator)

    tenant.apply(tenant.secret(**{"client-id": rotation_client, "client-secret": WRONG_SECRET}))
    held = _held(tenant, "InvalidClient", "Invalid client or Invalid client credentials")["status"]
    assert held["appliedSecretVersion"] == first["appliedSecretVersion"]
    # Keycloak still sends, with a token of the old secret: the wrong one gets none from the issuer.
    before = tenant.send_test_mail(rotation_client)
    assert before.auth is not None
    assert before.auth.token_id

    # Held for a while: the candidate is probed again with backoff, and the realm is never written.
    time.sleep(12)
    assert _holds(operator) - holds >= 2  # the hold, and at least one try since
    assert tenant.realm_writes() == 0
    assert tenant.condition("mail")["reason"] == "ChangeHeld"
    assert [e["type"] for e in tenant.events() if e["reason"] == "ChangeHeld"] == ["Warning"]

    # The fix: a new secret at the issuer (which ends the old one) and in the Secret. Written within seconds.
    new_secret = tenant.admin.regenerate_client_secret(issuer, rotation_client)
    tenant.apply(tenant.secret(**{"client-id": rotation_client, "client-secret": new_secret}))
    ready = tenant.wait_condition("True", "Delivering", timeout=WITHIN_SECONDS)["status"]
    assert ready["appliedSecretVersion"] != first["appliedSecretVersion"]
    assert tenant.realm_writes() == 1
    after = tenant.send_test_mail(rotation_client)
    assert after.auth is not None
    assert after.auth.token_id not in (None, before.auth.token_id)
    _no_secret_shown(tenant, operator, WRONG_SECRET, old_secret, new_secret)


def _typo(tenant, kind: str) -> tuple[dict[str, Any], str, str]:
    """A MailConfig with a typo of ``kind``, the condition reason its probe meets, and the realm key it changes."""
    if kind == "host":
        # 127.0.0.2 is loopback too, and nothing listens on it.
        smtp = {"host": "127.0.0.2", "port": tenant.env.smtp_starttls_port, "security": "StartTLS"}
        return tenant.mailconfig(smtp=smtp), "SMTPUnreachable", "host"
    mailconfig = tenant.mailconfig()
    mailconfig["spec"]["auth"]["xoauth2"]["scope"] = "no.such.scope"
    return mailconfig, "InvalidScope", "authTokenScope"


@pytest.mark.parametrize("kind", ["host", "scope"])
def test_a_typo_is_held_and_the_force_annotation_writes_it_once(operator, tenant, kind):
    tenant.apply(tenant.secret(), tenant.mailconfig())
    tenant.wait_condition("True", "Delivering")
    working = tenant.smtp_server()
    tenant.admin.record_admin_events(tenant.realm)

    typo, reason, key = _typo(tenant, kind)
    tenant.apply(typo)
    _held(tenant, reason)
    assert tenant.smtp_server() == working
    assert tenant.send_test_mail(tenant.env.issuer_client_id).auth is not None
    assert tenant.realm_writes() == 0

    forced = tenant.kubectl("annotate", "mailconfig", "mail", "kcmail.io/force-apply=first")
    assert forced.returncode == 0, forced.stderr
    written = tenant.wait_for(lambda o: (o.get("status") or {}).get("lastHandledForceApply") == "first",
                              timeout=WITHIN_SECONDS, what="the forced write")
    assert tenant.smtp_server()[key] != working[key]
    assert tenant.realm_writes() == 1
    failed = _conditions(tenant.wait_condition("False", reason, timeout=WITHIN_SECONDS))
    assert (failed["Applied"]["status"], failed["Applied"]["reason"]) == ("True", "InSync")
    assert written["metadata"]["generation"] == written["status"]["observedGeneration"]


@pytest.mark.parametrize("kind", ["host", "scope"])
def test_immediate_writes_a_typo_at_once_and_the_realm_breaks(operator, tenant, kind):
    tenant.apply(tenant.secret(), tenant.mailconfig(changePolicy="Immediate"))
    tenant.wait_condition("True", "Delivering")
    typo, reason, key = _typo(tenant, kind)
    typo["spec"]["changePolicy"] = "Immediate"
    tenant.apply(typo)
    conditions = _conditions(tenant.wait_condition("False", reason, timeout=WITHIN_SECONDS))
    assert (conditions["Applied"]["status"], conditions["Applied"]["reason"]) == ("True", "InSync")
    assert tenant.smtp_server()[key] == (typo["spec"]["smtp"]["host"] if kind == "host" else "no.such.scope")
    # As documented: Keycloak's own mail now fails.
    broken = tenant.admin.request("POST", f"/{tenant.realm}/testSMTPConnection", json=tenant.smtp_server())
    assert broken.status_code == 500, broken.text


def test_a_change_over_settings_that_already_fail_is_written_at_once(operator, tenant):
    tenant.apply(tenant.secret(**{"client-id": tenant.env.issuer_client_id, "client-secret": WRONG_SECRET}),
                 tenant.mailconfig())
    tenant.wait_condition("False", "InvalidClient")
    port = free_port()
    tenant.apply(tenant.mailconfig(smtp={"host": "localhost", "port": port, "security": "StartTLS"}))
    # The realm's settings fail already: the new ones, which fail as well, are written without a hold.
    conditions = _conditions(tenant.wait_condition("False", "InvalidClient", timeout=WITHIN_SECONDS))
    assert (conditions["Applied"]["status"], conditions["Applied"]["reason"]) == ("True", "InSync")
    assert tenant.smtp_server()["port"] == str(port)
    assert "ChangeHeld" not in {e["reason"] for e in tenant.events()}
