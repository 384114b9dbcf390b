"""kcmail.kube against the real API server: the four requests a reconcile makes, their 404s and errors.

Each call runs on the session the operator's login builds from the environment's kubeconfig.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from kcmail.apisession import logged_in_kube
from kcmail.devenv import operator_env
from kcmail.devenv.environment import Environment
from kcmail.kube import MAILCONFIGS, PLURALS, Kube, KubeError
from kcmail.spec import ConnectionKind

pytestmark = pytest.mark.integration

T = TypeVar("T")
Call = Callable[[Callable[[Kube], Awaitable[T]]], T]


@pytest.fixture(scope="module")
def kube(devenv: Environment) -> Iterator[Call[Any]]:
    """Runs one coroutine on a Kube logged in as the operator logs in (the kubeconfig, no client library)."""
    operator_env.install_crds(devenv)

    def call(use: Callable[[Kube], Awaitable[T]]) -> T:
        async def run() -> T:
            async with logged_in_kube() as kube:
                return await use(kube)
        return asyncio.run(run())

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(devenv.kubeconfig))
        yield call


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


def test_secret_values_and_version(devenv: Environment, kube: Call[Any], namespace: str) -> None:
    values = {"client-id": "app", "client-secret": "s3 cr=t"}
    operator_env.apply(devenv, operator_env.secret(namespace, "oauth", values))
    meta = _get(devenv, "secret", "oauth", "-n", namespace)["metadata"]

    secret = kube(lambda k: k.secret(namespace, "oauth"))

    assert secret is not None
    assert dict(secret.data) == values
    assert secret.version == f"{meta['uid']}/{meta['resourceVersion']}"
    assert "s3 cr=t" not in repr(secret)
    assert kube(lambda k: k.secret(namespace, "absent")) is None


def test_namespace_labels(kube: Call[Any], namespace: str) -> None:
    labels = kube(lambda k: k.namespace_labels(namespace))

    assert labels["team"] == "mail"
    assert labels["tier"] == "gold"
    with pytest.raises(KubeError) as raised:
        kube(lambda k: k.namespace_labels(f"{namespace}-absent"))
    assert raised.value.status == 404


def test_connections_of_both_kinds(devenv: Environment, kube: Call[Any], namespace: str) -> None:
    cluster_name = f"{namespace}-cluster"
    operator_env.apply(devenv, *operator_env.keycloak_connection(devenv, namespace, "local"),
                       operator_env.cluster_connection(devenv, cluster_name))
    try:
        local = kube(lambda k: k.connection(ConnectionKind.NAMESPACED, "local", namespace))
        cluster = kube(lambda k: k.connection(ConnectionKind.CLUSTER, cluster_name, None))
    finally:
        operator_env.kubectl(devenv, "delete", PLURALS[ConnectionKind.CLUSTER], cluster_name)

    assert local is not None
    assert cluster is not None
    assert local["metadata"]["namespace"] == namespace
    assert local["spec"]["url"] == devenv.keycloak_url
    assert cluster["metadata"]["name"] == cluster_name
    assert kube(lambda k: k.connection(ConnectionKind.NAMESPACED, "absent", namespace)) is None
    assert kube(lambda k: k.connection(ConnectionKind.CLUSTER, f"{cluster_name}-absent", None)) is None


def test_patch_status_merges_into_the_status_only(devenv: Environment, kube: Call[Any], namespace: str) -> None:
    operator_env.apply(devenv, operator_env.xoauth2_mailconfig(devenv, namespace, "mail", "acme", secret_name="x"))
    before = _get(devenv, "mailconfig", "mail", "-n", namespace)

    kube(lambda k: k.patch_status(MAILCONFIGS, "mail", namespace, {"observedGeneration": 1}))
    kube(lambda k: k.patch_status(MAILCONFIGS, "mail", namespace, {"appliedSecretVersion": "u/1"}))

    after = _get(devenv, "mailconfig", "mail", "-n", namespace)
    assert after["status"]["observedGeneration"] == 1
    assert after["status"]["appliedSecretVersion"] == "u/1"
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_errors_other_than_not_found_are_raised(devenv: Environment, kube: Call[Any], namespace: str) -> None:
    operator_env.apply(devenv, operator_env.xoauth2_mailconfig(devenv, namespace, "mail", "acme", secret_name="x"))

    with pytest.raises(KubeError) as raised:
        # The CRD's status schema rejects a string where it wants an integer.
        kube(lambda k: k.patch_status(MAILCONFIGS, "mail", namespace, {"observedGeneration": "one"}))

    assert raised.value.status == 422
    # The API server's own message says what it refused.
    path = f"/apis/kcmail.io/v1alpha1/namespaces/{namespace}/mailconfigs/mail/status"
    assert f"PATCH {path}: HTTP 422" in str(raised.value)
    assert "observedGeneration" in str(raised.value)
    with pytest.raises(KubeError) as missing:
        kube(lambda k: k.patch_status(MAILCONFIGS, "absent", namespace, {"observedGeneration": 1}))
    assert missing.value.status == 404
