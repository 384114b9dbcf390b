"""The XOAUTH2 probe asks for its token at the AUTH step, against the project's SMTP server on loopback.

The server is the real one (aiosmtpd, STARTTLS, the dev CA); what it heard is read from its own command
log, so the order of the conversation is the server's, not the client's, account. The token endpoint is
httpx's MockTransport: each answer notes what the SMTP server had heard when the token was asked for.
No token here is a valid JWT, so the server refuses every one it is shown (535, malformed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from kcmail.conditions import Failure, Reason
from kcmail.devenv.certs import LOOPBACK_NAMES, CertificateAuthority, client_context
from kcmail.devenv.processes import free_port
from kcmail.devenv.smtp_server import HOST, ListenerConfig, RunningSmtpServer, SmtpServerConfig, serving
from kcmail.oauth import TokenClient
from kcmail.probes import ProbeOutcome, Prober, token_request
from kcmail.smtp_probe import SmtpCredentials, SmtpTarget, probe_smtp
from kcmail.spec import AuthType, Credentials, MailConfigSpec, Security

pytestmark = pytest.mark.unit

MAILBOX = "no-reply@acme.example"
TOKEN_URL = "https://login.example/token"
TOKEN_PREFIX = "opaque-bearer-"  # what every token issued here starts with, to look for leaks
HANDSHAKE = ["EHLO", "STARTTLS", "EHLO"]

Answer = Callable[[int], httpx.Response]


def _issued(count: int) -> httpx.Response:
    return httpx.Response(200, json={"access_token": f"{TOKEN_PREFIX}{count}", "expires_in": 300})


def _refused(count: int) -> httpx.Response:
    return httpx.Response(401, json={"error": "invalid_client", "error_description": "Invalid client secret"})


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def smtp(tmp_path, ca: CertificateAuthority) -> AsyncIterator[RunningSmtpServer]:
    pair = ca.issue("smtp", "localhost", names=LOOPBACK_NAMES)
    # No token reaches the signing keys (none is a JWT), so the JWKS address may lead nowhere.
    config = SmtpServerConfig(
        listeners=(ListenerConfig("starttls", 0), ListenerConfig("no-xoauth2", 0, mechanisms=("PLAIN", "LOGIN"))),
        cert_file=pair.cert, key_file=pair.key, ca_file=ca.cert_path,
        jwks_url=f"https://{HOST}:{free_port()}/certs", issuer="https://login.example",
        spool_dir=tmp_path / "spool", clients={"app": (MAILBOX,)})
    async with serving(config) as running:
        yield running


@pytest.fixture
def heard(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The SMTP commands the server has read so far, in order (aiosmtpd logs each, AUTH's argument masked)."""
    caplog.set_level(logging.INFO, logger="mail.log")

    def commands() -> list[str]:
        return [record.args[1].split()[0].decode().upper() for record in caplog.records
                if record.name == "mail.log" and record.msg == "%r >> %r"
                and isinstance(record.args, tuple) and isinstance(record.args[1], bytes) and record.args[1]]

    return commands


def _spec(port: int) -> MailConfigSpec:
    return MailConfigSpec.parse({
        "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"},
        "realm": "acme",
        "smtp": {"host": HOST, "port": port, "security": "StartTLS",
                 "timeouts": {"connect": "5s", "read": "5s", "write": "5s"}},
        "sender": {"from": MAILBOX},
        "auth": {"type": "XOAUTH2", "username": MAILBOX,
                 "xoauth2": {"tokenURL": TOKEN_URL, "scope": "smtp.send", "clientSecretRef": {"name": "smtp-oauth"}}},
    })


CREDENTIALS = Credentials(secret_version="uid/1", client_id="app", client_secret="client-secret")


async def _probe(port: int, ca: CertificateAuthority, heard: Callable[[], list[str]], answer: Answer,
                 warm: bool = False) -> tuple[ProbeOutcome, list[list[str]]]:
    """One Prober probe; returns its outcome and, per token request, what the SMTP server had heard by then."""
    at_request: list[list[str]] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        at_request.append(heard())
        return answer(len(at_request))

    spec = _spec(port)
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as http:
        tokens = TokenClient(http)
        if warm:
            request = token_request(spec, CREDENTIALS)
            assert request is not None
            await tokens.token(request)
        prober = Prober(tokens, client_context(ca.cert_path), concurrency=1)
        outcome = await prober.probe(spec, CREDENTIALS, "ns/mail")
    return outcome, at_request


async def test_the_bearer_is_awaited_after_starttls_and_none_ends_the_conversation_before_auth(smtp, ca, heard):
    at_bearer: list[list[str]] = []

    async def bearer() -> str | None:
        at_bearer.append(heard())
        return None

    target = SmtpTarget(host=HOST, port=smtp.ports["starttls"], security=Security.STARTTLS,
                        connect_timeout=5, timeout=5)
    result = await probe_smtp(target, SmtpCredentials(AuthType.XOAUTH2, MAILBOX, bearer=bearer),
                              client_context(ca.cert_path))

    assert at_bearer == [HANDSHAKE]
    assert (result.stopped_before_auth, result.failure, result.ok) == (True, None, False)
    assert [s.name for s in result.steps] == ["connect", "ehlo", "starttls"]
    assert heard() == [*HANDSHAKE, "QUIT"]


async def test_a_token_failure_leaves_smtp_unreached_and_the_conversation_quit(smtp, ca, heard):
    outcome, at_request = await _probe(smtp.ports["starttls"], ca, heard, _refused)

    assert isinstance(outcome.token, Failure)
    assert outcome.token.reason is Reason.INVALID_CLIENT
    assert (outcome.smtp, outcome.token_expires_at) == (None, None)
    assert at_request == [HANDSHAKE]
    assert heard() == [*HANDSHAKE, "QUIT"]
    assert [(s.name, s.ok) for s in outcome.steps] == [
        ("token", False), ("connect", True), ("ehlo", True), ("starttls", True)]


@pytest.mark.parametrize(("answer", "token_reason"), [(_issued, None), (_refused, Reason.INVALID_CLIENT)],
                         ids=["token-issued", "token-refused"])
async def test_an_unreachable_smtp_server_still_reports_the_token(answer, token_reason, ca, heard):
    outcome, at_request = await _probe(free_port(), ca, heard, answer)

    assert isinstance(outcome.smtp, Failure)
    assert outcome.smtp.reason is Reason.SMTP_UNREACHABLE
    assert len(at_request) == 1
    if token_reason is None:
        assert outcome.token is True
        assert outcome.token_expires_at is not None
    else:
        assert isinstance(outcome.token, Failure)
        assert outcome.token.reason is token_reason
    assert [s.name for s in outcome.steps] == ["token", "connect"]


async def test_a_server_without_xoauth2_hears_no_token_and_the_token_is_asked_for_after_quit(smtp, ca, heard):
    outcome, at_request = await _probe(smtp.ports["no-xoauth2"], ca, heard, _issued)

    assert isinstance(outcome.smtp, Failure)
    assert outcome.smtp.reason is Reason.XOAUTH2_NOT_OFFERED
    assert outcome.token is True
    assert at_request == [[*HANDSHAKE, "QUIT"]]
    assert heard() == [*HANDSHAKE, "QUIT"]


async def test_a_cached_token_the_server_refuses_is_forgotten_and_retried_once_with_a_fresh_one(smtp, ca, heard,
                                                                                              caplog):
    outcome, at_request = await _probe(smtp.ports["starttls"], ca, heard, _issued, warm=True)

    assert isinstance(outcome.smtp, Failure)
    assert outcome.smtp.reason is Reason.AUTHENTICATION_REJECTED
    assert outcome.token is True
    conversation = [*HANDSHAKE, "AUTH", "QUIT"]
    # The first attempt presented the cached token; the second asked for a fresh one at its own AUTH step.
    assert at_request == [[], [*conversation, *HANDSHAKE]]
    assert heard() == conversation * 2
    assert [s.name for s in outcome.steps] == [
        "connect", "ehlo", "starttls", "auth", "token", "connect", "ehlo", "starttls", "auth"]
    for text in (repr(outcome), json.dumps([s.detail for s in outcome.steps]), caplog.text):
        assert TOKEN_PREFIX not in text
