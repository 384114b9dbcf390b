"""The chart's Google token bridge on a real node: Keycloak, a host process, fetches a token from the
bridge's pod, which makes Google's grant at the environment's Google stand-in, and delivers a mail through
the environment's SMTP server as the Workspace mailbox.

The node has no Service routing for host processes and no cluster DNS, so Keycloak asks a pod's address
from the bridge Service's EndpointSlice, and the test's certificate names every address of the pod network.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcmail.bridge.registry import secret_digest
from kcmail.devenv import node, operator_env
from kcmail.devenv.certs import CertificateAuthority
from kcmail.devenv.environment import Environment
from kcmail.devenv.mail_spool import wait_for_message

pytestmark = pytest.mark.node

CHART = Path(__file__).resolve().parents[2] / "charts" / "kcmail"
NAMESPACE = "kcmail-gmail"
RELEASE = "gmail"
CLIENT = "acme-gmail"


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


@pytest.fixture(scope="module")
def bridge(node_env: Environment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("bridge-on-node")
    keys = json.loads(Path(node_env.google_keys).read_text())
    client_secret = secrets.token_urlsafe(32)
    pod_network = [str(a) for a in ipaddress.ip_network(node.POD_SUBNET).hosts()]
    serving = CertificateAuthority(Path(node_env.state_dir) / "pki").issue(
        f"bridge-on-node-{uuid.uuid4().hex[:6]}", "kcmail-bridge", names=tuple(pod_network), rsa_key=True)
    _ok(node_env, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted"}}}))
    _ok(node_env, "apply", "-f", "-", stdin=_secret("bridge-tls", {
        "tls.crt": serving.cert.read_text(), "tls.key": serving.key.read_text()}, "kubernetes.io/tls"))
    _ok(node_env, "apply", "-f", "-", stdin=_secret("bridge-clients", {"clients.json": json.dumps({"clients": {
        CLIENT: {"secretSha256": secret_digest(client_secret), "mailbox": keys["mailboxes"][0],
                 "serviceAccountKey": keys["delegated"]}}})}))
    _ok(node_env, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "env-ca", "namespace": NAMESPACE},
        "data": {"ca.crt": Path(node_env.ca_file).read_text()}}))
    values = work / "values.yaml"
    values.write_text(yaml.safe_dump({
        "replicas": 1,
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": node_env.node_address},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": node_env.kube_api_url.rpartition(":")[2]}],
        "bridge": {"enabled": True, "replicas": 1, "tlsSecret": "bridge-tls", "clientsSecret": "bridge-clients",
                   # The stand-in for Google, and the environment's CA for it.
                   "googleTokenURL": node_env.google_token_url, "tokenEndpointCA": {"configMap": "env-ca"}},
    }))
    helm = [str(node_env.helm), "--kubeconfig", str(node_env.kubeconfig)]
    installed = subprocess.run([*helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values),
                                "--wait", "--timeout", "4m"], capture_output=True, text=True, timeout=300, check=False)
    assert installed.returncode == 0, installed.stderr
    try:
        yield {"secret": client_secret, "mailbox": keys["mailboxes"][0], "client_id": keys["delegated"]["client_id"]}
    finally:
        subprocess.run([*helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m"],
                       capture_output=True, timeout=180, check=False)


def test_keycloak_sends_through_the_bridge_pod_as_the_workspace_mailbox(node_env, node_admin, bridge):
    (pod,) = json.loads(_ok(node_env, "-n", NAMESPACE, "get", "pods", "-l",
                            "app.kubernetes.io/component=bridge", "-o", "json"))["items"]
    # Admitted under "restricted", Ready by its HTTPS readiness probe, and without an API token.
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    assert not any(v.get("projected") for v in pod["spec"]["volumes"])
    slices = json.loads(_ok(node_env, "-n", NAMESPACE, "get", "endpointslices", "-l",
                            f"kubernetes.io/service-name={RELEASE}-kcmail-bridge", "-o", "json"))["items"]
    (address,) = [a for s in slices for e in s["endpoints"] for a in e["addresses"]]
    url = f"https://{address}:8443/token"
    realm = f"gmail-{uuid.uuid4().hex[:6]}"
    operator_env.create_realm(node_env, realm)
    try:
        representation = node_admin.realm(realm)
        representation["smtpServer"] = {
            "host": node_env.smtp_host, "port": str(node_env.smtp_starttls_port), "starttls": "true",
            "ssl": "false", "auth": "true", "from": bridge["mailbox"], "user": bridge["mailbox"],
            "authType": "token", "authTokenUrl": url, "authTokenScope": "https://mail.google.com/",
            "authTokenClientId": CLIENT, "authTokenClientSecret": bridge["secret"]}
        assert node_admin.put_realm(realm, representation).status_code == 204
        since = datetime.datetime.now(datetime.UTC)
        sent = node_admin.request("POST", f"/{realm}/testSMTPConnection", json=node_admin.realm(realm)["smtpServer"])
        assert sent.status_code == 204, sent.text
        message = wait_for_message(node_env.smtp_spool, lambda m: m.received_at >= since
                                   and node_env.keycloak_admin_email in m.rcpt_tos, timeout=30)
        assert message.auth is not None
        assert (message.auth.mechanism, message.auth.user) == ("XOAUTH2", bridge["mailbox"])
        assert message.auth.client_id == bridge["client_id"]
    finally:
        node_admin.request("DELETE", f"/{realm}")
    # The pod's log names the client and the outcome, never the secret or the token.
    deadline = time.monotonic() + 30
    log = ""
    while time.monotonic() < deadline and "handed out" not in log:
        log = _ok(node_env, "-n", NAMESPACE, "logs", pod["metadata"]["name"])
        time.sleep(1)
    assert f"token for client {CLIENT}" in log
    assert bridge["secret"] not in log
    assert "ya29." not in log
