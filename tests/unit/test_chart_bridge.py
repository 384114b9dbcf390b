"""The chart's token bridge in both of its modes, rendered with `helm template`. With the registry kcmail keeps
(the default), the operator is told the bridge's URL and registry and may write that one Secret, and the
bridge reads it with a token of its own that reaches nothing else; with a hand-written clients Secret, the
bridge reads a file, holds no token, and the operator is told nothing about it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcmail.devenv import components, versions

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[2] / "charts" / "kcmail"
NAMESPACE = "kcm-system"
OPERATOR = "r-kcmail"
BRIDGE = "r-kcmail-bridge"
REGISTRY = "r-kcmail-bridge-registry"
MANAGED = {"bridge": {"enabled": True, "tlsSecret": "bridge-tls"}}
HAND_WRITTEN = {"bridge": {"enabled": True, "tlsSecret": "bridge-tls", "clientsSecret": "bridge-clients"}}


@pytest.fixture(scope="module")
def helm() -> Path:
    # The pinned helm the integration tests use; built once into the component cache.
    return components.build_helm(versions.HELM)


def _helm_template(helm: Path, tmp_path: Path, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return subprocess.run([str(helm), "template", "r", str(CHART), "--namespace", NAMESPACE,
                           "--kube-version", versions.KUBERNETES, "-f", str(values_file)],
                          capture_output=True, text=True, timeout=60, check=False)


def render(helm: Path, tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    result = _helm_template(helm, tmp_path, values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) <= 1
    return found[0] if found else None


def _pod(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    found = _named(docs, "Deployment", deployment)
    assert found is not None, f"no Deployment {deployment}"
    return found["spec"]["template"]["spec"]


def _args(docs: list[dict[str, Any]], deployment: str) -> list[str]:
    (container,) = _pod(docs, deployment)["containers"]
    return container["args"]


def _flags(args: list[str], flag: str) -> list[str]:
    return [arg.removeprefix(f"{flag}=") for arg in args if arg.startswith(f"{flag}=")]


def _service_account(name: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}


def test_by_default_the_operator_is_told_the_bridges_url_and_registry(helm, tmp_path):
    docs = render(helm, tmp_path, MANAGED)
    args = _args(docs, OPERATOR)
    assert _flags(args, "--bridge-url") == [f"https://{BRIDGE}.{NAMESPACE}.svc:8443/token"]
    assert _flags(args, "--bridge-registry") == [f"{NAMESPACE}/{REGISTRY}"]
    # The URL follows the Service's port.
    moved = render(helm, tmp_path, {"bridge": {**MANAGED["bridge"], "port": 9443}})
    assert _flags(_args(moved, OPERATOR), "--bridge-url") == [f"https://{BRIDGE}.{NAMESPACE}.svc:9443/token"]


def test_bridge_url_replaces_the_services_address_for_every_shard(helm, tmp_path):
    url = "https://mail-bridge.example.org/token"
    docs = render(helm, tmp_path, {"bridge": {**MANAGED["bridge"], "url": url}, "shards": ["blue"]})
    for deployment in (OPERATOR, f"{OPERATOR}-shard-blue"):
        args = _args(docs, deployment)
        assert _flags(args, "--bridge-url") == [url]
        assert _flags(args, "--bridge-registry") == [f"{NAMESPACE}/{REGISTRY}"]


@pytest.mark.parametrize("url", ["http://bridge:8443/token", f"https://{'b' * 250}/token"])
def test_bridge_url_is_refused_where_kcmail_run_would_refuse_it(helm, tmp_path, url):
    # kcmail run takes only https:// URLs of at most 255 characters; the chart says so before any pod starts.
    result = _helm_template(helm, tmp_path, {"bridge": {**MANAGED["bridge"], "url": url}})
    assert result.returncode != 0
    assert "/bridge/url" in result.stderr, result.stderr


def test_the_operator_may_create_secrets_but_read_and_patch_only_its_registry(helm, tmp_path):
    docs = render(helm, tmp_path, MANAGED)
    role = _named(docs, "Role", REGISTRY)
    assert role is not None
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [REGISTRY], "verbs": ["get", "patch"]},
    ]
    binding = _named(docs, "RoleBinding", REGISTRY)
    assert binding is not None
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": REGISTRY}
    assert binding["subjects"] == [_service_account(OPERATOR)]
    # No other rule of the chart lets anyone write a Secret.
    writers = {doc["metadata"]["name"] for doc in docs if doc["kind"] in ("Role", "ClusterRole")
               for rule in doc["rules"]
               if "secrets" in rule["resources"] and set(rule["verbs"]) - {"get", "list", "watch"}}
    assert writers == {REGISTRY}


def test_the_bridge_reads_its_registry_with_a_service_account_of_its_own(helm, tmp_path):
    docs = render(helm, tmp_path, MANAGED)
    account = _named(docs, "ServiceAccount", BRIDGE)
    assert account is not None
    assert account["metadata"]["labels"]["app.kubernetes.io/component"] == "bridge"
    pod = _pod(docs, BRIDGE)
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == (BRIDGE, True)
    (container,) = pod["containers"]
    assert _flags(container["args"], "--clients-secret") == [f"{NAMESPACE}/{REGISTRY}"]
    assert _flags(container["args"], "--clients") == []
    assert "clients" not in {volume["name"] for volume in pod["volumes"]}
    assert "clients" not in {mount["name"] for mount in container["volumeMounts"]}
    role = _named(docs, "Role", BRIDGE)
    assert role is not None
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [REGISTRY],
                              "verbs": ["get"]}]
    # That Role is all the bridge's account is bound to.
    bindings = [doc for doc in docs if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and _service_account(BRIDGE) in doc["subjects"]]
    assert [(b["kind"], b["metadata"]["name"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings] == [
        ("RoleBinding", BRIDGE, "Role", BRIDGE)]


def test_the_bridge_is_ready_once_it_read_its_clients_and_takes_an_environment_of_its_own(helm, tmp_path):
    proxy = [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}]
    docs = render(helm, tmp_path, {"bridge": {**MANAGED["bridge"], "extraEnv": proxy}})
    (container,) = _pod(docs, BRIDGE)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["env"] == proxy
    # The operator's environment is its own.
    (operator,) = _pod(docs, OPERATOR)["containers"]
    assert proxy[0] not in operator["env"]


def test_without_rbac_create_the_bridge_keeps_its_account_and_no_role_is_rendered(helm, tmp_path):
    docs = render(helm, tmp_path, {**MANAGED, "rbac": {"create": False}})
    assert _named(docs, "ServiceAccount", BRIDGE) is not None
    assert _pod(docs, BRIDGE)["serviceAccountName"] == BRIDGE
    assert [doc["metadata"]["name"] for doc in docs if "Role" in doc["kind"]] == []


def test_a_hand_written_clients_secret_is_mounted_and_nobody_gets_api_access_for_it(helm, tmp_path):
    docs = render(helm, tmp_path, HAND_WRITTEN)
    operator_args = _args(docs, OPERATOR)
    assert _flags(operator_args, "--bridge-url") == []
    assert _flags(operator_args, "--bridge-registry") == []
    pod = _pod(docs, BRIDGE)
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    (container,) = pod["containers"]
    assert _flags(container["args"], "--clients") == ["/etc/kcmail/clients/clients.json"]
    assert _flags(container["args"], "--clients-secret") == []
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["clients"]["secret"]["secretName"] == "bridge-clients"
    assert {"name": "clients", "mountPath": "/etc/kcmail/clients", "readOnly": True} in container["volumeMounts"]
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert _named(docs, kind, BRIDGE) is None, kind
        assert _named(docs, kind, REGISTRY) is None, kind


def test_a_disabled_bridge_tells_the_operator_nothing(helm, tmp_path):
    docs = render(helm, tmp_path, {})
    assert _flags(_args(docs, OPERATOR), "--bridge-url") == []
    assert _named(docs, "Role", REGISTRY) is None
    assert _named(docs, "ServiceAccount", BRIDGE) is None
