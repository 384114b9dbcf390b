"""What the operator holds for its lifetime: the Kubernetes and Keycloak clients, the reconciler, and one
wake-up signal per MailConfig so that a Secret, Connection or annotation change reaches its loop at once.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from kcmail.connections import KeycloakClients
from kcmail.defaults import KEYCLOAK_CONCURRENCY, PROBE_CONCURRENCY
from kcmail.kube import Kube, secret_version
from kcmail.loops import Loops
from kcmail.reconcile import REQUESTED_AT, Reconciler

# Backoff for failures that can pass (Keycloak down, 5xx): from a few seconds up to the interval.
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class OperatorOptions:
    namespaces: tuple[str, ...] = ()
    ca_bundle: str | None = None
    liveness: str | None = None
    # SMTP connections open at once across all MailConfigs' probes.
    probe_concurrency: int = PROBE_CONCURRENCY
    # Admin calls in flight at a time through each Connection's Keycloak client.
    keycloak_concurrency: int = KEYCLOAK_CONCURRENCY
    # False: MailConfigs may not use namespaced KeycloakConnections, so tenants cannot pick a Keycloak
    # endpoint (and with it a host kcmail connects to and quotes in status).
    namespaced_connections: bool = True


RECHECK_SECONDS = 30.0


def condition_true(status: Mapping[str, Any], kind: str) -> bool:
    """Whether ``status.conditions`` holds condition ``kind`` with status True (pure)."""
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])


def backoff(attempt: int, interval: datetime.timedelta) -> float:
    """2, 4, 8 … seconds, capped by the interval and by five minutes."""
    return min(RETRY_FIRST_SECONDS * 2 ** max(attempt - 1, 0), interval.total_seconds(), RETRY_MAX_SECONDS)


@dataclass
class Runtime:
    kube: Kube
    clients: KeycloakClients
    reconciler: Reconciler
    probe_http: httpx.AsyncClient
    loops: Loops = field(default_factory=Loops)
    # kcmail.secretwatch, started with the first object kopf hands to a handler.
    secret_watch: asyncio.Task[None] | None = None
    _wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    _seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _connection_generations: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    # Connections whose last check failed: the first MailConfig pass that reaches Keycloak through one has
    # it checked again at once, rather than leaving it failed until the five-minute timer.
    _failing_connections: set[tuple[Any, ...]] = field(default_factory=set)
    # When each was last checked after a pass: a Connection whose check keeps failing while its MailConfigs
    # succeed (its check needs more than a pass does) is checked again at most every RECHECK_SECONDS.
    _rechecked: dict[tuple[Any, ...], float] = field(default_factory=dict)

    def waker(self, key: str) -> asyncio.Event:
        return self._wakers.setdefault(key, asyncio.Event())

    def forget(self, key: str) -> None:
        self._wakers.pop(key, None)
        self._seen.pop(key, None)

    async def stop_loop(self, key: str) -> None:
        """Stop a MailConfig's loop (its pass in flight may finish) and drop what is kept for it."""
        await self.loops.stop(key, self.waker(key))
        self.forget(key)

    def wake(self, key: str) -> None:
        # Kept even before the loop exists: a Secret listed at start-up may arrive before its loop starts.
        self.waker(key).set()

    def wake_on_change(self, key: str, body: Any) -> None:
        """Wake a MailConfig's loop when its spec or requested-at annotation changed, not on status writes."""
        meta = body.get("metadata", {})
        mark = (meta.get("generation"), (meta.get("annotations") or {}).get(REQUESTED_AT))
        seen = self._seen.get(key)
        self._seen[key] = mark
        # The first sighting is the state the loop's first pass starts from: nothing to wake it for.
        if seen is not None and seen != mark:
            self.wake(key)

    def connection_checked(self, key: tuple[Any, ...], status: Mapping[str, Any]) -> None:
        """Remember whether a Connection's check (its new ``status``) found it Ready."""
        if condition_true(status, "Ready"):
            self._failing_connections.discard(key)
        else:
            self._failing_connections.add(key)

    def recheck_after_pass(self, key: tuple[Any, ...], status: Mapping[str, Any], now: float) -> bool:
        """Whether a MailConfig pass that wrote ``status`` proves a failing Connection ``key`` works again:
        its settings are Applied, so it logged in to Keycloak through it. ``now``: a monotonic clock."""
        if key not in self._failing_connections or not condition_true(status, "Applied"):
            return False
        if now - self._rechecked.get(key, -RECHECK_SECONDS) < RECHECK_SECONDS:
            return False
        self._failing_connections.discard(key)
        self._rechecked[key] = now
        return True

    def connection_changed(self, key: tuple[Any, ...], generation: Any, *, listed: bool = False) -> bool:
        """True the first time a Connection is seen and whenever its spec changes.

        One ``listed`` at start-up is only remembered: every loop's first pass reads it anyway, and waking
        them all for it would double every MailConfig's first pass.
        """
        changed = self._connection_generations.get(key) != generation
        self._connection_generations[key] = generation
        return changed and not listed


def secret_is_news(uid: str, resource_version: str, applied_version: str | None) -> bool:
    """Whether an event of a Secret carries content its user has not applied (a MailConfig) or resolved (a
    Connection); ``None``: it has none.

    The Secrets listed at start-up, or listed again after the watch lost its place, are mostly the very
    ones their users applied before: waking each loop for them would cost every MailConfig a second realm
    read right after its first, and every Connection a check.
    """
    return secret_version(uid, resource_version) != applied_version


def first_pass_can_wait(status: Mapping[str, Any], generation: int, annotations: Mapping[str, str]) -> bool:
    """After the operator starts: whether a MailConfig's first pass may wait for its slot in the interval.

    Only when Kubernetes shows nothing to do: the current generation is Ready and no pass was requested.
    A changed Secret wakes the loop at once (the start-up listing carries it). Otherwise a restart would
    read every realm at once, and again at each MailConfig's slot moments later: two reads in less than
    an interval, a thousand of them in a burst.
    """
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return (status.get("observedGeneration") == generation and ready is not None and ready.get("status") == "True"
            and annotations.get(REQUESTED_AT) in (None, status.get("lastHandledRequestedAt")))
