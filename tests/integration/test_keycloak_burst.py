"""A thousand MailConfigs' first passes at once, as Keycloak sees them: one version read, and no more requests in
flight than the client's bound.

Keycloak counts the requests it serves (its /metrics on the management port), so the count is the
server's own, not the client's.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from bench.keycloak_counts import KeycloakCounts

from kcmail.devenv.certs import client_context
from kcmail.keycloak import AdminCredentials, KeycloakClient

pytestmark = pytest.mark.integration


def _serverinfo_reads(devenv) -> int:
    if not devenv.keycloak_management_url:
        pytest.skip("this environment predates Keycloak's metrics: restart it with `kcmail dev down` and `up`")
    counts = KeycloakCounts(devenv.keycloak_management_url, devenv.ca_file)
    try:
        return counts.requests(method="GET", uri="/admin/serverinfo")
    finally:
        counts.close()


async def test_fifty_passes_asking_for_the_version_at_once_cost_keycloak_one_read(devenv):
    keycloak = KeycloakClient(devenv.keycloak_url, "master",
                              AdminCredentials(username=devenv.keycloak_admin_user,
                                               password=devenv.keycloak_admin_password),
                              verify=client_context(devenv.ca_file))
    before = _serverinfo_reads(devenv)
    try:
        versions = await asyncio.wait_for(asyncio.gather(*(keycloak.version() for _ in range(50))), timeout=60)
        # A read asked for after the first finished is served from memory as well.
        later = await keycloak.version()
    finally:
        await keycloak.aclose()
    assert set(versions) == {later}
    assert ".".join(map(str, later)) == devenv.keycloak_version
    assert _serverinfo_reads(devenv) - before == 1


async def test_a_failed_version_read_fails_every_pass_that_shared_it_and_the_next_one_asks_again(devenv):
    keycloak = KeycloakClient(devenv.keycloak_url, "master",
                              AdminCredentials(username=devenv.keycloak_admin_user, password="wrong"),
                              verify=client_context(devenv.ca_file))
    try:
        first = await asyncio.gather(*(keycloak.version() for _ in range(5)), return_exceptions=True)
        second = await asyncio.gather(keycloak.version(), return_exceptions=True)
    finally:
        await keycloak.aclose()
    assert [type(outcome).__name__ for outcome in first + second] == ["KeycloakFailure"] * 6


async def test_a_burst_of_realm_reads_reaches_keycloak_no_more_at_a_time_than_the_bound_and_all_succeed(devenv):
    """A thousand MailConfigs created at once used to queue in the client's pool until PoolTimeout."""
    port = httpx.URL(devenv.keycloak_url).port
    gauge = re.compile(rf'^http_server_active_requests\{{[^}}]*server_port="{port}"[^}}]*\}}\s+(\S+)$', re.MULTILINE)
    _serverinfo_reads(devenv)  # skips on an environment without metrics
    # Below the default and the burst's size, so that a client ignoring it would show above it.
    bound = 12
    keycloak = KeycloakClient(devenv.keycloak_url, "master",
                              AdminCredentials(username=devenv.keycloak_admin_user,
                                               password=devenv.keycloak_admin_password),
                              verify=client_context(devenv.ca_file), concurrency=bound)
    seen: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        async with httpx.AsyncClient(verify=client_context(devenv.ca_file), timeout=30) as http:
            for _ in range(3000):  # the burst ends well within 300 s; each scrape takes some milliseconds
                if done.is_set():
                    return
                response = await http.get(f"{devenv.keycloak_management_url}/metrics")
                seen.extend(float(value) for value in gauge.findall(response.text))

    sampler = asyncio.create_task(sample())
    try:
        realms = await asyncio.wait_for(asyncio.gather(*(keycloak.read_realm(devenv.issuer_realm)
                                                         for _ in range(150))), timeout=300)
    finally:
        done.set()
        await sampler
        await keycloak.aclose()
    assert {realm["realm"] for realm in realms} == {devenv.issuer_realm}
    assert seen, "the sampler never read Keycloak's gauge"
    assert max(seen) <= bound
