"""A change to a referenced Secret reaches Keycloak within seconds, with no restart, and is what Keycloak uses."""

from __future__ import annotations

import datetime
import json
import time

import pytest

from kcmail.devenv.clients import issuer_token

pytestmark = pytest.mark.e2e

# "Within seconds": the Secret's watch event wakes the MailConfig's loop; the interval (10 m) never does.
WITHIN_SECONDS = 15


def _stamp(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def test_secret_rotation_reaches_keycloak_and_keycloak_sends_with_the_new_secret(operator, tenant, rotation_client):
    issuer = tenant.env.issuer_realm
    old_secret = tenant.admin.regenerate_client_secret(issuer, rotation_client)
    tenant.apply(tenant.secret(**{"client-id": rotation_client, "client-secret": old_secret}), tenant.mailconfig())
    first = tenant.wait_condition("True", "Delivering")["status"]
    before = tenant.send_test_mail(rotation_client)
    assert before.auth is not None
    assert before.auth.token_id
    pid = operator.process.pid

    new_secret = tenant.admin.regenerate_client_secret(issuer, rotation_client)
    refused = issuer_token(tenant.env, client_id=rotation_client, client_secret=old_secret)
    assert refused.status_code == 401, "the issuer still accepts the old secret: the rotation would prove nothing"
    # lastAppliedTime has one-second resolution: make a new write distinguishable from the first one.
    time.sleep(max(0.0, (_stamp(first["lastAppliedTime"]) + datetime.timedelta(seconds=1.1)
                         - datetime.datetime.now(datetime.UTC)).total_seconds()))

    tenant.apply(tenant.secret(**{"client-id": rotation_client, "client-secret": new_secret}))
    rotated = tenant.wait_for(
        lambda o: (o.get("status") or {}).get("appliedSecretVersion") != first["appliedSecretVersion"],
        timeout=WITHIN_SECONDS, what="a new appliedSecretVersion")["status"]
    assert _stamp(rotated["lastAppliedTime"]) > _stamp(first["lastAppliedTime"])
    ready = tenant.wait_condition("True", "Delivering", timeout=WITHIN_SECONDS)["status"]
    assert ready["appliedSecretVersion"] == rotated["appliedSecretVersion"]
    process = operator.process
    assert (process.pid, process.alive()) == (pid, True), "the operator restarted"

    # Keycloak caches its token per realm and per secret: a new token proves a new secret, and the old
    # one no longer gets any, so the new secret is the one Keycloak used.
    after = tenant.send_test_mail(rotation_client)
    assert after.auth is not None
    assert after.auth.token_id not in (None, before.auth.token_id)

    rotated_events = [e for e in tenant.events() if e["reason"] == "SecretRotated"]
    assert [e["type"] for e in rotated_events] == ["Normal"]
    seen = json.dumps(tenant.get("mailconfig", "mail")) + json.dumps(tenant.events())
    # Names, not values, in the assertion: a failure must not print the secrets.
    assert [name for name, value in (("old", old_secret), ("new", new_secret)) if value in seen] == []


def test_secret_created_after_its_mailconfig_clears_secret_not_found(operator, tenant):
    tenant.apply(tenant.mailconfig())
    waiting = tenant.wait_condition("False", "SecretNotFound")["status"]
    stalled = next(c for c in waiting["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "SecretNotFound")
    stored = tenant.smtp_server()
    assert stored == {}

    tenant.apply(tenant.secret())
    ready = tenant.wait_condition("True", "Delivering", timeout=WITHIN_SECONDS)["status"]
    assert "Stalled" not in {c["type"] for c in ready["conditions"]}
    stored, client_id = tenant.smtp_server(), tenant.env.issuer_client_id
    assert stored["authTokenClientId"] == client_id
