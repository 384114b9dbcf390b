"""The ground the project stands on: Keycloak's admin API, the issuer's tokens, the XOAUTH2 SMTP server,
and Keycloak itself sending a mail over XOAUTH2 with a token it fetched from the issuer.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from email.message import EmailMessage

import aiosmtplib
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kcmail.devenv import postfix_server
from kcmail.devenv.clients import issuer_token
from kcmail.devenv.environment import SENDER_MAILBOXES
from kcmail.devenv.mail_spool import read_spool, wait_for_message

pytestmark = pytest.mark.integration

MAILBOX = SENDER_MAILBOXES["smtp-app"][0]


def _token(env) -> str:
    response = issuer_token(env)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _message(subject: str, recipient: str = "someone@acme.example") -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = MAILBOX, recipient, subject
    message.set_content("hello")
    return message


async def _xoauth2(env, token: str, user: str = MAILBOX) -> tuple[int, str]:
    """AUTH XOAUTH2 after STARTTLS; the server's reply code and text."""
    client = aiosmtplib.SMTP(hostname=env.smtp_host, port=env.smtp_starttls_port, start_tls=True,
                             cert_bundle=str(env.ca_file), timeout=15)
    async with client:
        try:
            response = await client.auth_xoauth2(user, token)
        except aiosmtplib.SMTPAuthenticationError as error:
            return error.code, error.message
        return response.code, response.message


def test_admin_api_reads_and_writes_a_realm(keycloak_admin, devenv):
    realm = devenv.realms[1]
    before = keycloak_admin.realm(realm)
    marker = f"smoke {uuid.uuid4().hex[:6]}"
    response = keycloak_admin.put_realm(realm, {**before, "displayName": marker})
    assert response.status_code == 204, response.text
    assert keycloak_admin.realm(realm)["displayName"] == marker


def test_issuer_mints_a_client_credentials_token_for_the_app(devenv):
    claims = jwt.decode(_token(devenv), options={"verify_signature": False})
    assert claims["azp"] == devenv.issuer_client_id
    assert claims["iss"] == devenv.issuer
    assert devenv.issuer_scope in claims["scope"].split()


def test_issuer_refuses_a_wrong_secret_and_an_unknown_scope(devenv):
    # Keycloak says unauthorized_client for a known client with a wrong secret, invalid_client for an
    # unknown one: the probe's classification must treat both as a client problem.
    wrong = issuer_token(devenv, client_secret="not-the-secret")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "unauthorized_client"
    unknown_client = issuer_token(devenv, client_id="no-such-app")
    assert unknown_client.status_code == 401
    assert unknown_client.json()["error"] == "invalid_client"
    unknown = issuer_token(devenv, scope="no.such.scope")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "invalid_scope"


async def test_smtp_accepts_the_issuers_token_after_starttls_and_records_the_identity(devenv):
    token = _token(devenv)
    subject = f"smoke {uuid.uuid4()}"
    client = aiosmtplib.SMTP(hostname=devenv.smtp_host, port=devenv.smtp_starttls_port, start_tls=True,
                             cert_bundle=str(devenv.ca_file), timeout=15)
    async with client:
        response = await client.auth_xoauth2(MAILBOX, token)
        assert response.code == 235
        await client.send_message(_message(subject))
    (recorded,) = [m for m in read_spool(devenv.smtp_spool) if m.subject == subject]
    assert recorded.auth is not None
    assert (recorded.auth.mechanism, recorded.auth.user, recorded.auth.client_id) == (
        "XOAUTH2", MAILBOX, devenv.issuer_client_id)
    assert recorded.tls


async def test_smtp_rejects_a_token_for_another_mailbox(devenv):
    code, text = await _xoauth2(devenv, _token(devenv), user="ceo@acme.example")
    assert code == 535
    assert "mailbox not allowed" in text


async def test_smtp_rejects_a_forged_token(devenv):
    genuine = _token(devenv)
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": header["kid"]})
    code, text = await _xoauth2(devenv, forged)
    assert code == 535
    assert "signature invalid" in text


async def test_smtp_rejects_an_expired_token(devenv, keycloak_admin):
    # A real token with a one-second life, from the second client so that a failure here cannot leave
    # the main client issuing short-lived tokens to the tests after it.
    realm, client_id = devenv.issuer_realm, devenv.issuer_other_client_id
    found = keycloak_admin.request("GET", f"/{realm}/clients", params={"clientId": client_id})
    client = found.json()[0]
    original = dict(client.get("attributes", {}))
    client["attributes"] = {**original, "access.token.lifespan": "1"}
    assert keycloak_admin.request("PUT", f"/{realm}/clients/{client['id']}", json=client).status_code == 204
    try:
        response = issuer_token(devenv, client_id=client_id, client_secret=devenv.issuer_other_client_secret)
        token = response.json()["access_token"]
    finally:
        # An empty value removes the override (a PUT without the key would keep it).
        client["attributes"] = {**original, "access.token.lifespan": ""}
        assert keycloak_admin.request("PUT", f"/{realm}/clients/{client['id']}", json=client).status_code == 204
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1
    await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 1.5)
    code, text = await _xoauth2(devenv, token, user=SENDER_MAILBOXES["other-app"][0])
    assert code == 535
    assert "token expired" in text
    restored = jwt.decode(issuer_token(devenv, client_id=client_id, client_secret=devenv.issuer_other_client_secret)
                          .json()["access_token"], options={"verify_signature": False})
    assert restored["exp"] - restored["iat"] > 60


async def test_smtp_accepts_a_token_of_several_kilobytes(devenv):
    # The issuer's tokens are padded to the size of Microsoft 365's (2-3 KB), past aiosmtpd's line limits.
    token = _token(devenv)
    assert len(token) > 2500
    code, _ = await _xoauth2(devenv, token)
    assert code == 235
    code, text = await _xoauth2(devenv, "x" * 12000)
    assert code == 535, text  # read and judged, not cut off as "line too long"
    assert "malformed" in text


def _keycloak_smtp_settings(env, port: int) -> dict[str, str]:
    return {
        "host": "localhost", "port": str(port), "starttls": "true", "ssl": "false",
        "auth": "true", "from": MAILBOX, "user": MAILBOX, "authType": "token",
        "authTokenUrl": env.issuer_token_url, "authTokenScope": env.issuer_scope,
        "authTokenClientId": env.issuer_client_id, "authTokenClientSecret": env.issuer_client_secret,
    }


def _store(keycloak_admin, realm: str, settings: dict[str, str]) -> dict[str, str]:
    representation = keycloak_admin.realm(realm)
    representation["smtpServer"] = settings
    assert keycloak_admin.put_realm(realm, representation).status_code == 204
    return dict(keycloak_admin.realm(realm)["smtpServer"])


def test_keycloak_itself_sends_a_mail_over_xoauth2(keycloak_admin, devenv, mail_server):
    """Ground truth: Keycloak fetches a token from the issuer and authenticates to SMTP with it."""
    realm = devenv.realms[0]
    stored = _store(keycloak_admin, realm, _keycloak_smtp_settings(devenv, mail_server.starttls_port))
    assert stored["authTokenClientSecret"] == "**********"
    assert stored["authType"] == "token"

    since = datetime.datetime.now(datetime.UTC)
    # The stored settings, echoed back with the mask, are what Keycloak tests with (the secret it holds).
    response = keycloak_admin.request("POST", f"/{realm}/testSMTPConnection", json=stored)
    assert response.status_code == 204, response.text

    message = wait_for_message(mail_server.spool, lambda m: m.received_at >= since
                               and devenv.keycloak_admin_email in m.rcpt_tos, timeout=30)
    assert message.auth is not None
    assert (message.auth.mechanism, message.auth.user) == ("XOAUTH2", MAILBOX)
    # Postfix knows only the mailbox Dovecot logged in; Dovecot took it from the token's mailbox claim.
    assert message.auth.client_id == (devenv.issuer_client_id if mail_server.records_client else None)
    assert message.tls


def test_keycloak_cannot_log_in_where_postfix_keeps_its_default_line_length(keycloak_admin, devenv):
    """Postfix's default line_length_limit cuts Keycloak's AUTH line: Keycloak's own test mail fails."""
    realm = devenv.realms[0]
    stored = _store(keycloak_admin, realm, _keycloak_smtp_settings(devenv, devenv.postfix_short_line_port))
    log = devenv.state_dir / "logs" / "postfix.log"
    seen = log.stat().st_size
    response = keycloak_admin.request("POST", f"/{realm}/testSMTPConnection", json=stored)
    assert response.status_code == 500, response.text
    assert postfix_server.log_shows(log, "SASL XOAUTH2 authentication failed: Invalid base64 data in initial response",
                                    after=seen)
