"""Conditions from outcomes: Ready summarises, kstatus conditions only while True, stable transition times."""

from __future__ import annotations

import datetime

import pytest

from kcmail.conditions import (
    ConditionType,
    Failure,
    Outcome,
    Reason,
    Status,
    evaluate,
    merge,
    transitions,
)

pytestmark = pytest.mark.unit

T0 = datetime.datetime(2026, 11, 28, 10, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def _by_type(conditions):
    return {c.type: c for c in conditions}


def test_applied_makes_ready_true_without_kstatus_conditions():
    conditions = _by_type(evaluate(Outcome(credentials=True, applied=True)))
    assert conditions[ConditionType.READY].status is Status.TRUE
    assert ConditionType.RECONCILING not in conditions
    assert ConditionType.STALLED not in conditions


def test_a_failure_needing_a_person_stalls_and_names_the_reason_on_ready():
    missing = Failure(Reason.SECRET_NOT_FOUND, 'Secret "x" not found', needs_person=True)
    conditions = _by_type(evaluate(Outcome(credentials=missing)))
    assert conditions[ConditionType.READY].status is Status.FALSE
    assert conditions[ConditionType.READY].reason is Reason.SECRET_NOT_FOUND
    assert conditions[ConditionType.STALLED].status is Status.TRUE
    assert conditions[ConditionType.APPLIED].status is Status.UNKNOWN


def test_a_transient_failure_does_not_stall():
    down = Failure(Reason.KEYCLOAK_UNREACHABLE, "connection refused")
    conditions = _by_type(evaluate(Outcome(credentials=True, applied=down)))
    assert conditions[ConditionType.READY].reason is Reason.KEYCLOAK_UNREACHABLE
    assert ConditionType.STALLED not in conditions


def test_not_reached_yet_is_reconciling():
    conditions = _by_type(evaluate(Outcome()))
    assert conditions[ConditionType.READY].status is Status.UNKNOWN
    assert conditions[ConditionType.RECONCILING].status is Status.TRUE


def test_suspended_reports_suspended_and_never_stalls():
    conditions = _by_type(evaluate(Outcome(suspended=True, credentials=Failure(
        Reason.SECRET_NOT_FOUND, "gone", needs_person=True))))
    assert conditions[ConditionType.READY].reason is Reason.SUSPENDED
    assert ConditionType.STALLED not in conditions


def test_last_transition_time_moves_only_when_status_flips():
    first = merge([], evaluate(Outcome(credentials=True, applied=True)), generation=1, now=T0)
    again = merge(first, evaluate(Outcome(credentials=True, applied=True)), generation=2, now=T1)
    ready = {c["type"]: c for c in again}["Ready"]
    assert ready["lastTransitionTime"] == "2026-11-28T10:00:00Z"
    assert ready["observedGeneration"] == 2

    broken = merge(again, evaluate(Outcome(credentials=True, applied=Failure(Reason.KEYCLOAK_REJECTED, "400"))),
                   generation=2, now=T1)
    ready = {c["type"]: c for c in broken}["Ready"]
    assert ready["lastTransitionTime"] == "2026-11-28T10:05:00Z"


def test_stalled_disappears_once_resolved():
    stalled = merge([], evaluate(Outcome(credentials=Failure(Reason.SECRET_NOT_FOUND, "m", needs_person=True))),
                    generation=1, now=T0)
    assert "Stalled" in {c["type"] for c in stalled}
    healed = merge(stalled, evaluate(Outcome(credentials=True, applied=True)), generation=1, now=T1)
    assert "Stalled" not in {c["type"] for c in healed}


def test_transitions_only_for_changes():
    first = merge([], evaluate(Outcome(credentials=True, applied=True)), generation=1, now=T0)
    assert {t.type for t in transitions([], first)} == {"Ready", "CredentialsResolved", "Applied", "SMTPAuthenticated"}
    same = merge(first, evaluate(Outcome(credentials=True, applied=True)), generation=1, now=T1)
    assert transitions(first, same) == []
    broken = merge(same, evaluate(Outcome(credentials=True, applied=Failure(Reason.REALM_NOT_FOUND, "m", True))),
                   generation=1, now=T1)
    changed = {t.type: t for t in transitions(same, broken)}
    # Stalled mirrors Ready's reason: it gets no Event of its own.
    assert set(changed) == {"Ready", "Applied"}
    assert changed["Ready"].old_status == "True"
    assert changed["Ready"].new_status == "False"


def test_reasons_are_single_camel_case_words():
    import re

    for reason in Reason:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", reason.value), reason


def test_ready_is_delivering_only_when_every_enabled_probe_passed():
    from kcmail.conditions import Probes

    passed = _by_type(evaluate(Outcome(credentials=True, applied=True, probes=Probes.TOKEN_AND_SMTP,
                                       token=True, smtp=True)))
    assert (passed[ConditionType.READY].status, passed[ConditionType.READY].reason) == (Status.TRUE, Reason.DELIVERING)
    assert passed[ConditionType.TOKEN_ACQUIRED].reason is Reason.TOKEN_ISSUED

    no_token = _by_type(evaluate(Outcome(credentials=True, applied=True, probes=Probes.TOKEN_AND_SMTP,
                                         token=Failure(Reason.INVALID_CLIENT, "invalid_client"))))
    assert no_token[ConditionType.READY].reason is Reason.INVALID_CLIENT
    assert no_token[ConditionType.SMTP_AUTHENTICATED].status is Status.UNKNOWN
    # Nothing is pending: the SMTP step was skipped, and the condition says why.
    assert no_token[ConditionType.SMTP_AUTHENTICATED].reason is Reason.SKIPPED
    assert "TokenAcquired: InvalidClient" in no_token[ConditionType.SMTP_AUTHENTICATED].message
    assert ConditionType.RECONCILING not in no_token
    assert ConditionType.STALLED not in no_token  # a provider outage can pass by itself

    basic = _by_type(evaluate(Outcome(credentials=True, applied=True, probes=Probes.SMTP, smtp=True)))
    assert ConditionType.TOKEN_ACQUIRED not in basic
    assert basic[ConditionType.READY].reason is Reason.DELIVERING


def test_probes_off_leave_ready_on_applied():
    conditions = _by_type(evaluate(Outcome(credentials=True, applied=True)))
    assert conditions[ConditionType.READY].reason is Reason.IN_SYNC
    assert conditions[ConditionType.SMTP_AUTHENTICATED].reason is Reason.PROBES_DISABLED


def test_probe_conditions_wait_for_the_settings_to_be_applied():
    from kcmail.conditions import Probes

    conditions = _by_type(evaluate(Outcome(credentials=True, applied=Failure(Reason.REALM_NOT_FOUND, "m", True),
                                           probes=Probes.TOKEN_AND_SMTP)))
    assert ConditionType.TOKEN_ACQUIRED not in conditions
    assert ConditionType.SMTP_AUTHENTICATED not in conditions
