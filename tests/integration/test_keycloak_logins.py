"""Logins as the real Keycloak counts them: a revoked admin token renewed once for all the calls that met it, and
one admin client (one login) per Connection after its admin Secret rotates, however many passes ask at once.

Keycloak counts the requests its token endpoint serves (its /metrics on the management port), so each count is
the server's own.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from bench.keycloak_counts import KeycloakCounts

from kcmail.connections import ConnectionKey, KeycloakClients, ResolvedConnection
from kcmail.devenv.certs import client_context
from kcmail.keycloak import AdminCredentials, KeycloakClient
from kcmail.spec import ConnectionKind

pytestmark = pytest.mark.integration

CALLERS = 50


def _token_requests(devenv) -> int:
    if not devenv.keycloak_management_url:
        pytest.skip("this environment predates Keycloak's metrics: restart it with `kcmail dev down` and `up`")
    counts = KeycloakCounts(devenv.keycloak_management_url, devenv.ca_file)
    try:
        return counts.requests(method="POST", uri="/realms/{realm}/protocol/{protocol}/token")
    finally:
        counts.close()


def _admin(devenv) -> AdminCredentials:
    return AdminCredentials(username=devenv.keycloak_admin_user, password=devenv.keycloak_admin_password)


def _end_admin_sessions(devenv) -> None:
    """Log the admin user out everywhere: every access token issued to it is refused from now on."""
    with httpx.Client(base_url=devenv.keycloak_url, verify=client_context(devenv.ca_file), timeout=30) as http:
        token = http.post("/realms/master/protocol/openid-connect/token", data={
            "grant_type": "password", "client_id": "admin-cli", "username": devenv.keycloak_admin_user,
            "password": devenv.keycloak_admin_password}).raise_for_status().json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        users = http.get("/admin/realms/master/users", params={"username": devenv.keycloak_admin_user,
                                                               "exact": "true"}, headers=auth).raise_for_status()
        http.post(f"/admin/realms/master/users/{users.json()[0]['id']}/logout", headers=auth).raise_for_status()


async def test_fifty_calls_that_meet_a_revoked_admin_token_renew_it_once(devenv):
    keycloak = KeycloakClient(devenv.keycloak_url, "master", _admin(devenv), verify=client_context(devenv.ca_file))
    try:
        await keycloak.read_realm(devenv.issuer_realm)  # logged in, with a token valid for minutes
        _end_admin_sessions(devenv)
        before = _token_requests(devenv)
        realms = await asyncio.wait_for(asyncio.gather(*(keycloak.read_realm(devenv.issuer_realm)
                                                         for _ in range(CALLERS))), timeout=120)
        renewals = _token_requests(devenv) - before
    finally:
        await keycloak.aclose()
    assert {realm["realm"] for realm in realms} == {devenv.issuer_realm}
    # The refresh token's session is gone as well: one refused refresh, then one login. Renewing per 401 (as
    # python-keycloak does) made two requests for each of the fifty calls.
    assert renewals == 2


def _connection(devenv, fingerprint: str) -> ResolvedConnection:
    return ResolvedConnection(key=ConnectionKey(ConnectionKind.CLUSTER, "main", None), url=devenv.keycloak_url,
                              admin_realm="master", credentials=_admin(devenv), ca_pem=_ca(devenv),
                              fingerprint=fingerprint)


def _ca(devenv) -> str:
    with open(devenv.ca_file) as ca:
        return ca.read()


async def test_fifty_passes_meeting_a_rotated_admin_secret_share_one_new_client_and_one_login(devenv):
    clients = KeycloakClients(concurrency=8)
    before_rotation = _connection(devenv, "admin Secret at revision 1")
    rotated = _connection(devenv, "admin Secret at revision 2")
    used: list[KeycloakClient] = []

    async def one_pass() -> str:
        async with clients.using(rotated) as keycloak:
            used.append(keycloak)
            realm = await keycloak.read_realm(devenv.issuer_realm)
            return str(realm["realm"])

    try:
        async with clients.using(before_rotation) as old:
            await old.read_realm(devenv.issuer_realm)
            logins_before = _token_requests(devenv)
            realms = await asyncio.wait_for(asyncio.gather(*(one_pass() for _ in range(CALLERS))), timeout=120)
            logins = _token_requests(devenv) - logins_before
            # A pass that began before the rotation finishes on its own client.
            assert not old.closed
            await old.read_realm(devenv.issuer_realm)
        assert old.closed
    finally:
        await clients.aclose()
    assert realms == [devenv.issuer_realm] * CALLERS
    assert len({id(keycloak) for keycloak in used}) == 1
    assert logins == 1
    assert used[0].closed  # closed with the operator
