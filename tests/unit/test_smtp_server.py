"""The test SMTP server, run in-process on loopback against a JWKS served over HTTPS by the dev CA.

Nothing is faked on the server's side: tokens are real RS256 JWTs, the JWKS travels over TLS verified
against the CA, and clients are aiosmtplib and the standard library's smtplib.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import http.server
import json
import logging
import smtplib
import ssl
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from kcmail.devenv.certs import LOOPBACK_NAMES, CertificateAuthority, KeyPair
from kcmail.devenv.mail_spool import AuthIdentity, read_spool, wait_for_message
from kcmail.devenv.processes import ProcessRegistry, free_port, port_open, wait_until
from kcmail.devenv.smtp_server import (
    ConfigError,
    ListenerConfig,
    RunningSmtpServer,
    SmtpServerConfig,
    serving,
)

pytestmark = pytest.mark.unit

HOST = "127.0.0.1"
TIMEOUT = 5.0
ISSUER = "https://localhost:8443/realms/issuer"
JWKS_PATH = "/realms/issuer/protocol/openid-connect/certs"
CLIENT, MAILBOX = "smtp-app", "no-reply@acme.example"
OTHER_CLIENT, OTHER_MAILBOX = "other-app", "other@acme.example"
BASIC_USER, BASIC_PASSWORD = "basic-user", "correct horse battery"
RECIPIENT = "admin@acme.example"
SHARED_SECRET = b"a symmetric key nobody should trust"


@dataclasses.dataclass(frozen=True)
class Signer:
    """An issuer signing key: publishes its JWK and mints access tokens like Keycloak's."""

    key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def generate(cls, kid: str) -> Signer:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid)

    def jwk(self, **fields: str) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": "RS256", "use": "sig", **fields}

    def token(self, **claims: Any) -> str:
        """A token for CLIENT; a claim given as None is left out."""
        now = int(time.time())
        payload = {"iss": ISSUER, "azp": CLIENT, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()),
                   "typ": "Bearer", **claims}
        return jwt.encode({k: v for k, v in payload.items() if v is not None}, self.key, algorithm="RS256",
                          headers={"kid": self.kid})


class JwksServer:
    """The issuer's JWKS over HTTPS on loopback; ``document`` may change between the counted requests."""

    def __init__(self, pair: KeyPair) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                if self.path != JWKS_PATH:
                    self.send_error(404)
                    return
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pair.cert, pair.key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"https://{HOST}:{self._httpd.server_address[1]}{JWKS_PATH}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_pair(ca: CertificateAuthority) -> KeyPair:
    return ca.issue("smtp", "localhost", names=LOOPBACK_NAMES)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("k1")


@pytest.fixture(scope="module")
def forger() -> Signer:
    """Another key that claims the issuer's kid."""
    return Signer.generate("k1")


@pytest.fixture
def jwks(ca: CertificateAuthority, signer: Signer) -> Iterator[JwksServer]:
    server = JwksServer(ca.issue("jwks", "localhost", names=LOOPBACK_NAMES))
    without_alg = {k: v for k, v in signer.jwk(kid="enc-2", use="enc").items() if k != "alg"}
    server.document = {"keys": [
        signer.jwk(),
        # Keycloak publishes an encryption key next to the signing key.
        signer.jwk(kid="enc-1", alg="RSA-OAEP", use="enc"),
        # Keys that must never verify a token: one for encryption only, one anyone could sign with.
        without_alg,
        {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(SHARED_SECRET).rstrip(b"=").decode()},
    ]}
    yield server
    server.close()


def make_config(tmp_path: Path, ca_file: Path, pair: KeyPair, jwks_url: str,
                **overrides: Any) -> SmtpServerConfig:
    config = SmtpServerConfig(
        listeners=(ListenerConfig("starttls", 0),
                   ListenerConfig("implicit", 0, tls="implicit"),
                   ListenerConfig("plain", 0, tls="none"),
                   ListenerConfig("no-xoauth2", 0, mechanisms=("PLAIN", "LOGIN"))),
        cert_file=pair.cert, key_file=pair.key, ca_file=ca_file, jwks_url=jwks_url, issuer=ISSUER,
        spool_dir=tmp_path / "spool",
        clients={CLIENT: (MAILBOX,), OTHER_CLIENT: (OTHER_MAILBOX,)},
        basic_users={BASIC_USER: BASIC_PASSWORD},
        refused_domains=("refused.test",),
    )
    return dataclasses.replace(config, **overrides)


def offline_config(tmp_path: Path, **overrides: Any) -> SmtpServerConfig:
    """A configuration that is only built, never served."""
    return make_config(tmp_path, tmp_path / "ca.crt", KeyPair(tmp_path / "smtp.crt", tmp_path / "smtp.key"),
                       f"https://{HOST}:8443{JWKS_PATH}", **overrides)


@pytest.fixture
async def smtp(tmp_path: Path, ca: CertificateAuthority, server_pair: KeyPair,
               jwks: JwksServer) -> AsyncIterator[RunningSmtpServer]:
    async with serving(make_config(tmp_path, ca.cert_path, server_pair, jwks.url)) as running:
        yield running


def client_tls(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_path))


@contextlib.asynccontextmanager
async def connected(running: RunningSmtpServer, ca: CertificateAuthority, listener: str = "starttls", *,
                    starttls: bool = True) -> AsyncIterator[aiosmtplib.SMTP]:
    """An aiosmtplib client on ``listener``, through STARTTLS there unless ``starttls`` is False."""
    tls = next(item.tls for item in running.config.listeners if item.name == listener)
    client = aiosmtplib.SMTP(hostname=HOST, port=running.ports[listener], use_tls=tls == "implicit",
                             start_tls=tls == "starttls" and starttls, tls_context=client_tls(ca),
                             timeout=TIMEOUT)
    async with client:
        # As every real client does; aiosmtplib's auth_* methods do not send EHLO themselves.
        await client.ehlo()
        yield client


def mail(subject: str, to: str = RECIPIENT, body: str = "Hello from the test.\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = MAILBOX
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def xoauth2_response(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def send_with_smtplib(port: int, ca: CertificateAuthority, *, implicit: bool, token: str,
                      message: EmailMessage, initial_response: bool = True) -> None:
    context = client_tls(ca)
    client = (smtplib.SMTP_SSL(HOST, port, context=context, timeout=TIMEOUT) if implicit
              else smtplib.SMTP(HOST, port, timeout=TIMEOUT))
    with client:
        if not implicit:
            client.starttls(context=context)
        # smtplib's auth() does not send EHLO itself, and the server knows nothing of a session before it.
        client.ehlo()
        client.auth("XOAUTH2", lambda challenge=None: xoauth2_response(MAILBOX, token),
                    initial_response_ok=initial_response)
        client.send_message(message)


async def test_valid_token_over_starttls_is_accepted_and_recorded_with_its_identity(smtp, ca, signer):
    token = signer.token(jti="token-id-1")
    async with connected(smtp, ca) as client:
        response = await client.auth_xoauth2(MAILBOX, token)
        await client.send_message(mail("Welcome"))

    assert (response.code, response.message) == (235, "2.7.0 Authentication successful")
    (recorded,) = read_spool(smtp.config.spool_dir)
    assert recorded.auth == AuthIdentity(mechanism="XOAUTH2", user=MAILBOX, client_id=CLIENT,
                                         token_id="token-id-1")
    assert (recorded.listener, recorded.tls, recorded.mail_from, recorded.rcpt_tos, recorded.subject) == (
        "starttls", True, MAILBOX, (RECIPIENT,), "Welcome")
    assert recorded.peer.startswith(f"{HOST}:")
    assert "Hello from the test." in recorded.data


@pytest.mark.parametrize(("listener", "implicit", "initial_response"), [
    ("starttls", False, True),
    ("implicit", True, True),
    ("starttls", False, False),
], ids=["starttls", "implicit-tls", "starttls-challenged"])
async def test_smtplib_authenticates_with_xoauth2(smtp, ca, signer, listener, implicit, initial_response):
    await asyncio.wait_for(asyncio.to_thread(
        send_with_smtplib, smtp.ports[listener], ca, implicit=implicit, token=signer.token(),
        message=mail(f"via smtplib {listener}"), initial_response=initial_response), 3 * TIMEOUT)

    (recorded,) = read_spool(smtp.config.spool_dir)
    assert (recorded.listener, recorded.tls, recorded.subject) == (listener, True, f"via smtplib {listener}")
    assert recorded.auth is not None
    assert (recorded.auth.mechanism, recorded.auth.client_id) == ("XOAUTH2", CLIENT)


def _expired(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, signer.token(exp=int(time.time()) - 60)


def _forged(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, forger.token()


def _unknown_kid(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, dataclasses.replace(forger, kid="k9").token()


def _wrong_issuer(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, signer.token(iss="https://localhost:8443/realms/elsewhere")


def _unknown_client(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, signer.token(azp="stranger-app")


def _mailbox_of_another_client(signer: Signer, forger: Signer) -> tuple[str, str]:
    return OTHER_MAILBOX, signer.token()


def _without_azp(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, signer.token(azp=None)


def _not_yet_valid(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, signer.token(nbf=int(time.time()) + 600)


def _unsigned(signer: Signer, forger: Signer) -> tuple[str, str]:
    claims = {"iss": ISSUER, "azp": CLIENT, "exp": int(time.time()) + 300}
    return MAILBOX, jwt.encode(claims, None, algorithm="none", headers={"kid": signer.kid})


def _encryption_key(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, dataclasses.replace(signer, kid="enc-2").token()


def _symmetric_key(signer: Signer, forger: Signer) -> tuple[str, str]:
    claims = {"iss": ISSUER, "azp": CLIENT, "exp": int(time.time()) + 300}
    return MAILBOX, jwt.encode(claims, SHARED_SECRET, algorithm="HS256", headers={"kid": "shared"})


def _not_a_jwt(signer: Signer, forger: Signer) -> tuple[str, str]:
    return MAILBOX, "not-a-jwt"


@pytest.mark.parametrize(("credentials", "reason"), [
    (_expired, "token expired"),
    (_forged, "signature invalid"),
    (_unknown_kid, "signing key unknown"),
    (_wrong_issuer, "issuer mismatch"),
    (_unknown_client, "client not allowed"),
    (_mailbox_of_another_client, "mailbox not allowed for client"),
    (_without_azp, "required claim missing"),
    (_not_yet_valid, "token not yet valid"),
    (_unsigned, "algorithm not allowed"),
    (_encryption_key, "signing key unknown"),
    (_symmetric_key, "signing key unknown"),
    (_not_a_jwt, "token malformed"),
], ids=lambda value: getattr(value, "__name__", "").strip("_") or None)
async def test_bad_token_is_refused_with_535_and_its_reason(
        smtp, ca, signer, forger, credentials: Callable[[Signer, Signer], tuple[str, str]], reason):
    user, token = credentials(signer, forger)
    async with connected(smtp, ca) as client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await client.auth_xoauth2(user, token)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as unauthenticated:
            await client.send_message(mail("must not arrive"))

    assert (refused.value.code, refused.value.message) == (
        535, f"5.7.8 Authentication credentials invalid ({reason})")
    assert unauthenticated.value.code == 530
    assert read_spool(smtp.config.spool_dir) == []


@pytest.mark.parametrize(("argument", "reply"), [
    (base64.b64encode(b"user=no-reply@acme.example\x01auth=Basic abc\x01\x01"),
     (535, "5.7.8 Authentication credentials invalid (malformed initial response)")),
    (b"not-base64!", (501, "5.5.2 Can't decode base64")),
], ids=["not-bearer", "not-base64"])
async def test_malformed_xoauth2_response_is_refused(smtp, ca, argument, reply):
    async with connected(smtp, ca) as client:
        response = await client.execute_command(b"AUTH", b"XOAUTH2", argument)

    assert (response.code, response.message) == reply


async def test_mailbox_matches_whatever_its_case(tmp_path, ca, server_pair, jwks, signer):
    config = make_config(tmp_path, ca.cert_path, server_pair, jwks.url,
                         clients={CLIENT: ("No-Reply@Acme.Example",)})
    async with serving(config) as running, connected(running, ca) as client:
        response = await client.auth_xoauth2("no-reply@ACME.example", signer.token())

    assert response.code == 235


async def test_stopping_the_server_drops_open_sessions(tmp_path, ca, server_pair, jwks):
    async with serving(make_config(tmp_path, ca.cert_path, server_pair, jwks.url)) as running:
        client = aiosmtplib.SMTP(hostname=HOST, port=running.ports["starttls"], tls_context=client_tls(ca),
                                 timeout=TIMEOUT)
        await client.connect()
        await client.ehlo()
    try:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()
    finally:
        client.close()


@pytest.mark.parametrize("size", [6 * 1024, 16 * 1024], ids=["6KiB", "16KiB"])
async def test_real_size_token_is_accepted(smtp, ca, signer, size):
    # Base64url grows the padding claim by a third; the rest of the token is a few hundred bytes.
    bare = len(signer.token(pad=""))
    token = signer.token(pad="x" * ((size - bare) * 3 // 4))
    assert size - 8 <= len(token) <= size

    async with connected(smtp, ca) as client:
        await client.auth_xoauth2(MAILBOX, token)
        await client.send_message(mail("big token"))

    assert [m.subject for m in read_spool(smtp.config.spool_dir)] == ["big token"]


@pytest.mark.parametrize("mechanism", ["plain", "login"])
async def test_basic_user_authenticates_with_the_right_password(smtp, ca, mechanism):
    async with connected(smtp, ca) as client:
        response = await getattr(client, f"auth_{mechanism}")(BASIC_USER, BASIC_PASSWORD)
        await client.send_message(mail("basic"))

    assert response.code == 235
    (recorded,) = read_spool(smtp.config.spool_dir)
    assert recorded.auth == AuthIdentity(mechanism=mechanism.upper(), user=BASIC_USER)


@pytest.mark.parametrize("mechanism", ["plain", "login"])
@pytest.mark.parametrize(("user", "password", "reason"), [
    (BASIC_USER, "wrong", "password invalid"),
    ("nobody", BASIC_PASSWORD, "unknown user"),
])
async def test_basic_user_is_refused_with_bad_credentials(smtp, ca, mechanism, user, password, reason):
    async with connected(smtp, ca) as client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await getattr(client, f"auth_{mechanism}")(user, password)

    assert (refused.value.code, refused.value.message) == (
        535, f"5.7.8 Authentication credentials invalid ({reason})")


async def test_recipient_in_refused_domain_gets_550(smtp, ca, signer):
    async with connected(smtp, ca) as client:
        await client.auth_xoauth2(MAILBOX, signer.token())
        refused = await client.sendmail(MAILBOX, [RECIPIENT, "someone@Refused.Test"],
                                        mail("partly refused").as_bytes())

    assert refused[0] == {"someone@Refused.Test": aiosmtplib.SMTPResponse(550, "5.1.1 Recipient rejected")}
    (recorded,) = read_spool(smtp.config.spool_dir)
    assert recorded.rcpt_tos == (RECIPIENT,)


async def test_auth_is_offered_only_after_starttls(smtp, ca, signer):
    async with connected(smtp, ca, starttls=False) as client:
        before = (client.supports_extension("starttls"), client.supports_extension("auth"))
        premature = await client.execute_command(
            b"AUTH", b"XOAUTH2", base64.b64encode(xoauth2_response(MAILBOX, signer.token()).encode()))
        await client.starttls()
        await client.ehlo()
        after = (client.supports_extension("starttls"), sorted(client.server_auth_methods))

    assert before == (True, False)
    assert premature.code == 538
    assert after == (False, ["login", "plain", "xoauth2"])


async def test_implicit_tls_listener_offers_auth_without_starttls(smtp, ca):
    async with connected(smtp, ca, "implicit") as client:

        assert not client.supports_extension("starttls")
        assert sorted(client.server_auth_methods) == ["login", "plain", "xoauth2"]


async def test_listener_without_tls_offers_neither_starttls_nor_auth(smtp, ca):
    async with connected(smtp, ca, "plain") as client:
        offered = (client.supports_extension("starttls"), client.supports_extension("auth"))
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as unauthenticated:
            await client.send_message(mail("must not arrive"))

    assert offered == (False, False)
    assert unauthenticated.value.code == 530


async def test_listener_without_xoauth2_advertises_only_plain_and_login(smtp, ca, signer):
    async with connected(smtp, ca, "no-xoauth2") as client:
        advertised = sorted(client.server_auth_methods)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await client.auth_xoauth2(MAILBOX, signer.token())

    assert advertised == ["login", "plain"]
    assert refused.value.code == 504


async def test_unauthenticated_plaintext_mail_is_recorded_when_auth_is_not_required(
        tmp_path, ca, server_pair, jwks):
    config = make_config(tmp_path, ca.cert_path, server_pair, jwks.url, require_auth=False)
    async with serving(config) as running, connected(running, ca, "plain") as client:
        await client.send_message(mail("open relay"))

    (recorded,) = read_spool(config.spool_dir)
    assert (recorded.tls, recorded.auth, recorded.subject) == (False, None, "open relay")


async def test_message_line_longer_than_rfc_5321_allows_is_refused(smtp, ca, signer):
    async with connected(smtp, ca) as client:
        await client.auth_xoauth2(MAILBOX, signer.token())
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.sendmail(MAILBOX, [RECIPIENT], b"Subject: long\r\n\r\n" + b"x" * 2000 + b"\r\n")

    assert refused.value.code == 500
    assert read_spool(smtp.config.spool_dir) == []


async def test_signing_keys_are_fetched_once_and_again_for_a_new_kid(smtp, ca, signer, jwks):
    async def authenticate(token: str) -> int:
        async with connected(smtp, ca) as client:
            try:
                return (await client.auth_xoauth2(MAILBOX, token)).code
            except aiosmtplib.SMTPAuthenticationError as error:
                return error.code

    first = [await authenticate(signer.token()) for _ in range(2)]
    fetched_for_first_key = jwks.requests
    rotated = Signer.generate("k2")
    jwks.document = {"keys": [*jwks.document["keys"], rotated.jwk()]}
    after_rotation = await authenticate(rotated.token())
    fetched_after_rotation = jwks.requests
    unknown = await authenticate(dataclasses.replace(rotated, kid="k3").token())

    assert first == [235, 235]
    assert fetched_for_first_key == 1
    assert (after_rotation, fetched_after_rotation) == (235, 2)
    assert (unknown, jwks.requests) == (535, 3)


async def test_jwks_behind_an_untrusted_certificate_fails_temporarily(tmp_path, ca, server_pair, jwks,
                                                                      signer):
    stranger = CertificateAuthority(tmp_path / "other-ca", common_name="some other CA")
    config = make_config(tmp_path, stranger.cert_path, server_pair, jwks.url)
    async with serving(config) as running, connected(running, ca) as client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await client.auth_xoauth2(MAILBOX, signer.token())

    assert (refused.value.code, refused.value.message) == (
        454, "4.7.0 Temporary authentication failure (signing keys unavailable)")


async def test_secrets_never_reach_the_log(smtp, ca, signer, forger, caplog):
    caplog.set_level(logging.DEBUG)
    token, forged = signer.token(), forger.token()
    async with connected(smtp, ca) as client:
        await client.auth_xoauth2(MAILBOX, token)
        await client.send_message(mail("logged"))
    async with connected(smtp, ca) as client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.auth_xoauth2(MAILBOX, forged)
    async with connected(smtp, ca) as client:
        await client.auth_plain(BASIC_USER, BASIC_PASSWORD)
    async with connected(smtp, ca, "no-xoauth2") as client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.auth_login(BASIC_USER, BASIC_PASSWORD + "-wrong")

    log = caplog.text
    assert "auth ok mechanism=XOAUTH2" in log
    assert 'auth rejected mechanism=XOAUTH2 user=no-reply@acme.example reason="signature invalid"' in log
    assert "auth rejected mechanism=LOGIN" in log
    secrets = [token, forged, *token.split("."), forged.split(".")[2], BASIC_PASSWORD,
               base64.b64encode(xoauth2_response(MAILBOX, token).encode()).decode()[:64],
               base64.b64encode(BASIC_PASSWORD.encode()).decode()]
    assert [secret for secret in secrets if secret in log] == []


@pytest.mark.parametrize("change", [
    {"listeners": ()},
    {"listeners": (ListenerConfig("same", 0), ListenerConfig("same", 0, tls="implicit"))},
])
def test_contradictory_config_is_refused(tmp_path, change):
    with pytest.raises(ConfigError):
        offline_config(tmp_path, **change)


@pytest.mark.parametrize("listener", [
    {"name": "a", "port": 0, "tls": "ssl"},
    {"name": "a", "port": 0, "mechanisms": ["CRAM-MD5"]},
    {"name": "a", "port": 0, "mechanisms": []},
    {"name": "a", "port": 0, "starttls": True},
])
def test_bad_listener_in_json_is_refused(tmp_path, listener):
    raw = json.loads(offline_config(tmp_path).to_json())
    with pytest.raises(ConfigError):
        SmtpServerConfig.from_json(json.dumps({**raw, "listeners": [listener]}))


def test_config_survives_the_trip_through_json(tmp_path):
    config = offline_config(tmp_path, require_auth=False, hostname="mail.test")

    assert SmtpServerConfig.from_json(config.to_json()) == config


def test_wait_for_message_gives_up_after_its_timeout(tmp_path):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="nothing"):
        wait_for_message(tmp_path, lambda message: True, timeout=0.3, interval=0.05)

    assert time.monotonic() - started < 2


def test_server_process_records_mail_and_stops_cleanly_on_sigterm(tmp_path, ca, server_pair, jwks, signer):
    config = make_config(tmp_path, ca.cert_path, server_pair, jwks.url,
                         listeners=(ListenerConfig("starttls", free_port()),
                                    ListenerConfig("implicit", free_port(), tls="implicit")))
    config_path = tmp_path / "smtp.json"
    config_path.write_text(config.to_json())
    registry = ProcessRegistry(tmp_path)
    server = registry.start("smtp", [sys.executable, "-m", "kcmail.devenv.smtp_server",
                                     "--config", str(config_path)])
    token = signer.token()
    try:
        for listener in config.listeners:
            wait_until(lambda port=listener.port: port_open(port), server=server,
                       what=f"port {listener.port}", timeout=20, interval=0.1)
        send_with_smtplib(config.listeners[0].port, ca, implicit=False, token=token,
                          message=mail("via the process"))
        recorded = wait_for_message(config.spool_dir, lambda m: m.subject == "via the process", timeout=10)
    finally:
        registry.stop_all(timeout=10)

    assert recorded.auth is not None
    assert recorded.auth.client_id == CLIENT
    log = server.log.read_text()
    assert "auth ok mechanism=XOAUTH2" in log
    assert log.splitlines()[-1].endswith("stopped")
    assert token not in log
    assert token.split(".")[2] not in log
