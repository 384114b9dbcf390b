"""The decisions of a pass, from plain values: who may write a realm, what a write is called, when to probe, what a
deletion does, and properties that hold for every input (hypothesis).

No reads and no fakes of servers: what observe.py would have found is written out here, and act.py's part is a
Done. Whole passes against fakes are in test_reconcile_passes.py and test_ownership.py.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reconcile_fakes import ME, NOW, mailconfig

from kcmail import decide
from kcmail.act import Done
from kcmail.conditions import TRANSIENT_PROBE_REASONS, Failure, Probes, Reason
from kcmail.connections import ConnectionKey, ResolvedConnection
from kcmail.keycloak import AdminCredentials
from kcmail.observe import Inputs, RealmView
from kcmail.ownership import ADOPT_ANNOTATION, Lookup, Owner, recorded_owner, with_owner
from kcmail.probes import ProbeOutcome
from kcmail.smtp_settings import MASK, SECRET_KEYS, desired_smtp_server, diff
from kcmail.spec import ConnectionKind, Credentials, MailConfigSpec, SpecError
from kcmail.store import Holder, MailConfigObject

pytestmark = pytest.mark.unit

OTHER = Owner(uid="uid-other", mailconfig="tenant-b/mail")
VERSION = (26, 7, 3)
CREDENTIALS = Credentials(secret_version="uid-smtp/1", password="smtp-password")
CONNECTION = ResolvedConnection(key=ConnectionKey(ConnectionKind.CLUSTER, "main", None),
                                url="https://keycloak.example", admin_realm="master",
                                credentials=AdminCredentials(username="admin", password="pw"))
OLDER = Holder(namespace="tenant-b", name="mail", uid="uid-other", created="2026-12-06T08:00:00Z",
               connection_kind=ConnectionKind.NAMESPACED, connection_name="kc", applied=True)
PROBE_OFF = {"probe": {"smtp": "Off"}}
CLUSTER_REF = {"kind": "ClusterKeycloakConnection", "name": "main"}


def _obj(*, status: dict[str, Any] | None = None, generation: int = 1, annotations: dict[str, str] | None = None,
         **spec: Any) -> MailConfigObject:
    """A MailConfig whose changes are written at once (``changePolicy: Immediate``) unless ``spec`` says
    otherwise: the rules of a write itself. ProbeFirst's own rules have their section below."""
    spec = {"changePolicy": "Immediate", **spec}
    return dataclasses.replace(mailconfig(annotations, **spec), status=status or {}, generation=generation)


def _admitted(obj: MailConfigObject, credentials: Credentials = CREDENTIALS) -> decide.Admitted:
    return decide.Admitted(MailConfigSpec.parse(obj.spec), CONNECTION, credentials)


def _desired(obj: MailConfigObject) -> dict[str, str]:
    return desired_smtp_server(MailConfigSpec.parse(obj.spec), CREDENTIALS, VERSION)


def _stored(settings: dict[str, str]) -> dict[str, str]:
    """A smtpServer map as a realm GET shows it: secrets masked."""
    return {key: MASK if key in SECRET_KEYS else value for key, value in settings.items()}


def _realm(smtp_server: dict[str, str] | None = None, owner: Owner | None = None) -> dict[str, Any]:
    realm: dict[str, Any] = {"realm": "acme", "attributes": {"frontendUrl": "https://sso"}}
    if smtp_server is not None:
        realm["smtpServer"] = smtp_server
    return with_owner(realm, smtp_server, owner) if owner is not None else realm


def _in_sync(obj: MailConfigObject, **status: Any) -> MailConfigObject:
    """``obj`` as a pass that applied its settings at this generation left it, probes included."""
    conditions = [{"type": kind, "status": "True", "reason": reason, "message": "", "observedGeneration":
                   obj.generation, "lastTransitionTime": "2026-12-06T09:00:00Z"}
                  for kind, reason in (("Ready", "Delivering"), ("CredentialsResolved", "Resolved"),
                                       ("Applied", "InSync"), ("SMTPAuthenticated", "Authenticated"))]
    return dataclasses.replace(obj, status={"appliedSecretVersion": CREDENTIALS.secret_version,
                                            "lastProbeTime": _stamp(NOW), "conditions": conditions, **status})


def _plan(obj: MailConfigObject, seen: RealmView | Failure, *, probes: bool = True,
          credentials: Credentials = CREDENTIALS) -> decide.Plan:
    return decide.plan(obj, _admitted(obj, credentials), seen, NOW, probes=probes)


def _steady(obj: MailConfigObject) -> RealmView:
    return RealmView(VERSION, _realm(_stored(_desired(obj)), ME))


def _ready(result: decide.Result) -> tuple[str, str]:
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
    return ready["status"], ready["reason"]


def _events(result: decide.Result) -> list[str]:
    return [event.reason for event in result.events]


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- admission: does a pass go on to Keycloak? ------------------------------------------------------------

def test_an_invalid_spec_stalls_as_invalid_spec():
    obj = _obj()
    admitted = decide.admit(obj, Inputs(spec=SpecError("spec.smtp.port: not a port")))
    assert isinstance(admitted, decide.Plan)
    result = decide.report(obj, admitted, Done(), NOW)
    assert _ready(result) == ("False", "InvalidSpec")
    assert result.retry is False


def test_a_suspended_mailconfig_goes_nowhere_and_says_so():
    obj = _obj(suspend=True)
    admitted = decide.admit(obj, Inputs(spec=MailConfigSpec.parse(obj.spec)))
    assert isinstance(admitted, decide.Plan)
    assert _ready(decide.report(obj, admitted, Done(), NOW)) == ("False", "Suspended")


@pytest.mark.parametrize(("connection", "labels", "message"), [
    (dataclasses.replace(CONNECTION, allowed_namespaces={"matchLabels": {"team": "mail"}}), {"team": "web"},
     "ClusterKeycloakConnection main does not allow namespace tenant-a (spec.allowedNamespaces)"),
    (dataclasses.replace(CONNECTION, allowed_realms=("tenant-*",)), None,
     "ClusterKeycloakConnection main does not allow realm 'acme' (spec.allowedRealms: tenant-*)"),
])
def test_a_connection_that_does_not_allow_the_namespace_or_realm_ends_the_pass(connection, labels, message):
    obj = _obj(connectionRef=CLUSTER_REF)
    seen = Inputs(spec=MailConfigSpec.parse(obj.spec), connection=connection, namespace_labels=labels,
                  credentials=CREDENTIALS)
    admitted = decide.admit(obj, seen)
    assert isinstance(admitted, decide.Plan)
    failure = admitted.outcome.credentials
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.message, failure.needs_person) == (Reason.CONNECTION_NOT_ALLOWED, message, True)


def test_a_connection_that_allows_the_namespace_by_its_labels_admits_the_pass():
    obj = _obj(connectionRef=CLUSTER_REF)
    allowing = dataclasses.replace(CONNECTION, allowed_namespaces={"matchLabels": {"team": "mail"}})
    seen = Inputs(spec=MailConfigSpec.parse(obj.spec), connection=allowing, namespace_labels={"team": "mail"},
                  credentials=CREDENTIALS)
    assert decide.admit(obj, seen) == decide.Admitted(MailConfigSpec.parse(obj.spec), allowing, CREDENTIALS)


@pytest.mark.parametrize("failure", [
    Failure(Reason.SECRET_NOT_FOUND, "Secret tenant-a/smtp does not exist", needs_person=True),
    Failure(Reason.KUBERNETES_API_ERROR, "cannot read Secret tenant-a/smtp: 503"),
])
def test_credentials_that_cannot_be_read_end_the_pass_and_only_a_passing_failure_is_retried(failure):
    obj = _obj()
    seen = Inputs(spec=MailConfigSpec.parse(obj.spec), connection=CONNECTION, credentials=failure)
    admitted = decide.admit(obj, seen)
    assert isinstance(admitted, decide.Plan)
    result = decide.report(obj, admitted, Done(), NOW)
    assert _ready(result) == ("False", failure.reason.value)
    assert result.retry is not failure.needs_person


# --- ownership and conflicts ------------------------------------------------------------------------------

@pytest.mark.parametrize(("lookup", "adopt"), [
    (Lookup.EXISTS, None), (Lookup.EXISTS, OTHER.uid), (Lookup.ABSENT, None), (Lookup.UNKNOWN, OTHER.uid),
])
def test_a_realm_another_mailconfig_owns_is_not_written(lookup, adopt):
    obj = _obj(annotations={ADOPT_ANNOTATION: adopt} if adopt else None)
    plan = _plan(obj, RealmView(VERSION, _realm({"host": "theirs"}, OTHER), lookup=lookup))
    assert (plan.write, plan.probe, plan.events) == (None, None, ())
    assert isinstance(plan.outcome.applied, Failure)
    assert plan.outcome.applied.reason is Reason.REALM_CONFLICT


def test_an_unrecorded_realm_an_older_mailconfig_wrote_waits_for_it():
    plan = _plan(_obj(), RealmView(VERSION, _realm({"host": "theirs"}), older_holder=OLDER))
    assert plan.write is None
    assert isinstance(plan.outcome.applied, Failure)
    assert "MailConfig tenant-b/mail (older) wrote this realm before kcmail recorded owners" in \
        plan.outcome.applied.message


def test_adopting_a_gone_owners_realm_claims_it_and_says_so():
    obj = _in_sync(_obj(annotations={ADOPT_ANNOTATION: OTHER.uid}))
    plan = _plan(obj, RealmView(VERSION, _realm(_stored(_desired(obj)), OTHER), lookup=Lookup.ABSENT))
    assert plan.write is not None
    assert recorded_owner(plan.write) == ME
    assert [(event.type, event.reason) for event in plan.events] == [("Normal", "OwnerRecorded"),
                                                                     ("Warning", "RealmAdopted")]


# --- what a write is called -------------------------------------------------------------------------------

def test_a_realm_that_holds_the_settings_and_the_record_is_not_written():
    obj = _in_sync(_obj())
    plan = _plan(obj, _steady(obj))
    assert (plan.write, plan.events) == (None, ())
    assert plan.outcome.applied is True


def test_a_first_write_is_settings_applied_and_records_the_write():
    obj = _obj()
    plan = _plan(obj, RealmView(VERSION, _realm({"host": "hand-made"})))
    assert plan.write is not None
    assert plan.write["smtpServer"]["password"] == "smtp-password"
    result = decide.report(obj, plan, Done(wrote=True), NOW)
    assert _events(result)[0] == "SettingsApplied"
    assert result.status["appliedSecretVersion"] == CREDENTIALS.secret_version
    assert result.status["lastAppliedTime"] == _stamp(NOW)
    assert result.status["keycloakVersion"] == "26.7.3"


def test_a_change_behind_kcmails_back_is_drift_and_a_spec_edit_is_not():
    in_sync = _in_sync(_obj())
    changed = RealmView(VERSION, _realm({**_stored(_desired(in_sync)), "host": "changed-by-hand"}, ME))
    drift = _plan(in_sync, changed).events
    assert [(event.type, event.reason) for event in drift] == [("Warning", "DriftCorrected")]
    assert "host" in drift[0].message
    edited = dataclasses.replace(in_sync, generation=2, spec={**in_sync.spec, "smtp": {"host": "smtp2.example"}})
    steady_before_edit = RealmView(VERSION, _realm(_stored(_desired(in_sync)), ME))
    assert [event.reason for event in _plan(edited, steady_before_edit).events] == ["SettingsApplied"]


def test_a_new_secret_version_is_written_as_a_rotation():
    obj = _in_sync(_obj())
    rotated = dataclasses.replace(CREDENTIALS, secret_version="uid-smtp/2", password="new-password")
    plan = _plan(obj, _steady(obj), credentials=rotated)
    assert [event.reason for event in plan.events] == ["SecretRotated"]
    assert plan.write is not None
    assert plan.write["smtpServer"]["password"] == "new-password"
    assert plan.written["appliedSecretVersion"] == "uid-smtp/2"


def test_settings_already_in_place_without_the_record_write_only_the_record():
    obj = _in_sync(_obj())
    plan = _plan(obj, RealmView(VERSION, _realm(_stored(_desired(obj)))))
    assert [event.reason for event in plan.events] == ["OwnerRecorded"]
    assert plan.write is not None
    assert recorded_owner(plan.write) == ME


def test_xoauth2_on_a_keycloak_before_26_2_stalls_unwritten():
    obj = _obj(auth={"type": "XOAUTH2", "username": "u", "xoauth2": {
        "tokenURL": "https://login.example/token", "scope": "smtp.send", "clientSecretRef": {"name": "smtp"}}})
    plan = _plan(obj, RealmView((26, 1, 4), _realm()))
    assert plan.write is None
    result = decide.report(obj, plan, Done(), NOW)
    assert _ready(result) == ("False", "UnsupportedKeycloakVersion")
    assert result.status["keycloakVersion"] == "26.1.4"
    assert result.retry is False


def test_keycloak_unreachable_before_its_version_is_retried_without_a_version():
    obj = _obj()
    plan = _plan(obj, Failure(Reason.KEYCLOAK_UNREACHABLE, "connection refused"))
    result = decide.report(obj, plan, Done(), NOW)
    assert _ready(result) == ("False", "KeycloakUnreachable")
    assert "keycloakVersion" not in result.status
    assert result.retry is True


def test_a_write_keycloak_refuses_is_reported_and_retried():
    obj = _obj()
    plan = _plan(obj, RealmView(VERSION, _realm({"host": "hand-made"})))
    refused = Done(failure=Failure(Reason.KEYCLOAK_REJECTED, "409: Realm with same name exists"))
    assert decide.probe_after(obj, plan, refused) is None
    result = decide.report(obj, plan, refused, NOW)
    assert _ready(result) == ("False", "KeycloakRejected")
    assert (result.retry, result.wrote, result.events[0].reason) == (True, False, "KeycloakRejected")


# --- probes -----------------------------------------------------------------------------------------------

def test_a_steady_realm_probed_at_its_last_slot_carries_the_last_results():
    obj = _in_sync(_obj())
    plan = _plan(obj, _steady(obj))
    assert plan.probe is None
    assert (plan.outcome.probes, plan.outcome.smtp) == (Probes.SMTP, True)
    result = decide.report(obj, plan, Done(), NOW)
    assert _ready(result) == ("True", "Delivering")
    assert (result.events, result.retry) == ([], False)


def test_a_never_probed_mailconfig_probes_without_reporting_first():
    obj = _in_sync(_obj())
    obj = dataclasses.replace(obj, status={k: v for k, v in obj.status.items() if k != "lastProbeTime"})
    probe = _plan(obj, _steady(obj)).probe
    assert probe is not None
    assert probe.stale is False


@pytest.mark.parametrize("why", ["write", "generation", "requested", "transient"])
def test_a_probe_is_forced_by_a_write_a_new_generation_a_request_or_a_provider_down_for_now(why):
    obj = _in_sync(_obj())
    seen = _steady(obj)
    if why == "write":
        seen = RealmView(VERSION, _realm({**_stored(_desired(obj)), "host": "changed-by-hand"}, ME))
    elif why == "generation":
        obj = dataclasses.replace(obj, generation=2)
    elif why == "requested":
        obj = dataclasses.replace(obj, annotations={"kcmail.io/requested-at": "2026-12-06T09:59:00Z"})
    else:
        conditions = [{**c, "reason": "AuthenticationDeferred", "status": "False"}
                      if c["type"] == "SMTPAuthenticated" else c for c in obj.status["conditions"]]
        obj = dataclasses.replace(obj, status={**obj.status, "conditions": conditions})
    probe = _plan(obj, seen).probe
    assert probe is not None
    # Only what makes the last results stale reports before the probe.
    assert probe.stale is (why in ("write", "generation"))


def test_no_probe_when_probes_are_off_or_kcmail_has_no_prober():
    off = _obj(**PROBE_OFF)
    assert _plan(off, RealmView(VERSION, _realm({"host": "hand-made"}))).probe is None
    fresh = _obj()
    unprobed = _plan(fresh, RealmView(VERSION, _realm({"host": "hand-made"})), probes=False)
    assert (unprobed.probe, unprobed.outcome.probes) == (None, Probes.OFF)
    result = decide.report(fresh, unprobed, Done(wrote=True), NOW)
    assert _ready(result) == ("True", "InSync")


@pytest.mark.parametrize(("smtp", "retry"), [
    (Failure(Reason.AUTHENTICATION_DEFERRED, "454 4.7.0 Temporary authentication failure"), True),
    (Failure(Reason.AUTHENTICATION_REJECTED, "535 5.7.139 SMTP AUTH disabled"), False),
])
def test_only_a_probe_that_met_a_provider_down_for_now_is_retried_soon(smtp, retry):
    obj = _obj()
    plan = _plan(obj, RealmView(VERSION, _realm({"host": "hand-made"})))
    done = Done(wrote=True, probe=ProbeOutcome(smtp=smtp), probed_at=NOW)
    result = decide.report(obj, plan, done, NOW)
    assert _ready(result) == ("False", smtp.reason.value)
    assert result.retry is retry
    assert result.status["lastProbeTime"] == _stamp(NOW)
    assert "lastSuccessfulProbeTime" not in result.status


def test_a_successful_probe_stamps_its_time_and_the_tokens_expiry():
    obj = _obj()
    plan = _plan(obj, RealmView(VERSION, _realm({"host": "hand-made"})))
    expires = NOW + datetime.timedelta(hours=1)
    done = Done(wrote=True, probe=ProbeOutcome(smtp=True, token_expires_at=expires),
                probed_at=NOW)
    result = decide.report(obj, plan, done, NOW)
    assert _ready(result) == ("True", "Delivering")
    assert (result.status["lastSuccessfulProbeTime"], result.status["tokenExpiresAt"]) == (_stamp(NOW),
                                                                                           _stamp(expires))


def test_after_an_interim_report_the_last_one_posts_no_event_twice():
    obj = _obj()
    plan = _plan(obj, RealmView(VERSION, _realm({"host": "hand-made"})))
    assert plan.probe is not None
    assert plan.probe.stale
    written = Done(wrote=True)
    interim = decide.report(obj, plan, written, NOW)
    assert _ready(interim) == ("Unknown", "Progressing")
    assert _events(interim) == ["SettingsApplied"]
    obj, plan = decide.reported(obj, plan, interim)
    final = decide.report(obj, plan, dataclasses.replace(written, probe=ProbeOutcome(smtp=True), probed_at=NOW), NOW)
    assert _events(final) == ["Delivering"]
    assert final.status["appliedSecretVersion"] == CREDENTIALS.secret_version


def test_an_unforeseen_error_is_internal_error_and_retried():
    result = decide.failed(_obj(), KeyError("smtpServer"), NOW)
    assert _ready(result) == ("False", "InternalError")
    assert result.retry is True


# --- deletion ---------------------------------------------------------------------------------------------

def _release(policy: str = "Clear", *, status: dict[str, Any] | None = None,
             connection: ResolvedConnection | Failure = CONNECTION,
             ) -> tuple[MailConfigObject, decide.Release | decide.Result]:
    obj = _obj(status=status, deletionPolicy=policy)
    return obj, decide.release(obj, Inputs(spec=MailConfigSpec.parse(obj.spec), connection=connection), NOW)


@pytest.mark.parametrize(("policy", "event"), [("Clear", "SettingsCleared"), ("Retain", "OwnershipReleased")])
def test_the_owner_takes_its_record_off_the_realm_and_clear_its_settings_too(policy, event):
    obj, release = _release(policy)
    assert isinstance(release, decide.Release)
    written = decide.release_write(obj, release, _realm({"host": "mine"}, ME))
    assert written is not None
    assert recorded_owner(written) is None
    assert written.get("smtpServer") == ({} if policy == "Clear" else None)
    result = decide.released(obj, release, _realm({"host": "mine"}, ME), Done(wrote=True), NOW)
    assert (_events(result), result.wrote, result.status) == ([event], True, {})


def test_a_suspended_mailconfig_releases_its_realm_but_leaves_the_settings():
    obj = _obj(suspend=True, deletionPolicy="Clear")
    release = decide.release(obj, Inputs(spec=MailConfigSpec.parse(obj.spec), connection=CONNECTION), NOW)
    assert isinstance(release, decide.Release)
    assert release.clear is False


@pytest.mark.parametrize("owner", [OTHER, None])
def test_a_realm_that_does_not_name_the_mailconfig_is_left_alone_on_deletion(owner):
    obj, release = _release()
    assert isinstance(release, decide.Release)
    realm = _realm({"host": "theirs"}, owner)
    assert decide.release_write(obj, release, realm) is None
    assert decide.released(obj, release, realm, Done(), NOW) == decide.Result(status={})


@pytest.mark.parametrize("failure", [
    Failure(Reason.CONNECTION_NOT_ALLOWED, "does not allow realm", needs_person=True),
    Failure(Reason.REALM_NOT_FOUND, "no realm acme", needs_person=True),
])
def test_a_deletion_that_never_could_write_the_realm_touches_nothing(failure):
    _, release = _release(status={"lastAppliedTime": "2026-12-06T09:00:00Z"}, connection=failure)
    assert release == decide.Result(status={})


def test_clear_waits_for_keycloak_and_retain_goes_with_a_warning_for_an_owner_that_wrote():
    unreachable = Failure(Reason.KEYCLOAK_UNREACHABLE, "connection refused")
    wrote = {"lastAppliedTime": "2026-12-06T09:00:00Z"}
    obj, release = _release("Clear", status=wrote)
    assert isinstance(release, decide.Release)
    blocked = decide.released(obj, release, unreachable, Done(), NOW)
    assert _ready(blocked) == ("False", "DeletionBlocked")
    assert blocked.retry is True
    obj, release = _release("Retain", status=wrote)
    assert isinstance(release, decide.Release)
    retained = decide.released(obj, release, unreachable, Done(), NOW)
    assert (_events(retained), retained.retry) == (["OwnershipNotReleased"], False)
    assert f"{ADOPT_ANNOTATION}=uid-me" in retained.events[0].message


def test_a_mailconfig_that_never_wrote_waits_for_no_keycloak_on_deletion():
    obj, release = _release("Clear")
    assert isinstance(release, decide.Release)
    refused = Failure(Reason.KEYCLOAK_AUTH_FAILED, "refused", needs_person=True)
    assert decide.released(obj, release, refused, Done(), NOW) == decide.Result(status={})


# --- properties -------------------------------------------------------------------------------------------

_OWNERS = st.sampled_from([ME, OTHER, None])
_LOOKUPS = st.sampled_from([Lookup.EXISTS, Lookup.ABSENT, Lookup.UNKNOWN])
_SETTING_CHANGES = st.dictionaries(st.sampled_from(["host", "port", "from", "replyTo", "password", "user"]),
                                   st.sampled_from(["", "other", MASK]), max_size=3)


@given(owner=_OWNERS, lookup=_LOOKUPS, adopt=st.booleans(), changes=_SETTING_CHANGES, rotated=st.booleans(),
       older=st.booleans(), in_sync=st.booleans())
def test_a_pass_writes_only_for_differing_settings_a_new_secret_or_a_record_not_its_own(
        owner, lookup, adopt, changes, rotated, older, in_sync):
    obj = _obj(annotations={ADOPT_ANNOTATION: OTHER.uid} if adopt else None)
    obj = _in_sync(obj) if in_sync else obj
    stored = {key: value for key, value in {**_stored(_desired(obj)), **changes}.items() if value}
    credentials = dataclasses.replace(CREDENTIALS, secret_version="uid-smtp/2") if rotated else CREDENTIALS
    seen = RealmView(VERSION, _realm(stored, owner), lookup=lookup if owner == OTHER else None,
                     older_holder=OLDER if older and owner is None else None)
    plan = _plan(obj, seen, credentials=credentials)
    differs = bool(diff(_desired(obj), stored))
    new_secret = credentials.secret_version != obj.status.get("appliedSecretVersion")
    conflict = (owner == OTHER and not (lookup is Lookup.ABSENT and adopt)) or (owner is None and older)
    assert (plan.write is not None) is (not conflict and (differs or new_secret or owner != ME))
    if plan.write is not None:
        assert recorded_owner(plan.write) == ME
        assert plan.written["appliedSecretVersion"] == credentials.secret_version


@given(lookup=_LOOKUPS, adopt=st.sampled_from([None, OTHER.uid, "uid-someone-else"]), changes=_SETTING_CHANGES)
def test_a_conflict_never_writes_nor_probes(lookup, adopt, changes):
    obj = _obj(annotations={ADOPT_ANNOTATION: adopt} if adopt else None)
    stored = {key: value for key, value in {**_stored(_desired(obj)), **changes}.items() if value}
    plan = _plan(obj, RealmView(VERSION, _realm(stored, OTHER), lookup=lookup))
    conflict = isinstance(plan.outcome.applied, Failure) and plan.outcome.applied.reason is Reason.REALM_CONFLICT
    # The only way into another MailConfig's realm: its owner gone from the cluster, and its uid in the annotation.
    assert conflict is not (lookup is Lookup.ABSENT and adopt == OTHER.uid)
    if conflict:
        assert (plan.write, plan.probe, plan.events, plan.written) == (None, None, (), {})


# Progressing says a step has not run yet; no failure carries it.
_FAILURES = st.builds(Failure, reason=st.sampled_from([r for r in Reason if r is not Reason.PROGRESSING]),
                      message=st.text(max_size=40), needs_person=st.booleans())


@given(failure=_FAILURES, stage=st.sampled_from(["connection", "credentials", "keycloak", "realm", "write"]))
def test_every_failure_ends_in_ready_false_with_its_catalogue_reason_and_a_retry_unless_a_person_must_act(
        failure, stage):
    obj = _obj(**PROBE_OFF)
    spec = MailConfigSpec.parse(obj.spec)
    if stage in ("connection", "credentials"):
        seen = Inputs(spec=spec, connection=failure if stage == "connection" else CONNECTION,
                      credentials=failure if stage == "credentials" else CREDENTIALS)
        plan = decide.admit(obj, seen)
        assert isinstance(plan, decide.Plan)
        done = Done()
    else:
        realm = RealmView(VERSION, failure if stage == "realm" else _realm({"host": "hand-made"}))
        plan = _plan(obj, failure if stage == "keycloak" else realm)
        done = Done(failure=failure) if stage == "write" else Done()
    result = decide.report(obj, plan, done, NOW)
    assert _ready(result) == ("False", failure.reason.value)
    assert Reason(_ready(result)[1]) in Reason
    assert result.retry is not failure.needs_person
    assert ("Stalled" in {c["type"] for c in result.status["conditions"]}) is failure.needs_person
    assert result.events[-1].reason == failure.reason.value


@given(smtp=_FAILURES, token=st.one_of(st.none(), st.just(True), _FAILURES))
def test_a_fresh_probe_failure_is_retried_soon_exactly_when_it_is_transient(smtp, token):
    obj = _obj()
    plan = _plan(obj, _steady(obj))
    done = Done(probe=ProbeOutcome(token=token, smtp=smtp), probed_at=NOW)
    result = decide.report(obj, plan, done, NOW)
    transient = {r.reason for r in (token, smtp) if isinstance(r, Failure)} & TRANSIENT_PROBE_REASONS
    assert result.retry is bool(transient)
    assert _ready(result)[0] == "False"
