"""kopf's connection to the Kubernetes API: its own aiohttp session, with a bounded connection pool.

kopf builds its session with an unbounded pool, so a burst of objects (1,000 MailConfigs applied at once
each get a finalizer) opens one TLS connection per request in flight. Every asyncio TLS connection holds
read buffers of its own (about 128 KiB), and the heap they came from stays with the process after the
burst: 612 connections held 77 MiB of a 300-MailConfig burst's memory (tracemalloc). The API server
serves a bounded pool as fast on two cores, so the session kopf gets here allows a fixed number of
requests at once on top of its long-lived watch streams. kcmail's own requests (``kcmail.kube``) use the
same session.

The credentials come from kopf's own minimal logins (a service account, or a kubeconfig holding a token
or a client certificate), not from the official client library: importing that would cost the operator
about 12 MiB. Only a kubeconfig whose credentials come from an exec plugin or an auth provider needs the
library, and loads it then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from kcmail.kube import Kube

# Requests to the API server at once, besides the watch streams: finalizers, Events, kopf's own patches,
# kcmail's reads and status patches.
REQUEST_CONNECTIONS = 16
# Watch streams per watched namespace (MailConfigs, Secrets, KeycloakConnections, and one to spare) and
# across the cluster (ClusterKeycloakConnections, CRDs, namespaces, and one to spare).
# A request waits when the pool is full, so the pool must never be full of streams alone.
STREAMS_PER_NAMESPACE = 4
CLUSTER_STREAMS = 4


def connection_limit(namespaces: tuple[str, ...]) -> int:
    """Connections the session may open: every watch stream kopf can hold, plus the requests' share.

    ``namespaces`` empty means cluster-wide, one stream per kind.
    """
    return STREAMS_PER_NAMESPACE * max(len(namespaces), 1) + CLUSTER_STREAMS + REQUEST_CONNECTIONS


def bounded_session(info: kopf.ConnectionInfo, limit: int) -> kopf.AiohttpSession:
    """The session kopf would build from ``info`` (TLS, credentials, proxy), with at most ``limit`` connections.

    Must run in the event loop (aiohttp binds the connector to it); kopf closes the session when the
    credentials are replaced or the operator stops.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                               expiration=info.expiration, priority=info.priority, aiohttp_session=session)


# Where Kubernetes mounts a pod's service-account token (kopf's login_with_service_account reads it there).
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def rotating_token_file() -> Path | None:
    """The token file ``login_info`` took the token from, if it did: the kubelet replaces that token."""
    return SERVICE_ACCOUNT_TOKEN if SERVICE_ACCOUNT_TOKEN.exists() else None


def login_info(**kwargs: Any) -> kopf.ConnectionInfo:
    """The server and credentials: the pod's service account, else the kubeconfig (``$KUBECONFIG``).

    ``kwargs`` are those of a kopf login handler.
    """
    info = kopf.login_with_service_account(**kwargs)
    if info is not None:
        return dataclasses.replace(info, server=in_cluster_server(os.environ) or info.server)
    info = kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig: run in a pod or set $KUBECONFIG")
    if has_credentials(info):
        return info
    # An exec plugin or an auth provider: only the client library can run those.
    via_client = kopf.login_via_client(**kwargs)
    if via_client is None:
        raise kopf.LoginError("the kubeconfig's user needs an exec plugin or an auth provider, which takes the "
                              "kubernetes package")
    return via_client


def has_credentials(info: kopf.ConnectionInfo) -> bool:
    """Whether ``info`` can authenticate by itself: a token, a client certificate, or a user and password."""
    return bool(info.token or info.certificate_path or info.certificate_data or info.username)


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server's address as Kubernetes gives it to every pod, which needs no cluster DNS."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


# Commands other than `run` make a few requests, one at a time.
COMMAND_CONNECTIONS = 4


@contextlib.asynccontextmanager
async def logged_in_kube(connections: int = COMMAND_CONNECTIONS) -> AsyncIterator[Kube]:
    """A :class:`Kube` logged in as the operator logs in, on a session of its own of ``connections``.

    For the commands that read the cluster once, and for the leader election, whose renewals must never
    wait behind kopf's requests in the operator's pool.
    """
    info = login_info(settings=kopf.OperatorSettings(), logger=logging.getLogger(__name__))
    context = bounded_session(info, connections)
    kube = Kube()
    kube.use(context.aiohttp_session, context.server, token_file=rotating_token_file())
    try:
        yield kube
    finally:
        await context.aiohttp_session.close()
