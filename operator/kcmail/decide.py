"""What a pass of the MailConfig reconcile does about what it observed: pure functions, no I/O, no clock.

observe.py reads, this module decides, act.py performs. Every rule of a pass is here, where plain values test
it: whether a Connection may be used, who may write a realm, what the realm should hold, when a write is
drift and when it is kcmail's own news, when to probe, and what each outcome is called. A pass writes to
Keycloak only when the realm differs from the desired settings, the Secret changed since the last write, or
the realm does not yet record this MailConfig as its owner (kcmail.ownership), so a steady state costs one
realm read and nothing else. Every failure ends in a condition with a catalogue reason.

A pass asks :func:`admit` (does it go on to Keycloak?), :func:`plan` (what to write and whether to probe,
in the slot the realm was read in), :func:`probe_after` (does the probe stand once the write is done?) and
:func:`report` (the Result of what the acts did; :func:`reported` after an interim one). A deletion asks
:func:`release`, :func:`release_write` and :func:`released`.

Safe changes (``changePolicy: ProbeFirst``, the default): a change of the settings the realm holds is
probed before it is written. A plan may therefore ask to leave the slot and probe the candidate first
(``Plan.try_first``); the pass then reads the realm again and plans with the probe's outcome (``tried``).
A candidate that fails is held, and the realm keeps its settings, unless those are known to fail
(:func:`current_settings`): a change that cannot make mail worse is applied at once.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kcmail import conditions, ownership
from kcmail.conditions import TRANSIENT_PROBE_REASONS, ConditionType, Failure, Outcome, Probes, Reason
from kcmail.connections import ResolvedConnection, realm_allowed, selector_matches
from kcmail.ownership import ADOPT_ANNOTATION, Owner, recorded_owner, with_owner
from kcmail.probes import parse_time
from kcmail.redact import redact
from kcmail.schedule import phase, probe_due
from kcmail.smtp_settings import (
    PROBED_KEYS,
    SECRET_KEYS,
    SENT_KEYS,
    UnsupportedVersion,
    cleared_smtp_server,
    desired_smtp_server,
    needs_write,
    settings_hash,
    stored_as_spec,
    version_text,
)
from kcmail.spec import (
    AuthType,
    ChangePolicy,
    ConnectionKind,
    Credentials,
    DeletionPolicy,
    MailConfigSpec,
    ProbeMode,
    SpecError,
)

if TYPE_CHECKING:
    from kcmail.act import Done
    from kcmail.observe import Inputs, RealmView
    from kcmail.store import MailConfigObject

REQUESTED_AT = "kcmail.io/requested-at"
# Applies one held change without its probe; the value handled is echoed in status.lastHandledForceApply.
FORCE_APPLY = "kcmail.io/force-apply"


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    # Try again soon, with backoff: the pass met a failure that can pass. False waits for the interval.
    retry: bool = False
    wrote: bool = False

    def summary(self) -> str:
        """One log line's worth: where Ready stands and whether Keycloak was written."""
        ready = next((c for c in self.status.get("conditions", [])
                      if c.get("type") == conditions.ConditionType.READY.value), None)
        state = f"Ready={ready['status']} ({ready['reason']})" if ready else "no Ready condition"
        return f"{state}, {'wrote to Keycloak' if self.wrote else 'no write to Keycloak'}"


@dataclass(frozen=True)
class Admitted:
    """The inputs a pass takes to Keycloak: a spec it may apply, through a Connection it may use."""

    spec: MailConfigSpec
    connection: ResolvedConnection
    credentials: Credentials


@dataclass(frozen=True)
class Probe:
    """The probe a pass runs once its write, if any, has held."""

    spec: MailConfigSpec
    credentials: Credentials
    # The status so far is about the realm as it was: report it before the probe, which may take a while.
    stale: bool


@dataclass(frozen=True)
class Plan:
    """What a pass does, and what it reports if every act succeeds."""

    outcome: Outcome
    # The status fields that hold whatever the acts do.
    status: Mapping[str, Any]
    # The realm representation to PUT (it carries the secrets); None: no write.
    write: Mapping[str, Any] | None = field(default=None, repr=False)
    # The status fields and Events of a write that held.
    written: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[Event] = ()
    probe: Probe | None = None
    # ProbeFirst: probe these candidate settings outside the slot, then plan again with the outcome.
    try_first: Probe | None = None
    # ProbeFirst, a candidate failed: probe the realm's current settings (last probed over an interval ago)
    # outside the slot, then plan again with both outcomes.
    recheck: Probe | None = None
    # The candidate's probe (``tried``) is this pass's probe of the settings it wrote.
    use_tried: bool = False
    # A held change: the current settings' probe (``rechecked``) is this pass's probe, of ``settings``.
    use_rechecked: bool = False
    # Names the desired settings (smtp_settings.settings_hash): a probe of them is recorded under it.
    settings: str = ""


class Verdict(enum.Enum):
    WORKS = "works"
    FAILS = "fails"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Evidence:
    """What is known of a set of settings, and in what words a status message says so."""

    verdict: Verdict
    said: str
    # For failing settings: the step that failed and the server's words.
    failure: Failure | None = None
    # Known from a probe over an interval ago: worth probing again before a failing change is held on it.
    stale: bool = False


def admit(obj: MailConfigObject, seen: Inputs) -> Admitted | Plan:
    """The inputs a pass goes on to Keycloak with, or the Plan of a pass they end (which writes and probes
    nothing): an invalid spec, suspension, a Connection it may not use, credentials it cannot read."""
    spec = seen.spec
    if isinstance(spec, SpecError):
        return _ended(obj, Outcome(credentials=Failure(Reason.INVALID_SPEC, str(spec), needs_person=True)))
    if spec.suspend:
        return _ended(obj, Outcome(suspended=True))
    connection = usable_connection(obj, spec, seen)
    if isinstance(connection, Failure):
        return _ended(obj, Outcome(credentials=connection))
    if not isinstance(seen.credentials, Credentials):
        return _ended(obj, Outcome(credentials=seen.credentials))
    return Admitted(spec, connection, seen.credentials)


def usable_connection(obj: MailConfigObject, spec: MailConfigSpec, seen: Inputs) -> ResolvedConnection | Failure:
    """The Connection the MailConfig refers to, once it is known to be allowed to use it for its realm, or why
    it may not use it."""
    connection = seen.connection
    assert connection is not None, "observe reads the Connection of every MailConfig it does not stop at"
    if isinstance(connection, Failure):
        return connection
    if spec.connection_ref.kind is ConnectionKind.CLUSTER and connection.allowed_namespaces is not None and \
            not selector_matches(connection.allowed_namespaces, seen.namespace_labels or {}):
        return Failure(Reason.CONNECTION_NOT_ALLOWED,
                       f"{connection.key} does not allow namespace {obj.namespace} (spec.allowedNamespaces)",
                       needs_person=True)
    if not realm_allowed(connection.allowed_realms, spec.realm):
        return Failure(Reason.CONNECTION_NOT_ALLOWED,
                       f"{connection.key} does not allow realm {spec.realm!r} (spec.allowedRealms: "
                       f"{', '.join(connection.allowed_realms)})", needs_person=True)
    return connection


def plan(obj: MailConfigObject, admitted: Admitted, seen: RealmView | Failure, now: datetime.datetime, *,
         probes: bool, tried: Done | None = None, rechecked: Done | None = None) -> Plan:
    """What to write to the realm and whether to probe. ``seen``: the realm, or the failure to read Keycloak's
    version; ``probes``: whether this kcmail probes at all; ``tried`` and ``rechecked``: the probes of the
    candidate and of the realm's current settings that earlier plans of this pass asked for
    (``Plan.try_first``, ``Plan.recheck``)."""
    if isinstance(seen, Failure):
        return _ended(obj, Outcome(credentials=True, applied=seen))
    status = {**_status(obj), "keycloakVersion": version_text(seen.version)}
    spec, credentials = admitted.spec, admitted.credentials
    try:
        desired = desired_smtp_server(spec, credentials, seen.version)
    except UnsupportedVersion as error:
        return Plan(Outcome(credentials=True, applied=Failure(
            Reason.UNSUPPORTED_KEYCLOAK_VERSION, str(error), needs_person=True)), status)
    realm = seen.representation
    if isinstance(realm, Failure):
        return Plan(Outcome(credentials=True, applied=realm), status)
    me = _owner(obj)
    recorded = recorded_owner(realm)
    decision = ownership.decide(recorded, me, seen.lookup, obj.annotations.get(ADOPT_ANNOTATION))
    conflict = decision.conflict
    if conflict is None and seen.older_holder is not None:
        # The realm's record decides as soon as that one has written it.
        conflict = Failure(Reason.REALM_CONFLICT, f"MailConfig {seen.older_holder.id} (older) wrote this realm "
                           "before kcmail recorded owners in realms, and has not recorded itself yet; this one "
                           "writes nothing until that one has, or is deleted", needs_person=True)
    if conflict is not None:
        return Plan(Outcome(credentials=True, applied=conflict), status)
    drifted, drift = needs_write(desired, realm.get("smtpServer"), secret_version=credentials.secret_version,
                                 applied_secret_version=obj.status.get("appliedSecretVersion"))
    write = drifted or recorded != me
    named = settings_hash(desired, credentials.secret_version)
    forced = _forced(obj)
    outcome, probe = _probe(obj, admitted, Outcome(credentials=True, applied=True), now, wrote=write, probes=probes)
    if not write:
        return Plan(outcome, {**status, **forced}, probe=probe, settings=named)
    use_tried = False
    probe_first = drifted and _probes_first(spec, probes) and not forced and _probe_sees(
        spec, drift.keys, rotated=_secret_changed(obj, desired, credentials))
    if probe_first:
        waiting = _probe_first(obj, status, admitted, realm.get("smtpServer") or {}, named, now, tried, rechecked)
        if waiting is not None:
            return waiting
        use_tried = tried is not None
        if use_tried:
            outcome, probe = dataclasses.replace(outcome, probes=_probes(spec)), None
    events = [_write_event(obj, drift.keys, rotated=drifted and not drift, owner_only=not drifted)]
    if decision.adopted is not None:
        events.append(Event("Warning", "RealmAdopted",
                            f"took realm {spec.realm!r} over from MailConfig {decision.adopted.mailconfig} "
                            f"(uid {decision.adopted.uid}), which no longer exists in this cluster"))
    return Plan(outcome, status, write=with_owner(realm, desired, me),
                written={"appliedSecretVersion": credentials.secret_version, "lastAppliedTime": _stamp(now),
                         **forced},
                events=events, probe=probe, use_tried=use_tried, settings=named)


def _probe_first(obj: MailConfigObject, status: dict[str, Any], admitted: Admitted, stored: Mapping[str, Any],
                 named: str, now: datetime.datetime, tried: Done | None, rechecked: Done | None) -> Plan | None:
    """ProbeFirst's part of a pass that would write new settings (named ``named``): the Plan that probes the
    candidate or the realm's settings first, or that holds the change; None when the write may go ahead."""
    spec, credentials = admitted.spec, admitted.credentials
    current = current_settings(obj, stored, spec, now)
    if current.verdict is Verdict.FAILS:
        return None  # settings that already fail, or none, give way at once: no candidate makes that worse
    candidate = _tried(tried) if tried is not None else _recorded(obj, named, spec, now)
    if candidate is None:
        return Plan(Outcome(credentials=True), status, try_first=Probe(spec, credentials, stale=True), settings=named)
    if candidate.verdict is Verdict.WORKS:
        return None
    if rechecked is None:
        again = _recheck(obj, spec, stored, credentials, current)
        if again is not None:
            return Plan(Outcome(credentials=True), status, recheck=again, settings=named)
        return _held(obj, status, candidate, current)
    if rechecked.probe is None:
        return _held(obj, status, candidate, current)
    current = _rechecked(_tried(rechecked))
    if current.verdict is Verdict.FAILS:
        return None
    kind = Probes.SMTP if rechecked.probe.token is None else Probes.TOKEN_AND_SMTP
    held = settings_hash(stored, str(obj.status.get("appliedSecretVersion") or ""))
    return dataclasses.replace(_held(obj, status, candidate, current, probed=kind), use_rechecked=True, settings=held)


def _probe_sees(spec: MailConfigSpec, keys: Sequence[str], *, rotated: bool) -> bool:
    """Whether a change of these keys (and of the secrets, ``rotated``) changes what the probe does. One that
    does not (a display name, a reply-to address) is written at once: the realm's settings as they are
    already show what its probe would find."""
    probed = PROBED_KEYS | (SENT_KEYS if spec.probe.smtp is ProbeMode.SEND else frozenset())
    return rotated or any(key in probed for key in keys)


def _secret_changed(obj: MailConfigObject, desired: Mapping[str, str], credentials: Credentials) -> bool:
    """Whether the secrets to write come from another version of the Secret than the realm's."""
    return any(key in desired for key in SECRET_KEYS) and \
        credentials.secret_version != (obj.status.get("appliedSecretVersion") or "")


def _forced(obj: MailConfigObject) -> dict[str, str]:
    """The status echo of a kcmail.io/force-apply value not handled yet; empty when there is none."""
    value = obj.annotations.get(FORCE_APPLY)
    if value is None or value == obj.status.get("lastHandledForceApply"):
        return {}
    return {"lastHandledForceApply": value}


def _probes_first(spec: MailConfigSpec, probes: bool) -> bool:
    """Whether a change is probed before it is written: ProbeFirst, with probes that can run."""
    return spec.change_policy is ChangePolicy.PROBE_FIRST and probes and spec.probe.smtp is not ProbeMode.OFF


def _probes(spec: MailConfigSpec) -> Probes:
    return Probes.TOKEN_AND_SMTP if spec.auth.type is AuthType.XOAUTH2 else Probes.SMTP


def _tried(tried: Done) -> Evidence:
    """What the candidate's probe in this pass found."""
    result = tried.probe
    if result is None:
        return Evidence(Verdict.UNKNOWN, "were not probed")
    failure = next((step for step in (result.token, result.smtp) if isinstance(step, Failure)), None)
    if failure is not None:
        return Evidence(Verdict.FAILS, "failed their probe", failure)
    if result.smtp is True:
        return Evidence(Verdict.WORKS, "passed their probe")
    return Evidence(Verdict.UNKNOWN, "were not probed to the end")


def _recorded(obj: MailConfigObject, named: str, spec: MailConfigSpec, now: datetime.datetime) -> Evidence | None:
    """What this MailConfig's last probe found of the settings ``named``, if it probed exactly those within
    the last interval (a correction of drift: the realm was changed, the desired settings were not); None
    when a probe must tell."""
    if obj.status.get("probedSettingsHash") != named or not _recent(obj.status.get("lastProbeTime"), spec, now):
        return None
    evidence = _last_probe(obj)
    return evidence if evidence.verdict is not Verdict.UNKNOWN else None


def current_settings(obj: MailConfigObject, stored: Mapping[str, Any], spec: MailConfigSpec,
                     now: datetime.datetime) -> Evidence:
    """What is known of the settings the realm holds now (``stored``, its smtpServer map).

    Only kcmail's own probes count, and only of exactly these settings (their hash, with the Secret version
    kcmail last wrote, is the one status records for the last probe). Settings nobody probed, or probed
    long ago, are unknown: a held change keeps them, since they may well deliver; only settings known to
    fail, or no settings at all, give way to a candidate that fails too.
    """
    if not stored.get("host"):
        return Evidence(Verdict.FAILS, "the realm has no SMTP settings")
    held = settings_hash(stored, str(obj.status.get("appliedSecretVersion") or ""))
    if held != obj.status.get("probedSettingsHash"):
        return Evidence(Verdict.UNKNOWN, "the realm's current settings, which kcmail has not probed (they were "
                        "set outside kcmail, or by a kcmail that did not record its probes), stay")
    evidence = _last_probe(obj)
    if evidence.verdict is Verdict.WORKS and not _recent(obj.status.get("lastSuccessfulProbeTime"), spec, now):
        return Evidence(Verdict.UNKNOWN, f"the realm keeps its current settings, which delivered when kcmail "
                        f"last probed them ({obj.status.get('lastSuccessfulProbeTime')})", stale=True)
    return evidence


def _last_probe(obj: MailConfigObject) -> Evidence:
    """The verdict of the probe conditions in status (about the settings status.probedSettingsHash names)."""
    previous = {c.get("type"): c for c in obj.status.get("conditions") or []}
    token = previous.get(ConditionType.TOKEN_ACQUIRED.value) or {}
    smtp = previous.get(ConditionType.SMTP_AUTHENTICATED.value) or {}
    for condition in (token, smtp):
        if condition.get("status") == "False":
            try:
                reason = Reason(condition.get("reason"))
            except ValueError:
                reason = Reason.SMTP_CONVERSATION_FAILED
            failure = Failure(reason, str(condition.get("message", "")))
            return Evidence(Verdict.FAILS, f"they failed their last probe ({reason.value})", failure)
    if smtp.get("status") == "True" and token.get("status") in (None, "True"):
        return Evidence(Verdict.WORKS, f"the realm keeps its current settings, which delivered at their last "
                        f"probe ({obj.status.get('lastSuccessfulProbeTime')}): mail still goes out with them")
    return Evidence(Verdict.UNKNOWN, "the realm's current settings, not yet probed by kcmail, stay")


def _recent(stamp: object, spec: MailConfigSpec, now: datetime.datetime) -> bool:
    """Whether ``stamp`` lies within the last interval (and a minute for the pass's own delay)."""
    moment = parse_time(stamp)
    return moment is not None and now - moment <= spec.interval + datetime.timedelta(minutes=1)


def _recheck(obj: MailConfigObject, spec: MailConfigSpec, stored: Mapping[str, str], credentials: Credentials,
             current: Evidence) -> Probe | None:
    """The probe of the realm's current settings, when what status knows of them is over an interval old and
    kcmail can present what Keycloak would: they are the settings it last probed, and their secret is the
    Secret's value it reads now (a spec edit; after a rotation the old secret is gone)."""
    if not current.stale:
        return None
    applied = str(obj.status.get("appliedSecretVersion") or "")
    known = credentials if credentials.secret_version == applied else None
    rebuilt = stored_as_spec(spec, stored, known)
    return Probe(rebuilt[0], rebuilt[1], stale=False) if rebuilt is not None else None


def _rechecked(found: Evidence) -> Evidence:
    """What the probe of the realm's current settings in this pass found, in a held change's words."""
    if found.verdict is Verdict.WORKS:
        return Evidence(Verdict.WORKS, "the realm keeps its current settings, which passed their probe just now: "
                        "mail still goes out with them")
    if found.verdict is Verdict.FAILS:
        return found
    return Evidence(Verdict.UNKNOWN, "the realm keeps its current settings, whose probe just now ended early")


def _held(obj: MailConfigObject, status: dict[str, Any], candidate: Evidence, current: Evidence, *,
          probed: Probes | None = None) -> Plan:
    """A change that is not written: the candidate failed (or could not be probed), and the realm's settings
    may still deliver. The probe conditions stay those of the realm's settings (``probed``: this pass probed
    them, which probes ran; its probe gives the conditions)."""
    failure = candidate.failure
    step = f"{failure.reason.value}: {failure.message}" if failure is not None else candidate.said
    message = (f"change held: the new settings failed their probe before being written ({step}). Nothing was "
               f"written: {current.said}. kcmail writes the change once its probe passes (it tries again with "
               f"backoff) or its inputs change; annotate {FORCE_APPLY}=<any new value> to write it anyway")
    previous = {c.get("type"): c for c in obj.status.get("conditions") or []}
    held = Failure(Reason.CHANGE_HELD, message)
    if probed is not None:
        return Plan(Outcome(credentials=True, applied=held, probes=probed), status)
    outcome = Outcome(credentials=True, applied=held, probes=_probes_from(previous),
                      token=_carried(previous.get(ConditionType.TOKEN_ACQUIRED.value)),
                      smtp=_carried(previous.get(ConditionType.SMTP_AUTHENTICATED.value)))
    return Plan(outcome, status)


def _probes_from(previous: Mapping[str, Any]) -> Probes:
    """Which probe conditions the status shows, to carry them while a change is held."""
    if ConditionType.TOKEN_ACQUIRED.value in previous:
        return Probes.TOKEN_AND_SMTP
    return Probes.SMTP


def _probe(obj: MailConfigObject, admitted: Admitted, outcome: Outcome, now: datetime.datetime, *, wrote: bool,
           probes: bool) -> tuple[Outcome, Probe | None]:
    """Whether a pass whose settings are applied probes, and its outcome until then: when no probe is due,
    the last probe's results stand."""
    spec = admitted.spec
    if spec.probe.smtp is ProbeMode.OFF or not probes:
        return outcome, None
    outcome = dataclasses.replace(outcome, probes=_probes(spec))
    previous = {c.get("type"): c for c in obj.status.get("conditions") or []}
    last_smtp = previous.get(ConditionType.SMTP_AUTHENTICATED.value) or {}
    stale = wrote or last_smtp.get("observedGeneration") != obj.generation
    requested = obj.annotations.get(REQUESTED_AT)
    asked = requested not in (None, obj.status.get("lastHandledRequestedAt"))
    # A provider that was down or busy at the last probe is asked again on the backoff's retry pass.
    again = any((previous.get(kind.value) or {}).get("reason") in TRANSIENT_PROBE_REASONS
                for kind in (ConditionType.TOKEN_ACQUIRED, ConditionType.SMTP_AUTHENTICATED))
    if probe_due(obj.status.get("lastProbeTime"), spec.interval, phase(obj.uid), now,
                 forced=stale or asked or again):
        return outcome, Probe(spec, admitted.credentials, stale=stale)
    return dataclasses.replace(outcome, token=_carried(previous.get(ConditionType.TOKEN_ACQUIRED.value)),
                               smtp=_carried(last_smtp)), None


def report(obj: MailConfigObject, plan: Plan, done: Done, now: datetime.datetime) -> Result:
    """The Result of a pass: its status patch with the conditions, the Events worth posting, whether to retry
    soon. ``done`` says what the acts did; what they did not get to is reported as not reached."""
    outcome, status, events = plan.outcome, dict(plan.status), []
    failure = done.failure
    if failure is not None:
        outcome = dataclasses.replace(outcome, applied=failure)
    elif done.wrote:
        status.update(plan.written)
        events.extend(plan.events)
    if done.probe is not None and done.probed_at is not None:
        result = done.probe
        outcome = dataclasses.replace(outcome, token=result.token, smtp=result.smtp)
        status["lastProbeTime"] = _stamp(done.probed_at)
        status["probedSettingsHash"] = plan.settings
        if result.token_expires_at is not None:
            status["tokenExpiresAt"] = _stamp(result.token_expires_at)
        if result.smtp is True and result.token in (True, None):
            status["lastSuccessfulProbeTime"] = _stamp(done.probed_at)
    return _result(obj, outcome, status, events, now, wrote=done.wrote)


def probe_after(obj: MailConfigObject, plan: Plan, done: Done) -> Probe | None:
    """The probe to run once the write is done: the plan's, unless the write failed (a candidate probed
    before its write has no probe after it: the plan has none)."""
    return plan.probe if done.failure is None else None


def reported(obj: MailConfigObject, plan: Plan, interim: Result) -> tuple[MailConfigObject, Plan]:
    """What the last report of a pass builds on once ``interim`` is written: its status as the object's (so a
    condition's change is an Event once), its Events as posted."""
    return dataclasses.replace(obj, status={**obj.status, **interim.status}), dataclasses.replace(plan, events=())


def failed(obj: MailConfigObject, error: BaseException, now: datetime.datetime) -> Result:
    """The Result of a pass that raised what no step expected: Ready=False, InternalError, retried."""
    failure = Failure(Reason.INTERNAL_ERROR, f"the pass failed unexpectedly: {type(error).__name__}: "
                      f"{redact(error)}; kcmail retries with backoff, and its log has the details")
    return _result(obj, Outcome(applied=failure), {"observedGeneration": obj.generation}, [], now, wrote=False)


def _result(obj: MailConfigObject, outcome: Outcome, status: dict[str, Any], events: list[Event],
            now: datetime.datetime, *, wrote: bool) -> Result:
    previous = obj.status.get("conditions") or []
    merged = conditions.merge(previous, conditions.evaluate(outcome), generation=obj.generation, now=now)
    status["conditions"] = merged
    for change in conditions.transitions(previous, merged):
        # Progressing is a step not yet run (a probe under way after a write): the outcome is the news.
        if change.type != ConditionType.READY.value or change.reason == Reason.PROGRESSING.value:
            continue
        kind = "Normal" if change.new_status == "True" else "Warning"
        events.append(Event(kind, change.reason, change.message))
    # A failure a person must fix waits for a change; any other, and a provider down for now, is tried again.
    retry = any(isinstance(step, Failure) and not step.needs_person for step in (outcome.credentials, outcome.applied))
    transient = any(isinstance(step, Failure) and step.reason in TRANSIENT_PROBE_REASONS
                    for step in (outcome.token, outcome.smtp))
    return Result(status=status, events=events, retry=retry or transient, wrote=wrote)


def _ended(obj: MailConfigObject, outcome: Outcome) -> Plan:
    return Plan(outcome, _status(obj))


def _status(obj: MailConfigObject) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": obj.generation}
    requested = obj.annotations.get(REQUESTED_AT)
    if requested is not None:
        status["lastHandledRequestedAt"] = requested
    return status


def _owner(obj: MailConfigObject) -> Owner:
    return Owner(uid=obj.uid, mailconfig=obj.id)


def _carried(condition: Mapping[str, Any] | None) -> Failure | bool | None:
    """A previous probe condition, as the outcome that produced it."""
    if not condition or condition.get("status") == "Unknown":
        return None
    if condition.get("status") == "True":
        return True
    try:
        return Failure(Reason(condition.get("reason")), str(condition.get("message", "")))
    except ValueError:
        return None


def _in_sync_at_this_generation(obj: MailConfigObject) -> bool:
    """Whether the last pass found the realm holding this generation's settings: only then does a difference
    now mean someone changed the realm. After a spec edit, or a pass that could not apply, the write is
    kcmail's own news, not drift."""
    applied = next((c for c in obj.status.get("conditions") or [] if c.get("type") == ConditionType.APPLIED.value),
                   {})
    return applied.get("status") == "True" and applied.get("observedGeneration") == obj.generation


def _write_event(obj: MailConfigObject, drift_keys: Sequence[str], *, rotated: bool, owner_only: bool) -> Event:
    if drift_keys and obj.status.get("appliedSecretVersion") is not None and _in_sync_at_this_generation(obj):
        return Event("Warning", "DriftCorrected",
                     f"the realm's smtpServer differed in {', '.join(drift_keys)}; restored the desired settings")
    if drift_keys:
        return Event("Normal", "SettingsApplied", f"wrote smtpServer ({len(drift_keys)} keys differed)")
    if rotated:
        return Event("Normal", "SecretRotated", "wrote the rotated credentials to Keycloak")
    assert owner_only
    return Event("Normal", "OwnerRecorded", "recorded this MailConfig as the owner in the realm's kcmail.io/owner "
                 "attribute; the settings were already the desired ones")


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- deletion ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Release:
    """A deletion that goes on to Keycloak: the realm, the Connection to it, and whether to clear its settings."""

    spec: MailConfigSpec
    connection: ResolvedConnection
    clear: bool


def release(obj: MailConfigObject, seen: Inputs, now: datetime.datetime) -> Release | Result:
    """Whether a deletion goes on to the realm, or its Result when it does not.

    The owner of the realm takes its record away, and with ``deletionPolicy: Clear`` (unless suspended) the
    realm's SMTP settings with it.
    """
    spec = seen.spec
    if isinstance(spec, SpecError):
        return Result(status={})
    clear = spec.deletion_policy is DeletionPolicy.CLEAR and not spec.suspend
    connection = usable_connection(obj, spec, seen)
    if isinstance(connection, Failure):
        return _not_released(obj, spec.realm, clear, connection, now)
    return Release(spec, connection, clear)


def release_write(obj: MailConfigObject, release: Release,
                  realm: Mapping[str, Any] | Failure) -> Mapping[str, Any] | None:
    """The representation that takes this MailConfig's record, and with Clear the settings, off the realm; None
    when the realm could not be read or does not name this MailConfig (it is someone else's, or no one's)."""
    if isinstance(realm, Failure) or recorded_owner(realm) != _owner(obj):
        return None
    return with_owner(realm, cleared_smtp_server() if release.clear else None, None)


def released(obj: MailConfigObject, release: Release, realm: Mapping[str, Any] | Failure, done: Done,
             now: datetime.datetime) -> Result:
    """The Result of a deletion that went on to the realm."""
    failure = realm if isinstance(realm, Failure) else done.failure
    name = release.spec.realm
    if failure is not None:
        return _not_released(obj, name, release.clear, failure, now)
    if not done.wrote:
        return Result(status={})
    if release.clear:
        return Result(status={}, wrote=True, events=[Event(
            "Normal", "SettingsCleared", f"removed the SMTP settings of realm {name!r}")])
    return Result(status={}, wrote=True, events=[Event(
        "Normal", "OwnershipReleased", f"realm {name!r} keeps its SMTP settings and records no owner now")])


def _not_released(obj: MailConfigObject, realm: str, clear: bool, failure: Failure, now: datetime.datetime) -> Result:
    if failure.reason in (Reason.CONNECTION_NOT_ALLOWED, Reason.REALM_NOT_FOUND, Reason.REALM_MISMATCH):
        return Result(status={})  # it never could write the realm, or there is none left
    if "lastAppliedTime" not in obj.status:
        # It never wrote the realm (a look-alike Connection, credentials Keycloak refused): whatever the
        # realm holds is not its own to clear, and its deletion waits for no Keycloak.
        return Result(status={})
    if clear:
        blocked = Failure(Reason.DELETION_BLOCKED, f"deletionPolicy Clear is waiting: {failure.message}. To delete "
                          "without clearing, set spec.deletionPolicy to Retain")
        # Not a person's to fix: retried until Keycloak answers, or the policy changes.
        return _result(obj, Outcome(credentials=True, applied=blocked), {"observedGeneration": obj.generation}, [],
                       now, wrote=False)
    # Retain: deletion never waits for Keycloak. The record stays; adopting the realm takes the annotation.
    return Result(status={}, events=[Event(
        "Warning", "OwnershipNotReleased",
        f"could not take this MailConfig's record off realm {realm!r} ({failure.message}); another "
        f"MailConfig can take the realm over with the {ADOPT_ANNOTATION}={obj.uid} annotation")])
