"""The operator on the local environment: CRDs, an admin Connection, realms, and `kcmail run` as a process.

Shared by the end-to-end tests, the demo and the benchmarks, so that all three set kcmail up the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kcmail.devenv.certs import LOOPBACK_NAMES, CertificateAuthority
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import Environment
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "crds"
SYSTEM_NAMESPACE = "kcmail-system"
CONNECTION = "main"


def kubectl(env: Environment, *args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The environment's kubectl as its admin; never raises on a non-zero exit."""
    command = [str(env.kubectl), f"--kubeconfig={env.kubeconfig}", f"--cache-dir={env.kube_cache}", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def apply(env: Environment, *objects: Mapping[str, Any]) -> None:
    """kubectl apply of JSON objects; raises with kubectl's own message on failure."""
    result = kubectl(env, "apply", "-f", "-", stdin="\n".join(json.dumps(o) for o in objects))
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {result.stderr.strip()}")


def install_crds(env: Environment) -> None:
    for step in (["apply", "--server-side", "-f", str(CRDS)],
                 ["wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/name=kcmail",
                  "--timeout=60s"]):
        result = kubectl(env, *step)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {step[0]} of the CRDs failed: {result.stderr.strip()}")


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def secret(namespace: str, name: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque", "stringData": dict(data)}


def install_connection(env: Environment, name: str = CONNECTION) -> None:
    """A ClusterKeycloakConnection to the environment's Keycloak, as its bootstrap admin."""
    apply(env, namespace(SYSTEM_NAMESPACE),
          secret(SYSTEM_NAMESPACE, "kcmail-admin", {"username": env.keycloak_admin_user,
                                                    "password": env.keycloak_admin_password}),
          secret(SYSTEM_NAMESPACE, "keycloak-ca", {"ca.crt": env.ca_file.read_text()}),
          {"apiVersion": "kcmail.io/v1alpha1", "kind": "ClusterKeycloakConnection", "metadata": {"name": name},
           "spec": {"url": env.keycloak_url,
                    "credentialsSecretRef": {"name": "kcmail-admin", "namespace": SYSTEM_NAMESPACE},
                    "tls": {"caSecretRef": {"name": "keycloak-ca", "namespace": SYSTEM_NAMESPACE}}}})


def keycloak_connection(env: Environment, namespace: str, name: str, *, url: str | None = None,
                        password: str | None = None) -> list[dict[str, Any]]:
    """A KeycloakConnection in ``namespace`` to the environment's Keycloak, with its admin and CA Secrets.

    ``url`` and ``password`` replace the real ones, to point it somewhere else or log in with a wrong password.
    """
    credentials = f"{name}-admin"
    ca = f"{name}-ca"
    return [secret(namespace, credentials, {"username": env.keycloak_admin_user,
                                            "password": env.keycloak_admin_password if password is None
                                            else password}),
            secret(namespace, ca, {"ca.crt": env.ca_file.read_text()}),
            {"apiVersion": "kcmail.io/v1alpha1", "kind": "KeycloakConnection",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"url": env.keycloak_url if url is None else url,
                      "credentialsSecretRef": {"name": credentials}, "tls": {"caSecretRef": {"name": ca}}}}]


def cluster_connection(env: Environment, name: str, **spec: Any) -> dict[str, Any]:
    """A ClusterKeycloakConnection like the one :func:`install_connection` makes; ``spec`` adds fields."""
    return {"apiVersion": "kcmail.io/v1alpha1", "kind": "ClusterKeycloakConnection", "metadata": {"name": name},
            "spec": {"url": env.keycloak_url,
                     "credentialsSecretRef": {"name": "kcmail-admin", "namespace": SYSTEM_NAMESPACE},
                     "tls": {"caSecretRef": {"name": "keycloak-ca", "namespace": SYSTEM_NAMESPACE}}, **spec}}


def create_realm(env: Environment, realm: str) -> None:
    response = KeycloakAdminAPI(env).request("POST", "", json={"realm": realm, "enabled": True})
    if response.status_code not in (201, 409):
        raise RuntimeError(f"creating realm {realm!r}: {response.status_code} {response.text[:200]}")


def xoauth2_mailconfig(env: Environment, namespace: str, name: str, realm: str, *, secret_name: str,
                       mailbox: str = "no-reply@acme.example", **spec: Any) -> dict[str, Any]:
    """A MailConfig for the environment's SMTP server and issuer; ``spec`` overrides top-level fields."""
    body: dict[str, Any] = {
        "connectionRef": {"kind": "ClusterKeycloakConnection", "name": CONNECTION},
        "realm": realm,
        # A name, not an address, where the servers are on loopback; pods reach only the node's address.
        "smtp": {"host": env.node_address or "localhost", "port": env.smtp_starttls_port, "security": "StartTLS"},
        "sender": {"from": mailbox, "fromDisplayName": f"{realm} mail"},
        "auth": {"type": "XOAUTH2", "username": mailbox,
                 "xoauth2": {"tokenURL": env.issuer_token_url, "scope": env.issuer_scope,
                             "clientSecretRef": {"name": secret_name}}},
    }
    body.update(spec)
    return {"apiVersion": "kcmail.io/v1alpha1", "kind": "MailConfig",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def issuer_secret(env: Environment, namespace: str, name: str) -> dict[str, Any]:
    return secret(namespace, name, {"client-id": env.issuer_client_id, "client-secret": env.issuer_client_secret})


# The registry Secret the operator keeps for the token bridge, where the chart keeps it: the operator's namespace.
BRIDGE_REGISTRY = f"{SYSTEM_NAMESPACE}/kcmail-bridge-registry"


def bridge_args(url: str) -> list[str]:
    """`kcmail run`'s options for MailConfigs with googleServiceAccount, sending through the bridge at ``url``."""
    return ["--bridge-url", url, "--bridge-registry", BRIDGE_REGISTRY]


def start_bridge(env: Environment, registry: ProcessRegistry, *, clients: Path | None = None,
                 rate: float = 5) -> tuple[ServerProcess, str]:
    """`kcmail bridge` on loopback, and its token URL: served with a certificate of the environment's CA (which
    Keycloak and the operator trust), asking the environment's stand-in for Google.

    Its clients come from ``clients`` (a hand-written file), else from the registry Secret the operator keeps
    (read with the environment's admin kubeconfig; the chart's bridge reads it with a Role for that Secret).
    """
    port = free_port()
    serving = CertificateAuthority(env.state_dir / "pki").issue(f"bridge-{port}", "kcmail-bridge",
                                                                names=LOOPBACK_NAMES)
    source = ["--clients", str(clients)] if clients is not None else ["--clients-secret", BRIDGE_REGISTRY]
    process = registry.start("bridge", [
        sys.executable, "-m", "kcmail.cli", "bridge", "--listen", f"127.0.0.1:{port}", "--tls-cert",
        str(serving.cert), "--tls-key", str(serving.key), *source, "--google-token-url", env.google_token_url,
        "--ca-bundle", str(env.ca_file), "--rate", str(rate)],
        env={"KUBECONFIG": str(env.kubeconfig), "PYTHONUNBUFFERED": "1"})
    wait_until(lambda: port_open(port), server=process, what=f"bridge port {port}", timeout=30)
    return process, f"https://127.0.0.1:{port}/token"


def start_operator(env: Environment, registry: ProcessRegistry, *, name: str = "operator",
                   args: Sequence[str] = (), metrics_port: int | None = None,
                   leader_election: bool = False) -> ServerProcess:
    """`kcmail run` against the environment's API server, its log in the state directory.

    Its metrics are served on 127.0.0.1:``metrics_port``, by default a free port: operators started side
    by side never compete for the default 8080, nor listen beyond loopback.

    Without ``leader_election`` it acts at once (``--no-leader-election``): the tests and benchmarks that
    run one operator, or a namespaced one beside it, neither wait for nor hold back each other, and one
    stopped with SIGKILL leaves no Lease to wait out.
    """
    metrics = f"127.0.0.1:{metrics_port or free_port()}"
    election = () if leader_election else ("--no-leader-election",)
    # The operator trusts the environment's CA as a cluster's operator trusts its CA bundle.
    return registry.start(name, [sys.executable, "-m", "kcmail.cli", "run", "--ca-bundle", str(env.ca_file),
                                 "--metrics-address", metrics, *election, *args],
                          env={"KUBECONFIG": str(env.kubeconfig), "PYTHONUNBUFFERED": "1"})
