"""The bound on Keycloak admin calls in flight: from `kcmail run --keycloak-concurrency` and the chart's value to
every Connection's client, and a connection pool that lets exactly that many calls through and keeps them open.

Keycloak here is a loopback stand-in (aiohttp) for its token endpoint and realm reads. It holds every realm read
until the expected number are in flight at once: a bound or a pool smaller than that leaves the reads waiting
until the client's request timeout fails them. A larger bound shows in the connections: each call let through
opens one when none is idle, before its read reaches the stand-in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from aiohttp import web

from kcmail import cli, defaults, handlers
from kcmail.connections import ConnectionKey, ResolvedConnection
from kcmail.keycloak import AdminCredentials, KeycloakClient
from kcmail.options import OperatorOptions
from kcmail.spec import ConnectionKind

pytestmark = pytest.mark.unit

CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "kcmail" / "values.yaml"
ADMIN = AdminCredentials(username="admin", password="admin-password")


class FakeKeycloak:
    """Answers the admin login and realm reads; records the connections the reads came on."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.connections: set[Any] = set()
        self._hold_until = 1
        self._full = asyncio.Event()

    def hold_until(self, count: int) -> None:
        """Answer no realm read until ``count`` of them are in flight at once."""
        self._hold_until = count
        self._full = asyncio.Event()

    def release(self) -> None:
        self._full.set()

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response({"access_token": "token", "expires_in": 300, "token_type": "Bearer",
                                  "refresh_token": "refresh", "refresh_expires_in": 1800})

    async def realm(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        self.connections.add(request.transport.get_extra_info("peername"))
        self.in_flight += 1
        if self.in_flight >= self._hold_until:
            self._full.set()
        try:
            await self._full.wait()
        finally:
            self.in_flight -= 1
        return web.json_response({"realm": request.match_info["realm"]})


@pytest.fixture
async def keycloak() -> AsyncIterator[tuple[FakeKeycloak, str]]:
    fake = FakeKeycloak()
    app = web.Application()
    app.router.add_post("/realms/master/protocol/openid-connect/token", fake.token)
    app.router.add_get("/admin/realms/{realm}", fake.realm)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        fake.release()  # reads still held after a failed test must not hold up the shutdown
        await runner.cleanup()


async def _burst(client: KeycloakClient, calls: int) -> None:
    realms = await asyncio.gather(*(client.read_realm(f"realm-{i}") for i in range(calls)))
    assert [realm["realm"] for realm in realms] == [f"realm-{i}" for i in range(calls)]


def test_run_hands_the_keycloak_bound_to_the_operator(monkeypatch):
    given: list[OperatorOptions] = []
    monkeypatch.setattr(handlers, "configure", given.append)
    monkeypatch.setattr(kopf, "run", lambda **_: None)
    # -v: the quiet default would set the httpx and kopf loggers' levels for the whole test session.
    assert cli.main(["run", "-v", "--no-leader-election", "--metrics-address", "off",
                     "--keycloak-concurrency", "48"]) == 0
    assert cli.main(["run", "-v", "--no-leader-election", "--metrics-address", "off"]) == 0
    assert [options.keycloak_concurrency for options in given] == [48, defaults.KEYCLOAK_CONCURRENCY]
    assert OperatorOptions().keycloak_concurrency == defaults.KEYCLOAK_CONCURRENCY


@pytest.mark.parametrize("value", ["0", "-4", "2.5", "many"])
def test_a_keycloak_bound_that_is_not_a_positive_whole_number_is_refused(value, monkeypatch, capsys):
    monkeypatch.setattr(handlers, "configure", lambda options: pytest.fail(f"the operator was configured: {options}"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--keycloak-concurrency", value])
    assert exit_.value.code == 2
    assert (f"argument --keycloak-concurrency: needs a whole number of 1 or more, not '{value}'"
            in capsys.readouterr().err)


def test_the_chart_default_is_the_operators():
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert values["keycloakConcurrency"] == defaults.KEYCLOAK_CONCURRENCY
    assert values["probeConcurrency"] == defaults.PROBE_CONCURRENCY


async def test_the_started_operator_gives_each_connection_client_its_configured_bound(keycloak, monkeypatch):
    fake, url = keycloak
    monkeypatch.setattr(handlers, "OPTIONS", OperatorOptions(keycloak_concurrency=7))
    monkeypatch.setattr(handlers, "_runtime", None)
    await handlers.startup(settings=kopf.OperatorSettings())
    try:
        async with handlers.runtime().clients.using(ResolvedConnection(
                key=ConnectionKey(ConnectionKind.CLUSTER, "main", None), url=url, admin_realm="master",
                credentials=ADMIN, fingerprint="1")) as client:
            fake.hold_until(7)
            await _burst(client, 20)
    finally:
        await handlers.cleanup()
    assert len(fake.connections) == 7


async def test_every_call_the_bound_lets_through_gets_a_connection_and_keeps_it(keycloak):
    fake, url = keycloak
    # More than the 20 idle connections python-keycloak's own pool keeps.
    bound = 24
    client = KeycloakClient(url, "master", ADMIN, concurrency=bound)
    try:
        for _ in range(2):
            fake.hold_until(bound)
            await _burst(client, bound)
    finally:
        await client.aclose()
    # The second burst found every connection of the first still open.
    assert len(fake.connections) == bound
