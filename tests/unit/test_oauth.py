"""Token endpoint answers → tokens or catalogue reasons, and the token cache's reuse rule."""

from __future__ import annotations

import datetime
import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcmail.conditions import Failure, Reason
from kcmail.oauth import RENEW_BEFORE, Token, TokenClient, TokenFailure, TokenRequest, classify_response

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def _classify(status: int, body: object, content_type: str = "application/json") -> Token | Failure:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_response(status, raw, content_type, NOW)


def test_a_token_and_its_expiry():
    token = _classify(200, {"access_token": "abc", "expires_in": 3599, "token_type": "Bearer"})
    assert isinstance(token, Token)
    assert token.expires_at == NOW + datetime.timedelta(seconds=3599)
    assert "abc" not in repr(token)


def test_expires_in_as_a_string_or_missing_follows_keycloak():
    as_string = _classify(200, {"access_token": "a", "expires_in": "300"})
    missing = _classify(200, {"access_token": "a"})
    assert isinstance(as_string, Token)
    assert isinstance(missing, Token)
    assert as_string.expires_at == NOW + datetime.timedelta(seconds=300)
    assert missing.expires_at == NOW + datetime.timedelta(seconds=60)


@pytest.mark.parametrize(("error", "reason"), [
    ("invalid_client", Reason.INVALID_CLIENT),
    ("unauthorized_client", Reason.INVALID_CLIENT),
    ("invalid_scope", Reason.INVALID_SCOPE),
    ("invalid_grant", Reason.TOKEN_ENDPOINT_ERROR),
])
def test_oauth2_errors_keep_the_servers_words(error, reason):
    description = "AADSTS7000215: Invalid client secret provided."
    failure = _classify(401, {"error": error, "error_description": description})
    assert isinstance(failure, Failure)
    assert failure.reason is reason
    assert error in failure.message
    assert description in failure.message


@pytest.mark.parametrize(("source", "reason"), [("google", Reason.GOOGLE_REFUSED), ("bridge", Reason.INVALID_CLIENT),
                                                 (None, Reason.INVALID_CLIENT)])
def test_the_bridges_mark_tells_googles_refusal_from_the_bridges_own(source, reason):
    # kcmail bridge answers unauthorized_client in Google's words when delegation is missing: that is not
    # the bridge refusing its client (whose credentials are right), so it must not read as InvalidClient.
    description = ("Client is unauthorized to retrieve access tokens using this method, or client not authorized "
                   "for any of the scopes requested.")
    body = {"error": "unauthorized_client", "error_description": description}
    failure = _classify(400, body if source is None else {**body, "error_source": source})
    assert isinstance(failure, Failure)
    assert failure.reason is reason
    assert description in failure.message


@pytest.mark.parametrize(("status", "reason"), [(502, Reason.TOKEN_ENDPOINT_UNAVAILABLE),
                                                 (404, Reason.TOKEN_ENDPOINT_ERROR)])
def test_a_non_json_body_is_described_and_a_5xx_one_is_an_outage(status, reason):
    failure = _classify(status, b"<html>Bad gateway</html>", "text/html; charset=utf-8")
    assert isinstance(failure, Failure)
    assert failure.reason is reason
    assert f"HTTP {status}" in failure.message
    assert "text/html" in failure.message
    assert "Bad gateway" not in failure.message


@pytest.mark.parametrize(("status", "body"), [
    (503, {"error": "temporarily_unavailable"}),
    (500, {"error": "server_error", "error_description": "AADSTS90033: A transient error has occurred."}),
    (400, {"error": "temporarily_unavailable"}),
    (429, {"error": "too_many_requests"}),
])
def test_an_endpoint_down_or_busy_is_unavailable_not_an_error(status, body):
    failure = _classify(status, body)
    assert isinstance(failure, Failure)
    assert failure.reason is Reason.TOKEN_ENDPOINT_UNAVAILABLE
    assert body["error"] in failure.message


@pytest.mark.parametrize(("error", "step"), [
    (httpx.ConnectTimeout("timed out"), "timed out connecting"),
    (httpx.ReadTimeout("The operation did not complete (read)"), "timed out waiting for the answer"),
    (httpx.WriteTimeout("timed out"), "timed out sending the request"),
])
async def test_a_timeout_says_timeout_and_at_which_step(error, step):
    def answer(request: httpx.Request) -> httpx.Response:
        raise error

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        with pytest.raises(TokenFailure) as caught:
            await TokenClient(http, now=lambda: NOW).token(TokenRequest(
                url="https://login.example/token", client_id="app", client_secret="s", scope="", secret_version="v"))
    assert caught.value.failure.reason is Reason.TOKEN_ENDPOINT_UNAVAILABLE
    assert step in caught.value.failure.message
    assert "TLS" not in caught.value.failure.message


def test_a_success_without_access_token_is_an_error():
    failure = _classify(200, {"token_type": "Bearer"})
    assert isinstance(failure, Failure)
    assert failure.reason is Reason.TOKEN_ENDPOINT_ERROR


@given(st.binary(max_size=200), st.integers(min_value=100, max_value=599))
def test_any_answer_is_classified_without_raising(body, status):
    assert isinstance(classify_response(status, body, "application/json", NOW), Token | Failure)


async def test_tokens_are_reused_until_seconds_before_expiry():
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"access_token": f"t{len(calls)}", "expires_in": 300})

    clock = [NOW]
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = TokenClient(http, now=lambda: clock[0])
        request = TokenRequest(url="https://login.example/token", client_id="app", client_secret="s",
                               scope="smtp.send", secret_version="uid/1")
        first = await client.token(request)
        # Four seconds before expiry: renewing a minute early cost 1.25 grants per 5-minute lifetime.
        clock[0] = NOW + datetime.timedelta(seconds=296)
        assert await client.token(request) is first
        clock[0] = NOW + datetime.timedelta(seconds=300) - RENEW_BEFORE - datetime.timedelta(milliseconds=1)
        assert await client.token(request) is first
        clock[0] += datetime.timedelta(milliseconds=2)
        assert (await client.token(request)).access_token == "t2"
        rotated = TokenRequest(url=request.url, client_id="app", client_secret="s2", scope="smtp.send",
                               secret_version="uid/2")
        assert (await client.token(rotated)).access_token == "t3"
    form = dict(httpx.QueryParams(calls[0].content.decode()))
    assert form == {"grant_type": "client_credentials", "client_id": "app", "client_secret": "s", "scope": "smtp.send"}
    assert "authorization" not in calls[0].headers


async def test_secrets_holding_the_same_credential_share_one_token_and_a_new_secret_gets_its_own():
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"access_token": f"t{len(calls)}", "expires_in": 300})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = TokenClient(http, now=lambda: NOW)
        tokens = [await client.token(TokenRequest(url="https://login.example/token", client_id="app",
                                                  client_secret="s", scope="smtp.send",
                                                  secret_version=f"secret-{i}/1")) for i in range(5)]
        rotated = await client.token(TokenRequest(url="https://login.example/token", client_id="app",
                                                  client_secret="s2", scope="smtp.send", secret_version="secret-0/2"))
    assert [t.access_token for t in tokens] == ["t1"] * 5
    assert rotated.access_token == "t2"
    assert len(calls) == 2
