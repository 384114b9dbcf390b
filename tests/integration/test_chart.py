"""The Helm chart lints and renders for every supported shape of values, the real API server accepts what
it renders (Pod Security "restricted" included), and its RBAC is exactly enough: the operator, started with
the chart's own arguments and the chart's ServiceAccount's own token, brings a MailConfig to Ready, while
Secrets outside the namespaces it watches stay out of its reach."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcmail import defaults, metrics
from kcmail.devenv import components, operator_env, versions
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import Environment
from kcmail.devenv.kube import write_kubeconfig
from kcmail.devenv.processes import ProcessRegistry, free_port

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "kcmail"
MONITORING_KINDS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


@dataclasses.dataclass(frozen=True)
class Namespaces:
    release: str  # where the operator's Deployment and ServiceAccount live
    watched: str
    unwatched: str


@pytest.fixture(scope="module")
def helm(devenv: Environment) -> Path:
    # An env file written before helm joined the components has no path for it; build or reuse the cache.
    if devenv.helm != Path() and devenv.helm.exists():
        return devenv.helm
    return components.build_helm(versions.HELM)


@pytest.fixture(scope="module")
def namespaces(devenv: Environment) -> Namespaces:
    suffix = uuid.uuid4().hex[:6]
    names = Namespaces(release=f"kcm-{suffix}", watched=f"kcm-{suffix}-a", unwatched=f"kcm-{suffix}-b")
    operator_env.install_crds(devenv)
    operator_env.install_connection(devenv)
    release_ns = operator_env.namespace(names.release)
    # The Pod Security admission plugin warns about any pod template that breaks the restricted profile.
    release_ns["metadata"]["labels"] = {"pod-security.kubernetes.io/enforce": "restricted",
                                        "pod-security.kubernetes.io/warn": "restricted"}
    operator_env.apply(devenv, release_ns, operator_env.namespace(names.watched),
                       operator_env.namespace(names.unwatched))
    return names


@pytest.fixture(scope="module")
def monitoring_crds(devenv: Environment) -> None:
    """Stand-ins for the Prometheus Operator's CRDs, which this environment does not have.

    They accept any content, so the server checks the objects' envelope (kind, names, namespace) but not
    their spec against the Prometheus Operator's schema.
    """
    for kind, plural in MONITORING_KINDS.items():
        operator_env.apply(devenv, {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}}}]}})
    result = operator_env.kubectl(devenv, "wait", "--for=condition=Established", "--timeout=60s",
                                  *(f"crd/{plural}.monitoring.coreos.com" for plural in MONITORING_KINDS.values()))
    assert result.returncode == 0, result.stderr


def value_sets(ns: Namespaces) -> dict[str, dict[str, Any]]:
    """The shapes of values the chart supports, each turning on a different part of it."""
    return {
        "defaults": {},
        "cluster-rbac-watching-one-namespace": {"watchNamespaces": [ns.watched]},
        "namespaced-rbac": {"watchNamespaces": [ns.watched], "rbac": {
            "scope": "namespaced", "connectionSecretNamespaces": [operator_env.SYSTEM_NAMESPACE]}},
        "service-monitor-and-rule": {"metrics": {"serviceMonitor": {"enabled": True},
                                                 "prometheusRule": {"enabled": True}}},
        "ca-bundle-secret": {"caBundle": {"secret": "corp-ca"}},
        "ca-bundle-configmap-metrics-off": {"caBundle": {"configMap": "corp-ca", "key": "bundle.pem"},
                                            "metrics": {"enabled": False}},
        "namespaced-debug": {"watchNamespaces": [ns.watched, ns.unwatched], "logging": {"level": "debug"},
                             "rbac": {"scope": "namespaced"}},
        "one-replica-own-lease": {"replicas": 1, "leaderElection": {"id": "kcmail-tenants"}},
        # A platform that assigns the user and group itself (OpenShift's restricted SCC).
        "platform-assigned-user": {"runAsUser": None, "runAsGroup": None},
        "two-shards": {"shards": ["blue", "green"], "workers": 8},
        "google-bridge": {"bridge": {"enabled": True, "tlsSecret": "bridge-tls",
                                     "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}]}},
        "google-bridge-hand-written": {"bridge": {"enabled": True, "tlsSecret": "bridge-tls",
                                                  "clientsSecret": "bridge-clients",
                                                  "tokenEndpointCA": {"configMap": "corp-ca"}}},
    }


VALUE_SET_NAMES = list(value_sets(Namespaces("r", "a", "b")))


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(helm: Path, devenv: Environment, tmp_path: Path, values: dict[str, Any], *, release: str,
           namespace: str) -> list[dict[str, Any]]:
    result = subprocess.run([str(helm), "template", release, str(CHART), "--namespace", namespace,
                             "--kube-version", devenv.kubernetes_version, "-f", str(_values_file(tmp_path, values))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _release(prefix: str = "kcm") -> str:
    # Cluster-scoped names (ClusterRoles) are shared by every test on this API server: keep them unique.
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = _of_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- lint and render ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value_set", VALUE_SET_NAMES)
def test_chart_lints_strictly_with_each_value_set(value_set, helm, devenv, namespaces, tmp_path):
    values = value_sets(namespaces)[value_set]
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--namespace", namespaces.release,
                             "--kube-version", devenv.kubernetes_version, "-f", str(_values_file(tmp_path, values))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("value_set", VALUE_SET_NAMES)
def test_rendered_manifests_pass_server_side_dry_run(value_set, helm, devenv, kubectl, namespaces,
                                                     monitoring_crds, tmp_path):
    docs = render(helm, devenv, tmp_path, value_sets(namespaces)[value_set], release=_release(),
                  namespace=namespaces.release)
    result = kubectl("apply", "--dry-run=server", "-f", "-", stdin="\n".join(json.dumps(d) for d in docs))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs)
    # The release namespace enforces and warns on the restricted Pod Security profile.
    assert "PodSecurity" not in result.stderr


def test_the_pod_security_check_above_can_fail(kubectl, namespaces):
    # A control for the test above: the same namespace warns about a pod template without hardening.
    result = kubectl("create", "deployment", "unhardened", "--image=kcmail", "-n", namespaces.release,
                     "--dry-run=server")
    assert result.returncode == 0, result.stderr
    assert 'would violate PodSecurity "restricted:latest"' in result.stderr


def test_chart_refuses_contradictory_values(helm, devenv, tmp_path):
    cases = {
        "rbac.scope namespaced needs watchNamespaces": {"rbac": {"scope": "namespaced"}},
        "caBundle: set configMap or secret, not both": {"caBundle": {"configMap": "a", "secret": "b"}},
        "watchNamespaces/0": {"watchNamespaces": ["Not_A_Namespace"]},
        "rbac/scope": {"rbac": {"scope": "everything"}},
        "keycloakConcurrency": {"keycloakConcurrency": 0},
        "namespacedConnections": {"namespacedConnections": "no"},
        "/replicas": {"replicas": 0},
        "/leaderElection/id": {"leaderElection": {"id": "Bad_Name"}},
    }
    for message, values in cases.items():
        result = subprocess.run([str(helm), "template", "x", str(CHART), "--kube-version", devenv.kubernetes_version,
                                 "-f", str(_values_file(tmp_path, values))],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode != 0, message
        assert message in result.stderr, result.stderr


def test_deployment_runs_two_hardened_replicas_with_the_chart_values(helm, devenv, namespaces, tmp_path):
    docs = render(helm, devenv, tmp_path, {"watchNamespaces": ["one", "two"], "caBundle": {"secret": "corp-ca"},
                                           "probeConcurrency": 3, "keycloakConcurrency": 48},
                  release="r", namespace=namespaces.release)
    (deployment,) = _of_kind(docs, "Deployment")
    spec = deployment["spec"]
    # Two replicas, elected on a Lease; a rolling update never takes the running ones away first.
    assert (spec["replicas"], spec["strategy"]["type"]) == (2, "RollingUpdate")
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    container = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The image's user and its group: without runAsGroup the process ran in group 0 on a real node.
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (10001, 10001)
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["args"][:2] == ["run", "--liveness=http://0.0.0.0:8081/healthz"]
    assert "--probe-concurrency=3" in container["args"]
    assert "--keycloak-concurrency=48" in container["args"]
    # The Lease in the release namespace, under the name a laptop `kcmail run` uses by default.
    assert f"--leader-election-namespace={namespaces.release}" in container["args"]
    assert f"--leader-election-id={defaults.LEADER_ELECTION_ID}" in container["args"]
    assert "--no-namespaced-connections" not in container["args"]
    assert [a for a in container["args"] if a.startswith("--namespace=")] == ["--namespace=one", "--namespace=two"]
    assert "--ca-bundle=/etc/kcmail/ca/ca.crt" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    (ca_volume,) = [v for v in pod["volumes"] if v["name"] == "ca-bundle"]
    assert ca_volume["secret"]["secretName"] == "corp-ca"


def test_a_disruption_budget_keeps_a_follower_through_a_drain_when_there_are_two(helm, devenv, namespaces, tmp_path):
    docs = render(helm, devenv, tmp_path, {}, release="r", namespace=namespaces.release)
    (budget,) = _of_kind(docs, "PodDisruptionBudget")
    (deployment,) = _of_kind(docs, "Deployment")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    # One replica: a budget of one would block every drain of its node.
    single = render(helm, devenv, tmp_path, {"replicas": 1}, release="r", namespace=namespaces.release)
    assert _of_kind(single, "PodDisruptionBudget") == []


def test_each_shard_gets_a_deployment_a_lease_and_a_budget_and_the_main_one_keeps_the_rest(
        helm, devenv, namespaces, tmp_path):
    docs = render(helm, devenv, tmp_path, {"shards": ["blue", "green"]}, release="r", namespace=namespaces.release)
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}
    assert set(deployments) == {"r-kcmail", "r-kcmail-shard-blue", "r-kcmail-shard-green"}
    args = {name: d["spec"]["template"]["spec"]["containers"][0]["args"] for name, d in deployments.items()}
    assert "--exclude-sharded" in args["r-kcmail"]
    assert not any(a.startswith("--shard") for a in args["r-kcmail"])
    assert f"--leader-election-id={defaults.LEADER_ELECTION_ID}" in args["r-kcmail"]
    for shard in ("blue", "green"):
        own = args[f"r-kcmail-shard-{shard}"]
        assert f"--shard={shard}" in own
        assert f"--leader-election-id={defaults.LEADER_ELECTION_ID}-shard-{shard}" in own
        assert "--exclude-sharded" not in own
    # No Deployment's selector matches another's pods, and each has its budget.
    selectors = {name: d["spec"]["selector"]["matchLabels"] for name, d in deployments.items()}
    for name, selector in selectors.items():
        for other, deployment in deployments.items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            matches = all(labels.get(k) == v for k, v in selector.items())
            assert matches is (name == other), (name, other)
    budgets = {budget["metadata"]["name"]: budget["spec"]["selector"]["matchLabels"]
               for budget in _of_kind(docs, "PodDisruptionBudget")}
    assert budgets == {name: selectors[name] for name in deployments}
    # The metrics Service reaches every operator pod of the release.
    (service,) = _of_kind(docs, "Service")
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    # Without shards, the main Deployment acts on every MailConfig.
    assert "--exclude-sharded" not in _container(render(helm, devenv, tmp_path, {}, release="r",
                                                        namespace=namespaces.release))["args"]


def test_namespaced_connections_can_be_refused(helm, devenv, namespaces, tmp_path):
    docs = render(helm, devenv, tmp_path, {"namespacedConnections": False}, release="r", namespace=namespaces.release)
    assert "--no-namespaced-connections" in _container(docs)["args"]


def test_metrics_service_matches_the_operator_port_and_can_be_turned_off(helm, devenv, namespaces, tmp_path):
    on = render(helm, devenv, tmp_path, {}, release="r", namespace=namespaces.release)
    (service,) = _of_kind(on, "Service")
    (port,) = service["spec"]["ports"]
    assert "--metrics-address=0.0.0.0:8080" in _container(on)["args"]
    assert (port["port"], port["targetPort"]) == (8080, "metrics")
    # The operator's own default is the chart's default port.
    assert metrics.DEFAULT_ADDRESS.endswith(":8080")
    off = render(helm, devenv, tmp_path, {"metrics": {"enabled": False}}, release="r", namespace=namespaces.release)
    assert _of_kind(off, "Service") == []
    assert "--metrics-address=off" in _container(off)["args"]


def test_the_google_bridge_runs_apart_from_the_operator_without_a_token(helm, devenv, namespaces, tmp_path):
    docs = render(helm, devenv, tmp_path, {"bridge": {"enabled": True, "tlsSecret": "bridge-tls",
                                                      "clientsSecret": "bridge-clients"}},
                  release="r", namespace=namespaces.release)
    operator, bridge = sorted(_of_kind(docs, "Deployment"), key=lambda d: d["metadata"]["name"])
    assert bridge["metadata"]["name"] == "r-kcmail-bridge"
    pod = bridge["spec"]["template"]["spec"]
    # It never calls the API server: no ServiceAccount token in its pods.
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["args"][:2] == ["bridge", "--listen=0.0.0.0:8443"]
    assert "--clients=/etc/kcmail/clients/clients.json" in container["args"]
    assert "--google-token-url=https://oauth2.googleapis.com/token" in container["args"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "bridge-tls"
    assert volumes["clients"]["secret"]["secretName"] == "bridge-clients"
    # Neither the operator's selector nor its metrics Service picks the bridge's pods, nor the reverse.
    bridge_labels = bridge["spec"]["template"]["metadata"]["labels"]
    operator_selector = operator["spec"]["selector"]["matchLabels"]
    assert not operator_selector.items() <= bridge_labels.items()
    services = {s["metadata"]["name"]: s for s in _of_kind(docs, "Service")}
    assert not services["r-kcmail-metrics"]["spec"]["selector"].items() <= bridge_labels.items()
    assert services["r-kcmail-bridge"]["spec"]["selector"].items() <= bridge_labels.items()
    assert not services["r-kcmail-bridge"]["spec"]["selector"].items() <= (
        operator["spec"]["template"]["metadata"]["labels"].items())
    missing = subprocess.run([str(helm), "template", "r", str(CHART), "--set", "bridge.enabled=true"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0
    assert "bridge.tlsSecret" in missing.stderr


def _metric_families() -> set[str]:
    return {family.name for family in metrics.REGISTRY.collect()}


def test_prometheus_rule_queries_only_metrics_the_operator_exports(helm, devenv, namespaces, tmp_path):
    docs = render(helm, devenv, tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}}, release="r",
                  namespace=namespaces.release)
    (rule,) = _of_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {"KcmailMailConfigNotReady", "KcmailProbesFailing", "KcmailChangeHeld"}
    assert alerts["KcmailChangeHeld"]["for"] == "10m"
    assert 'reason="ChangeHeld"' in alerts["KcmailChangeHeld"]["expr"]
    assert alerts["KcmailMailConfigNotReady"]["for"] == "15m"
    assert "{{ $labels.namespace }}" in alerts["KcmailMailConfigNotReady"]["annotations"]["summary"]
    families = _metric_families()
    for alert in alerts.values():
        for name in re.findall(r"\bkcmail_[a-z_]+", alert["expr"]):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert base in families, f"{alert['alert']} queries {name}, which kcmail does not export"


def _rules(docs: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    """(verb, group, resource, namespace) for every rule of every Role and ClusterRole."""
    found = []
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        found.append((verb, group, resource, doc["metadata"].get("namespace")))
    return found


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_rbac_grants_only_the_verbs_the_operator_uses(scope, helm, devenv, namespaces, tmp_path):
    docs = render(helm, devenv, tmp_path, {"watchNamespaces": [namespaces.watched], "rbac": {"scope": scope}},
                  release="r", namespace=namespaces.release)
    rules = _rules(docs)
    assert rules
    assert not [r for r in rules if "*" in r[:3]]
    writes = {(verb, resource) for verb, _, resource, _ in rules if verb not in ("get", "list", "watch")}
    assert writes == {("patch", "mailconfigs"), ("patch", "keycloakconnections"),
                      ("patch", "clusterkeycloakconnections"), ("patch", "mailconfigs/status"),
                      ("patch", "keycloakconnections/status"), ("patch", "clusterkeycloakconnections/status"),
                      ("create", "events"), ("patch", "events"), ("create", "leases"), ("update", "leases")}
    # The Lease is the operator's own, in the release namespace alone.
    assert {namespace for _, group, resource, namespace in rules if resource == "leases"} == {namespaces.release}
    assert {group for _, group, resource, _ in rules if resource == "leases"} == {"coordination.k8s.io"}
    secret_verbs = {verb for verb, _, resource, _ in rules if resource == "secrets"}
    assert secret_verbs == {"get", "list", "watch"}


# --- the RBAC, for real -----------------------------------------------------------------------------

@dataclasses.dataclass
class InstalledRBAC:
    release: str
    service_account: str
    kubeconfig: Path
    args: list[str]


def _sa_kubeconfig(devenv: Environment, kubectl: Any, service_account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a token from the TokenRequest API."""
    token = kubectl("create", "token", service_account, "-n", namespace, "--duration=1h")
    assert token.returncode == 0, token.stderr
    write_kubeconfig(path, api_url=devenv.kube_api_url, ca_file=devenv.ca_file, user=service_account,
                     token=token.stdout.strip())
    # In a pod the client's default namespace is the pod's; kopf posts Events of cluster-scoped objects there.
    config = yaml.safe_load(path.read_text())
    config["contexts"][0]["context"]["namespace"] = namespace
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def install_rbac(helm: Path, devenv: Environment, kubectl: Any, namespaces: Namespaces, tmp_path: Path,
                 values: dict[str, Any]) -> InstalledRBAC:
    """Apply the chart's ServiceAccount and RBAC for real (not the Deployment: there is no kubelet)."""
    release = _release()
    docs = render(helm, devenv, tmp_path, values, release=release, namespace=namespaces.release)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                               "RoleBinding")]
    operator_env.apply(devenv, *rbac)
    (service_account,) = _of_kind(docs, "ServiceAccount")
    name = service_account["metadata"]["name"]
    kubeconfig = _sa_kubeconfig(devenv, kubectl, name, namespaces.release, tmp_path / "sa.kubeconfig")
    return InstalledRBAC(release=release, service_account=name, kubeconfig=kubeconfig,
                         args=list(_container(docs)["args"]))


def _local_args(chart_args: list[str], devenv: Environment) -> list[str]:
    """The chart's arguments for `kcmail run`, with in-pod addresses and paths made local."""
    local = []
    for arg in chart_args:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{free_port()}/healthz"
        elif arg.startswith("--metrics-address="):
            arg = f"--metrics-address=127.0.0.1:{free_port()}"
        elif arg.startswith("--ca-bundle="):
            arg = f"--ca-bundle={devenv.ca_file}"
        local.append(arg)
    return local


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ProcessRegistry]:
    registry = ProcessRegistry(tmp_path)
    try:
        yield registry
    finally:
        registry.stop_all()


def _wait_ready(kubectl: Any, namespace: str, name: str, timeout: float = 120,
                resource: str = "mailconfig") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = kubectl("get", resource, name, "-n", namespace, "-o", "json")
        assert result.returncode == 0, result.stderr
        obj = json.loads(result.stdout)
        ready = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)
        current = obj["status"].get("observedGeneration") == obj["metadata"]["generation"] if ready else False
        if ready and ready["status"] == "True" and current:
            return obj
        time.sleep(1)
    raise AssertionError(f"{resource} {namespace}/{name} not Ready in {timeout} s: {json.dumps(obj.get('status'))}")


def _permission_errors(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "forbidden" in line.lower() or "not enough permissions" in line.lower()]


@pytest.mark.parametrize("scope", ["namespaced", "cluster"])
def test_operator_with_only_the_chart_rbac_brings_a_mailconfig_to_ready(scope, helm, devenv, kubectl, namespaces,
                                                                        registry, tmp_path):
    values = {"watchNamespaces": [namespaces.watched], "caBundle": {"secret": "corp-ca"},
              "rbac": {"scope": scope, "connectionSecretNamespaces": [operator_env.SYSTEM_NAMESPACE]},
              "logging": {"format": "json" if scope == "namespaced" else "text"}}
    rbac = install_rbac(helm, devenv, kubectl, namespaces, tmp_path, values)
    who = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=rbac.kubeconfig)
    assert who.stdout == f"system:serviceaccount:{namespaces.release}:{rbac.service_account}"

    realm = f"chart-{uuid.uuid4().hex[:6]}"
    operator_env.create_realm(devenv, realm)
    name = f"mail-{scope}"
    connection = f"kc-{scope}"
    operator_env.apply(devenv, operator_env.issuer_secret(devenv, namespaces.watched, f"oauth-{scope}"),
                       operator_env.xoauth2_mailconfig(devenv, namespaces.watched, name, realm,
                                                       secret_name=f"oauth-{scope}"),
                       *operator_env.keycloak_connection(devenv, namespaces.watched, connection))
    process = registry.start(f"operator-{scope}", [
        sys.executable, "-m", "kcmail.cli", *_local_args(rbac.args, devenv)],
        env={"KUBECONFIG": str(rbac.kubeconfig), "PYTHONUNBUFFERED": "1"})
    try:
        ready = _wait_ready(kubectl, namespaces.watched, name)
        assert next(c for c in ready["status"]["conditions"] if c["type"] == "Ready")["reason"] == "Delivering"
        # A namespaced Connection: kopf adds its finalizer and annotations, kcmail writes its status.
        _wait_ready(kubectl, namespaces.watched, connection, resource="keycloakconnection")
        # Deleting needs the finalizers removed, by the operator, with the chart's RBAC.
        for resource, obj in (("mailconfig", name), ("keycloakconnection", connection)):
            deleted = kubectl("delete", resource, obj, "-n", namespaces.watched, "--timeout=60s")
            assert deleted.returncode == 0, deleted.stderr
    except AssertionError as failure:
        raise AssertionError(f"{failure}\noperator log:\n{process.log.read_text(errors='replace')[-4000:]}") from None
    log = process.log.read_text(errors="replace")
    assert _permission_errors(log) == [], log[-4000:]
    # It led on the Lease the chart's RBAC grants, where a laptop run would find it.
    assert f"leading: holding Lease {namespaces.release}/{defaults.LEADER_ELECTION_ID}" in log
    if values["logging"]["format"] == "json":
        lines = [json.loads(line) for line in log.splitlines()]
        assert any(f"{namespaces.watched}/{name}: reconciled: Ready=True" in line["message"] for line in lines)


def _can_i(kubectl: Any, kubeconfig: Path, *args: str) -> bool:
    result = kubectl("auth", "can-i", *args, kubeconfig=kubeconfig)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_namespaced_rbac_keeps_secrets_of_other_namespaces_out_of_reach(helm, devenv, kubectl, namespaces, tmp_path):
    values = {"watchNamespaces": [namespaces.watched],
              "rbac": {"scope": "namespaced", "connectionSecretNamespaces": [operator_env.SYSTEM_NAMESPACE]}}
    rbac = install_rbac(helm, devenv, kubectl, namespaces, tmp_path, values)
    operator_env.apply(devenv, operator_env.secret(namespaces.unwatched, "elsewhere", {"password": "not-yours"}))

    denied = kubectl("get", "secret", "elsewhere", "-n", namespaces.unwatched, kubeconfig=rbac.kubeconfig)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert "not-yours" not in denied.stdout + denied.stderr

    as_operator = rbac.kubeconfig
    assert _can_i(kubectl, as_operator, "list", "secrets", "-n", namespaces.watched)
    assert not _can_i(kubectl, as_operator, "get", "secrets", "-n", namespaces.unwatched)
    assert not _can_i(kubectl, as_operator, "list", "secrets", "--all-namespaces")
    # The Connection Secrets' namespace: one Secret at a time, never a listing.
    assert _can_i(kubectl, as_operator, "get", "secrets", "-n", operator_env.SYSTEM_NAMESPACE)
    assert not _can_i(kubectl, as_operator, "list", "secrets", "-n", operator_env.SYSTEM_NAMESPACE)
    # Writes are patches of its own kinds, and Events; it creates, updates and deletes nothing else.
    assert _can_i(kubectl, as_operator, "patch", "mailconfigs.kcmail.io", "-n", namespaces.watched)
    assert not _can_i(kubectl, as_operator, "patch", "mailconfigs.kcmail.io", "-n", namespaces.unwatched)
    for verb, resource in (("update", "mailconfigs.kcmail.io"), ("delete", "mailconfigs.kcmail.io"),
                           ("create", "secrets"), ("update", "secrets"), ("delete", "keycloakconnections.kcmail.io")):
        assert not _can_i(kubectl, as_operator, verb, resource, "-n", namespaces.watched), (verb, resource)
    assert not _can_i(kubectl, as_operator, "delete", "clusterkeycloakconnections.kcmail.io")
    assert not _can_i(kubectl, as_operator, "create", "customresourcedefinitions.apiextensions.k8s.io")


def _wait_reason(kubectl: Any, namespace: str | None, name: str, reason: str, *, resource: str = "mailconfig",
                 timeout: float = 90) -> dict[str, Any]:
    """Poll until the object's Ready condition (for its current generation) has ``reason``."""
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = kubectl("get", resource, name, *(["-n", namespace] if namespace else []), "-o", "json")
        assert result.returncode == 0, result.stderr
        obj = json.loads(result.stdout)
        status = obj.get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if ready and ready["reason"] == reason and status.get("observedGeneration") == obj["metadata"]["generation"]:
            return ready
        time.sleep(1)
    raise AssertionError(f"{resource} {name}: no Ready reason {reason} in {timeout} s: {json.dumps(obj.get('status'))}")


def test_an_operator_held_to_its_namespace_says_what_it_may_not_read_or_use(helm, devenv, kubectl, namespaces,
                                                                           registry, tmp_path):
    # Namespaced RBAC without rbac.connectionSecretNamespaces: the ClusterKeycloakConnection's Secrets (in
    # kcmail-system) are out of reach. And namespaced KeycloakConnections refused.
    values = {"watchNamespaces": [namespaces.watched], "namespacedConnections": False,
              "rbac": {"scope": "namespaced"}}
    rbac = install_rbac(helm, devenv, kubectl, namespaces, tmp_path, values)
    assert "--no-namespaced-connections" in rbac.args
    realm = f"held-{uuid.uuid4().hex[:6]}"
    operator_env.create_realm(devenv, realm)
    ns = namespaces.watched
    operator_env.apply(devenv, operator_env.issuer_secret(devenv, ns, "oauth-held"),
                       operator_env.xoauth2_mailconfig(devenv, ns, "via-cluster", realm, secret_name="oauth-held"),
                       *operator_env.keycloak_connection(devenv, ns, "tenant-kc"),
                       operator_env.xoauth2_mailconfig(devenv, ns, "via-namespaced", realm, secret_name="oauth-held",
                                                       connectionRef={"kind": "KeycloakConnection",
                                                                      "name": "tenant-kc"}))
    keycloak_log_start = devenv.keycloak_log.stat().st_size
    process = registry.start("operator-held", [sys.executable, "-m", "kcmail.cli", *_local_args(rbac.args, devenv)],
                             env={"KUBECONFIG": str(rbac.kubeconfig), "PYTHONUNBUFFERED": "1"})
    try:
        forbidden = _wait_reason(kubectl, ns, "via-cluster", "KubernetesForbidden")
        assert "forbidden" in forbidden["message"].lower()
        assert "rbac.connectionSecretNamespaces" in forbidden["message"]
        refused = _wait_reason(kubectl, ns, "via-namespaced", "ConnectionNotAllowed")
        assert "--no-namespaced-connections" in refused["message"]
        connection = _wait_reason(kubectl, ns, "tenant-kc", "ConnectionNotAllowed", resource="keycloakconnection")
        assert "ClusterKeycloakConnection" in connection["message"]
    except AssertionError as failure:
        raise AssertionError(f"{failure}\noperator log:\n{process.log.read_text(errors='replace')[-4000:]}") from None
    registry.stop_all()
    assert KeycloakAdminAPI(devenv).realm(realm).get("smtpServer") in (None, {})
    # Neither Connection led kcmail to Keycloak: the namespaced one is refused unread, the cluster one unreadable.
    # (The access log does record requests: the test's own read of the realm just now is in it, once Keycloak
    # has written its access-log line, which may come a moment after the answer.)
    deadline = time.monotonic() + 10
    while True:
        with devenv.keycloak_log.open(errors="replace") as log:
            log.seek(keycloak_log_start)
            requests = [line for line in log if '"GET /admin/realms/' in line or '"POST /' in line]
        if any(f"/admin/realms/{realm} " in line for line in requests) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any(f"/admin/realms/{realm} " in line for line in requests)
    assert [line for line in requests if '"kcmail/' in line] == []


# --- the commands docs/install.md gives ---------------------------------------------------------------

DOCS = CHART.parents[1] / "docs"


def test_helm_is_the_pinned_release_stamped_with_the_kubernetes_it_was_built_for(helm, devenv):
    version = subprocess.run([str(helm), "version", "--template", "{{.Version}}"], capture_output=True, text=True,
                             timeout=30, check=False)
    assert version.stdout == f"v{versions.HELM}"
    # Without --kube-version, helm assumes the Kubernetes of its client-go; the chart needs 1.29 or newer.
    result = subprocess.run([str(helm), "template", "x", str(CHART)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_documented_crd_upgrade_applies_over_installed_crds(kubectl, namespaces):
    text = (DOCS / "install.md").read_text()
    command = "kubectl apply --server-side --force-conflicts -f charts/kcmail/crds/"
    assert command in text
    result = kubectl(*command.split()[1:-1], str(CHART / "crds"), "--dry-run=server")
    assert result.returncode == 0, result.stderr


def _finalizer_snippet(doc: str) -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (DOCS / doc).read_text(), flags=re.DOTALL)
    (snippet,) = [block for block in blocks if '"finalizers":[]' in block and "for kind in" in block]
    return snippet


def test_documented_finalizer_removal_frees_only_objects_being_deleted(devenv, kubectl, namespaces, tmp_path):
    assert _finalizer_snippet("install.md") == _finalizer_snippet("argocd.md")
    namespace, suffix = namespaces.unwatched, uuid.uuid4().hex[:6]
    held = {"finalizers": ["kcmail.io/finalizer"]}
    mailconfig = operator_env.xoauth2_mailconfig(devenv, namespace, f"stuck-{suffix}", "nowhere", secret_name="none")
    kept = operator_env.xoauth2_mailconfig(devenv, namespace, f"kept-{suffix}", "nowhere", secret_name="none")
    (*_, connection) = operator_env.keycloak_connection(devenv, namespace, f"stuck-{suffix}")
    cluster_connection = operator_env.cluster_connection(devenv, f"stuck-{suffix}")
    stuck = [mailconfig, connection, cluster_connection]
    for obj in [*stuck, kept]:
        obj["metadata"].update(held)
    operator_env.apply(devenv, *stuck, kept)
    for obj in stuck:
        where = ["-n", namespace] if obj["metadata"].get("namespace") else []
        deleting = kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], *where, "--wait=false")
        assert deleting.returncode == 0, deleting.stderr

    # No operator runs here: as after an uninstall, nothing removes the finalizers but the snippet.
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", _finalizer_snippet("install.md")],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={"PATH": f"{devenv.kubectl.parent}:/usr/bin:/bin", "HOME": str(tmp_path),
                                 "KUBECONFIG": str(devenv.kubeconfig)})
    assert result.returncode == 0, result.stderr
    for obj in stuck:
        where = ["-n", namespace] if obj["metadata"].get("namespace") else []
        gone = kubectl("get", obj["kind"].lower(), obj["metadata"]["name"], *where)
        assert "NotFound" in gone.stderr, (obj["kind"], gone.stdout)
    still = json.loads(kubectl("get", "mailconfig", f"kept-{suffix}", "-n", namespace, "-o", "json").stdout)
    assert still["metadata"]["finalizers"] == ["kcmail.io/finalizer"]
    # Gone before an operator of a later test could pick it up.
    kubectl("patch", "mailconfig", f"kept-{suffix}", "-n", namespace, "--type=merge",
            "-p", '{"metadata":{"finalizers":[]}}')
    assert kubectl("delete", "mailconfig", f"kept-{suffix}", "-n", namespace).returncode == 0
