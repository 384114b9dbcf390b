"""The bridge's HTTPS token endpoint: Keycloak's client-credentials request in, a Google token out.

``POST /token`` takes what Keycloak sends (RFC 6749 §4.4 with client_secret_post: ``grant_type``,
``client_id``, ``client_secret`` and ``scope`` in a form body; HTTP Basic is accepted too) and answers in
OAuth2 form: a token, or ``error`` and ``error_description``. Google's refusals keep Google's own words;
``error_source`` says whether the bridge or Google refused, so kcmail's status can tell them apart.

Untrusted input all the way: bodies are bounded (``MAX_BODY``), requests are rate-limited per client id and
in total, and nothing secret is logged: a request's line names the client id, the outcome and the status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import signal
import ssl
import time
from collections.abc import Callable, Mapping
from urllib.parse import unquote_plus

from aiohttp import web

from kcmail.bridge.bucket import Bucket
from kcmail.bridge.google import MAIL_SCOPE, GoogleRefused, GoogleTokens, GoogleUnreachable, KeyUnusable
from kcmail.bridge.registry import BridgeClient, Registry
from kcmail.redact import redact

log = logging.getLogger("kcmail.bridge")

MAX_BODY = 8 * 1024
FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Client ids tracked for rate limits at once; beyond, the oldest are forgotten (a flood of made-up ids
# must not grow memory).
MAX_TRACKED_CLIENTS = 10_000


class RateLimits:
    """One bucket for all requests and one per client id (pure but for the clock it is given)."""

    def __init__(self, *, per_client: float, total: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_client = per_client
        self._clock = clock
        now = clock()
        self._total = Bucket(total, total * 2, total * 2, now)
        self._clients: dict[str, Bucket] = {}

    def allow(self, client_id: str) -> bool:
        now = self._clock()
        bucket = self._clients.pop(client_id, None)
        if bucket is None:
            bucket = Bucket(self._per_client, self._per_client * 2, self._per_client * 2, now)
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                del self._clients[next(iter(self._clients))]
        # Re-inserted: the dict's order is then least recently used first.
        self._clients[client_id] = bucket
        return bucket.take(now) and self._total.take(now)


def error_answer(status: int, error: str, description: str, *, source: str,
                 headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "error_description": description, "error_source": source},
                             status=status, headers={**_NO_STORE, **(headers or {})})


def client_credentials(headers: Mapping[str, str], form: Mapping[str, str]) -> tuple[str, str, bool] | str:
    """(client id, secret, whether Basic was used) from a request, or what is wrong with it (pure)."""
    authorization = headers.get("Authorization", "")
    in_form = "client_id" in form or "client_secret" in form
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return "only client_secret_post and client_secret_basic are accepted"
        if in_form:
            return "the client authenticated in two ways at once"
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "the Basic credentials are not base64 of id:secret"
        client_id, colon, secret = decoded.partition(":")
        if not colon:
            return "the Basic credentials are not base64 of id:secret"
        # RFC 6749 §2.3.1: both are form-encoded before they are put together.
        return unquote_plus(client_id), unquote_plus(secret), True
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id or not secret:
        return "client_id and client_secret are required"
    return client_id, secret, False


class TokenEndpoint:
    def __init__(self, registry: Registry, tokens: GoogleTokens, limits: RateLimits) -> None:
        self.registry = registry
        self.tokens = tokens
        self.limits = limits

    async def token(self, request: web.Request) -> web.Response:
        if request.content_type != FORM:
            return error_answer(400, "invalid_request", f"the body must be {FORM}", source="bridge")
        try:
            form = {key: str(value) for key, value in (await request.post()).items()}
        except web.HTTPRequestEntityTooLarge:
            return error_answer(413, "invalid_request", f"the body is over {MAX_BODY} bytes", source="bridge")
        if form.get("grant_type") != "client_credentials":
            return error_answer(400, "unsupported_grant_type", "the bridge serves the client_credentials grant",
                                source="bridge")
        credentials = client_credentials(request.headers, form)
        if isinstance(credentials, str):
            return error_answer(400, "invalid_request", credentials, source="bridge")
        client_id, secret, basic = credentials
        if not self.limits.allow(client_id):
            log.warning("token request from client %s refused: rate limit", redact(client_id, limit=80))
            return error_answer(429, "temporarily_unavailable", "too many requests; retry shortly", source="bridge",
                                headers={"Retry-After": "1"})
        client = await self.registry.authenticate(client_id, secret)
        if client is None:
            log.warning("token request from client %s refused: unknown client or wrong secret",
                        redact(client_id, limit=80, secrets=(secret,)))
            return error_answer(401, "invalid_client", "unknown client or wrong secret", source="bridge",
                                headers={"WWW-Authenticate": 'Basic realm="kcmail-bridge"'} if basic else None)
        scopes = set(form.get("scope", "").split())
        if scopes - {MAIL_SCOPE}:
            return error_answer(400, "invalid_scope", f"the bridge grants only {MAIL_SCOPE}", source="bridge")
        return await self._issue(client_id, client)

    async def _issue(self, client_id: str, client: BridgeClient) -> web.Response:
        try:
            token = await self.tokens.token(client)
        except GoogleRefused as refused:
            log.warning("token for client %s (mailbox %s) refused by Google: %s", client_id, client.mailbox, refused)
            return error_answer(400, refused.error, refused.description, source="google")
        except GoogleUnreachable as error:
            log.warning("token for client %s: Google's token endpoint unreachable: %s", client_id, error)
            return error_answer(503, "temporarily_unavailable", f"Google's token endpoint: {error}", source="bridge")
        except KeyUnusable as error:
            log.warning("token for client %s: %s", client_id, error)
            return error_answer(400, "invalid_client", str(error), source="bridge")
        seconds = math.floor((token.expires_at - self.tokens.now()).total_seconds())
        log.info("token for client %s (mailbox %s) handed out, %d s left", client_id, client.mailbox, seconds)
        return web.json_response({"access_token": token.access_token, "token_type": "Bearer",
                                  "expires_in": max(seconds, 1), "scope": MAIL_SCOPE}, headers=_NO_STORE)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def application(endpoint: TokenEndpoint) -> web.Application:
    async def readyz(_request: web.Request) -> web.Response:
        # Not ready until the clients were read once: a bridge that cannot read its registry (no route to
        # the API server, a Role missing) would refuse every client as unknown.
        await endpoint.registry.refresh(missed=False)
        if not endpoint.registry.loaded:
            return web.Response(status=503, text="the client registry has not been read yet")
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/token", endpoint.token)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


async def serve(endpoint: TokenEndpoint, host: str, port: int, context: ssl.SSLContext) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(application(endpoint), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    log.info("serving https://%s:%d/token with %d clients", host, port, len(endpoint.registry))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("stopped")
