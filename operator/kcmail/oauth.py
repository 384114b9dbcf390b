"""The token request Keycloak makes before it sends mail, made the same way, with its errors classified.

Keycloak asks ``authTokenUrl`` for a token with the client-credentials grant, client_secret_post (client
ID and secret in the form body, no Basic header) and ``authTokenScope``. kcmail asks exactly that, so a
failure here is the failure Keycloak will meet. Tokens are cached per credential (URL, client, scope and
secret) and reused until the last seconds of their life (``RENEW_BEFORE``): steady probing costs one request
per credential per token life, however many MailConfigs and Secrets hold that credential. The probe asks
for the token at the AUTH step, after the connection, TLS and EHLO, so a small margin suffices.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from kcmail.answers import AnswerTooLarge
from kcmail.conditions import Failure, Reason
from kcmail.redact import redact

# Keycloak assumes 60 s when the answer has no expires_in; so do we.
DEFAULT_EXPIRES_IN = 60
# Renew a cached token this much before it expires. The probe checks at the AUTH step, one round trip
# before the server validates the token (and expiry counts from the answer's arrival, so it errs early):
# seconds are enough. A token that lapses in between is refused and the probe retries once with a fresh
# one. Keycloak itself reuses tokens up to 30 s past their expiry and renews only on a miss. A larger
# margin costs grants: lifetime / (lifetime - margin) per lifetime, 1.25 for 5-minute tokens at 60 s.
RENEW_BEFORE = datetime.timedelta(seconds=2)
_INVALID_CLIENT = {"invalid_client", "unauthorized_client"}
# RFC 6749's codes for a server that cannot answer now, beside 5xx and 429: an outage, not a misconfiguration.
_UNAVAILABLE = {"temporarily_unavailable", "server_error"}


def _down_for_now(status: int) -> bool:
    return status >= 500 or status == 429


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    expires_at: datetime.datetime


class TokenFailure(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def classify_response(status: int, body: bytes, content_type: str, now: datetime.datetime,
                      secrets: Iterable[str] = ()) -> Token | Failure:
    """A token endpoint's answer → a token, or the reason it is not one (pure).

    Only the OAuth2 ``error`` and ``error_description`` are quoted, redacted of ``secrets`` (what was
    sent): never the rest of a body, which may be any service's page when the URL is not a token endpoint.
    """
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if not isinstance(data, Mapping):
        kind = redact(content_type.split(";")[0].strip(), limit=80) or "no content type"
        return Failure(Reason.TOKEN_ENDPOINT_UNAVAILABLE if _down_for_now(status) else Reason.TOKEN_ENDPOINT_ERROR,
                       f"token endpoint answered HTTP {status} with a body that is not a JSON object ({kind})")
    error = data.get("error")
    if error or status >= 400:
        description = str(data.get("error_description") or "").strip()
        words = f"{error or 'no error code'}" + (f": {description}" if description else "")
        message = f"token endpoint answered HTTP {status}: {redact(words, secrets)}"
        if data.get("error_source") == "google" and error:
            # kcmail bridge's mark (kcmail.bridge.server): the bridge took the request, Google refused the
            # grant. Its unauthorized_client is Google's (delegation), not the bridge's client being wrong.
            return Failure(Reason.GOOGLE_REFUSED,
                           f"the token bridge asked Google, which answered: {redact(words, secrets)}")
        if error in _INVALID_CLIENT:
            return Failure(Reason.INVALID_CLIENT, message)
        if error == "invalid_scope":
            return Failure(Reason.INVALID_SCOPE, message)
        if error in _UNAVAILABLE or _down_for_now(status):
            return Failure(Reason.TOKEN_ENDPOINT_UNAVAILABLE, message)
        return Failure(Reason.TOKEN_ENDPOINT_ERROR, message)
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        return Failure(Reason.TOKEN_ENDPOINT_ERROR,
                       f"token endpoint answered HTTP {status} without an access_token")
    try:
        expires_in = int(data.get("expires_in", DEFAULT_EXPIRES_IN))
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    return Token(access_token=token, expires_at=now + datetime.timedelta(seconds=expires_in))


def _unreachable(url: str, error: Exception, secrets: Iterable[str] = ()) -> Failure:
    host = httpx.URL(url).host
    if isinstance(error, AnswerTooLarge):
        return Failure(Reason.TOKEN_ENDPOINT_ERROR, f"the token endpoint at {host} answered, but {error}")
    cause: BaseException = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        nested = cause.__cause__ or cause.__context__
        assert nested is not None
        cause = nested
    # A timeout first: one during a TLS read ends in an SSLWantReadError, which is no handshake failure.
    if isinstance(error, httpx.TimeoutException):
        step = {httpx.ConnectTimeout: "connecting", httpx.WriteTimeout: "sending the request",
                httpx.PoolTimeout: "waiting for a connection"}.get(type(error), "waiting for the answer")
        return Failure(Reason.TOKEN_ENDPOINT_UNAVAILABLE,
                       f"the token endpoint at {host} timed out {step} ({type(error).__name__})")
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = f"TLS certificate not trusted: {cause.verify_message or cause.reason}"
    elif isinstance(cause, ssl.SSLError):
        detail = f"TLS handshake failed: {cause.reason or cause}"
    else:
        detail = f"{type(cause).__name__}: {cause}"
    return Failure(Reason.TOKEN_ENDPOINT_UNREACHABLE,
                   f"cannot reach the token endpoint at {host}: {redact(detail, secrets)}")


@dataclass(frozen=True)
class TokenRequest:
    url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str
    secret_version: str

    @property
    def cache_key(self) -> tuple[str, str, str, str]:
        """The credential itself, not the Secret it came from: a thousand Secrets holding one app's client
        share its token, and a rotated secret is a new key. The secret is kept as a digest, in memory only."""
        return (self.url, self.client_id, self.scope, hashlib.sha256(self.client_secret.encode()).hexdigest())


class TokenClient:
    """Requests tokens and caches them; one instance for the operator's lifetime.

    Probes that need the same token at the same moment share one request: the first asks, the others
    wait for its answer instead of each asking the token endpoint.
    """

    def __init__(self, http: httpx.AsyncClient,
                 now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)) -> None:
        self._http = http
        self._now = now
        self._cache: dict[tuple[str, str, str, str], Token] = {}
        self._requesting: dict[tuple[str, str, str, str], asyncio.Lock] = {}
        self.requests_made = 0

    async def token(self, request: TokenRequest) -> Token:
        """A valid token for ``request``: cached while it has more than ``RENEW_BEFORE`` left, else a new one."""
        token, _ = await self.acquire(request)
        return token

    async def acquire(self, request: TokenRequest) -> tuple[Token, bool]:
        """Like :meth:`token`, and whether this call asked the token endpoint (False: from the cache)."""
        key = request.cache_key
        cached = self._valid(key)
        if cached is not None:
            return cached, False
        lock = self._requesting.setdefault(key, asyncio.Lock())
        async with lock:
            # Another probe may have fetched it while this one waited.
            cached = self._valid(key)
            if cached is not None:
                return cached, False
            token = await self._request(request)
            self._cache[key] = token
            return token, True

    def _valid(self, key: tuple[str, str, str, str]) -> Token | None:
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at - RENEW_BEFORE > self._now():
            return cached
        return None

    def forget(self, request: TokenRequest) -> None:
        """Drop a cached token the SMTP server refused, so the next probe asks for a fresh one."""
        self._cache.pop(request.cache_key, None)

    async def _request(self, request: TokenRequest) -> Token:
        form = {"grant_type": "client_credentials", "client_id": request.client_id,
                "client_secret": request.client_secret}
        if request.scope:
            form["scope"] = request.scope
        self.requests_made += 1
        try:
            response = await self._http.post(request.url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as error:
            raise TokenFailure(_unreachable(request.url, error, [request.client_secret])) from None
        outcome = classify_response(response.status_code, response.content,
                                    response.headers.get("content-type", ""), self._now(), [request.client_secret])
        if isinstance(outcome, Failure):
            raise TokenFailure(outcome)
        return outcome
