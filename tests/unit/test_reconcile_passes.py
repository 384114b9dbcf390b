"""Whole passes, one after another: what a write is called, and when a failed probe is tried again.

Against the small fakes of reconcile_fakes.py and a prober that returns what each test says.
"""

from __future__ import annotations

from typing import Any

import pytest
from reconcile_fakes import NOW, FakeClients, FakeKeycloak, FakeKube, mailconfig, reconciler_for

from kcmail.conditions import Failure, Reason
from kcmail.controller import Reconciler
from kcmail.probes import ProbeOutcome
from kcmail.store import MailConfigObject

pytestmark = pytest.mark.unit


def _next(obj: MailConfigObject, status: dict[str, Any], generation: int | None = None,
          **spec: Any) -> MailConfigObject:
    """The object as the next pass sees it: the last pass's status merged in (the status is patched), and
    perhaps an edited spec."""
    return MailConfigObject(**{**obj.__dict__, "status": {**obj.status, **status},
                               "generation": generation or obj.generation, "spec": {**obj.spec, **spec}})


def _events(result: Any) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in result.events]


async def test_a_spec_edit_is_settings_applied_and_only_a_change_behind_kcmails_back_is_drift():
    keycloak = FakeKeycloak()
    reconciler = reconciler_for(keycloak)
    first = await reconciler.reconcile(mailconfig())
    assert ("Normal", "SettingsApplied") in _events(first)

    at_two = _next(mailconfig(), first.status, generation=2, smtp={"host": "smtp2.example"})
    edited = await reconciler.reconcile(at_two)
    assert ("Normal", "SettingsApplied") in _events(edited)
    assert ("Warning", "DriftCorrected") not in _events(edited)

    keycloak.realm["smtpServer"] = {**keycloak.realm["smtpServer"], "host": "changed-by-hand.example"}
    drifted = await reconciler.reconcile(_next(at_two, edited.status))
    assert ("Warning", "DriftCorrected") in _events(drifted)
    assert keycloak.realm["smtpServer"]["host"] == "smtp2.example"


async def test_an_edit_applied_after_a_failed_pass_is_not_drift_either():
    keycloak = FakeKeycloak()
    reconciler = reconciler_for(keycloak)
    first = await reconciler.reconcile(mailconfig())
    # Generation 2 could not be applied (here: the Connection stopped allowing the realm for a while).
    at_two = _next(mailconfig(), first.status, generation=2, smtp={"host": "smtp2.example"})
    refused = await reconciler_for(keycloak, FakeKube(allowed_realms=["other"])).reconcile(at_two)
    assert ("Warning", "ConnectionNotAllowed") in _events(refused)
    applied = await reconciler.reconcile(_next(at_two, refused.status))
    assert ("Normal", "SettingsApplied") in _events(applied)
    assert ("Warning", "DriftCorrected") not in _events(applied)


class ScriptedProber:
    """Answers each probe with the next outcome it was given, and counts the probes."""

    def __init__(self, *outcomes: ProbeOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def probe(self, spec: Any, credentials: Any, mailconfig: str) -> ProbeOutcome:
        self.calls += 1
        return self.outcomes.pop(0)


@pytest.mark.parametrize(("failure", "again"), [
    (Failure(Reason.AUTHENTICATION_DEFERRED, "454 4.7.0 Temporary authentication failure"), True),
    (Failure(Reason.AUTHENTICATION_REJECTED, "535 5.7.139 SMTP AUTH disabled"), False),
])
async def test_a_probe_that_met_a_provider_down_for_now_is_tried_again_with_backoff(failure, again):
    prober = ScriptedProber(ProbeOutcome(smtp=failure), ProbeOutcome(smtp=True), ProbeOutcome(smtp=True))
    reconciler = Reconciler(FakeKube(), FakeClients(FakeKeycloak()), prober,  # type: ignore[arg-type]
                            now=lambda: NOW)
    # Probed after the write, as the realm's hand-made settings would otherwise hold a failing change.
    written = mailconfig(changePolicy="Immediate")
    first = await reconciler.reconcile(written)
    assert (prober.calls, first.retry) == (1, again)
    # The next pass comes seconds later (the backoff), well inside the interval: it probes only after a
    # transient failure.
    after_first = _next(written, first.status)
    second = await reconciler.reconcile(after_first)
    assert prober.calls == (2 if again else 1)
    assert second.retry is False
    third = await reconciler.reconcile(_next(after_first, second.status))
    assert (prober.calls, third.retry) == (2 if again else 1, False)
