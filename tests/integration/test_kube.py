"""kcmail.kube against the real API server: the four requests a reconcile makes, their 404s and errors.

Each call runs on the session the operator's login builds from the environment's kubeconfig.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kopf
import pytest
import yaml

from kcmail.apisession import bounded_session, logged_in_kube
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


def test_a_token_file_is_read_again_when_it_is_replaced(devenv: Environment, namespace: str, tmp_path: Path) -> None:
    # Two service accounts' tokens from the TokenRequest API: one may read Secrets here, one may not.
    nobody = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": namespace}}
    operator_env.apply(devenv, operator_env.secret(namespace, "oauth", {"client-id": "app"}), *_reader(namespace),
                       nobody)
    tokens: dict[str, str] = {}
    for account in ("reader", "nobody"):
        result = operator_env.kubectl(devenv, "create", "token", account, "-n", namespace, "--duration=10m")
        assert result.returncode == 0, result.stderr
        tokens[account] = result.stdout.strip()
    token_file = tmp_path / "token"
    config = yaml.safe_load(devenv.kubeconfig.read_text())["clusters"][0]["cluster"]
    # The session itself carries no credentials, as a pod's would carry the token read at login.
    info = kopf.ConnectionInfo(server=config["server"], ca_data=config["certificate-authority-data"])

    async def read_as(*accounts: str) -> list[str]:
        context = bounded_session(info, 4)
        kube = Kube()
        kube.use(context.aiohttp_session, context.server, token_file=token_file)
        outcomes = []
        try:
            for account in accounts:
                # Replaced as the kubelet does it: a new file renamed over the old one.
                (tmp_path / "token.new").write_text(tokens[account])
                os.replace(tmp_path / "token.new", token_file)
                try:
                    outcomes.append("read" if await kube.secret(namespace, "oauth") else "absent")
                except KubeError as error:
                    outcomes.append(str(error.status))
        finally:
            await context.aiohttp_session.close()
        return outcomes

    assert asyncio.run(read_as("reader", "nobody", "reader")) == ["read", "403", "read"]


def _reader(namespace: str) -> list[dict[str, Any]]:
    meta = {"name": "reader", "namespace": namespace}
    return [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
             "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
             "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]}]
