"""Google's JWT-bearer grant for a mailbox, made with google-auth, and the tokens it gives kept until near expiry.

google-auth builds and signs the assertion (RS256 with the service account's key, ``iss`` the service
account, ``sub`` the mailbox, ``scope`` Gmail's, ``aud`` the token endpoint, one hour) and reads Google's
answer; kcmail writes neither a signer nor a parser for it. Its calls block, so they run in a thread, each
bounded in time.

Tokens are kept per (service account, key id, mailbox): Keycloak's requests and kcmail's probes for one
mailbox cost Google one grant per token life. A token is renewed ``RENEW_BEFORE`` its expiry and handed out
as expiring ``HAND_OUT_MARGIN`` early, because Keycloak keeps using a token up to 30 s past the expiry it was
told. Concurrent requests for one mailbox wait for the one grant in flight.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from google.auth import exceptions as google_exceptions
from google.auth.transport import requests as google_requests
from google.oauth2 import service_account

from kcmail.bridge.registry import BridgeClient
from kcmail.redact import redact
from kcmail.spec import GOOGLE_MAIL_SCOPE as MAIL_SCOPE

RENEW_BEFORE = datetime.timedelta(minutes=5)
HAND_OUT_MARGIN = datetime.timedelta(seconds=60)
GRANT_TIMEOUT = 15.0
# Google's words are passed on to Keycloak and kcmail's status; bounded like any foreign text.
WORDS_LIMIT = 300


class GoogleRefused(Exception):
    """Google's token endpoint answered with an OAuth2 error: ``error`` and ``description`` are its words."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


class GoogleUnreachable(Exception):
    """No answer from Google's token endpoint (connection, TLS, timeout), or one that is not OAuth2."""


class KeyUnusable(Exception):
    """The service-account key cannot sign (google-auth cannot load its private key)."""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    expires_at: datetime.datetime


Grant = Callable[[BridgeClient], IssuedToken]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class _BoundedRequest(google_requests.Request):
    """google-auth's requests transport with every call bounded: its default waits two minutes."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        super().__init__(session)
        self._timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> Any:
        return super().__call__(url, method=method, body=body, headers=headers, timeout=self._timeout, **kwargs)


def google_grant(token_url: str, verify: str | bool = True, timeout: float = GRANT_TIMEOUT) -> Grant:
    """The blocking grant against ``token_url`` (Google's, or a stand-in in tests), trusting ``verify``."""
    session = requests.Session()
    session.verify = verify
    # Never an environment's proxy or .netrc credentials for a request that carries a signed assertion.
    session.trust_env = False
    transport = _BoundedRequest(session, timeout)

    def grant(client: BridgeClient) -> IssuedToken:
        # The bridge's own token endpoint, never the one written in the (tenant-supplied) key.
        info = {**client.key, "token_uri": token_url}
        try:
            credentials = service_account.Credentials.from_service_account_info(
                info, scopes=[MAIL_SCOPE], subject=client.mailbox)
        except (ValueError, TypeError) as error:
            raise KeyUnusable(f"the service-account key cannot be loaded ({type(error).__name__})") from None
        try:
            credentials.refresh(transport)
        except google_exceptions.RefreshError as error:
            raise refusal(error.args) from None
        except google_exceptions.TransportError as error:
            raise GoogleUnreachable(redact(error, limit=WORDS_LIMIT)) from None
        if not credentials.token or credentials.expiry is None:
            raise GoogleUnreachable("the token endpoint's answer held no token")
        expiry = credentials.expiry.replace(tzinfo=datetime.UTC)
        return IssuedToken(access_token=credentials.token, expires_at=expiry)

    return grant


def refusal(args: tuple[Any, ...]) -> GoogleRefused | GoogleUnreachable:
    """google-auth's RefreshError arguments → Google's own error and description (pure).

    google-auth raises ``RefreshError("<error>: <description>", <answer as parsed>, retryable=...)``; an
    answer that is not an OAuth2 error object (a proxy's HTML page) is not Google refusing.
    """
    answer = args[1] if len(args) > 1 else None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        description = answer.get("error_description")
        return GoogleRefused(redact(answer["error"], limit=64),
                             redact(description, limit=WORDS_LIMIT) if isinstance(description, str) else "")
    return GoogleUnreachable("the token endpoint answered without an OAuth2 error object")


class GoogleTokens:
    """Tokens per (service account, private key, mailbox), each from one grant, until ``RENEW_BEFORE`` their
    expiry."""

    def __init__(self, grant: Grant, *, clock: Callable[[], datetime.datetime] = _now,
                 timeout: float = GRANT_TIMEOUT) -> None:
        self._grant = grant
        self._clock = clock
        self._timeout = timeout
        self._tokens: dict[tuple[str, str, str, str], IssuedToken] = {}
        self._locks: dict[tuple[str, str, str, str], asyncio.Lock] = {}
        self.grants = 0

    def now(self) -> datetime.datetime:
        return self._clock()

    def _fresh(self, key: tuple[str, str, str, str]) -> IssuedToken | None:
        token = self._tokens.get(key)
        if token is not None and token.expires_at - self._clock() > RENEW_BEFORE:
            return token
        return None

    async def token(self, client: BridgeClient) -> IssuedToken:
        """A token for the client's mailbox, as it may be handed out (expiry moved ``HAND_OUT_MARGIN`` early)."""
        # The key's own material, not only its id: a tenant can copy another's client_email and key id into
        # a key file of its own, and must not be handed the token that other key earned.
        material = hashlib.sha256(str(client.key["private_key"]).encode()).hexdigest()
        key = (client.service_account, client.key_id, material, client.mailbox.casefold())
        token = self._fresh(key)
        if token is None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                token = self._fresh(key)
                if token is None:
                    self.grants += 1
                    try:
                        token = await asyncio.wait_for(asyncio.to_thread(self._grant, client), self._timeout + 5)
                    except TimeoutError:
                        raise GoogleUnreachable(f"no answer within {self._timeout:.0f} s") from None
                    self._tokens[key] = token
        return IssuedToken(access_token=token.access_token, expires_at=token.expires_at - HAND_OUT_MARGIN)

