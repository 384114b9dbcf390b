"""When a MailConfig's pass runs: the one queue between the watches and the reconciles.

Shaped like client-go's work queue as controller-runtime drives it, because its guarantees are the ones a
reconcile needs and a reader already knows:

- A key waits at most once: added any number of times before a worker takes it, it runs once.
- A key is never in two passes at once: added while its pass runs, it runs again when that pass ends.
- A delay heap holds the keys due later (the next interval slot, a retry). A key has one due time; an
  earlier request moves it earlier, and what a pass asks for at its end replaces it.
- Failures back off per key, exponentially and with jitter, until a pass succeeds.
- A fixed pool of workers drains it: concurrency is a setting, and a thousand sleeping keys cost a heap
  entry each, not a task each. One timer is armed for the earliest due time, whatever the number of keys.

The queue knows nothing of MailConfigs: keys are any hashable values (kcmail.controller uses one per
object uid, so an object created again under the same name is another key).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)

# Retries after a failure: 2, 4, 8 … seconds, capped by the caller's cap (the interval) and by five minutes.
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0
# How long a pass in flight may take to finish when the queue stops, before it is cancelled.
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Requeue:
    """A pass ended: run the key again after ``after`` seconds (``None``: only when something adds it)."""

    after: float | None = None


@dataclass(frozen=True)
class Retry:
    """A pass failed with what can pass: run the key again after its backoff, capped at ``cap`` seconds."""

    cap: float = RETRY_MAX_SECONDS


Next = Requeue | Retry
Process = Callable[[K], Awaitable[Next]]


def backoff(failures: int, cap: float, jitter: float) -> float:
    """Seconds before the next attempt after ``failures`` failures in a row (at least one).

    The exponential ceiling is capped by ``cap`` and RETRY_MAX_SECONDS; ``jitter`` in [0, 1) picks a delay
    between half the ceiling and the ceiling, so keys that failed together (Keycloak down) do not all
    come back in the same second.
    """
    ceiling = min(RETRY_FIRST_SECONDS * 2 ** max(failures - 1, 0), cap, RETRY_MAX_SECONDS)
    return ceiling * (1 + jitter) / 2


class DelayHeap(Generic[K]):
    """Keys with the time each is due; a key has at most one due time. Pure: the caller tells the time."""

    def __init__(self) -> None:
        self._due: dict[K, float] = {}
        # (due, tie-breaker, key); an entry whose due time is no longer the key's is skipped when met.
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def put(self, key: K, due: float, *, replace: bool = False) -> bool:
        """Set ``key`` due at ``due``: the earlier of it and any due time it has, or ``due`` when ``replace``.
        Returns whether the key's due time changed."""
        current = self._due.get(key)
        if current is not None and (current == due or (not replace and current < due)):
            return False
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._order), key))
        self._compact()
        return True

    def remove(self, key: K) -> None:
        self._due.pop(key, None)

    def earliest(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """The keys due at ``now`` or before, earliest first; they leave the heap."""
        due: list[K] = []
        while (first := self.earliest()) is not None and first <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._due[key]
            due.append(key)
        return due

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        # Moved keys leave stale entries behind; rebuild before they outnumber the live ones.
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(due, next(self._order), key) for key, due in self._due.items()]
            heapq.heapify(self._heap)


class WorkQueue(Generic[K]):
    """Keys waiting for a pass, keys due later, and the workers that run the passes."""

    def __init__(self, what: str = "key", *, jitter: Callable[[], float] = random.random) -> None:
        """``what``: how log lines name a key's kind (a key names itself by ``str``)."""
        self._what = what
        self._jitter = jitter
        self._ready: deque[K] = deque()
        self._waiting: set[K] = set()  # in _ready
        self._running: set[K] = set()
        self._again: set[K] = set()  # added while running: once more when its pass ends
        self._failures: dict[K, int] = {}
        self._delayed: DelayHeap[K] = DelayHeap()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._idle: deque[asyncio.Future[None]] = deque()  # workers waiting for a key
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- what events and passes ask for ------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Run ``key`` as soon as a worker is free (once, however often it is added before)."""
        if self._stopping:
            return
        if key in self._running:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._ready.append(key)
            self._wake_one()

    def add_after(self, key: K, seconds: float) -> None:
        """Run ``key`` after ``seconds``, or at the due time it already has when that is earlier."""
        self._schedule(key, seconds, replace=False)

    def forget(self, key: K) -> None:
        """The object is gone: nothing of ``key`` stays, and a pass of it running now schedules nothing."""
        self._delayed.remove(key)
        self._failures.pop(key, None)
        self._again.discard(key)
        if key in self._waiting:
            self._waiting.discard(key)
            self._ready.remove(key)
        if key in self._running:
            self._running.discard(key)  # _finish sees it gone and leaves it be

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def due_in(self, key: K) -> float | None:
        """Seconds until ``key`` is due, if it is delayed (for tests and logs)."""
        due = self._delayed._due.get(key)
        return None if due is None else due - self._now()

    def __len__(self) -> int:
        """Keys known to the queue: waiting, running or delayed."""
        return len(self._waiting | self._running | set(self._delayed._due))

    # --- workers -----------------------------------------------------------------------------------------

    def start(self, process: Process[K], workers: int) -> None:
        """Start ``workers`` tasks that run ``process`` on keys, one key per worker at a time."""
        if workers < 1:
            raise ValueError("a work queue needs at least one worker")
        self._workers = [asyncio.create_task(self._work(process), name=f"kcmail worker {i}") for i in range(workers)]

    async def stop(self, grace: float = STOP_TIMEOUT_SECONDS) -> None:
        """Take no more keys; passes in flight may finish within ``grace`` seconds, then are cancelled."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        while self._idle:
            self._wake_one()
        if not self._workers:
            return
        _, pending = await asyncio.wait(self._workers, timeout=grace)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        self._workers = []

    async def _work(self, process: Process[K]) -> None:
        while (key := await self._take()) is not None:
            outcome: Next
            try:
                outcome = await process(key)
            except Exception as error:  # a worker outlives any one pass; only type and text, never locals
                log.error("%s %s: the pass raised %s: %s; retrying with backoff", self._what, key,
                          type(error).__name__, error)
                outcome = Retry()
            self._finish(key, outcome)

    async def _take(self) -> K | None:
        while not self._stopping and not self._ready:
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._idle:
                    self._idle.remove(waiter)
        if self._stopping:
            return None
        key = self._ready.popleft()
        self._waiting.discard(key)
        self._running.add(key)
        if self._ready:
            self._wake_one()  # more keys than this worker: pass the news on
        return key

    def _finish(self, key: K, outcome: Next) -> None:
        if key not in self._running:
            return  # forgotten while it ran
        self._running.discard(key)
        if isinstance(outcome, Retry):
            self._failures[key] = failures = self._failures.get(key, 0) + 1
            delay = backoff(failures, outcome.cap, self._jitter())
            log.info("%s %s: retry %d in %.1f s", self._what, key, failures, delay)
            self._schedule(key, delay, replace=True)
        else:
            self._failures.pop(key, None)
            if outcome.after is None:
                self._delayed.remove(key)
            else:
                self._schedule(key, outcome.after, replace=True)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    # --- the delay heap's one timer ----------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _schedule(self, key: K, seconds: float, *, replace: bool) -> None:
        if self._stopping:
            return
        if self._delayed.put(key, self._now() + max(seconds, 0.0), replace=replace):
            self._arm()

    def _arm(self) -> None:
        earliest = self._delayed.earliest()
        if earliest == self._armed_for:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_for = None, earliest
        if earliest is not None and not self._stopping:
            self._timer = asyncio.get_running_loop().call_at(earliest, self._release)

    def _release(self) -> None:
        self._timer, self._armed_for = None, None
        for key in self._delayed.pop_due(self._now()):
            self.add(key)
        self._arm()

    def _wake_one(self) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
