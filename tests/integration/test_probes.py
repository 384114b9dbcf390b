"""The token and SMTP probes against the real issuer and SMTP servers, each reason from a real cause.

Every outcome an SMTP server decides runs against both of the environment's servers (``mail_server``):
the project's own and Postfix with Dovecot's oauth2 passdb, which asks the issuer whether a token is
active. The variants without STARTTLS or without XOAUTH2 are the project's real SMTP server started here
with other listener settings; nothing is faked.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import uuid

import httpx
import pytest

from kcmail.conditions import Reason
from kcmail.devenv import postfix_server
from kcmail.devenv.certs import client_context
from kcmail.devenv.environment import REFUSED_DOMAIN, SENDER_MAILBOXES, MailServer
from kcmail.devenv.mail_spool import wait_for_message
from kcmail.devenv.processes import free_port
from kcmail.devenv.smtp_server import ListenerConfig, SmtpServerConfig, serving
from kcmail.oauth import TokenClient, TokenFailure, TokenRequest
from kcmail.probes import Prober
from kcmail.smtp_probe import SendSpec, SmtpCredentials, SmtpTarget, probe_smtp
from kcmail.spec import AuthType, Credentials, MailConfigSpec, Security

pytestmark = pytest.mark.integration

MAILBOX = SENDER_MAILBOXES["smtp-app"][0]


def _request(env, **changes) -> TokenRequest:
    base = TokenRequest(url=env.issuer_token_url, client_id=env.issuer_client_id,
                        client_secret=env.issuer_client_secret, scope=env.issuer_scope, secret_version="v1")
    return dataclasses.replace(base, **changes)


async def _token(env, **changes) -> str:
    async with httpx.AsyncClient(verify=client_context(env.ca_file), timeout=15) as http:
        return (await TokenClient(http).token(_request(env, **changes))).access_token


async def _token_failure(env, context: ssl.SSLContext | None = None, **changes):
    async with httpx.AsyncClient(verify=context or client_context(env.ca_file), timeout=15) as http:
        with pytest.raises(TokenFailure) as caught:
            await TokenClient(http).token(_request(env, **changes))
    return caught.value.failure


def _target(env, port: int | None = None, security: Security = Security.STARTTLS) -> SmtpTarget:
    return SmtpTarget(host="localhost", port=port or env.smtp_starttls_port, security=security,
                      connect_timeout=5, timeout=10)


def _at(server: MailServer, tls: bool = False) -> SmtpTarget:
    if tls:
        return SmtpTarget(host="localhost", port=server.tls_port, security=Security.SSL, connect_timeout=5,
                          timeout=10)
    return SmtpTarget(host="localhost", port=server.starttls_port, security=Security.STARTTLS,
                      connect_timeout=5, timeout=10)


async def test_the_issuer_grants_a_token_and_the_cache_reuses_it(devenv):
    async with httpx.AsyncClient(verify=client_context(devenv.ca_file), timeout=15) as http:
        client = TokenClient(http)
        first = await client.token(_request(devenv))
        second = await client.token(_request(devenv))
    assert first is second
    assert client.requests_made == 1


async def test_a_wrong_client_secret_is_invalid_client(devenv):
    failure = await _token_failure(devenv, client_secret="wrong-secret")
    assert failure.reason is Reason.INVALID_CLIENT
    assert "Invalid client or Invalid client credentials" in failure.message
    assert "wrong-secret" not in failure.message


async def test_an_unknown_scope_is_invalid_scope(devenv):
    failure = await _token_failure(devenv, scope="no.such.scope")
    assert failure.reason is Reason.INVALID_SCOPE
    assert "no.such.scope" in failure.message


async def test_a_stopped_issuer_is_unreachable(devenv):
    failure = await _token_failure(devenv, url=f"https://127.0.0.1:{free_port()}/realms/issuer/token")
    assert failure.reason is Reason.TOKEN_ENDPOINT_UNREACHABLE


async def test_an_issuer_certificate_from_an_unknown_ca_is_unreachable_with_the_tls_cause(devenv):
    failure = await _token_failure(devenv, context=ssl.create_default_context())
    assert failure.reason is Reason.TOKEN_ENDPOINT_UNREACHABLE
    assert "certificate" in failure.message


async def test_xoauth2_after_starttls_authenticates_and_sends(devenv, mail_server):
    token = await _token(devenv)
    recipient = f"probe-{uuid.uuid4().hex[:8]}@acme.example"
    result = await probe_smtp(_at(mail_server), SmtpCredentials(AuthType.XOAUTH2, MAILBOX, token),
                              client_context(devenv.ca_file),
                              send=SendSpec(sender=MAILBOX, recipient=recipient, mailconfig="ns/mc"))
    assert result.ok, result.failure
    assert [s.name for s in result.steps] == ["connect", "ehlo", "starttls", "auth", "send"]
    assert token not in " ".join(s.detail for s in result.steps)
    received = wait_for_message(mail_server.spool, lambda m: recipient in m.rcpt_tos, timeout=15)
    assert received.auth is not None
    assert (received.auth.mechanism, received.auth.user, received.tls) == ("XOAUTH2", MAILBOX, True)
    assert received.mail_from == MAILBOX


async def test_postfix_logs_the_sasl_identity_its_transport_recorded(devenv):
    postfix = devenv.mail_server("postfix")
    recipient = f"probe-{uuid.uuid4().hex[:8]}@acme.example"
    result = await probe_smtp(_at(postfix), SmtpCredentials(AuthType.XOAUTH2, MAILBOX, await _token(devenv)),
                              client_context(devenv.ca_file),
                              send=SendSpec(sender=MAILBOX, recipient=recipient, mailconfig="ns/mc"))
    assert result.ok, result.failure
    received = wait_for_message(postfix.spool, lambda m: recipient in m.rcpt_tos, timeout=15)
    line = f"{received.id}: client=localhost[127.0.0.1], sasl_method=XOAUTH2, sasl_username={MAILBOX}"
    assert postfix_server.log_shows(devenv.state_dir / "logs" / "postfix.log", line)


async def test_implicit_tls_authenticates(devenv, mail_server):
    result = await probe_smtp(_at(mail_server, tls=True),
                              SmtpCredentials(AuthType.XOAUTH2, MAILBOX, await _token(devenv)),
                              client_context(devenv.ca_file))
    assert result.ok, result.failure


async def test_a_token_for_another_mailbox_is_rejected_with_the_reply(devenv, mail_server):
    result = await probe_smtp(_at(mail_server), SmtpCredentials(AuthType.XOAUTH2, "ceo@acme.example",
                                                                 await _token(devenv)),
                              client_context(devenv.ca_file))
    assert result.failure is not None
    assert result.failure.reason is Reason.AUTHENTICATION_REJECTED
    assert "535" in result.failure.message
    assert "ceo@acme.example" in result.failure.message


async def test_postfix_decodes_dovecots_xoauth2_challenge_into_the_message(devenv):
    # Dovecot answers a refused token with the RFC 7628 error challenge; Postfix relays it as a 334.
    postfix = devenv.mail_server("postfix")
    result = await probe_smtp(_at(postfix), SmtpCredentials(AuthType.XOAUTH2, "ceo@acme.example",
                                                             await _token(devenv)),
                              client_context(devenv.ca_file))
    assert result.failure is not None
    assert "the server's XOAUTH2 error: status 401" in result.failure.message


async def test_postfix_default_line_length_cuts_the_auth_line_and_the_message_says_so(devenv):
    """Postfix's default line_length_limit (2048) cuts an AUTH line carrying a Microsoft-sized token."""
    token = await _token(devenv)
    target = SmtpTarget(host="localhost", port=devenv.postfix_short_line_port, security=Security.STARTTLS,
                        connect_timeout=5, timeout=10)
    result = await probe_smtp(target, SmtpCredentials(AuthType.XOAUTH2, MAILBOX, token),
                              client_context(devenv.ca_file))
    assert result.failure is not None
    assert result.failure.reason is Reason.AUTHENTICATION_REJECTED
    message = result.failure.message
    assert "Invalid base64 data in initial response" in message
    assert "line_length_limit" in message
    assert token not in message


async def test_basic_auth_with_the_right_and_a_wrong_password(devenv):
    good = await probe_smtp(_target(devenv), SmtpCredentials(AuthType.BASIC, devenv.smtp_basic_user,
                                                              devenv.smtp_basic_password),
                            client_context(devenv.ca_file))
    assert good.ok, good.failure
    bad = await probe_smtp(_target(devenv), SmtpCredentials(AuthType.BASIC, devenv.smtp_basic_user, "nope"),
                           client_context(devenv.ca_file))
    assert bad.failure is not None
    assert bad.failure.reason is Reason.AUTHENTICATION_REJECTED


async def test_a_refused_recipient(devenv, mail_server):
    result = await probe_smtp(_at(mail_server), SmtpCredentials(AuthType.XOAUTH2, MAILBOX, await _token(devenv)),
                              client_context(devenv.ca_file),
                              send=SendSpec(sender=MAILBOX, recipient=f"x@{REFUSED_DOMAIN}", mailconfig="ns/mc"))
    assert result.failure is not None
    assert result.failure.reason is Reason.RECIPIENT_REJECTED
    assert "550" in result.failure.message


async def test_postfix_refuses_to_relay_for_a_client_that_did_not_authenticate(devenv):
    # What Keycloak meets when it sends without AUTH (authType token, no AUTH offered) through a relay
    # that does not know its address: the refusal comes at RCPT, not at AUTH.
    result = await probe_smtp(_at(devenv.mail_server("postfix")), SmtpCredentials(AuthType.NONE),
                              client_context(devenv.ca_file),
                              send=SendSpec(sender=MAILBOX, recipient="x@acme.example", mailconfig="ns/mc"))
    assert result.failure is not None
    assert result.failure.reason is Reason.RECIPIENT_REJECTED
    assert "Relay access denied" in result.failure.message


async def test_a_closed_port_is_unreachable(devenv):
    result = await probe_smtp(_target(devenv, free_port()), SmtpCredentials(AuthType.NONE),
                              client_context(devenv.ca_file))
    assert result.failure is not None
    assert result.failure.reason is Reason.SMTP_UNREACHABLE


async def test_a_certificate_from_an_unknown_ca_is_untrusted(mail_server):
    result = await probe_smtp(_at(mail_server), SmtpCredentials(AuthType.NONE), ssl.create_default_context())
    assert result.failure is not None
    assert result.failure.reason is Reason.CERTIFICATE_UNTRUSTED


async def test_implicit_tls_against_a_starttls_port_fails_the_handshake(devenv, mail_server):
    target = dataclasses.replace(_at(mail_server), security=Security.SSL)
    result = await probe_smtp(target, SmtpCredentials(AuthType.NONE), client_context(devenv.ca_file))
    assert result.failure is not None
    assert result.failure.reason is Reason.TLS_HANDSHAKE_FAILED
    assert "WRONG_VERSION_NUMBER" in result.failure.message


async def _variant_server(devenv, tmp_path, listener: ListenerConfig):
    from kcmail.devenv.certs import CertificateAuthority

    pair = CertificateAuthority(devenv.ca_file.parent).issue("variant", "localhost",
                                                             names=("localhost", "127.0.0.1"))
    return SmtpServerConfig(listeners=(listener,), cert_file=pair.cert, key_file=pair.key, ca_file=devenv.ca_file,
                            jwks_url=devenv.issuer_jwks_url, issuer=devenv.issuer, spool_dir=tmp_path / "spool",
                            clients={devenv.issuer_client_id: (MAILBOX,)})


async def test_a_server_without_starttls(devenv, tmp_path):
    config = await _variant_server(devenv, tmp_path, ListenerConfig(name="plain", port=free_port(), tls="none"))
    async with serving(config) as running:
        result = await probe_smtp(_target(devenv, running.ports["plain"]), SmtpCredentials(AuthType.NONE),
                                  client_context(devenv.ca_file))
    assert result.failure is not None
    assert result.failure.reason is Reason.STARTTLS_NOT_OFFERED


async def test_a_server_that_does_not_advertise_xoauth2(devenv, tmp_path):
    listener = ListenerConfig(name="nooauth", port=free_port(), tls="starttls", mechanisms=("PLAIN", "LOGIN"))
    config = await _variant_server(devenv, tmp_path, listener)
    async with serving(config) as running:
        result = await probe_smtp(_target(devenv, running.ports["nooauth"]),
                                  SmtpCredentials(AuthType.XOAUTH2, MAILBOX, await _token(devenv)),
                                  client_context(devenv.ca_file))
    assert result.failure is not None
    assert result.failure.reason is Reason.XOAUTH2_NOT_OFFERED
    assert "PLAIN" in result.failure.message


def _heard(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The commands an in-process server has read, in order (aiosmtpd logs each, AUTH's argument masked)."""
    return [record.args[1].split()[0].decode().upper() for record in caplog.records
            if record.name == "mail.log" and record.msg == "%r >> %r"
            and isinstance(record.args, tuple) and isinstance(record.args[1], bytes) and record.args[1]]


async def test_the_prober_asks_the_issuer_after_starttls_and_the_server_accepts_that_token(devenv, tmp_path,
                                                                                         caplog):
    caplog.set_level(logging.INFO, logger="mail.log")
    config = await _variant_server(devenv, tmp_path, ListenerConfig(name="starttls", port=free_port()))
    spec = MailConfigSpec.parse({
        "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"}, "realm": "acme",
        "smtp": {"host": "localhost", "port": config.listeners[0].port, "security": "StartTLS"},
        "sender": {"from": MAILBOX},
        "auth": {"type": "XOAUTH2", "username": MAILBOX,
                 "xoauth2": {"tokenURL": devenv.issuer_token_url, "scope": devenv.issuer_scope,
                             "clientSecretRef": {"name": "smtp-oauth"}}},
    })
    credentials = Credentials(secret_version="uid/1", client_id=devenv.issuer_client_id,
                              client_secret=devenv.issuer_client_secret)
    at_request: list[list[str]] = []

    async def note(request: httpx.Request) -> None:
        at_request.append(_heard(caplog))

    async with serving(config), httpx.AsyncClient(verify=client_context(devenv.ca_file), timeout=15,
                                                  event_hooks={"request": [note]}) as http:
        outcome = await Prober(TokenClient(http), client_context(devenv.ca_file), 1).probe(spec, credentials, "ns/mc")

    assert (outcome.token, outcome.smtp) == (True, True)
    assert outcome.token_expires_at is not None
    assert at_request == [["EHLO", "STARTTLS", "EHLO"]]
    assert _heard(caplog) == ["EHLO", "STARTTLS", "EHLO", "AUTH", "QUIT"]
