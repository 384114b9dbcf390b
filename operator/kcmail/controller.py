"""From events to passes: kcmail's MailConfig watch, the keys its events and others' become, and the pass a
worker runs for a key.

A MailConfig's way from event to status, in five modules:
1. an event (of the MailConfig, a Secret it uses, its Connection) becomes its key in the work queue
   (``on_mailconfig``, ``on_secret``, ``on_connection``); nothing else starts a pass;
2. kcmail.workqueue decides when the key runs: now, at its interval slot, or after its backoff;
3. a worker runs ``process(key)``: :class:`Reconciler` takes the object as last seen (kcmail.store)
   through kcmail.observe (the reads), kcmail.decide (every rule, pure) and kcmail.act (the writes and
   the probe); ``process`` writes the status and Events and tells the queue what to do next.

kcmail watches MailConfigs itself rather than through kopf: it keeps each as compact JSON (kcmail.store),
can ask the API server for a label selector (shards), and manages its finalizer itself, so a deletion is
a pass like any other and never overlaps another pass of the same object. kopf still serves the
Connections (their checks and timers), the login and the operator's lifecycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kcmail import act, conditions, decide, metrics, observe
from kcmail.bridge.enrolment import (
    BRIDGE_VERSION_MARK,
    Enrolment,
    settled,
    unbridged,
    uses_bridge,
    withdrawn_on_deletion,
)
from kcmail.conditions import condition_true
from kcmail.connections import ConnectionKey, KeycloakClients, ResolvedConnections
from kcmail.decide import FORCE_APPLY, REQUESTED_AT, Result
from kcmail.kube import MAILCONFIG_KIND, MAILCONFIGS, Kube, KubeError, secret_version
from kcmail.listwatch import LISTED, PAGE_SIZE, RELISTED, WATCH_SECONDS, ListWatch
from kcmail.ownership import ADOPT_ANNOTATION
from kcmail.probes import Prober
from kcmail.redact import redact
from kcmail.schedule import phase, seconds_to_next_pass
from kcmail.secretwatch import SecretEvent, SecretEventType
from kcmail.spec import GROUP, VERSION, ConnectionKind, Credentials, MailConfigSpec, SpecError
from kcmail.store import ConnectionRef, Holders, Key, MailConfigObject, MailConfigStore, used_connection
from kcmail.workqueue import Next, Requeue, Retry, WorkQueue

Report = Callable[[Result], Awaitable[None]]

FINALIZER = "kcmail.io/finalizer"
# Annotations whose change asks for a pass at once: a requested pass, a held change forced, an adoption.
WAKING_ANNOTATIONS = (REQUESTED_AT, FORCE_APPLY, ADOPT_ANNOTATION)
# A deletion that waits for Keycloak tries again within this long.
FINALIZE_RETRY_SECONDS = 15.0
# A pass whose spec cannot be read still runs again within this long.
UNPARSED_INTERVAL_SECONDS = 600.0
# A failing Connection is checked again after a MailConfig pass got through it, at most this often.
RECHECK_SECONDS = 30.0

log = logging.getLogger("kcmail")


def mailconfigs_path(namespace: str | None) -> str:
    scope = "" if namespace is None else f"/namespaces/{namespace}"
    return f"/apis/{GROUP}/{VERSION}{scope}/{MAILCONFIGS}"


def secret_is_news(uid: str, resource_version: str, applied_version: str | None) -> bool:
    """Whether an event of a Secret carries content its user has not applied (a MailConfig) or resolved (a
    Connection); ``None``: it has none.

    The Secrets listed at start-up, or listed again after the watch lost its place, are mostly the very
    ones their users applied before: running a pass for them would cost every MailConfig a second realm
    read right after its first, and every Connection a check.
    """
    # The Secret's own version is what comes before the bridge's mark (kcmail.bridge.enrolment).
    applied = None if applied_version is None else applied_version.partition(BRIDGE_VERSION_MARK)[0]
    return secret_version(uid, resource_version) != applied


def first_pass_can_wait(obj: MailConfigObject) -> bool:
    """After the operator starts: whether a MailConfig's first pass may wait for its slot in the interval.

    Only when Kubernetes shows nothing to do: the current generation is Ready and no pass was requested.
    A changed Secret adds the key at once (the start-up listing carries it). Otherwise a restart would
    read every realm at once, and again at each MailConfig's slot moments later: two reads in less than
    an interval, a thousand of them in a burst.
    """
    status = obj.status
    return (status.get("observedGeneration") == obj.generation and condition_true(status, "Ready")
            and obj.annotations.get(REQUESTED_AT) in (None, status.get("lastHandledRequestedAt"))
            and obj.annotations.get(FORCE_APPLY) in (None, status.get("lastHandledForceApply")))


def wants_pass(previous: MailConfigObject, now: MailConfigObject) -> bool:
    """Whether an update of a kept MailConfig asks for a pass: its spec, its deletion or one of the
    WAKING_ANNOTATIONS, never its own status writes."""
    return ((previous.generation, previous.deleting, *(previous.annotations.get(a) for a in WAKING_ANNOTATIONS))
            != (now.generation, now.deleting, *(now.annotations.get(a) for a in WAKING_ANNOTATIONS)))


def interval_seconds(obj: MailConfigObject) -> float:
    try:
        return MailConfigSpec.parse(obj.spec).interval.total_seconds()
    except SpecError:
        return UNPARSED_INTERVAL_SECONDS


def next_slot_in(obj: MailConfigObject, now: float) -> float:
    """Seconds from ``now`` (the wall clock) until the MailConfig's next interval slot."""
    return seconds_to_next_pass(now, datetime.timedelta(seconds=interval_seconds(obj)), phase(obj.uid))


def finalizer_added(obj: MailConfigObject) -> list[dict[str, Any]]:
    """The JSON patch that adds kcmail's finalizer, refused (HTTP 422) if the object changed since seen."""
    if obj.finalizers:
        return [{"op": "test", "path": "/metadata/finalizers", "value": list(obj.finalizers)},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": obj.resource_version},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]


def finalizer_removed(obj: MailConfigObject) -> list[dict[str, Any]]:
    """The JSON patch that removes kcmail's finalizer where the object was seen to hold it."""
    index = obj.finalizers.index(FINALIZER)
    return [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"}]


@dataclass
class ConnectionHealth:
    """What the Connections' checks found, and which generation of each was last seen."""

    _generations: dict[ConnectionRef, Any] = field(default_factory=dict)
    # Connections whose last check failed: the first MailConfig pass that reaches Keycloak through one has
    # it checked again at once, rather than leaving it failed until the five-minute timer.
    _failing: set[ConnectionRef] = field(default_factory=set)
    _rechecked: dict[ConnectionRef, float] = field(default_factory=dict)

    def checked(self, key: ConnectionRef, status: Mapping[str, Any]) -> None:
        """Remember whether a Connection's check (its new ``status``) found it Ready."""
        if condition_true(status, "Ready"):
            self._failing.discard(key)
        else:
            self._failing.add(key)

    def recheck_after_pass(self, key: ConnectionRef, status: Mapping[str, Any], now: float) -> bool:
        """Whether a MailConfig pass that wrote ``status`` proves a failing Connection ``key`` works again:
        its settings are Applied, so it logged in to Keycloak through it. ``now``: a monotonic clock. A
        Connection whose check keeps failing while its MailConfigs succeed (its check needs more than a
        pass does) is checked again at most every RECHECK_SECONDS."""
        if key not in self._failing or not condition_true(status, "Applied"):
            return False
        if now - self._rechecked.get(key, -RECHECK_SECONDS) < RECHECK_SECONDS:
            return False
        self._failing.discard(key)
        self._rechecked[key] = now
        return True

    def changed(self, key: ConnectionRef, generation: Any, *, listed: bool = False) -> bool:
        """True the first time a Connection is seen and whenever its spec changes.

        One ``listed`` at start-up is only remembered: every MailConfig's first pass reads it anyway, and a
        pass for it would double every MailConfig's first pass.
        """
        changed = self._generations.get(key) != generation
        self._generations[key] = generation
        return changed and not listed


@dataclass(frozen=True)
class ConnectionSecretIndices:
    """kopf's indices of the Secrets each Connection refers to: live views, complete once handlers run."""

    namespaced: Any
    cluster: Any


def connection_key(ref: ConnectionRef) -> ConnectionKey:
    return ConnectionKey(ConnectionKind(ref[0]), ref[2], ref[1])


class Reconciler:
    """One pass of a MailConfig, as observe → decide → act, with what the stages share for the operator's
    lifetime (the Kubernetes reads, the Keycloak clients, the Prober). kcmail.observe reads, kcmail.decide
    decides from what was read (pure: every rule of a pass is there), kcmail.act writes and probes as
    decided. The result is a status patch and the Events worth posting; ``Controller.process`` writes them.
    """

    def __init__(self, kube: Kube, clients: KeycloakClients, prober: Prober | None = None,
                 now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC), *,
                 namespaced_connections: bool = True, bridge: Enrolment | None = None) -> None:
        """``namespaced_connections`` False: MailConfigs may use ClusterKeycloakConnections only
        (``kcmail run --no-namespaced-connections``). ``bridge``: the token bridge's enrolment, when this
        kcmail runs with one (``--bridge-url``)."""
        self._kube = kube
        self._clients = clients
        self.connections = ResolvedConnections(kube)
        self._prober = prober
        self._now = now
        self._namespaced_connections = namespaced_connections
        self._bridge = bridge

    async def reconcile(self, obj: MailConfigObject, report: Report | None = None,
                        holders: Holders = lambda realm: ()) -> Result:
        """One pass. When a write or a new generation makes the last probe's results stale, ``report``
        receives the status before the probe runs: Applied is news at once, while the probe may wait for a
        free slot and then for the SMTP server's timeouts. ``holders(realm)``: the MailConfigs of this
        cluster that name that realm (a realm that records no owner waits for the older one that wrote it)."""
        inputs = await observe.inputs(self._kube, self.connections, obj,
                                      namespaced_connections=self._namespaced_connections)
        # googleServiceAccount: the bridge's URL and kcmail's own client credentials, its entry written first.
        inputs = unbridged(inputs) if self._bridge is None else await self._bridge.enrol(obj, inputs)
        result = await self._pass(obj, inputs, report, holders)
        if (self._bridge is not None and isinstance(inputs.spec, MailConfigSpec) and not inputs.spec.suspend
                and settled(obj, result.status)):
            # The realm holds this spec's settings: the bridge clients it no longer uses go.
            current = inputs.credentials.client_id if uses_bridge(inputs.spec) and isinstance(
                inputs.credentials, Credentials) else None
            await self._prune(obj, current)
        return result

    async def _prune(self, obj: MailConfigObject, keep: str | None) -> None:
        assert self._bridge is not None
        try:
            await self._bridge.prune(obj, keep)
        except KubeError as error:
            # The entries serve no realm any more; a later pass takes them out.
            log.warning("%s/%s: could not withdraw entries from the bridge's registry: %s", obj.namespace,
                        obj.name, redact(str(error)))

    async def _pass(self, obj: MailConfigObject, inputs: observe.Inputs, report: Report | None,
                    holders: Holders) -> Result:
        admitted = decide.admit(obj, inputs)
        if isinstance(admitted, decide.Plan):
            return decide.report(obj, admitted, act.Done(), self._now())
        tried = rechecked = None
        async with self._clients.using(admitted.connection) as keycloak:
            # ProbeFirst may ask to probe the candidate, then the realm's current settings, each outside the
            # slot (a probe takes seconds); the realm is read again after each, and a write follows the read.
            for _ in range(3):
                async with observe.keycloak(self._kube, keycloak, obj, admitted.spec, admitted.connection,
                                            holders) as seen:  # the write right after the read it carries back
                    plan = decide.plan(obj, admitted, seen, self._now(), probes=self._prober is not None,
                                       tried=tried, rechecked=rechecked)
                    done = await act.write(keycloak, admitted.spec.realm, plan.write)
                if self._prober is None or (plan.try_first is None and plan.recheck is None):
                    break
                if plan.try_first is not None:
                    tried = await act.probe(self._prober, plan.try_first, obj.id, act.Done(), self._now)
                elif plan.recheck is not None:
                    rechecked = await act.probe(self._prober, plan.recheck, obj.id, act.Done(), self._now)
        for used, outcome in ((plan.use_tried, tried), (plan.use_rechecked, rechecked)):
            if used and outcome is not None:
                done = dataclasses.replace(done, probe=outcome.probe, probed_at=outcome.probed_at)
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
        result = await self._release(obj, inputs)
        if (self._bridge is not None and isinstance(inputs.spec, MailConfigSpec)
                and withdrawn_on_deletion(obj, inputs.spec)):
            await self._prune(obj, None)
        return result

    async def _release(self, obj: MailConfigObject, inputs: observe.Inputs) -> Result:
        release = decide.release(obj, inputs, self._now())
        if isinstance(release, Result):
            return release
        async with self._clients.using(release.connection) as keycloak, \
                observe.realm(keycloak, release.spec.realm) as realm:  # the write right after the read
            done = await act.write(keycloak, release.spec.realm, decide.release_write(obj, release, realm))
        return decide.released(obj, release, realm, done, self._now())


class Controller:
    """The MailConfig watch, the store it fills, the queue and its workers, for the operator's lifetime."""

    def __init__(self, kube: Kube, reconciler: Reconciler, *, namespaces: tuple[str, ...] = (),
                 selector: str = "", workers: int) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.store = MailConfigStore()
        self.queue: WorkQueue[Key] = WorkQueue(MAILCONFIG_KIND)
        self.health = ConnectionHealth()
        self._namespaces = namespaces
        self._selector = selector
        self._workers = workers
        self._relisted: set[Key] = set()
        # Each object's status as this process last wrote it (compact JSON). The watch brings a write back
        # a moment later; a pass that starts sooner must build on it, not on the status before it: which
        # settings were applied and probed, and what the probe found, decide what the next pass does.
        self._written: dict[Key, bytes] = {}
        # Set once every watched namespace's MailConfigs were listed: the Secret watch needs a full store.
        self.listed = asyncio.Event()
        self._listings_left = len(namespaces) or 1
        self._tasks: list[asyncio.Future[None]] = []
        # Checks a Connection now and writes its status (kcmail.handlers, where kopf's Connection checks are).
        self.recheck_connection: Callable[[ConnectionRef], Awaitable[None]] | None = None

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.queue.start(self.process, self._workers)
        self._tasks.append(asyncio.create_task(self._watch(), name="kcmail: MailConfig watch"))

    def start_task(self, coroutine: Awaitable[None], name: str) -> None:
        """Run ``coroutine`` until the controller stops."""
        self._tasks.append(asyncio.ensure_future(coroutine))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.stop()
        log.info("MailConfig watch and work queue stopped")

    async def _watch(self) -> None:
        await self.kube.logged_in()

        def list_page(path: str, continue_token: str | None) -> Any:
            return self.kube.list_objects(path, limit=PAGE_SIZE, continue_token=continue_token,
                                          selector=self._selector)

        def watch_lines(path: str, version: str) -> Any:
            return self.kube.watch_objects(path, resource_version=version, timeout_seconds=WATCH_SECONDS,
                                           selector=self._selector)

        paths = tuple(mailconfigs_path(namespace) for namespace in self._namespaces or (None,))
        await ListWatch("MailConfig watch", paths, list_page, watch_lines, self.on_mailconfig,
                        self.on_listed).run()

    # --- events become keys -----------------------------------------------------------------------------

    async def on_mailconfig(self, event_type: str, body: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self._gone(Key(**{k: str((body.get("metadata") or {}).get(k, "")) for k in ("namespace", "name", "uid")}))
            return
        key, previous, obj = self.store.put(body)
        written = self._written.get(key)
        if written is not None and json.loads(written) == obj.status:
            del self._written[key]  # the watch brought this process's last status write back
        if event_type == RELISTED:
            self._relisted.add(key)
        if previous is None:
            if event_type == LISTED and not obj.deleting and first_pass_can_wait(obj):
                self.queue.add_after(key, next_slot_in(obj, time.time()))
            else:
                self.queue.add(key)
        elif wants_pass(previous, obj):
            self.queue.add(key)

    async def on_listed(self, path: str, event_type: str) -> None:
        if event_type == RELISTED:
            # Deleted while the watch had lost its place: the listing no longer holds them.
            namespace = path.split("/namespaces/", 1)[1].split("/", 1)[0] if "/namespaces/" in path else None
            for key in self.store.all_keys():
                if (namespace is None or key.namespace == namespace) and key not in self._relisted:
                    self._gone(key)
            self._relisted = {key for key in self._relisted if namespace is not None and key.namespace != namespace}
        elif not self.listed.is_set():
            self._listings_left -= 1
            if self._listings_left <= 0:
                log.info("MailConfig watch: %d MailConfigs listed", len(self.store))
                self.listed.set()

    def _gone(self, key: Key) -> None:
        obj = self.store.remove(key)
        self._written.pop(key, None)
        self.queue.forget(key)
        metrics.forget(key.namespace, key.name)
        if obj is not None:
            # A realm's owner released it when it was finalized: the others that name the realm may claim it.
            for other in self.store.realm_users(str(obj.spec.get("realm", ""))):
                self.queue.add(other)

    def wake(self, key: Key) -> None:
        self.queue.add(key)

    async def on_secret(self, indices: ConnectionSecretIndices, event: SecretEvent) -> None:
        # Every Secret in the watched namespaces streams through here; only referenced ones matter.
        for key, applied in self.store.secret_users(event.namespace, event.name):
            if secret_is_news(event.uid, event.resource_version, applied):
                self.queue.add(key)
        if event.type is SecretEventType.LISTED:
            # Listed at start-up: each Connection's own start-up check and each first pass read it.
            return
        # A Connection's admin credentials or CA: fixing them must not wait for the next timer or interval.
        for index in (indices.namespaced, indices.cluster):
            for ref in index.get((event.namespace, event.name), []):
                connection = connection_key(ref)
                resolved = self.reconciler.connections.resolved_version(connection, event.namespace, event.name)
                if not secret_is_news(event.uid, event.resource_version, resolved):
                    continue  # its passes already resolved this very version
                self.reconciler.connections.forget(connection)
                if self.recheck_connection is not None:
                    await self.recheck_connection(ref)
                for key in self.store.connection_users(ref):
                    self.queue.add(key)

    def on_connection(self, ref: ConnectionRef, generation: Any, *, listed: bool) -> None:
        """A Connection's event: its spec changes reach every MailConfig using it; its status writes do not."""
        # Any change may matter to a resolved Connection (its spec, or its deletion); reading it again is cheap.
        self.reconciler.connections.forget(connection_key(ref))
        if self.health.changed(ref, generation, listed=listed):
            for key in self.store.connection_users(ref):
                self.queue.add(key)

    # --- the pass ---------------------------------------------------------------------------------------

    async def process(self, key: Key) -> Next:
        """One pass of ``key``'s object as last seen; returns when the queue should run it next."""
        obj = self.store.latest(key)
        if obj is None:
            return Requeue()
        written = self._written.get(key)
        if written is not None:
            # Only kcmail writes status, and only while it leads: what it wrote last is the status now.
            obj = dataclasses.replace(obj, status=json.loads(written))
        # What the API holds of the status: _report keeps it up to date with each write of this pass.
        reported = dict(obj.status)
        try:
            return await self._process(obj, reported)
        finally:
            if reported != obj.status and self.store.latest(key) is not None:
                self._written[key] = json.dumps(reported, separators=(",", ":")).encode()

    async def _process(self, obj: MailConfigObject, reported: dict[str, Any]) -> Next:
        if obj.deleting:
            return await self._finalize(obj, reported)
        if FINALIZER not in obj.finalizers:
            try:
                # Before anything is written to Keycloak: from then on, its deletion waits for kcmail.
                await self.kube.patch_json(MAILCONFIGS, obj.name, obj.namespace, finalizer_added(obj))
            except KubeError as error:
                # 422: changed since seen (its event brings the new state); 404: gone. Both pass soon.
                log.info("MailConfig %s: cannot add the finalizer yet: %s", obj.id, error)
                return Retry(cap=interval_seconds(obj))
        started = time.monotonic()
        try:
            result = await self.reconciler.reconcile(
                obj, report=lambda interim: self._report(obj, reported, interim), holders=self.store.holders)
            await self._report(obj, reported, result)
        except Exception as error:  # the unforeseen, or a status the API server refused: said, and retried
            log.warning("MailConfig %s: reconcile failed, retrying: %s: %s", obj.id, type(error).__name__, error)
            metrics.record_failed_pass(time.monotonic() - started)
            await self._report_failure(obj, reported, error)
            return Retry(cap=interval_seconds(obj))
        log.info("MailConfig %s: reconciled: %s", obj.id, result.summary())
        metrics.record_pass(obj.namespace, obj.name, result.status, obj.status, wrote=result.wrote,
                            seconds=time.monotonic() - started)
        await self._recheck_if_reached(obj, result.status)
        if result.retry:
            return Retry(cap=interval_seconds(obj))
        return Requeue(after=next_slot_in(obj, time.time()))

    async def _finalize(self, obj: MailConfigObject, reported: dict[str, Any]) -> Next:
        """Deletion: the reconciler releases the realm, then the finalizer goes and Kubernetes deletes it."""
        if FINALIZER not in obj.finalizers:
            return Requeue()  # never acted on, or already released: nothing holds it
        try:
            result = await self.reconciler.finalize(obj)
        except Exception as error:  # said in the status like any pass's failure, and tried again
            log.warning("MailConfig %s: finalizing failed, retrying: %s: %s", obj.id, type(error).__name__, error)
            result = self.reconciler.failed(obj, error)
        try:
            await self._report(obj, reported, result)
        except KubeError as error:
            log.warning("MailConfig %s: cannot write its deletion's status: %s", obj.id, error)
        if result.retry:
            log.info("MailConfig %s: waiting for Keycloak to clear the realm's SMTP settings", obj.id)
            return Retry(cap=FINALIZE_RETRY_SECONDS)
        try:
            await self.kube.patch_json(MAILCONFIGS, obj.name, obj.namespace, finalizer_removed(obj))
        except KubeError as error:
            if error.status == 404:
                return Requeue()
            log.info("MailConfig %s: cannot remove the finalizer yet: %s", obj.id, error)
            return Retry(cap=FINALIZE_RETRY_SECONDS)
        return Requeue()

    async def _recheck_if_reached(self, obj: MailConfigObject, status: Mapping[str, Any]) -> None:
        """A pass that applied its settings logged in through its Connection: a Connection whose last check
        failed (Keycloak down, say) is checked again now, so its status recovers with its MailConfigs."""
        ref = used_connection(obj.namespace, obj.spec)
        if self.recheck_connection is None or not self.health.recheck_after_pass(ref, status, time.monotonic()):
            return
        try:
            await self.recheck_connection(ref)
        except Exception as error:  # the timer checks it again; the MailConfig's pass must end well
            log.warning("Connection %s: the check after recovery failed: %s: %s", ref[2], type(error).__name__,
                        error)

    async def _report_failure(self, obj: MailConfigObject, reported: dict[str, Any], error: Exception) -> None:
        """Put a failed pass in the status (InternalError); when even that fails, the log line is all."""
        try:
            await self._report(obj, reported, self.reconciler.failed(obj, error))
        except Exception as again:
            log.warning("MailConfig %s: cannot write the failure to its status: %s: %s", obj.id,
                        type(again).__name__, again)

    async def _report(self, obj: MailConfigObject, reported: dict[str, Any], result: Result) -> None:
        """Patch the status keys that differ from ``reported`` (what the API holds), then post the Events."""
        if any(reported.get(k) != v for k, v in result.status.items()):
            await self.kube.patch_status(MAILCONFIGS, obj.name, obj.namespace, result.status)
            reported.update(result.status)
        for event in result.events:
            message = redact(event.message, limit=conditions.MESSAGE_LIMIT)
            level = logging.INFO if event.type == "Normal" else logging.WARNING
            log.log(level, "MailConfig %s: %s: %s", obj.id, event.reason, message)
            try:
                await self.kube.post_event(event_body(obj, event.type, event.reason, message))
            except KubeError as error:  # an Event is news, not state: the status already says it
                log.warning("MailConfig %s: cannot post its %s Event: %s", obj.id, event.reason, error)


def event_body(obj: MailConfigObject, kind: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about the MailConfig ``obj``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"namespace": obj.namespace, "generateName": f"{obj.name}."},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": MAILCONFIG_KIND, "namespace": obj.namespace,
                           "name": obj.name, "uid": obj.uid},
        "type": kind, "reason": reason, "message": message,
        "source": {"component": "kcmail"}, "reportingComponent": "kcmail", "reportingInstance": "kcmail",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
