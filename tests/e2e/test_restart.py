"""A restarted operator, with nothing changed, writes nothing to Keycloak, and neither does a steady state.

Keycloak's admin events count the writes: every PUT of the realm is an UPDATE event of resource type
REALM, whoever sends it.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e

INTERVAL_SECONDS = 30  # the CRD's minimum
# The first pass of a new process comes after kopf's start-up; the next one an interval (±10 %) later.
START_SECONDS = 60
NEXT_PASS_SECONDS = INTERVAL_SECONDS * 1.1 + 10


def _realm_writes(tenant) -> int:
    return len(tenant.admin.admin_events(tenant.realm, operation="UPDATE", resource_type="REALM"))


def _wait_for_passes(operator, tenant, *, since: int, count: int, timeout: float) -> list[str]:
    """The operator's "reconciled" log lines for the test's MailConfig written after offset ``since``."""
    marker = f"MailConfig {tenant.namespace}/mail: reconciled: "
    deadline = time.monotonic() + timeout
    while True:
        passes = [line for line in operator.log()[since:].splitlines() if marker in line]
        if len(passes) >= count:
            return passes
        assert time.monotonic() < deadline, f"{count} reconcile(s) not logged within {timeout:.0f} s: {passes}"
        time.sleep(0.5)


def test_restart_with_nothing_changed_writes_nothing_to_keycloak(operator, tenant):
    tenant.admin.record_admin_events(tenant.realm)
    before = _realm_writes(tenant)
    tenant.apply(tenant.secret(), tenant.mailconfig(interval=f"{INTERVAL_SECONDS}s"))
    tenant.wait_condition("True", "Delivering")
    # The operator's first write is counted: the count can see a write.
    writes = _realm_writes(tenant)
    assert writes == before + 1
    applied = tenant.get("mailconfig", "mail")["status"]

    operator.restart()
    # The old process is gone and the new one is still importing: later lines are the new one's.
    since = len(operator.log())
    first = _wait_for_passes(operator, tenant, since=since, count=1, timeout=START_SECONDS)[0]
    assert first.endswith("Ready=True (Delivering), no write to Keycloak"), first
    writes = _realm_writes(tenant)
    assert writes == before + 1

    # Steady state: the next interval's pass reads the realm and writes nothing either.
    _wait_for_passes(operator, tenant, since=since, count=2, timeout=NEXT_PASS_SECONDS)
    writes = _realm_writes(tenant)
    assert writes == before + 1
    status = tenant.get("mailconfig", "mail")["status"]
    assert (status["appliedSecretVersion"], status["lastAppliedTime"]) == (
        applied["appliedSecretVersion"], applied["lastAppliedTime"])
