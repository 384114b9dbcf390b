"""Obtain the binaries of the local environment into a per-user cache, keyed by version.

kube-apiserver, kubectl, etcd, helm and the Argo CD health evaluator (``argocd/health-eval``, for the
tests) are built with the Go toolchain from their upstream Go modules; Keycloak is the
``keycloak-quarkus-dist`` artifact fetched with Maven. Each component is produced in a
scratch directory and renamed into place only when complete, so an interrupted build never leaves a
half-filled cache entry behind, and a second run reuses what the first one finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kcmail.devenv import versions

HEALTH_EVAL_SOURCE = Path(__file__).resolve().parents[3] / "argocd" / "health-eval"


class PrerequisiteMissing(RuntimeError):
    """A tool the local environment needs is not installed; the message says how to get it."""


class BuildFailed(RuntimeError):
    """A component could not be built or fetched; the message names the log to read."""


def cache_root() -> Path:
    """Where components live: ``$KCMAIL_CACHE``, else ``$XDG_CACHE_HOME/kcmail``, else ``~/.cache/kcmail``."""
    explicit = os.environ.get("KCMAIL_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kcmail"


Progress = Callable[[str], None]


def print_progress(message: str) -> None:
    print(f"[kcmail dev] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Components:
    """Paths of ready-to-run binaries."""

    kube_apiserver: Path
    kubectl: Path
    etcd: Path
    keycloak_home: Path
    keycloak_java_home: Path
    helm: Path


def require_tool(name: str, fix: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrerequisiteMissing(f"{name} is not on PATH. {fix}")
    return path


def run_logged(cmd: Sequence[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None,
                what: str, progress: Progress) -> None:
    """Run a long command with its output in a log file, reporting progress while it runs."""
    started = time.monotonic()
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(30):
            progress(f"  … still {what} ({time.monotonic() - started:.0f} s)")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        with log.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            result = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, check=False)
    finally:
        stop.set()
        ticker.join()
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildFailed(f"{what} failed (exit {result.returncode}); full log: {log}\n{tail}")


def _go_env() -> dict[str, str]:
    # Static binaries: the local environment must not depend on the machine's C libraries.
    return {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}


def _k8s_ldflags(version: str) -> str:
    """Stamp the release so that /version reports it (Helm's kubeVersion checks read it)."""
    major, minor, _ = version.split(".")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion=v{version}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def _staging_modules(kubernetes_gomod: str) -> list[str]:
    """Modules that k8s.io/kubernetes requires at v0.0.0: its staging repositories.

    Read from the downloaded go.mod rather than hard-coded, because the list grows between releases.
    """
    modules = []
    for line in kubernetes_gomod.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[1] == "v0.0.0" and parts[0].startswith("k8s.io/"):
            modules.append(parts[0])
    return sorted(set(modules))


@dataclass(frozen=True)
class _GoWrapper:
    """A scratch Go module in which one component is resolved and compiled."""

    go: str
    work: Path
    log: Path
    env: dict[str, str]
    progress: Progress

    def run(self, *args: str, what: str) -> None:
        run_logged([self.go, *args], cwd=self.work, log=self.log, env=self.env, what=what, progress=self.progress)

    def output(self, *args: str) -> str:
        """A short Go command's standard output (metadata queries, not builds)."""
        result = subprocess.run([self.go, *args], cwd=self.work, capture_output=True, text=True,
                                env={**os.environ, **self.env}, check=False)
        if result.returncode != 0:
            raise BuildFailed(f"go {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def download_gomod(self, module: str) -> str:
        """The go.mod of ``module`` (``path@version``), read even where this Go is too old to build it."""
        result = subprocess.run([self.go, "mod", "download", "-json", module], cwd=self.work, capture_output=True,
                                text=True, env={**os.environ, **self.env}, check=False)
        try:
            return Path(json.loads(result.stdout)["GoMod"]).read_text()
        except (ValueError, KeyError, OSError) as error:
            raise BuildFailed(f"go mod download {module} failed: {result.stdout}{result.stderr}") from error

    def build(self, package: str, binary: str, ldflags: str) -> None:
        self.progress(f"  compiling {binary}")
        self.run("build", "-trimpath", "-ldflags", ldflags, "-o", str(self.work / "bin" / binary), package,
                 what=f"compiling {binary}")

    def install(self, target: Path) -> None:
        _install(self.work / "bin", target)
        shutil.rmtree(self.work, ignore_errors=True)


def _go_wrapper(name: str, module: str, announce: str, progress: Progress) -> _GoWrapper:
    go = require_tool("go", "Install Go 1.24 or newer (the Go toolchain builds kube-apiserver, etcd and helm).")
    progress(announce)
    work = _fresh_dir(cache_root() / "build" / name)
    wrapper = _GoWrapper(go=go, work=work, log=work / "build.log", env=_go_env(), progress=progress)
    wrapper.run("mod", "init", module, what="go mod init")
    return wrapper


def _module_replaces(gomod: str) -> list[str]:
    """``go mod edit`` flags for the replace directives of ``gomod`` that name a module version.

    A module's replace lines bind only its own builds; a wrapper that builds its packages must repeat
    them. Replacements by a local directory are left out: the module proxy serves no such directory.
    """
    edits = []
    in_block = False
    for line in gomod.splitlines():
        words = line.split("//")[0].split()
        if words[:2] == ["replace", "("]:
            in_block = True
            continue
        if in_block and words == [")"]:
            in_block = False
            continue
        if words[:1] == ["replace"]:
            words = words[1:]
        elif not in_block:
            continue
        if "=>" not in words:
            continue
        old, new = words[:words.index("=>")], words[words.index("=>") + 1:]
        if len(new) == 2 and not new[0].startswith((".", "/")):
            edits.append(f"-replace={'@'.join(old)}={new[0]}@{new[1]}")
    return edits


def _go_directive(gomod: str) -> tuple[int, ...]:
    """The Go release a go.mod's ``go`` line asks for, as numbers."""
    for line in gomod.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "go":
            return _go_release(words[1])
    return ()


def _go_release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.removeprefix("go").split(".") if part.isdigit())


def _health_eval_tags(argocd_gomod: str) -> str:
    """Build tags choosing the gitops-engine import path this Argo CD release uses (see health-eval)."""
    old_path = any(line.split()[:1] == ["github.com/argoproj/gitops-engine"] for line in argocd_gomod.splitlines())
    return "gitops_engine_v0" if old_path else ""


def _source_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def build_argocd_health_eval(version: str, progress: Progress = print_progress) -> Path:
    """``argocd/health-eval`` built against Argo CD ``version``'s own modules, for the health-check tests.

    Keyed by the Argo CD version and the program's source, so an edit of it builds anew.
    """
    target = cache_root() / "components" / f"argocd-health-eval-v{version}-{_source_digest(HEALTH_EVAL_SOURCE)}"
    binary = target / "health-eval"
    if binary.exists():
        return binary
    module = f"github.com/argoproj/argo-cd/v3@v{version}"
    wrapper = _go_wrapper(f"argocd-health-eval-v{version}", "local/healtheval",
                          f"building the Argo CD {version} health evaluator with Go (first run: 3-4 min)", progress)
    gomod = wrapper.download_gomod(module)
    if _go_directive(gomod) > _go_release(wrapper.output("env", "GOVERSION").strip()):
        progress(f"  Argo CD {version} needs Go {'.'.join(map(str, _go_directive(gomod)))}: "
                 f"building with {versions.GO_TOOLCHAIN}")
        wrapper = dataclasses.replace(wrapper, env={**wrapper.env, "GOTOOLCHAIN": versions.GO_TOOLCHAIN})
    for source in HEALTH_EVAL_SOURCE.glob("*.go"):
        shutil.copy(source, wrapper.work)
    wrapper.run("mod", "edit", *_module_replaces(gomod), what="go mod edit")
    wrapper.run("get", module, what="resolving Argo CD modules")
    progress("  compiling health-eval")
    wrapper.run("build", "-trimpath", "-tags", _health_eval_tags(gomod), "-ldflags", "-s -w",
                "-o", str(wrapper.work / "bin" / "health-eval"), ".", what="compiling health-eval")
    wrapper.install(target)
    return binary


def build_kubernetes(version: str, progress: Progress = print_progress) -> tuple[Path, Path]:
    """kube-apiserver and kubectl of ``version``, built from the k8s.io/kubernetes module."""
    target = cache_root() / "components" / f"kubernetes-v{version}"
    apiserver, kubectl = _build_kubernetes_commands(version, target, ("kube-apiserver", "kubectl"),
                                                    "10-25 min", progress)
    return apiserver, kubectl


# The binaries of the optional one-node cluster (``kcmail dev node``), cached apart from the API server's
# because only that mode needs them.
NODE_COMMANDS = ("kubelet", "kube-controller-manager", "kube-scheduler")


def build_kubernetes_node(version: str, progress: Progress = print_progress) -> dict[str, Path]:
    """kubelet, kube-controller-manager and kube-scheduler of ``version``, from the same module as the API server."""
    target = cache_root() / "components" / f"kubernetes-node-v{version}"
    paths = _build_kubernetes_commands(version, target, NODE_COMMANDS, "about 5 min", progress)
    return dict(zip(NODE_COMMANDS, paths, strict=True))


def _build_kubernetes_commands(version: str, target: Path, commands: Sequence[str], first_run: str,
                               progress: Progress) -> list[Path]:
    paths = [target / command for command in commands]
    if all(path.exists() for path in paths):
        return paths
    wrapper = _go_wrapper(target.name, "local/k8sbin",
                          f"building {', '.join(commands)} v{version} with Go (first run: {first_run} on 2 cores)",
                          progress)
    gomod = Path(json.loads(wrapper.output("mod", "download", "-json", f"k8s.io/kubernetes@v{version}"))["GoMod"])
    minor, patch = version.split(".")[1:]
    edits = [f"-replace={m}={m}@v0.{minor}.{patch}" for m in _staging_modules(gomod.read_text())]
    wrapper.run("mod", "edit", *edits, what="go mod edit")
    wrapper.run("get", f"k8s.io/kubernetes@v{version}", what="resolving Kubernetes modules")
    for command in commands:
        wrapper.build(f"k8s.io/kubernetes/cmd/{command}", command, _k8s_ldflags(version))
    wrapper.install(target)
    return paths


def build_etcd(version: str, progress: Progress = print_progress) -> Path:
    """etcd of ``version``, built from go.etcd.io/etcd/server/v3 in a wrapper module.

    A wrapper is needed because etcd's own go.mod uses local ``replace`` lines that ``go install``
    refuses.
    """
    target = cache_root() / "components" / f"etcd-v{version}"
    binary = target / "etcd"
    if binary.exists():
        return binary
    wrapper = _go_wrapper(f"etcd-v{version}", "local/etcdbin", f"building etcd v{version} with Go (first run: 2-5 min)",
                          progress)
    wrapper.run("get", f"go.etcd.io/etcd/server/v3@v{version}", what="resolving etcd modules")
    wrapper.build("go.etcd.io/etcd/server/v3", "etcd", "-s -w")
    wrapper.install(target)
    return binary


def build_helm(version: str, progress: Progress = print_progress) -> Path:
    """helm of ``version``, built from helm.sh/helm/v3 in a wrapper module like etcd."""
    target = cache_root() / "components" / f"helm-v{version}"
    binary = target / "helm"
    if binary.exists():
        return binary
    wrapper = _go_wrapper(f"helm-v{version}", "local/helmbin", f"building helm v{version} with Go (first run: 2-5 min)",
                          progress)
    wrapper.run("get", f"helm.sh/helm/v3@v{version}", what="resolving helm modules")
    client_go = wrapper.output("list", "-m", "-f", "{{.Version}}", "k8s.io/client-go").strip()
    wrapper.build("helm.sh/helm/v3/cmd/helm", "helm", _helm_ldflags(version, client_go))
    wrapper.install(target)
    return binary


def _helm_ldflags(version: str, client_go_version: str) -> str:
    """Stamp what helm's own Makefile stamps.

    Unstamped, ``helm version`` says only "v3.21", and ``helm template`` and ``helm lint`` assume
    Kubernetes 1.20 (failing any chart whose kubeVersion needs more); the Makefile derives the Kubernetes
    release from the client-go module helm is built with (v0.35.x: 1.35).
    """
    _, minor, _ = client_go_version.removeprefix("v").split(".", 2)
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version=v{version}"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def fetch_keycloak(version: str, progress: Progress = print_progress) -> Path:
    """The unpacked Keycloak distribution of ``version``, fetched through Maven."""
    target = cache_root() / "components" / f"keycloak-{version}"
    if (target / "bin" / "kc.sh").exists():
        return target
    mvn = require_tool("mvn", "Install Maven (Debian: apt-get install maven); it fetches Keycloak.")
    progress(f"fetching Keycloak {version} with Maven (about 200 MB)")
    work = _fresh_dir(cache_root() / "build" / f"keycloak-{version}")
    log = work / "fetch.log"
    run_logged([mvn, "-B", "-q",
                 f"org.apache.maven.plugins:maven-dependency-plugin:{versions.MAVEN_DEPENDENCY_PLUGIN}:copy",
                 f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:tar.gz",
                 f"-DoutputDirectory={work}"], cwd=work, log=log, what="fetching Keycloak",
                progress=progress)
    archive = work / f"keycloak-quarkus-dist-{version}.tar.gz"
    unpacked = work / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="tar")
    (home,) = list(unpacked.iterdir())
    _install(home, target)
    shutil.rmtree(work, ignore_errors=True)
    return target


def find_java_home(keycloak_version: str, jvm_root: Path = Path("/usr/lib/jvm")) -> Path:
    """A JDK that runs ``keycloak_version``: ``$KCMAIL_KEYCLOAK_JAVA_HOME`` or one under ``jvm_root``."""
    explicit = os.environ.get("KCMAIL_KEYCLOAK_JAVA_HOME")
    if explicit:
        return Path(explicit)
    wanted = versions.KEYCLOAK_JAVA.get(keycloak_version, (25, 21, 17))
    found: dict[int, Path] = {}
    for candidate in sorted(jvm_root.iterdir()) if jvm_root.is_dir() else []:
        release = candidate / "release"
        if candidate.is_symlink() or not (candidate / "bin" / "java").exists() or not release.exists():
            continue
        feature = _java_feature_release(release.read_text())
        if feature is not None:
            found.setdefault(feature, candidate)
    for feature in wanted:
        if feature in found:
            return found[feature]
    raise PrerequisiteMissing(
        f"Keycloak {keycloak_version} needs a JDK of release {' or '.join(map(str, wanted))}; found "
        f"{sorted(found) or 'none'} under {jvm_root}. Install one (Debian: apt-get install "
        f"openjdk-{wanted[-1]}-jdk-headless) or set KCMAIL_KEYCLOAK_JAVA_HOME."
    )


def _java_feature_release(release_file: str) -> int | None:
    for line in release_file.splitlines():
        if line.startswith("JAVA_VERSION="):
            value = line.split("=", 1)[1].strip().strip('"')
            head = value.split(".")[0]
            return int(head) if head.isdigit() else None
    return None


def ensure_all(keycloak_version: str = versions.KEYCLOAK, progress: Progress = print_progress) -> Components:
    """Every component of the environment, built or fetched when missing."""
    java_home = find_java_home(keycloak_version)
    apiserver, kubectl = build_kubernetes(versions.KUBERNETES, progress)
    etcd = build_etcd(versions.ETCD, progress)
    keycloak = fetch_keycloak(keycloak_version, progress)
    helm = build_helm(versions.HELM, progress)
    return Components(kube_apiserver=apiserver, kubectl=kubectl, etcd=etcd, keycloak_home=keycloak,
                      keycloak_java_home=java_home, helm=helm)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _install(source: Path, target: Path) -> None:
    """Move a finished build into the cache in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    staging.rmdir()
    shutil.move(str(source), staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
