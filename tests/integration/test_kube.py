"""kcmail.kube against the real API server: the four requests a reconcile makes, their 404s and errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from kcmail.devenv import operator_env
from kcmail.devenv.environment import Environment
from kcmail.kube import MAILCONFIGS, PLURALS, Kube
from kcmail.spec import ConnectionKind

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kube(devenv: Environment) -> Iterator[Kube]:
    operator_env.install_crds(devenv)
    api = config.new_client_from_config(config_file=str(devenv.kubeconfig))
    try:
        yield Kube(api)
    finally:
        api.close()


@pytest.fixture
def namespace(devenv: Environment) -> Iterator[str]:
    name = f"kube-{uuid.uuid4().hex[:8]}"
    operator_env.apply(devenv, {"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name, "labels": {"team": "mail", "tier": "gold"}}})
    yield name
    # The environment runs no namespace controller: what the namespace holds is deleted by name.
    operator_env.kubectl(devenv, "delete", "mailconfigs,keycloakconnections,secrets", "--all", "-n", name,
                         "--wait=false")
    operator_env.kubectl(devenv, "delete", "namespace", name, "--wait=false")


def _get(devenv: Environment, *args: str) -> dict[str, Any]:
    result = operator_env.kubectl(devenv, "get", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_secret_values_and_version(devenv: Environment, kube: Kube, namespace: str) -> None:
    values = {"client-id": "app", "client-secret": "s3 cr=t"}
    operator_env.apply(devenv, operator_env.secret(namespace, "oauth", values))
    meta = _get(devenv, "secret", "oauth", "-n", namespace)["metadata"]

    secret = asyncio.run(kube.secret(namespace, "oauth"))

    assert secret is not None
    assert dict(secret.data) == values
    assert secret.version == f"{meta['uid']}/{meta['resourceVersion']}"
    assert "s3 cr=t" not in repr(secret)
    assert asyncio.run(kube.secret(namespace, "absent")) is None


def test_namespace_labels(kube: Kube, namespace: str) -> None:
    labels = asyncio.run(kube.namespace_labels(namespace))

    assert labels["team"] == "mail"
    assert labels["tier"] == "gold"
    with pytest.raises(ApiException) as raised:
        asyncio.run(kube.namespace_labels(f"{namespace}-absent"))
    assert raised.value.status == 404


def test_connections_of_both_kinds(devenv: Environment, kube: Kube, namespace: str) -> None:
    cluster_name = f"{namespace}-cluster"
    operator_env.apply(devenv, *operator_env.keycloak_connection(devenv, namespace, "local"),
                       operator_env.cluster_connection(devenv, cluster_name))
    try:
        local = asyncio.run(kube.connection(ConnectionKind.NAMESPACED, "local", namespace))
        cluster = asyncio.run(kube.connection(ConnectionKind.CLUSTER, cluster_name, None))
    finally:
        operator_env.kubectl(devenv, "delete", PLURALS[ConnectionKind.CLUSTER], cluster_name)

    assert local is not None
    assert cluster is not None
    assert local["metadata"]["namespace"] == namespace
    assert local["spec"]["url"] == devenv.keycloak_url
    assert cluster["metadata"]["name"] == cluster_name
    assert asyncio.run(kube.connection(ConnectionKind.NAMESPACED, "absent", namespace)) is None
    assert asyncio.run(kube.connection(ConnectionKind.CLUSTER, f"{cluster_name}-absent", None)) is None


def test_patch_status_merges_into_the_status_only(devenv: Environment, kube: Kube, namespace: str) -> None:
    operator_env.apply(devenv, operator_env.xoauth2_mailconfig(devenv, namespace, "mail", "acme", secret_name="x"))
    before = _get(devenv, "mailconfig", "mail", "-n", namespace)

    asyncio.run(kube.patch_status(MAILCONFIGS, "mail", namespace, {"observedGeneration": 1}))
    asyncio.run(kube.patch_status(MAILCONFIGS, "mail", namespace, {"appliedSecretVersion": "u/1"}))

    after = _get(devenv, "mailconfig", "mail", "-n", namespace)
    assert after["status"]["observedGeneration"] == 1
    assert after["status"]["appliedSecretVersion"] == "u/1"
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_errors_other_than_not_found_are_raised(devenv: Environment, kube: Kube, namespace: str) -> None:
    operator_env.apply(devenv, operator_env.xoauth2_mailconfig(devenv, namespace, "mail", "acme", secret_name="x"))

    with pytest.raises(ApiException) as raised:
        # The CRD's status schema rejects a string where it wants an integer.
        asyncio.run(kube.patch_status(MAILCONFIGS, "mail", namespace, {"observedGeneration": "one"}))

    assert raised.value.status == 422
    with pytest.raises(ApiException) as missing:
        asyncio.run(kube.patch_status(MAILCONFIGS, "absent", namespace, {"observedGeneration": 1}))
    assert missing.value.status == 404
