"""A pass's realm read and its write back are next to each other in what Keycloak receives, however many passes
queue for the client's slots: the write carries the whole representation read, so whatever reaches the realm
between the two (an edit in the admin console) is overwritten.

Keycloak here is a loopback stand-in (aiohttp) that records the order of the requests it receives; the passes are
whole reconciles through a real KeycloakClient.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from reconcile_fakes import NOW, FakeClients, FakeKube, ready

from kcmail.controller import Reconciler
from kcmail.keycloak import AdminCredentials, KeycloakClient
from kcmail.store import MailConfigObject

pytestmark = pytest.mark.unit

PASSES = 20


class RecordingKeycloak:
    def __init__(self) -> None:
        self.realms: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response({"access_token": "token", "expires_in": 300, "token_type": "Bearer"})

    async def serverinfo(self, request: web.Request) -> web.Response:
        return web.json_response({"systemInfo": {"version": "26.7.3"}})

    async def realm(self, request: web.Request) -> web.Response:
        name = request.match_info["realm"]
        self.requests.append((request.method, name))
        await asyncio.sleep(0.002)  # long enough for every other pass to queue behind this call
        if request.method == "PUT":
            self.realms[name] = await request.json()
            return web.Response(status=204)
        return web.json_response(self.realms.setdefault(name, {"realm": name, "attributes": {}}))


@pytest.fixture
async def keycloak() -> AsyncIterator[tuple[RecordingKeycloak, str]]:
    fake = RecordingKeycloak()
    app = web.Application()
    app.router.add_post("/realms/master/protocol/openid-connect/token", fake.token)
    app.router.add_get("/admin/serverinfo", fake.serverinfo)
    app.router.add_route("*", "/admin/realms/{realm}", fake.realm)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _mailconfig(i: int) -> MailConfigObject:
    return MailConfigObject.from_body({
        "metadata": {"namespace": "tenant-a", "name": f"mail-{i}", "uid": f"uid-{i}", "generation": 1,
                     "creationTimestamp": "2026-12-06T09:00:00Z"},
        "spec": {"connectionRef": {"kind": "KeycloakConnection", "name": "kc"}, "realm": f"realm-{i}",
                 "smtp": {"host": "smtp.example"}, "sender": {"from": "no-reply@acme.example"},
                 "auth": {"type": "Basic", "username": "u", "basic": {"passwordSecretRef": {"name": "smtp"}}}},
        "status": {}})


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_burst_of_passes_sends_each_realms_write_right_after_its_read(keycloak, concurrency):
    fake, url = keycloak
    client = KeycloakClient(url, "master", AdminCredentials(username="admin", password="pw"), concurrency=concurrency)
    reconciler = Reconciler(FakeKube(), FakeClients(client), now=lambda: NOW)  # type: ignore[arg-type]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(reconciler.reconcile(_mailconfig(i))
                                                          for i in range(PASSES))), timeout=60)
    finally:
        await client.aclose()

    assert {ready(result)[:2] for result in results} == {("True", "InSync")}
    for i in range(PASSES):
        read = fake.requests.index(("GET", f"realm-{i}"))
        write = fake.requests.index(("PUT", f"realm-{i}"))
        # With one slot nothing comes between; with more, only a call or two from each of the other slots,
        # never the queue of passes waiting for a slot (a slot per call put each write behind all of it).
        assert 0 < write - read <= 2 * concurrency - 1, fake.requests
