"""Meet the SMTP server as Keycloak will: connect, TLS, EHLO, AUTH (XOAUTH2 in Keycloak's SASL form, or
PLAIN/LOGIN), optionally send a labelled probe message, and QUIT; every failure classified.

An XOAUTH2 bearer token can be handed over as a callable that is awaited at the AUTH step, once the
connection, TLS and EHLO are done: a token checked then still has its life when the server validates it.

Whatever the server says (greeting, EHLO keywords, certificate names, replies) is quoted only through
kcmail.redact, with the password or token of this conversation as known secrets: the server may be a
tenant's, and may echo the SASL string it was sent. An answer that is not an SMTP reply is never quoted:
the host may be any service inside the cluster, and its banner is not the tenant's to read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import enum
import json
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import aiosmtplib

from kcmail.conditions import Failure, Reason
from kcmail.redact import redact
from kcmail.spec import AuthType, Security


class Mode(enum.StrEnum):
    AUTHENTICATE = "Authenticate"
    SEND = "Send"


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: Security
    connect_timeout: float
    timeout: float


Bearer = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class SmtpCredentials:
    """``bearer``, when given, supplies the XOAUTH2 token at the AUTH step instead of ``secret``. It returns
    None when no token can be had: the caller has recorded why, and the probe stops before AUTH. It must
    not raise."""

    type: AuthType
    username: str = ""
    secret: str = field(default="", repr=False)  # the bearer token (XOAUTH2) or the password (Basic)
    bearer: Bearer | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SendSpec:
    sender: str
    recipient: str
    mailconfig: str  # namespace/name, for the probe message's headers


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class SmtpProbeResult:
    steps: list[Step] = field(default_factory=list)
    failure: Failure | None = None
    probe_id: str = ""
    # The AUTH mechanisms of the last EHLO answer (after STARTTLS when there is one), upper case: what
    # `kcmail audit --probe` checks when it has no secret to authenticate with.
    offered_auth: frozenset[str] = frozenset()
    # The bearer callable had no token: the conversation ended before AUTH, and that is no SMTP failure.
    stopped_before_auth: bool = False
    # AUTH was refused in a way a fresh token may change (:func:`fresh_token_may_help`).
    token_refused: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.stopped_before_auth


class _Stop(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# What aiosmtplib reports for an answer that is no SMTP reply (no three-digit code, an overlong line).
_NOT_A_REPLY = -1


def _reply(error: aiosmtplib.SMTPResponseException, secrets: tuple[str, ...] = ()) -> str:
    """The server's reply, redacted; an answer that is no SMTP reply is described, never quoted."""
    if error.code == _NOT_A_REPLY:
        return "an answer that is not an SMTP reply (is this an SMTP server?)"
    return redact(f"{error.code} {error.message}", secrets)


def _error_text(error: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """An exception's words for a message: a server's reply through :func:`_reply`, anything else redacted."""
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return _reply(error, secrets)
    return redact(f"{type(error).__name__}: {error}", secrets)


def _tls_failure(target: SmtpTarget, error: BaseException) -> Failure:
    where = f"{target.host}:{target.port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return Failure(Reason.CERTIFICATE_UNTRUSTED,
                       f"{where}: certificate not trusted: {redact(error.verify_message or error.reason)}")
    return Failure(Reason.TLS_HANDSHAKE_FAILED, f"{where}: TLS handshake failed: {_error_text(error)}")


def _names(rdns: object) -> str:
    """An X.509 name as ``getpeercert()`` gives it → "CN=…, O=…" (only the attributes a person reads)."""
    short = {"commonName": "CN", "organizationName": "O"}
    parts = [f"{short[key]}={redact(value, limit=80)}" for rdn in (rdns if isinstance(rdns, tuple) else ())
             for key, value in rdn if key in short]
    return ", ".join(parts) or "(no CN or O)"


def certificate_summary(peercert: Mapping[str, Any] | None) -> str:
    """The server certificate in one short phrase: subject, issuer, expiry (pure)."""
    if not peercert:
        return "certificate not available"
    expiry = "unknown expiry"
    not_after = peercert.get("notAfter")
    if isinstance(not_after, str):
        with contextlib.suppress(ValueError):
            expires = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), datetime.UTC)
            expiry = f"expires {expires:%Y-%m-%dT%H:%M:%SZ}"
    return f"certificate {_names(peercert.get('subject'))} issued by {_names(peercert.get('issuer'))}, {expiry}"


def _tls_summary(client: aiosmtplib.SMTP) -> str:
    ssl_object = client.get_transport_info("ssl_object")
    version = ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else None
    return f"{version or 'TLS'}, {certificate_summary(client.get_transport_info('peercert'))}"


def _capabilities(client: aiosmtplib.SMTP) -> str:
    extensions = " ".join(sorted(client.esmtp_extensions))
    methods = " ".join(method.upper() for method in client.server_auth_methods)
    return redact(extensions + (f" (AUTH {methods})" if methods else ""), limit=300)


def _root(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        nested = error.__cause__ or error.__context__
        assert nested is not None
        error = nested
    return error


def no_auth_offered(where: str) -> Failure:
    """A server that offers no AUTH at all. Keycloak does not fail there: Jakarta Mail logs in only when the
    server advertises AUTH, and otherwise goes on to MAIL FROM without a word, so the mail then depends on
    the server relaying for Keycloak's address unauthenticated (pure)."""
    return Failure(Reason.AUTH_NOT_OFFERED,
                   f"{where} offers no AUTH at all: Keycloak will send without logging in (it skips AUTH when "
                   "the server offers none), so mail is accepted only if this server relays for Keycloak's "
                   "address without authentication")


def _mechanism(auth: AuthType, offered: frozenset[str], where: str) -> str | Failure:
    """The AUTH mechanism Keycloak will use among those ``offered`` (upper case), or why none fits (pure)."""
    if not offered:
        return no_auth_offered(where)
    if auth is AuthType.XOAUTH2:
        if "XOAUTH2" in offered:
            return "XOAUTH2"
        return Failure(Reason.XOAUTH2_NOT_OFFERED, f"{where} does not advertise AUTH XOAUTH2 (offers: "
                                                   f"{' '.join(sorted(offered))}); Keycloak's login fails the same way")
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        return Failure(Reason.AUTHENTICATION_REJECTED, f"{where} offers neither AUTH PLAIN nor LOGIN "
                                                       f"(offers: {' '.join(sorted(offered))})")
    return mechanism


# Postfix's default line_length_limit. An XOAUTH2 initial response grows with the token (3-4 KB from Entra
# ID or Keycloak makes a ~4.6 KB line); past the limit Postfix cuts the line and reports invalid base64.
_COMMON_LINE_LIMIT = 2048
# What a reply to a cut line says (Postfix: "Invalid base64 data in initial response"; others: "line too long").
_LINE_WORDS = ("base64", "line length", "too long")
# Enhanced status codes that say SMTP AUTH itself is off, or basic authentication is: no token fixes those.
# Microsoft 365: 5.7.139 (SMTP AUTH disabled for the tenant or mailbox), 5.7.30 (basic authentication
# not supported for client submission).
_POLICY_CODES = ("5.7.139", "5.7.30")
# Exchange Online's "430 4.2.0 STOREDRV; mailbox logon failure": temporary in form, but what it reports (the
# application may not open the mailbox) lasts until someone grants the permission.
_MAILBOX_LOGON_FAILURE = "STOREDRV"


def xoauth2_challenge(encoded: str, secrets: tuple[str, ...] = ()) -> dict[str, str]:
    """The JSON error a server sends as a 334 challenge to a refused XOAUTH2 token, as short redacted
    strings: ``status``, ``schemes``, ``scope``; empty when it is not base64 of a JSON object (pure)."""
    try:
        data = json.loads(base64.b64decode(encoded.strip(), validate=True))
    except (ValueError, binascii.Error):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: redact(str(data[key]), secrets, limit=200) for key in ("status", "schemes", "scope") if key in data}


def fresh_token_may_help(code: int, message: str, challenge: Mapping[str, str] | None) -> bool:
    """Whether asking for a new token and trying AUTH again can change the answer (pure).

    Only a refusal of the token itself qualifies: a temporary reply waits for backoff, and a policy reply
    (SMTP AUTH disabled) or a challenge that names another cause than the token (status other than 401)
    would only count one more failed login against the mailbox.
    """
    if code < 500:
        return False
    if any(policy in message for policy in _POLICY_CODES):
        return False
    return challenge is None or challenge.get("status") in (None, "401")


def auth_refusal(mechanism: str, username: str, code: int, reply: str, challenge: Mapping[str, str] | None,
                 line_length: int) -> Failure:
    """A refused AUTH, as a Failure that quotes the (already redacted) ``reply`` and decodes the challenge
    (pure). A 4xx reply is temporary: AuthenticationDeferred, which is retried with backoff."""
    message = f"AUTH {mechanism} as {username} refused: {reply}"
    if challenge:
        message += "; the server's XOAUTH2 error: " + ", ".join(f"{k} {v}" for k, v in challenge.items())
    elif challenge is not None:
        message += "; the server's XOAUTH2 error challenge could not be decoded"
    lowered = reply.lower()
    if line_length > _COMMON_LINE_LIMIT and any(words in lowered for words in _LINE_WORDS):
        message += (f"; the AUTH line was {line_length} bytes, and many MTAs cut lines at {_COMMON_LINE_LIMIT} "
                    "(Postfix: line_length_limit): raise the limit, Keycloak sends the same line")
    if 400 <= code < 500 and _MAILBOX_LOGON_FAILURE not in reply:
        return Failure(Reason.AUTHENTICATION_DEFERRED, message + " (temporary: kcmail tries again with backoff)")
    return Failure(Reason.AUTHENTICATION_REJECTED, message)


_CHALLENGE = 334
_ACCEPTED = 235
_STEP_WORDS = {"connect": "connecting", "ehlo": "EHLO", "starttls": "STARTTLS", "auth": "AUTH",
               "send": "sending the probe message"}


def _xoauth2_initial(username: str, token: str) -> bytes:
    """The SASL XOAUTH2 initial response, exactly as Jakarta Mail (and so Keycloak) builds it."""
    return base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode())


def _broken(target: SmtpTarget, step: str, done: list[str], error: BaseException,
            secrets: tuple[str, ...]) -> Failure:
    """A conversation that broke off at ``step`` after the steps ``done`` worked: the server was reached,
    so the reason is not SMTPUnreachable (unless what answered speaks no SMTP), and the message names
    where it stopped (pure)."""
    where = f"{target.host}:{target.port}"
    during = _STEP_WORDS.get(step, step)
    if isinstance(error, aiosmtplib.SMTPResponseException) and error.code == _NOT_A_REPLY:
        # Whatever listens there does not speak SMTP: as good as no SMTP server at all.
        return Failure(Reason.SMTP_UNREACHABLE, f"{where} sent {_reply(error, secrets)} during {during}")
    worked = f" ({', '.join(_STEP_WORDS.get(d, d) for d in done)} worked)" if done else ""
    if isinstance(error, aiosmtplib.SMTPTimeoutError | TimeoutError):
        what = f"did not answer within {target.timeout:g} s during {during}"
    elif isinstance(error, aiosmtplib.SMTPResponseException):
        what = f"refused {during}: {_reply(error, secrets)}"
    elif isinstance(error, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        what = f"closed the connection during {during}"
    else:
        what = f"failed during {during}: {_error_text(error, secrets)}"
    return Failure(Reason.SMTP_CONVERSATION_FAILED, f"{where} {what}{worked}")


def probe_message(spec: SendSpec, probe_id: str) -> EmailMessage:
    """A message no one can mistake: its subject and headers name kcmail, the MailConfig and the probe."""
    message = EmailMessage()
    message["From"] = spec.sender
    message["To"] = spec.recipient
    message["Subject"] = f"kcmail delivery probe for {spec.mailconfig} ({probe_id})"
    message["Date"] = format_datetime(datetime.datetime.now(datetime.UTC))
    message["Message-ID"] = make_msgid(idstring=probe_id, domain="kcmail.io")
    message["X-Kcmail-Probe"] = probe_id
    message["X-Kcmail-MailConfig"] = spec.mailconfig
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        "This message was sent by kcmail, the Kubernetes operator that manages Keycloak's mail settings,\n"
        f"to prove that mail for MailConfig {spec.mailconfig} is delivered. It needs no answer.\n")
    return message


async def probe_smtp(target: SmtpTarget, credentials: SmtpCredentials, tls: ssl.SSLContext, *,
                     send: SendSpec | None = None) -> SmtpProbeResult:
    """Run every step; stop at the first failure, or before AUTH when the bearer callable has no token.
    QUIT is always attempted."""
    result = SmtpProbeResult(probe_id=uuid.uuid4().hex[:12])
    # The password or token of this conversation, once known: a server may quote what it was sent.
    known: list[str] = [credentials.secret] if credentials.secret else []
    client = aiosmtplib.SMTP(hostname=target.host, port=target.port, timeout=target.timeout,
                             use_tls=target.security is Security.SSL, start_tls=False, tls_context=tls,
                             local_hostname="kcmail-probe")

    async def step(name: str, action: Callable[[], Awaitable[str]]) -> None:
        started = time.monotonic()
        try:
            try:
                detail = await action()
            except (aiosmtplib.SMTPException, OSError) as error:
                raise _Stop(_broken(target, name, [s.name for s in result.steps], error, tuple(known))) from None
        except _Stop as stop:
            result.steps.append(Step(name, False, time.monotonic() - started, stop.failure.message))
            raise
        result.steps.append(Step(name, True, time.monotonic() - started, redact(detail, known)))

    async def connect() -> str:
        try:
            await client.connect(timeout=target.connect_timeout)
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPConnectTimeoutError, aiosmtplib.SMTPTimeoutError,
                OSError) as error:
            root = _root(error)
            if isinstance(root, ssl.SSLError):
                raise _Stop(_tls_failure(target, root)) from None
            raise _Stop(Failure(Reason.SMTP_UNREACHABLE,
                                f"cannot connect to {target.host}:{target.port}: {_error_text(error)}")) from None
        tls_note = f", {_tls_summary(client)}" if target.security is Security.SSL else ""
        return f"connected to {target.host}:{target.port}{tls_note}"

    async def ehlo() -> str:
        await client.ehlo()
        result.offered_auth = frozenset(m.upper() for m in client.server_auth_methods)
        return "EHLO: " + _capabilities(client)

    async def starttls() -> str:
        if not client.supports_extension("starttls"):
            raise _Stop(Failure(Reason.STARTTLS_NOT_OFFERED,
                                f"{target.host}:{target.port} does not offer STARTTLS"))
        try:
            await client.starttls(tls_context=tls)
        except (aiosmtplib.SMTPException, OSError) as error:
            root = _root(error)
            if isinstance(root, ssl.SSLError):
                raise _Stop(_tls_failure(target, root)) from None
            raise  # a refused STARTTLS, a lost connection, a timeout: the step names it
        await client.ehlo()
        result.offered_auth = frozenset(m.upper() for m in client.server_auth_methods)
        return f"{_tls_summary(client)}; EHLO again: {_capabilities(client)}"

    async def authenticate(mechanism: str, secret: str) -> str:
        challenge: dict[str, str] | None = None
        line_length = 0
        try:
            if mechanism == "XOAUTH2":
                # By hand rather than aiosmtplib's auth_xoauth2, which drops the error challenge.
                initial = _xoauth2_initial(credentials.username, secret)
                line_length = len(b"AUTH XOAUTH2 \r\n") + len(initial)
                response = await client.execute_command(b"AUTH", b"XOAUTH2", initial)
                if response.code == _CHALLENGE:
                    challenge = xoauth2_challenge(response.message, tuple(known))
                    response = await client.execute_command(b"")  # the empty answer that asks for the verdict
                if response.code != _ACCEPTED:
                    raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)
            else:
                login = client.auth_plain if mechanism == "PLAIN" else client.auth_login
                response = await login(credentials.username, secret)
        except aiosmtplib.SMTPAuthenticationError as error:
            result.token_refused = mechanism == "XOAUTH2" and fresh_token_may_help(error.code, error.message,
                                                                                   challenge)
            raise _Stop(auth_refusal(mechanism, credentials.username, error.code, _reply(error, tuple(known)),
                                     challenge, line_length)) from None
        return f"AUTH {mechanism} as {credentials.username}: {response.code} {response.message}"

    async def deliver() -> str:
        assert send is not None
        try:
            await client.send_message(probe_message(send, result.probe_id), sender=send.sender,
                                      recipients=[send.recipient])
        except aiosmtplib.SMTPRecipientsRefused as error:
            replies = "; ".join(_reply(r, tuple(known)) for r in error.recipients)
            raise _Stop(Failure(Reason.RECIPIENT_REJECTED, f"RCPT TO {send.recipient} refused: {replies}")) from None
        except aiosmtplib.SMTPResponseException as error:
            raise _Stop(Failure(Reason.SEND_FAILED, f"sending the probe failed: {_reply(error, tuple(known))}")) \
                from None
        return f"probe {result.probe_id} accepted for {send.recipient}"

    try:
        await step("connect", connect)
        await step("ehlo", ehlo)
        if target.security is Security.STARTTLS:
            await step("starttls", starttls)
        if credentials.type is not AuthType.NONE:
            mechanism = _mechanism(credentials.type, result.offered_auth, f"{target.host}:{target.port}")
            if isinstance(mechanism, Failure):
                result.steps.append(Step("auth", False, 0.0, mechanism.message))
                raise _Stop(mechanism)
            # Asked for only now, one round trip before the server checks it, and only once the server
            # offers the mechanism: a server that fails earlier costs no token.
            secret = credentials.secret if credentials.bearer is None else await credentials.bearer()
            if secret is None:
                result.stopped_before_auth = True
                return result
            known.append(secret)
            await step("auth", lambda: authenticate(mechanism, secret))
        if send is not None:
            await step("send", deliver)
    except _Stop as stop:
        result.failure = stop.failure
    finally:
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
            client.close()
    return result
