"""The Postfix and Dovecot configuration the environment writes, and the messages Postfix's transport records."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest

from kcmail.devenv import postfix_server
from kcmail.devenv.mail_spool import AuthIdentity, from_postfix
from kcmail.devenv.postfix_server import PostfixConfig, PostfixConfigError

pytestmark = pytest.mark.unit

CONFIG = PostfixConfig(
    root=Path("/state/postfix"), cert_file=Path("/pki/postfix.crt"), key_file=Path("/pki/postfix.key"),
    ca_file=Path("/pki/ca.crt"), introspection_url="https://127.0.0.1:8443/realms/issuer/introspect",
    client_id="mail-server", client_secret="s3cret", username_claim="mailbox", starttls_port=10025,
    tls_port=10465, short_line_port=10026, sasl_port=10027, refused_domains=("refused.test",))


def _settings(text: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)


def test_main_cf_listens_on_loopback_and_authenticates_only_through_dovecot_after_tls():
    main = _settings(postfix_server.main_cf(CONFIG))
    assert main["inet_interfaces"] == "loopback-only"
    assert (main["smtpd_sasl_type"], main["smtpd_sasl_path"]) == ("dovecot", "inet:127.0.0.1:10027")
    assert main["smtpd_tls_auth_only"] == "yes"
    assert main["smtpd_relay_restrictions"] == "permit_sasl_authenticated, reject_unauth_destination"
    # Keycloak's AUTH line with a Microsoft-sized token (about 4.6 KB) fits; every message goes to the spool.
    assert int(main["line_length_limit"]) > 4700
    assert main["mydestination"] == ""
    assert main["default_transport"] == main["relay_transport"] == "kcmail"
    assert main["smtpd_recipient_restrictions"] == (
        "check_recipient_access inline:{ {refused.test = 550 5.1.1 Recipient rejected} }")


def test_main_cf_without_refused_domains_has_no_recipient_check():
    main = _settings(postfix_server.main_cf(dataclasses.replace(CONFIG, refused_domains=())))
    assert main["smtpd_recipient_restrictions"] == ""


def test_master_cf_runs_nothing_in_a_chroot_and_keeps_the_default_line_limit_on_one_listener():
    rows = [line.split() for line in postfix_server.master_cf(CONFIG).splitlines()]
    assert all(row[4] == "n" for row in rows), "chroot column"
    listeners = {row[0]: row[8:] for row in rows if row[1] == "inet"}
    assert set(listeners) == {"127.0.0.1:10025", "127.0.0.1:10465", "127.0.0.1:10026"}
    assert "smtpd_tls_wrappermode=yes" in listeners["127.0.0.1:10465"]
    assert listeners["127.0.0.1:10026"] == ["-o", "line_length_limit=2048"]
    transport = next(row for row in rows if row[0] == "kcmail")
    assert "user=nobody" in transport
    assert "${sasl_username}" in transport


def test_dovecot_offers_xoauth2_through_the_oauth2_passdb_on_the_sasl_port_only():
    conf = postfix_server.dovecot_conf(CONFIG)
    assert "\nprotocols =\n" in conf
    assert "auth_mechanisms = xoauth2 oauthbearer" in conf
    assert "driver = oauth2" in conf
    assert "address = 127.0.0.1\n    port = 10027" in conf


def test_oauth2_passdb_introspects_as_its_own_client_and_logs_in_the_mailbox_claim():
    settings = _settings(postfix_server.oauth2_conf(CONFIG))
    assert settings["introspection_mode"] == "post"
    assert (settings["client_id"], settings["client_secret"]) == ("mail-server", "s3cret")
    assert settings["username_attribute"] == "mailbox"
    assert settings["tls_ca_cert_file"] == "/pki/ca.crt"


def test_the_secret_stays_out_of_the_configs_repr():
    assert "s3cret" not in repr(CONFIG)


@pytest.mark.parametrize("changes", [
    {"tls_port": 10025},
    {"sasl_port": 25},
    {"client_secret": ""},
    {"client_secret": "s3cret\nusername_attribute = sub"},
    {"introspection_url": "https://x\rclient_id = other"},
])
def test_a_config_that_contradicts_itself_is_refused(changes):
    with pytest.raises(PostfixConfigError):
        dataclasses.replace(CONFIG, **changes)


def test_a_message_recorded_by_postfixs_transport_reads_as_a_recorded_message():
    content = (b"6\n4F2A1C\nXOAUTH2\nno-reply@acme.example\nno-reply@acme.example\na@acme.example\nb@acme.example\n"
               b"Return-Path: <no-reply@acme.example>\n"
               b"Received: from kc (localhost [127.0.0.1])\n\tby postfix.kcmail.test (Postfix) with ESMTPSA id 4F2A1C\n"
               b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\nhello\n")
    message = from_postfix("1796540763969221488-4F2A1C.msg", content)
    assert message.id == "4F2A1C"
    assert message.received_at == datetime.datetime(2026, 12, 6, 7, 6, 3, 969221, tzinfo=datetime.UTC)
    assert (message.mail_from, message.rcpt_tos) == ("no-reply@acme.example", ("a@acme.example", "b@acme.example"))
    assert message.auth == AuthIdentity(mechanism="XOAUTH2", user="no-reply@acme.example")
    assert message.subject == "Grüße"
    assert message.tls
    assert message.data.endswith("hello\n")


def test_a_message_without_auth_or_tls_records_neither():
    content = b"5\n77B1\n\n\nsender@acme.example\nrcpt@acme.example\nReceived: from x by y with ESMTP id 77B1\n\nhi\n"
    message = from_postfix("1796540763000000000-77B1.msg", content)
    assert message.auth is None
    assert not message.tls
    assert message.subject is None


def test_dovecots_sockets_fit_a_unix_socket_path_whatever_the_state_directory():
    deep = Path("/home/someone/.local/state/kcmail/dev/pytest-of-someone/pytest-46/test_up_then_down0/env/postfix")
    socket = postfix_server.run_dir(deep) / "token-login" / "tokenlogin"
    assert len(str(socket).encode()) <= 107
    assert postfix_server.run_dir(deep) != postfix_server.run_dir(deep.parent / "other")
    assert f"base_dir = {postfix_server.run_dir(CONFIG.root)}\n" in postfix_server.dovecot_conf(CONFIG)


def test_the_log_is_searched_only_past_the_offset_given(tmp_path):
    log = tmp_path / "postfix.log"
    log.write_text("warning: SASL XOAUTH2 authentication failed\n")
    seen = log.stat().st_size
    assert postfix_server.log_shows(log, "authentication failed", timeout=0)
    assert not postfix_server.log_shows(log, "authentication failed", after=seen, timeout=0.2)
    with log.open("a") as more:
        more.write("warning: SASL XOAUTH2 authentication failed again\n")
    assert postfix_server.log_shows(log, "authentication failed", after=seen, timeout=0)
