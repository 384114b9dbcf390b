"""The chart's Google token bridge on a real node, as a user installs it: ``bridge.enabled`` with the registry
the operator keeps. A MailConfig with ``googleServiceAccount`` makes the operator's pod enrol it in the
registry Secret (through its ServiceAccount's Role), the bridge's pod reads that one Secret (through its own
Role, which allows nothing else), the probe fetches a token through the bridge and the MailConfig becomes
Ready; then Keycloak, a host process, fetches a token from the bridge's pod and delivers a mail as the
Workspace mailbox through the environment's SMTP server.

The node has no Service routing for host processes and no cluster DNS, so the release is pointed at the
bridge pod's address from its Service's EndpointSlice (``bridge.url``), and the test's certificate names
every address of the pod network.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcmail.devenv import node, operator_env
from kcmail.devenv.certs import CertificateAuthority
from kcmail.devenv.environment import Environment
from kcmail.devenv.mail_spool import wait_for_message

pytestmark = pytest.mark.node

CHART = Path(__file__).resolve().parents[2] / "charts" / "kcmail"
NAMESPACE = "kcmail-gmail"
RELEASE = "gmail"
TENANT = "gmail-tenant"
REGISTRY = f"{RELEASE}-kcmail-bridge-registry"


def _kubectl(env: Environment, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(env.kubectl), "--kubeconfig", str(env.kubeconfig), "--cache-dir",
                           str(env.kube_cache), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


def _ok(env: Environment, *args: str, stdin: str | None = None) -> str:
    result = _kubectl(env, *args, stdin=stdin)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def _secret(name: str, data: dict[str, str], kind: str = "Opaque") -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "type": kind,
                           "metadata": {"name": name, "namespace": NAMESPACE}, "stringData": data})


def _bridge_pod(env: Environment) -> dict[str, Any]:
    (pod,) = [p for p in json.loads(_ok(env, "-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=bridge",
                                        "-o", "json"))["items"] if not p["metadata"].get("deletionTimestamp")]
    return dict(pod)


@pytest.fixture(scope="module")
def bridge(node_env: Environment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("bridge-on-node")
    keys = json.loads(Path(node_env.google_keys).read_text())
    pod_network = [str(a) for a in ipaddress.ip_network(node.POD_SUBNET).hosts()]
    serving = CertificateAuthority(Path(node_env.state_dir) / "pki").issue(
        f"bridge-on-node-{uuid.uuid4().hex[:6]}", "kcmail-bridge", names=tuple(pod_network), rsa_key=True)
    _ok(node_env, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted"}}}))
    _ok(node_env, "apply", "-f", "-", stdin=_secret("bridge-tls", {
        "tls.crt": serving.cert.read_text(), "tls.key": serving.key.read_text()}, "kubernetes.io/tls"))
    _ok(node_env, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "env-ca", "namespace": NAMESPACE},
        "data": {"ca.crt": Path(node_env.ca_file).read_text()}}))
    values = work / "values.yaml"
    values.write_text(yaml.safe_dump({
        "replicas": 1,
        # The environment's CA, for Keycloak, the bridge and the SMTP server.
        "caBundle": {"configMap": "env-ca"},
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": node_env.node_address},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": node_env.kube_api_url.rpartition(":")[2]}],
        "bridge": {"enabled": True, "replicas": 1, "tlsSecret": "bridge-tls",
                   # The bridge reads its registry through the API: the same address, with no kube-proxy.
                   "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": node_env.node_address},
                                {"name": "KUBERNETES_SERVICE_PORT",
                                 "value": node_env.kube_api_url.rpartition(":")[2]}],
                   # The stand-in for Google, and the environment's CA for it.
                   "googleTokenURL": node_env.google_token_url, "tokenEndpointCA": {"configMap": "env-ca"}},
    }))
    helm = [str(node_env.helm), "--kubeconfig", str(node_env.kubeconfig)]
    installed = subprocess.run([*helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values),
                                "--wait", "--timeout", "4m"], capture_output=True, text=True, timeout=300, check=False)
    assert installed.returncode == 0, installed.stderr
    try:
        # No cluster DNS or Service routing for Keycloak on the host: the bridge pod's own address.
        slices = json.loads(_ok(node_env, "-n", NAMESPACE, "get", "endpointslices", "-l",
                                f"kubernetes.io/service-name={RELEASE}-kcmail-bridge", "-o", "json"))["items"]
        (address,) = [a for s in slices for e in s["endpoints"] for a in e["addresses"]]
        url = f"https://{address}:8443/token"
        upgraded = subprocess.run([*helm, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values),
                                   "--set", f"bridge.url={url}", "--wait", "--timeout", "4m"],
                                  capture_output=True, text=True, timeout=300, check=False)
        assert upgraded.returncode == 0, upgraded.stderr
        yield {"url": url, "keys": keys, "mailbox": keys["mailboxes"][0]}
    finally:
        _kubectl(node_env, "-n", TENANT, "delete", "mailconfig", "--all", "--timeout=60s")
        subprocess.run([*helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m"],
                       capture_output=True, timeout=180, check=False)
        _kubectl(node_env, "-n", NAMESPACE, "delete", "secret", REGISTRY)


def test_a_google_service_account_mailconfig_sends_through_the_bridge_pod(node_env, node_admin, bridge):
    pod = _bridge_pod(node_env)
    # Admitted under "restricted", Ready by its HTTPS readiness probe.
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    # Its ServiceAccount may read its registry and no other Secret.
    who = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-kcmail-bridge"
    for resource, allowed in ((f"secret/{REGISTRY}", "yes"), ("secret/bridge-tls", "no"), ("secrets", "no")):
        answer = _kubectl(node_env, "auth", "can-i", "get", resource, "-n", NAMESPACE, "--as", who)
        assert answer.stdout.strip() == allowed, (resource, answer.stdout, answer.stderr)

    realm = f"gmail-{uuid.uuid4().hex[:6]}"
    operator_env.create_realm(node_env, realm)
    try:
        operator_env.install_connection(node_env)
        mailbox = bridge["mailbox"]
        mailconfig = operator_env.xoauth2_mailconfig(node_env, TENANT, "gmail", realm, secret_name="unused",
                                                     mailbox=mailbox, deletionPolicy="Clear")
        mailconfig["spec"]["auth"]["xoauth2"] = {"googleServiceAccount": {"keySecretRef": {"name": "gmail-key"}}}
        operator_env.apply(node_env, operator_env.namespace(TENANT), operator_env.secret(
            TENANT, "gmail-key", {"key.json": json.dumps(bridge["keys"]["delegated"])}), mailconfig)
        deadline = time.monotonic() + 120
        ready: dict[str, Any] = {}
        while time.monotonic() < deadline and ready.get("status") != "True":
            status = json.loads(_ok(node_env, "-n", TENANT, "get", "mailconfig", "gmail", "-o", "json")).get("status")
            ready = next((c for c in (status or {}).get("conditions", []) if c["type"] == "Ready"), {})
            time.sleep(1)
        assert ready.get("status") == "True", ready
        stored = node_admin.realm(realm)["smtpServer"]
        assert (stored["authTokenUrl"], stored["user"]) == (bridge["url"], mailbox)

        # Keycloak fetches its token from the bridge's pod and delivers as the Workspace mailbox.
        since = datetime.datetime.now(datetime.UTC)
        sent = node_admin.request("POST", f"/{realm}/testSMTPConnection", json=stored)
        assert sent.status_code == 204, sent.text
        message = wait_for_message(node_env.smtp_spool, lambda m: m.received_at >= since
                                   and node_env.keycloak_admin_email in m.rcpt_tos, timeout=30)
        assert message.auth is not None
        assert (message.auth.mechanism, message.auth.user) == ("XOAUTH2", mailbox)
        assert message.auth.client_id == bridge["keys"]["delegated"]["client_id"]
    finally:
        _kubectl(node_env, "-n", TENANT, "delete", "mailconfig", "gmail", "--timeout=60s")
        node_admin.request("DELETE", f"/{realm}")
    # The pod's log names the client and the outcome, never the key or a token.
    log = _ok(node_env, "-n", NAMESPACE, "logs", pod["metadata"]["name"])
    assert "handed out" in log
    assert bridge["keys"]["delegated"]["private_key"].splitlines()[1] not in log
    assert "ya29." not in log
