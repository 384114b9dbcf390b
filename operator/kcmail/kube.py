"""The Kubernetes reads and writes a reconcile needs, on the official client's ApiClient in worker threads.

Reads return typed values or ``None`` for "not found"; a Secret's values never appear in a ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kcmail.spec import GROUP, VERSION, ConnectionKind

MAILCONFIGS = "mailconfigs"
MAILCONFIG_KIND = "MailConfig"
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


def load_client_config() -> client.ApiClient:
    """In-cluster service account when running in a pod, else the kubeconfig (``$KUBECONFIG``)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    """Four requests on the client's ApiClient (its kubeconfig or service-account auth, TLS and pool).

    The generated CoreV1Api and CustomObjectsApi classes are not used: importing CoreV1Api alone costs the
    process about 20 MiB (thousands of validated methods) for the two paths needed here, and answers are
    read as plain JSON rather than built into models.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    async def secret(self, namespace: str, name: str) -> Secret | None:
        raw = await self._read(f"/api/v1/namespaces/{_segment(namespace)}/secrets/{_segment(name)}")
        if raw is None:
            return None
        meta = raw.get("metadata") or {}
        data = {key: base64.b64decode(value).decode("utf-8", errors="replace")
                for key, value in (raw.get("data") or {}).items()}
        return Secret(namespace=namespace, name=name, uid=meta.get("uid", ""),
                      resource_version=meta.get("resourceVersion", ""), data=data)

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        raw = json.loads(await self._call("GET", f"/api/v1/namespaces/{_segment(namespace)}"))
        return dict((raw.get("metadata") or {}).get("labels") or {})

    async def connection(self, kind: ConnectionKind, name: str, namespace: str | None) -> dict[str, Any] | None:
        return await self._read(custom_object_path(PLURALS[kind], name,
                                                   None if kind is ConnectionKind.CLUSTER else namespace))

    async def patch_status(self, plural: str, name: str, namespace: str | None, status: Mapping[str, Any]) -> None:
        # A JSON merge patch of the status subresource; the answer (the whole object) is not needed.
        await self._call("PATCH", custom_object_path(plural, name, namespace) + "/status",
                         body={"status": dict(status)}, content_type="application/merge-patch+json")

    async def _read(self, path: str) -> dict[str, Any] | None:
        """The object at ``path`` as parsed JSON, or ``None`` when the API server answers 404."""
        try:
            data = await self._call("GET", path)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        parsed: dict[str, Any] = json.loads(data)
        return parsed

    async def _call(self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
                    content_type: str | None = None) -> bytes:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type

        def call() -> bytes:
            # param_serialize adds the configured credentials (bearer token or client certificate's pool).
            request = self._api.param_serialize(method, path, header_params=headers, body=body,
                                                auth_settings=["BearerToken"])
            response = self._api.call_api(*request)
            data: bytes = response.read()
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(http_resp=response, body=None, data=None)
            return data

        return await asyncio.to_thread(call)


def custom_object_path(plural: str, name: str, namespace: str | None) -> str:
    """The API path of a kcmail.io object; ``namespace`` ``None`` for a cluster-scoped kind."""
    scope = "" if namespace is None else f"/namespaces/{_segment(namespace)}"
    return f"/apis/{GROUP}/{VERSION}{scope}/{plural}/{_segment(name)}"


def _segment(value: str) -> str:
    # Kubernetes names cannot hold "/" or "?", but a path is never built from an unchecked string.
    return urllib.parse.quote(value, safe="")
