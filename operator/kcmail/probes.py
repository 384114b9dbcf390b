"""One probe of a MailConfig: the SMTP server, and for XOAUTH2 the token Keycloak will ask for.

The token is taken at the AUTH step, once the connection, TLS and EHLO are done, so that the cache's
expiry check happens one round trip before the server checks the token; a server that fails before AUTH
is followed by the token request alone, so that TokenAcquired is reported all the same. An XOAUTH2 probe
whose token the SMTP server refuses is retried once with a fresh token, as Keycloak itself does after an
AuthenticationFailedException, and that token is not kept; a refusal no token can change (SMTP AUTH
disabled, a temporary reply) is not retried, since each try counts as a failed login for the mailbox.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from dataclasses import dataclass, field

from kcmail import metrics
from kcmail.conditions import Failure
from kcmail.oauth import TokenClient, TokenFailure, TokenRequest
from kcmail.smtp_probe import SendSpec, SmtpCredentials, SmtpProbeResult, SmtpTarget, Step, probe_smtp
from kcmail.spec import AuthType, Credentials, MailConfigSpec, ProbeMode


@dataclass
class ProbeOutcome:
    """``token`` is None when the auth type needs no token; ``smtp`` is None when the token failed before
    the SMTP server could be asked to authenticate. In ``steps`` a token request (there is none for a cached
    token) is listed before the SMTP steps of its attempt, though it ran at that attempt's AUTH step, or
    after the SMTP server failed before it."""

    token: Failure | bool | None = None
    smtp: Failure | bool | None = None
    token_expires_at: datetime.datetime | None = None
    steps: list[Step] = field(default_factory=list)


def parse_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def smtp_target(spec: MailConfigSpec, timeout: float | None = None) -> SmtpTarget:
    """Where and how Keycloak will meet the SMTP server; ``timeout`` replaces the spec's timeouts."""
    smtp = spec.smtp
    return SmtpTarget(host=smtp.host, port=smtp.port, security=smtp.security,
                      connect_timeout=timeout or smtp.timeouts.connect.total_seconds(),
                      timeout=timeout or max(smtp.timeouts.read, smtp.timeouts.write).total_seconds())


def send_spec(spec: MailConfigSpec, mailconfig: str, recipient: str = "") -> SendSpec | None:
    """The probe message to send: in Send mode, or to ``recipient`` when one is given."""
    if not recipient and spec.probe.smtp is not ProbeMode.SEND:
        return None
    return SendSpec(sender=spec.sender.envelope_from or spec.sender.from_address,
                    recipient=recipient or spec.probe.recipient, mailconfig=mailconfig)


def token_request(spec: MailConfigSpec, credentials: Credentials) -> TokenRequest | None:
    """The token request Keycloak will make, or None when the auth type needs no token."""
    auth = spec.auth
    if auth.type is not AuthType.XOAUTH2 or auth.xoauth2 is None:
        return None
    return TokenRequest(url=auth.xoauth2.token_url, client_id=credentials.client_id,
                        client_secret=credentials.client_secret, scope=auth.xoauth2.scope,
                        secret_version=credentials.secret_version)


class Prober:
    """Runs probes for every MailConfig, at most ``concurrency`` at a time across the operator."""

    def __init__(self, tokens: TokenClient, tls: ssl.SSLContext, concurrency: int) -> None:
        self._tokens = tokens
        self._tls = tls
        self._slots = asyncio.Semaphore(concurrency)
        self.active = 0
        self.peak = 0

    async def probe(self, spec: MailConfigSpec, credentials: Credentials, mailconfig: str) -> ProbeOutcome:
        async with self._slots:
            self.active += 1
            self.peak = max(self.peak, self.active)
            metrics.PROBES_IN_FLIGHT.set(self.active)
            try:
                outcome = await self._probe(spec, credentials, mailconfig)
            finally:
                self.active -= 1
                metrics.PROBES_IN_FLIGHT.set(self.active)
        failure = next((r for r in (outcome.token, outcome.smtp) if isinstance(r, Failure)), None)
        metrics.record_probe([(s.name, s.seconds) for s in outcome.steps],
                             failure.reason.value if failure is not None else None)
        return outcome

    async def _probe(self, spec: MailConfigSpec, credentials: Credentials, mailconfig: str) -> ProbeOutcome:
        outcome = ProbeOutcome()
        target, send, request = smtp_target(spec), send_spec(spec, mailconfig), token_request(spec, credentials)
        auth = spec.auth
        if request is not None:
            result = await self._xoauth2(request, target, auth.username, send, outcome)
        else:
            secret = credentials.password if auth.type is AuthType.BASIC else ""
            result = await probe_smtp(target, SmtpCredentials(auth.type, auth.username, secret), self._tls, send=send)
        outcome.steps.extend(result.steps)
        if not result.stopped_before_auth:
            outcome.smtp = result.failure or True
        return outcome

    async def _xoauth2(self, request: TokenRequest, target: SmtpTarget, username: str, send: SendSpec | None,
                       outcome: ProbeOutcome) -> SmtpProbeResult:
        async def bearer() -> str | None:
            return await self._token(request, outcome)

        credentials = SmtpCredentials(AuthType.XOAUTH2, username, bearer=bearer)
        result = await probe_smtp(target, credentials, self._tls, send=send)
        if result.token_refused:
            # The token was revoked, or lapsed between the cache's check and the server's: a fresh one, once.
            self._tokens.forget(request)
            outcome.steps.extend(result.steps)
            result = await probe_smtp(target, credentials, self._tls, send=send)
            if result.token_refused:
                self._tokens.forget(request)
        if outcome.token is None:
            # The server failed before AUTH, so no token was asked for: TokenAcquired still says whether the
            # credential works (a cached token costs nothing).
            await bearer()
        return result

    async def _token(self, request: TokenRequest, outcome: ProbeOutcome) -> str | None:
        """The bearer token, recorded in ``outcome``; None when the token endpoint gave none."""
        started = time.monotonic()
        try:
            token, requested = await self._tokens.acquire(request)
        except TokenFailure as error:
            outcome.steps.append(Step("token", False, time.monotonic() - started, error.failure.message))
            outcome.token = error.failure
            return None
        if requested:
            # A cached token took no time to get; only a real request says how the endpoint does.
            outcome.steps.append(Step("token", True, time.monotonic() - started,
                                      f"token issued, expires {token.expires_at:%Y-%m-%dT%H:%M:%SZ}"))
        outcome.token = True
        outcome.token_expires_at = token.expires_at
        return token.access_token
