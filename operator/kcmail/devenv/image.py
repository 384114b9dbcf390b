"""The operator's container image, built from the repository's Dockerfile with buildah, on a Debian base.

No container registry can be reached here, Debian's packages can: mmdebstrap makes the base from the host's
own apt sources (Python 3 with venv and pip for the Dockerfile's build stage; Python 3 alone for its runtime
stage, so the image carries no pip), and buildah builds the Dockerfile on them through its ``PYTHON_IMAGE``
and ``RUNTIME_IMAGE`` build arguments. Users keep the Dockerfile's default base (python:3.11-slim).

buildah runs as root with vfs storage and chroot isolation, in storage of kcmail's cache
(``<cache>/containers``), not the machine's. A build's RUN steps see the host's CA bundle, so that pip
trusts what the host trusts (a proxy that re-signs TLS, as on the machines here).

Cached: each base by Debian suite and package list, the image by a digest of everything that goes into it
(Dockerfile, pyproject.toml, README.md, operator/), exported as a docker-archive that containerd imports
(``docker.io/library/kcmail:<version>``, the name the chart's ``kcmail:<appVersion>`` resolves to).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcmail.devenv.components import (
    BuildFailed,
    Progress,
    cache_root,
    print_progress,
    require_tool,
    run_logged,
)

REPO = Path(__file__).resolve().parents[3]
# What the image is built from: a change to any of these builds it anew.
INPUTS = ("Dockerfile", "pyproject.toml", "README.md", "operator")
BUILD_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
RUNTIME_PACKAGES = ("python3", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
INSTALL_HINT = "Install Debian's packages: apt-get install buildah mmdebstrap"


@dataclass(frozen=True)
class Image:
    """A built image: its name in kcmail's buildah storage, and the docker-archive containerd imports."""

    name: str
    archive: Path
    # The name the archive carries, which the chart's image reference resolves to.
    archive_name: str


def storage() -> Path:
    return cache_root() / "containers"


def buildah(*args: str) -> list[str]:
    """A buildah command on kcmail's own storage."""
    root = storage()
    return [require_tool("buildah", INSTALL_HINT), "--root", str(root / "storage"), "--runroot", str(root / "run"),
            "--storage-driver", "vfs", *args]


def output(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(buildah(*args), capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise BuildFailed(f"buildah {' '.join(args[:2])} failed (exit {result.returncode}): {result.stderr[-800:]}")
    return result.stdout


def exists(name: str) -> bool:
    result = subprocess.run(buildah("inspect", "--type", "image", name), capture_output=True, text=True,
                            timeout=60, check=False)
    return result.returncode == 0


def host_suite() -> str:
    """The Debian release this host runs (its os-release VERSION_CODENAME): the base is built from it."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"'):
            return value.strip('"')
    raise BuildFailed("cannot tell this host's Debian release from /etc/os-release")


def apt_sources() -> list[Path]:
    """The host's apt source files, which mmdebstrap pastes into the base: the same mirrors the host uses."""
    found = []
    for source in APT_SOURCES:
        if source.is_file() and source.read_text().strip():
            found.append(source)
        elif source.is_dir():
            found += sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    if not found:
        raise BuildFailed("this host has no apt sources for mmdebstrap to use")
    return found


def build_base(packages: tuple[str, ...], tag: str, progress: Progress = print_progress) -> str:
    """A Debian base image with ``packages``, named ``localhost/kcmail-<tag>:<suite>-<digest>``."""
    suite = host_suite()
    digest = hashlib.sha256(" ".join((suite, *packages)).encode()).hexdigest()[:12]
    name = f"localhost/kcmail-{tag}:{suite}-{digest}"
    if exists(name):
        return name
    mmdebstrap = require_tool("mmdebstrap", INSTALL_HINT)
    work = Path(tempfile.mkdtemp(prefix=f"kcmail-base-{tag}-"))
    log = storage() / f"base-{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        progress(f"making the Debian {suite} base image {name} with mmdebstrap (about 20 s)")
        tarball = work / "rootfs.tar"
        run_logged([mmdebstrap, "--variant=minbase", f"--include={','.join(packages)}", suite, str(tarball),
                     *map(str, apt_sources())], cwd=work, log=log, what=f"mmdebstrap of the {tag} base",
                    progress=progress)
        container = output("from", "scratch").strip()
        try:
            output("add", container, str(tarball), "/", timeout=600)
            output("config", "--cmd", '["python3"]', "--env",
                   "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", container)
            output("commit", "--quiet", container, name, timeout=600)
        finally:
            output("rm", container)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return name


def inputs_digest(repo: Path = REPO) -> str:
    """A digest of every file the image is built from (caches and bytecode aside)."""
    digest = hashlib.sha256()
    for item in INPUTS:
        path = repo / item
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p))
        for file in files:
            digest.update(str(file.relative_to(repo)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def version(repo: Path = REPO) -> str:
    text = (repo / "pyproject.toml").read_text()
    for line in text.splitlines():
        if line.startswith("version = "):
            return line.split("=", 1)[1].strip().strip('"')
    raise BuildFailed("pyproject.toml names no version")


def build(progress: Progress = print_progress, repo: Path = REPO) -> Image:
    """The operator's image from ``repo``'s Dockerfile, built when its inputs changed."""
    digest, release = inputs_digest(repo), version(repo)
    name = f"localhost/kcmail:{release}-{digest}"
    archive = storage() / "images" / f"kcmail-{release}-{digest}.tar"
    archive_name = f"docker.io/library/kcmail:{release}"
    if exists(name) and archive.exists():
        return Image(name, archive, archive_name)
    build_image = build_base(BUILD_PACKAGES, "python-build", progress)
    runtime_image = build_base(RUNTIME_PACKAGES, "python", progress)
    log = storage() / "image.log"
    progress(f"building the kcmail image {name} from the Dockerfile with buildah (about 30 s)")
    command = buildah("build", "--isolation", "chroot", "--pull=never", "--layers=false",
                      "--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
                      "--build-arg", f"PYTHON_IMAGE={build_image}", "--build-arg", f"RUNTIME_IMAGE={runtime_image}",
                      "--build-arg", f"VERSION={release}", "--tag", name, "--file", "Dockerfile", ".")
    run_logged(command, cwd=repo, log=log, what="buildah build of the kcmail image", progress=progress)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    output("push", "--quiet", name, f"docker-archive:{partial}:{archive_name}", timeout=600)
    partial.rename(archive)
    _prune(keep=name, archive=archive)
    return Image(name, archive, archive_name)


def _prune(*, keep: str, archive: Path) -> None:
    """Remove the images and archives of earlier inputs: vfs keeps every layer whole (hundreds of MB each)."""
    listed = output("images", "--format", "{{.Name}}:{{.Tag}}")
    for old in listed.split():
        if old.startswith("localhost/kcmail:") and old != keep:
            output("rmi", "--force", old)
    for old_archive in archive.parent.glob("kcmail-*.tar"):
        if old_archive != archive:
            old_archive.unlink()


def config(name: str) -> dict[str, Any]:
    """The image's OCI configuration (user, entrypoint, command, environment, labels)."""
    return dict(json.loads(output("inspect", "--type", "image", name))["OCIv1"]["config"])


def run(name: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``command`` in a container of ``name``, as the image's user, with chroot isolation."""
    container = output("from", "--quiet", name).strip()
    try:
        return subprocess.run(buildah("run", "--isolation", "chroot", container, "--", *command), capture_output=True,
                              text=True, timeout=timeout, check=False)
    finally:
        output("rm", container)
