"""Answers from servers kcmail does not control: read up to a limit, quoted only as far as their protocol
goes, and never with what kcmail sent. Real sockets on loopback: aiohttp servers answering as a hostile
token endpoint or Keycloak would, and the echoing servers of kcmail.devenv.hostile."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from kcmail.answers import TOKEN_ANSWER_LIMIT, AnswerTooLarge, limited_client
from kcmail.conditions import Reason
from kcmail.devenv.hostile import hostile_servers
from kcmail.keycloak import AdminCredentials, KeycloakClient, KeycloakFailure
from kcmail.oauth import TokenClient, TokenFailure, TokenRequest
from kcmail.smtp_probe import SmtpCredentials, SmtpTarget, probe_smtp
from kcmail.spec import AuthType, Security

pytestmark = pytest.mark.unit

Handler = Callable[[web.Request], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Any]]:
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _endless(request: web.Request) -> web.StreamResponse:
    """A body that never ends within any limit, sent without a length."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for _ in range(200):  # 12.8 MiB at most: past every limit, and bounded
        await response.write(b'{"access_token":"' + b"x" * 65_536)
    return response


async def test_an_answer_past_its_limit_is_refused_as_it_arrives_and_by_its_declared_length(serve):
    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (TOKEN_ANSWER_LIMIT + 1))

    async def within(request: web.Request) -> web.Response:
        # What the client asked for: no compression, so that what it counts is what it keeps.
        return web.Response(body=b"x" * TOKEN_ANSWER_LIMIT, headers={"X-Asked": request.headers["Accept-Encoding"]})

    url = await serve({"/endless": _endless, "/declared": declared, "/within": within})
    async with limited_client(TOKEN_ANSWER_LIMIT) as http:
        for path in ("/endless", "/declared"):
            with pytest.raises(AnswerTooLarge, match="larger than 64 KiB"):
                await http.get(url + path)
        answer = await http.get(url + "/within")
    assert (len(answer.content), answer.headers["X-Asked"]) == (TOKEN_ANSWER_LIMIT, "identity")


async def test_a_token_endpoint_that_answers_without_end_is_a_token_endpoint_error(serve):
    url = await serve({"/token": _endless})
    async with limited_client(TOKEN_ANSWER_LIMIT) as http:
        with pytest.raises(TokenFailure) as failure:
            await TokenClient(http).token(TokenRequest(f"{url}/token", "app", "secret", "", "v1"))
    assert failure.value.failure.reason is Reason.TOKEN_ENDPOINT_ERROR
    assert "larger than 64 KiB" in failure.value.failure.message


async def _page(request: web.Request) -> web.Response:
    return web.Response(text="<html>INTERNAL-PAGE build server</html>", content_type="text/html")


async def _list(request: web.Request) -> web.Response:
    return web.json_response([{"realm": "acme"}])


@pytest.mark.parametrize(("answer", "words"), [
    (_page, "answer is not JSON"),
    (_list, "answer is not a JSON object"),
    (_endless, "larger than 4 MiB"),
])
async def test_a_keycloak_that_answers_otherwise_is_keycloak_answer_invalid_and_unquoted(serve, answer, words):
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 300, "refresh_token": "r",
                                  "refresh_expires_in": 1800, "token_type": "Bearer"})

    url = await serve({"/realms/master/protocol/openid-connect/token": token, "/admin/realms/acme": answer})
    client = KeycloakClient(url, "master", AdminCredentials(username="admin", password="pw"))
    try:
        with pytest.raises(KeycloakFailure) as failure:
            await client.read_realm("acme")
    finally:
        await client.aclose()
    assert failure.value.failure.reason is Reason.KEYCLOAK_ANSWER_INVALID
    assert words in failure.value.failure.message
    assert "INTERNAL-PAGE" not in failure.value.failure.message


async def test_a_login_answer_without_a_token_is_keycloak_answer_invalid(serve):
    url = await serve({"/realms/master/protocol/openid-connect/token": _page})
    client = KeycloakClient(url, "master", AdminCredentials(username="admin", password="pw"))
    try:
        with pytest.raises(KeycloakFailure) as failure:
            await client.version(fresh=True)
    finally:
        await client.aclose()
    assert failure.value.failure.reason is Reason.KEYCLOAK_ANSWER_INVALID
    assert "INTERNAL-PAGE" not in failure.value.failure.message


async def test_the_echoing_smtp_server_and_a_banner_reveal_neither_the_token_nor_the_service():
    banner = f"INTERNAL-BANNER-{uuid.uuid4().hex[:6]}"
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzbXRwLWFwcCJ9." + "s" * 40
    tls = ssl.create_default_context()
    with hostile_servers(banner) as servers:
        echoed = await probe_smtp(SmtpTarget("127.0.0.1", servers.echo_smtp_port, Security.NONE, 5, 5),
                                  SmtpCredentials(AuthType.XOAUTH2, "no-reply@acme.example", token), tls)
        greeted = await probe_smtp(SmtpTarget("127.0.0.1", servers.banner_port, Security.NONE, 5, 5),
                                   SmtpCredentials(AuthType.XOAUTH2, "no-reply@acme.example", token), tls)
    assert echoed.failure is not None
    assert echoed.failure.reason is Reason.AUTHENTICATION_REJECTED
    assert "535 5.7.8" in echoed.failure.message
    assert greeted.failure is not None
    assert "not an SMTP reply" in greeted.failure.message
    for result in (echoed, greeted):
        text = result.failure.message + " ".join(step.detail for step in result.steps)
        assert token[:20] not in text
        assert "Bearer" not in text
        assert banner not in text


async def test_the_echoing_token_endpoint_reveals_no_spelling_of_the_secret():
    secret = f"s3cret/{uuid.uuid4().hex}+="
    with hostile_servers("x") as servers:
        async with limited_client(TOKEN_ANSWER_LIMIT) as http:
            with pytest.raises(TokenFailure) as failure:
                await TokenClient(http).token(TokenRequest(servers.echo_token_url, "app", secret, "", "v1"))
    message = failure.value.failure.message
    assert failure.value.failure.reason is Reason.INVALID_CLIENT
    assert "invalid_client" in message
    for spelling in (secret, "s3cret%2F", "czNjcmV0L"):
        assert spelling not in message
    assert "eyJ" not in message
