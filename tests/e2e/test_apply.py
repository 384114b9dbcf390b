"""A MailConfig reaches its realm: the settings Keycloak holds, nothing else touched, a mail delivered."""

from __future__ import annotations

import datetime

import pytest

from kcmail.devenv.clients import realm_changes
from kcmail.devenv.mail_spool import wait_for_message
from kcmail.ownership import Owner, recorded_owner

pytestmark = pytest.mark.e2e


def test_mailconfig_becomes_ready_and_keycloak_sends_with_its_settings(operator, tenant, mail_server):
    before = tenant.admin.realm(tenant.realm)
    smtp = {"host": "localhost", "port": mail_server.starttls_port, "security": "StartTLS"}
    tenant.apply(tenant.secret(), tenant.mailconfig(smtp=smtp))
    ready = tenant.wait_condition("True", "Delivering")

    stored = tenant.smtp_server()
    assert stored["authType"] == "token"
    assert stored["authTokenClientSecret"] == "**********"
    assert stored["authTokenClientId"] == tenant.env.issuer_client_id
    assert stored["port"] == str(mail_server.starttls_port)
    assert ready["status"]["keycloakVersion"] == tenant.env.keycloak_version
    assert ready["status"]["appliedSecretVersion"].count("/") == 1

    after = tenant.admin.realm(tenant.realm)
    assert realm_changes(before, after) == []
    # The realm names its owner, in the same write: the MailConfig's uid and namespace/name.
    assert recorded_owner(after) == Owner(uid=ready["metadata"]["uid"], mailconfig=f"{tenant.namespace}/mail")

    since = datetime.datetime.now(datetime.UTC)
    sent = tenant.admin.request("POST", f"/{tenant.realm}/testSMTPConnection", json=stored)
    assert sent.status_code == 204, sent.text
    message = wait_for_message(mail_server.spool, lambda m: m.received_at >= since
                               and tenant.env.keycloak_admin_email in m.rcpt_tos, timeout=30)
    assert message.auth is not None
    assert (message.auth.mechanism, message.auth.user) == ("XOAUTH2", "no-reply@acme.example")
    if mail_server.records_client:
        assert message.auth.client_id == tenant.env.issuer_client_id
