"""kopf's connection to the Kubernetes API: its own aiohttp session, with a bounded connection pool.

kopf builds its session with an unbounded pool, so a burst of objects (1,000 MailConfigs applied at once
each get a finalizer) opens one TLS connection per request in flight. Every asyncio TLS connection holds
read buffers of its own (about 128 KiB), and the heap they came from stays with the process after the
burst: 612 connections held 77 MiB of a 300-MailConfig burst's memory (tracemalloc). The API server
serves a bounded pool as fast on two cores, so the session kopf gets here allows a fixed number of
requests at once on top of its long-lived watch streams.
"""

from __future__ import annotations

import aiohttp
import kopf

# Requests to the API server at once, besides the watch streams: finalizers, Events, kopf's own patches.
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
