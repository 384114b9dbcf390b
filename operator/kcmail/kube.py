"""The Kubernetes reads and writes a reconcile needs, on the official client run in worker threads.

Reads return typed values or ``None`` for "not found"; a Secret's values never appear in a ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import json
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
    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)

    async def secret(self, namespace: str, name: str) -> Secret | None:
        try:
            # The raw JSON: building the client's V1Secret model costs more CPU than the request itself.
            response = await asyncio.to_thread(self._core.read_namespaced_secret, name, namespace,
                                               _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        raw = json.loads(response.data)
        meta = raw.get("metadata") or {}
        data = {key: base64.b64decode(value).decode("utf-8", errors="replace")
                for key, value in (raw.get("data") or {}).items()}
        return Secret(namespace=namespace, name=name, uid=meta.get("uid", ""),
                      resource_version=meta.get("resourceVersion", ""), data=data)

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        raw = await asyncio.to_thread(self._core.read_namespace, namespace)
        return dict(raw.metadata.labels or {})

    async def connection(self, kind: ConnectionKind, name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            if kind is ConnectionKind.CLUSTER:
                obj = await asyncio.to_thread(self._custom.get_cluster_custom_object, GROUP, VERSION,
                                              PLURALS[kind], name)
            else:
                obj = await asyncio.to_thread(self._custom.get_namespaced_custom_object, GROUP, VERSION,
                                              namespace, PLURALS[kind], name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(obj)

    async def patch_status(self, plural: str, name: str, namespace: str | None, status: Mapping[str, Any]) -> None:
        body = {"status": dict(status)}
        # The answer (the whole object) is not needed: _preload_content=False leaves it unparsed.
        if namespace is None:
            await asyncio.to_thread(self._custom.patch_cluster_custom_object_status, GROUP, VERSION, plural,
                                    name, body, _preload_content=False)
        else:
            await asyncio.to_thread(self._custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                                    namespace, plural, name, body, _preload_content=False)
