"""kopf registrations: the operator's settings and lifecycle, and the Connections.

MailConfigs are not kopf's: kcmail.controller watches them, turns their events and those of the Secrets
and Connections they use into keys of its work queue, and runs the passes. What kopf serves here is the
login, start-up and clean-up, the Connections' checks (on change and every five minutes), and the
indices of the Secrets each Connection refers to, which the Secret watch (kcmail.secretwatch) needs.
"""

from __future__ import annotations

import datetime
import functools
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import kopf

from kcmail import leader
from kcmail.answers import TOKEN_ANSWER_LIMIT, limited_client
from kcmail.apisession import bounded_session, connection_limit, login_info, rotating_token_file
from kcmail.bridge.enrolment import Enrolment
from kcmail.connection_status import check_connection
from kcmail.connections import KeycloakClients, secret_refs, tls_context
from kcmail.controller import ConnectionSecretIndices, Controller, Reconciler
from kcmail.kube import PLURALS, Kube
from kcmail.oauth import TokenClient
from kcmail.options import OperatorOptions
from kcmail.probes import Prober
from kcmail.secretwatch import SecretWatch
from kcmail.spec import GROUP, VERSION, ConnectionKind
from kcmail.store import ConnectionRef

OPTIONS = OperatorOptions()
log = logging.getLogger("kcmail")


def configure(options: OperatorOptions) -> None:
    """Set by ``kcmail run`` before kopf starts."""
    global OPTIONS
    OPTIONS = options


class Runtime:
    """What the operator holds for its lifetime: its clients and the controller."""

    def __init__(self, options: OperatorOptions) -> None:
        self.kube = Kube()
        self.clients = KeycloakClients(ca_bundle=options.ca_bundle, concurrency=options.keycloak_concurrency)
        # Token endpoints and SMTP servers are trusted like Keycloak's: system CAs plus the operator's bundle.
        probe_tls = tls_context(options.ca_bundle, "")
        self.probe_http = limited_client(TOKEN_ANSWER_LIMIT, verify=probe_tls,
                                         timeout=httpx.Timeout(15.0, connect=10.0))
        prober = Prober(TokenClient(self.probe_http), probe_tls, options.probe_concurrency)
        bridge = None if options.bridge is None else Enrolment(self.kube, options.bridge)
        reconciler = Reconciler(self.kube, self.clients, prober, namespaced_connections=options.namespaced_connections,
                                bridge=bridge)
        self.controller = Controller(self.kube, reconciler, namespaces=options.namespaces,
                                     selector=options.mailconfig_selector, workers=options.workers)
        self.controller.recheck_connection = functools.partial(_recheck_connection, self)
        self.secret_watch_started = False

    async def aclose(self) -> None:
        await self.controller.stop()
        await self.clients.aclose()
        await self.probe_http.aclose()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the operator has not started")
    return _runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    settings.persistence.finalizer = "kcmail.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kcmail.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kcmail.io")
    settings.posting.level = logging.WARNING
    # Reconnect a watch that went silent; bookmarks keep a healthy one talking.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    _runtime = Runtime(OPTIONS)
    _runtime.controller.start()


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession:
    # One session with a bounded pool carries kopf's requests and kcmail's own (kcmail.kube).
    context = bounded_session(login_info(**kwargs), connection_limit(OPTIONS.namespaces))
    runtime().kube.use(context.aiohttp_session, context.server, token_file=rotating_token_file())
    return context


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _runtime is not None:
        await _runtime.aclose()
    # kopf's handlers and kcmail's work queue have stopped: nothing acts any more, so a follower may.
    await leader.step_down()


@kopf.on.probe(id="keycloak-clients")
async def liveness(**_: Any) -> str:
    return "ok" if _runtime is not None else "starting"


# --- Connections: the Secrets they refer to, and their events ------------------------------------------
# Handlers that never block are async: kopf runs a sync handler in a worker thread.

@kopf.index(GROUP, VERSION, "keycloakconnections")
async def namespaced_connection_secrets(namespace: str, name: str, spec: Any, **_: Any) -> dict[Any, tuple[Any, ...]]:
    key = (ConnectionKind.NAMESPACED.value, namespace, name)
    return {ref: key for ref in secret_refs(ConnectionKind.NAMESPACED, spec, namespace)}


@kopf.index(GROUP, VERSION, "clusterkeycloakconnections")
async def cluster_connection_secrets(name: str, spec: Any, **_: Any) -> dict[Any, tuple[Any, ...]]:
    key = (ConnectionKind.CLUSTER.value, None, name)
    return {ref: key for ref in secret_refs(ConnectionKind.CLUSTER, spec, None)}


def _watch_secrets(rt: Runtime, namespaced: kopf.Index, cluster: kopf.Index) -> None:
    """Start the Secret watch (kcmail.secretwatch) with the first Connection kopf hands to a handler.

    kopf calls handlers only once its indices are complete, so a Secret listed then finds every Connection
    that refers to it; the watch also waits for the MailConfigs' first listing. With no Connection in the
    cluster no MailConfig can apply anything, and no Secret matters yet.
    """
    if rt.secret_watch_started:
        return
    rt.secret_watch_started = True
    controller = rt.controller
    indices = ConnectionSecretIndices(namespaced=namespaced, cluster=cluster)

    async def watch() -> None:
        await controller.listed.wait()
        await SecretWatch(rt.kube, OPTIONS.namespaces, functools.partial(controller.on_secret, indices)).run()

    controller.start_task(watch(), "kcmail: Secret watch")


@kopf.on.event(GROUP, VERSION, "keycloakconnections")
async def namespaced_connection_changed(body: kopf.Body, namespace: str, name: str, type: str | None,
                                        namespaced_connection_secrets: kopf.Index,
                                        cluster_connection_secrets: kopf.Index, **_: Any) -> None:
    rt = runtime()
    _watch_secrets(rt, namespaced_connection_secrets, cluster_connection_secrets)
    # kopf marks the objects of its start-up listing with the event type None.
    rt.controller.on_connection((ConnectionKind.NAMESPACED.value, namespace, name),
                                body.get("metadata", {}).get("generation"), listed=type is None)


@kopf.on.event(GROUP, VERSION, "clusterkeycloakconnections")
async def cluster_connection_changed(body: kopf.Body, name: str, type: str | None,
                                     namespaced_connection_secrets: kopf.Index,
                                     cluster_connection_secrets: kopf.Index, **_: Any) -> None:
    rt = runtime()
    _watch_secrets(rt, namespaced_connection_secrets, cluster_connection_secrets)
    rt.controller.on_connection((ConnectionKind.CLUSTER.value, None, name),
                                body.get("metadata", {}).get("generation"), listed=type is None)


# --- connections: reachable, logged in, which version -------------------------------------------------

CONNECTION_CHECK_SECONDS = 300.0


async def _recheck_connection(rt: Runtime, key: ConnectionRef) -> None:
    kind, namespace, name = ConnectionKind(key[0]), key[1], key[2]
    body = await rt.kube.connection(kind, name, namespace)
    if body is None:
        return
    status = await _connection_status(rt, kind, body)
    rt.controller.health.checked(key, status)
    if any((body.get("status") or {}).get(k) != v for k, v in status.items()):
        await rt.kube.patch_status(PLURALS[kind], name, namespace, status)


async def _check(kind: ConnectionKind, body: kopf.Body, patch: kopf.Patch) -> None:
    rt = runtime()
    status = await _connection_status(rt, kind, body)
    meta = body.get("metadata", {})
    rt.controller.health.checked((kind.value, meta.get("namespace") if kind is ConnectionKind.NAMESPACED else None,
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
