"""A Kubernetes control plane on loopback: etcd and kube-apiserver, TLS from the run-time CA, RBAC on.

There is no kube-controller-manager: namespaces never finish deleting, owner references never cascade
and no default ServiceAccount appears. Tests stay off those paths (each uses its own namespace). The
one-node cluster (node.py) adds the controller manager, the scheduler and a kubelet beside this API server,
which then serves on the node's host-only bridge address instead of loopback.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import yaml

from kcmail.devenv.certs import CertificateAuthority, KeyPair, serving_names, write_signing_key
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, free_port, http_ok, wait_until


@dataclass(frozen=True)
class ControlPlane:
    api_url: str
    ca_file: Path
    admin_kubeconfig: Path
    etcd: ServerProcess
    apiserver: ServerProcess

    def wait_ready(self, admin: KeyPair, timeout: float = 120.0) -> None:
        wait_until(lambda: http_ok(f"{self.api_url}/readyz", ca_file=self.ca_file,
                                   client_cert=(admin.cert, admin.key)),
                   server=self.apiserver, what="/readyz", timeout=timeout)


def start_etcd(registry: ProcessRegistry, etcd: Path, data_dir: Path) -> tuple[ServerProcess, str]:
    client_port, peer_port = free_port(), free_port()
    client_url = f"http://127.0.0.1:{client_port}"
    server = registry.start("etcd", [
        str(etcd), f"--data-dir={data_dir}", "--name=kcmail-dev",
        f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=kcmail-dev=http://127.0.0.1:{peer_port}",
        # Test data is disposable; fsync only slows every write on a shared 2-core machine.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ])
    wait_until(lambda: http_ok(f"{client_url}/health"), server=server, what="/health", timeout=60)
    return server, client_url


def start_control_plane(registry: ProcessRegistry, *, kube_apiserver: Path, etcd: Path,
                        ca: CertificateAuthority, state_dir: Path, host: str = "127.0.0.1",
                        for_node: bool = False) -> tuple[ControlPlane, KeyPair]:
    """Start etcd and kube-apiserver; returns once etcd is healthy and the API server is launched.

    ``host`` is the address it serves on and advertises. ``for_node`` readies it for pods: the
    ServiceAccount admission plugin mounts their tokens, and it reaches the kubelet for logs.
    """
    kube_dir = state_dir / "kube"
    kube_dir.mkdir(parents=True, exist_ok=True)
    etcd_server, etcd_url = start_etcd(registry, etcd, kube_dir / "etcd-data")
    serving = ca.issue("apiserver", "kube-apiserver",
                       names=serving_names(host, "kubernetes", "kubernetes.default", "kubernetes.default.svc"))
    admin = ca.issue("admin", "kcmail-admin", organizations=("system:masters",), client=True)
    signing_key = write_signing_key(kube_dir / "sa-signer.key")
    port = free_port()
    api_url = f"https://{host}:{port}"
    apiserver = registry.start("kube-apiserver", [
        str(kube_apiserver),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={host}", f"--advertise-address={host}", f"--secure-port={port}",
        f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={ca.cert_path}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={api_url}",
        f"--service-account-key-file={signing_key}",
        f"--service-account-signing-key-file={signing_key}",
        "--service-cluster-ip-range=10.0.0.0/24",
        *(_node_flags(ca) if for_node else _NO_NODE_FLAGS),
        "--allow-privileged=true",
        f"--cert-dir={kube_dir / 'certs'}",
        "--v=1",
    ])
    kubeconfig = write_kubeconfig(kube_dir / "admin.kubeconfig", api_url=api_url, ca_file=ca.cert_path,
                                  user="kcmail-admin", cert=admin)
    plane = ControlPlane(api_url=api_url, ca_file=ca.cert_path, admin_kubeconfig=kubeconfig,
                         etcd=etcd_server, apiserver=apiserver)
    return plane, admin


# Without a node nothing mounts ServiceAccount tokens into pods, and no pod ever runs: admission would only
# reject the tests' bare pods for lacking a ServiceAccount.
_NO_NODE_FLAGS = ("--disable-admission-plugins=ServiceAccount",)


def _node_flags(ca: CertificateAuthority) -> list[str]:
    # `kubectl logs` goes through the API server to the kubelet, which trusts this CA's client certificates.
    client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                      organizations=("system:masters",), client=True)
    return [f"--kubelet-client-certificate={client.cert}", f"--kubelet-client-key={client.key}",
            "--kubelet-preferred-address-types=InternalIP"]


def write_kubeconfig(path: Path, *, api_url: str, ca_file: Path, user: str, cert: KeyPair | None = None,
                     token: str | None = None) -> Path:
    """A kubeconfig with everything embedded, authenticating by client certificate or bearer token."""
    credentials: dict[str, str] = {}
    if cert is not None:
        credentials["client-certificate-data"] = _b64(cert.cert)
        credentials["client-key-data"] = _b64(cert.key)
    if token is not None:
        credentials["token"] = token
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kcmail-dev", "cluster": {"server": api_url,
                                                         "certificate-authority-data": _b64(ca_file)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "kcmail-dev", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
