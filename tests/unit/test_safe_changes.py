"""Safe changes (changePolicy ProbeFirst): a change is probed before it is written, and held while it fails
and the realm's current settings may still deliver. Pure decisions from plain values, as in test_decide.py;
whole passes through the Reconciler against fakes are at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reconcile_fakes import ME, NOW, FakeClients, FakeKeycloak, FakeKube, mailconfig

from kcmail import decide
from kcmail.act import Done
from kcmail.conditions import Failure, Reason
from kcmail.connections import ConnectionKey, ResolvedConnection
from kcmail.controller import Reconciler
from kcmail.decide import FORCE_APPLY, Verdict
from kcmail.keycloak import AdminCredentials
from kcmail.observe import RealmView
from kcmail.ownership import with_owner
from kcmail.probes import ProbeOutcome
from kcmail.smtp_settings import MASK, SECRET_KEYS, desired_smtp_server, settings_hash, stored_as_spec
from kcmail.spec import ConnectionKind, Credentials, MailConfigSpec
from kcmail.store import MailConfigObject

pytestmark = pytest.mark.unit

VERSION = (26, 7, 3)
OLD = Credentials(secret_version="uid-smtp/1", password="old-password")
NEW = Credentials(secret_version="uid-smtp/2", password="new-password")
CONNECTION = ResolvedConnection(key=ConnectionKey(ConnectionKind.CLUSTER, "main", None),
                                url="https://keycloak.example", admin_realm="master",
                                credentials=AdminCredentials(username="admin", password="pw"))
REJECTED = Failure(Reason.AUTHENTICATION_REJECTED, "the SMTP server refused AUTH PLAIN: 535 5.7.8 bad credentials")
INVALID_CLIENT = Failure(Reason.INVALID_CLIENT, "HTTP 401: unauthorized_client: Invalid client credentials")


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _masked(settings: dict[str, str]) -> dict[str, str]:
    return {key: MASK if key in SECRET_KEYS else value for key, value in settings.items()}


def _settings(spec: dict[str, Any], credentials: Credentials) -> dict[str, str]:
    return desired_smtp_server(MailConfigSpec.parse({**mailconfig().spec, **spec}), credentials, VERSION)


def _probed(obj: MailConfigObject, settings: dict[str, str], credentials: Credentials, *, smtp: str = "True",
            reason: str = "Authenticated", probed: datetime.datetime = NOW, **status: Any) -> MailConfigObject:
    """``obj`` after a pass that wrote ``settings`` and probed them at ``probed``, with this SMTP verdict."""
    conditions = [{"type": kind, "status": state, "reason": why, "message": "the server's words",
                   "observedGeneration": obj.generation, "lastTransitionTime": _stamp(probed)}
                  for kind, state, why in (("Ready", smtp, "Delivering" if smtp == "True" else reason),
                                           ("CredentialsResolved", "True", "Resolved"),
                                           ("Applied", "True", "InSync"), ("SMTPAuthenticated", smtp, reason))]
    return dataclasses.replace(obj, status={
        "observedGeneration": obj.generation, "appliedSecretVersion": credentials.secret_version,
        "lastProbeTime": _stamp(probed), "probedSettingsHash": settings_hash(settings, credentials.secret_version),
        **({"lastSuccessfulProbeTime": _stamp(probed)} if smtp == "True" else {}), "conditions": conditions,
        **status})


def _view(stored: dict[str, str] | None) -> RealmView:
    realm: dict[str, Any] = {"realm": "acme", "attributes": {}}
    if stored is not None:
        realm["smtpServer"] = _masked(stored)
    return RealmView(VERSION, with_owner(realm, _masked(stored) if stored is not None else None, ME))


def _plan(obj: MailConfigObject, stored: dict[str, str] | None, credentials: Credentials = NEW, *,
          tried: Done | None = None, rechecked: Done | None = None, probes: bool = True) -> decide.Plan:
    admitted = decide.Admitted(MailConfigSpec.parse(obj.spec), CONNECTION, credentials)
    return decide.plan(obj, admitted, _view(stored), NOW, probes=probes, tried=tried, rechecked=rechecked)


def _tried(token: Failure | bool | None = None, smtp: Failure | bool | None = True) -> Done:
    return Done(probe=ProbeOutcome(token=token, smtp=smtp), probed_at=NOW)


def _condition(result: decide.Result, kind: str) -> dict[str, Any]:
    return next(c for c in result.status["conditions"] if c["type"] == kind)


def _working_then_rotated() -> tuple[MailConfigObject, dict[str, str]]:
    """A MailConfig whose realm delivered with the old Secret a moment ago; the Secret now has a new version."""
    current = _settings({}, OLD)
    return _probed(mailconfig(), current, OLD), current


# --- probe first, then write ---------------------------------------------------------------------------

def test_a_rotation_of_a_working_realm_is_probed_before_anything_is_written():
    obj, current = _working_then_rotated()
    plan = _plan(obj, current)
    assert plan.write is None
    assert plan.try_first is not None
    assert plan.try_first.credentials == NEW


def test_a_candidate_that_passes_is_written_and_its_probe_is_the_passes_probe():
    obj, current = _working_then_rotated()
    tried = _tried(smtp=True)
    plan = _plan(obj, current, tried=tried)
    assert plan.write is not None
    assert plan.write["smtpServer"]["password"] == "new-password"
    assert (plan.use_tried, plan.probe, plan.try_first) == (True, None, None)
    result = decide.report(obj, plan, dataclasses.replace(tried, wrote=True), NOW)
    assert (_condition(result, "Ready")["reason"], _condition(result, "Applied")["reason"]) == ("Delivering", "InSync")
    assert result.status["appliedSecretVersion"] == NEW.secret_version
    assert result.status["probedSettingsHash"] == settings_hash(_settings({}, NEW), NEW.secret_version)
    assert decide.probe_after(obj, plan, Done(wrote=True)) is None


def test_a_failing_rotation_of_a_working_realm_is_held_and_says_mail_still_flows():
    obj, current = _working_then_rotated()
    plan = _plan(obj, current, tried=_tried(smtp=REJECTED))
    assert (plan.write, plan.probe, plan.try_first) == (None, None, None)
    result = decide.report(obj, plan, Done(), NOW)
    applied, ready = _condition(result, "Applied"), _condition(result, "Ready")
    assert (applied["status"], applied["reason"]) == ("False", "ChangeHeld")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "ChangeHeld", applied["message"])
    assert "AuthenticationRejected: the SMTP server refused AUTH PLAIN: 535 5.7.8 bad credentials" in applied["message"]
    assert "mail still goes out with them" in applied["message"]
    assert f"{FORCE_APPLY}=" in applied["message"]
    # The probe conditions still say how the realm's own settings deliver.
    assert _condition(result, "SMTPAuthenticated")["status"] == "True"
    # Nothing about the realm changed, and a new probe of the candidate comes with backoff.
    assert "appliedSecretVersion" not in result.status
    assert "probedSettingsHash" not in result.status
    assert result.retry is True
    assert result.wrote is False
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "ChangeHeld")]
    assert "Stalled" not in {c["type"] for c in result.status["conditions"]}


def test_a_held_change_is_still_held_on_the_next_pass_and_probed_again():
    obj, current = _working_then_rotated()
    first = decide.report(obj, _plan(obj, current, tried=_tried(smtp=REJECTED)), Done(), NOW)
    held = dataclasses.replace(obj, status={**obj.status, **first.status})
    again = _plan(held, current)
    assert again.try_first is not None
    assert again.write is None
    second = decide.report(held, _plan(held, current, tried=_tried(smtp=REJECTED)), Done(), NOW)
    assert _condition(second, "Applied")["reason"] == "ChangeHeld"
    assert second.events == []  # no news: the same Warning is not posted twice


@pytest.mark.parametrize("typo", [{"smtp": {"host": "smtp.exmaple"}}, {"smtp": {"host": "smtp.example", "port": 2525}}])
def test_a_spec_edit_that_fails_is_held_the_same_way(typo):
    current = _settings({}, OLD)
    obj = dataclasses.replace(_probed(mailconfig(**typo), current, OLD), generation=2)
    plan = _plan(obj, current, OLD)
    assert plan.try_first is not None
    held = _plan(obj, current, OLD, tried=_tried(smtp=Failure(Reason.SMTP_UNREACHABLE, "connection refused")))
    assert held.write is None
    assert held.outcome.applied == Failure(Reason.CHANGE_HELD, held.outcome.applied.message)
    assert "SMTPUnreachable: connection refused" in held.outcome.applied.message


# --- what cannot make mail worse is written at once ----------------------------------------------------

def test_a_realm_without_settings_gets_the_candidate_at_once():
    plan = _plan(mailconfig(), None)
    assert plan.try_first is None
    assert plan.write is not None


def test_a_candidate_that_fails_replaces_settings_that_failed_their_last_probe():
    current = _settings({}, OLD)
    obj = _probed(mailconfig(), current, OLD, smtp="False", reason="AuthenticationRejected")
    assert decide.current_settings(obj, _masked(current), MailConfigSpec.parse(obj.spec), NOW).verdict is Verdict.FAILS
    tried = _tried(smtp=REJECTED)
    plan = _plan(obj, current, tried=tried)
    assert plan.write is not None
    assert plan.use_tried
    result = decide.report(obj, plan, dataclasses.replace(tried, wrote=True), NOW)
    assert _condition(result, "Applied")["reason"] == "InSync"
    assert (_condition(result, "Ready")["reason"], _condition(result, "SMTPAuthenticated")["reason"]) == (
        "AuthenticationRejected", "AuthenticationRejected")


def test_immediate_writes_at_once_and_probes_after():
    obj, current = _working_then_rotated()
    obj = dataclasses.replace(obj, spec={**obj.spec, "changePolicy": "Immediate"})
    plan = _plan(obj, current)
    assert plan.try_first is None
    assert plan.write is not None
    assert plan.probe is not None


@pytest.mark.parametrize("probes", [True, False])
def test_without_probes_a_change_is_written_at_once(probes):
    obj, current = _working_then_rotated()
    if probes:
        obj = dataclasses.replace(obj, spec={**obj.spec, "probe": {"smtp": "Off"}})
    plan = _plan(obj, current, probes=probes)
    assert plan.try_first is None
    assert plan.write is not None


def test_the_force_annotation_writes_one_held_change_and_is_echoed():
    obj, current = _working_then_rotated()
    forced = dataclasses.replace(obj, annotations={FORCE_APPLY: "2026-12-06T10:00"})
    plan = _plan(forced, current)
    assert plan.try_first is None
    assert plan.write is not None
    assert plan.written["lastHandledForceApply"] == "2026-12-06T10:00"
    result = decide.report(forced, plan, Done(wrote=True), NOW)
    assert result.status["lastHandledForceApply"] == "2026-12-06T10:00"
    # Handled once: the same value forces nothing more.
    handled = dataclasses.replace(forced, status={**forced.status, "lastHandledForceApply": "2026-12-06T10:00"})
    assert _plan(handled, current).try_first is not None


def test_a_realm_holding_the_desired_settings_writes_nothing_and_probes_nothing_first():
    current = _settings({}, NEW)
    obj = _probed(mailconfig(), current, NEW)
    plan = _plan(obj, current)
    assert (plan.write, plan.try_first) == (None, None)


def test_a_record_only_write_is_not_a_change_of_settings():
    current = _settings({}, NEW)
    obj = _probed(mailconfig(), current, NEW)
    realm = {"realm": "acme", "attributes": {}, "smtpServer": _masked(current)}  # names no owner
    admitted = decide.Admitted(MailConfigSpec.parse(obj.spec), CONNECTION, NEW)
    plan = decide.plan(obj, admitted, RealmView(VERSION, realm), NOW, probes=True)
    assert plan.try_first is None
    assert plan.write is not None


def test_drift_is_corrected_at_once_when_the_desired_settings_passed_their_last_probe():
    desired = _settings({}, NEW)
    obj = _probed(mailconfig(), desired, NEW)
    drifted = {**desired, "host": "changed-in-the-console.example"}
    plan = _plan(obj, drifted)
    assert plan.try_first is None
    assert plan.write is not None


def test_drift_to_settings_kcmail_never_probed_is_kept_when_the_desired_ones_failed():
    desired = _settings({}, NEW)
    obj = _probed(mailconfig(), desired, NEW, smtp="False", reason="AuthenticationRejected")
    fixed_by_hand = {**desired, "host": "fixed-by-hand.example"}
    plan = _plan(obj, fixed_by_hand)
    assert plan.write is None
    assert plan.try_first is None
    assert "which kcmail has not probed" in plan.outcome.applied.message


# --- what is known of the realm's settings -------------------------------------------------------------

def test_settings_kcmail_did_not_probe_are_unknown_and_keep_a_failing_change_out():
    current = {**_settings({}, OLD), "host": "hand-made.example"}
    obj = _probed(mailconfig(), _settings({}, OLD), OLD)
    evidence = decide.current_settings(obj, _masked(current), MailConfigSpec.parse(obj.spec), NOW)
    assert evidence.verdict is Verdict.UNKNOWN
    assert _plan(obj, current, tried=_tried(smtp=REJECTED)).write is None


def test_settings_that_delivered_long_ago_still_hold_a_failing_change_and_the_message_says_when():
    current = _settings({}, OLD)
    long_ago = NOW - datetime.timedelta(hours=3)
    obj = _probed(mailconfig(), current, OLD, probed=long_ago)
    plan = _plan(obj, current, tried=_tried(token=None, smtp=REJECTED))
    assert plan.write is None
    assert f"delivered when kcmail last probed them ({_stamp(long_ago)})" in plan.outcome.applied.message


def test_the_settings_hash_ignores_masking_and_secret_values_but_not_the_secret_version():
    settings = _settings({}, NEW)
    assert settings_hash(settings, "v1") == settings_hash(_masked(settings), "v1")
    assert settings_hash(settings, "v1") == settings_hash({**settings, "password": "another"}, "v1")
    assert settings_hash(settings, "v1") != settings_hash(settings, "v2")
    assert settings_hash(settings, "v1") != settings_hash({**settings, "host": "other"}, "v1")
    assert "new-password" not in settings_hash(settings, "v1")


# --- properties ----------------------------------------------------------------------------------------

_VERDICTS = st.sampled_from([("True", "Authenticated"), ("False", "AuthenticationRejected"), None])


@given(last=_VERDICTS, age_hours=st.integers(0, 48), realm_has_settings=st.booleans(),
       hand_made=st.booleans(), candidate=st.sampled_from([True, REJECTED, INVALID_CLIENT]),
       forced=st.booleans(), rotated=st.booleans())
def test_probe_first_writes_a_failing_candidate_only_over_settings_known_to_fail(
        last, age_hours, realm_has_settings, hand_made, candidate, forced, rotated):
    current = _settings({}, OLD)
    obj = mailconfig()
    if last is not None:
        obj = _probed(obj, current, OLD, smtp=last[0], reason=last[1],
                      probed=NOW - datetime.timedelta(hours=age_hours))
    if forced:
        obj = dataclasses.replace(obj, annotations={FORCE_APPLY: "now"})
    stored = ({**current, "host": "hand-made.example"} if hand_made else current) if realm_has_settings else None
    token, smtp = (candidate, None) if candidate is INVALID_CLIENT else (None, candidate)
    plan = _plan(obj, stored, NEW if rotated else OLD, tried=_tried(token=token, smtp=smtp))
    if plan.write is None:
        # Held: nothing written, and said so with the catalogue reason, or nothing to write at all.
        assert plan.outcome.applied is True or plan.outcome.applied.reason is Reason.CHANGE_HELD
        return
    spec = MailConfigSpec.parse(obj.spec)
    failed = candidate is not True
    if failed and not forced:
        assert stored is None or decide.current_settings(obj, _masked(stored), spec, NOW).verdict is Verdict.FAILS


# --- whole passes --------------------------------------------------------------------------------------

class ScriptedProber:
    def __init__(self, *outcomes: ProbeOutcome) -> None:
        self.outcomes = list(outcomes)
        self.probed: list[Credentials] = []

    async def probe(self, spec: Any, credentials: Credentials, mailconfig: str) -> ProbeOutcome:
        self.probed.append(credentials)
        return self.outcomes.pop(0)


async def test_a_held_pass_reads_the_realm_twice_probes_once_and_writes_nothing():
    keycloak = FakeKeycloak()
    current = _settings({}, Credentials(secret_version="", password="smtp-password"))
    keycloak.realm["smtpServer"] = _masked(current)
    reads = []
    original = keycloak.read_realm

    async def counted(realm: str) -> dict[str, Any]:
        reads.append(realm)
        return await original(realm)

    keycloak.read_realm = counted  # type: ignore[method-assign]
    prober = ScriptedProber(ProbeOutcome(smtp=REJECTED))
    reconciler = Reconciler(FakeKube(), FakeClients(keycloak), prober, now=lambda: NOW)  # type: ignore[arg-type]
    result = await reconciler.reconcile(mailconfig())
    assert (len(reads), len(prober.probed), keycloak.writes) == (2, 1, [])
    assert _condition(result, "Applied")["reason"] == "ChangeHeld"
    # The realm's hand-made settings were never probed by kcmail: the message says so.
    assert "which kcmail has not probed" in _condition(result, "Applied")["message"]


# --- settings last probed over an interval ago are probed again --------------------------------------------

def _stale_typo() -> tuple[MailConfigObject, dict[str, str]]:
    """A realm that delivered three hours ago with the same Secret; the spec now has a host typo."""
    current = _settings({}, OLD)
    probed = _probed(mailconfig(smtp={"host": "smtp.exmaple"}), current, OLD,
                     probed=NOW - datetime.timedelta(hours=3))
    return dataclasses.replace(probed, generation=2), current


def test_a_failing_change_over_settings_probed_long_ago_probes_those_settings_again_first():
    obj, current = _stale_typo()
    plan = _plan(obj, current, OLD, tried=_tried(smtp=Failure(Reason.SMTP_UNREACHABLE, "no route")))
    assert plan.write is None
    assert plan.recheck is not None
    # The realm's settings, as Keycloak would present them: its host, the Secret's password.
    assert plan.recheck.spec.smtp.host == "smtp.example"
    assert plan.recheck.credentials.password == "old-password"


def test_settings_that_pass_again_keep_the_change_held_and_their_probe_is_reported():
    obj, current = _stale_typo()
    rechecked = _tried(smtp=True)
    plan = _plan(obj, current, OLD, tried=_tried(smtp=Failure(Reason.SMTP_UNREACHABLE, "no route")),
                 rechecked=rechecked)
    assert (plan.write, plan.use_rechecked) == (None, True)
    assert "passed their probe just now" in plan.outcome.applied.message
    result = decide.report(obj, plan, rechecked, NOW)
    assert _condition(result, "Applied")["reason"] == "ChangeHeld"
    assert _condition(result, "SMTPAuthenticated")["status"] == "True"
    assert result.status["lastProbeTime"] == _stamp(NOW)
    assert result.status["probedSettingsHash"] == settings_hash(current, OLD.secret_version)


def test_settings_that_fail_again_give_way_to_the_candidate():
    obj, current = _stale_typo()
    tried = _tried(smtp=Failure(Reason.SMTP_UNREACHABLE, "no route"))
    plan = _plan(obj, current, OLD, tried=tried, rechecked=_tried(smtp=REJECTED))
    assert plan.write is not None
    assert plan.write["smtpServer"]["host"] == "smtp.exmaple"
    assert plan.use_tried


def test_after_a_rotation_the_old_secret_is_unknown_so_nothing_is_probed_again():
    current = _settings({}, OLD)
    obj = _probed(mailconfig(), current, OLD, probed=NOW - datetime.timedelta(hours=3))
    plan = _plan(obj, current, NEW, tried=_tried(token=INVALID_CLIENT, smtp=None))
    assert (plan.write, plan.recheck) == (None, None)
    assert plan.outcome.applied.reason is Reason.CHANGE_HELD


@pytest.mark.parametrize("spec", [
    {},
    {"smtp": {"host": "mx.example", "port": 465, "security": "SSL",
              "timeouts": {"connect": "3s", "read": "4s", "write": "5s"}}},
    {"auth": {"type": "None"}},
    {"auth": {"type": "XOAUTH2", "username": "box@acme.example",
              "xoauth2": {"tokenURL": "https://idp.example/token", "scope": "smtp",
                          "clientSecretRef": {"name": "oauth"}}}},
])
def test_a_realms_settings_read_back_as_a_spec_give_the_same_settings(spec):
    credentials = Credentials(secret_version="v1", client_id="client", client_secret="s3cret", password="pw")
    written = desired_smtp_server(MailConfigSpec.parse({**mailconfig().spec, **spec}), credentials, VERSION)
    other = MailConfigSpec.parse({**mailconfig().spec, "smtp": {"host": "elsewhere.example"}})
    rebuilt = stored_as_spec(other, _masked(written), credentials)
    assert rebuilt is not None
    # Written again from what was read back, the realm would hold exactly the same map.
    assert desired_smtp_server(*rebuilt, VERSION) == written


def test_settings_whose_secret_kcmail_cannot_know_are_not_read_back():
    written = _settings({}, OLD)
    assert stored_as_spec(MailConfigSpec.parse(mailconfig().spec), _masked(written), None) is None
    vault = {**_masked(written), "password": "${vault.smtp}"}
    assert stored_as_spec(MailConfigSpec.parse(mailconfig().spec), vault, OLD) is None


# --- a change the probe would not see --------------------------------------------------------------------

def test_a_change_of_what_the_probe_does_not_exercise_is_written_at_once_and_probed_after():
    current = _settings({}, OLD)
    obj = dataclasses.replace(_probed(mailconfig(sender={"from": "no-reply@acme.example",
                                                         "fromDisplayName": "Acme"}), current, OLD), generation=2)
    plan = _plan(obj, current, OLD)
    assert plan.try_first is None
    assert plan.write is not None
    assert plan.write["smtpServer"]["fromDisplayName"] == "Acme"
    assert plan.probe is not None  # the pass's probe, after the write, as ever


def test_in_send_mode_a_new_sender_is_probed_first():
    current = _settings({"probe": {"smtp": "Send", "recipient": "probe@acme.example"}}, OLD)
    spec = {"probe": {"smtp": "Send", "recipient": "probe@acme.example"}, "sender": {"from": "new@acme.example"}}
    obj = dataclasses.replace(_probed(mailconfig(**spec), current, OLD), generation=2)
    assert _plan(obj, current, OLD).try_first is not None
    authenticate = dataclasses.replace(_probed(mailconfig(sender={"from": "new@acme.example"}), current, OLD),
                                       generation=2)
    assert _plan(authenticate, current, OLD).try_first is None
