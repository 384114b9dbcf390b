"""kcmail.connections.KeycloakClients: one client per Connection and fingerprint, and a replaced client closed
only when the passes using it are done (the real Keycloak's side: tests/integration/test_keycloak_logins.py)."""

from __future__ import annotations

import asyncio

import pytest

from kcmail.connections import ConnectionKey, KeycloakClients, ResolvedConnection
from kcmail.keycloak import AdminCredentials, KeycloakClient
from kcmail.spec import ConnectionKind

pytestmark = pytest.mark.unit


def _connection(fingerprint: str, name: str = "main") -> ResolvedConnection:
    # Nothing listens there: no test here makes a call.
    return ResolvedConnection(key=ConnectionKey(ConnectionKind.CLUSTER, name, None), url="http://127.0.0.1:9",
                              admin_realm="master", credentials=AdminCredentials(username="a", password="p"),
                              fingerprint=fingerprint)


async def test_passes_meeting_a_new_fingerprint_at_once_share_one_new_client() -> None:
    clients = KeycloakClients(concurrency=4)
    held = asyncio.Event()
    used: list[KeycloakClient] = []

    async def one_pass(fingerprint: str) -> None:
        async with clients.using(_connection(fingerprint)) as keycloak:
            used.append(keycloak)
            await held.wait()

    first = asyncio.create_task(one_pass("1"))
    await asyncio.sleep(0)
    rotated = [asyncio.create_task(one_pass("2")) for _ in range(50)]
    await asyncio.sleep(0)
    held.set()
    await asyncio.gather(first, *rotated)
    await clients.aclose()

    assert len({id(keycloak) for keycloak in used}) == 2
    assert used[0] is not used[1]
    assert all(keycloak is used[1] for keycloak in used[1:])


async def test_a_replaced_client_closes_when_its_last_pass_leaves_and_not_before() -> None:
    clients = KeycloakClients(concurrency=4)
    async with clients.using(_connection("1")) as old:
        async with clients.using(_connection("1")) as same:
            async with clients.using(_connection("2")) as new:
                assert same is old
                assert new is not old
            assert not old.closed
        assert not old.closed
    assert old.closed
    assert not new.closed
    async with clients.using(_connection("3")):
        pass
    assert new.closed  # nobody used it any more when it was replaced
    await clients.aclose()


async def test_shutdown_closes_every_client_a_replaced_one_still_in_use_included() -> None:
    clients = KeycloakClients(concurrency=4)
    async with (clients.using(_connection("1")) as old, clients.using(_connection("2")) as new,
                clients.using(_connection("1", "other")) as other):
        await clients.aclose()
        assert [old.closed, new.closed, other.closed] == [True, True, True]
