"""The kcmail.io/requested-at annotation asks for a reconcile now, and the status says which request it handled."""

from __future__ import annotations

import datetime
import time

import pytest

pytestmark = pytest.mark.e2e

REQUESTED_AT = "kcmail.io/requested-at"
WITHIN_SECONDS = 10


def _request(tenant) -> str:
    value = datetime.datetime.now(datetime.UTC).isoformat()
    result = tenant.kubectl("annotate", "--overwrite", "mailconfig", "mail", f"{REQUESTED_AT}={value}")
    assert result.returncode == 0, result.stderr
    return value


def test_requested_at_annotation_reconciles_at_once_and_is_echoed_in_status(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig(interval="10m"))
    applied = tenant.wait_condition("True", "Delivering")["status"]
    assert "lastHandledRequestedAt" not in applied
    desired = tenant.smtp_server()

    realm = tenant.admin.realm(tenant.realm)
    realm["smtpServer"] = {**desired, "host": "127.0.0.2"}
    tenant.admin.put_realm(tenant.realm, realm).raise_for_status()
    # Control: with a 10 minute interval nothing but the request puts the drift back soon.
    time.sleep(3)
    stored = tenant.smtp_server()
    assert stored["host"] == "127.0.0.2"

    requested = _request(tenant)
    handled = tenant.wait_for(lambda o: (o.get("status") or {}).get("lastHandledRequestedAt") == requested,
                              timeout=WITHIN_SECONDS, what="the request echoed in status")["status"]
    stored = tenant.smtp_server()
    assert stored == desired
    assert handled["lastAppliedTime"] > applied["lastAppliedTime"]

    # A second request with nothing to fix is handled as well, and writes nothing (a write a second
    # later would move lastAppliedTime, which has one-second resolution).
    time.sleep(1.1)
    again = _request(tenant)
    second = tenant.wait_for(lambda o: (o.get("status") or {}).get("lastHandledRequestedAt") == again,
                             timeout=WITHIN_SECONDS, what="the second request echoed in status")["status"]
    assert second["lastAppliedTime"] == handled["lastAppliedTime"]
    ready = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Delivering")
