"""XOAUTH2 as the test SMTP server checks it: the initial response, and the bearer token inside it.

A token passes only when its signature verifies against a key the issuer publishes, it has not expired, it
names the configured issuer, and the client it was issued to (``azp``) may send as the mailbox in
``user=``. Every failure carries a reason from one fixed list, which the server quotes in its 535 reply.

Google's opaque tokens (``ya29.…``) are judged as Gmail judges them, by what the issuer says of them:
its tokeninfo endpoint must know the token, name the mailbox in ``user=`` as its ``email`` and grant
Gmail's scope (``TokenInfoVerifier``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt

from kcmail.spec import GOOGLE_MAIL_SCOPE

_logger = logging.getLogger(__name__)

# Only public-key algorithms: a symmetric key in a JWKS would let anyone who reads the JWKS mint tokens.
_ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                    "ES256", "ES384", "ES512", "EdDSA"})
_INITIAL_RESPONSE = re.compile(r"user=([^\x01\s]+)\x01auth=Bearer ([^\x01\s]+)\x01\x01")


class Rejection(enum.StrEnum):
    """Why a token was refused; the value is the text quoted in the SMTP reply."""

    MALFORMED_RESPONSE = "malformed initial response"
    MALFORMED_JWT = "token malformed"
    UNKNOWN_KEY = "signing key unknown"
    ALGORITHM_NOT_ALLOWED = "algorithm not allowed"
    BAD_SIGNATURE = "signature invalid"
    EXPIRED = "token expired"
    NOT_YET_VALID = "token not yet valid"
    WRONG_ISSUER = "issuer mismatch"
    MISSING_CLAIM = "required claim missing"
    UNKNOWN_CLIENT = "client not allowed"
    MAILBOX_NOT_ALLOWED = "mailbox not allowed for client"
    UNKNOWN_TOKEN = "token unknown or expired"
    SCOPE_MISSING = "token lacks the mail scope"


class TokenRejected(Exception):
    """The credentials are invalid; ``client_id`` is set once the token's client is known."""

    def __init__(self, reason: Rejection, *, client_id: str | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.client_id = client_id


class SigningKeysUnavailable(Exception):
    """The issuer's JWKS could not be fetched or read, so no token can be judged right now."""


@dataclass(frozen=True)
class InitialResponse:
    user: str
    token: str = field(repr=False)


def parse_initial_response(blob: bytes) -> InitialResponse:
    """The mailbox and token of ``user=<u>\\x01auth=Bearer <token>\\x01\\x01`` (already base64-decoded)."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TokenRejected(Rejection.MALFORMED_RESPONSE) from error
    match = _INITIAL_RESPONSE.fullmatch(text)
    if match is None:
        raise TokenRejected(Rejection.MALFORMED_RESPONSE)
    return InitialResponse(user=match[1], token=match[2])


JwksFetch = Callable[[], Awaitable[Any]]


class HttpsJwks:
    """Fetches the issuer's JWKS document over HTTPS, trusting only the given CA; close with ``aclose``."""

    def __init__(self, url: str, ca_file: Path, *, timeout: float = 5.0) -> None:
        self.url = url
        # trust_env=False: a proxy from the environment must not sit between us and a loopback issuer.
        self._client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_file)),
                                         timeout=timeout, trust_env=False)

    async def __call__(self) -> Any:
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise SigningKeysUnavailable(f"{self.url}: {error}") from error

    async def aclose(self) -> None:
        await self._client.aclose()


class SigningKeys:
    """The issuer's verification keys by ``kid``: fetched on first use, and again for an unknown ``kid``.

    One fetch per unknown ``kid`` follows a key rotation at once, while a forged ``kid`` costs one request
    rather than a loop.
    """

    def __init__(self, fetch: JwksFetch) -> None:
        self._fetch = fetch
        self._keys: dict[str, jwt.PyJWK] | None = None
        # Sessions arriving together with the same new kid share one fetch.
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            if self._keys is None or kid not in self._keys:
                self._keys = _usable_keys(await self._fetch())
                _logger.info("signing keys fetched: %s", ", ".join(sorted(self._keys)) or "none usable")
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(Rejection.UNKNOWN_KEY)
        return key


def _usable_keys(document: Any) -> dict[str, jwt.PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise SigningKeysUnavailable("the issuer's answer is not a JWKS document")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        # Keycloak also publishes encryption keys (use=enc, alg=RSA-OAEP); they never sign tokens.
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or not entry.get("kid"):
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in _ASYMMETRIC_ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


@dataclass(frozen=True)
class VerifiedToken:
    client_id: str
    token_id: str | None


# Checked in this order, because PyJWT's exception classes nest (InvalidSignatureError is a DecodeError).
_REASONS: tuple[tuple[type[jwt.PyJWTError], Rejection], ...] = (
    (jwt.ExpiredSignatureError, Rejection.EXPIRED),
    (jwt.ImmatureSignatureError, Rejection.NOT_YET_VALID),
    (jwt.InvalidIssuerError, Rejection.WRONG_ISSUER),
    (jwt.MissingRequiredClaimError, Rejection.MISSING_CLAIM),
    (jwt.InvalidAlgorithmError, Rejection.ALGORITHM_NOT_ALLOWED),
    (jwt.InvalidSignatureError, Rejection.BAD_SIGNATURE),
)


class TokenVerifier:
    """Judges bearer tokens of one issuer for the clients in ``clients`` (client id -> allowed mailboxes)."""

    def __init__(self, *, issuer: str, clients: Mapping[str, Iterable[str]], keys: SigningKeys) -> None:
        self._issuer = issuer
        # Mailboxes compare case-insensitively, as mail servers (Exchange, Gmail) treat them.
        self._mailboxes = {client: frozenset(m.casefold() for m in mailboxes)
                           for client, mailboxes in clients.items()}
        self._keys = keys

    async def verify(self, mailbox: str, token: str) -> VerifiedToken:
        """The token's client and ``jti``; raises TokenRejected or SigningKeysUnavailable."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as error:
            raise TokenRejected(Rejection.MALFORMED_JWT) from error
        if not isinstance(kid, str):
            raise TokenRejected(Rejection.MALFORMED_JWT)
        key = await self._keys.get(kid)
        claims = self._decode(token, key)
        client_id = claims["azp"]
        if not isinstance(client_id, str) or client_id not in self._mailboxes:
            raise TokenRejected(Rejection.UNKNOWN_CLIENT, client_id=str(client_id))
        if mailbox.casefold() not in self._mailboxes[client_id]:
            raise TokenRejected(Rejection.MAILBOX_NOT_ALLOWED, client_id=client_id)
        token_id = claims.get("jti")
        return VerifiedToken(client_id=client_id, token_id=token_id if isinstance(token_id, str) else None)

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            # The algorithm comes from the published key, never from the token's own header.
            return jwt.decode(token, key, algorithms=[key.algorithm_name], issuer=self._issuer,
                              options={"require": ["exp", "iss", "azp"], "verify_aud": False})
        except jwt.PyJWTError as error:
            reason = next((r for kind, r in _REASONS if isinstance(error, kind)), Rejection.MALFORMED_JWT)
            raise TokenRejected(reason) from error


class Verifier(Protocol):
    async def verify(self, mailbox: str, token: str) -> VerifiedToken: ...




class TokenInfoVerifier:
    """Judges opaque tokens by the issuer's tokeninfo answer (Google's ``/tokeninfo?access_token=``)."""

    def __init__(self, url: str, ca_file: Path, *, timeout: float = 5.0) -> None:
        self.url = url
        self._client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_file)),
                                         timeout=timeout, trust_env=False)

    async def verify(self, mailbox: str, token: str) -> VerifiedToken:
        try:
            response = await self._client.get(self.url, params={"access_token": token})
        except httpx.HTTPError as error:
            raise SigningKeysUnavailable(f"tokeninfo: {type(error).__name__}") from error
        if response.status_code == 400:
            raise TokenRejected(Rejection.UNKNOWN_TOKEN)
        try:
            response.raise_for_status()
            info = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise SigningKeysUnavailable(f"tokeninfo answered {response.status_code}") from error
        client_id = str(info.get("azp", ""))
        if GOOGLE_MAIL_SCOPE not in str(info.get("scope", "")).split():
            raise TokenRejected(Rejection.SCOPE_MISSING, client_id=client_id)
        if str(info.get("email", "")).casefold() != mailbox.casefold():
            raise TokenRejected(Rejection.MAILBOX_NOT_ALLOWED, client_id=client_id)
        return VerifiedToken(client_id=client_id, token_id=None)

    async def aclose(self) -> None:
        await self._client.aclose()


# Google's access tokens begin so (the stand-in's too); anything else is judged as a JWT, and refused as
# malformed when it is none.
GOOGLE_TOKEN_PREFIX = "ya29."


class ByTokenShape:
    """Google's tokens to ``google`` when there is one; every other token to ``jwts``."""

    def __init__(self, jwts: Verifier, google: Verifier | None) -> None:
        self._jwts = jwts
        self._google = google

    async def verify(self, mailbox: str, token: str) -> VerifiedToken:
        if self._google is not None and token.startswith(GOOGLE_TOKEN_PREFIX):
            return await self._google.verify(mailbox, token)
        return await self._jwts.verify(mailbox, token)
