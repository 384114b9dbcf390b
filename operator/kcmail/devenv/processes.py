"""Start long-running server processes detached, wait for them, and stop every one of them.

Each server runs in its own session (process group), so stopping it also stops whatever it spawned
(Keycloak's launcher script starts a JVM, for instance). Their process-group ids are written to a state
file so that ``kcmail dev down`` from another shell finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartFailed(RuntimeError):
    """A server did not become ready; the message names its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    name: str
    pid: int
    log: Path

    def alive(self) -> bool:
        """True while any live (non-zombie) process remains in the server's process group."""
        return bool(group_members(self.pid))


def group_members(pgid: int) -> list[int]:
    # A launcher script may have exited while the JVM it started lives on: look at the whole group.
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(stat_file.parent.name))
    return members


class ProcessRegistry:
    """The servers one environment started, persisted in ``<state_dir>/processes.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "processes.json"

    def load(self) -> list[ServerProcess]:
        if not self.path.exists():
            return []
        return [ServerProcess(name=p["name"], pid=p["pid"], log=Path(p["log"]))
                for p in json.loads(self.path.read_text())]

    def _save(self, processes: list[ServerProcess]) -> None:
        self.path.write_text(json.dumps([{"name": p.name, "pid": p.pid, "log": str(p.log)}
                                         for p in processes], indent=2))

    def start(self, name: str, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> ServerProcess:
        log = self.state_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        server = ServerProcess(name=name, pid=proc.pid, log=log)
        self._save([*self.load(), server])
        return server

    def stop(self, name: str, timeout: float = 20.0) -> bool:
        """Stop one recorded server by name and forget it; False when none by that name was recorded."""
        processes = self.load()
        chosen = [p for p in processes if p.name == name]
        for server in chosen:
            _stop(server, timeout)
        self._save([p for p in processes if p.name != name])
        return bool(chosen)

    def stop_all(self, timeout: float = 20.0) -> list[str]:
        """Stop every recorded server, newest first, each before the next; returns the names stopped.

        Order matters: kube-apiserver hangs on shutdown while etcd is already gone, so the servers
        stop in the reverse of the order they started, each given ``timeout`` after SIGTERM.
        """
        processes = self.load()
        for server in reversed(processes):
            _stop(server, timeout)
        still = [s.name for s in processes if s.alive()]
        if still:
            raise RuntimeError(f"processes survived SIGKILL: {', '.join(still)}")
        self.path.unlink(missing_ok=True)
        return [s.name for s in processes]


def _stop(server: ServerProcess, timeout: float) -> None:
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(server.pid)
            if not server.alive():
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect an exited child of this process, so that it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(check: Callable[[], bool], *, server: ServerProcess, what: str, timeout: float,
               interval: float = 0.5) -> None:
    """Poll ``check`` until it holds; fail early, with the log's tail, if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not server.alive():
            raise StartFailed(f"{server.name} exited before {what}; log {server.log}:\n{_tail(server.log)}")
        time.sleep(interval)
    raise StartFailed(f"{server.name}: {what} not reached within {timeout:.0f} s; log {server.log}:\n"
                      f"{_tail(server.log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_ok(url: str, *, ca_file: Path | None = None, client_cert: tuple[Path, Path] | None = None) -> bool:
    """True when ``url`` answers 200."""
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if client_cert:
            context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0
