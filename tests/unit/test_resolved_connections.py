"""Resolved Connections kept between passes: one read for many MailConfigs, gone on a change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kcmail.connections import ConnectionFailure, ConnectionKey, ResolvedConnections
from kcmail.kube import Secret, secret_version
from kcmail.spec import ConnectionKind

pytestmark = pytest.mark.unit


class CountingKube:
    """A ClusterKeycloakConnection and its admin Secret; counts the reads, can be slow or lose the Secret."""

    def __init__(self) -> None:
        self.reads = 0
        self.password = "first"
        self.delay = 0.0

    async def connection(self, kind: ConnectionKind, name: str, namespace: str | None) -> dict[str, Any] | None:
        self.reads += 1
        await asyncio.sleep(self.delay)
        return {"spec": {"url": "https://keycloak.example",
                         "credentialsSecretRef": {"name": "admin", "namespace": "kcmail-system"}}}

    async def secret(self, namespace: str, name: str) -> Secret | None:
        self.reads += 1
        if not self.password:
            return None
        return Secret(namespace, name, "uid", self.password, {"username": "admin", "password": self.password})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


KEY = ConnectionKey(ConnectionKind.CLUSTER, "shared", None)


def _cache(kube: CountingKube, clock: Clock | None = None) -> ResolvedConnections:
    return ResolvedConnections(kube, clock or Clock())  # type: ignore[arg-type]


async def test_a_hundred_passes_at_once_share_one_read():
    kube = CountingKube()
    kube.delay = 0.05
    cache = _cache(kube)
    resolved = await asyncio.gather(*(cache.get(ConnectionKind.CLUSTER, "shared", f"tenant-{i}") for i in range(100)))
    assert {r.credentials.password for r in resolved} == {"first"}
    assert kube.reads == 2  # the Connection and its Secret, once
    await cache.get(ConnectionKind.CLUSTER, "shared", "tenant-x")
    assert kube.reads == 2


async def test_forget_makes_the_next_pass_read_the_change():
    kube = CountingKube()
    cache = _cache(kube)
    await cache.get(ConnectionKind.CLUSTER, "shared", "a")
    kube.password = "rotated"
    assert (await cache.get(ConnectionKind.CLUSTER, "shared", "a")).credentials.password == "first"
    cache.forget(KEY)
    assert (await cache.get(ConnectionKind.CLUSTER, "shared", "a")).credentials.password == "rotated"


async def test_a_read_under_way_when_the_connection_changes_is_not_kept():
    kube = CountingKube()
    kube.delay = 0.05
    cache = _cache(kube)
    early = asyncio.ensure_future(cache.get(ConnectionKind.CLUSTER, "shared", "a"))
    await asyncio.sleep(0.01)
    cache.forget(KEY)  # the event arrives while the first read waits for the API
    kube.password = "rotated"
    await early
    assert (await cache.get(ConnectionKind.CLUSTER, "shared", "a")).credentials.password == "rotated"


async def test_entries_expire_so_a_missed_event_costs_at_most_a_minute():
    kube, clock = CountingKube(), Clock()
    cache = _cache(kube, clock)
    await cache.get(ConnectionKind.CLUSTER, "shared", "a")
    kube.password = "rotated"
    clock.now += ResolvedConnections.MAX_AGE_SECONDS + 1
    assert (await cache.get(ConnectionKind.CLUSTER, "shared", "a")).credentials.password == "rotated"


async def test_failures_are_not_kept():
    kube = CountingKube()
    kube.password = ""
    cache = _cache(kube)
    with pytest.raises(ConnectionFailure):
        await cache.get(ConnectionKind.CLUSTER, "shared", "a")
    kube.password = "created"
    assert (await cache.get(ConnectionKind.CLUSTER, "shared", "a")).credentials.password == "created"


async def test_namespaced_connections_of_the_same_name_are_distinct():
    kube = CountingKube()
    cache = _cache(kube)
    await cache.get(ConnectionKind.NAMESPACED, "kc", "tenant-a")
    await cache.get(ConnectionKind.NAMESPACED, "kc", "tenant-b")
    assert kube.reads == 4


async def test_the_secret_versions_of_the_last_kept_read_outlive_its_entry():
    kube, clock = CountingKube(), Clock()
    cache = _cache(kube, clock)
    assert cache.resolved_version(KEY, "kcmail-system", "admin") is None
    await cache.get(ConnectionKind.CLUSTER, "shared", "tenant-a")
    assert cache.resolved_version(KEY, "kcmail-system", "admin") == secret_version("uid", "first")

    clock.now += ResolvedConnections.MAX_AGE_SECONDS + 1
    cache.forget(KEY)
    assert cache.resolved_version(KEY, "kcmail-system", "admin") == secret_version("uid", "first")
    kube.password = "second"
    await cache.get(ConnectionKind.CLUSTER, "shared", "tenant-a")
    assert cache.resolved_version(KEY, "kcmail-system", "admin") == secret_version("uid", "second")
    assert cache.resolved_version(KEY, "kcmail-system", "other") is None
