"""One reconcile of a MailConfig: resolve inputs → apply → report. No kopf imports.

The result is a status patch and the Events worth posting; the caller writes them. A reconcile writes
to Keycloak only when the realm differs from the desired settings or the Secret changed since the
last write, so a steady state costs one realm read and nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kcmail import conditions
from kcmail.conditions import ConditionType, Failure, Outcome, Probes, Reason
from kcmail.connections import (
    ConnectionFailure,
    KeycloakClients,
    ResolvedConnections,
    normalized_url,
    realm_allowed,
    resolve,
    selector_matches,
)
from kcmail.keycloak import KeycloakFailure
from kcmail.kube import Kube
from kcmail.probes import Prober
from kcmail.schedule import phase, probe_due
from kcmail.smtp_settings import UnsupportedVersion, cleared_smtp_server, desired_smtp_server, needs_write
from kcmail.spec import AuthType, ConnectionKind, Credentials, DeletionPolicy, MailConfigSpec, ProbeMode, SpecError

REQUESTED_AT = "kcmail.io/requested-at"
READ_ANNOTATIONS = frozenset({REQUESTED_AT})


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

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MailConfigObject:
        meta = body.get("metadata", {})
        # Only the annotations kcmail reads: kubectl's last-applied-configuration alone can double the size.
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k in READ_ANNOTATIONS}
        return cls(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
                   generation=int(meta.get("generation", 0)), created=meta.get("creationTimestamp", ""),
                   annotations=annotations, spec=dict(body.get("spec") or {}), status=dict(body.get("status") or {}))

    def pack(self) -> bytes:
        """These fields as compact JSON: what a loop keeps between passes, far smaller than parsed dicts."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, data: bytes) -> MailConfigObject:
        return cls(**json.loads(data))

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Claim:
    """A MailConfig's claim on one realm of one Keycloak; the oldest claim owns the realm."""

    namespace: str
    name: str
    uid: str
    created: str
    keycloak_url: str
    realm: str

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


def owner(claims: Sequence[Claim]) -> Claim | None:
    """The oldest claim; creation time ties (one-second resolution) are broken by UID."""
    return min(claims, key=lambda c: (c.created, c.uid), default=None)


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


Peers = Callable[[str], Sequence[Claim]]
Report = Callable[["Result"], Awaitable[None]]


class Reconciler:
    def __init__(self, kube: Kube, clients: KeycloakClients, prober: Prober | None = None,
                 now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)) -> None:
        self._kube = kube
        self._clients = clients
        self.connections = ResolvedConnections(kube)
        self._prober = prober
        self._now = now

    async def reconcile(self, obj: MailConfigObject, peers: Peers, report: Report | None = None) -> Result:
        """``peers(realm)`` lists every MailConfig's claim on that realm name, this one's included.

        When a write or a new generation makes the last probe's results stale, ``report`` receives the
        status before the probe runs: Applied is news at once, while the probe may wait for a free slot
        and then for the SMTP server's timeouts.
        """
        status: dict[str, Any] = {"observedGeneration": obj.generation}
        requested = obj.annotations.get(REQUESTED_AT)
        if requested is not None:
            status["lastHandledRequestedAt"] = requested
        events: list[Event] = []
        outcome, retry, wrote, credentials = await self._steps(obj, peers, status, events)
        spec = MailConfigSpec.parse(obj.spec) if outcome.applied is True else None
        if spec is None or credentials is None or spec.probe.smtp is ProbeMode.OFF or self._prober is None:
            return self._finish(obj, outcome, status, events, retry=retry, wrote=wrote)
        outcome = dataclasses.replace(
            outcome, probes=Probes.TOKEN_AND_SMTP if spec.auth.type is AuthType.XOAUTH2 else Probes.SMTP)
        previous = {c.get("type"): c for c in obj.status.get("conditions") or []}
        last_smtp = previous.get(ConditionType.SMTP_AUTHENTICATED.value) or {}
        stale = wrote or last_smtp.get("observedGeneration") != obj.generation
        asked = requested not in (None, obj.status.get("lastHandledRequestedAt"))
        if not probe_due(obj.status.get("lastProbeTime"), spec.interval, phase(obj.uid), self._now(),
                         forced=stale or asked):
            # Not due: the last probe's results stand.
            outcome = dataclasses.replace(outcome, token=_carried(previous.get(ConditionType.TOKEN_ACQUIRED.value)),
                                          smtp=_carried(last_smtp))
            return self._finish(obj, outcome, status, events, retry=retry, wrote=wrote)
        if stale and report is not None:
            interim = self._finish(obj, outcome, dict(status), events, retry=False, wrote=wrote)
            await report(interim)
            obj, events = dataclasses.replace(obj, status={**obj.status, **interim.status}), []
        outcome = await self._probe(spec, outcome, status, credentials, obj.id)
        return self._finish(obj, outcome, status, events, retry=retry, wrote=wrote)

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

    async def _steps(self, obj: MailConfigObject, peers: Peers, status: dict[str, Any],
                     events: list[Event]) -> tuple[Outcome, bool, bool, Credentials | None]:
        """Resolve and apply; returns the outcome, whether to retry soon, whether Keycloak was written,
        and the credentials used when the settings were applied."""
        try:
            spec = MailConfigSpec.parse(obj.spec)
        except SpecError as error:
            return Outcome(credentials=Failure(Reason.INVALID_SPEC, str(error), needs_person=True)), False, False, None
        if spec.suspend:
            return Outcome(suspended=True), False, False, None
        try:
            connection = await self.connections.get(spec.connection_ref.kind, spec.connection_ref.name, obj.namespace)
            await self._check_allowed(obj, spec, connection.allowed_namespaces, connection.allowed_realms,
                                      str(connection.key))
            credentials = await self._credentials(obj, spec)
        except ConnectionFailure as error:
            return Outcome(credentials=error.failure), False, False, None
        keycloak = await self._clients.get(connection)
        try:
            version = await keycloak.version()
            status["keycloakVersion"] = ".".join(map(str, version))
            conflict = _conflict(obj, peers(spec.realm), normalized_url(connection.url))
            if conflict is not None:
                return Outcome(credentials=True, applied=conflict), False, False, None
            try:
                desired = desired_smtp_server(spec, credentials, version)
            except UnsupportedVersion as error:
                return Outcome(credentials=True, applied=Failure(
                    Reason.UNSUPPORTED_KEYCLOAK_VERSION, str(error), needs_person=True)), False, False, None
            realm = await keycloak.read_realm(spec.realm)
            write, drift = needs_write(desired, realm.get("smtpServer"), secret_version=credentials.secret_version,
                                       applied_secret_version=obj.status.get("appliedSecretVersion"))
            if write:
                await keycloak.write_smtp_server(spec.realm, desired, current=realm)
                status["appliedSecretVersion"] = credentials.secret_version
                status["lastAppliedTime"] = _stamp(self._now())
                events.append(_write_event(obj, drift.keys))
        except KeycloakFailure as error:
            return Outcome(credentials=True, applied=error.failure), not error.failure.needs_person, False, None
        return Outcome(credentials=True, applied=True), False, write, credentials

    async def _check_allowed(self, obj: MailConfigObject, spec: MailConfigSpec, allowed_namespaces: Any,
                             allowed_realms: Sequence[str], connection: str) -> None:
        if spec.connection_ref.kind is ConnectionKind.CLUSTER and allowed_namespaces is not None:
            labels = await self._kube.namespace_labels(obj.namespace)
            if not selector_matches(allowed_namespaces, labels):
                raise ConnectionFailure(Failure(
                    Reason.CONNECTION_NOT_ALLOWED,
                    f"{connection} does not allow namespace {obj.namespace} (spec.allowedNamespaces)",
                    needs_person=True))
        if not realm_allowed(allowed_realms, spec.realm):
            raise ConnectionFailure(Failure(
                Reason.CONNECTION_NOT_ALLOWED,
                f"{connection} does not allow realm {spec.realm!r} (spec.allowedRealms: "
                f"{', '.join(allowed_realms)})", needs_person=True))

    async def _credentials(self, obj: MailConfigObject, spec: MailConfigSpec) -> Credentials:
        auth = spec.auth
        if auth.type is AuthType.NONE or auth.secret_name is None:
            return Credentials(secret_version="")
        secret = await self._kube.secret(obj.namespace, auth.secret_name)
        if secret is None:
            raise ConnectionFailure(Failure(
                Reason.SECRET_NOT_FOUND, f"Secret {obj.namespace}/{auth.secret_name} does not exist",
                needs_person=True))
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
                f"Secret {obj.namespace}/{auth.secret_name} has no (or an empty) key "
                f"{', '.join(repr(k) for k in missing)}", needs_person=True))
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

    async def finalize(self, obj: MailConfigObject, peers: Peers) -> Result:
        """Deletion: with ``deletionPolicy: Clear`` the owner removes the realm's SMTP settings."""
        try:
            spec = MailConfigSpec.parse(obj.spec)
        except SpecError:
            return Result(status={})
        if spec.deletion_policy is DeletionPolicy.RETAIN or spec.suspend:
            return Result(status={})
        try:
            connection = await self.connections.get(spec.connection_ref.kind, spec.connection_ref.name, obj.namespace)
        except ConnectionFailure as error:
            return self._blocked(obj, error.failure)
        if _conflict(obj, peers(spec.realm), normalized_url(connection.url)) is not None:
            return Result(status={})  # not the owner: the realm is someone else's to clear
        keycloak = await self._clients.get(connection)
        try:
            realm = await keycloak.read_realm(spec.realm)
            await keycloak.write_smtp_server(spec.realm, cleared_smtp_server(), current=realm)
        except KeycloakFailure as error:
            if error.failure.reason is Reason.REALM_NOT_FOUND:
                return Result(status={})  # nothing left to clear
            return self._blocked(obj, error.failure)
        return Result(status={}, wrote=True, events=[Event("Normal", "SettingsCleared",
                                                            f"removed the SMTP settings of realm {spec.realm!r}")])

    def _blocked(self, obj: MailConfigObject, failure: Failure) -> Result:
        message = (f"deletionPolicy Clear is waiting: {failure.message}. To delete without clearing, set "
                   "spec.deletionPolicy to Retain")
        blocked = Failure(Reason.DELETION_BLOCKED, message)
        return self._finish(obj, Outcome(credentials=True, applied=blocked), {"observedGeneration": obj.generation},
                              [], retry=True, wrote=False)


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


def _conflict(obj: MailConfigObject, claims: Sequence[Claim], url: str) -> Failure | None:
    same_keycloak = [c for c in claims if c.keycloak_url == url]
    winner = owner(same_keycloak)
    if winner is None or winner.uid == obj.uid:
        return None
    return Failure(Reason.REALM_CONFLICT,
                   f"MailConfig {winner.id} (older) already manages this realm; this one writes nothing until "
                   "that one is deleted", needs_person=True)


def _write_event(obj: MailConfigObject, drift_keys: Sequence[str]) -> Event:
    if drift_keys and obj.status.get("appliedSecretVersion") is not None:
        return Event("Warning", "DriftCorrected",
                     f"the realm's smtpServer differed in {', '.join(drift_keys)}; restored the desired settings")
    if drift_keys:
        return Event("Normal", "SettingsApplied", f"wrote smtpServer ({len(drift_keys)} keys differed)")
    return Event("Normal", "SecretRotated", "wrote the rotated credentials to Keycloak")


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def check_connection(kube: Kube, clients: KeycloakClients, kind: ConnectionKind, body: Mapping[str, Any],
                           now: datetime.datetime) -> dict[str, Any]:
    """Status of a Connection: can kcmail reach Keycloak and log in, and which version answers."""
    meta = body.get("metadata", {})
    spec = body.get("spec", {})
    status: dict[str, Any] = {"observedGeneration": int(meta.get("generation", 0))}
    url = str(spec.get("url", ""))
    if url.startswith("http://"):
        status["tlsVerification"] = "Plaintext"
    else:
        status["tlsVerification"] = "Skipped" if (spec.get("tls") or {}).get("insecureSkipVerify") else "Verified"
    ready: conditions.Condition
    try:
        connection = await resolve(kube, kind, meta.get("name", ""), meta.get("namespace", ""))
        keycloak = await clients.get(connection)
        version = await keycloak.version(fresh=True)
    except (ConnectionFailure, KeycloakFailure) as error:
        ready = conditions.Condition(conditions.ConditionType.READY, conditions.Status.FALSE, error.failure.reason,
                                     error.failure.message)
    else:
        status["keycloakVersion"] = ".".join(map(str, version))
        ready = conditions.Condition(conditions.ConditionType.READY, conditions.Status.TRUE, Reason.CONNECTED,
                                     f"logged in to Keycloak {status['keycloakVersion']} at {url}")
    status["conditions"] = conditions.merge(body.get("status", {}).get("conditions") or [], [ready],
                                            generation=status["observedGeneration"], now=now)
    return status
