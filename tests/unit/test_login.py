"""The operator's login (kcmail.apisession.login_info) and its import without the kubernetes client library."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from kcmail.apisession import has_credentials, in_cluster_server, login_info

SERVER = "https://127.0.0.1:6443"


def _kubeconfig(path: Path, user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "local", "cluster": {"server": SERVER}}],
        "users": [{"name": "me", "user": user}],
        "contexts": [{"name": "bench", "context": {"cluster": "local", "user": "me", "namespace": "mail"}}],
    }))
    return path


def _login() -> kopf.ConnectionInfo:
    return login_info(settings=kopf.OperatorSettings(), logger=logging.getLogger("test"))


@pytest.fixture(autouse=True)
def no_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either


def test_a_kubeconfig_with_a_token_needs_no_client_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", {"token": "abc"})))

    info = _login()

    assert (info.server, info.token, info.default_namespace) == (SERVER, "abc", "mail")
    assert has_credentials(info)


def test_an_exec_plugin_is_run_through_the_client_library(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent("""
        import json
        print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                          "status": {"token": "from-the-plugin"}}))
    """))
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(plugin)], "interactiveMode": "Never"}}
    # A fresh interpreter, as the operator is: the library reads $KUBECONFIG when it is first imported.
    script = textwrap.dedent("""
        import json, logging
        from kcmail import cli
        cli.import_kopf_alone()
        import kopf
        from kcmail.apisession import login_info
        info = login_info(settings=kopf.OperatorSettings(), logger=logging.getLogger())
        print(json.dumps({"server": info.server, "token": info.token}))
    """)

    answer = _python(script, KUBECONFIG=str(_kubeconfig(tmp_path / "config", user)))

    assert answer == {"server": SERVER, "token": "from-the-plugin"}


def test_no_kubeconfig_and_no_service_account_is_a_clear_error() -> None:
    with pytest.raises(kopf.LoginError, match="no service account token and no kubeconfig"):
        _login()


@pytest.mark.parametrize(("environ", "server"), [
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"),
    ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, "https://[fd00::1]:443"),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
    ({}, None),
])
def test_in_cluster_server(environ: dict[str, str], server: str | None) -> None:
    assert in_cluster_server(environ) == server


@pytest.mark.parametrize(("fields", "expected"), [
    ({"token": "t"}, True),
    ({"certificate_data": "c", "private_key_data": "k"}, True),
    ({"username": "u", "password": "p"}, True),
    ({}, False),
])
def test_has_credentials(fields: dict[str, str], expected: bool) -> None:
    assert has_credentials(kopf.ConnectionInfo(server=SERVER, **fields)) is expected


def test_the_operator_process_does_not_load_the_client_library() -> None:
    # A fresh interpreter: this test process has long imported kopf and the library.
    script = textwrap.dedent("""
        import json, sys
        from kcmail import cli
        cli.import_kopf_alone()
        import kcmail.handlers
        loaded = "kubernetes" in sys.modules
        import kubernetes.config  # still importable afterwards, for an exec plugin's login
        print(json.dumps({"loaded": loaded, "logins": [h.id for h in kcmail.handlers.kopf.get_default_registry()
                                                         ._activities.get_all_handlers()
                                                         if h.activity.value == "authentication"]}))
    """)
    answer = _python(script)

    assert answer["loaded"] is False
    assert answer["logins"] == ["login"]  # kcmail's own, no fallback through the library


def _python(script: str, **environ: str) -> Any:
    """What ``script`` prints as JSON, run by a fresh interpreter with this one's import path."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **environ})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
