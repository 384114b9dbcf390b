"""What the SMTP probe says when the conversation goes wrong in ways a real server shows only now and then.

The server is kcmail.devenv.hostile's scripted SMTP server on a loopback socket: it closes the connection
or stops answering at a chosen command, answers AUTH with a temporary failure, a policy refusal or an
XOAUTH2 error challenge. The token endpoint is httpx's MockTransport, counting grants. Plain SMTP (security
None) keeps TLS out of the way; the TLS failures are proven against the real servers in the integration
tests.
"""

from __future__ import annotations

import base64
import json
import ssl

import httpx
import pytest

from kcmail.conditions import Failure, Reason
from kcmail.devenv.hostile import CLOSE, SILENT, scripted_smtp
from kcmail.oauth import TokenClient
from kcmail.probes import ProbeOutcome, Prober
from kcmail.smtp_probe import (
    SmtpCredentials,
    SmtpProbeResult,
    SmtpTarget,
    auth_refusal,
    fresh_token_may_help,
    probe_smtp,
    xoauth2_challenge,
)
from kcmail.spec import AuthType, Credentials, MailConfigSpec, Security

pytestmark = pytest.mark.unit

MAILBOX = "no-reply@acme.example"
EHLO_XOAUTH2 = "250-scripted.kcmail.test\r\n250-8BITMIME\r\n250 AUTH XOAUTH2 PLAIN"
EHLO_STARTTLS = "250-scripted.kcmail.test\r\n250-STARTTLS\r\n250 AUTH XOAUTH2"
TOKEN = "opaque-bearer-token-0123456789"
GOOGLE_CHALLENGE = base64.b64encode(json.dumps(
    {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}).encode()).decode()


def _target(port: int, security: Security, reply_seconds: float) -> SmtpTarget:
    return SmtpTarget(host="127.0.0.1", port=port, security=security, connect_timeout=5, timeout=reply_seconds)


async def _probe(port: int, security: Security = Security.NONE, token: str = TOKEN,
                 reply_seconds: float = 5) -> SmtpProbeResult:
    return await probe_smtp(_target(port, security, reply_seconds),
                            SmtpCredentials(AuthType.XOAUTH2, MAILBOX, token), ssl.create_default_context())


def _auth_lines(received: list[tuple[str, int]]) -> int:
    """AUTH commands the server read (the empty answer to a 334 belongs to the command before it)."""
    return sum(1 for verb, length in received if verb == "AUTH" and length > 2)


@pytest.mark.parametrize(("script", "security", "said"), [
    ({"EHLO": (EHLO_XOAUTH2,), "AUTH": (CLOSE,)}, Security.NONE,
     "closed the connection during AUTH (connecting, EHLO worked)"),
    ({"EHLO": (EHLO_STARTTLS,), "STARTTLS": (CLOSE,)}, Security.STARTTLS,
     "closed the connection during STARTTLS (connecting, EHLO worked)"),
    ({"EHLO": (EHLO_STARTTLS,), "STARTTLS": ("454 4.7.0 TLS not available due to local problem",)},
     Security.STARTTLS, "refused STARTTLS: 454 4.7.0 TLS not available due to local problem"),
    ({"EHLO": (CLOSE,)}, Security.NONE, "closed the connection during EHLO (connecting worked)"),
])
async def test_a_conversation_that_breaks_off_names_the_step_and_does_not_claim_unreachable(script, security, said):
    with scripted_smtp(script) as (port, _):
        result = await _probe(port, security)
    assert result.failure is not None
    assert result.failure.reason is Reason.SMTP_CONVERSATION_FAILED
    assert said in result.failure.message
    assert result.steps[-1].ok is False
    assert result.steps[-1].detail == result.failure.message


async def test_a_server_that_stops_answering_is_a_timeout_at_that_step():
    with scripted_smtp({"EHLO": (SILENT,)}) as (port, _):
        result = await _probe(port, reply_seconds=1)
    assert result.failure is not None
    assert result.failure.reason is Reason.SMTP_CONVERSATION_FAILED
    assert "did not answer within 1 s during EHLO (connecting worked)" in result.failure.message


async def test_a_temporary_auth_reply_is_deferred_and_no_fresh_token_is_tried():
    with scripted_smtp({"EHLO": (EHLO_XOAUTH2,), "AUTH": ("454 4.7.0 Temporary authentication failure",)}) as (
            port, _):
        result = await _probe(port)
    assert result.failure is not None
    assert result.failure.reason is Reason.AUTHENTICATION_DEFERRED
    assert "454 4.7.0 Temporary authentication failure" in result.failure.message
    assert result.token_refused is False


async def test_the_xoauth2_error_challenge_is_decoded_into_the_message():
    script = {"EHLO": (EHLO_XOAUTH2,), "AUTH": (f"334 {GOOGLE_CHALLENGE}", "535 5.7.8 Username and Password not "
                                                                              "accepted")}
    with scripted_smtp(script) as (port, received):
        result = await _probe(port)
    assert result.failure is not None
    assert result.failure.reason is Reason.AUTHENTICATION_REJECTED
    assert "535 5.7.8 Username and Password not accepted" in result.failure.message
    assert "status 401, schemes bearer, scope https://mail.google.com/" in result.failure.message
    assert result.token_refused is True
    # The client answered the challenge with the empty line that asks for the verdict.
    assert [verb for verb, _ in received] == ["EHLO", "AUTH", "AUTH", "QUIT"]


async def test_an_overlong_auth_line_refused_as_bad_base64_gets_the_line_length_hint():
    token = "x" * 3000  # a token the size Entra ID issues
    postfix = "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response"
    with scripted_smtp({"EHLO": (EHLO_XOAUTH2,), "AUTH": (postfix,)}) as (port, received):
        result = await _probe(port, token=token)
    assert result.failure is not None
    sent = next(length for verb, length in received if verb == "AUTH")
    assert f"the AUTH line was {sent} bytes" in result.failure.message
    assert "line_length_limit" in result.failure.message
    assert token not in result.failure.message


@pytest.mark.parametrize(("ehlo", "reason", "said", "unsaid"), [
    # Something that is no SMTP server: described, never quoted.
    ("HTTP/1.1 400 Bad Request: internal-build-server", Reason.SMTP_UNREACHABLE, "not an SMTP reply",
     "internal-build-server"),
    # No AUTH at all: Keycloak sends unauthenticated there, and the message says so.
    ("250-scripted.kcmail.test\r\n250 8BITMIME", Reason.AUTH_NOT_OFFERED, "Keycloak will send without logging in",
     "XOAUTH2NotOffered"),
])
async def test_what_answers_ehlo_decides_the_reason(ehlo, reason, said, unsaid):
    with scripted_smtp({"EHLO": (ehlo,)}) as (port, _):
        result = await _probe(port)
    assert result.failure is not None
    assert result.failure.reason is reason
    assert said in result.failure.message
    assert unsaid not in result.failure.message


def _spec(port: int) -> MailConfigSpec:
    return MailConfigSpec.parse({
        "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"},
        "realm": "acme",
        "smtp": {"host": "127.0.0.1", "port": port, "security": "None",
                 "timeouts": {"connect": "5s", "read": "5s", "write": "5s"}},
        "sender": {"from": MAILBOX},
        "auth": {"type": "XOAUTH2", "username": MAILBOX,
                 "xoauth2": {"tokenURL": "https://login.example/token", "scope": "smtp.send",
                             "clientSecretRef": {"name": "smtp-oauth"}}},
    })


async def _prober_probe(port: int) -> tuple[ProbeOutcome, int]:
    grants = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        grants.append(request)
        return httpx.Response(200, json={"access_token": f"{TOKEN}-{len(grants)}", "expires_in": 300})

    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as http:
        prober = Prober(TokenClient(http), ssl.create_default_context(), concurrency=1)
        outcome = await prober.probe(_spec(port), Credentials(secret_version="uid/1", client_id="app",
                                                              client_secret="client-secret"), "ns/mail")
    return outcome, len(grants)


@pytest.mark.parametrize(("replies", "auth_tries", "grants"), [
    # The token itself refused: once more with a fresh one, as Keycloak does.
    (("535 5.7.3 Authentication unsuccessful", "535 5.7.3 Authentication unsuccessful"), 2, 2),
    ((f"334 {GOOGLE_CHALLENGE}", "535 5.7.8 not accepted", f"334 {GOOGLE_CHALLENGE}", "535 5.7.8 not accepted"),
     2, 2),
    # No token changes these: one failed login is all the mailbox is charged.
    (("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",), 1, 1),
    (("550 5.7.30 Basic authentication is not supported for Client Submission.",), 1, 1),
    (("454 4.7.0 Temporary authentication failure",), 1, 1),
])
async def test_a_refusal_is_retried_with_a_fresh_token_only_where_one_can_help(replies, auth_tries, grants):
    # Each retry is a new connection: the script is per connection, so the replies repeat per connection.
    per_connection = replies[:len(replies) // auth_tries]
    with scripted_smtp({"EHLO": (EHLO_XOAUTH2,), "AUTH": per_connection}) as (port, received):
        outcome, granted = await _prober_probe(port)
    assert isinstance(outcome.smtp, Failure)
    assert (_auth_lines(received), granted) == (auth_tries, grants)


def test_the_challenge_is_read_only_as_far_as_its_three_fields_and_redacted():
    secret = "client-secret-value-1234"
    encoded = base64.b64encode(json.dumps({"status": "400", "scope": f"x {secret}", "html": "<b>"}).encode()).decode()
    assert xoauth2_challenge(encoded, (secret,)) == {"status": "400", "scope": "x [redacted]"}
    assert xoauth2_challenge("not base64 at all") == {}
    assert xoauth2_challenge(base64.b64encode(b"[1, 2]").decode()) == {}


@pytest.mark.parametrize(("code", "message", "challenge", "helps"), [
    (535, "5.7.8 Authentication credentials invalid", None, True),
    (535, "5.7.3 Authentication unsuccessful", None, True),
    (535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled", None, False),
    (550, "5.7.30 Basic authentication is not supported", None, False),
    (454, "4.7.0 Temporary authentication failure", None, False),
    (535, "5.7.8 not accepted", {"status": "401"}, True),
    (535, "5.7.8 not accepted", {"status": "400"}, False),
    (535, "5.7.8 not accepted", {}, True),
])
def test_fresh_token_may_help(code, message, challenge, helps):
    assert fresh_token_may_help(code, message, challenge) is helps


def test_exchanges_mailbox_logon_failure_is_a_refusal_though_its_code_is_temporary():
    reply = "430 4.2.0 STOREDRV; mailbox logon failure; Cannot open mailbox"
    assert auth_refusal("XOAUTH2", MAILBOX, 430, reply, None, 3000).reason is Reason.AUTHENTICATION_REJECTED
    assert auth_refusal("XOAUTH2", MAILBOX, 454, "454 4.7.0 Temporary authentication failure", None,
                        3000).reason is Reason.AUTHENTICATION_DEFERRED


def test_the_line_length_hint_needs_both_a_long_line_and_a_reply_about_it():
    reply = "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response"
    assert "line_length_limit" in auth_refusal("XOAUTH2", MAILBOX, 535, reply, None, 4600).message
    assert "line_length_limit" not in auth_refusal("XOAUTH2", MAILBOX, 535, reply, None, 1900).message
    for other in ("535 5.7.8 invalid", "535 5.7.8 authentication declined"):
        assert "line_length_limit" not in auth_refusal("XOAUTH2", MAILBOX, 535, other, None, 4600).message
    assert "line_length_limit" in auth_refusal("XOAUTH2", MAILBOX, 500, "500 5.5.2 Line too long", None,
                                               4600).message
