"""`kcmail dev up` then `kcmail dev down`, as a user runs them: everything started is stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kcmail.devenv import postfix_server
from kcmail.devenv.environment import Environment
from kcmail.devenv.processes import ProcessRegistry, port_open

pytestmark = pytest.mark.integration

KCMAIL = [sys.executable, "-m", "kcmail.cli"]


def _kcmail(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KCMAIL, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def test_up_then_down_leaves_no_process_and_no_port(tmp_path, devenv):
    # `devenv` first: the session's own environment is already up, so this proves two can coexist.
    state = tmp_path / "env"
    up = _kcmail("dev", "--dir", str(state), "up")
    assert up.returncode == 0, up.stderr[-3000:]
    assert f"source {state / 'dev.env'}" in up.stdout
    env = Environment.load(state / "dev.env")
    started = ProcessRegistry(state).load()
    assert {p.name for p in started} == {"keycloak", "etcd", "kube-apiserver", "google", "smtp", "dovecot",
                                         "postfix"}
    status = _kcmail("dev", "--dir", str(state), "status")
    assert status.returncode == 0
    assert status.stdout.count("running") == 7
    ports = [env.smtp_starttls_port, env.smtp_tls_port, int(env.keycloak_url.rsplit(":", 1)[1]),
             int(env.kube_api_url.rsplit(":", 1)[1]), env.postfix_starttls_port, env.postfix_tls_port,
             env.postfix_short_line_port, int(env.google_token_url.rsplit(":", 1)[1].split("/")[0])]
    assert all(port_open(port) for port in ports)

    down = _kcmail("dev", "--dir", str(state), "down")
    assert down.returncode == 0, down.stderr
    assert not [p.name for p in started if _group_alive(p.pid)]
    assert not [port for port in ports if port_open(port)]
    assert not postfix_server.run_dir(state / "postfix").exists()
    assert _kcmail("dev", "--dir", str(state), "status").returncode == 1
