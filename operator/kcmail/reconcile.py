"""One reconcile of a MailConfig, as observe → decide → act. No kopf imports.

:class:`Reconciler` runs the stages in order and holds what they share for the operator's lifetime (the
Kubernetes reads, the Keycloak clients, the Prober). observe.py reads, decide.py decides from what was read
(pure: every rule of a pass is there), act.py writes and probes as decided. The result is a status patch and
the Events worth posting; the caller writes them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kcmail import act, conditions, decide, observe
from kcmail.conditions import Failure, Reason
from kcmail.connections import ConnectionFailure, KeycloakClients, ResolvedConnections, resolve
from kcmail.decide import REQUESTED_AT, Event, Result
from kcmail.keycloak import KeycloakFailure
from kcmail.kube import Kube, KubeError
from kcmail.observe import kube_failure
from kcmail.ownership import ADOPT_ANNOTATION
from kcmail.probes import Prober
from kcmail.redact import redact
from kcmail.smtp_settings import version_text
from kcmail.spec import ConnectionKind

# Defined with the stage that makes them, and read from here by the operator.
__all__ = ["REQUESTED_AT", "Event", "Holder", "Holders", "MailConfigObject", "Reconciler", "Report", "Result",
           "check_connection", "kube_failure"]

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


Report = Callable[[Result], Awaitable[None]]


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
        cluster that name that realm (a realm that records no owner waits for the older one that wrote it)."""
        inputs = await observe.inputs(self._kube, self.connections, obj,
                                      namespaced_connections=self._namespaced_connections)
        admitted = decide.admit(obj, inputs)
        if isinstance(admitted, decide.Plan):
            return decide.report(obj, admitted, act.Done(), self._now())
        async with self._clients.using(admitted.connection) as keycloak:
            async with observe.keycloak(self._kube, keycloak, obj, admitted.spec, admitted.connection,
                                        holders) as seen:  # the write right after the read it carries back
                plan = decide.plan(obj, admitted, seen, self._now(), probes=self._prober is not None)
                done = await act.write(keycloak, admitted.spec.realm, plan.write)
        probe = decide.probe_after(obj, plan, done)
        if probe is not None and self._prober is not None:
            if probe.stale and report is not None:
                interim = decide.report(obj, plan, done, self._now())
                await report(interim)
                obj, plan = decide.reported(obj, plan, interim)
            done = await act.probe(self._prober, probe, obj.id, done, self._now)
        return decide.report(obj, plan, done, self._now())

    def failed(self, obj: MailConfigObject, error: BaseException) -> Result:
        """The status of a pass that raised what no step expected: Ready=False, InternalError, retried."""
        return decide.failed(obj, error, self._now())

    async def finalize(self, obj: MailConfigObject) -> Result:
        """Deletion: the owner of the realm takes its record away, and with ``deletionPolicy: Clear`` (unless
        suspended) the realm's SMTP settings with it. A MailConfig the realm does not name touches nothing."""
        inputs = await observe.deletion_inputs(self._kube, self.connections, obj,
                                               namespaced_connections=self._namespaced_connections)
        release = decide.release(obj, inputs, self._now())
        if isinstance(release, Result):
            return release
        async with self._clients.using(release.connection) as keycloak, \
                observe.realm(keycloak, release.spec.realm) as realm:  # the write right after the read
            done = await act.write(keycloak, release.spec.realm, decide.release_write(obj, release, realm))
        return decide.released(obj, release, realm, done, self._now())


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
