"""One reconcile of a MailConfig: resolve inputs → apply → report. No kopf imports.

The result is a status patch and the Events worth posting; the caller writes them. A reconcile writes
to Keycloak only when the realm differs from the desired settings, the Secret changed since the last
write, or the realm does not yet record this MailConfig as its owner (kcmail.ownership), so a steady
state costs one realm read and nothing else. Every failure ends in a condition with a catalogue reason:
the inputs, Kubernetes, Keycloak, or (for what no one foresaw) InternalError.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kcmail import conditions
from kcmail.conditions import TRANSIENT_PROBE_REASONS, ConditionType, Failure, Outcome, Probes, Reason
from kcmail.connections import (
    ConnectionFailure,
    KeycloakClients,
    ResolvedConnection,
    ResolvedConnections,
    normalized_url,
    realm_allowed,
    resolve,
    selector_matches,
)
from kcmail.keycloak import KeycloakClient, KeycloakFailure
from kcmail.kube import Kube, KubeError
from kcmail.ownership import ADOPT_ANNOTATION, Lookup, Owner, decide, recorded_owner, with_owner
from kcmail.probes import Prober
from kcmail.redact import redact
from kcmail.schedule import phase, probe_due
from kcmail.smtp_settings import (
    UnsupportedVersion,
    cleared_smtp_server,
    desired_smtp_server,
    needs_write,
    version_text,
)
from kcmail.spec import (
    AuthType,
    ConnectionKind,
    Credentials,
    DeletionPolicy,
    MailConfigSpec,
    ProbeMode,
    SpecError,
    value_problem,
)

REQUESTED_AT = "kcmail.io/requested-at"
READ_ANNOTATIONS = frozenset({REQUESTED_AT, ADOPT_ANNOTATION})


@dataclass(frozen=True)
class MailConfigObject:
    """The parts of a MailConfig a reconcile reads."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    # What the deletion needs: the finalizers in their order, whether a deletion was asked for, and the
    # version a finalizer patch tests against.
    finalizers: tuple[str, ...] = ()
    deleting: bool = False
    resource_version: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MailConfigObject:
        meta = body.get("metadata", {})
        # Only the annotations kcmail reads: kubectl's last-applied-configuration alone can double the size.
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k in READ_ANNOTATIONS}
        return cls(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
                   generation=int(meta.get("generation", 0)), created=meta.get("creationTimestamp", ""),
                   annotations=annotations, spec=dict(body.get("spec") or {}), status=dict(body.get("status") or {}),
                   finalizers=tuple(meta.get("finalizers") or ()), deleting=bool(meta.get("deletionTimestamp")),
                   resource_version=str(meta.get("resourceVersion", "")))

    def pack(self) -> bytes:
        """These fields as compact JSON: what a loop keeps between passes, far smaller than parsed dicts."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, data: bytes) -> MailConfigObject:
        fields = json.loads(data)
        return cls(**{**fields, "finalizers": tuple(fields.get("finalizers") or ())})

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Holder:
    """Another MailConfig of this cluster that names the same realm, as kcmail's index shows it."""

    namespace: str
    name: str
    uid: str
    created: str
    connection_kind: ConnectionKind
    connection_name: str
    # Its status says Applied=True: it passed its Connection's rules and Keycloak took its write.
    applied: bool

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


Holders = Callable[[str], Sequence[Holder]]


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    # Seconds until the next attempt for a failure that can pass; None waits for the interval.
    retry: bool = False
    wrote: bool = False

    def summary(self) -> str:
        """One log line's worth: where Ready stands and whether Keycloak was written."""
        ready = next((c for c in self.status.get("conditions", [])
                      if c.get("type") == conditions.ConditionType.READY.value), None)
        state = f"Ready={ready['status']} ({ready['reason']})" if ready else "no Ready condition"
        return f"{state}, {'wrote to Keycloak' if self.wrote else 'no write to Keycloak'}"


Report = Callable[["Result"], Awaitable[None]]


class Reconciler:
    def __init__(self, kube: Kube, clients: KeycloakClients, prober: Prober | None = None,
                 now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC), *,
                 namespaced_connections: bool = True) -> None:
        """``namespaced_connections`` False: MailConfigs may use ClusterKeycloakConnections only
        (``kcmail run --no-namespaced-connections``)."""
        self._kube = kube
        self._clients = clients
        self.connections = ResolvedConnections(kube)
        self._prober = prober
        self._now = now
        self._namespaced_connections = namespaced_connections

    async def reconcile(self, obj: MailConfigObject, report: Report | None = None,
                        holders: Holders = lambda realm: ()) -> Result:
        """One pass. When a write or a new generation makes the last probe's results stale, ``report``
        receives the status before the probe runs: Applied is news at once, while the probe may wait for a
        free slot and then for the SMTP server's timeouts. ``holders(realm)``: the MailConfigs of this
        cluster that name that realm (see :meth:`_unrecorded_holder`)."""
        status: dict[str, Any] = {"observedGeneration": obj.generation}
        requested = obj.annotations.get(REQUESTED_AT)
        if requested is not None:
            status["lastHandledRequestedAt"] = requested
        events: list[Event] = []
        outcome, retry, wrote, credentials = await self._steps(obj, status, events, holders)
        spec = MailConfigSpec.parse(obj.spec) if outcome.applied is True else None
        if spec is None or credentials is None or spec.probe.smtp is ProbeMode.OFF or self._prober is None:
            return self._finish(obj, outcome, status, events, retry=retry, wrote=wrote)
        outcome = dataclasses.replace(
            outcome, probes=Probes.TOKEN_AND_SMTP if spec.auth.type is AuthType.XOAUTH2 else Probes.SMTP)
        previous = {c.get("type"): c for c in obj.status.get("conditions") or []}
        last_smtp = previous.get(ConditionType.SMTP_AUTHENTICATED.value) or {}
        stale = wrote or last_smtp.get("observedGeneration") != obj.generation
        asked = requested not in (None, obj.status.get("lastHandledRequestedAt"))
        # A provider that was down or busy at the last probe is asked again on the backoff's retry pass.
        again = any((previous.get(kind.value) or {}).get("reason") in TRANSIENT_PROBE_REASONS
                    for kind in (ConditionType.TOKEN_ACQUIRED, ConditionType.SMTP_AUTHENTICATED))
        if not probe_due(obj.status.get("lastProbeTime"), spec.interval, phase(obj.uid), self._now(),
                         forced=stale or asked or again):
            # Not due: the last probe's results stand.
            outcome = dataclasses.replace(outcome, token=_carried(previous.get(ConditionType.TOKEN_ACQUIRED.value)),
                                          smtp=_carried(last_smtp))
            return self._finish(obj, outcome, status, events, retry=retry, wrote=wrote)
        if stale and report is not None:
            interim = self._finish(obj, outcome, dict(status), events, retry=False, wrote=wrote)
            await report(interim)
            obj, events = dataclasses.replace(obj, status={**obj.status, **interim.status}), []
        outcome = await self._probe(spec, outcome, status, credentials, obj.id)
        transient = any(isinstance(r, Failure) and r.reason in TRANSIENT_PROBE_REASONS
                        for r in (outcome.token, outcome.smtp))
        return self._finish(obj, outcome, status, events, retry=retry or transient, wrote=wrote)

    def failed(self, obj: MailConfigObject, error: BaseException) -> Result:
        """The status of a pass that raised what no step expected: Ready=False, InternalError, retried."""
        failure = Failure(Reason.INTERNAL_ERROR, f"the pass failed unexpectedly: {type(error).__name__}: "
                          f"{redact(error)}; kcmail retries with backoff, and its log has the details")
        return self._finish(obj, Outcome(applied=failure), {"observedGeneration": obj.generation}, [],
                            retry=True, wrote=False)

    async def _probe(self, spec: MailConfigSpec, outcome: Outcome, status: dict[str, Any],
                     credentials: Credentials, mailconfig: str) -> Outcome:
        assert self._prober is not None
        now = self._now()
        result = await self._prober.probe(spec, credentials, mailconfig)
        status["lastProbeTime"] = _stamp(now)
        if result.token_expires_at is not None:
            status["tokenExpiresAt"] = _stamp(result.token_expires_at)
        if result.smtp is True and result.token in (True, None):
            status["lastSuccessfulProbeTime"] = _stamp(now)
        return dataclasses.replace(outcome, token=result.token, smtp=result.smtp)

    async def _steps(self, obj: MailConfigObject, status: dict[str, Any], events: list[Event],
                     holders: Holders) -> tuple[Outcome, bool, bool, Credentials | None]:
        """Resolve and apply; returns the outcome, whether to retry soon, whether Keycloak was written,
        and the credentials used when the settings were applied."""
        try:
            spec = MailConfigSpec.parse(obj.spec)
        except SpecError as error:
            return Outcome(credentials=Failure(Reason.INVALID_SPEC, str(error), needs_person=True)), False, False, None
        if spec.suspend:
            return Outcome(suspended=True), False, False, None
        try:
            connection = await self._connection(obj, spec)
            credentials = await self._credentials(obj, spec)
        except ConnectionFailure as error:
            return Outcome(credentials=error.failure), not error.failure.needs_person, False, None
        try:
            async with self._clients.using(connection) as keycloak:
                return await self._apply(obj, spec, status, events, holders, connection, credentials, keycloak)
        except KeycloakFailure as error:
            return Outcome(credentials=True, applied=error.failure), not error.failure.needs_person, False, None
        except ConnectionFailure as error:
            return Outcome(credentials=error.failure), not error.failure.needs_person, False, None

    async def _apply(self, obj: MailConfigObject, spec: MailConfigSpec, status: dict[str, Any], events: list[Event],
                     holders: Holders, connection: ResolvedConnection, credentials: Credentials,
                     keycloak: KeycloakClient) -> tuple[Outcome, bool, bool, Credentials | None]:
        """Read the realm and write it when the settings, the Secret or the owner record call for it."""
        version = await keycloak.version()
        status["keycloakVersion"] = version_text(version)
        try:
            desired = desired_smtp_server(spec, credentials, version)
        except UnsupportedVersion as error:
            return Outcome(credentials=True, applied=Failure(
                Reason.UNSUPPORTED_KEYCLOAK_VERSION, str(error), needs_person=True)), False, False, None
        me = Owner(uid=obj.uid, mailconfig=obj.id)
        async with keycloak.one_slot():  # the write right after the read it carries back
            realm = await keycloak.read_realm(spec.realm)
            recorded = recorded_owner(realm)
            decision = decide(recorded, me, await self._lookup(recorded, me), obj.annotations.get(ADOPT_ANNOTATION))
            conflict = decision.conflict
            if conflict is None and recorded is None:
                conflict = await self._unrecorded_holder(obj, spec, connection, holders)
            if conflict is not None:
                return Outcome(credentials=True, applied=conflict), False, False, None
            drifted, drift = needs_write(desired, realm.get("smtpServer"), secret_version=credentials.secret_version,
                                         applied_secret_version=obj.status.get("appliedSecretVersion"))
            write = drifted or recorded != me
            if write:
                await keycloak.write_realm(spec.realm, with_owner(realm, desired, me))
        if write:
            if decision.claiming:
                lost = await _claim_lost(keycloak, spec.realm, me)
                if lost is not None:
                    return Outcome(credentials=True, applied=lost), False, True, None
            status["appliedSecretVersion"] = credentials.secret_version
            status["lastAppliedTime"] = _stamp(self._now())
            events.append(_write_event(obj, drift.keys, rotated=drifted and not drift, owner_only=not drifted))
            if decision.adopted is not None:
                events.append(Event("Warning", "RealmAdopted",
                                    f"took realm {spec.realm!r} over from MailConfig {decision.adopted.mailconfig} "
                                    f"(uid {decision.adopted.uid}), which no longer exists in this cluster"))
        return Outcome(credentials=True, applied=True), False, write, credentials

    async def _connection(self, obj: MailConfigObject, spec: MailConfigSpec) -> ResolvedConnection:
        """The Connection the MailConfig refers to, once it is known to be allowed to use it for its realm."""
        if spec.connection_ref.kind is ConnectionKind.NAMESPACED and not self._namespaced_connections:
            raise ConnectionFailure(Failure(
                Reason.CONNECTION_NOT_ALLOWED,
                "this kcmail accepts no KeycloakConnection (it runs with --no-namespaced-connections): use a "
                "ClusterKeycloakConnection that allows this namespace and realm", needs_person=True))
        try:
            connection = await self.connections.get(spec.connection_ref.kind, spec.connection_ref.name,
                                                    obj.namespace)
            await self._check_allowed(obj, spec, connection)
        except KubeError as error:
            raise ConnectionFailure(kube_failure(error, "read the Connection")) from None
        return connection

    async def _check_allowed(self, obj: MailConfigObject, spec: MailConfigSpec, connection: ResolvedConnection) -> None:
        if spec.connection_ref.kind is ConnectionKind.CLUSTER and connection.allowed_namespaces is not None:
            labels = await self._kube.namespace_labels(obj.namespace)
            if not selector_matches(connection.allowed_namespaces, labels):
                raise ConnectionFailure(Failure(
                    Reason.CONNECTION_NOT_ALLOWED,
                    f"{connection.key} does not allow namespace {obj.namespace} (spec.allowedNamespaces)",
                    needs_person=True))
        if not realm_allowed(connection.allowed_realms, spec.realm):
            raise ConnectionFailure(Failure(
                Reason.CONNECTION_NOT_ALLOWED,
                f"{connection.key} does not allow realm {spec.realm!r} (spec.allowedRealms: "
                f"{', '.join(connection.allowed_realms)})", needs_person=True))

    async def _unrecorded_holder(self, obj: MailConfigObject, spec: MailConfigSpec, connection: ResolvedConnection,
                                 holders: Holders) -> Failure | None:
        """For a realm that records no owner: an older MailConfig that already wrote it, through a Connection
        to the same Keycloak, goes first.

        That is the owner a kcmail from before owner records chose (the older of two), which has not yet
        written its record after the upgrade; the realm's record decides as soon as it has. A MailConfig its
        Connection never allowed never wrote the realm (it has no Applied=True), so it holds nothing back.
        """
        for holder in holders(spec.realm):
            if holder.uid == obj.uid or not holder.applied or (holder.created, holder.uid) >= (obj.created, obj.uid):
                continue
            namespace = holder.namespace if holder.connection_kind is ConnectionKind.NAMESPACED else None
            try:
                peer = await self._kube.connection(holder.connection_kind, holder.connection_name, namespace)
            except KubeError:
                continue
            if peer is not None and normalized_url(str((peer.get("spec") or {}).get("url", ""))) == \
                    normalized_url(connection.url):
                return Failure(Reason.REALM_CONFLICT, f"MailConfig {holder.id} (older) wrote this realm before "
                               "kcmail recorded owners in realms, and has not recorded itself yet; this one writes "
                               "nothing until that one has, or is deleted", needs_person=True)
        return None

    async def _lookup(self, recorded: Owner | None, me: Owner) -> Lookup | None:
        """What this cluster says of the realm's recorded owner, when it is another MailConfig."""
        if recorded is None or recorded.uid == me.uid:
            return None
        try:
            uid = await self._kube.mailconfig_uid(recorded.namespace, recorded.name)
        except KubeError:
            return Lookup.UNKNOWN
        return Lookup.EXISTS if uid == recorded.uid else Lookup.ABSENT

    async def _credentials(self, obj: MailConfigObject, spec: MailConfigSpec) -> Credentials:
        auth = spec.auth
        if auth.type is AuthType.NONE or auth.secret_name is None:
            return Credentials(secret_version="")
        where = f"Secret {obj.namespace}/{auth.secret_name}"
        try:
            secret = await self._kube.secret(obj.namespace, auth.secret_name)
        except KubeError as error:
            raise ConnectionFailure(kube_failure(error, f"read {where}")) from None
        if secret is None:
            raise ConnectionFailure(Failure(Reason.SECRET_NOT_FOUND, f"{where} does not exist", needs_person=True))
        if auth.type is AuthType.XOAUTH2 and auth.xoauth2 is not None:
            ref = auth.xoauth2.client_secret_ref
            keys = (ref.client_id_key, ref.client_secret_key)
        else:
            assert auth.basic is not None
            keys = (auth.basic.password_secret_ref.key,)
        missing = [key for key in keys if not secret.data.get(key)]
        if missing:
            raise ConnectionFailure(Failure(
                Reason.SECRET_KEY_MISSING,
                f"{where} has no (or an empty) key {', '.join(repr(k) for k in missing)}", needs_person=True))
        for key in keys:
            # Every value goes into the realm's smtpServer, and the client ID into the token request and,
            # for Basic, the password into the SASL string: what Keycloak cannot store or send is refused here.
            problem = value_problem(secret.data[key])
            if problem:
                raise ConnectionFailure(Failure(
                    Reason.INVALID_SECRET_VALUE, f"the value of key {key!r} of {where} {problem}", needs_person=True))
        if auth.type is AuthType.XOAUTH2:
            return Credentials(secret_version=secret.version, client_id=secret.data[keys[0]],
                               client_secret=secret.data[keys[1]])
        return Credentials(secret_version=secret.version, password=secret.data[keys[0]])

    def _finish(self, obj: MailConfigObject, outcome: Outcome, status: dict[str, Any], events: list[Event], *,
                retry: bool, wrote: bool) -> Result:
        previous = obj.status.get("conditions") or []
        merged = conditions.merge(previous, conditions.evaluate(outcome), generation=obj.generation,
                                  now=self._now())
        status["conditions"] = merged
        for change in conditions.transitions(previous, merged):
            # Progressing is a step not yet run (a probe under way after a write): the outcome is the news.
            if change.type != conditions.ConditionType.READY.value or change.reason == Reason.PROGRESSING.value:
                continue
            kind = "Normal" if change.new_status == "True" else "Warning"
            events.append(Event(kind, change.reason, change.message))
        return Result(status=status, events=events, retry=retry, wrote=wrote)

    async def finalize(self, obj: MailConfigObject) -> Result:
        """Deletion: the owner of the realm takes its record away, and with ``deletionPolicy: Clear`` (unless
        suspended) the realm's SMTP settings with it. A MailConfig the realm does not name touches nothing."""
        try:
            spec = MailConfigSpec.parse(obj.spec)
        except SpecError:
            return Result(status={})
        clear = spec.deletion_policy is DeletionPolicy.CLEAR and not spec.suspend
        try:
            connection = await self._connection(obj, spec)
            async with self._clients.using(connection) as keycloak, keycloak.one_slot():
                realm = await keycloak.read_realm(spec.realm)
                if recorded_owner(realm) != Owner(uid=obj.uid, mailconfig=obj.id):
                    return Result(status={})  # not the owner: the realm is someone else's, or no one's
                await keycloak.write_realm(spec.realm,
                                           with_owner(realm, cleared_smtp_server() if clear else None, None))
        except (ConnectionFailure, KeycloakFailure) as error:
            failure = error.failure
            if failure.reason in (Reason.CONNECTION_NOT_ALLOWED, Reason.REALM_NOT_FOUND, Reason.REALM_MISMATCH):
                return Result(status={})  # it never could write the realm, or there is none left
            if "lastAppliedTime" not in obj.status:
                # It never wrote the realm (a look-alike Connection, credentials Keycloak refused): whatever the
                # realm holds is not its own to clear, and its deletion waits for no Keycloak.
                return Result(status={})
            if clear:
                return self._blocked(obj, failure)
            # Retain: deletion never waits for Keycloak. The record stays; adopting the realm takes the annotation.
            return Result(status={}, events=[Event(
                "Warning", "OwnershipNotReleased",
                f"could not take this MailConfig's record off realm {spec.realm!r} ({failure.message}); another "
                f"MailConfig can take the realm over with the {ADOPT_ANNOTATION}={obj.uid} annotation")])
        if clear:
            return Result(status={}, wrote=True, events=[Event(
                "Normal", "SettingsCleared", f"removed the SMTP settings of realm {spec.realm!r}")])
        return Result(status={}, wrote=True, events=[Event(
            "Normal", "OwnershipReleased", f"realm {spec.realm!r} keeps its SMTP settings and records no owner now")])

    def _blocked(self, obj: MailConfigObject, failure: Failure) -> Result:
        message = (f"deletionPolicy Clear is waiting: {failure.message}. To delete without clearing, set "
                   "spec.deletionPolicy to Retain")
        blocked = Failure(Reason.DELETION_BLOCKED, message)
        return self._finish(obj, Outcome(credentials=True, applied=blocked), {"observedGeneration": obj.generation},
                            [], retry=True, wrote=False)


async def _claim_lost(keycloak: KeycloakClient, realm: str, me: Owner) -> Failure | None:
    """After claiming a realm: whether another MailConfig's claim was written after this one's.

    Keycloak has no conditional write, so two first claims can cross; reading the realm back tells whose
    record stayed, and only that MailConfig goes on.
    """
    winner = recorded_owner(await keycloak.read_realm(realm))
    if winner == me:
        return None
    who = f"MailConfig {winner.mailconfig}" if winner is not None else "someone else"
    return Failure(Reason.REALM_CONFLICT, f"{who} claimed this realm at the same moment and its record stayed; "
                   "this one writes nothing until that one is deleted", needs_person=True)


def kube_failure(error: KubeError, what: str) -> Failure:
    """A Kubernetes API refusal as a catalogue failure: forbidden needs a person, the rest can pass."""
    if error.status in (401, 403):
        return Failure(Reason.KUBERNETES_FORBIDDEN,
                       f"cannot {what}: {redact(error)}. Grant kcmail's ServiceAccount access (the chart's "
                       "rbac values: watchNamespaces, rbac.connectionSecretNamespaces)", needs_person=True)
    return Failure(Reason.KUBERNETES_API_ERROR, f"cannot {what}: {redact(error)}")


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
    """Whether the last pass found the realm holding this generation's settings (pure): only then does a
    difference now mean someone changed the realm. After a spec edit, or a pass that could not apply, the
    write is kcmail's own news, not drift."""
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


async def check_connection(kube: Kube, clients: KeycloakClients, kind: ConnectionKind, body: Mapping[str, Any],
                           now: datetime.datetime, *, refused: bool = False) -> dict[str, Any]:
    """Status of a Connection: can kcmail reach Keycloak and log in, and which version answers.

    ``refused``: the operator accepts no Connection of this kind; nothing is read and nothing contacted.
    """
    meta = body.get("metadata", {})
    spec = body.get("spec", {})
    status: dict[str, Any] = {"observedGeneration": int(meta.get("generation", 0))}
    url = str(spec.get("url", ""))
    if url.startswith("http://"):
        status["tlsVerification"] = "Plaintext"
    else:
        status["tlsVerification"] = "Skipped" if (spec.get("tls") or {}).get("insecureSkipVerify") else "Verified"
    ready: conditions.Condition
    failure: Failure | None = None
    if refused:
        failure = Failure(Reason.CONNECTION_NOT_ALLOWED, "this kcmail accepts no KeycloakConnection (it runs with "
                          "--no-namespaced-connections): ask for a ClusterKeycloakConnection instead")
    else:
        try:
            connection = await resolve(kube, kind, meta.get("name", ""), meta.get("namespace", ""))
            async with clients.using(connection) as keycloak:
                version = await keycloak.version(fresh=True)
        except (ConnectionFailure, KeycloakFailure) as error:
            failure = error.failure
        except KubeError as error:
            failure = kube_failure(error, "read the Connection's Secrets")
        except Exception as error:  # a Connection must never be left without status
            failure = Failure(Reason.INTERNAL_ERROR, f"the check failed unexpectedly: {type(error).__name__}: "
                              f"{redact(error)}")
        else:
            status["keycloakVersion"] = version_text(version)
    if failure is not None:
        ready = conditions.Condition(conditions.ConditionType.READY, conditions.Status.FALSE, failure.reason,
                                     failure.message)
    else:
        ready = conditions.Condition(conditions.ConditionType.READY, conditions.Status.TRUE, Reason.CONNECTED,
                                     f"logged in to Keycloak {status['keycloakVersion']} at {redact(url)}")
    status["conditions"] = conditions.merge(body.get("status", {}).get("conditions") or [], [ready],
                                            generation=status["observedGeneration"], now=now)
    return status
