"""The install a user does, on a real node: ``helm install`` of charts/kcmail with the image built from the
Dockerfile, run by a kubelet and containerd, in a namespace where the restricted Pod Security Standard is
enforced.

The tests are one release's life, in order: installed, used (a MailConfig Ready and a mail Keycloak
delivers), scraped, upgraded (the Deployment rolls, the Lease moves, nothing is written twice), and
uninstalled as docs/install.md says. The node has no kube-proxy and no cluster DNS, so the release is
given the API server's address (``KUBERNETES_SERVICE_HOST``/``_PORT`` through ``extraEnv``), and the
metrics are scraped the way Prometheus does it: at the addresses the Service's EndpointSlices list.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kcmail.devenv import operator_env
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import Environment
from kcmail.devenv.mail_spool import wait_for_message

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kcmail"
RELEASE = "kcmail"
NAMESPACE = operator_env.SYSTEM_NAMESPACE
# A tenant namespace and a realm of this run's own, so that a node environment can be reused
# (KCMAIL_NODE_DEVENV_FILE).
RUN = uuid.uuid4().hex[:6]
TENANT = f"tenant-{RUN}"
REALM = f"acme-{RUN}"
MAILCONFIG = "acme"
SELECTOR = "app.kubernetes.io/name=kcmail"

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 1.0) -> T:
    """``check``'s first truthy answer, polled at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


@dataclass
class Release:
    env: Environment
    admin: KeycloakAdminAPI
    values: Path
    # Logs of pods that may be gone by the time a test reads them, streamed to files as they run.
    followers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The environment's kubectl as the cluster admin; never raises on a non-zero exit."""
        return subprocess.run([str(self.env.kubectl), "--kubeconfig", str(self.env.kubeconfig), "--cache-dir",
                               str(self.env.kube_cache), *args], input=stdin, capture_output=True, text=True,
                              timeout=120, check=False)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.kubectl(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.env.helm), "--kubeconfig", str(self.env.kubeconfig), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def pods(self) -> list[dict[str, Any]]:
        """The operator's pods that are not on their way out."""
        items = self.json("-n", NAMESPACE, "get", "pods", "-l", SELECTOR)["items"]
        return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]

    def ready_pods(self) -> list[dict[str, Any]]:
        return [pod for pod in self.pods() if pod["status"].get("phase") == "Running"
                and all(c.get("ready") for c in pod["status"].get("containerStatuses", []))]

    def lease_holder(self) -> str:
        holder = self.json("-n", NAMESPACE, "get", "lease", RELEASE)["spec"].get("holderIdentity") or ""
        # kcmail names itself <pod>_<suffix> (kcmail.leader.identity).
        return str(holder).rpartition("_")[0]

    def mailconfig(self) -> dict[str, Any]:
        return dict(self.json("-n", TENANT, "get", "mailconfig", MAILCONFIG))

    def ready(self) -> dict[str, Any] | None:
        status = self.mailconfig().get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)

    def realm_writes(self) -> int:
        return len(self.admin.admin_events(REALM, operation="UPDATE", resource_type="REALM"))

    def follow_logs(self, pod: str, path: Path) -> None:
        with path.open("wb") as out:
            self.followers.append(subprocess.Popen(
                [str(self.env.kubectl), "--kubeconfig", str(self.env.kubeconfig), "-n", NAMESPACE, "logs", "-f",
                 pod], stdout=out, stderr=subprocess.STDOUT))


@pytest.fixture(scope="module")
def release(node_env: Environment, node_admin: KeycloakAdminAPI,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    work = tmp_path_factory.mktemp("release")
    values = work / "values.yaml"
    api_port = node_env.kube_api_url.rpartition(":")[2]
    values.write_text(yaml.safe_dump({
        # The CA of the environment's servers, for Keycloak, the token endpoint and the SMTP servers.
        "caBundle": {"configMap": "kcmail-ca"},
        # No kube-proxy on this node: the pods reach the API server at the node's address directly.
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": node_env.node_address},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": api_port}],
    }))
    rel = Release(env=node_env, admin=node_admin, values=values)
    rel.ok("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    rel.ok("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kcmail-ca", "namespace": NAMESPACE},
        "data": {"ca.crt": node_env.ca_file.read_text()}}))
    installed = rel.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values), "--wait",
                         "--timeout", "4m")
    assert installed.returncode == 0, installed.stderr
    try:
        yield rel
    finally:
        for follower in rel.followers:
            follower.kill()
            follower.wait(timeout=10)
        rel.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m")


def test_the_pods_are_admitted_under_the_restricted_standard_and_pass_their_liveness_probe(release):
    labels = release.json("get", "namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The standard is enforced here, not only labelled: a privileged pod is refused by the API server.
    privileged = release.kubectl("-n", NAMESPACE, "apply", "--dry-run=server", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "kcmail:0.1.0",
                                 "securityContext": {"privileged": True}}]}}))
    assert privileged.returncode != 0
    assert "violates PodSecurity" in privileged.stderr, privileged.stderr
    pods = eventually(lambda: ready if len(ready := release.ready_pods()) == 2 else None, timeout=120,
                      what="two Ready operator pods")
    for pod in pods:
        (status,) = pod["status"]["containerStatuses"]
        assert status["restartCount"] == 0, status
        assert status["image"].endswith("kcmail:0.1.0")
        name = pod["metadata"]["name"]
        who = release.ok("-n", NAMESPACE, "exec", name, "--", "python3", "-c",
                         "import os; print(os.getuid(), os.getgid())")
        assert who.split() == ["10001", "10001"]
        # The root filesystem is read-only; /tmp is the chart's emptyDir.
        written = release.kubectl("-n", NAMESPACE, "exec", name, "--", "python3", "-c",
                                  "open('/probe-write', 'w')")
        assert written.returncode != 0
        assert "Read-only file system" in written.stderr, written.stderr
        # The pod network is the host-only bridge and nothing else: no route leads off it.
        routed = release.kubectl("-n", NAMESPACE, "exec", name, "--", "python3", "-c",
                                 "import socket; socket.create_connection(('192.0.2.1', 9), timeout=5)")
        assert "Network is unreachable" in routed.stderr, routed.stderr
        # The kubelet's liveness probe (15 s initial delay, every 30 s) reaches kopf's /healthz and gets 200.
        eventually(lambda name=name: '"GET /healthz HTTP/1.1" 200' in release.ok("-n", NAMESPACE, "logs", name)
                   and "kube-probe/" in release.ok("-n", NAMESPACE, "logs", name),
                   timeout=90, interval=3, what=f"a liveness probe of {name} answered 200")
    assert release.lease_holder() in {pod["metadata"]["name"] for pod in pods}


def test_a_mailconfig_becomes_ready_and_keycloak_delivers_through_the_settings_it_wrote(release):
    env = release.env
    operator_env.create_realm(env, REALM)
    release.admin.record_admin_events(REALM)
    operator_env.install_connection(env)
    operator_env.apply(env, operator_env.namespace(TENANT), operator_env.issuer_secret(env, TENANT, "acme-oauth"),
                       operator_env.xoauth2_mailconfig(env, TENANT, MAILCONFIG, REALM, secret_name="acme-oauth"))
    ready = eventually(lambda: (c := release.ready()) and c["status"] == "True" and c, timeout=120,
                       what="MailConfig Ready")
    assert ready["reason"] == "Delivering", ready
    stored = release.admin.realm(REALM)["smtpServer"]
    assert (stored["host"], stored["authType"]) == (env.node_address, "token")
    since = datetime.datetime.now(datetime.UTC)
    sent = release.admin.request("POST", f"/{REALM}/testSMTPConnection", json=stored)
    assert sent.status_code == 204, sent.text
    message = wait_for_message(env.smtp_spool, lambda m: m.received_at >= since
                               and env.keycloak_admin_email in m.rcpt_tos, timeout=30)
    assert message.auth is not None
    assert message.auth.mechanism == "XOAUTH2"
    assert message.auth.client_id == env.issuer_client_id
    assert release.realm_writes() == 1


def _scrape(address: str, port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"http://{address}:{port}/metrics", timeout=10)
    response.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_the_metrics_are_scraped_at_the_addresses_the_service_lists(release):
    (service,) = release.json("-n", NAMESPACE, "get", "services", "-l", SELECTOR)["items"]
    slices = release.json("-n", NAMESPACE, "get", "endpointslices", "-l",
                          f"kubernetes.io/service-name={service['metadata']['name']}")["items"]
    (port,) = [p["port"] for s in slices for p in s["ports"] if p["name"] == "metrics"]
    addresses = sorted(a for s in slices for e in s["endpoints"] for a in e["addresses"])
    assert addresses == sorted(pod["status"]["podIP"] for pod in release.ready_pods())
    scraped = {address: _scrape(address, port) for address in addresses}
    lease = f"{NAMESPACE}/{RELEASE}"
    leading = [a for a, samples in scraped.items() if samples.get(("kcmail_leader", frozenset({("lease", lease)})))]
    # One pod acts; the other follows and says so.
    assert len(scraped) == 2
    assert len(leading) == 1, scraped.keys()
    samples = scraped[leading[0]]
    ready = frozenset({("namespace", TENANT), ("name", MAILCONFIG), ("status", "True"), ("reason", "Delivering")})
    assert samples.get(("kcmail_mailconfig_ready", ready)) == 1.0


def test_helm_upgrade_rolls_the_pods_and_hands_the_lease_over_without_writing_twice(release, tmp_path):
    before = {pod["metadata"]["name"] for pod in release.pods()}
    leader = release.lease_holder()
    assert leader in before
    for name in before:
        release.follow_logs(name, tmp_path / f"{name}.log")
    writes = release.realm_writes()
    upgraded = release.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reset-then-reuse-values",
                            "-f", str(release.values), "--set-string", f"podAnnotations.rollout={uuid.uuid4().hex}",
                            "--wait", "--timeout", "4m")
    assert upgraded.returncode == 0, upgraded.stderr
    after = eventually(lambda: (names := {p["metadata"]["name"] for p in release.ready_pods()})
                       and len(names) == 2 and not names & before and len(release.pods()) == 2 and names,
                       timeout=180, what="two new Ready pods and none of the old ones")
    new_leader = eventually(lambda: (holder := release.lease_holder()) in after and holder, timeout=60,
                            what="a new pod holding the Lease")
    # The old pods stopped on SIGTERM: the leader released its Lease on the way out; neither crashed.
    for follower in release.followers:
        follower.wait(timeout=60)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in before}
    assert f"released Lease {NAMESPACE}/{RELEASE}" in logs[leader], logs[leader][-2000:]
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
    # The new leader takes the MailConfig up again (asked to at once here) and finds nothing to write.
    asked = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    release.ok("-n", TENANT, "annotate", "--overwrite", "mailconfig", MAILCONFIG, f"kcmail.io/requested-at={asked}")
    eventually(lambda: (release.mailconfig().get("status") or {}).get("lastHandledRequestedAt") == asked,
               timeout=60, what=f"{new_leader} handled the request")
    assert (release.ready() or {}).get("status") == "True"
    assert release.realm_writes() == writes
    # A change made after the handover is written once, by the new leader.
    release.ok("-n", TENANT, "patch", "mailconfig", MAILCONFIG, "--type=merge", "-p",
               json.dumps({"spec": {"sender": {"from": "no-reply@acme.example", "fromDisplayName": "after upgrade"}}}))
    eventually(lambda: release.admin.realm(REALM)["smtpServer"].get("fromDisplayName") == "after upgrade",
               timeout=90, what="the changed display name in the realm")
    eventually(lambda: (c := release.ready()) and c["status"] == "True"
               and release.mailconfig()["status"].get("observedGeneration")
               == release.mailconfig()["metadata"]["generation"], timeout=90, what="Ready for the new generation")
    assert release.realm_writes() == writes + 1
    logged = release.ok("-n", NAMESPACE, "logs", new_leader)
    assert f"MailConfig {TENANT}/{MAILCONFIG}: SettingsApplied" in logged


def test_uninstall_as_docs_install_md_says_leaves_the_realm_and_the_crds(release):
    stored = release.admin.realm(REALM)["smtpServer"]
    # The MailConfigs first, while kcmail runs: it removes their finalizers (deletionPolicy Retain).
    deleted = release.kubectl("delete", "mailconfigs", "--all", "-A", "--wait", "--timeout=90s")
    assert deleted.returncode == 0, deleted.stderr
    release.ok("delete", "clusterkeycloakconnections", "--all", "--wait", "--timeout=90s")
    assert release.admin.realm(REALM)["smtpServer"] == stored
    uninstalled = release.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m")
    assert uninstalled.returncode == 0, uninstalled.stderr
    eventually(lambda: not release.json("-n", NAMESPACE, "get", "pods", "-l", SELECTOR)["items"], timeout=90,
               what="no operator pod left")
    assert release.json("-n", NAMESPACE, "get", "deployments,services,serviceaccounts", "-l", SELECTOR)["items"] == []
    # Helm leaves the CRDs behind on purpose; the documented command removes them.
    release.ok("get", "crd", "mailconfigs.kcmail.io")
    release.ok("delete", "-f", str(CHART / "crds"), "--wait", "--timeout=90s")
    assert release.kubectl("get", "crd", "mailconfigs.kcmail.io").returncode != 0
