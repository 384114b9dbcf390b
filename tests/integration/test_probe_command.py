"""``kcmail probe`` run as a command against the real issuer and SMTP server: every step, every exit code,
and never a secret or a token in what it prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from kcmail.devenv.environment import SENDER_MAILBOXES
from kcmail.devenv.mail_spool import wait_for_message
from kcmail.devenv.processes import free_port
from kcmail.probe_cli import CLIENT_SECRET_ENV, EXIT_PASSED, EXIT_PROBE_FAILED

pytestmark = pytest.mark.integration

MAILBOX = SENDER_MAILBOXES["smtp-app"][0]
CANARY_SECRET = "kcmail-canary-cli-secret-Vq93Lm"
# A JWT (header.payload.): what an access token from the issuer looks like, whatever its value.
JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.")


def _mailconfig(devenv, *, auth: dict, port: int | None = None, security: str = "StartTLS",
                probe: dict | None = None) -> dict:
    return {"apiVersion": "kcmail.io/v1alpha1", "kind": "MailConfig",
            "metadata": {"name": "acme", "namespace": "tenant-acme"},
            "spec": {"connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"}, "realm": "acme",
                     "smtp": {"host": devenv.smtp_host, "port": port or devenv.smtp_starttls_port,
                              "security": security},
                     "sender": {"from": MAILBOX}, "auth": auth, "probe": probe or {"smtp": "Authenticate"}}}


def _xoauth2(devenv) -> dict:
    return {"type": "XOAUTH2", "username": MAILBOX,
            "xoauth2": {"tokenURL": devenv.issuer_token_url, "scope": devenv.issuer_scope,
                        "clientSecretRef": {"name": "acme-smtp-oauth"}}}


def _secret(devenv) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "acme-smtp-oauth", "namespace": "tenant-acme"},
            "stringData": {"client-id": devenv.issuer_client_id, "client-secret": devenv.issuer_client_secret}}


def _write(path: Path, *docs: dict) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def _probe(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != CLIENT_SECRET_ENV}
    return subprocess.run([sys.executable, "-m", "kcmail.cli", "probe", *args], cwd=tmp_path,
                          env={**environ, **(env or {})}, capture_output=True, text=True, timeout=90, check=False)


def _step_lines(stdout: str) -> dict[str, str]:
    """Step name → its line, for the lines that start with ok or FAIL."""
    lines = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] in ("ok", "FAIL"):
            lines[words[1]] = line
    return lines


def _assert_no_secrets(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for stream in (result.stdout, result.stderr):
        for secret in secrets:
            assert secret not in stream
        assert not JWT.search(stream), "an access token was printed"


def test_every_step_passes_against_the_issuer_and_the_starttls_server(devenv, tmp_path):
    config = _write(tmp_path / "acme.yaml", _secret(devenv), _mailconfig(devenv, auth=_xoauth2(devenv)))
    result = _probe(tmp_path, str(config), "--ca-bundle", str(devenv.ca_file))
    assert result.returncode == EXIT_PASSED, result.stdout + result.stderr
    steps = _step_lines(result.stdout)
    assert list(steps) == ["token", "connect", "ehlo", "starttls", "auth"]
    assert all(line.startswith("  ok ") and re.search(r"\d+ ms", line) for line in steps.values())
    host = devenv.issuer_token_url.split("/")[2]
    assert f"{host} answered HTTP 200; the token expires in" in steps["token"]
    assert "issued by CN=kcmail dev CA, expires 20" in steps["starttls"]
    assert "AUTH LOGIN PLAIN XOAUTH2" in steps["starttls"]
    assert f"AUTH XOAUTH2 as {MAILBOX}: 235" in steps["auth"]
    assert "PASSED: every step passed" in result.stdout
    _assert_no_secrets(result, devenv.issuer_client_secret)


def test_a_wrong_client_secret_is_invalid_client_with_keycloaks_words_and_the_secret_unprinted(devenv, tmp_path):
    config = _write(tmp_path / "acme.yaml", _mailconfig(devenv, auth=_xoauth2(devenv)))
    result = _probe(tmp_path, str(config), "--ca-bundle", str(devenv.ca_file), "--client-id", devenv.issuer_client_id,
                    env={CLIENT_SECRET_ENV: CANARY_SECRET})
    assert result.returncode == EXIT_PROBE_FAILED, result.stdout + result.stderr
    steps = _step_lines(result.stdout)
    assert list(steps) == ["token"]
    assert "FAIL token" in steps["token"]
    assert "InvalidClient: token endpoint answered HTTP 401" in steps["token"]
    assert "Invalid client or Invalid client credentials" in steps["token"]
    assert "FAILED at token: InvalidClient" in result.stdout
    _assert_no_secrets(result, CANARY_SECRET)


def test_a_closed_port_is_smtp_unreachable_after_the_token(devenv, tmp_path):
    config = _write(tmp_path / "acme.yaml", _secret(devenv),
                    _mailconfig(devenv, auth=_xoauth2(devenv), port=free_port()))
    result = _probe(tmp_path, str(config), "--ca-bundle", str(devenv.ca_file), "--timeout", "5")
    assert result.returncode == EXIT_PROBE_FAILED, result.stdout + result.stderr
    steps = _step_lines(result.stdout)
    assert list(steps) == ["token", "connect"]
    assert "SMTPUnreachable: cannot connect to" in steps["connect"]
    _assert_no_secrets(result, devenv.issuer_client_secret)


def test_a_certificate_from_a_ca_not_given_is_untrusted(devenv, tmp_path):
    auth = {"type": "Basic", "username": devenv.smtp_basic_user,
            "basic": {"passwordSecretRef": {"name": "acme-relay", "key": "password"}}}
    config = _write(tmp_path / "acme.yaml", _mailconfig(devenv, auth=auth))
    password = tmp_path / "password"
    password.write_text(devenv.smtp_basic_password + "\n")
    result = _probe(tmp_path, str(config), "--password-file", str(password))
    assert result.returncode == EXIT_PROBE_FAILED, result.stdout + result.stderr
    steps = _step_lines(result.stdout)
    assert list(steps) == ["connect", "ehlo", "starttls"]
    assert "CertificateUntrusted:" in steps["starttls"]
    assert "certificate not trusted" in steps["starttls"]
    _assert_no_secrets(result, devenv.smtp_basic_password)


def test_basic_auth_over_implicit_tls_shows_the_certificate_when_connecting(devenv, tmp_path):
    auth = {"type": "Basic", "username": devenv.smtp_basic_user,
            "basic": {"passwordSecretRef": {"name": "acme-relay", "key": "password"}}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "acme-relay"},
              "stringData": {"password": devenv.smtp_basic_password}}
    config = _write(tmp_path / "acme.yaml", _mailconfig(devenv, auth=auth, port=devenv.smtp_tls_port, security="SSL"))
    secret_file = _write(tmp_path / "secret.yaml", secret)
    result = _probe(tmp_path, str(config), "--secret", str(secret_file), "--ca-bundle", str(devenv.ca_file))
    assert result.returncode == EXIT_PASSED, result.stdout + result.stderr
    steps = _step_lines(result.stdout)
    assert list(steps) == ["connect", "ehlo", "auth"]
    assert "TLSv1.3, certificate CN=" in steps["connect"]
    assert f"AUTH PLAIN as {devenv.smtp_basic_user}: 235" in steps["auth"]
    _assert_no_secrets(result, devenv.smtp_basic_password)


def test_send_mode_delivers_a_probe_message_that_arrives_in_the_spool(devenv, tmp_path):
    recipient = f"cli-{uuid.uuid4().hex[:8]}@acme.example"
    config = _write(tmp_path / "acme.yaml", _secret(devenv),
                    _mailconfig(devenv, auth=_xoauth2(devenv), probe={"smtp": "Send", "recipient": recipient}))
    result = _probe(tmp_path, str(config), "--ca-bundle", str(devenv.ca_file))
    assert result.returncode == EXIT_PASSED, result.stdout + result.stderr
    sent = re.search(r"ok\s+send\s+\d+ ms\s+probe (\w+) accepted for " + re.escape(recipient), result.stdout)
    assert sent, result.stdout
    message = wait_for_message(devenv.smtp_spool, lambda m: recipient in m.rcpt_tos, timeout=10)
    assert message.subject == f"kcmail delivery probe for tenant-acme/acme ({sent.group(1)})"
    assert message.auth is not None
    assert (message.auth.mechanism, message.auth.client_id) == ("XOAUTH2", devenv.issuer_client_id)
    _assert_no_secrets(result, devenv.issuer_client_secret)


def test_json_output_is_one_document_with_timed_steps(devenv, tmp_path):
    recipient = f"cli-json-{uuid.uuid4().hex[:8]}@acme.example"
    config = _write(tmp_path / "acme.yaml", _secret(devenv), _mailconfig(devenv, auth=_xoauth2(devenv)))
    result = _probe(tmp_path, str(config), "--ca-bundle", str(devenv.ca_file), "--json", "--send-to", recipient)
    assert result.returncode == EXIT_PASSED, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["failure"] is None
    assert [step["name"] for step in document["steps"]] == ["token", "connect", "ehlo", "starttls", "auth", "send"]
    assert all(step["ok"] and isinstance(step["seconds"], float) for step in document["steps"])
    assert document["steps"][0]["seconds"] > 0  # the token request takes milliseconds at least
    assert document["target"]["clientID"] == devenv.issuer_client_id
    assert document["target"]["send"] == f"{MAILBOX} -> {recipient}"
    message = wait_for_message(devenv.smtp_spool, lambda m: recipient in m.rcpt_tos, timeout=10)
    assert document["probeID"] in (message.subject or "")
    _assert_no_secrets(result, devenv.issuer_client_secret)


@pytest.mark.parametrize(("key", "exit_code", "words"), [
    ("delegated", EXIT_PASSED, "PASSED"),
    ("undelegated", EXIT_PROBE_FAILED, "GoogleRefused: Google answered: unauthorized_client"),
])
def test_a_google_service_account_is_probed_with_the_grant_the_bridge_would_make(devenv, tmp_path, key, exit_code,
                                                                                  words):
    """Before anything is deployed: the key, the delegation and the mailbox, asked of Google (the stand-in)."""
    keys = json.loads(Path(devenv.google_keys).read_text())
    mailbox = keys["mailboxes"][0]
    auth = {"type": "XOAUTH2", "username": mailbox,
            "xoauth2": {"googleServiceAccount": {"keySecretRef": {"name": "gmail-key"}}}}
    mailconfig = _mailconfig(devenv, auth=auth)
    mailconfig["spec"]["sender"]["from"] = mailbox
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gmail-key", "namespace": "tenant-acme"},
              "stringData": {"key.json": json.dumps(keys[key])}}
    config = _write(tmp_path / "gmail.yaml", secret, mailconfig)
    result = _probe(tmp_path, str(config), "--ca-bundle", str(devenv.ca_file), "--google-token-url",
                    devenv.google_token_url)
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert words in result.stdout
    assert f"token from    {devenv.google_token_url} (client {keys[key]['client_email']}" in result.stdout
    if exit_code == EXIT_PASSED:
        assert f"AUTH XOAUTH2 as {mailbox}: 235" in _step_lines(result.stdout)["auth"]
    assert keys[key]["private_key"].splitlines()[1] not in result.stdout + result.stderr
    assert "ya29." not in result.stdout + result.stderr
