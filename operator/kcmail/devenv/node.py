"""An optional one-node Kubernetes cluster beside the local environment's API server (``kcmail dev up --node``).

The chart's pods need what the tests' API server alone lacks: a kubelet, a container runtime, a scheduler
and the controller manager (Deployments, ReplicaSets, ServiceAccount tokens, ``kube-root-ca.crt``). The
kubelet, the scheduler and the controller manager are built from the same Kubernetes Go module as the API
server (``components.build_kubernetes_node``); containerd, runc and the CNI plugins are Debian's packages;
the pause image is built here from the module's ``pause.c``, and the kcmail image from the Dockerfile
(``image.py``). No registry is reached: both images are imported into containerd.

Pods live on a host-only bridge (``kcmail0``, 10.244.0.0/24) with no default route, no masquerading and no
IP forwarding, so they can reach the host's bridge address and each other, nothing else. Pods cannot reach
the host's loopback, so in this mode every server of the environment (API server, Keycloak, the SMTP
servers) binds the bridge address, which the host reaches as one of its own; docs/local-node.md
lists each setting below that this machine needs and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kcmail.devenv import components, image, versions
from kcmail.devenv.certs import CertificateAuthority
from kcmail.devenv.kube import write_kubeconfig
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, free_port, wait_until

NODE_ADDRESS = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
BRIDGE = "kcmail0"
# The bridge's own MAC address (locally administered). A bridge made without one takes the lowest MAC of its
# ports and changes it when a pod's veth with a lower one joins: the other pods' ARP entries for the node's
# address then point nowhere until they expire, and their connections to the API server and Keycloak stall
# for seconds (a rolling update's old leader failed to release its Lease that way).
BRIDGE_MAC = "02:6b:63:6d:00:01"
NODE_NAME = "kcmail-node"
# The name containerd's CRI asks for as the sandbox image; present locally, it is never pulled.
PAUSE_VERSION = "3.10.1"
PAUSE_IMAGE = f"registry.k8s.io/pause:{PAUSE_VERSION}"
CNI_BIN = Path("/usr/lib/cni")
INSTALL_HINT = "Install Debian's packages: apt-get install containerd runc containernetworking-plugins gcc"
# The kubelet sets these on start (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1): they
# are put back when the node stops, because the machine is not a dedicated node.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


class NodeUnavailable(RuntimeError):
    """The machine lacks what the node needs, or another node already runs on it."""


@dataclass(frozen=True)
class NodeLayout:
    """Where one node keeps its state: under the environment's state directory, apart from the machine's."""

    root: Path

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def saved_sysctls(self) -> Path:
        return self.root / "sysctls.json"


def layout(state_dir: Path) -> NodeLayout:
    return NodeLayout(state_dir / "node")


def check_machine() -> None:
    """Fail before anything starts when a tool is missing or another node owns the bridge."""
    for tool in ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "gcc"):
        components.require_tool(tool, INSTALL_HINT)
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).exists():
            raise NodeUnavailable(f"CNI plugin {CNI_BIN / plugin} is missing. {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise NodeUnavailable("the one-node cluster needs root (a container runtime, a bridge, cgroups)")
    others = [pid for pid, cmd in _processes()
              if Path(cmd[0]).name == "kubelet" and f"--hostname-override={NODE_NAME}" in cmd]
    if others:
        raise NodeUnavailable(f"a kcmail node already runs on this machine (kubelet pid {others[0]}); "
                              "stop its environment with `kcmail dev down` first")


def ensure_bridge() -> None:
    """The host-only bridge with the node's address, made before any server binds that address."""
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
    _ip("link", "set", BRIDGE, "address", BRIDGE_MAC)
    addresses = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE], capture_output=True, text=True,
                               check=True).stdout
    if f" {NODE_ADDRESS}/" not in addresses:
        _ip("addr", "add", f"{NODE_ADDRESS}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def remove_bridge() -> None:
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeUnavailable(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def containerd_config(node: NodeLayout) -> str:
    """containerd 1.6's configuration (version 2 format) for this node; every path is the node's own."""
    return f"""\
version = 2
root = "{node.root / 'containerd'}"
state = "{node.root / 'containerd-state'}"

[grpc]
  address = "{node.socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # CAP_SYS_RESOURCE is missing here, so nothing may lower an oom_score_adj below containerd's own; without
  # this every pod sandbox fails with "failed to update /proc/self/oom_score_adj: Permission denied".
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # No systemd runs here: cgroupfs, as the kubelet is told too.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{node.cni_conf_dir}"
"""


def cni_config(node: NodeLayout) -> dict[str, object]:
    """The pod network: the host-only bridge, addresses from host-local, no gateway, no masquerade.

    With ``isGateway`` false and no routes, a pod knows only its subnet: the host's bridge address and other
    pods. The bridge plugin adopts the bridge ``ensure_bridge`` made, address included.
    """
    return {
        "cniVersion": "1.0.0", "name": "kcmail",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": False, "ipMasq": False, "hairpinMode": False,
            "ipam": {"type": "host-local", "dataDir": str(node.root / "ipam"),
                     "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_ADDRESS}]]},
        }],
    }


def kubelet_config(node: NodeLayout, *, ca_file: Path, port: int, healthz_port: int) -> dict[str, object]:
    """The kubelet's configuration, set for what this machine has (docs/local-node.md says why, setting by setting)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # The machine runs cgroup v1 (v2 is mounted beside it with only hugetlb); 1.35 refuses v1 by default.
        "failCgroupV1": False,
        # No systemd: cgroupfs, as containerd is told too (containerd 1.6 cannot report its driver).
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        # The node's address is the bridge's: a node IP may not be loopback.
        "address": NODE_ADDRESS, "port": port, "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "readOnlyPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca_file)}},
        "authorization": {"mode": "Webhook"},
        # No cluster DNS: pods get the host's resolv.conf; kcmail is given addresses, not Service names.
        "clusterDomain": "cluster.local",
        "podLogsDir": str(node.root / "pod-logs"),
        "maxPods": 20,
        "serializeImagePulls": False,
        # A shared development machine: evict only when really short, never for images the tests imported.
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "3%", "imagefs.available": "3%"},
        "imageGCHighThresholdPercent": 99, "imageGCLowThresholdPercent": 98,
    }


def build_pause(progress: components.Progress = components.print_progress) -> Path:
    """The pause image as a docker-archive, built from the Kubernetes module's ``pause.c`` like upstream's."""
    archive = image.storage() / "images" / f"pause-{PAUSE_VERSION}.tar"
    if archive.exists():
        return archive
    go = components.require_tool("go", "Install Go (the Kubernetes module holds pause.c).")
    modcache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    source = Path(modcache) / f"k8s.io/kubernetes@v{versions.KUBERNETES}" / "build/pause/linux/pause.c"
    if not source.exists():
        raise components.BuildFailed(f"{source} is missing: build the node's binaries first")
    progress(f"building the pause image {PAUSE_IMAGE} from {source.name}")
    work = image.storage() / "pause-build"
    work.mkdir(parents=True, exist_ok=True)
    binary = work / "pause"
    components.run_logged([components.require_tool("gcc", INSTALL_HINT), "-Os", "-Wall", "-Werror", "-static",
                           f'-DVERSION="v{PAUSE_VERSION}-kcmail"', "-o", str(binary), str(source)],
                          cwd=work, log=work / "build.log", what="compiling pause", progress=progress)
    container = image.output("from", "scratch").strip()
    try:
        image.output("copy", container, str(binary), "/pause")
        image.output("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
        image.output("commit", "--quiet", container, PAUSE_IMAGE)
    finally:
        image.output("rm", container)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    image.output("push", "--quiet", PAUSE_IMAGE, f"docker-archive:{partial}:{PAUSE_IMAGE}")
    partial.rename(archive)
    return archive


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    containerd_socket: Path
    kubelet: ServerProcess


def start(registry: ProcessRegistry, *, state_dir: Path, ca: CertificateAuthority, api_url: str, kubectl: Path,
          admin_kubeconfig: Path, archives: Sequence[Path],
          progress: components.Progress = components.print_progress) -> Node:
    """Start containerd, the controller manager, the scheduler and the kubelet; return once the node is Ready."""
    binaries = components.build_kubernetes_node(versions.KUBERNETES, progress)
    archives = [build_pause(progress), *archives]
    node = layout(state_dir)
    node.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    node.containerd_config.write_text(containerd_config(node))
    (node.cni_conf_dir / "10-kcmail.conflist").write_text(json.dumps(cni_config(node), indent=2))
    progress("starting containerd")
    containerd = registry.start("containerd", [components.require_tool("containerd", INSTALL_HINT),
                                               "--config", str(node.containerd_config)])
    wait_until(lambda: _ctr(node, "version").returncode == 0, server=containerd, what="containerd's socket",
               timeout=60)
    for archive in archives:
        progress(f"importing {archive.name} into containerd")
        imported = _ctr(node, "images", "import", str(archive), timeout=300)
        if imported.returncode != 0:
            raise NodeUnavailable(f"ctr images import {archive} failed: {imported.stderr.strip()[-500:]}")
    kube_dir = state_dir / "kube"

    def kubeconfig(name: str, common_name: str, organizations: tuple[str, ...] = ()) -> Path:
        pair = ca.issue(name, common_name, organizations=organizations, client=True)
        return write_kubeconfig(node.root / f"{name}.kubeconfig", api_url=api_url, ca_file=ca.cert_path,
                                user=common_name, cert=pair)

    progress("starting kube-controller-manager and kube-scheduler")
    controllers = kubeconfig("kube-controller-manager", "system:kube-controller-manager")
    registry.start("kube-controller-manager", [
        str(binaries["kube-controller-manager"]),
        *_authenticated(controllers), f"--secure-port={free_port()}",
        "--leader-elect=false", "--use-service-account-credentials=true",
        f"--service-account-private-key-file={kube_dir / 'sa-signer.key'}", f"--root-ca-file={ca.cert_path}",
        # Tokens live in projected volumes; nothing here bootstraps nodes with tokens.
        "--controllers=*,-bootstrapsigner,-tokencleaner",
        "--v=1",
    ])
    scheduler = kubeconfig("kube-scheduler", "system:kube-scheduler")
    registry.start("kube-scheduler", [str(binaries["kube-scheduler"]), *_authenticated(scheduler),
                                      f"--secure-port={free_port()}", "--leader-elect=false", "--v=1"])
    progress(f"starting the kubelet of node {NODE_NAME} ({NODE_ADDRESS})")
    kubelet_kubeconfig = kubeconfig("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",))
    node.kubelet_config.write_text(json.dumps(kubelet_config(node, ca_file=ca.cert_path, port=free_port(),
                                                             healthz_port=free_port()), indent=2))
    _save_sysctls(node)
    kubelet = registry.start("kubelet", [
        str(binaries["kubelet"]), f"--config={node.kubelet_config}", f"--kubeconfig={kubelet_kubeconfig}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_ADDRESS}", f"--root-dir={node.kubelet_dir}",
        f"--cert-dir={node.kubelet_dir / 'pki'}", "--v=1",
    ])
    wait_until(lambda: _node_ready(kubectl, admin_kubeconfig), server=kubelet, what=f"node {NODE_NAME} Ready",
               timeout=180, interval=1.0)
    return Node(name=NODE_NAME, address=NODE_ADDRESS, containerd_socket=node.socket, kubelet=kubelet)


def _authenticated(kubeconfig: Path) -> list[str]:
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1"]


def _ctr(node: NodeLayout, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ctr", "--address", str(node.socket), "--namespace", "k8s.io", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _node_ready(kubectl: Path, kubeconfig: Path) -> bool:
    result = subprocess.run([str(kubectl), "--kubeconfig", str(kubeconfig), "get", "node", NODE_NAME, "-o", "json"],
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _save_sysctls(node: NodeLayout) -> None:
    # Only the first start records them: a restarted kubelet would otherwise record its own values.
    if node.saved_sysctls.exists():
        return
    values = {key: (Path("/proc/sys") / key).read_text().strip() for key in KUBELET_SYSCTLS}
    node.saved_sysctls.write_text(json.dumps(values))


def stop(registry: ProcessRegistry, state_dir: Path) -> None:
    """Stop the node and leave nothing of it on the machine: pods, shims, mounts, network namespaces, sysctls.

    The containers outlive containerd (their shims are daemons), so they are killed through the kubelet's
    cgroups before containerd stops, then any shim left is killed and the mounts under the node are undone.
    """
    node = layout(state_dir)
    if not node.root.exists():
        return
    registry.stop("kubelet")
    _kill_pods()
    registry.stop("containerd")
    for pid, cmd in _processes():
        if cmd and cmd[0].endswith("containerd-shim-runc-v2") and str(node.socket) in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _unmount_under(node.root)
    _remove_pod_cgroups()
    if node.saved_sysctls.exists():
        for key, value in json.loads(node.saved_sysctls.read_text()).items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key).write_text(value)
        node.saved_sysctls.unlink()


def _kill_pods(timeout: float = 20.0) -> None:
    """SIGKILL every process in the kubelet's cgroups (``kubepods`` in each v1 hierarchy) until none is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {int(line) for procs in CGROUP_ROOT.glob("*/kubepods/**/cgroup.procs")
                for line in _read_lines(procs) if line.strip()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _remove_pod_cgroups() -> None:
    """The kubelet's empty cgroups, deepest first (a cgroup directory goes with rmdir, never with its files)."""
    for hierarchy in CGROUP_ROOT.glob("*/kubepods"):
        for directory in sorted((p for p in hierarchy.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            hierarchy.rmdir()


def _unmount_under(root: Path) -> None:
    """Lazily unmount what the node mounted: rootfs overlays, volumes, and the pods' network namespaces."""
    mounts = []
    for line in _read_lines(Path("/proc/self/mountinfo")):
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(f"{root}/") or point.startswith(f"{NETNS_DIR}/cni-"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    for netns in NETNS_DIR.glob("cni-*"):
        with contextlib.suppress(OSError):
            netns.unlink()


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = entry.read_bytes()
        except OSError:
            continue
        if raw:
            found.append((int(entry.parent.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")))
    return found
