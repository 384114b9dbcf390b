"""A stand-in for Google's OAuth2 token endpoint and tokeninfo, for the bridge's tests: Google cannot be
reached from here.

It follows Google's published contract for a service account's JWT-bearer grant (RFC 7523) with
domain-wide delegation, as google-auth speaks it (docs/guides/google.md, "How the bridge is tested"):

- ``POST /token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion``: an RS256
  JWT whose header names the key (``kid`` = the key file's ``private_key_id``) and whose claims are ``iss``
  (the service account), ``aud`` (Google's token endpoint, which google-auth asserts wherever it sends the
  assertion), ``scope``, ``sub`` (the mailbox) and ``iat``/``exp`` at
  most an hour apart. The signature is checked against the service account's public key. The answer is an
  opaque ``ya29.`` access token with ``expires_in`` 3599 and ``token_type`` Bearer, or Google's error
  bodies: ``invalid_client`` (unknown account), ``invalid_grant`` (bad or disabled key, wrong audience, bad
  times, unknown user) and ``unauthorized_client`` (no domain-wide delegation for the scope).
- ``GET /tokeninfo?access_token=…``: what Google says of a token (``email``, ``scope``, ``azp``, ``expires_in``),
  which the environment's SMTP server asks before it lets a token send as a mailbox.
- ``GET /stats``: the grants issued and refused, for tests counting Google's work.

Only this module writes the accounts: ``make_accounts`` creates service-account keys as Google issues them
(JSON with the PEM private key), one delegated, one without delegation, and one delegated key disabled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kcmail.spec import GOOGLE_MAIL_SCOPE

_logger = logging.getLogger("google-oauth")

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LIFETIME = 3599
# Google's words for each refusal, as Google's documentation and real answers quote them (sources in
# docs/guides/google.md).
UNAUTHORIZED_CLIENT = ("Client is unauthorized to retrieve access tokens using this method, or client not "
                       "authorized for any of the scopes requested.")
INVALID_SIGNATURE = "Invalid JWT Signature."
CLIENT_NOT_FOUND = "The OAuth client was not found."
INVALID_USER = "Invalid email or User ID"
BAD_AUDIENCE = "Invalid JWT: Failed audience check. The right audience is {}"
BAD_TIMES = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
             "Check your iat and exp values and use a clock with skew to account for clock differences between "
             "systems.")
# google-auth always asserts Google's own token endpoint as the audience, wherever it sends the assertion.
AUDIENCE = "https://oauth2.googleapis.com/token"
CLOCK_SKEW = 300


@dataclass(frozen=True)
class Account:
    """A service account: its email, numeric client id (what delegation names), public keys by id."""

    email: str
    client_id: str
    keys: Mapping[str, str]
    disabled_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class GoogleConfig:
    port: int
    cert_file: Path
    key_file: Path
    token_url: str
    accounts: tuple[Account, ...]
    # Domain-wide delegation: client id -> the scopes a Workspace admin granted it.
    delegations: Mapping[str, tuple[str, ...]]
    users: tuple[str, ...]
    host: str = "127.0.0.1"

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "accounts": [a.__dict__ for a in self.accounts]}, default=str, indent=2)

    @classmethod
    def from_json(cls, text: str) -> GoogleConfig:
        raw = json.loads(text)
        return cls(**{**raw, "cert_file": Path(raw["cert_file"]), "key_file": Path(raw["key_file"]),
                      "accounts": tuple(Account(**{**a, "disabled_keys": tuple(a["disabled_keys"])})
                                        for a in raw["accounts"]),
                      "delegations": {k: tuple(v) for k, v in raw["delegations"].items()},
                      "users": tuple(raw["users"])})


@dataclass(frozen=True)
class Accounts:
    """The key files made for the environment, and the Google side's view of them."""

    delegated: dict[str, Any] = field(repr=False)
    disabled: dict[str, Any] = field(repr=False)
    undelegated: dict[str, Any] = field(repr=False)
    google: tuple[Account, ...]
    delegations: Mapping[str, tuple[str, ...]]


def key_file(email: str, client_id: str, token_url: str) -> tuple[dict[str, Any], str, str]:
    """A service-account key file as Google issues it, made now (the tests' keys too: none is committed), its
    key id and its public key in PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = secrets.token_hex(20)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    project = email.split("@", 1)[1].split(".", 1)[0]
    document = {"type": "service_account", "project_id": project, "private_key_id": key_id,
                "private_key": private, "client_email": email, "client_id": client_id,
                "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_url,
                "universe_domain": "googleapis.com"}
    return document, key_id, public


def make_accounts(token_url: str) -> Accounts:
    """Two service accounts, as Google would issue their keys: ``mailer`` delegated Gmail's scope (one
    enabled key, one disabled), ``nodelegation`` with none."""
    mailer = "mailer@kcmail-dev.iam.gserviceaccount.com"
    nodelegation = "nodelegation@kcmail-dev.iam.gserviceaccount.com"
    delegated, delegated_kid, delegated_public = key_file(mailer, "100000000000000000001", token_url)
    disabled, disabled_kid, disabled_public = key_file(mailer, "100000000000000000001", token_url)
    undelegated, undelegated_kid, undelegated_public = key_file(nodelegation, "100000000000000000002", token_url)
    return Accounts(
        delegated=delegated, disabled=disabled, undelegated=undelegated,
        google=(Account(mailer, "100000000000000000001", {delegated_kid: delegated_public,
                                                           disabled_kid: disabled_public},
                        disabled_keys=(disabled_kid,)),
                Account(nodelegation, "100000000000000000002", {undelegated_kid: undelegated_public})),
        delegations={"100000000000000000001": (GOOGLE_MAIL_SCOPE,)})


@dataclass
class Issued:
    email: str
    scope: str
    client_id: str
    expires_at: float


class Refused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class Google:
    """The grant's checks, in the order Google's answers suggest, and the tokens issued."""

    def __init__(self, config: GoogleConfig) -> None:
        self.config = config
        self.accounts = {account.email: account for account in config.accounts}
        self.users = {user.casefold() for user in config.users}
        self.tokens: dict[str, Issued] = {}
        self.grants = 0
        self.refusals = 0

    def grant(self, form: Mapping[str, str], now: float) -> dict[str, Any]:
        if form.get("grant_type") != JWT_BEARER:
            raise Refused(400, "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Refused(400, "invalid_grant", "Invalid JWT: could not be parsed") from None
        account = self.accounts.get(str(claims.get("iss")))
        if account is None:
            raise Refused(401, "invalid_client", CLIENT_NOT_FOUND)
        kid = header.get("kid")
        public = account.keys.get(kid) if isinstance(kid, str) else None
        if public is None or kid in account.disabled_keys or header.get("alg") != "RS256":
            raise Refused(400, "invalid_grant", INVALID_SIGNATURE)
        try:
            jwt.decode(assertion, public, algorithms=["RS256"],
                       options={"verify_aud": False, "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError:
            raise Refused(400, "invalid_grant", INVALID_SIGNATURE) from None
        if claims.get("aud") != AUDIENCE:
            raise Refused(400, "invalid_grant", BAD_AUDIENCE.format(AUDIENCE))
        iat, exp = claims.get("iat"), claims.get("exp")
        if (not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > 3600 or exp <= iat
                or iat > now + CLOCK_SKEW or exp < now - CLOCK_SKEW):
            raise Refused(400, "invalid_grant", BAD_TIMES)
        scopes = str(claims.get("scope", "")).split()
        if not scopes:
            raise Refused(400, "invalid_scope", "Empty or missing scope not allowed.")
        subject = claims.get("sub")
        if isinstance(subject, str):
            if subject.casefold() not in self.users:
                raise Refused(400, "invalid_grant", INVALID_USER)
            granted = self.config.delegations.get(account.client_id, ())
            if not set(scopes) <= set(granted):
                raise Refused(401, "unauthorized_client", UNAUTHORIZED_CLIENT)
        token = "ya29." + secrets.token_urlsafe(96)
        self.tokens[token] = Issued(email=subject if isinstance(subject, str) else account.email,
                                    scope=" ".join(scopes), client_id=account.client_id, expires_at=now + LIFETIME)
        self.grants += 1
        return {"access_token": token, "expires_in": LIFETIME, "token_type": "Bearer"}

    def tokeninfo(self, token: str, now: float) -> dict[str, Any]:
        issued = self.tokens.get(token)
        if issued is None or issued.expires_at <= now:
            raise Refused(400, "invalid_token", "Invalid Value")
        return {"azp": issued.client_id, "aud": issued.client_id, "scope": issued.scope,
                "exp": str(int(issued.expires_at)), "expires_in": str(int(issued.expires_at - now)),
                "email": issued.email, "email_verified": "true", "access_type": "online"}


def application(google: Google) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        try:
            answer = google.grant(form, time.time())
        except Refused as refused:
            google.refusals += 1
            _logger.info("grant refused: %s %s", refused.error, refused.description)
            return web.json_response({"error": refused.error, "error_description": refused.description},
                                     status=refused.status)
        _logger.info("grant %d issued", google.grants)
        return web.json_response(answer, headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"})

    async def tokeninfo(request: web.Request) -> web.Response:
        form = dict(request.query) if request.method == "GET" else dict(await request.post())
        try:
            return web.json_response(google.tokeninfo(str(form.get("access_token", "")), time.time()))
        except Refused as refused:
            return web.json_response({"error": refused.error, "error_description": refused.description},
                                     status=refused.status)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({"grants": google.grants, "refusals": google.refusals})

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/token", token)
    app.router.add_route("*", "/tokeninfo", tokeninfo)
    app.router.add_get("/stats", stats)
    return app


async def _serve(config: GoogleConfig) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.cert_file, config.key_file)
    runner = web.AppRunner(application(Google(config)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port, ssl_context=context).start()
    _logger.info("serving on %s:%d", config.host, config.port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kcmail.devenv.google_oauth",
                                     description="A stand-in for Google's token endpoint and tokeninfo (tests).")
    parser.add_argument("--config", type=Path, required=True, help="JSON written by GoogleConfig.to_json()")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(GoogleConfig.from_json(args.config.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
