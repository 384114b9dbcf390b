"""Adopting a realm configured by hand: `kcmail export` reads it, the person fills in the secret, and the
operator takes it over with one write that changes nothing in the realm (the secret it writes is the one
already stored)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest
import yaml

from kcmail.devenv import operator_env
from kcmail.devenv.clients import realm_changes
from kcmail.devenv.environment import SENDER_MAILBOXES
from kcmail.smtp_settings import TIMEOUTS_SINCE, has_allow_utf8, parse_version

pytestmark = pytest.mark.e2e

MAILBOX = SENDER_MAILBOXES["smtp-app"][0]


def _configured_by_hand(env) -> dict[str, str]:
    """Token auth to the local SMTP server and issuer, every key set as the admin console sets it."""
    smtp = {
        "host": "localhost", "port": str(env.smtp_starttls_port), "ssl": "false", "starttls": "true",
        "auth": "true", "debug": "false", "from": MAILBOX, "fromDisplayName": "Acme by hand",
        "replyTo": "support@acme.example", "envelopeFrom": "bounces@acme.example", "user": MAILBOX,
        "authType": "token", "authTokenUrl": env.issuer_token_url, "authTokenScope": env.issuer_scope,
        "authTokenClientId": env.issuer_client_id, "authTokenClientSecret": env.issuer_client_secret,
    }
    version = parse_version(env.keycloak_version)
    if has_allow_utf8(version):
        smtp["allowutf8"] = "false"
    if version >= TIMEOUTS_SINCE:
        smtp |= {"connectionTimeout": "15000", "timeout": "20000", "writeTimeout": "10000"}
    return smtp


def _realm_writes(tenant) -> int:
    return len(tenant.admin.admin_events(tenant.realm, operation="UPDATE", resource_type="REALM"))


def test_an_exported_realm_is_adopted_with_one_write_that_changes_nothing(operator, tenant, tmp_path):
    env = tenant.env
    tenant.admin.record_admin_events(tenant.realm)
    representation = tenant.admin.realm(tenant.realm)
    representation["smtpServer"] = _configured_by_hand(env)
    assert tenant.admin.put_realm(tenant.realm, representation).status_code == 204
    before = tenant.admin.realm(tenant.realm)
    writes = _realm_writes(tenant)

    exported = subprocess.run(
        [sys.executable, "-m", "kcmail.cli", "export", "--realm", tenant.realm, "--namespace", tenant.namespace,
         "--connection", operator_env.CONNECTION, "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KUBECONFIG": str(env.kubeconfig)})
    assert exported.returncode == 0, exported.stderr
    text = (tmp_path / f"{tenant.realm}.yaml").read_text()
    assert "# NOTE" not in text, text  # the export reproduces every key: nothing to warn about
    assert env.issuer_client_secret not in text
    secret, mailconfig = yaml.safe_load_all(text)
    assert secret["stringData"] == {"client-id": env.issuer_client_id, "client-secret": "REPLACE-ME"}
    assert mailconfig["spec"]["connectionRef"] == {"kind": "ClusterKeycloakConnection",
                                                   "name": operator_env.CONNECTION}

    secret["stringData"]["client-secret"] = env.issuer_client_secret
    tenant.apply(secret, mailconfig)
    name = mailconfig["metadata"]["name"]
    tenant.wait_condition("True", "Delivering", name=name)

    after = tenant.admin.realm(tenant.realm)
    assert realm_changes(before, after) == []
    stored_before, stored_after = before["smtpServer"], after["smtpServer"]
    for key in sorted(set(stored_before) | set(stored_after)):
        assert stored_after.get(key) == stored_before.get(key), key
    # The operator writes once, because the Secret's version is new to it: the secret it sends is the one
    # Keycloak already held, and so it still authenticates (Ready is Delivering).
    assert _realm_writes(tenant) == writes + 1

    # A further reconcile, asked for at once, finds the realm as the MailConfig says and writes nothing.
    requested = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    annotated = tenant.kubectl("annotate", "mailconfig", name, f"kcmail.io/requested-at={requested}", "--overwrite")
    assert annotated.returncode == 0, annotated.stderr
    tenant.wait_for(lambda obj: (obj.get("status") or {}).get("lastHandledRequestedAt") == requested, name,
                    what="the requested reconcile")
    assert _realm_writes(tenant) == writes + 1
