"""A restarted operator, with nothing changed, writes nothing to Keycloak, and neither does a steady state.

Keycloak's admin events count the writes: every PUT of the realm is an UPDATE event of resource type
REALM, whoever sends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

pytestmark = pytest.mark.e2e

INTERVAL_SECONDS = 30  # the CRD's minimum
# A Ready MailConfig's first pass in a new process waits for its slot, within one interval after kopf's
# start-up; the next pass comes one interval after that.
START_SECONDS = 60
NEXT_PASS_SECONDS = INTERVAL_SECONDS + 10
# Long enough that a MailConfig's slot almost never falls in the seconds a test watches (30 s of 24 h).
LONG_INTERVAL = "24h"
QUIET_SECONDS = 20


def _realm_writes(tenant) -> int:
    return len(tenant.admin.admin_events(tenant.realm, operation="UPDATE", resource_type="REALM"))


def _wait_logged(operator, since: int, done: Callable[[str], bool], what: str, timeout: float) -> str:
    """The operator's log after offset ``since``, once ``done`` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        logged = operator.log()[since:]
        if done(logged):
            return logged
        assert time.monotonic() < deadline, f"{what} not logged within {timeout:.0f} s; last lines: {logged[-2000:]}"
        time.sleep(0.5)


def _wait_for_passes(operator, tenant, *, since: int, count: int, timeout: float) -> list[str]:
    """The operator's "reconciled" log lines for the test's MailConfig written after offset ``since``."""
    marker = f"MailConfig {tenant.namespace}/mail: reconciled: "

    def passes(logged: str) -> list[str]:
        return [line for line in logged.splitlines() if marker in line]

    return passes(_wait_logged(operator, since, lambda logged: len(passes(logged)) >= count,
                               f"{count} reconcile(s)", timeout))


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


def _started(operator, since: int) -> None:
    """Until the new process has started its handlers (kopf logs its start-up activity)."""
    _wait_logged(operator, since, lambda logged: "Activity 'startup' succeeded" in logged,
                 "the restarted operator's start-up", START_SECONDS)


def test_after_a_restart_a_ready_mailconfig_waits_for_its_slot_instead_of_reading_keycloak_at_once(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig(interval=LONG_INTERVAL))
    tenant.wait_condition("True", "Delivering")
    since = len(operator.log())
    operator.restart()
    _started(operator, since)
    time.sleep(QUIET_SECONDS)
    logged = operator.log()
    # Only the new process counts: the old one may log the end of its last pass after the status showed it.
    started = logged.index("Activity 'startup' succeeded", since)
    marker = f"MailConfig {tenant.namespace}/mail: reconciled: "
    assert marker not in logged[started:]


def test_a_secret_rotated_while_the_operator_was_down_is_written_as_soon_as_it_starts(operator, tenant):
    tenant.admin.record_admin_events(tenant.realm)
    tenant.apply(tenant.secret(), tenant.mailconfig(interval=LONG_INTERVAL))
    applied = tenant.wait_condition("True", "Delivering")["status"]["appliedSecretVersion"]
    writes = _realm_writes(tenant)
    since = len(operator.log())
    # The same credentials under a new revision of the Secret: what a rotation looks like to kcmail.
    rotated = tenant.secret()
    rotated["metadata"]["annotations"] = {"rotated-at": str(time.time())}
    operator.restart(while_down=lambda: tenant.apply(rotated))
    passes = _wait_for_passes(operator, tenant, since=since, count=1, timeout=START_SECONDS)
    assert passes[0].endswith("wrote to Keycloak"), passes[0]
    status = tenant.wait_for(lambda o: (o.get("status") or {}).get("appliedSecretVersion") != applied,
                             what="the rotated Secret applied")["status"]
    assert status["appliedSecretVersion"] != applied
    assert _realm_writes(tenant) == writes + 1
