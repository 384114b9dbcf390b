"""Leader election on a coordination.k8s.io/v1 Lease: one `kcmail run` acts, the others wait to take over.

The rules are client-go's, with its timings (15 s lease, 10 s renew deadline, 2 s retry), so that kcmail
behaves like every controller an operator team already runs:

- A Lease is free when it names no holder, or when the record a follower read has not changed for the
  lease duration, measured on the follower's own monotonic clock from when it first saw that record (never
  by comparing the holder's timestamps with the local clock, which may be skewed).
- Every write carries the resourceVersion last read: of two processes that claim at once, the API server
  accepts one and answers 409 to the other.
- The leader renews every retry period. Unless a renewal has succeeded within the renew deadline of the
  last success, or the moment it reads the Lease naming another holder, it has lost the lease and must
  stop acting at once. The deadline is shorter than the lease duration, so it stops before any follower
  may take over.
- On a clean shutdown the leader empties the holder (and shortens the duration to 1 s), so a follower
  takes over within a retry period instead of a lease duration.

The decisions are pure functions of the Lease as read, our identity and the clock (unit-tested); the
:class:`Elector` does the requests, on a session of its own (``apisession.logged_in_kube``) so that its
renewals never queue behind the operator's requests. The official client library's elector is not used:
it runs in threads on the synchronous client, which kcmail does not load (``kube`` says why), and it
neither releases the Lease on shutdown nor stops before its renew deadline when another holder shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import logging
import os
import random
import signal
import socket
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import aiohttp.web

from kcmail import metrics
from kcmail.kube import Kube, KubeError

log = logging.getLogger("kcmail.leader")

# client-go's wait.JitterUntil factor for the wait between acquisition attempts: followers spread out.
JITTER_FACTOR = 1.2
# Where Kubernetes tells a pod its own namespace.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The exit status of a `kcmail run` that lost the Lease: the kubelet restarts it, as a follower.
LOST_LEASE_EXIT = 3
# MicroTime, as the Lease's acquireTime and renewTime are written.
MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class LeaseLost(Exception):
    """This process led, and may no longer act: the Lease names another holder, or it went unrenewed."""


@dataclasses.dataclass(frozen=True)
class Timings:
    """How long a lease lasts, how long a leader keeps trying to renew it, and how often anyone tries."""

    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # client-go's own checks: the leader must give up before a follower may take over, and have time
        # for more than one attempt before it does.
        if self.retry_period <= 0:
            raise ValueError("the retry period must be positive")
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError(f"the renew deadline must exceed {JITTER_FACTOR} retry periods")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("the lease duration must exceed the renew deadline")


CLIENT_GO = Timings()


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec: who holds it, for how long, since when, and how often it changed hands."""

    holder: str
    duration_seconds: int
    acquire_time: datetime.datetime | None
    renew_time: datetime.datetime | None
    transitions: int

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""),
                   duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=parse_microtime(spec.get("acquireTime")),
                   renew_time=parse_microtime(spec.get("renewTime")),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def spec(self) -> dict[str, Any]:
        return {"holderIdentity": self.holder, "leaseDurationSeconds": self.duration_seconds,
                "acquireTime": format_microtime(self.acquire_time), "renewTime": format_microtime(self.renew_time),
                "leaseTransitions": self.transitions}


def parse_microtime(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def format_microtime(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.astimezone(datetime.UTC).strftime(MICROTIME)


@dataclasses.dataclass(frozen=True)
class Observation:
    """A Lease record and when (our monotonic clock) we first read it as it is."""

    record: LeaseRecord
    seen_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """What we know after reading ``record`` at ``now``: its lease runs from when it last changed for us."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


class Decision(enum.Enum):
    CLAIM = "claim"  # write our claim (acquire, or renew our own)
    WAIT = "wait"  # another holder's lease runs
    LOST = "lost"  # we led, and the Lease names another holder


def decide(observation: Observation, identity: str, now: float, *, leading: bool) -> Decision:
    """What to do about the Lease as observed, at ``now`` on the clock ``observation`` was stamped with."""
    holder = observation.record.holder
    if not holder or holder == identity:
        return Decision.CLAIM
    if leading:
        return Decision.LOST
    if now < observation.seen_at + observation.record.duration_seconds:
        return Decision.WAIT
    return Decision.CLAIM


def claim(record: LeaseRecord | None, identity: str, duration: int, wall_now: datetime.datetime) -> LeaseRecord:
    """The record that makes (or keeps) ``identity`` the holder: a renewal keeps the acquisition's facts."""
    if record is not None and record.holder == identity:
        return dataclasses.replace(record, duration_seconds=duration, renew_time=wall_now)
    return LeaseRecord(holder=identity, duration_seconds=duration, acquire_time=wall_now, renew_time=wall_now,
                       transitions=0 if record is None else record.transitions + 1)


def released(record: LeaseRecord, wall_now: datetime.datetime) -> LeaseRecord:
    """The record a leader leaves on a clean shutdown: no holder, so a follower need not wait it out."""
    return LeaseRecord(holder="", duration_seconds=1, acquire_time=wall_now, renew_time=wall_now,
                       transitions=record.transitions)


def must_stop(last_renewed: float, now: float, timings: Timings) -> bool:
    """Whether a leader whose last successful renewal started at ``last_renewed`` must stop acting."""
    return now - last_renewed >= timings.renew_deadline


def identity(environ: Mapping[str, str], *, in_cluster: bool, hostname: str, pid: int, suffix: str) -> str:
    """Who we are in the Lease: the pod's name (and a suffix: a restarted container is a new candidate),
    or, outside a cluster, the host and the process."""
    if in_cluster:
        return f"{environ.get('HOSTNAME') or hostname}_{suffix}"
    return f"{hostname}_{pid}"


def own_identity() -> str:
    return identity(os.environ, in_cluster=SERVICE_ACCOUNT_NAMESPACE.exists(), hostname=socket.gethostname(),
                    pid=os.getpid(), suffix=uuid.uuid4().hex[:8])


def default_namespace(namespace_file: Path, fallback: str) -> str:
    """The pod's own namespace in a cluster, else ``fallback``."""
    try:
        return namespace_file.read_text(encoding="utf-8").strip() or fallback
    except OSError:
        return fallback


def lease_object(namespace: str, name: str, record: LeaseRecord, resource_version: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": record.spec()}


def _wall_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# What a failed attempt can raise: the API server's refusal, the connection, or the attempt's time limit.
ATTEMPT_ERRORS = (KubeError, aiohttp.ClientError, OSError, TimeoutError)


class Elector:
    """One candidate in the election for the Lease ``namespace/name``."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, timings: Timings = CLIENT_GO, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime.datetime] = _wall_now) -> None:
        self.kube, self.namespace, self.name, self.identity, self.timings = kube, namespace, name, identity, timings
        self._clock, self._wall_clock = clock, wall_clock
        self._observation: Observation | None = None
        self._leading = False
        self._last_renewed = 0.0
        self._waiting_for: str | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    def __repr__(self) -> str:
        return f"Elector({self.namespace}/{self.name} as {self.identity})"

    async def acquire(self) -> None:
        """Return once we hold the Lease; until then try every retry period (with jitter), logging who leads."""
        while True:
            started = self._clock()
            try:
                async with asyncio.timeout(self.timings.renew_deadline):
                    if await self._attempt():
                        self._last_renewed = started
                        log.info("leading: holding Lease %s/%s as %s", self.namespace, self.name, self.identity)
                        return
            except ATTEMPT_ERRORS as error:
                log.warning("cannot take part in the election for Lease %s/%s yet: %s", self.namespace, self.name,
                            _reason(error))
            await asyncio.sleep(self.timings.retry_period * (1 + random.random() * JITTER_FACTOR))  # noqa: S311

    async def keep(self) -> NoReturn:
        """Renew the Lease every retry period; raise :class:`LeaseLost` the moment we may no longer act."""
        while True:
            await asyncio.sleep(self.timings.retry_period)
            await self._renew()

    async def _renew(self) -> None:
        while True:
            started = self._clock()
            if must_stop(self._last_renewed, started, self.timings):
                self._leading = False
                raise LeaseLost(f"the Lease {self.namespace}/{self.name} was not renewed within "
                                f"{self.timings.renew_deadline:g} s")
            remaining = self._last_renewed + self.timings.renew_deadline - started
            try:
                async with asyncio.timeout(remaining):
                    if await self._attempt():
                        # The attempt's start, not its end: the API server stamped the Lease after it, so a
                        # follower's lease runs from later than the deadline counted here.
                        self._last_renewed = started
                        return
            except ATTEMPT_ERRORS as error:
                log.warning("renewing Lease %s/%s failed: %s", self.namespace, self.name, _reason(error))
            await asyncio.sleep(min(self.timings.retry_period,
                                    max(self._last_renewed + self.timings.renew_deadline - self._clock(), 0)))

    async def release(self) -> None:
        """Leave the Lease free for a follower, if we still hold it; one bounded attempt, never raises."""
        if not self._leading:
            return
        self._leading = False
        try:
            async with asyncio.timeout(self.timings.renew_deadline):
                lease = await self.kube.lease(self.namespace, self.name)
                if lease is None or LeaseRecord.from_lease(lease).holder != self.identity:
                    return
                record = released(LeaseRecord.from_lease(lease), self._wall_clock())
                await self.kube.replace_lease(self.namespace, self.name, lease_object(
                    self.namespace, self.name, record, (lease.get("metadata") or {}).get("resourceVersion")))
            log.info("released Lease %s/%s", self.namespace, self.name)
        except ATTEMPT_ERRORS as error:
            log.warning("releasing Lease %s/%s failed (a follower takes over when it expires): %s",
                        self.namespace, self.name, _reason(error))

    async def _attempt(self) -> bool:
        """One read and, when ours to take, one write of the Lease: whether we hold it now."""
        now = self._clock()
        lease = await self.kube.lease(self.namespace, self.name)
        if lease is None:
            record = claim(None, self.identity, self.timings.lease_duration, self._wall_clock())
            return await self._write(record, None, now)
        current = LeaseRecord.from_lease(lease)
        self._observation = observe(self._observation, current, now)
        decision = decide(self._observation, self.identity, now, leading=self._leading)
        if decision is Decision.LOST:
            self._leading = False
            raise LeaseLost(f"the Lease {self.namespace}/{self.name} names another holder: {current.holder}")
        if decision is Decision.WAIT:
            if self._waiting_for != current.holder:
                self._waiting_for = current.holder
                log.info("following: Lease %s/%s is held by %s", self.namespace, self.name, current.holder)
            return False
        record = claim(current, self.identity, self.timings.lease_duration, self._wall_clock())
        return await self._write(record, (lease.get("metadata") or {}).get("resourceVersion", ""), now)

    async def _write(self, record: LeaseRecord, resource_version: str | None, now: float) -> bool:
        body = lease_object(self.namespace, self.name, record, resource_version)
        try:
            if resource_version is None:
                await self.kube.create_lease(self.namespace, body)
            else:
                await self.kube.replace_lease(self.namespace, self.name, body)
        except KubeError as error:
            if error.status == 409:  # another candidate wrote first
                return False
            raise
        self._observation = Observation(record, now)
        self._leading = True
        return True


def _reason(error: BaseException) -> str:
    # The API server's message or the connection's error; a timeout has no text of its own.
    return str(error) or type(error).__name__


def exit_now(error: LeaseLost) -> NoReturn:
    """Stop acting at once: end the process, so nothing in flight goes on (controller-runtime does the same)."""
    log.error("stopping at once: %s; exiting with status %d to rejoin as a follower", error, LOST_LEASE_EXIT)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(LOST_LEASE_EXIT)


@contextlib.asynccontextmanager
async def follower_liveness(endpoint: str | None) -> AsyncIterator[None]:
    """Answer the liveness probe while waiting for the Lease, where kopf answers it once it runs.

    A follower runs no kopf yet; without this the kubelet would restart it again and again.
    """
    if endpoint is None:
        yield
        return
    parts = urllib.parse.urlsplit(endpoint)

    async def alive(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"leader-election": "following"})

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(parts.path or "/", alive)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await aiohttp.web.TCPSite(runner, parts.hostname or "127.0.0.1", parts.port or 80).start()
        yield
    finally:
        # Closed before kopf serves the same address.
        await runner.cleanup()


# How the operator running under :func:`lead` gives up the Lease once it has stopped acting (see step_down).
_step_down: Callable[[], Awaitable[None]] | None = None


async def step_down() -> None:
    """Stop renewing and release the Lease now; for the operator's cleanup, once nothing acts any more.

    kopf's shutdown ends by waiting five seconds for the tasks started while it ran (kcmail's included)
    before it cancels them; released from the cleanup, which comes before that wait, the Lease reaches a
    follower five seconds sooner. Without a Lease (``--no-leader-election``) it does nothing.
    """
    if _step_down is not None:
        await _step_down()


async def lead(elector: Elector, operate: Callable[[asyncio.Event], Awaitable[None]], *, liveness: str | None,
               on_lost: Callable[[LeaseLost], NoReturn] = exit_now) -> bool:
    """Wait for the Lease, then ``operate`` while keeping it, and release it when ``operate`` returns.

    ``operate`` gets the event SIGTERM and SIGINT set from the start, so a signal that arrives while it
    starts up still stops it. Returns False when a signal stopped us before we led. Losing the Lease calls
    ``on_lost`` from the renewing task, which must not return to the operator (:func:`exit_now`).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    leading = metrics.LEADER.labels(f"{elector.namespace}/{elector.name}")
    leading.set(0)
    async with follower_liveness(liveness):
        acquiring = asyncio.ensure_future(elector.acquire())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (acquiring, stopping):
            task.cancel()
        await asyncio.gather(acquiring, stopping, return_exceptions=True)
    if stop.is_set():
        log.info("stopped while following")
        await elector.release()
        return False

    async def keep() -> None:
        try:
            await elector.keep()
        except LeaseLost as error:
            on_lost(error)

    # Started before the operator, which leaves the tasks it finds running alone when it stops.
    keeper = asyncio.create_task(keep(), name="leader election")
    leading.set(1)

    released = False

    async def give_up() -> None:
        # Never a renewal after the release: the keeper is stopped first. Once only.
        nonlocal released
        if released:
            return
        released = True
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await elector.release()
        leading.set(0)

    global _step_down
    _step_down = give_up
    try:
        await operate(stop)
    finally:
        _step_down = None
        await give_up()
    return True
