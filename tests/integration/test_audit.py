"""`kcmail audit` against the real Keycloak: realms seeded through the admin API with each problem, read
back by the command as a person or a script runs it, with and without live probes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from kcmail.devenv import operator_env
from kcmail.devenv.certs import CertificateAuthority
from kcmail.devenv.environment import SENDER_MAILBOXES
from kcmail.devenv.processes import free_port
from kcmail.devenv.smtp_server import ListenerConfig, SmtpServerConfig, serving

pytestmark = pytest.mark.integration

MAILBOX = SENDER_MAILBOXES["smtp-app"][0]
CANARY = "canary-" + uuid.uuid4().hex  # a stored password that must never come back out


def _delete_realm(keycloak_admin, name: str) -> None:
    # Every realm adds its roles to the token of a master-realm service account (one the e2e tests use): left
    # behind, realms would grow that token past Keycloak's request-header limit (HTTP 431).
    response = keycloak_admin.request("DELETE", f"/{name}")
    assert response.status_code in (204, 404), response.text


@pytest.fixture(scope="module")
def realms(devenv, keycloak_admin):
    """One realm per problem, stored through the admin API as a person or a script would store it."""
    suffix = uuid.uuid4().hex[:6]
    local_token = {"host": "localhost", "port": str(devenv.smtp_starttls_port), "starttls": "true", "auth": "true",
                   "from": MAILBOX, "user": MAILBOX, "authType": "token", "authTokenUrl": devenv.issuer_token_url,
                   "authTokenScope": devenv.issuer_scope, "authTokenClientId": devenv.issuer_client_id,
                   "authTokenClientSecret": devenv.issuer_client_secret}
    seeds = {
        "clean": local_token,
        "empty": {},
        "basic365": {"host": "smtp.office365.com", "port": "587", "starttls": "true", "auth": "true",
                     "user": MAILBOX, "password": CANARY, "from": MAILBOX},
        "debug": local_token | {"debug": "true"},
        "noscope": {k: v for k, v in local_token.items() if k != "authTokenScope"},
        # Stored only, never contacted: .invalid names never resolve.
        "httpurl": local_token | {"authTokenUrl": "http://mail-token.invalid/token"},
        "loopbackhttp": local_token | {"authTokenUrl": f"http://127.0.0.1:{free_port()}/token"},
        "badsender": local_token | {"from": '"no reply"@acme.example', "envelopeFrom": "bounces"},
        "hostless": {"from": MAILBOX},
        "vault": {"host": "localhost", "port": str(devenv.smtp_starttls_port), "starttls": "true", "auth": "true",
                  "user": devenv.smtp_basic_user, "password": "${vault.smtp-password}", "from": MAILBOX},
        "basiclocal": {"host": "localhost", "port": str(devenv.smtp_starttls_port), "starttls": "true",
                       "auth": "true", "user": devenv.smtp_basic_user, "password": devenv.smtp_basic_password,
                       "from": MAILBOX},
        "closed": local_token | {"host": "127.0.0.1", "port": str(free_port())},
    }
    names = {}
    for key, smtp in seeds.items():
        name = f"audit-{suffix}-{key}"
        operator_env.create_realm(devenv, name)
        representation = keycloak_admin.realm(name)
        representation["smtpServer"] = smtp
        response = keycloak_admin.put_realm(name, representation)
        assert response.status_code == 204, (key, response.text)
        names[key] = name
    yield names
    for name in names.values():
        _delete_realm(keycloak_admin, name)


@pytest.fixture(scope="module")
def admin_password_file(devenv, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "admin-password"
    path.write_text(devenv.keycloak_admin_password + "\n")
    path.chmod(0o600)
    return path


def _kcmail(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcmail.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def _by_url(devenv, password_file: Path) -> list[str]:
    return ["--url", devenv.keycloak_url, "--username", devenv.keycloak_admin_user,
            "--password-file", str(password_file), "--ca-bundle", str(devenv.ca_file)]


def _audit(devenv, password_file, *realms: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return _kcmail("audit", *_by_url(devenv, password_file), *[a for r in realms for a in ("--realm", r)], *extra)


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def _findings(document: dict) -> dict[str, set[tuple[str, str]]]:
    return {realm["realm"]: {(f["id"], f["severity"]) for f in realm["findings"]} for realm in document["realms"]}


def test_each_stored_problem_is_reported_with_its_id_and_severity(devenv, realms, admin_password_file):
    document = _json(_audit(devenv, admin_password_file, *realms.values(), extra=("--json",)))
    found = _findings(document)
    assert document["keycloak"] == {"url": devenv.keycloak_url.rstrip("/"), "version": devenv.keycloak_version}
    assert found[realms["clean"]] == set()
    assert found[realms["empty"]] == {("smtp-not-configured", "info")}
    assert found[realms["basic365"]] == {("basic-auth-retired", "error")}
    assert found[realms["debug"]] == {("debug-enabled", "warning")}
    assert found[realms["noscope"]] == {("token-scope-missing", "warning")}
    assert found[realms["httpurl"]] == {("token-url-not-https", "error")}
    assert found[realms["loopbackhttp"]] == set()
    assert found[realms["badsender"]] == {("from-invalid", "error"), ("envelope-from-invalid", "error")}
    assert found[realms["hostless"]] == {("host-missing", "error")}
    assert document["failed"] is True
    assert document["summary"]["realms"] == len(realms)


def test_keycloak_refuses_to_store_settings_without_a_sender(devenv, realms, keycloak_admin):
    # Why `from-missing` is only ever found in realms stored before Keycloak validated the sender, or
    # imported: the admin API refuses such settings.
    representation = keycloak_admin.realm(realms["hostless"])
    representation["smtpServer"] = {"host": "localhost", "port": "25"}
    response = keycloak_admin.put_realm(realms["hostless"], representation)
    assert response.status_code == 400
    assert "Invalid sender address" in response.text


def test_the_exit_code_follows_fail_on(devenv, realms, admin_password_file):
    def code(realm: str, *fail_on: str) -> int:
        return _audit(devenv, admin_password_file, realm, extra=fail_on).returncode

    assert code(realms["debug"]) == 0  # a warning, and the default threshold is error
    assert code(realms["debug"], "--fail-on", "warning") == 1
    assert code(realms["debug"], "--fail-on", "error") == 0
    assert code(realms["basic365"]) == 1
    assert code(realms["empty"]) == 0
    assert code(realms["empty"], "--fail-on", "info") == 1
    assert code(realms["clean"], "--fail-on", "info") == 0


def test_the_table_names_every_realm_and_finding_and_the_verdict(devenv, realms, admin_password_file):
    result = _audit(devenv, admin_password_file, realms["basic365"], realms["debug"])
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Keycloak {devenv.keycloak_url.rstrip('/')} ({devenv.keycloak_version}): 2 realm(s)")
    assert any(line.split()[:3] == [realms["basic365"], "smtp.office365.com:587", "StartTLS"] for line in lines)
    assert any(line.split()[:3] == ["error", realms["basic365"], "basic-auth-retired"] for line in lines)
    assert any(line.split()[:3] == ["warning", realms["debug"], "debug-enabled"] for line in lines)
    assert lines[-1] == "FAILED: findings at or above error (exit 1)."


def test_no_stored_secret_appears_in_any_output(devenv, realms, admin_password_file):
    outputs = [_audit(devenv, admin_password_file, *realms.values(), extra=extra)
               for extra in ((), ("--json",))]
    outputs.append(_audit(devenv, admin_password_file, realms["basiclocal"], realms["clean"], realms["vault"],
                          extra=("--probe", "--json")))
    for result in outputs:
        text = result.stdout + result.stderr
        for secret in (CANARY, devenv.issuer_client_secret, devenv.smtp_basic_password,
                       devenv.keycloak_admin_password):
            assert secret not in text
    document = _json(outputs[1])
    shown = {realm["realm"]: realm["smtpServer"] for realm in document["realms"]}
    assert shown[realms["basic365"]]["password"] == "**********"
    # A vault reference names a secret without being one: it is shown as stored.
    assert shown[realms["vault"]]["password"] == "${vault.smtp-password}"


def test_a_wrong_admin_password_is_a_failure_to_run_not_a_finding(devenv, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    result = _kcmail("audit", *_by_url(devenv, wrong))
    assert result.returncode == 2
    assert "KeycloakAuthFailed" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def cluster_connection(devenv):
    """The CRDs and a ClusterKeycloakConnection to the environment's Keycloak (both applied idempotently)."""
    operator_env.install_crds(devenv)
    operator_env.install_connection(devenv)
    return operator_env.CONNECTION


def test_audit_through_a_cluster_connection(devenv, cluster_connection, realms):
    env = {"KUBECONFIG": str(devenv.kubeconfig)}
    result = _kcmail("audit", "--connection", cluster_connection, "--realm", realms["basic365"], "--json",
                     env=env)
    assert _findings(_json(result))[realms["basic365"]] == {("basic-auth-retired", "error")}
    missing = _kcmail("audit", "--connection", "no-such-connection", env=env)
    assert missing.returncode == 2
    assert "ConnectionNotFound" in missing.stderr


def test_probe_without_secrets_stops_short_of_authenticating(devenv, realms, admin_password_file):
    document = _json(_audit(devenv, admin_password_file, realms["clean"], realms["basiclocal"],
                            extra=("--probe", "--json")))
    by_realm = {realm["realm"]: realm for realm in document["realms"]}
    token = by_realm[realms["clean"]]
    assert (token["probe"]["token"], token["probe"]["smtp"]) == ("reachable", "connected")
    assert [s["name"] for s in token["probe"]["steps"]] == ["token endpoint", "connect", "ehlo", "starttls"]
    assert _findings(document)[realms["clean"]] == {("probe-auth-not-tested", "info")}
    assert "--secrets-from" in token["findings"][0]["message"]
    basic = by_realm[realms["basiclocal"]]
    assert (basic["probe"]["token"], basic["probe"]["smtp"]) == ("not needed", "connected")
    assert document["failed"] is False


def _export_into(devenv, password_file: Path, directory: Path, *realms: str) -> None:
    result = _kcmail("export", *_by_url(devenv, password_file), *[a for r in realms for a in ("--realm", r)],
                     "--namespace", "tenant", "--connection-ref", "main", "-o", str(directory))
    assert result.returncode == 0, result.stderr


def _fill(path: Path, secret: str) -> None:
    path.write_text(path.read_text().replace("REPLACE-ME", secret))


def test_probe_with_secrets_from_an_export_authenticates_with_the_stored_settings(devenv, realms,
                                                                                   admin_password_file, tmp_path):
    _export_into(devenv, admin_password_file, tmp_path, realms["clean"], realms["basiclocal"])
    _fill(tmp_path / f"{realms['clean']}.yaml", devenv.issuer_client_secret)
    _fill(tmp_path / f"{realms['basiclocal']}.yaml", devenv.smtp_basic_password)
    result = _audit(devenv, admin_password_file, realms["clean"], realms["basiclocal"],
                    extra=("--secrets-from", str(tmp_path), "--json"))
    document = _json(result)
    by_realm = {realm["realm"]: realm for realm in document["realms"]}
    assert (by_realm[realms["clean"]]["probe"]["token"], by_realm[realms["clean"]]["probe"]["smtp"]) == (
        "issued", "authenticated")
    assert by_realm[realms["basiclocal"]]["probe"]["smtp"] == "authenticated"
    assert _findings(document) == {realms["clean"]: set(), realms["basiclocal"]: set()}
    assert devenv.issuer_client_secret not in result.stdout
    assert devenv.smtp_basic_password not in result.stdout


def test_probe_failures_carry_the_catalogue_reason(devenv, realms, admin_password_file, tmp_path):
    _export_into(devenv, admin_password_file, tmp_path, realms["clean"])
    _fill(tmp_path / f"{realms['clean']}.yaml", "a-wrong-secret")
    document = _json(_audit(devenv, admin_password_file, realms["clean"], realms["closed"],
                            extra=("--secrets-from", str(tmp_path), "--json")))
    by_realm = {realm["realm"]: realm for realm in document["realms"]}
    wrong = next(f for f in by_realm[realms["clean"]]["findings"] if f["id"] == "probe-token-failed")
    assert (wrong["severity"], wrong["reason"]) == ("error", "InvalidClient")
    closed = next(f for f in by_realm[realms["closed"]]["findings"] if f["id"] == "probe-smtp-failed")
    assert (closed["severity"], closed["reason"]) == ("error", "SMTPUnreachable")
    assert "a-wrong-secret" not in json.dumps(document)


@pytest.fixture
def scratch_realm(devenv, keycloak_admin):
    name = f"audit-{uuid.uuid4().hex[:6]}-scratch"
    operator_env.create_realm(devenv, name)
    yield name
    _delete_realm(keycloak_admin, name)


async def test_probe_without_secrets_finds_a_server_that_does_not_offer_xoauth2(devenv, keycloak_admin, scratch_realm,
                                                                               admin_password_file, tmp_path):
    pair = CertificateAuthority(devenv.ca_file.parent).issue("audit-variant", "localhost",
                                                             names=("localhost", "127.0.0.1"))
    listener = ListenerConfig(name="nooauth", port=free_port(), tls="starttls", mechanisms=("PLAIN", "LOGIN"))
    config = SmtpServerConfig(listeners=(listener,), cert_file=pair.cert, key_file=pair.key, ca_file=devenv.ca_file,
                              jwks_url=devenv.issuer_jwks_url, issuer=devenv.issuer, spool_dir=tmp_path / "spool",
                              clients={devenv.issuer_client_id: (MAILBOX,)})
    representation = keycloak_admin.realm(scratch_realm)
    representation["smtpServer"] = {
        "host": "localhost", "port": str(listener.port), "starttls": "true", "auth": "true", "from": MAILBOX,
        "user": MAILBOX, "authType": "token", "authTokenUrl": devenv.issuer_token_url,
        "authTokenScope": devenv.issuer_scope, "authTokenClientId": devenv.issuer_client_id,
        "authTokenClientSecret": devenv.issuer_client_secret}
    assert keycloak_admin.put_realm(scratch_realm, representation).status_code == 204
    async with serving(config):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kcmail.cli", "audit", *_by_url(devenv, admin_password_file), "--realm",
            scratch_realm, "--probe", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 1, stderr.decode()
    (audited,) = json.loads(stdout)["realms"]
    (finding,) = audited["findings"]
    assert (finding["id"], finding["severity"], finding["reason"]) == ("probe-smtp-failed", "error",
                                                                      "XOAUTH2NotOffered")
    assert "PLAIN" in finding["message"]


def test_export_writes_files_that_name_the_realm_and_hold_no_secret(devenv, realms, admin_password_file, tmp_path):
    _export_into(devenv, admin_password_file, tmp_path, realms["basic365"])
    path = tmp_path / f"{realms['basic365']}.yaml"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert CANARY not in text
    secret, mailconfig = yaml.safe_load_all(text)
    assert secret["stringData"] == {"password": "REPLACE-ME"}
    assert mailconfig["spec"]["realm"] == realms["basic365"]
    assert mailconfig["spec"]["connectionRef"] == {"kind": "ClusterKeycloakConnection", "name": "main"}
    # A second export never overwrites a file that may hold a filled-in secret by now.
    _fill(path, "filled-in-secret")
    again = _kcmail("export", *_by_url(devenv, admin_password_file), "--realm", realms["basic365"],
                    "--namespace", "tenant", "--connection-ref", "main", "-o", str(tmp_path))
    assert again.returncode == 2
    assert "exists and may hold a filled-in secret" in again.stderr
    assert "filled-in-secret" in path.read_text()
