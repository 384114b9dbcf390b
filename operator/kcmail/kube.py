"""The Kubernetes reads and writes a reconcile needs, on the API session kopf logged in with.

Reads return typed values or ``None`` for "not found"; a Secret's values never appear in a ``repr``.

The official client library is not used in the operator process: kopf imports it whenever it can, which
costs the operator about 12 MiB for a few requests. kopf's login gives the credentials, and
the bounded aiohttp session built from them (``apisession``) carries kopf's requests and these alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kcmail.spec import GROUP, VERSION, ConnectionKind

MAILCONFIGS = "mailconfigs"
MAILCONFIG_KIND = "MailConfig"
log = logging.getLogger(__name__)

PLURALS = {ConnectionKind.NAMESPACED: "keycloakconnections", ConnectionKind.CLUSTER: "clusterkeycloakconnections"}


@dataclass(frozen=True)
class Secret:
    namespace: str
    name: str
    uid: str
    resource_version: str
    data: Mapping[str, str] = field(repr=False)

    @property
    def version(self) -> str:
        """Identifies this content of this Secret without revealing anything about the content."""
        return secret_version(self.uid, self.resource_version)


def secret_version(uid: str, resource_version: str) -> str:
    """What ``appliedSecretVersion`` records: the Secret's identity and revision, nothing of its content."""
    return f"{uid}/{resource_version}"


# Asked for in Accept: the objects' metadata only (PartialObjectMetadata), never a Secret's data.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
# kcmail's own requests at once, so that kopf's patches and Events keep the rest of the session's pool.
CONCURRENT_REQUESTS = 8
# Waiting for a pooled connection counts as connecting; a read that stalls this long is given up and retried.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=60, sock_connect=10, sock_read=60)


class KubeError(Exception):
    """The API server refused a request: its HTTP status and its own message, never the request's headers."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


class TokenFile:
    """A bearer token in a file that is replaced before the token expires: a pod's service-account token.

    kopf reads the token once, at login, and logs in again when the API server refuses it; kcmail's own
    requests read the file again whenever it has changed, so they never carry an expired token.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def __repr__(self) -> str:
        return f"TokenFile({str(self._path)!r})"

    def header(self) -> dict[str, str]:
        info = self._path.stat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._token, self._stamp = self._path.read_text(encoding="utf-8").strip(), stamp
        return {"Authorization": f"Bearer {self._token}"}


class Kube:
    """kcmail's own requests on the current session of kopf's login (its server, TLS and credentials).

    ``use`` is called by the login handler with every session it builds: kopf logs in again when the API
    server refuses its credentials, and closes the session it replaces.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._token: TokenFile | None = None
        self._limit = asyncio.Semaphore(CONCURRENT_REQUESTS)
        self._ready = asyncio.Event()

    def use(self, session: aiohttp.ClientSession, server: str, *, token_file: Path | None = None) -> None:
        """The session to send requests on; ``token_file``: a service-account token to read per request."""
        self._session, self._server = session, server.rstrip("/")
        self._token = None if token_file is None else TokenFile(token_file)
        self._ready.set()

    async def logged_in(self) -> None:
        """Returns once kopf's login gave a session to send requests on."""
        await self._ready.wait()

    async def secret(self, namespace: str, name: str) -> Secret | None:
        raw = await self._read(f"/api/v1/namespaces/{_segment(namespace)}/secrets/{_segment(name)}")
        return None if raw is None else _secret(namespace, name, raw)

    async def create_secret(self, namespace: str, name: str, string_data: Mapping[str, str], *,
                            labels: Mapping[str, str]) -> None:
        """Create an Opaque Secret; HTTP 409 (a ``KubeError``) when it exists already."""
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                "stringData": dict(string_data)}
        await self._call("POST", f"/api/v1/namespaces/{_segment(namespace)}/secrets", body=body,
                         content_type="application/json")

    async def patch_secret(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Secret:
        """A JSON merge patch of a Secret (a null value removes a key); the Secret as it is after it."""
        raw = json.loads(await self._call("PATCH", f"/api/v1/namespaces/{_segment(namespace)}/secrets/{_segment(name)}",
                                          body=patch, content_type="application/merge-patch+json"))
        return _secret(namespace, name, raw)

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        raw = json.loads(await self._call("GET", f"/api/v1/namespaces/{_segment(namespace)}"))
        return dict((raw.get("metadata") or {}).get("labels") or {})

    async def mailconfig_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the MailConfig ``namespace/name``, or None when there is none."""
        raw = await self._read(custom_object_path(MAILCONFIGS, name, namespace))
        return None if raw is None else str((raw.get("metadata") or {}).get("uid", ""))

    async def connection(self, kind: ConnectionKind, name: str, namespace: str | None) -> dict[str, Any] | None:
        return await self._read(custom_object_path(PLURALS[kind], name,
                                                   None if kind is ConnectionKind.CLUSTER else namespace))

    async def patch_status(self, plural: str, name: str, namespace: str | None, status: Mapping[str, Any]) -> None:
        # A JSON merge patch of the status subresource; the answer (the whole object) is not needed.
        await self._call("PATCH", custom_object_path(plural, name, namespace) + "/status",
                         body={"status": dict(status)}, content_type="application/merge-patch+json")

    async def patch_json(self, plural: str, name: str, namespace: str | None, operations: list[dict[str, Any]]) -> None:
        """A JSON patch (RFC 6902) of a kcmail.io object: a failed ``test`` operation answers HTTP 422."""
        await self._call("PATCH", custom_object_path(plural, name, namespace), body=operations,
                         content_type="application/json-patch+json")

    async def post_event(self, event: Mapping[str, Any]) -> None:
        """Create a core/v1 Event in the namespace of the object it is about."""
        namespace = (event.get("involvedObject") or {}).get("namespace") or "default"
        await self._call("POST", f"/api/v1/namespaces/{_segment(namespace)}/events", body=event,
                         content_type="application/json")

    async def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The coordination.k8s.io Lease ``namespace/name``, or None when there is none."""
        return await self._read(lease_path(namespace, name))

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Create a Lease; HTTP 409 (a ``KubeError``) when another process created it first."""
        created: dict[str, Any] = json.loads(await self._call("POST", lease_path(namespace), body=lease,
                                                              content_type="application/json"))
        return created

    async def replace_lease(self, namespace: str, name: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Replace a Lease; its ``metadata.resourceVersion`` must be the one last read, else HTTP 409."""
        replaced: dict[str, Any] = json.loads(await self._call("PUT", lease_path(namespace, name), body=lease,
                                                               content_type="application/json"))
        return replaced

    async def list_metadata(self, path: str, *, limit: int, continue_token: str | None) -> dict[str, Any]:
        """One page of the objects under ``path``, metadata only."""
        return await self.list_objects(path, limit=limit, continue_token=continue_token, accept=METADATA_LIST)

    async def list_objects(self, path: str, *, limit: int, continue_token: str | None, selector: str = "",
                           accept: str = "application/json") -> dict[str, Any]:
        """One page of the objects under ``path`` (those ``selector`` matches, when given)."""
        query = {"limit": str(limit), **({"continue": continue_token} if continue_token else {}),
                 **({"labelSelector": selector} if selector else {})}
        parsed: dict[str, Any] = json.loads(await self._call("GET", f"{path}?{urllib.parse.urlencode(query)}",
                                                             accept=accept))
        return parsed

    def watch_metadata(self, path: str, *, resource_version: str,
                       timeout_seconds: int) -> AsyncIterator[dict[str, Any]]:
        """The watch events after ``resource_version``, metadata only, until the API server ends the watch."""
        return self.watch_objects(path, resource_version=resource_version, timeout_seconds=timeout_seconds,
                                  accept=METADATA)

    async def watch_objects(self, path: str, *, resource_version: str, timeout_seconds: int, selector: str = "",
                            accept: str = "application/json") -> AsyncIterator[dict[str, Any]]:
        """The watch events after ``resource_version`` (of the objects ``selector`` matches, when given),
        until the API server ends the watch.

        A watch is long-lived: it does not count against the bound on requests at once.
        """
        query = urllib.parse.urlencode({"watch": "true", "resourceVersion": resource_version,
                                        "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds),
                                        **({"labelSelector": selector} if selector else {})})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        async with self._session_now().get(f"{self._server}{path}?{query}", headers=self._headers(accept),
                                           timeout=timeout) as response:
            if not 200 <= response.status <= 299:
                raise KubeError("GET", path, response.status, _message(await response.read(), response.reason))
            rest = b""
            async for chunk in response.content.iter_any():
                lines, rest = parse_lines(rest + chunk)
                for line in lines:
                    yield line

    def _headers(self, accept: str) -> dict[str, str]:
        # The session's own headers carry the login's credentials; a token file's current token replaces them.
        return {"Accept": accept, **(self._token.header() if self._token else {})}

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("kopf has not logged in to the Kubernetes API yet")
        return self._session

    async def _read(self, path: str) -> dict[str, Any] | None:
        """The object at ``path`` as parsed JSON, or ``None`` when the API server answers 404."""
        try:
            data = await self._call("GET", path)
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        parsed: dict[str, Any] = json.loads(data)
        return parsed

    async def _call(self, method: str, path: str, *, body: Mapping[str, Any] | list[Any] | None = None,
                    content_type: str | None = None, accept: str = "application/json") -> bytes:
        headers = self._headers(accept)
        if content_type:
            headers["Content-Type"] = content_type
        payload = None if body is None else json.dumps(body).encode()
        async with self._limit, self._session_now().request(method, self._server + path, data=payload,
                                                            headers=headers, timeout=TIMEOUT) as response:
            data = await response.read()
            # The path only: it names objects, never what they hold (-v shows it).
            log.debug("%s %s: HTTP %d", method, path, response.status)
            if not 200 <= response.status <= 299:
                raise KubeError(method, path, response.status, _message(data, response.reason))
            return data


def _message(data: bytes, reason: str | None) -> str:
    """The ``message`` of the API server's Status answer, else the HTTP reason phrase."""
    try:
        status = json.loads(data)
    except ValueError:
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    return str(message or reason or "no message")


def _secret(namespace: str, name: str, raw: Mapping[str, Any]) -> Secret:
    meta = raw.get("metadata") or {}
    data = {key: base64.b64decode(value).decode("utf-8", errors="replace")
            for key, value in (raw.get("data") or {}).items()}
    return Secret(namespace=namespace, name=name, uid=meta.get("uid", ""),
                  resource_version=meta.get("resourceVersion", ""), data=data)


def custom_object_path(plural: str, name: str, namespace: str | None) -> str:
    """The API path of a kcmail.io object; ``namespace`` ``None`` for a cluster-scoped kind."""
    scope = "" if namespace is None else f"/namespaces/{_segment(namespace)}"
    return f"/apis/{GROUP}/{VERSION}{scope}/{plural}/{_segment(name)}"


def lease_path(namespace: str, name: str | None = None) -> str:
    """The API path of a Lease, or of the namespace's Leases when ``name`` is None."""
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{_segment(namespace)}/leases"
    return leases if name is None else f"{leases}/{_segment(name)}"


def _segment(value: str) -> str:
    # Kubernetes names cannot hold "/" or "?", but a path is never built from an unchecked string.
    return urllib.parse.quote(value, safe="")


def parse_lines(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The complete JSON lines of a watch stream at the start of ``buffer``, and the incomplete rest."""
    *lines, rest = buffer.split(b"\n")
    return [json.loads(line) for line in lines if line.strip()], rest
