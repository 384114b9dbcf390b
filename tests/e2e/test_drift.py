"""A change made behind kcmail's back in Keycloak is put back within the interval, and said so, by key name only."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.e2e

INTERVAL_SECONDS = 30  # the CRD's minimum
# The next periodic pass comes within one interval; a reconcile and a few polls take a few seconds more.
WITHIN_SECONDS = INTERVAL_SECONDS * 1.1 + 10


def test_drift_in_keycloak_is_put_back_within_the_interval_with_a_warning_naming_only_the_keys(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig(interval=f"{INTERVAL_SECONDS}s"))
    applied = tenant.wait_condition("True", "Delivering")["status"]
    desired = tenant.smtp_server()

    # What a person does in the admin console: the whole map back, masked secret included, two values changed.
    drifted = {"fromDisplayName": f"Drifted {uuid.uuid4().hex[:8]}", "port": "2999"}
    realm = tenant.admin.realm(tenant.realm)
    realm["smtpServer"] = {**desired, **drifted}
    tenant.admin.put_realm(tenant.realm, realm).raise_for_status()
    changed_at = time.monotonic()
    stored = tenant.smtp_server()
    assert {k: stored[k] for k in drifted} == drifted

    deadline = changed_at + WITHIN_SECONDS
    while tenant.smtp_server() != desired:
        assert time.monotonic() < deadline, f"the drift was not put back within {WITHIN_SECONDS:.0f} s"
        time.sleep(1)

    corrected = tenant.wait_for(lambda o: any(e["reason"] == "DriftCorrected" for e in tenant.events()),
                                timeout=15, what="a DriftCorrected event")
    (event,) = [e for e in tenant.events() if e["reason"] == "DriftCorrected"]
    assert event["type"] == "Warning"
    message = event["message"]
    assert "fromDisplayName" in message, message
    assert "port" in message, message
    for value in (*drifted.values(), desired["fromDisplayName"], desired["port"]):
        assert value not in message, f"the event shows a value: {message}"

    status = corrected["status"]
    assert status["appliedSecretVersion"] == applied["appliedSecretVersion"]
    assert status["lastAppliedTime"] > applied["lastAppliedTime"]
    # The Event is posted with the status the write makes (Ready Unknown while the probe runs); the probe follows.
    probed = tenant.wait_condition("True", "Delivering", timeout=30)["status"]
    assert probed["lastAppliedTime"] == status["lastAppliedTime"]


def test_a_spec_edit_is_applied_as_news_not_as_drift(operator, tenant):
    # A GitOps edit is kcmail's own change: a drift alert for it would teach people to ignore drift alerts.
    tenant.apply(tenant.secret(), tenant.mailconfig())
    tenant.wait_condition("True", "Delivering")
    edited = tenant.mailconfig()
    name = edited["spec"]["sender"]["fromDisplayName"] = f"Edited {uuid.uuid4().hex[:8]}"
    tenant.apply(edited)
    tenant.wait_for(lambda o: tenant.smtp_server().get("fromDisplayName") == name, timeout=30,
                    what="the edited display name in the realm")
    tenant.wait_condition("True", "Delivering", timeout=30)
    events = [(e["reason"], e["message"]) for e in tenant.events()]
    assert "DriftCorrected" not in [reason for reason, _ in events], events
    assert ("SettingsApplied", "wrote smtpServer (1 keys differed)") in events, events
