"""A MailConfig with ``auth.xoauth2.googleServiceAccount``, from apply to a delivered mail and back.

The operator runs with the bridge (``--bridge-url``, ``--bridge-registry``) and the bridge reads the registry
Secret the operator keeps; Google is the environment's stand-in, which checks each assertion as Google's
contract says, and the SMTP server lets a token send only as the mailbox Google's tokeninfo names.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from kcmail.bridge import enrolment
from kcmail.devenv import operator_env

pytestmark = pytest.mark.e2e

REGISTRY_NAMESPACE, REGISTRY = operator_env.BRIDGE_REGISTRY.split("/")


def _gmail_mailconfig(tenant, mailbox: str, **spec: Any) -> dict[str, Any]:
    body = tenant.mailconfig("gmail", deletionPolicy="Clear", **spec)
    body["spec"]["sender"]["from"] = mailbox
    body["spec"]["auth"] = {"type": "XOAUTH2", "username": mailbox,
                            "xoauth2": {"googleServiceAccount": {"keySecretRef": {"name": "gmail-key"}}}}
    return body


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def _registry(tenant) -> dict[str, str]:
    result = operator_env.kubectl(tenant.env, "-n", REGISTRY_NAMESPACE, "get", "secret", REGISTRY, "-o", "json")
    assert result.returncode == 0, result.stderr
    return {k: base64.b64decode(v).decode() for k, v in (json.loads(result.stdout).get("data") or {}).items()}


def test_a_google_service_account_sends_through_the_bridge_as_its_mailbox(operator, tenant):
    keys = json.loads(Path(tenant.env.google_keys).read_text())
    mailbox = keys["mailboxes"][0]
    # First a key without domain-wide delegation: Google refuses, in its own words.
    tenant.apply(operator_env.secret(tenant.namespace, "gmail-key", {"key.json": json.dumps(keys["undelegated"])}),
                 _gmail_mailconfig(tenant, mailbox))
    refused = tenant.wait_for(lambda o: _condition(o, "TokenAcquired").get("reason") == "GoogleRefused", "gmail",
                              timeout=90, what="TokenAcquired=False (GoogleRefused)")
    assert "unauthorized_client" in _condition(refused, "TokenAcquired")["message"]
    uid = refused["metadata"]["uid"]

    # A disabled key: Google's own words again, told apart from the bridge's refusals.
    tenant.apply(operator_env.secret(tenant.namespace, "gmail-key", {"key.json": json.dumps(keys["disabled"])}))
    disabled = tenant.wait_for(lambda o: "Invalid JWT Signature." in _condition(o, "TokenAcquired").get("message", ""),
                               "gmail", timeout=60, what="TokenAcquired=False for the disabled key")
    assert _condition(disabled, "TokenAcquired")["reason"] == "GoogleRefused"

    # The Secret rotated to a delegated key: the bridge uses it at once, and the MailConfig becomes Ready.
    tenant.apply(operator_env.secret(tenant.namespace, "gmail-key", {"key.json": json.dumps(keys["delegated"])}))
    ready = tenant.wait_condition("True", name="gmail", timeout=90)
    smtp = tenant.smtp_server()
    assert smtp["authTokenUrl"] == operator.bridge_url
    client = enrolment.client_id(uid, mailbox, keys["delegated"]["private_key_id"])
    assert smtp["authTokenClientId"] == client
    assert smtp["authTokenScope"] == "https://mail.google.com/"
    assert smtp["user"] == mailbox

    # Keycloak itself fetches a token from the bridge and delivers a mail as the Workspace mailbox.
    message = tenant.send_test_mail(keys["delegated"]["client_id"])
    assert message.auth is not None
    assert (message.auth.mechanism.upper(), message.auth.user) == ("XOAUTH2", mailbox)

    # A mailbox the Workspace does not have: Google refuses the candidate, the working realm is kept, and so
    # is the client it uses, beside the candidate's.
    wrong = _gmail_mailconfig(tenant, "nobody@workspace.example")
    wrong["spec"]["sender"]["from"] = mailbox
    tenant.apply(wrong)
    held = tenant.wait_condition("False", "ChangeHeld", name="gmail", timeout=60)
    assert "Invalid email or User ID" in _condition(held, "Applied")["message"]
    assert tenant.smtp_server()["authTokenClientId"] == client
    assert len(enrolment.entries_of(uid, _registry(tenant))) == 2
    assert tenant.send_test_mail(keys["delegated"]["client_id"]).auth.user == mailbox  # type: ignore[union-attr]
    # Back to the mailbox: Ready again, and the candidate's client goes.
    tenant.apply(_gmail_mailconfig(tenant, mailbox))
    ready = tenant.wait_condition("True", name="gmail", timeout=60)
    assert enrolment.entries_of(uid, _registry(tenant)) == [enrolment.entry_key(client)]

    # The bridge holds the entry under the MailConfig's uid: its mailbox, the key, and no secret in the clear.
    registry = _registry(tenant)
    entry = json.loads(registry[enrolment.entry_key(client)])
    assert (entry["mailbox"], entry["serviceAccountKey"]) == (mailbox, keys["delegated"])
    secret = enrolment.client_secret(bytes.fromhex(registry["seed"]), client)
    assert secret not in registry[enrolment.entry_key(client)]

    # Neither the key, nor kcmail's secret for the bridge, is in status, Events or either log.
    key_line = keys["delegated"]["private_key"].splitlines()[1]
    seen = {"status": json.dumps(ready.get("status")), "events": json.dumps(tenant.events("gmail")),
            "operator log": operator.log(), "bridge log": operator.bridge.log.read_text(errors="replace"),
            "metrics": operator.metrics()}
    for where, text in seen.items():
        assert "ya29." not in text, where  # no Google access token either
        assert key_line not in text, where
        assert secret not in text, where
        assert keys["undelegated"]["private_key"].splitlines()[1] not in text, where

    # Deleted with deletionPolicy Clear: the realm's settings and the bridge's entry go.
    assert tenant.kubectl("delete", "mailconfig", "gmail", "--timeout=60s").returncode == 0
    assert enrolment.entries_of(uid, _registry(tenant)) == []
    assert not tenant.smtp_server()


def test_the_api_server_refuses_the_two_forms_at_once_and_a_mailbox_that_is_no_address(operator, tenant):
    both = _gmail_mailconfig(tenant, "no-reply@workspace.example")
    both["spec"]["auth"]["xoauth2"]["tokenURL"] = "https://login.example/token"
    result = tenant.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(both))
    assert result.returncode != 0
    assert "googleServiceAccount goes without tokenURL and clientSecretRef" in result.stderr
    no_address = _gmail_mailconfig(tenant, "no-reply")
    result = tenant.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(no_address))
    assert result.returncode != 0
    assert "must be the Workspace mailbox" in result.stderr
    wrong_scope = _gmail_mailconfig(tenant, "no-reply@workspace.example")
    wrong_scope["spec"]["auth"]["xoauth2"]["scope"] = "https://outlook.office365.com/.default"
    result = tenant.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(wrong_scope))
    assert result.returncode != 0
    assert "https://mail.google.com/" in result.stderr
