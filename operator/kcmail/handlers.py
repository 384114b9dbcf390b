"""kopf registrations: settings, indices, the per-MailConfig loop and the events that wake it, including
the Secret events of kcmail's own watch (kcmail.secretwatch), which need kopf's indices.

Each MailConfig has one loop that runs the reconcile, so reconciles of one object never overlap; it is
kcmail's own task (kcmail.loops says why it is not a kopf daemon). Its events start it, events of what it
uses (its own spec or annotation, a referenced Secret or Connection) only wake it, and its deletion stops
it before the realm is cleared.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import kopf

from kcmail import conditions, loops, metrics
from kcmail.answers import TOKEN_ANSWER_LIMIT, limited_client
from kcmail.apisession import bounded_session, connection_limit, login_info, rotating_token_file
from kcmail.connections import ConnectionKey, KeycloakClients, secret_refs, tls_context
from kcmail.kube import MAILCONFIG_KIND, MAILCONFIGS, PLURALS, Kube
from kcmail.oauth import TokenClient
from kcmail.probes import Prober
from kcmail.reconcile import Holder, MailConfigObject, Reconciler, Result, check_connection
from kcmail.redact import redact
from kcmail.runtime import (
    OperatorOptions,
    Runtime,
    backoff,
    condition_true,
    first_pass_can_wait,
    secret_is_news,
)
from kcmail.schedule import phase, seconds_to_next_pass
from kcmail.secretwatch import SecretEvent, SecretEventType, SecretWatch
from kcmail.spec import GROUP, VERSION, ConnectionKind, MailConfigSpec, SpecError

OPTIONS = OperatorOptions()
_runtime: Runtime | None = None
log = logging.getLogger("kcmail")


def configure(options: OperatorOptions) -> None:
    """Set by ``kcmail run`` before kopf starts."""
    global OPTIONS
    OPTIONS = options


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation, for the Connections only.

    kopf keeps the spec it last handled, to tell creations from updates for on.create/on.update
    handlers. MailConfigs have none (their loop compares the realm itself), so storing it would cost
    one more PATCH per creation and per spec change, and a copy of the spec in every object. For them
    the stored essence is always the current one: every event is a no-op cause for kopf, while
    deletion (told by the deletionTimestamp) works as before.
    """

    def fetch(self, *, body: kopf.Body) -> Any:
        if body.get("kind") == MAILCONFIG_KIND:
            return self.build(body=body)
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        if body.get("kind") != MAILCONFIG_KIND:
            super().store(body=body, patch=patch, essence=essence)


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the operator has not started")
    return _runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    settings.persistence.finalizer = "kcmail.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kcmail.io")
    settings.persistence.diffbase_storage = DiffBaseStorage(prefix="kcmail.io")
    settings.posting.level = logging.WARNING
    # Reconnect a watch that went silent; bookmarks keep a healthy one talking.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    kube = Kube()
    clients = KeycloakClients(ca_bundle=OPTIONS.ca_bundle, concurrency=OPTIONS.keycloak_concurrency)
    # Token endpoints and SMTP servers are trusted like Keycloak's: system CAs plus the operator's bundle.
    probe_tls = tls_context(OPTIONS.ca_bundle, "")
    probe_http = limited_client(TOKEN_ANSWER_LIMIT, verify=probe_tls, timeout=httpx.Timeout(15.0, connect=10.0))
    prober = Prober(TokenClient(probe_http), probe_tls, OPTIONS.probe_concurrency)
    reconciler = Reconciler(kube, clients, prober, namespaced_connections=OPTIONS.namespaced_connections)
    _runtime = Runtime(kube=kube, clients=clients, reconciler=reconciler, probe_http=probe_http)


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession:
    # One session with a bounded pool carries kopf's requests and kcmail's own (kcmail.kube).
    context = bounded_session(login_info(**kwargs), connection_limit(OPTIONS.namespaces))
    runtime().kube.use(context.aiohttp_session, context.server, token_file=rotating_token_file())
    return context


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _runtime is not None:
        if _runtime.secret_watch is not None:
            _runtime.secret_watch.cancel()
            await asyncio.gather(_runtime.secret_watch, return_exceptions=True)
        await asyncio.gather(*(_runtime.stop_loop(key) for key in _runtime.loops.running_keys()))
        await _runtime.clients.aclose()
        await _runtime.probe_http.aclose()


@kopf.on.probe(id="keycloak-clients")
async def liveness(**_: Any) -> str:
    return "ok" if _runtime is not None else "starting"


# --- indices: populated before any handler runs, so no MailConfig acts on a half-known cluster ----------
# Handlers that never block are async: kopf runs a sync handler in a worker thread, and a start-up listing
# of a thousand MailConfigs and their Secrets would hop threads several thousand times.

@kopf.index(GROUP, VERSION, MAILCONFIGS)
async def realm_users(namespace: str, name: str, uid: str, meta: Any, spec: Any, status: Any,
                      **_: Any) -> dict[str, tuple[Any, ...]]:
    # Whom to wake when a realm's owner is deleted and takes its record away, and, for a realm that records
    # no owner yet, who wrote it first (Reconciler._unrecorded_holder). Who owns a recorded realm is decided
    # by the realm's own record (kcmail.ownership), never by this index.
    ref = spec.get("connectionRef") or {}
    applied = condition_true(status, "Applied")
    return {spec.get("realm", ""): (namespace, name, uid, meta.get("creationTimestamp", ""),
                                    ref.get("kind", ConnectionKind.CLUSTER.value), ref.get("name", ""), applied)}


def _holders(realm_users: kopf.Index) -> Callable[[str], list[Holder]]:
    def holders(realm: str) -> list[Holder]:
        # A kind that is no ConnectionKind (an object that bypassed validation) holds nothing.
        return [Holder(namespace=ns, name=name, uid=uid, created=created, connection_kind=ConnectionKind(kind),
                       connection_name=connection, applied=applied)
                for ns, name, uid, created, kind, connection, applied in realm_users.get(realm, [])
                if kind in ConnectionKind.__members__.values()]
    return holders


@kopf.index(GROUP, VERSION, MAILCONFIGS)
async def secret_users(namespace: str, name: str, spec: Any, status: Any,
                       **_: Any) -> dict[Any, tuple[str, Any]] | None:
    try:
        secret = MailConfigSpec.parse(spec).auth.secret_name
    except SpecError:
        return None
    return {(namespace, secret): (f"{namespace}/{name}", status.get("appliedSecretVersion"))} if secret else None


@kopf.index(GROUP, VERSION, MAILCONFIGS)
async def connection_users(namespace: str, name: str, spec: Any, **_: Any) -> dict[Any, str]:
    return {_used_connection(namespace, spec): f"{namespace}/{name}"}


def _used_connection(namespace: str, spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """The index key of the Connection a MailConfig's spec refers to: (kind, namespace or None, name)."""
    ref = spec.get("connectionRef") or {}
    kind = ref.get("kind", ConnectionKind.CLUSTER.value)
    return kind, namespace if kind == ConnectionKind.NAMESPACED.value else None, ref.get("name")


@kopf.index(GROUP, VERSION, "keycloakconnections")
async def namespaced_connection_secrets(namespace: str, name: str, spec: Any, **_: Any) -> dict[Any, tuple[Any, ...]]:
    key = (ConnectionKind.NAMESPACED.value, namespace, name)
    return {ref: key for ref in secret_refs(ConnectionKind.NAMESPACED, spec, namespace)}


@kopf.index(GROUP, VERSION, "clusterkeycloakconnections")
async def cluster_connection_secrets(name: str, spec: Any, **_: Any) -> dict[Any, tuple[Any, ...]]:
    key = (ConnectionKind.CLUSTER.value, None, name)
    return {ref: key for ref in secret_refs(ConnectionKind.CLUSTER, spec, None)}


# --- the MailConfig loop ----------------------------------------------------------------------------

async def mailconfig_loop(rt: Runtime, key: str, holders: Callable[[str], list[Holder]]) -> None:
    """One MailConfig's passes, one at a time, until its loop is stopped (see kcmail.loops)."""
    waker = rt.waker(key)
    attempt = 0
    obj = rt.loops.latest(key)
    try:
        if obj is None:
            return
        log.debug("MailConfig %s: loop started", key)
        if not waker.is_set() and first_pass_can_wait(obj.status, obj.generation, obj.annotations):
            await loops.sleep(waker, _next_delay(obj, 0))
        while not rt.loops.stopping(key) and (obj := rt.loops.latest(key)) is not None:
            waker.clear()
            started = time.monotonic()
            reported = dict(obj.status)
            try:
                result = await rt.reconciler.reconcile(obj, report=functools.partial(_report, rt, obj, reported),
                                                       holders=holders)
                await _report(rt, obj, reported, result)
            except Exception as error:  # the loop must outlive any one failed pass
                # The unforeseen, or a status the API server refused: retried with backoff, and said in the
                # status when the API server takes it. Only the type and the (redacted) text are logged.
                log.warning("MailConfig %s: reconcile failed, retrying: %s: %s", obj.id, type(error).__name__, error)
                metrics.record_failed_pass(time.monotonic() - started)
                attempt += 1
                await _report_failure(rt, obj, reported, error)
            else:
                log.info("MailConfig %s: reconciled: %s", obj.id, result.summary())
                metrics.record_pass(obj.namespace, obj.name, result.status, obj.status, wrote=result.wrote,
                                    seconds=time.monotonic() - started)
                attempt = attempt + 1 if result.retry else 0
                await _recheck_if_reached(rt, obj, result.status)
            if rt.loops.stopping(key):
                break
            delay = _next_delay(obj, attempt)
            if attempt:
                log.info("MailConfig %s: retry %d in %.1f s", obj.id, attempt, delay)
            await loops.sleep(waker, delay)
    finally:
        log.debug("MailConfig %s: loop stopped", key)
        rt.forget(key)
        namespace, _, name = key.partition("/")
        metrics.forget(namespace, name)


async def _recheck_if_reached(rt: Runtime, obj: MailConfigObject, status: Mapping[str, Any]) -> None:
    """A pass that applied its settings logged in through its Connection: a Connection whose last check
    failed (Keycloak down, say) is checked again now, so its status recovers with its MailConfigs."""
    key = _used_connection(obj.namespace, obj.spec)
    if not rt.recheck_after_pass(key, status, time.monotonic()):
        return
    try:
        await _recheck_connection(rt, key)
    except Exception as error:  # the timer checks it again; the MailConfig's loop must go on
        log.warning("Connection %s: the check after recovery failed: %s: %s", key[2], type(error).__name__, error)


async def _report_failure(rt: Runtime, obj: MailConfigObject, reported: dict[str, Any], error: Exception) -> None:
    """Put a failed pass in the status (InternalError); when even that fails, the log line above is all."""
    try:
        await _report(rt, obj, reported, rt.reconciler.failed(obj, error))
    except Exception as again:
        log.warning("MailConfig %s: cannot write the failure to its status: %s: %s", obj.id,
                    type(again).__name__, again)


def _next_delay(obj: MailConfigObject, attempt: int) -> float:
    try:
        interval = MailConfigSpec.parse(obj.spec).interval
    except SpecError:
        return 600.0
    if attempt:
        return backoff(attempt, interval)
    return seconds_to_next_pass(time.time(), interval, phase(obj.uid))


async def _report(rt: Runtime, obj: MailConfigObject, reported: dict[str, Any], result: Result) -> None:
    """Patch the status keys that differ from ``reported`` (what the API holds), then post the Events."""
    if any(reported.get(k) != v for k, v in result.status.items()):
        await rt.kube.patch_status(MAILCONFIGS, obj.name, obj.namespace, result.status)
        reported.update(result.status)
    for event in result.events:
        message = redact(event.message, limit=conditions.MESSAGE_LIMIT)
        kopf.event(_event_target(obj), type=event.type, reason=event.reason, message=message)
        level = logging.INFO if event.type == "Normal" else logging.WARNING
        log.log(level, "MailConfig %s: %s: %s", obj.id, event.reason, message)


def _event_target(obj: MailConfigObject) -> dict[str, Any]:
    """What kopf needs to name the MailConfig in an Event."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": MAILCONFIG_KIND,
            "metadata": {"namespace": obj.namespace, "name": obj.name, "uid": obj.uid}}


# --- what starts, wakes and stops a loop --------------------------------------------------------------

@kopf.on.event(GROUP, VERSION, MAILCONFIGS)
async def mailconfig_changed(body: kopf.Body, namespace: str, name: str, type: str | None, spec: Any, meta: Any,
                             realm_users: kopf.Index, **kwargs: Any) -> None:
    rt = runtime()
    _watch_secrets(rt, kwargs, realm_users=realm_users)
    key = f"{namespace}/{name}"
    if type == "DELETED":
        await rt.stop_loop(key)
        # A realm's owner released it when it was finalized: the others that name the realm may claim it now.
        for holder in _holders(realm_users)(spec.get("realm", "")):
            rt.wake(holder.id)
        return
    rt.loops.keep(key, body)
    if meta.get("deletionTimestamp"):
        return  # mailconfig_deleted stops the loop, then clears the realm
    rt.wake_on_change(key, body)
    if not rt.loops.running(key):
        rt.loops.start(key, mailconfig_loop(rt, key, _holders(realm_users)))


@dataclass(frozen=True)
class SecretIndices:
    """The indices that say who refers to a Secret: kopf's live views, complete once handlers run."""

    secret_users: kopf.Index
    connection_users: kopf.Index
    namespaced_connection_secrets: kopf.Index
    cluster_connection_secrets: kopf.Index

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> SecretIndices:
        """From a handler's keyword arguments: kopf hands every index to every handler by its name."""
        return cls(**{name: kwargs[name] for name in cls.__dataclass_fields__})


def _watch_secrets(rt: Runtime, kwargs: Mapping[str, Any], **named_indices: kopf.Index) -> None:
    """Start the Secret watch (kcmail.secretwatch) with the first object kopf hands to a handler.

    kopf calls handlers only once every index is complete, so a Secret listed then finds every MailConfig
    and Connection that refers to it. With neither in the cluster, no Secret matters yet. ``named_indices``:
    those the calling handler takes as named parameters, so that they are not in its ``kwargs``.
    """
    if rt.secret_watch is None:
        on_event = functools.partial(secret_changed, rt, SecretIndices.of({**kwargs, **named_indices}))
        # The task keeps a copy of this handler's context, and so one object's body: as the loops do.
        rt.secret_watch = asyncio.create_task(SecretWatch(rt.kube, OPTIONS.namespaces, on_event).run(),
                                              name="kcmail: Secret watch")


async def secret_changed(rt: Runtime, indices: SecretIndices, event: SecretEvent) -> None:
    # Every Secret in the watched namespaces streams through here; only referenced ones matter.
    for user, applied in indices.secret_users.get((event.namespace, event.name), []):
        if secret_is_news(event.uid, event.resource_version, applied):
            rt.wake(user)
    if event.type is SecretEventType.LISTED:
        # Listed at start-up: each Connection's own start-up check and each loop's first pass read it.
        return
    # A Connection's admin credentials or CA: fixing them must not wait for the next timer or interval.
    for index in (indices.namespaced_connection_secrets, indices.cluster_connection_secrets):
        for key in index.get((event.namespace, event.name), []):
            connection = _connection_key(key)
            resolved = rt.reconciler.connections.resolved_version(connection, event.namespace, event.name)
            if not secret_is_news(event.uid, event.resource_version, resolved):
                # Its passes already resolved this very version: a relisting brought nothing new.
                continue
            rt.reconciler.connections.forget(connection)
            await _recheck_connection(rt, key)
            for user in indices.connection_users.get(key, []):
                rt.wake(user)


@kopf.on.event(GROUP, VERSION, "keycloakconnections")
async def namespaced_connection_changed(body: kopf.Body, namespace: str, name: str, type: str | None,
                                        connection_users: kopf.Index, **kwargs: Any) -> None:
    _watch_secrets(runtime(), kwargs, connection_users=connection_users)
    _wake_users(body, type, connection_users, (ConnectionKind.NAMESPACED.value, namespace, name))


@kopf.on.event(GROUP, VERSION, "clusterkeycloakconnections")
async def cluster_connection_changed(body: kopf.Body, name: str, type: str | None,
                                     connection_users: kopf.Index, **kwargs: Any) -> None:
    _watch_secrets(runtime(), kwargs, connection_users=connection_users)
    _wake_users(body, type, connection_users, (ConnectionKind.CLUSTER.value, None, name))


def _wake_users(body: kopf.Body, event_type: str | None, connection_users: kopf.Index, key: tuple[Any, ...]) -> None:
    # A spec change reaches every MailConfig using the Connection; its own status writes do not.
    rt = runtime()
    # Any change may matter to a resolved Connection (its spec, or its deletion); reading it again is cheap.
    rt.reconciler.connections.forget(_connection_key(key))
    # kopf marks the objects of its start-up listing with the event type None.
    if not rt.connection_changed(key, body.get("metadata", {}).get("generation"), listed=event_type is None):
        return
    for user in connection_users.get(key, []):
        rt.wake(user)


def _connection_key(key: tuple[Any, ...]) -> ConnectionKey:
    # The indices key Connections by (kind, namespace, name) tuples, which kopf can store.
    return ConnectionKey(ConnectionKind(key[0]), key[2], key[1])


# --- deletion ---------------------------------------------------------------------------------------

@kopf.on.delete(GROUP, VERSION, MAILCONFIGS)
async def mailconfig_deleted(body: kopf.Body, **_: Any) -> None:
    rt = runtime()
    obj = MailConfigObject.from_body(body)
    # Its loop first: a pass in flight must not write the realm while it is being cleared.
    await rt.stop_loop(obj.id)
    try:
        result = await rt.reconciler.finalize(obj)
    except Exception as error:  # said in the status like any pass's failure; kopf retries the deletion
        log.warning("MailConfig %s: finalizing failed, retrying: %s: %s", obj.id, type(error).__name__, error)
        result = rt.reconciler.failed(obj, error)
    await _report(rt, obj, dict(obj.status), result)
    if result.retry:
        raise kopf.TemporaryError("waiting for Keycloak to clear the realm's SMTP settings", delay=15)


# --- connections: reachable, logged in, which version -------------------------------------------------

CONNECTION_CHECK_SECONDS = 300.0


async def _recheck_connection(rt: Runtime, key: tuple[Any, ...]) -> None:
    kind, namespace, name = ConnectionKind(key[0]), key[1], key[2]
    body = await rt.kube.connection(kind, name, namespace)
    if body is None:
        return
    status = await _connection_status(rt, kind, body)
    rt.connection_checked(key, status)
    if any((body.get("status") or {}).get(k) != v for k, v in status.items()):
        await rt.kube.patch_status(PLURALS[kind], name, namespace, status)


async def _check(kind: ConnectionKind, body: kopf.Body, patch: kopf.Patch) -> None:
    rt = runtime()
    status = await _connection_status(rt, kind, body)
    meta = body.get("metadata", {})
    rt.connection_checked((kind.value, meta.get("namespace") if kind is ConnectionKind.NAMESPACED else None,
                           meta.get("name")), status)
    if any((body.get("status") or {}).get(k) != v for k, v in status.items()):
        patch.status.update(status)


async def _connection_status(rt: Runtime, kind: ConnectionKind, body: Mapping[str, Any]) -> dict[str, Any]:
    refused = kind is ConnectionKind.NAMESPACED and not OPTIONS.namespaced_connections
    return await check_connection(rt.kube, rt.clients, kind, body, datetime.datetime.now(datetime.UTC),
                                  refused=refused)


@kopf.on.resume(GROUP, VERSION, "keycloakconnections")
@kopf.on.create(GROUP, VERSION, "keycloakconnections")
@kopf.on.update(GROUP, VERSION, "keycloakconnections")
@kopf.timer(GROUP, VERSION, "keycloakconnections", interval=CONNECTION_CHECK_SECONDS, initial_delay=30)
async def namespaced_connection_check(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await _check(ConnectionKind.NAMESPACED, body, patch)


@kopf.on.resume(GROUP, VERSION, "clusterkeycloakconnections")
@kopf.on.create(GROUP, VERSION, "clusterkeycloakconnections")
@kopf.on.update(GROUP, VERSION, "clusterkeycloakconnections")
@kopf.timer(GROUP, VERSION, "clusterkeycloakconnections", interval=CONNECTION_CHECK_SECONDS, initial_delay=30)
async def cluster_connection_check(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await _check(ConnectionKind.CLUSTER, body, patch)
